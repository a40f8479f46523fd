"""railcar.streams.embedded: the no-Kafka default writes the fileset in-process.

The headline test runs a real ``railcar serve`` subprocess with no ``[kafka]`` configured in front of the replay
upstream (loopback), sends a recorded request with a planted secret through it, and reads the finding from the
local fileset; the secret itself must be nowhere in the fileset.
"""

from __future__ import annotations

import asyncio
import random
import threading

import aiohttp
import orjson
import pytest
from planted_corpus import GENERATORS
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.rails.masking import fingerprint
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.embedded import EmbeddedPipeline
from railcar.streams.fileset import open_fileset
from railcar.streams.recorder import TraceRecorder


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"embedded-test-key" * 2)


def _record(scanner: Scanner, text: str, agent: str = "agent-emb") -> tuple[bytes, bytes]:
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id=agent))
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": text}]})
    ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
    return rec.build(ex)


async def test_pipeline_survives_a_failing_record_and_a_failing_write(make_config, scanner, tmp_path,
                                                                     monkeypatch) -> None:
    # An unexpected error on one record, or a fileset write that fails (disk full), must not end the in-process
    # consumer: later records are still processed and the write is retried.
    cfg = make_config(fileset={"root": str(tmp_path)})
    pipe = EmbeddedPipeline(cfg, scanner=scanner, commit_interval_s=0.05, registry=CollectorRegistry())
    real_process, real_commit = pipe.proc.process, pipe.proc.commit
    calls = {"process": 0, "commit": 0}

    def flaky_process(value: bytes) -> int:
        calls["process"] += 1
        if calls["process"] == 1:
            raise RuntimeError("unexpected")
        return real_process(value)

    def flaky_commit():
        calls["commit"] += 1
        if calls["commit"] == 1:
            raise OSError(28, "No space left on device")
        return real_commit()

    monkeypatch.setattr(pipe.proc, "process", flaky_process)
    monkeypatch.setattr(pipe.proc, "commit", flaky_commit)
    await pipe.start()
    token = GENERATORS["github_token"](random.Random(5))
    assert pipe.publish(*_record(scanner, "first record"))
    assert pipe.publish(*_record(scanner, f"token {token}"))
    await pipe.close()
    assert pipe.stats["failed"] == 1 and pipe.stats["processed"] == 1 and calls["commit"] >= 2
    snap = open_fileset(str(tmp_path)).read_snapshot()
    assert [f["detector"] for f in snap["findings"]] == ["github_token"]


async def test_pipeline_commits_findings_and_counts_bad_records(make_config, scanner, tmp_path) -> None:
    cfg = make_config(fileset={"root": str(tmp_path)})
    rng = random.Random(11)
    secrets = [GENERATORS["github_token"](rng) for _ in range(3)]
    pipe = EmbeddedPipeline(cfg, scanner=scanner, commit_interval_s=0.2, registry=CollectorRegistry())
    await pipe.start()
    for s in secrets:
        assert pipe.publish(*_record(scanner, f"my token is {s}"))
    assert pipe.publish(b"bad", b"\xff\x00 not OTLP")
    # Committed by the interval, before close.
    fs = open_fileset(str(tmp_path))
    for _ in range(100):
        snap = fs.read_snapshot()
        if snap and len(snap["findings"]) == 3:
            break
        await asyncio.sleep(0.05)
    assert pipe.stats["processed"] == 3 and pipe.stats["undecodable"] == 1
    await pipe.close()
    snap = fs.read_snapshot()
    got = {f["fingerprint"] for f in snap["findings"] if f["detector"] == "github_token"}
    assert got == {fingerprint(scanner.key, "github_token", s) for s in secrets}
    assert all(f["location"]["agent"] == "agent-emb" for f in snap["findings"])
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert not any(s.encode() in blob for s in secrets)


async def test_pipeline_drops_beyond_queue_size_and_commits_on_close(make_config, scanner, tmp_path) -> None:
    cfg = make_config(fileset={"root": str(tmp_path)}, telemetry={"queue_size": 4})
    pipe = EmbeddedPipeline(cfg, scanner=scanner, commit_interval_s=60, registry=CollectorRegistry())
    # Not started: nothing drains, so the 5th and 6th records are dropped and counted.
    results = [pipe.publish(*_record(scanner, f"hello {i}")) for i in range(6)]
    assert results == [True] * 4 + [False] * 2 and pipe.stats["dropped"] == 2
    await pipe.start()
    await pipe.close()  # the interval is 60 s: only the close commits
    assert pipe.stats["processed"] == 4 and pipe.stats["commits"] == 1
    snap = open_fileset(str(tmp_path)).read_snapshot()
    assert snap["last_scan"]["records_scanned"] == 4


