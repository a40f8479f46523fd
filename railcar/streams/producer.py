"""The publisher: a bounded in-memory queue between the request path and an aiokafka producer, with a spool.

``Publisher.publish(key, value)`` is synchronous, O(1) and never waits: it puts the record on a bounded
``asyncio.Queue`` (``[telemetry] queue_size``) or, when that is full, counts it as dropped. One background task
drains the queue in batches into ``AIOKafkaProducer.send`` (topic ``[kafka] trace_topic``, key the trace id,
``acks``, idempotence, compression, ``linger_ms``, ``max_batch_size`` and TLS/SASL from ``[kafka]``) and awaits the
acknowledgements. When a send fails or the broker is unreachable (start-up included) the publisher switches to
spooling: the unacknowledged records and everything queued after them go, in order, to the spool
(:class:`railcar.streams.spool.Spool` when ``[telemetry] spool_dir`` is set, else :class:`~railcar.streams.spool.MemorySpool`);
spool file I/O runs in a worker thread so an fsync never stalls the event loop. While the spool holds records
every new record goes behind them, and the spool is replayed oldest first, a batch at a time, each batch
acknowledged only after the broker acknowledged it; when it is empty the publisher goes back to direct sends.
On start-up a non-empty spool (a previous process was killed) is replayed before anything new.
These are the sender's explicit states, :class:`State` ``DIRECT`` / ``SPOOLING`` / ``REPLAYING``, one method each.

A record Kafka refuses for good (over ``[kafka] max_request_size``, or a broker's record-level error such as
MESSAGE_TOO_LARGE or INVALID_RECORD, see :func:`permanent_reason`) is dropped and counted, never retried: a retry
could not succeed and would hold back every later record. When the broker refuses a whole batch that way, its
records are re-sent one per request so only the one at fault is dropped.

The admin API is never used: the topic must exist (or be auto-created by the cluster).

Metrics (prometheus_client, default registry): ``railcar_publisher_queue_depth``, ``railcar_publisher_spool_bytes``,
``railcar_publisher_events_published_total``,
``railcar_publisher_events_dropped_total{reason=queue_full|spool_full|too_large|invalid}``,
``railcar_publisher_events_replayed_total``, ``railcar_publisher_events_spooled_total``. The same figures are in
:attr:`Publisher.stats` for this instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from railcar.streams.kafka_logging import quiet_aiokafka
from railcar.streams.settings import KafkaConfig, TelemetryConfig
from railcar.streams.spool import MemorySpool, Record, Spool

__all__ = ["Publisher", "State", "publisher_metrics", "permanent_reason"]

log = logging.getLogger("railcar.producer")

_METRICS: dict[int, dict[str, Any]] = {}

DROPPED = object()  # result of a send future for a record refused before it reached the producer's buffer


class State(enum.Enum):
    """Where the publisher's sender sends records (:attr:`Publisher.state`); one method per state, each returning
    the next one.

    ``DIRECT``: the spool is empty, queued records go to the producer. ``SPOOLING``: the broker is unreachable (no
    producer connects): queued records go to the spool. ``REPLAYING``: the producer is connected and the spool holds
    records: queued records go behind them and the spool is sent oldest first. ``STOPPED``: closed.

    Transitions: DIRECT -> SPOOLING when no producer connects; a batch in flight that stalls past
    ``request_timeout_ms`` spools what is queued meanwhile, so it ends in REPLAYING; SPOOLING -> REPLAYING on
    connecting; REPLAYING -> DIRECT once the spool is empty (one "recovered" log line); any -> STOPPED on close.
    """

    DIRECT = "direct"
    SPOOLING = "spooling"
    REPLAYING = "replaying"
    STOPPED = "stopped"


class _Window:
    """The batch in flight: ``(record, send future)`` pairs, when they were sent (monotonic seconds), and how many
    records of the spool's last peek they are (0: the batch came from the queue)."""

    __slots__ = ("sent", "sent_at", "spool_n")

    def __init__(self, sent: list[tuple[Record, asyncio.Future[Any]]], sent_at: float, spool_n: int = 0) -> None:
        self.sent, self.sent_at, self.spool_n = sent, sent_at, spool_n


