"""railcar.streams.recording: start_recording picks the trace sink from the config."""

from __future__ import annotations

import pytest

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.streams.embedded import EmbeddedPipeline
from railcar.streams.fileset import open_fileset
from railcar.streams.recorder import TraceRecorder
from railcar.streams.recording import start_recording


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