async def test_railcar_serve_without_kafka_writes_the_local_fileset(records, replay_upstream, tmp_path,
                                                                   railcar_process) -> None:
    rng = random.Random(3)
    secret = GENERATORS["aws_access_key_id"](rng)
    rec = next(r for r in records if r.get("status") == 200 and r["stream"] and r["request"].get("messages"))
    serve = railcar_process("serve", {"RAILCAR_UPSTREAM_BASE_URL": replay_upstream.base_url,
                                      "RAILCAR_GUARDRAILS_CONFIG_PATH": "none",  # no rails: the key reaches the trace
                                      "RAILCAR_FILESET_ROOT": str(tmp_path / "fs"),
                                      "RAILCAR_TELEMETRY_AGENT_ID": "agent-serve",
                                      "RAILCAR_FINGERPRINT_KEY": "k" * 32})
    base = serve.base
    async with aiohttp.ClientSession() as http:
        await serve.wait_ready(http)
        req = dict(rec["request"])
        req["messages"] = list(req["messages"]) + [
            {"role": "user", "content": f"deploy with AWS key {secret} please"}]
        async with http.post(base + "/v1/chat/completions", json=req, headers={"x-replay-id": rec["id"]}) as r:
            body = await r.read()
            assert r.status == 200, body[:300]
        assert body == rec["response_body"].encode()  # relayed byte for byte
        fs = open_fileset(str(tmp_path / "fs"))
        snap = None
        for _ in range(100):  # the embedded consumer commits every second
            snap = fs.read_snapshot()
            if snap and snap["findings"]:
                break
            await asyncio.sleep(0.1)
    assert snap and snap["findings"], "no finding written by the embedded consumer"
    assert serve.stop() == 0
    snap = fs.read_snapshot()
    aws = [f for f in snap["findings"] if f["detector"] == "aws_access_key_id"]
    assert len(aws) == 1 and aws[0]["location"]["agent"] == "agent-serve"
    assert aws[0]["masked_preview"] != secret and aws[0]["type"] == "leaked_secret"
    sugg = fs.read_suggestions()
    assert any(aws[0]["id"] in s["finding_ids"] for s in sugg)
    blob = b"".join(p.read_bytes() for p in (tmp_path / "fs").rglob("*") if p.is_file())
    assert secret.encode() not in blob


async def test_scanning_and_fileset_writes_run_off_the_event_loop_thread(make_config, scanner, tmp_path,
                                                                        monkeypatch) -> None:
    # Issue 15: the embedded consumer never competes with the proxy for the loop. Record the thread each piece of
    # work ran on: the scan (process) and the fileset write (commit) must run on the pipeline's worker thread.
    cfg = make_config(fileset={"root": str(tmp_path)})
    pipe = EmbeddedPipeline(cfg, scanner=scanner, commit_interval_s=0.05, registry=CollectorRegistry())
    ran: dict[str, set[int]] = {"process": set(), "commit": set()}
    real_process, real_commit = pipe.proc.process, pipe.proc.commit

    def process(value: bytes) -> int:
        ran["process"].add(threading.get_ident())
        return real_process(value)

    def commit():
        ran["commit"].add(threading.get_ident())
        return real_commit()

    monkeypatch.setattr(pipe.proc, "process", process)
    monkeypatch.setattr(pipe.proc, "commit", commit)
    loop_thread = threading.get_ident()
    await pipe.start()
    token = GENERATORS["github_token"](random.Random(8))
    for i in range(5):
        assert pipe.publish(*_record(scanner, f"token {token} #{i}"))
    await pipe.close()
    assert pipe.stats["processed"] == 5 and pipe.stats["commits"] >= 1
    assert ran["process"] == {pipe.ident} and ran["commit"] == {pipe.ident}
    assert pipe.ident != loop_thread
    snap = open_fileset(str(tmp_path)).read_snapshot()
    assert [f["detector"] for f in snap["findings"]] == ["github_token"]


async def test_publish_never_waits_for_a_busy_consumer_and_counts_drops_on_metrics(make_config, scanner,
                                                                                  tmp_path, monkeypatch) -> None:
    # The worker is held inside its first record: publish keeps returning at once, fills the byte bound, then
    # drops and counts (stats and railcar_embedded_dropped_total); nothing waits for the consumer.
    cfg = make_config(fileset={"root": str(tmp_path)})
    value = _record(scanner, "hello")[1]
    registry = CollectorRegistry()
    pipe = EmbeddedPipeline(cfg, scanner=scanner, registry=registry, max_pending_bytes=3 * len(value))
    gate, entered = threading.Event(), threading.Event()
    real_process = pipe.proc.process

    def held(v: bytes) -> int:
        entered.set()
        gate.wait()
        return real_process(v)

    monkeypatch.setattr(pipe.proc, "process", held)
    await pipe.start()
    assert pipe.publish(b"k", value)
    assert await asyncio.to_thread(entered.wait, 10)  # the worker holds record 1
    results = [pipe.publish(b"k", value) for _ in range(5)]
    assert results == [True] * 3 + [False] * 2 and pipe.pending_bytes == 3 * len(value)
    assert pipe.stats["dropped"] == 2 and registry.get_sample_value("railcar_embedded_dropped_total") == 2
    gate.set()
    await pipe.close()
    assert pipe.stats["processed"] == 4 and pipe.pending == 0 and pipe.pending_bytes == 0


async def test_publish_from_another_thread_is_processed(make_config, scanner, tmp_path) -> None:
    # The recorder may build spans off the loop and publish from its own thread: publish is thread-safe.
    cfg = make_config(fileset={"root": str(tmp_path)})
    pipe = EmbeddedPipeline(cfg, scanner=scanner, registry=CollectorRegistry())
    await pipe.start()
    values = [_record(scanner, f"message {i}")[1] for i in range(20)]

    def publish_all() -> list[bool]:
        return [pipe.publish(b"k", v) for v in values]

    assert await asyncio.to_thread(publish_all) == [True] * 20
    await pipe.close()
    assert pipe.stats["processed"] == 20 and pipe.stats["dropped"] == 0
    assert open_fileset(str(tmp_path)).read_snapshot()["last_scan"]["records_scanned"] == 20