def permanent_reason(exc: BaseException) -> str | None:
    """``"too_large"`` or ``"invalid"`` when ``exc`` means Kafka will never take this record (retrying cannot
    help), else None (transient: broker down, timeout, leader moved...). Per the Kafka protocol error codes:
    MESSAGE_TOO_LARGE (10), RECORD_LIST_TOO_LARGE (18), CORRUPT_MESSAGE (2), INVALID_TIMESTAMP (32),
    INVALID_RECORD (87); client side, aiokafka raises ``MessageSizeTooLargeError`` for a record over
    ``max_request_size`` and ``TypeError``/``AssertionError`` for a value that is not bytes."""
    from aiokafka import errors as E

    if isinstance(exc, (E.MessageSizeTooLargeError, E.RecordTooLargeError, E.RecordListTooLargeError)):
        return "too_large"
    if isinstance(exc, (E.CorruptRecordException, E.InvalidTimestampError)) or getattr(exc, "errno", None) == 87:
        return "invalid"
    if isinstance(exc, (TypeError, AssertionError)) and not isinstance(exc, E.KafkaError):
        return "invalid"
    return None


def publisher_metrics(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The publisher's Prometheus metrics in ``registry`` (created once per registry)."""
    m = _METRICS.get(id(registry))
    if m is None:
        m = {
            "queue": Gauge("railcar_publisher_queue_depth", "Trace events waiting in the in-memory queue.",
                           registry=registry),
            "spool_bytes": Gauge("railcar_publisher_spool_bytes", "Bytes of trace events in the local spool.",
                                 registry=registry),
            "published": Counter("railcar_publisher_events_published", "Trace events acknowledged by Kafka.",
                                 registry=registry),
            "dropped": Counter("railcar_publisher_events_dropped",
                               "Trace events lost: queue or spool full, or refused by Kafka for good (too_large, "
                               "invalid).",
                               ["reason"], registry=registry),
            "replayed": Counter("railcar_publisher_events_replayed", "Trace events delivered from the spool.",
                                registry=registry),
            "spooled": Counter("railcar_publisher_events_spooled", "Trace events written to the spool.",
                               registry=registry),
        }
        _METRICS[id(registry)] = m
    return m


class Publisher:
    """Non-blocking publisher of ``(key, value)`` records to ``kafka.trace_topic``.

    ``producer_factory(**kwargs)`` builds the aiokafka producer (default ``AIOKafkaProducer``; tests may wrap it).
    Lifecycle: ``await start()`` (never raises for an unreachable broker: it spools and retries), ``publish``,
    ``await close(timeout_s)`` which flushes the queue to the broker or, failing that, to the spool.
    :attr:`state` is the sender's :class:`State`.
    """

    BATCH = 500

    def __init__(self, kafka: KafkaConfig, telemetry: TelemetryConfig, *, topic: str | None = None,
                 registry: CollectorRegistry = REGISTRY,
                 producer_factory: Callable[..., Any] | None = None) -> None:
        self.kafka, self.telemetry = kafka, telemetry
        self.topic = topic or kafka.trace_topic
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=telemetry.queue_size)
        self.spool = (Spool(telemetry.spool_dir, telemetry.spool_max_bytes, telemetry.spool_segment_bytes)
                      if telemetry.spool_dir else MemorySpool(telemetry.spool_max_bytes))
        self._m = publisher_metrics(registry)
        self._factory = producer_factory
        self._producer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._spool_dropped_seen = self.spool.dropped
        # (monotonic start, spooled, replayed, dropped_spool_full at start) while an outage is being spooled
        self._outage: tuple[float, int, int, int] | None = None
        self.state = State.SPOOLING if self.spool.pending else State.DIRECT  # a killed process left a spool
        self.stats = {"published": 0, "replayed": 0, "spooled": 0, "dropped_queue_full": 0,
                      "dropped_spool_full": 0, "dropped_too_large": 0, "dropped_invalid": 0}

    # ----------------------------------------------------------------- request path
    def publish(self, key: bytes, value: bytes) -> bool:
        """Enqueue one record; returns False (and counts a drop) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait((key, value))
        except asyncio.QueueFull:
            self.stats["dropped_queue_full"] += 1
            self._m["dropped"].labels("queue_full").inc()
            return False
        return True

    @property
    def queue_depth(self) -> int:
        """Records waiting in the in-memory queue (not yet handed to the producer or the spool)."""
        return self._queue.qsize()

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Start the background sender (returns at once; the broker connection is made in the background)."""
        quiet_aiokafka()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="railcar-publisher")

    async def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued within ``timeout_s`` (else spool it), stop the producer, close the spool."""
        self._closing = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self.state = State.STOPPED
        await self._spool_queue()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), 5)
            self._producer = None
        self.spool.close()
        self._gauges()

    # ----------------------------------------------------------------- internals
    def _gauges(self) -> None:
        self._m["queue"].set(self._queue.qsize())
        self._m["spool_bytes"].set(self.spool.bytes)
        lost = self.spool.dropped - self._spool_dropped_seen
        if lost:
            self._spool_dropped_seen = self.spool.dropped
            self.stats["dropped_spool_full"] += lost
            self._m["dropped"].labels("spool_full").inc(lost)

    def _drain_queue(self, n: int) -> list[Record]:
        out: list[Record] = []
        while len(out) < n:
            try:
                out.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out

    async def _spool_queue(self) -> None:
        """Move everything queued to the spool (behind what it holds)."""
        new = self._drain_queue(10**9)
        if new:
            await self._to_spool(new)

    async def _to_spool(self, records: list[Record]) -> None:
        """Append ``records`` to the spool (in a worker thread); the first spooling of an outage logs one warning."""
        if self._outage is None:  # one warning per outage, not one per attempt
            self._outage = (time.monotonic(), self.stats["spooled"], self.stats["replayed"],
                            self.stats["dropped_spool_full"])
            where = f"spool {self.telemetry.spool_dir}" if self.telemetry.spool_dir else "the in-memory spool"
            log.warning("kafka at %s unreachable or slow; spooling trace events to %s until it recovers",
                        self.kafka.bootstrap_servers, where)
        await asyncio.to_thread(self.spool.append, records)
        self.stats["spooled"] += len(records)
        self._m["spooled"].inc(len(records))
        self._gauges()

    def _recovered(self) -> None:
        """The spool is empty again after an outage: one info line with the outage's counts."""
        if self._outage is None or self.spool.pending:
            return
        t0, spooled, replayed, lost = self._outage
        self._outage = None
        log.info("kafka recovered after %.1f s: %d trace events spooled, %d replayed, %d dropped (spool full)",
                 time.monotonic() - t0, self.stats["spooled"] - spooled, self.stats["replayed"] - replayed,
                 self.stats["dropped_spool_full"] - lost)

    async def _ensure_producer(self) -> bool:
        if self._producer is not None:
            return True
        from aiokafka import AIOKafkaProducer

        k = self.kafka
        factory = self._factory or AIOKafkaProducer
        producer = factory(
            **k.client_options(),
            acks="all" if k.acks == "all" else int(k.acks),
            enable_idempotence=k.enable_idempotence,
            compression_type=None if k.compression_type == "none" else k.compression_type,
            linger_ms=k.linger_ms, max_batch_size=k.max_batch_size, max_request_size=k.max_request_size,
            request_timeout_ms=k.request_timeout_ms, retry_backoff_ms=min(k.retry_backoff_ms, 100),
        )
        try:
            await asyncio.wait_for(producer.start(), k.request_timeout_ms / 1000 + 1)
        except Exception as exc:  # unreachable broker: spool and retry later (the spooling warning says so once)
            log.debug("kafka producer not ready (%s); events are spooled", type(exc).__name__)
            with contextlib.suppress(Exception):
                await producer.stop()
            return False
        self._producer = producer
        return True

    async def _send(self, records: list[Record]) -> list[tuple[Record, asyncio.Future[Any]]]:
        """Hand ``records`` to the producer; returns ``(record, future)`` pairs. A record the producer refuses for
        good (:func:`permanent_reason`, e.g. over ``max_request_size``) gets a future already resolved to
        ``(DROPPED, reason)`` and the next records still go; a record the producer would not take within the request
        timeout (its buffer is full, the broker is gone) gets a future already failed, and so do all after it."""
        out: list[tuple[Record, asyncio.Future[Any]]] = []
        loop = asyncio.get_running_loop()
        for i, (key, value) in enumerate(records):
            try:
                fut = await asyncio.wait_for(self._producer.send(self.topic, value, key=key or None),
                                             self.kafka.request_timeout_ms / 1000)
            except Exception as exc:
                reason = permanent_reason(exc)
                if reason is not None:
                    done = loop.create_future()
                    done.set_result((DROPPED, reason))
                    out.append(((key, value), done))
                    continue
                log.debug("kafka send failed: %s", type(exc).__name__)
                for rec in records[i:]:
                    failed = loop.create_future()
                    failed.set_exception(exc)
                    out.append((rec, failed))
                break
            out.append(((key, value), fut))
        return out

    def _drop(self, drops: dict[str, int]) -> None:
        """Count the records of one window Kafka refuses for good, ``drops`` by reason: one warning per reason and
        window, not one per record."""
        for reason, n in drops.items():
            self.stats[f"dropped_{reason}"] += n
            self._m["dropped"].labels(reason).inc(n)
            log.warning("dropped %d trace event(s) Kafka refuses for good (%s); see "
                        "railcar_publisher_events_dropped_total", n, reason)

    async def _isolate(self, records: list[Record], drops: dict[str, int]) -> tuple[int, list[Record]]:
        """Send ``records`` (a batch the broker refused with a record-level error) one record per request so only
        the record at fault is dropped (counted in ``drops``). Returns ``(delivered, still failing for a transient
        reason)``."""
        ok, again = 0, []
        for rec in records:
            (fut_pair,) = await self._send([rec])
            fut = fut_pair[1]
            with contextlib.suppress(Exception):
                await self._producer.flush()
            try:
                res = await asyncio.wait_for(asyncio.shield(fut), self.kafka.request_timeout_ms / 1000)
            except Exception as exc:
                reason = permanent_reason(exc)
                if reason is None:
                    again.append(rec)
                else:
                    drops[reason] = drops.get(reason, 0) + 1
                continue
            if isinstance(res, tuple) and res and res[0] is DROPPED:
                drops[res[1]] = drops.get(res[1], 0) + 1
            else:
                ok += 1
        return ok, again

    # ----------------------------------------------------------------- the sender's states
    async def _run(self) -> None:
        """The sender loop: one step of the current :class:`State` at a time until :attr:`State.STOPPED`.

        Order is window (sent, unacknowledged) < spool < queue at every moment. With idempotence aiokafka never
        expires a batch: it retries until the broker is back and delivers exactly once, in order. So a window that
        stalls is left to aiokafka; after ``request_timeout_ms`` new records stop going to the producer and go to
        the spool instead, and are replayed once the window is acknowledged.
        """
        steps = {State.DIRECT: self._direct, State.SPOOLING: self._spooling, State.REPLAYING: self._replaying}
        while self.state is not State.STOPPED:
            self._gauges()
            self.state = await steps[self.state]()

    async def _direct(self) -> State:
        """DIRECT: the spool is empty; the next batch from the queue goes to the producer. To SPOOLING when no
        producer connects (the batch is spooled); STOPPED when closing with nothing queued."""
        if self._closing and self._queue.empty():
            return State.STOPPED
        try:
            first = await asyncio.wait_for(self._queue.get(), 0.2)
        except TimeoutError:
            return State.DIRECT
        batch = [first] + self._drain_queue(self.BATCH - 1)
        if not await self._ensure_producer():
            await self._to_spool(batch)
            return State.SPOOLING
        return await self._deliver(_Window(await self._send(batch), time.monotonic()))

    async def _spooling(self) -> State:
        """SPOOLING: the spool holds records and no producer is connected: queued records go behind them, a
        connection is tried every ``retry_backoff_ms``. To REPLAYING once connected; STOPPED when closing."""
        if not self.spool.pending:  # the size cap dropped what was spooled
            return State.DIRECT
        await self._spool_queue()
        if await self._ensure_producer():
            return State.REPLAYING
        if self._closing:
            return State.STOPPED
        await asyncio.sleep(self.kafka.retry_backoff_ms / 1000)
        return State.SPOOLING

    async def _replaying(self) -> State:
        """REPLAYING: queued records go behind the spool, the spool's oldest batch goes to the producer and is
        acknowledged in the spool once the broker acknowledged it all. To DIRECT once the spool is empty."""
        if not self.spool.pending:
            return State.DIRECT
        await self._spool_queue()
        batch = await asyncio.to_thread(self.spool.peek, self.BATCH)
        if not batch:
            return State.REPLAYING
        return await self._deliver(_Window(await self._send(batch), time.monotonic(), spool_n=len(batch)))

    def _after_delivery(self) -> State:
        # The producer is connected here: a non-empty spool (records spooled meanwhile) is replayed next.
        return State.REPLAYING if self.spool.pending else State.DIRECT

    async def _deliver(self, window: _Window) -> State:
        """Wait for the acknowledgements of ``window`` (sent from the queue, or from the spool when
        ``window.spool_n``). While it stalls past ``request_timeout_ms`` (or on close) queued records are spooled;
        records failed for a transient reason are sent again after ``retry_backoff_ms``; on close the records not
        delivered go to the spool (unless they came from it: at-least-once). Returns the next state."""
        while True:
            pending = [f for _, f in window.sent if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=0.1)
            if any(not f.done() for _, f in window.sent):
                if await self._waiting(window) is State.STOPPED:
                    return State.STOPPED
                self._gauges()
                continue
            failed = await self._settle(window)
            if failed:  # non-idempotent expiry or a non-retriable error: send those again, first
                log.debug("kafka rejected %d events; retrying", len(failed))
                await asyncio.sleep(self.kafka.retry_backoff_ms / 1000)
                if not self._closing:
                    window.sent, window.sent_at = await self._send(failed), time.monotonic()
                    self._gauges()
                    continue
                if not window.spool_n:
                    await self._to_spool(failed)
                return State.STOPPED
            if window.spool_n:
                await asyncio.to_thread(self.spool.ack, window.spool_n)
                self._recovered()
            return self._after_delivery()

    async def _waiting(self, window: _Window) -> State | None:
        """``window`` is not all acknowledged yet. Stalled past ``request_timeout_ms`` (or closing): what is queued
        goes to the spool. Stalled while closing: its undelivered records too (unless they came from the spool:
        at-least-once on shutdown), and STOPPED. Else None: keep waiting."""
        stalled = time.monotonic() - window.sent_at > self.kafka.request_timeout_ms / 1000
        if stalled or self._closing:
            await self._spool_queue()
        if not (self._closing and stalled):
            return None
        if not window.spool_n:
            await self._to_spool([r for r, f in window.sent if not f.done() or f.exception()])
        return State.STOPPED

    async def _settle(self, window: _Window) -> list[Record]:
        """Count the resolved ``window``: delivered (published, and replayed when from the spool), dropped for
        good (a record-level refusal isolates the culprit first); returns the records that failed transiently."""
        failed: list[Record] = []
        refused: list[Record] = []
        drops: dict[str, int] = {}
        n_ok = 0
        for r, f in window.sent:
            exc = f.exception()
            if exc is None:
                res = f.result()
                if isinstance(res, tuple) and res and res[0] is DROPPED:
                    drops[res[1]] = drops.get(res[1], 0) + 1
                else:
                    n_ok += 1
            elif permanent_reason(exc) is not None:
                refused.append(r)
            else:
                failed.append(r)
        if refused:  # a record-level error from the broker fails its whole batch: find the culprit
            ok, again = await self._isolate(refused, drops)
            n_ok += ok
            failed += again
        self._drop(drops)
        self.stats["published"] += n_ok
        self._m["published"].inc(n_ok)
        if window.spool_n:
            self.stats["replayed"] += n_ok
            self._m["replayed"].inc(n_ok)
        return failed
