"""railcar.streams.recording: start_recording picks the trace sink from the config."""

from __future__ import annotations

import pytest

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.streams.embedded import EmbeddedPipeline
from railcar.streams.fileset import open_fileset
from railcar.streams.recorder import TraceRecorder
from railcar.streams.recording import recorded_kinds, start_recording


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"embedded-test-key" * 2)


async def test_start_recording_picks_the_sink(make_config, scanner, tmp_path) -> None:
    off = make_config(telemetry={"enabled": False})
    observer, close = start_recording(off, scanner=scanner)
    assert observer is None
    await close()
    cfg = make_config(fileset={"root": str(tmp_path)})  # no [kafka]: the embedded consumer
    observer, close = start_recording(cfg, scanner=scanner)
    assert isinstance(observer, TraceRecorder)
    assert getattr(observer.publish, "__self__", None).__class__ is EmbeddedPipeline
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    ex.response_body = b'{"model":"m","choices":[{"index":0,"message":{"content":"hello"}}]}'
    observer.exchange_finished(ex)
    await close()
    snap = open_fileset(str(tmp_path)).read_snapshot()
    assert snap["last_scan"]["records_scanned"] == 1
    assert [p["model"] for p in snap["coverage"]["model_paths"]] == ["m"]


async def test_what_the_holdback_redacts_is_never_published_raw(make_config, tmp_path) -> None:
    # [detection] scans secrets only, the hold-back redacts PII too: the recorder must redact PII as well, or the
    # trace would carry the e-mail address the client received as a placeholder
    cfg = make_config(detection={"kinds": ["secret"]}, fileset={"root": str(tmp_path)},
                      guardrails={"config_path": "default", "inline": {"kinds": ["secret", "pii"], "action": "redact"}})
    assert recorded_kinds(cfg) == ["secret", "pii"]
    assert recorded_kinds(make_config(detection={"kinds": ["secret"]})) == ["secret"]  # no hold-back: as configured
    sent: list[bytes] = []
    observer, close = start_recording(cfg)
    assert isinstance(observer, TraceRecorder)
    observer.publish = lambda key, value: sent.append(value) or True  # type: ignore[method-assign]
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "mail jane.roe@acmecorp.io now"}]})
    ex.response_body = b'{"model":"m","choices":[{"index":0,"message":{"content":"ok"}}]}'
    observer.exchange_finished(ex)
    await close()
    assert sent and not any(b"jane.roe@acmecorp.io" in v for v in sent)
