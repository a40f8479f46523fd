"""railcar.tools.mock_broker: a real Kafka-protocol broker from librdkafka, driven through ctypes."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from kafka_support import mock_cluster, read_topic  # noqa: F401  (fixture)

from railcar.tools.mock_broker import MockBrokerError, MockCluster


async def test_produce_and_read_back(mock_cluster: MockCluster) -> None:
    mock_cluster.create_topic("t1", partitions=2)
    assert mock_cluster.bootstrap.startswith("127.0.0.1:")
    p = AIOKafkaProducer(bootstrap_servers=mock_cluster.bootstrap, acks="all", enable_idempotence=True)
    await p.start()
    try:
        for i in range(20):
            await p.send("t1", f"v{i}".encode(), key=f"k{i % 3}".encode())
        await p.flush()
    finally:
        await p.stop()
    recs = await read_topic(mock_cluster.bootstrap, "t1", 20)
    assert sorted(r.value for r in recs) == sorted(f"v{i}".encode() for i in range(20))
    # Same key, same partition, in order.
    by_key: dict = {}
    for r in recs:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(s) == 1 for s in by_key.values())


async def test_broker_down_refuses_then_recovers(mock_cluster: MockCluster) -> None:
    mock_cluster.create_topic("t2", partitions=1)
    p = AIOKafkaProducer(bootstrap_servers=mock_cluster.bootstrap, request_timeout_ms=1500,
                         retry_backoff_ms=50)
    await p.start()
    try:
        await p.send_and_wait("t2", b"before")
        mock_cluster.broker_down(1)
        with pytest.raises((KafkaError, asyncio.TimeoutError)):
            await asyncio.wait_for(p.send_and_wait("t2", b"during"), 1.0)
        mock_cluster.broker_up(1)
        await asyncio.wait_for(p.send_and_wait("t2", b"after"), 10)
    finally:
        await p.stop()
    values = [r.value for r in await read_topic(mock_cluster.bootstrap, "t2", 2)]
    assert values[0] == b"before" and b"after" in values


def test_errors_are_reported() -> None:
    with MockCluster() as mc:
        with pytest.raises(MockBrokerError, match=r"broker_down\(99\)"):
            mc.broker_down(99)
    with pytest.raises(MockBrokerError, match="closed"):
        mc.create_topic("x")
    with pytest.raises(MockBrokerError, match="brokers"):
        MockCluster(brokers=0)


def test_runs_as_a_module() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "railcar.tools.mock_broker", "--topic", "demo:2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        host, _, port = line.partition(":")
        assert host == "127.0.0.1" and int(port) > 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
