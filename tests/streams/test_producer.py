"""railcar.streams.producer: bounded queue -> aiokafka, spool while the broker is down, replay in order."""

from __future__ import annotations

import asyncio
import time

from kafka_support import eventually, mock_cluster, publish_first, read_topic  # noqa: F401  (mock_cluster: fixture)
from prometheus_client import CollectorRegistry

from railcar.streams.producer import Publisher
from railcar.streams.settings import KafkaConfig, TelemetryConfig
from railcar.tools.mock_broker import MockCluster


def _cfg(mc: MockCluster, **tel) -> tuple[KafkaConfig, TelemetryConfig]:
    k = KafkaConfig(bootstrap_servers=mc.bootstrap, trace_topic="spans", request_timeout_ms=1000,
                    retry_backoff_ms=100, linger_ms=2)
    return k, TelemetryConfig(**tel)


def _check_exactly_once_in_order(recs, expected: dict[bytes, list[bytes]]) -> None:
    got: dict[bytes, list[bytes]] = {}
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        got.setdefault(r.key, []).append(r.value)
    assert got == expected


async def test_publishes_with_key_and_order(mock_cluster: MockCluster) -> None:
    mock_cluster.create_topic("spans", 4)
    k, t = _cfg(mock_cluster)
    pub = Publisher(k, t, registry=CollectorRegistry())
    await pub.start()
    expected: dict[bytes, list[bytes]] = {}
    for i in range(300):
        key = f"trace-{i % 7}".encode()
        expected.setdefault(key, []).append(f"{i}".encode())
        assert pub.publish(key, f"{i}".encode())
    await pub.close()
    assert pub.stats["published"] == 300 and pub.stats["spooled"] == 0
    _check_exactly_once_in_order(await read_topic(mock_cluster.bootstrap, "spans", 300), expected)


async def test_queue_full_drops_and_counts(mock_cluster: MockCluster) -> None:
    k, t = _cfg(mock_cluster, queue_size=5)
    pub = Publisher(k, t, registry=CollectorRegistry())  # not started: nothing drains the queue
    results = [pub.publish(b"k", b"v") for _ in range(8)]
    assert results == [True] * 5 + [False] * 3 and pub.stats["dropped_queue_full"] == 3


async def test_broker_down_spools_then_replays_exactly_once(mock_cluster: MockCluster, tmp_path) -> None:
    mock_cluster.create_topic("spans", 4)
    k, t = _cfg(mock_cluster, spool_dir=str(tmp_path))
    pub = Publisher(k, t, registry=CollectorRegistry())
    await pub.start()
    expected: dict[bytes, list[bytes]] = {}
    n = 0

    async def burst(count: int) -> None:
        nonlocal n
        for _ in range(count):
            key = f"t{n % 5}".encode()
            expected.setdefault(key, []).append(str(n).encode())
            t0 = time.perf_counter()
            pub.publish(key, str(n).encode())
            assert time.perf_counter() - t0 < 0.005  # publish never waits for Kafka
            n += 1
            await asyncio.sleep(0.002)

    await burst(50)
    mock_cluster.broker_down(1)
    await burst(300)
    await asyncio.sleep(1.5)
    assert pub.stats["spooled"] > 0 and pub.spool.bytes > 0
    mock_cluster.broker_up(1)
    await burst(50)
    await eventually(lambda: pub.spool.pending == 0 and pub.queue_depth == 0, 10, 0.1)
    await pub.close()
    assert pub.stats["replayed"] > 0
    _check_exactly_once_in_order(await read_topic(mock_cluster.bootstrap, "spans", n), expected)


