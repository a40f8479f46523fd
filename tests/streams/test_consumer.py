"""railcar.streams.consumer: the security consumer group against the mock broker (decode, scan, fileset, DLQ, groups)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError
from kafka_support import delayed_sync_group, eventually, mock_cluster, read_topic  # noqa: F401  (fixture)
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.streams import otlp
from railcar.streams.consumer import ConsumerGroupWorker
from railcar.streams.fileset import open_fileset
from railcar.streams.recorder import TraceRecorder
from railcar.streams.settings import FilesetConfig, KafkaConfig
from railcar.tools.mock_broker import MockCluster

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


async def test_group_error_while_consuming_is_rejoined(mock_cluster, tmp_path, scanner) -> None:
    """A SyncGroup refused with INVALID_REQUEST (42) in a rebalance — what the mock answers a member whose
    SyncGroup comes at the wrong time, and a broker's unexpected error in general — used to end ``run()`` with
    a KafkaError (``railcar consume`` exited). Now it is logged, the member rejoins and consumes what follows;
    counts stay exact (re-delivered records are skipped by position)."""
    mock_cluster.create_topic("spans", 2)
    recs = _records(scanner, 12)  # 4 planted tokens
    await _produce(mock_cluster.bootstrap, "spans", recs[:6])
    w = ConsumerGroupWorker(_config(mock_cluster, tmp_path), scanner=scanner, writer_id="w",
                            registry=CollectorRegistry(), session_timeout_ms=3000, heartbeat_interval_ms=200)
    task = asyncio.create_task(w.run())
    try:
        assert await eventually(lambda: w.proc.records >= 6 and w.batches > 0, 20), w.proc.records
        mock_cluster.push_request_errors(MockCluster.SYNC_GROUP, [42])
        mock_cluster.push_request_errors(MockCluster.HEARTBEAT, [27])  # REBALANCE_IN_PROGRESS: a rejoin
        assert await eventually(lambda: task.done() or w.group_errors >= 1, 20)
        assert not task.done(), task.exception()
        await _produce(mock_cluster.bootstrap, "spans", recs[6:])
        assert await eventually(lambda: w.proc.records >= 12 or task.done(), 30), w.proc.records
    finally:
        w.stop()
        await task
    assert w.group_errors == 1 and w.proc.records == 12
    ids = _finding_ids(tmp_path)
    assert len(ids) == len(set(ids)) == 4


class _FakeClient:
    """A stand-in aiokafka consumer/producer: ``getmany`` raises ``fail`` (when set) on every call, like a
    consumer whose coordinator task died; otherwise it waits and returns nothing."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail, self.calls, self.stopped = fail, 0, False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    def assignment(self) -> set:
        return set()

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        await asyncio.sleep(timeout_ms / 1000)
        return {}


async def test_repeated_group_errors_replace_the_consumer(tmp_path, scanner, monkeypatch) -> None:
    """A consumer that raises on every fetch (its coordinator task died) is replaced by a new one after three
    errors without a good fetch in between, without a busy loop (each repeat waits 50 ms, counted once a
    second); an authorization error ends ``run()``."""
    cfg = RailcarConfig(kafka=KafkaConfig(bootstrap_servers="127.0.0.1:9", trace_topic="spans", group_id="sec"),
                        fileset=FilesetConfig(root=str(tmp_path)))
    w = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="w", registry=CollectorRegistry())
    made = [_FakeClient(KafkaError("Unexpected error during coordination")), _FakeClient()]
    queue = list(made)
    monkeypatch.setattr(w, "_new_consumer", lambda: queue.pop(0))
    monkeypatch.setattr(w, "_new_producer", lambda: _FakeClient())
    task = asyncio.create_task(w.run())
    try:
        assert await eventually(lambda: made[1].calls > 0 or task.done(), 10)
        assert not task.done(), task.exception()
    finally:
        w.stop()
        await task
    assert made[0].stopped and made[1].stopped and w.group_errors == 3
    assert 3 <= made[0].calls < 100, made[0].calls  # ~2 s of repeats at 50 ms each, not thousands

    w2 = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="w2", registry=CollectorRegistry())
    monkeypatch.setattr(w2, "_new_consumer", lambda: _FakeClient(GroupAuthorizationFailedError("sec")))
    monkeypatch.setattr(w2, "_new_producer", lambda: _FakeClient())
    with pytest.raises(GroupAuthorizationFailedError):
        await asyncio.wait_for(w2.run(), 5)


def _metric(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name{labels}`` in a Prometheus text exposition (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


async def _readyz_codes(get, consume) -> list[int]:
    """``/readyz`` status codes polled every 50 ms (up to 300 times) until 200; ``AssertionError`` when the
    process died."""
    import aiohttp

    codes: list[int] = []
    for _ in range(300):
        assert consume.proc.poll() is None, consume.output()
        try:
            code, _ = await get("/readyz")
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
            continue
        codes.append(code)
        if code == 200:
            break
        await asyncio.sleep(0.05)
    return codes


async def _metrics_when(get, cond, tries: int = 200) -> tuple[int, str]:
    """``GET /metrics`` every 100 ms until ``cond(text)`` (or ``tries`` polls); the last ``(status, text)``.
    Why: findings are counted when the fileset batch commits, after the records."""
    code, text = 0, ""
    for _ in range(tries):
        code, text = await get("/metrics")
        if cond(text):
            break
        await asyncio.sleep(0.1)
    return code, text


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

        ready_codes = await _readyz_codes(get, consume)
        assert ready_codes[-1] == 200 and set(ready_codes) <= {200, 503}
        assert (await get("/healthz"))[0] == 200
        code, body = await get("/readyz")
        assert orjson.loads(body)["partitions"] == [0, 1]

        recs = _records(scanner, 9)  # 3 planted tokens
        await _produce(mock_cluster.bootstrap, "spans", recs + [(b"poison", b"\xff\x00 not OTLP")])
        code, text = await _metrics_when(get, lambda t: (_metric(t, "railcar_consumer_records_total") or 0) >= 9
                                         and bool(_metric(t, "railcar_consumer_dead_lettered_total"))
                                         and bool(_metric(t, "railcar_consumer_findings_total", type="leaked_secret")))
        assert code == 200
        assert _metric(text, "railcar_consumer_records_total") == 9
        assert _metric(text, "railcar_consumer_dead_lettered_total") == 1
        assert _metric(text, "railcar_consumer_findings_total", type="leaked_secret") == 3
        # lag is refreshed on the next poll after the commit
        code, text = await _metrics_when(get, lambda t: all(_metric(t, "railcar_consumer_lag", partition=p) == 0
                                                            for p in ("0", "1")), tries=50)
        assert [_metric(text, "railcar_consumer_lag", partition=p) for p in ("0", "1")] == [0, 0]
        assert _metric(text, "railcar_consumer_records_per_second") is not None
        assert (await get("/nope"))[0] == 404
    assert consume.stop(timeout_s=15) == 0
