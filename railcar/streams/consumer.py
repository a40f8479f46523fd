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
meanwhile; :meth:`ConsumerGroupWorker.stop` ends the wait.

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
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError
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

    async def _start_clients(self) -> tuple[Any, Any] | None:
        """``(consumer, producer)`` started, waiting with exponential backoff while the broker is unreachable;
        None when :meth:`stop` was called meanwhile. Raises what aiokafka raises for anything but an unreachable
        broker (a bad TLS or SASL setting)."""
        opts = self.k.client_options()
        delay, longest = self.backoff_s
        while not self._stop.is_set():
            consumer = AIOKafkaConsumer(group_id=self.k.group_id, enable_auto_commit=False,
                                        auto_offset_reset="earliest", **opts, **self.consumer_kwargs)
            consumer.subscribe([self.k.trace_topic], listener=_Listener(self))
            producer = AIOKafkaProducer(**opts, acks="all", enable_idempotence=True, linger_ms=5,
                                        max_batch_size=self.k.max_batch_size,
                                        max_request_size=self.k.max_request_size)
            try:
                await producer.start()
                await consumer.start()
                self.waiting = False
                return consumer, producer
            except (KafkaError, OSError) as exc:
                self.waiting = True
                with contextlib.suppress(Exception):  # half-started clients: release their sockets
                    await consumer.stop()
                with contextlib.suppress(Exception):
                    await producer.stop()
                log.warning("kafka at %s not reachable (%s); retrying in %.1f s", self.k.bootstrap_servers,
                            type(exc).__name__, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, longest)
        return None

    async def run(self, max_records: int = 1000) -> None:
        """Consume until :meth:`stop`; per batch: process, fileset commit, findings topic, offset commit. The
        outbox a previous run left is sent first."""
        quiet_aiokafka()  # a broker outage must not flood the log with aiokafka's repeats
        clients = await self._start_clients()
        if clients is None:
            return
        consumer, producer = clients
        acked = 0
        try:
            acked += await self._publish(producer)
            while not self._stop.is_set():
                batch = await self._fetch(consumer, max_records)
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
            await consumer.stop()
            await producer.stop()

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
    """Commit the group's offsets. A commit refused because the group is rebalancing (or this member was fenced)
    loses nothing: the fileset commit already holds the positions reached, so records re-delivered to whichever
    member owns the partition next are skipped there, not counted twice. Logged, never fatal."""
    try:
        await consumer.commit()
    except (CommitFailedError, RebalanceInProgressError, IllegalStateError) as exc:
        log.warning("offset commit refused (%s); the fileset holds the positions, the records will be skipped "
                    "when re-read", type(exc).__name__)


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
