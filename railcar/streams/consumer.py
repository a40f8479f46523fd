"""The security consumer group on the trace topic: :class:`ConsumerGroupWorker` runs a
:class:`railcar.streams.processor.SecurityProcessor` over the ``[kafka] trace_topic`` records as one member of
``[kafka] group_id`` (``railcar consume``, :mod:`railcar.commands.consume`, runs one with its HTTP endpoints).

After each fetched batch, in this order: the fileset commit (``railcar.streams.fileset``: this writer's state file, the
merged snapshot replaced atomically, suggestions appended by id, all under the fileset lock) — durable — then the
findings records published to ``[kafka] findings_topic``, then the offsets committed.

Findings topic, at least once: the writer state committed with the findings also holds the *outbox* — every
``(finding id, revision)`` changed by the batch (a new finding, or a recurrence: new count, location) and not yet
acknowledged by the broker — and the position reached in each partition. Records are sent by an idempotent
producer (``enable_idempotence``, ``acks=all``), value the findings record (JSON,
``railcar/streams/findings_record.schema.json``), key the finding id, header ``railcar.finding.revision``; an
acknowledged record leaves the outbox at the next commit. A consumer killed anywhere (even right after the fileset
commit) restores its state from its writer file, sends the outbox again before consuming (same id, revision and
content) and skips re-read records below its committed positions, so no finding is missing from the topic, none is
duplicated in the fileset, and counts are exact. Downstream deduplication is one key: ``(id, revision)``; the
latest revision of an id is the current state (so the topic can be compacted by key).

The broker unreachable at start: the member waits, retrying with exponential backoff (0.5 s doubling to 30 s,
one warning per attempt naming ``[kafka] bootstrap_servers``), and ``/readyz`` answers 503 ``waiting for kafka``
meanwhile; :meth:`ConsumerGroupWorker.stop` ends the wait. A group join refused by a reachable coordinator is
retried the same way (``/readyz`` 503 ``not ready``). A group error while consuming (e.g. a SyncGroup refused
while the group rebalances around a member that was SIGKILLed and has not yet timed out) is logged and the
member rejoins; three in a row and the consumer is replaced by a new member. Only authorization errors end
:meth:`ConsumerGroupWorker.run`. After a crash, the restarted member waits for the group to drop the dead member
(its session timeout, aiokafka's ``session_timeout_ms``, 10 s by default) before it gets partitions.

Several consumers of one group: each instance is one fileset writer (own state file) and the snapshot is the
merge of all writers' states rebuilt under the lock, so they never overwrite each other and a suggestion id is
never appended twice (see ``.notes/pipeline.md``).

Undecodable records go to ``[kafka] dead_letter_topic`` unchanged, with headers ``railcar.dlq.reason``,
``railcar.dlq.topic``, ``railcar.dlq.partition``, ``railcar.dlq.offset``; they are counted and the group goes on.

Metrics (prometheus_client, :func:`railcar.streams.processor.consumer_metrics`): ``railcar_consumer_records_total``,
``railcar_consumer_records_per_second``, ``railcar_consumer_lag{partition}``,
``railcar_consumer_findings_total{type}``, ``railcar_consumer_dead_lettered_total``.

HTTP (:func:`health_app`): ``GET /healthz`` (200 while the process runs), ``GET /readyz`` (200 once the member has
joined the group and received its assignment, 503 before, after it left the group and while stopping),
``GET /metrics`` (Prometheus text format 0.0.4 of the registry the worker's metrics live in).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.kafka_logging import quiet_aiokafka
from railcar.streams.pipeline import build_processor
from railcar.streams.processor import consumer_metrics
from railcar.streams.settings import KafkaConfig, StreamsSettings

__all__ = ["ConsumerGroupWorker", "default_writer_id", "health_app"]

log = logging.getLogger("railcar.consumer")


def default_writer_id(kafka: KafkaConfig) -> str:
    """``<group>-<host>``: stable across restarts of one pod, distinct between pods."""
    return f"{kafka.group_id}-{os.environ.get('POD_NAME') or socket.gethostname()}"


class ConsumerGroupWorker:
    """One member of the ``[kafka] group_id`` consumer group. ``run()`` until ``stop()``.

    ``config``: the root config (its ``[kafka]``, ``[fileset]`` and ``[detection]``); ``scanner``: a shared
    catalog scanner (built from ``[detection]`` when None); ``writer_id``: the fileset writer (default
    :func:`default_writer_id`). Raises what :func:`railcar.streams.pipeline.build_processor` raises.
    ``consumer_kwargs`` are passed to ``AIOKafkaConsumer`` (tests use it for timeouts). ``joined`` is True while
    the member holds an assignment from the group (set by the rebalance listener; what ``/readyz`` reports);
    ``assigned`` is the set of partition numbers it holds. ``registry`` holds its metrics (``/metrics``).
    """

    def __init__(self, config: StreamsSettings, *, scanner: Scanner | None = None, writer_id: str = "",
                 registry: CollectorRegistry = REGISTRY, **consumer_kwargs: Any) -> None:
        self.config = config
        self.k = config.kafka
        self.registry = registry
        self.metrics = consumer_metrics(registry)
        self.proc = build_processor(config, scanner=scanner, writer_id=writer_id or default_writer_id(self.k),
                                    registry=registry)
        self.agg = self.proc.agg
        self.agg.outbox_enabled = True  # the findings topic: pending publishes ride in the fileset commit
        self.agg.max_locations = config.detection.max_locations_per_finding
        self.published = 0  # findings records acknowledged by the broker (repeats after a crash included)
        self.skipped = 0    # re-read records already counted in the committed state
        self.waiting = False  # True while the broker is unreachable at start (``/readyz`` says so)
        self.backoff_s = (0.5, 30.0)  # first and longest wait between connection attempts
        self.consumer_kwargs = consumer_kwargs
        self._stop = asyncio.Event()
        self.dead_lettered = 0
        self.batches = 0
        self.joined = False
        self.assigned: set[int] = set()
        self._rate_t = time.monotonic()
        self._rate_n = 0
        self.batch_window_s = 0.1  # longest wait to fill a batch once records are flowing
        self.group_errors = 0  # group errors met while consuming (a refused SyncGroup, ...), each one rejoined
        self.max_group_errors = 3  # in a row: then the consumer is replaced by a new member

    def stop(self) -> None:
        """Ask :meth:`run` to finish its current batch and return (call it from the event loop's thread)."""
        self._stop.set()

    def _update_rate(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._rate_t >= 1.0:
            self.metrics["rate"].set((self.proc.records - self._rate_n) / max(now - self._rate_t, 1e-9))
            self._rate_t, self._rate_n = now, self.proc.records

    async def _update_lag(self, consumer: Any) -> None:
        for tp in consumer.assignment():
            hw, pos = consumer.highwater(tp), None
            try:
                pos = await consumer.position(tp)
            except Exception:  # partition being revoked: skip this round
                pass
            if hw is not None and pos is not None:
                self.metrics["lag"].labels(str(tp.partition)).set(max(hw - pos, 0))

    async def _fetch(self, consumer: Any, max_records: int) -> dict[Any, list[Any]]:
        """One batch: wait up to 300 ms for records, then keep fetching for up to ``batch_window_s`` while more
        arrive, up to ``max_records``. Why: every batch ends in a fileset commit (fsyncs, snapshot rebuild) and an
        offset commit (a broker round trip); a fetch returns only what one fetch response carried (tens of
        records), so without this the consumer is bound by those per-batch costs, not by scanning."""
        batch = await consumer.getmany(timeout_ms=300, max_records=max_records)
        n = sum(len(v) for v in batch.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_window_s
        while n and n < max_records and (left := deadline - loop.time()) > 0:
            more = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=max_records - n)
            if not more:
                break
            for tp, recs in more.items():
                batch.setdefault(tp, []).extend(recs)
                n += len(recs)
        return batch

    def _new_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(group_id=self.k.group_id, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **self.k.client_options(), **self.consumer_kwargs)
        consumer.subscribe([self.k.trace_topic], listener=_Listener(self))
        return consumer

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self.k.client_options(), acks="all", enable_idempotence=True, linger_ms=5,
                                max_batch_size=self.k.max_batch_size, max_request_size=self.k.max_request_size)

    async def _started(self, make: Any, what: str) -> Any | None:
        """``make()`` started (an aiokafka producer or consumer; a consumer's start returns once it holds an
        assignment), retried with exponential backoff while the broker is unreachable or the group join fails;
        None when :meth:`stop` was called meanwhile. Raises the authorization errors (a wrong ACL does not heal
        by retrying)."""
        delay, longest = self.backoff_s
        while not self._stop.is_set():
            client = make()
            try:
                await client.start()
                self.waiting = False
                return client
            except (KafkaError, OSError) as exc:
                with contextlib.suppress(Exception):  # a half-started client: release its sockets, leave the group
                    await client.stop()
                if isinstance(exc, _FATAL):
                    raise
                self.waiting = _unreachable(exc)
                if self.waiting:
                    log.warning("kafka at %s not reachable (%s); retrying in %.1f s", self.k.bootstrap_servers,
                                type(exc).__name__, delay)
                else:  # e.g. a SyncGroup refused while the group rebalances around a crashed member
                    log.warning("%s for group %s did not start (%s: %s); retrying in %.1f s", what,
                                self.k.group_id, type(exc).__name__, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, longest)
        return None

    async def _start_clients(self) -> tuple[Any, Any] | None:
        """``(consumer, producer)`` started (:meth:`_started`); None when :meth:`stop` was called meanwhile."""
        producer = await self._started(self._new_producer, "findings producer")
        if producer is None:
            return None
        try:
            consumer = await self._started(self._new_consumer, "consumer")
        except BaseException:
            await producer.stop()
            raise
        if consumer is None:
            await producer.stop()
            return None
        return consumer, producer

    async def run(self, max_records: int = 1000) -> None:
        """Consume until :meth:`stop`; per batch: process, fileset commit, findings topic, offset commit. The
        outbox a previous run left is sent first. A group error while consuming (a SyncGroup or JoinGroup the
        coordinator refused, e.g. while the group rebalances around a crashed member) is logged and consumption
        goes on: aiokafka rejoins by itself; after ``max_group_errors`` in a row the consumer is replaced by a new
        one (a new member). Raises the authorization errors (group, topic, cluster); anything else from aiokafka
        at start (an unreachable broker, a refused join, a TLS or SASL failure) is retried with backoff."""
        quiet_aiokafka()  # a broker outage must not flood the log with aiokafka's repeats
        clients = await self._start_clients()
        if clients is None:
            return
        consumer, producer = clients
        acked, errors = 0, 0
        last_err: tuple[Any, float] = (None, 0.0)  # (type, text) of the last group error and when it came
        try:
            acked += await self._publish(producer)
            while not self._stop.is_set():
                try:
                    batch = await self._fetch(consumer, max_records)
                    errors = 0
                except KafkaError as exc:
                    now, sig = time.monotonic(), (type(exc), str(exc))
                    if last_err[0] == sig and now - last_err[1] < 1.0:
                        # aiokafka raises each error twice (to the waiting fetch, then as pending); a dead
                        # coordinator task raises on every call: no busy loop, counted again after 1 s
                        await asyncio.sleep(0.05)
                        continue
                    last_err, errors = (sig, now), errors + 1
                    consumer = await self._group_error(consumer, exc, errors)
                    if consumer is None:
                        break
                    if errors >= self.max_group_errors:  # a new consumer: count afresh
                        errors = 0
                    continue
                if batch:
                    acked = await self._handle(batch, producer)  # its commit made earlier ones durable
                    await _commit_offsets(consumer)
                    self.batches += 1
                if self.agg.pending():
                    acked += await self._publish(producer)  # what a failed send left behind
                elif acked and not batch:  # idle: record the acknowledgements so a restart does not resend them
                    await asyncio.to_thread(self.proc.commit)
                    acked = 0
                self._update_rate()
                await self._update_lag(consumer)
            if acked:  # record the acknowledgements so a restart does not send them again
                await asyncio.to_thread(self.proc.commit)
        finally:
            self.joined = False
            self._update_rate(force=True)
            if consumer is not None:
                await consumer.stop()
            await producer.stop()

    async def _group_error(self, consumer: Any, exc: KafkaError, errors: int) -> Any | None:
        """After a KafkaError from a fetch (``errors`` in a row): ``consumer`` itself, or after
        ``max_group_errors`` a newly started one (None when :meth:`stop` came meanwhile). Nothing is lost either
        way: the fileset holds the positions reached, so records re-delivered after the rejoin are skipped.
        Raises ``exc`` when it is an authorization error."""
        if isinstance(exc, _FATAL):
            raise exc
        self.group_errors += 1
        if errors < self.max_group_errors:
            log.warning("consumer group %s: %s; rejoining", self.k.group_id, exc)
            return consumer
        log.warning("consumer group %s: %d errors in a row (the last: %s); replacing the consumer",
                    self.k.group_id, errors, exc)
        self.joined = False
        with contextlib.suppress(Exception):  # leave the group; a dead coordinator task may raise again here
            await consumer.stop()
        return await self._started(self._new_consumer, "consumer")

    async def _publish(self, producer: Any) -> int:
        """Send the outbox (the findings records sealed by the last commit, or left by a previous run) and wait
        for the broker; returns how many were acknowledged. A record that fails stays in the outbox (logged) and
        is sent again after the next batch."""
        sent = []
        for rec in self.agg.pending():
            headers = [("railcar.finding.revision", str(rec["revision"]).encode())]
            try:
                fut = await producer.send(self.k.findings_topic, orjson.dumps(rec), key=rec["id"].encode(),
                                          headers=headers)
            except KafkaError as exc:
                log.warning("findings record %s not sent (%s); kept for retry", rec["id"], type(exc).__name__)
                break
            sent.append((rec["id"], rec["revision"], fut))
        acked = 0
        for fid, rev, fut in sent:
            try:
                await fut
            except KafkaError as exc:
                log.warning("findings record %s not acknowledged (%s); kept for retry", fid, type(exc).__name__)
                continue
            acked += self.agg.acknowledge(fid, rev)
        self.published += acked
        return acked

    async def _handle(self, batch: dict[Any, list[Any]], producer: Any) -> int:
        """Process one batch, commit the fileset, publish the outbox; returns the records acknowledged."""
        dlq = []
        positions = self.agg.positions
        for tp, records in batch.items():
            pos_key = f"{tp.topic}/{tp.partition}"
            done = positions.get(pos_key, -1)
            for r in records:
                if r.offset < done:  # counted in the committed state before a crash: re-read, not recounted
                    self.skipped += 1
                    continue
                try:
                    self.proc.process(r.value)
                except otlp.OTLPDecodeError as exc:
                    dlq.append((r, str(exc)))
            if records:
                positions[pos_key] = max(done, records[-1].offset + 1)
        for r, reason in dlq:
            headers = [("railcar.dlq.reason", reason.encode()), ("railcar.dlq.topic", r.topic.encode()),
                       ("railcar.dlq.partition", str(r.partition).encode()),
                       ("railcar.dlq.offset", str(r.offset).encode())]
            await producer.send_and_wait(self.k.dead_letter_topic, r.value, key=r.key, headers=headers)
            self.dead_lettered += 1
            self.metrics["dlq"].inc()
            log.warning("dead-lettered %s[%d]@%d: %s", r.topic, r.partition, r.offset, reason)
        await asyncio.to_thread(self.proc.commit)  # findings, outbox and positions durable before offsets move
        return await self._publish(producer)


async def _commit_offsets(consumer: AIOKafkaConsumer) -> None:
    """Commit the group's offsets. A commit refused (the group is rebalancing, this member was fenced, the
    coordinator moved, any other group error) loses nothing: the fileset commit already holds the positions
    reached, so records re-delivered to whichever member owns the partition next are skipped there, not counted
    twice. Logged, never fatal, except an authorization error (raised)."""
    try:
        await consumer.commit()
    except (KafkaError, IllegalStateError) as exc:
        if isinstance(exc, _FATAL):
            raise
        log.warning("offset commit refused (%s); the fileset holds the positions, the records will be skipped "
                    "when re-read", type(exc).__name__)


# A wrong ACL does not heal by retrying: these end ``run``.
_FATAL = (GroupAuthorizationFailedError, TopicAuthorizationFailedError, ClusterAuthorizationFailedError)


def _unreachable(exc: BaseException) -> bool:
    """True for the errors of a broker that cannot be reached (``/readyz`` says ``waiting for kafka``), False
    for a group join refused by a reachable coordinator."""
    return isinstance(exc, (OSError, KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError,
                            RequestTimedOutError))


class _Listener(ConsumerRebalanceListener):
    """Keeps ``worker.joined`` / ``worker.assigned`` (what ``/readyz`` reports) and the lag gauges in step with
    the group's assignment."""

    def __init__(self, worker: ConsumerGroupWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        worker = self.worker
        worker.joined = False
        for tp in revoked:
            worker.assigned.discard(tp.partition)
            with contextlib.suppress(KeyError):  # a partition gone elsewhere has no lag here
                worker.metrics["lag"].remove(str(tp.partition))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.worker.assigned = {tp.partition for tp in assigned}
        self.worker.joined = True


def health_app(worker: ConsumerGroupWorker) -> web.Application:
    """The ``railcar consume`` HTTP app (aiohttp ``web.Application``) for ``worker``.

    ``GET /healthz`` -> 200 ``{"status": "ok"}``; ``GET /readyz`` -> 200 ``{"status": "ready", "partitions":
    [..], "bootstrap_servers": ..}`` once ``worker.joined``, else 503 ``{"status": "waiting for kafka", ...}``
    while the broker is unreachable, or ``{"status": "not ready", ...}``; ``GET /metrics`` -> the Prometheus
    text exposition (format 0.0.4) of ``worker.registry``: ``railcar_consumer_lag{partition}``,
    ``railcar_consumer_records_total``, ``railcar_consumer_records_per_second``,
    ``railcar_consumer_findings_total{type}``, ``railcar_consumer_dead_lettered_total``. Other paths: 404.
    """

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        status = "ready" if worker.joined else "waiting for kafka" if worker.waiting else "not ready"
        body = {"status": status, "group": worker.k.group_id, "topic": worker.k.trace_topic,
                "partitions": sorted(worker.assigned), "bootstrap_servers": worker.k.bootstrap_servers}
        return web.json_response(body, status=200 if worker.joined else 503)

    async def metrics(request: web.Request) -> web.Response:
        worker._update_rate()
        return web.Response(body=generate_latest(worker.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