async def test_spooled_events_delivered_after_restart(mock_cluster: MockCluster, tmp_path) -> None:
    mock_cluster.create_topic("spans", 2)
    k, t = _cfg(mock_cluster, spool_dir=str(tmp_path))
    mock_cluster.broker_down(1)
    pub = Publisher(k, t, registry=CollectorRegistry())
    await pub.start()
    for i in range(40):
        pub.publish(b"trace", str(i).encode())
    await pub.close(timeout_s=0.5)  # broker still down: everything ends in the spool
    assert pub.spool.pending == 40 and list(tmp_path.glob("*.seg"))
    mock_cluster.broker_up(1)
    pub2 = Publisher(k, t, registry=CollectorRegistry())  # a new process over the same spool
    await pub2.start()
    pub2.publish(b"trace", b"40")
    await eventually(lambda: pub2.spool.pending == 0 and pub2.queue_depth == 0, 10, 0.1)
    await pub2.close()
    recs = await read_topic(mock_cluster.bootstrap, "spans", 41)
    _check_exactly_once_in_order(recs, {b"trace": [str(i).encode() for i in range(41)]})


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_oversize_record_is_dropped_and_counted_not_retried(mock_cluster: MockCluster) -> None:
    # A 2 MB record is over max_request_size: aiokafka refuses it for good. It must not block what follows.
    mock_cluster.create_topic("spans", 2)
    k, t = _cfg(mock_cluster)
    k.max_request_size = 256 * 1024
    reg = CollectorRegistry()
    pub = Publisher(k, t, registry=reg)
    await pub.start()
    pub.publish(b"t", b"0")
    pub.publish(b"t", b"x" * 2_000_000)
    for i in range(1, 20):
        pub.publish(b"t", str(i).encode())
    await eventually(lambda: pub.stats["published"] >= 20)
    await pub.close(timeout_s=2)
    assert pub.stats["published"] == 20 and pub.stats["dropped_too_large"] == 1 and pub.spool.pending == 0
    assert _sample(reg, "railcar_publisher_events_dropped_total", reason="too_large") == 1
    _check_exactly_once_in_order(await read_topic(mock_cluster.bootstrap, "spans", 20),
                                 {b"t": [str(i).encode() for i in range(20)]})


async def test_oversize_records_of_one_batch_log_one_warning(mock_cluster: MockCluster, caplog) -> None:
    # Counted per record, logged per batch and reason: a run of refused records must not flood the log.
    mock_cluster.create_topic("spans", 1)
    k, t = _cfg(mock_cluster)
    k.max_request_size = 256 * 1024
    pub = Publisher(k, t, registry=CollectorRegistry())
    await pub.start()
    await publish_first(pub)
    caplog.set_level("WARNING", logger="railcar.producer")
    for i in range(4):
        pub.publish(b"t", b"x" * 300_000 if i < 3 else b"ok")
    await eventually(lambda: pub.stats["published"] >= 2)
    await pub.close(timeout_s=2)
    assert pub.stats["dropped_too_large"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "railcar.producer" and "refuses" in r.getMessage()]
    assert warnings == ["dropped 3 trace event(s) Kafka refuses for good (too_large); see "
                        "railcar_publisher_events_dropped_total"]


async def test_broker_rejected_record_is_isolated_and_dropped(mock_cluster: MockCluster) -> None:
    # The broker answers one Produce with MESSAGE_TOO_LARGE (errno 10): the batch's records are retried one by
    # one, only the one rejected again is dropped, the rest arrive in order.
    mock_cluster.create_topic("spans", 1)
    k, t = _cfg(mock_cluster)
    k.enable_idempotence = False
    reg = CollectorRegistry()
    pub = Publisher(k, t, registry=reg)
    await pub.start()
    await publish_first(pub)
    mock_cluster.push_request_errors(0, [10, 10])  # the batch, then the first record retried alone
    for i in range(5):
        pub.publish(b"t", str(i).encode())
    await eventually(lambda: pub.stats["published"] + pub.stats["dropped_too_large"] >= 6)
    await pub.close(timeout_s=2)
    assert pub.stats["dropped_too_large"] == 1 and pub.stats["published"] == 5
    assert _sample(reg, "railcar_publisher_events_dropped_total", reason="too_large") == 1
    recs = await read_topic(mock_cluster.bootstrap, "spans", 5)
    assert [r.value for r in sorted(recs, key=lambda r: r.offset)] == [b"warm", b"1", b"2", b"3", b"4"]
