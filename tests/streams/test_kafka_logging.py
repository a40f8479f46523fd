"""railcar.streams.kafka_logging: aiokafka's repeated log lines are rate-limited; the publisher reports an outage once."""

from __future__ import annotations

import asyncio
import logging

from kafka_support import eventually, mock_cluster, publish_first  # noqa: F401  (mock_cluster: fixture)
from prometheus_client import CollectorRegistry

from railcar.streams.kafka_logging import RepeatFilter, quiet_aiokafka
from railcar.streams.producer import Publisher
from railcar.streams.settings import KafkaConfig, TelemetryConfig
from railcar.tools.mock_broker import MockCluster


def _record(msg: str, name: str = "aiokafka.conn", level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("x",), None)


def test_repeat_filter_passes_first_then_one_per_interval_with_count() -> None:
    now = [0.0]
    f = RepeatFilter(interval_s=10, clock=lambda: now[0])
    passed = []
    for i in range(50):  # 20 a second for 2.5 s
        now[0] = i * 0.05
        passed.append(f.filter(_record("Unable connect to node with id %s")))
    assert passed == [True] + [False] * 49 and f.suppressed == 49
    assert f.filter(_record("another template %s"))  # a different message is not held back
    assert f.filter(_record("Unable connect to node with id %s", level=logging.WARNING))
    now[0] = 10.5
    rec = _record("Unable connect to node with id %s")
    assert f.filter(rec) and "[49 similar suppressed in the last 10 s]" in rec.getMessage()
    now[0] = 11.0
    assert not f.filter(_record("Unable connect to node with id %s"))


def test_quiet_aiokafka_covers_module_loggers() -> None:
    f = quiet_aiokafka()
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender", "aiokafka.cluster"):
        assert f in logging.getLogger(name).filters, name
    assert quiet_aiokafka() is f


async def test_outage_logs_one_warning_and_one_recovery_line(mock_cluster: MockCluster, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="aiokafka")
    caplog.set_level(logging.INFO, logger="railcar.producer")
    mock_cluster.create_topic("spans", 2)
    k = KafkaConfig(bootstrap_servers=mock_cluster.bootstrap, trace_topic="spans", request_timeout_ms=500,
                    retry_backoff_ms=50, linger_ms=2)
    pub = Publisher(k, TelemetryConfig(), registry=CollectorRegistry())
    await pub.start()
    await publish_first(pub, b"t", b"first")
    caplog.clear()
    mock_cluster.broker_down(1)
    for i in range(40):  # 2.4 s of traffic with the broker down
        pub.publish(b"t", str(i).encode())
        await asyncio.sleep(0.06)
    mock_cluster.broker_up(1)
    await eventually(lambda: pub.spool.pending == 0 and pub.queue_depth == 0 and pub.stats["published"] >= 41, 10)
    await pub.close()
    assert pub.stats["published"] == 41 and pub.stats["spooled"] > 0
    ours = [r for r in caplog.records if r.name == "railcar.producer" and r.levelno >= logging.INFO]
    assert [r.levelno for r in ours] == [logging.WARNING, logging.INFO], [r.getMessage() for r in ours]
    assert "spooling" in ours[0].getMessage() and "recovered" in ours[1].getMessage()
    assert f"{pub.stats['spooled']} trace events spooled, {pub.stats['replayed']} replayed" in ours[1].getMessage()
    theirs = [r for r in caplog.records if r.name.startswith("aiokafka") and r.levelno >= logging.WARNING]
    # Without the filter aiokafka logs ~20 errors a second here; with it each template passes once.
    assert len(theirs) <= 6, [r.getMessage() for r in theirs]
