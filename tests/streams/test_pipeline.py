"""railcar.streams.pipeline: the scanner, fileset and processor wired from the config in one place."""

from __future__ import annotations

import random
import stat

import orjson
from planted_corpus import GENERATORS
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.streams import otlp
from railcar.streams.fileset import FILESET
from railcar.streams.pipeline import KEY_FILE, build_deep, build_processor, build_scanner, configured_fileset
from railcar.streams.recorder import TraceRecorder


def test_scanner_key_is_kept_in_a_local_fileset_only_when_asked(make_config, tmp_path) -> None:
    cfg = make_config(fileset={"root": str(tmp_path)})
    assert build_scanner(cfg).ephemeral_key  # no key configured: a per-process key, nothing written
    assert not (tmp_path / FILESET / KEY_FILE).exists()
    first = build_scanner(cfg, key_store=configured_fileset(cfg))
    again = build_scanner(cfg, key_store=configured_fileset(cfg))
    path = tmp_path / FILESET / KEY_FILE
    assert not first.ephemeral_key and first.key == again.key == path.read_bytes().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_file = tmp_path / "key"
    key_file.write_bytes(b"k" * 32)
    configured = make_config(detection={"fingerprint_key_file": str(key_file)}, fileset={"root": str(tmp_path)})
    assert build_scanner(configured, key_store=configured_fileset(configured)).key == b"k" * 32


def test_processor_writes_the_configured_fileset_and_resumes_its_writer(make_config, tmp_path) -> None:
    cfg = make_config(fileset={"root": str(tmp_path)})
    proc = build_processor(cfg, writer_id="w1", registry=CollectorRegistry())
    token = GENERATORS["github_token"](random.Random(2))
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": f"token {token}"}]})
    ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
    proc.process(TraceRecorder(proc.scanner, None, otlp.make_resource(agent_id="a")).build(ex)[1])
    assert [f["detector"] for f in proc.commit()] == ["github_token"]
    snap = configured_fileset(cfg).read_snapshot()
    assert [f["detector"] for f in snap["findings"]] == ["github_token"]
    # the same writer restarted: its findings are restored, so none is handed out as new again
    resumed = build_processor(cfg, writer_id="w1", scanner=proc.scanner, registry=CollectorRegistry())
    assert [f.detector for f in resumed.agg.findings()] == ["github_token"] and resumed.commit() == []


def test_the_deep_tier_follows_detection_deep_and_shares_the_catalog_key(make_config, tmp_path) -> None:
    cfg = make_config(fileset={"root": str(tmp_path)})
    assert cfg.detection.deep  # on by default in the consumer
    proc = build_processor(cfg, writer_id="w1", registry=CollectorRegistry())
    assert proc.deep is not None and proc.deep.key == proc.scanner.key
    off = make_config(detection={"deep": False}, fileset={"root": str(tmp_path)})
    assert build_processor(off, writer_id="w2", registry=CollectorRegistry()).deep is None
    # `railcar scan --deep` turns it on whatever the config says
    assert build_deep(off, proc.scanner, deep=True) is not None
    assert build_deep(cfg, build_scanner(make_config(detection={"kinds": ["pii"]}))) is None  # nothing to find
    rng = random.Random(3)
    shopify = "shpat_" + "".join(rng.choice("0123456789abcdef") for _ in range(32))
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": f"token {shopify}"}]})
    ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
    proc.process(TraceRecorder(proc.scanner, None, otlp.make_resource(agent_id="a")).build(ex)[1])
    [f] = proc.commit()
    assert (f["detector"], f["masked_preview"]) == ("betterleaks.shopify-access-token", shopify[:4] + "…" + shopify[-4:])
