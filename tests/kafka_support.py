"""Test helpers for the Kafka part: a mock-cluster fixture, reading a topic back, polling until a condition holds,
a connected publisher, the 2-consumer group patch, a short group session for ``railcar consume`` subprocesses.

The SyncGroup delay below is a test-only workaround for librdkafka's mock cluster (``../shared/KAFKA.md``): the
mock rejects a follower's SyncGroup that arrives after the leader's, so the leader's SyncGroup is delayed ~0.3 s.
Railcar's own code never carries it.

:func:`short_session_env` is another test-only workaround, for restarts after a SIGKILL: the mock cluster
(``rdkafka_mock_cgrp.c``) waits ``session_timeout_ms - 1000`` for members to (re)join before it elects a leader,
keeps a dead member until its session times out, and may elect that dead member leader (a real coordinator
elects among the members that rejoined); the new member then waits in SyncGroup for another session timeout
before the next round. With aiokafka's 10 s session each restart costs 10 s, sometimes 25 s; a 3 s session
makes it 2-6 s. Only the timeouts change, never Railcar's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from shared_fixtures import RECORDED_CHAT

from railcar.tools.mock_broker import MockCluster

RECORDED = RECORDED_CHAT


@pytest.fixture
def mock_cluster() -> Iterator[MockCluster]:
    with MockCluster(brokers=1) as mc:
        yield mc


async def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 15.0, to_end: bool = False) -> list:
    """All records of ``topic`` from the beginning, waiting until at least ``expect`` arrived (or timeout); with
    ``to_end``, also until every partition is read up to its end offset at the time ``expect`` was reached (a
    count alone can stop early when some partitions hold repeats)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list = []
    try:
        # Assign every partition explicitly so there is no group to wait for.
        deadline = asyncio.get_running_loop().time() + timeout
        parts = None
        while parts is None and asyncio.get_running_loop().time() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - test helper
                parts = consumer.partitions_for_topic(topic) or None
                if parts is None:
                    await asyncio.sleep(0.1)
        if not parts:
            return out
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        await consumer.seek_to_beginning()
        while len(out) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
        if to_end:
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]] \
                    and asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for recs in batch.values():
                    out.extend(recs)
        # A short extra read catches duplicates beyond the expected count.
        batch = await consumer.getmany(timeout_ms=300)
        for recs in batch.values():
            out.extend(recs)
    finally:
        await consumer.stop()
    return out


async def eventually(cond: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.05) -> bool:
    """Poll ``cond()`` every ``interval_s`` until it is true (returns True) or ``timeout_s`` passed (returns False:
    the caller's own assertions then say what is missing)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


async def publish_first(pub: Any, key: bytes = b"t", value: bytes = b"warm", timeout_s: float = 5.0) -> None:
    """Publish one record through a started :class:`railcar.streams.producer.Publisher` and wait until the broker took it,
    so the producer is connected before a test injects a fault. ``AssertionError`` after ``timeout_s``."""
    pub.publish(key, value)
    assert await eventually(lambda: pub.stats["published"] >= 1, timeout_s), f"not published: {pub.stats}"


@contextlib.contextmanager
def delayed_sync_group(delay_s: float = 0.3) -> Iterator[None]:
    """Test-only: delay the group leader's SyncGroup so followers' SyncGroup reach the mock first."""
    from aiokafka.consumer.group_coordinator import CoordinatorGroupRebalance

    original = CoordinatorGroupRebalance._on_join_leader

    async def patched(self, response):  # type: ignore[no-untyped-def]
        await asyncio.sleep(delay_s)
        return await original(self, response)

    CoordinatorGroupRebalance._on_join_leader = patched
    try:
        yield
    finally:
        CoordinatorGroupRebalance._on_join_leader = original


_SESSION_SHIM = '''"""Test-only, written by tests/kafka_support.py:short_session_env: AIOKafkaConsumer defaults to a
short group session in this process (a workaround for the mock cluster's slow rejoin after a member died)."""
import os

import aiokafka

_init = aiokafka.AIOKafkaConsumer.__init__


def __init__(self, *topics, **kw):
    kw.setdefault("session_timeout_ms", int(os.environ["MOCK_KAFKA_SESSION_TIMEOUT_MS"]))
    kw.setdefault("heartbeat_interval_ms", int(os.environ["MOCK_KAFKA_HEARTBEAT_INTERVAL_MS"]))
    _init(self, *topics, **kw)


aiokafka.AIOKafkaConsumer.__init__ = __init__
'''


def short_session_env(tmp_path: Path, session_timeout_ms: int = 3000, heartbeat_interval_ms: int = 500) -> dict:
    """Test-only: environment entries for a ``railcar consume`` subprocess (the ``railcar_process`` fixture)
    whose aiokafka consumers default to a ``session_timeout_ms`` group session with heartbeats every
    ``heartbeat_interval_ms`` (a ``sitecustomize`` written under ``tmp_path``, put first on ``PYTHONPATH``).
    Why: the mock cluster's rejoin after a SIGKILLed member (module docstring). Returns ``{name: value}``."""
    shim = tmp_path / "short_session_shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_SESSION_SHIM)
    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "MOCK_KAFKA_SESSION_TIMEOUT_MS": str(session_timeout_ms),
            "MOCK_KAFKA_HEARTBEAT_INTERVAL_MS": str(heartbeat_interval_ms)}
