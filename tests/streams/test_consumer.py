"""railcar.streams.consumer: the security consumer group against the mock broker (decode, scan, fileset, DLQ, groups)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka_support import delayed_sync_group, mock_cluster, read_topic  # noqa: F401  (fixture)
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.streams import otlp
from railcar.streams.consumer import ConsumerGroupWorker
from railcar.streams.fileset import open_fileset
from railcar.streams.recorder import TraceRecorder
from railcar.streams.settings import FilesetConfig, KafkaConfig

GH = "ghp_" + "Zq8vK2mN5pR7tW1yB4cF6hJ9kL3sX0aD2eG5"  # GitHub classic token shape


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"k" * 32)


def _config(mc, root) -> RailcarConfig:
    return RailcarConfig(kafka=KafkaConfig(bootstrap_servers=mc.bootstrap, trace_topic="spans",
                                           findings_topic="findings", dead_letter_topic="dlq", group_id="sec"),
                         fileset=FilesetConfig(root=str(root)))


def _records(scanner, n: int, secret_every: int = 3) -> list[tuple[bytes, bytes]]:
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-a"))
    out = []
    for i in range(n):
        text = f"conversation {i}: " + (f"token {GH[:-4]}{i:04d}" if i % secret_every == 0 else "nothing here")
        ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": text}]})
        ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
        out.append(rec.build(ex))
    return out


async def _produce(bootstrap: str, topic: str, records) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for k, v in records:
            await p.send(topic, v, key=k)
        await p.flush()
    finally:
        await p.stop()


async def _run_until(worker: ConsumerGroupWorker, cond, timeout: float = 20.0) -> None:
    task = asyncio.create_task(worker.run())
    try:
        for _ in range(int(timeout / 0.05)):
            if cond() or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await task


def _finding_ids(root) -> list[str]:
    snap = open_fileset(str(root)).read_snapshot()
    return [f["id"] for f in snap["findings"]]


async def test_findings_fileset_topic_and_dead_letter(mock_cluster, tmp_path, scanner) -> None:
    mock_cluster.create_topic("spans", 4)
    recs = _records(scanner, 12)
    poison = (b"poison", b"\xff\x00 not a protobuf")
    await _produce(mock_cluster.bootstrap, "spans", recs[:6] + [poison] + recs[6:])
    w = ConsumerGroupWorker(_config(mock_cluster, tmp_path), scanner=scanner, writer_id="w1",
                            registry=CollectorRegistry())
    await _run_until(w, lambda: w.proc.records >= 12)
    assert w.proc.records == 12 and w.dead_lettered == 1
    ids = _finding_ids(tmp_path)
    # One note per planted token (4 of 12 conversations), each a distinct fingerprint -> 4 findings.
    assert len(ids) == 4 and len(set(ids)) == 4
    dlq = await read_topic(mock_cluster.bootstrap, "dlq", 1)
    assert [r.value for r in dlq] == [poison[1]]
    assert dict(dlq[0].headers)["railcar.dlq.reason"].startswith(b"not an OTLP")
    published = await read_topic(mock_cluster.bootstrap, "findings", 4)
    assert sorted(r.key.decode() for r in published) == sorted(ids)
    assert all(orjson.loads(r.value)["id"] == r.key.decode() for r in published)
    assert not any(GH[:-4].encode() in r.value for r in published)


async def test_restart_loses_and_duplicates_nothing(mock_cluster, tmp_path, scanner) -> None:
    mock_cluster.create_topic("spans", 2)
    recs = _records(scanner, 30, secret_every=2)
    await _produce(mock_cluster.bootstrap, "spans", recs)
    cfg = _config(mock_cluster, tmp_path)
    w1 = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="w", registry=CollectorRegistry())
    # Killed after its first small batch (mid-stream): later records are not committed.
    task = asyncio.create_task(w1.run(max_records=4))
    for _ in range(400):
        if w1.batches >= 1:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 0 < w1.proc.records < 30
    w2 = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="w", registry=CollectorRegistry())
    await _run_until(w2, lambda: len(_finding_ids(tmp_path)) >= 15 and w2.batches > 0)
    ids = _finding_ids(tmp_path)
    assert len(ids) == 15 and len(set(ids)) == 15
    sugg = open_fileset(str(tmp_path)).read_suggestions()
    assert len({s["id"] for s in sugg}) == len(sugg)


async def test_two_consumers_share_partitions(mock_cluster, tmp_path, scanner) -> None:
    mock_cluster.create_topic("spans", 4)
    recs = _records(scanner, 40, secret_every=4)
    await _produce(mock_cluster.bootstrap, "spans", recs)
    cfg = _config(mock_cluster, tmp_path)
    with delayed_sync_group():
        ws = [ConsumerGroupWorker(cfg, scanner=scanner, writer_id=f"w{i}", registry=CollectorRegistry(),
                                  session_timeout_ms=6000, heartbeat_interval_ms=500) for i in range(2)]
        tasks = [asyncio.create_task(w.run()) for w in ws]
        for _ in range(400):
            if sum(w.proc.records for w in ws) >= 40:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        for w in ws:
            w.stop()
        await asyncio.gather(*tasks)
    assert sum(w.proc.records for w in ws) == 40
    assert all(w.proc.records > 0 for w in ws)  # the partitions were shared
    ids = _finding_ids(tmp_path)
    assert len(ids) == 10 and len(set(ids)) == 10
    sugg = open_fileset(str(tmp_path)).read_suggestions()
    assert len({s["id"] for s in sugg}) == len(sugg)


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name{labels}`` in a Prometheus text exposition (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def test_consume_command_serves_health_ready_and_metrics(mock_cluster, tmp_path, scanner,
                                                              railcar_process) -> None:
    """`railcar consume` as a real subprocess: /healthz at once, /readyz 503 until it joined the group, /metrics
    with lag per partition, records, records/s, findings by type and dead-lettered; SIGTERM exits 0."""
    import aiohttp

    mock_cluster.create_topic("spans", 2)
    consume = railcar_process("consume", {
        "RAILCAR_KAFKA_BOOTSTRAP_SERVERS": mock_cluster.bootstrap, "RAILCAR_KAFKA_TRACE_TOPIC": "spans",
        "RAILCAR_KAFKA_FINDINGS_TOPIC": "findings", "RAILCAR_KAFKA_DEAD_LETTER_TOPIC": "dlq",
        "RAILCAR_KAFKA_GROUP_ID": "sec-http", "RAILCAR_FILESET_ROOT": str(tmp_path / "fs")})
    base = consume.base
    async with aiohttp.ClientSession() as http:
        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path) as r:
                return r.status, await r.text()

        ready_codes = []
        for _ in range(300):
            assert consume.proc.poll() is None, consume.output()
            try:
                code, _ = await get("/readyz")
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
                continue
            ready_codes.append(code)
            if code == 200:
                break
            await asyncio.sleep(0.05)
        assert ready_codes[-1] == 200 and set(ready_codes) <= {200, 503}
        assert (await get("/healthz"))[0] == 200
        code, body = await get("/readyz")
        assert orjson.loads(body)["partitions"] == [0, 1]

        recs = _records(scanner, 9)  # 3 planted tokens
        await _produce(mock_cluster.bootstrap, "spans", recs + [(b"poison", b"\xff\x00 not OTLP")])
        text = ""
        for _ in range(200):
            code, text = await get("/metrics")
            # findings are counted when the fileset batch commits, after the records: wait for both
            if (_metric(text, "railcar_consumer_records_total") or 0) >= 9 \
                    and _metric(text, "railcar_consumer_dead_lettered_total") \
                    and _metric(text, "railcar_consumer_findings_total", type="leaked_secret"):
                break
            await asyncio.sleep(0.1)
        assert code == 200
        assert _metric(text, "railcar_consumer_records_total") == 9
        assert _metric(text, "railcar_consumer_dead_lettered_total") == 1
        assert _metric(text, "railcar_consumer_findings_total", type="leaked_secret") == 3
        for _ in range(50):  # lag is refreshed on the next poll after the commit
            code, text = await get("/metrics")
            if all(_metric(text, "railcar_consumer_lag", partition=p) == 0 for p in ("0", "1")):
                break
            await asyncio.sleep(0.1)
        assert [_metric(text, "railcar_consumer_lag", partition=p) for p in ("0", "1")] == [0, 0]
        assert _metric(text, "railcar_consumer_records_per_second") is not None
        assert (await get("/nope"))[0] == 404
    assert consume.stop(timeout_s=15) == 0
