"""``railcar consume``: the security consumer group on the trace topic.

Per record (an OTLP ``TracesData`` from :mod:`railcar.streams.recorder`, or any OpenTelemetry Collector's
``otlp_proto`` record): decode, keep the published contents of the trace (``railcar.content`` events, by ref)
so deduped message lists can be rebuilt, scan every string (content texts, every span/event/resource attribute
string) with the detector catalog, merge the sidecar's ``railcar.redaction`` notes (a secret redacted inline is
still a finding: it was in the traffic and must be rotated), and record the model path with its rails for the
guardrail-coverage suggestion. Findings aggregate in a :class:`railcar.streams.findings.FindingsAggregator`.

After each fetched batch, in this order: the fileset commit (``railcar.streams.fileset``: this writer's state file, the
merged snapshot replaced atomically, suggestions appended by id, all under the fileset lock) — durable — then the
new findings published to ``[kafka] findings_topic`` (JSON, key the finding id), then the offsets committed. A
consumer killed between two of these steps re-reads records after its last committed offset; finding ids are
stable (detector, fingerprint, agent, path) and its state is restored from its writer file, so no finding is lost
or duplicated (only an occurrence ``count`` may count a re-read record twice).

Several consumers of one group: each instance is one fileset writer (own state file) and the snapshot is the
merge of all writers' states rebuilt under the lock, so they never overwrite each other and a suggestion id is
never appended twice (see ``.notes/pipeline.md``).

Undecodable records go to ``[kafka] dead_letter_topic`` unchanged, with headers ``railcar.dlq.reason``,
``railcar.dlq.topic``, ``railcar.dlq.partition``, ``railcar.dlq.offset``; they are counted and the group goes on.

Metrics (prometheus_client): ``railcar_consumer_records_total``, ``railcar_consumer_records_per_second``,
``railcar_consumer_lag{partition}``, ``railcar_consumer_findings_total{type}``,
``railcar_consumer_dead_lettered_total``.

HTTP (``railcar consume`` on ``[server] host:port``; the Helm chart sets ``0.0.0.0:9464``): ``GET /healthz``
(200 while the process runs), ``GET /readyz`` (200 once the member has joined the group and received its
assignment, 503 before, after it left the group and while stopping), ``GET /metrics`` (Prometheus text format
0.0.4 of the registry the worker's metrics live in). See :func:`health_app`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any, Iterable

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from railcar.streams import otlp
from railcar.streams.lru import LRU

__all__ = ["SecurityProcessor", "ConsumerGroupWorker", "main", "consumer_metrics", "health_app", "run_consumer"]

log = logging.getLogger("railcar.consumer")

_METRICS: dict[int, dict[str, Any]] = {}


def consumer_metrics(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The consumer's Prometheus metrics in ``registry`` (created once per registry)."""
    m = _METRICS.get(id(registry))
    if m is None:
        m = {
            "records": Counter("railcar_consumer_records", "Trace records processed.", registry=registry),
            "lag": Gauge("railcar_consumer_lag", "Records behind the partition end.", ["partition"],
                         registry=registry),
            "findings": Counter("railcar_consumer_findings", "New findings.", ["type"], registry=registry),
            "dlq": Counter("railcar_consumer_dead_lettered", "Records sent to the dead-letter topic.",
                           registry=registry),
            "rate": Gauge("railcar_consumer_records_per_second",
                          "Trace records processed per second, over the last ~1 s window.", registry=registry),
        }
        _METRICS[id(registry)] = m
    return m


# Values Railcar derives itself (hashes), never scanned: see SecurityProcessor.process.
_OWN_CONTENT_KEYS = frozenset({"ref", "args_ref", "truncated", "original_length"})
_OWN_ATTRS = frozenset({"railcar.input.prefix", "railcar.request.tools_ref"})
_ENTRY_ATTRS = frozenset({"railcar.input.messages", "railcar.output.message"})


class _Trace:
    __slots__ = ("texts", "chains", "text_chars")

    def __init__(self) -> None:
        self.text_chars = 0                                  # characters held in ``texts``
        self.texts: dict[str, str] = {}                      # content ref -> redacted text
        self.chains: dict[str, tuple[str, dict[str, Any]]] = {}  # chain ref -> (parent chain ref, entry)


class SecurityProcessor:
    """Consumer logic without Kafka (also the embedded default's). Not thread-safe; one per consumer instance.

    ``scanner``: :class:`railcar.rails.scanner.Scanner`; ``fileset``: from :func:`railcar.streams.fileset.open_fileset`;
    ``writer_id``: this instance's fileset writer name (stable across restarts of the same instance).
    ``max_traces`` and ``max_text_chars`` bound the content kept to rebuild deduped conversations: the least
    recently seen traces are forgotten first (a span can carry up to 512 KiB of text, so a count alone could hold
    gigabytes). Scanning never depends on that memory: each text is scanned when its span arrives.
    """

    def __init__(self, scanner: Any, fileset: Any, writer_id: str, *, max_traces: int = 10000,
                 max_text_chars: int = 64 * 1024 * 1024, metrics: dict[str, Any] | None = None) -> None:
        from railcar.streams.findings import FindingsAggregator

        self.scanner, self.fileset, self.writer_id = scanner, fileset, writer_id
        self.agg = FindingsAggregator(scanner.detectors, source="consume")
        load = getattr(fileset, "load_state", None)
        self.agg.restore(load(writer_id) if load else None)
        self._published: set[str] = {f.id for f in self.agg.findings()}
        self._traces: LRU[bytes, _Trace] = LRU(max_traces, _Trace, on_evict=self._forget)
        self.max_text_chars = max_text_chars
        self.text_chars = 0  # characters held across all traces
        self._m = metrics or consumer_metrics()
        self.records = 0
        self.bytes = 0

    def process(self, value: bytes) -> int:
        """Scan one record value; returns the number of spans. Raises :class:`railcar.streams.otlp.OTLPDecodeError`
        for a value that is not OTLP ``TracesData`` (nothing is recorded then)."""
        from railcar.streams.recorder import chain_ref

        td = otlp.decode(value)
        n = 0
        for res, sp in otlp.iter_spans(td):
            n += 1
            attrs = otlp.attributes_of(sp.attributes)
            agent = str(attrs.get("gen_ai.agent.id") or res.get("gen_ai.agent.id") or res.get("service.name", ""))
            loc = {"agent": agent, "trace_id": sp.trace_id.hex(), "span_id": sp.span_id.hex()}
            tr = self._traces.get(sp.trace_id)
            events = [(ev.name, otlp.attributes_of(ev.attributes)) for ev in sp.events]  # decoded once
            for name, ea in events:
                if name == "railcar.content":
                    self._keep(tr, str(ea.get("ref", "")), str(ea.get("text", "")))
                elif name == "railcar.redaction":
                    note = {k.removeprefix("railcar.redaction."): v for k, v in ea.items()}
                    try:
                        self.agg.add_note(note, loc)
                    except ValueError:
                        log.warning("ignored a malformed redaction note in trace %s", sp.trace_id.hex())
            # Rebuild the message list (prefix from earlier spans + this span's entries) to register chains.
            chain = str(attrs.get("railcar.input.prefix", ""))
            try:
                entries = orjson.loads(attrs.get("railcar.input.messages") or "[]")
                out_entry = orjson.loads(attrs.get("railcar.output.message") or "null")
            except orjson.JSONDecodeError:
                entries, out_entry = [], None
            for e in entries if isinstance(entries, list) else ():
                nxt = chain_ref(chain, e)
                tr.chains.setdefault(nxt, (chain, e))
                chain = nxt
            if isinstance(out_entry, dict):
                tr.chains.setdefault(chain_ref(chain, out_entry), (chain, out_entry))
            # Scan every string: content texts, span, event and resource attributes, except the identifiers
            # Railcar itself derives (content refs and chain hashes are SHA-256 hex, fingerprints are HMACs: a
            # 16-hex ref made only of digits can pass a card's Luhn check) and the redaction notes, whose
            # masked previews were already merged above.
            for name, ea in events:
                if name == "railcar.redaction":
                    continue
                for key, val in ea.items():
                    if not (name == "railcar.content" and key in _OWN_CONTENT_KEYS):
                        self._scan(val, f"$.events.{name}.{key}", loc)
            for key, val in attrs.items():
                if key in _OWN_ATTRS:
                    continue
                if key in _ENTRY_ATTRS:  # JSON message entries: scan names and ids, not refs
                    parsed = entries if key == "railcar.input.messages" else [out_entry]
                    self._scan_entries(parsed, val, f"$.attributes.{key}", loc)
                    continue
                self._scan(val, f"$.attributes.{key}", loc)
            model = str(attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model") or "")
            if model:
                self.agg.observe_model_path(agent, model, attrs.get("railcar.rails.activated") or ())
        self.records += 1
        self.bytes += len(value)
        self.agg.note_scan(bytes_scanned=len(value), records=1, free_text=True)
        self._m["records"].inc()
        return n

    def _keep(self, tr: _Trace, ref: str, text: str) -> None:
        """Hold ``text`` under ``ref`` in trace ``tr``, then forget the oldest other traces while over budget."""
        old = tr.texts.get(ref)
        tr.texts[ref] = text
        delta = len(text) - (len(old) if old is not None else 0)
        tr.text_chars += delta
        self.text_chars += delta
        while self.text_chars > self.max_text_chars and len(self._traces) > 1:
            self._traces.evict_oldest()  # ``tr`` is the most recently used: never evicted here

    def _forget(self, _trace_id: bytes, tr: _Trace) -> None:
        self.text_chars -= tr.text_chars

    def _scan_entries(self, entries: Any, raw: Any, path: str, loc: dict[str, Any]) -> None:
        """Scan the strings of message entries (``railcar.input.messages`` / ``railcar.output.message``) but their
        ``ref`` / ``args_ref`` hashes; when the JSON did not parse as entries, scan the raw attribute."""
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            self._scan(raw, path, loc)
            return
        for i, e in enumerate(entries):
            for k, v in e.items():
                if k == "tool_calls" and isinstance(v, list):
                    self._scan_entries(v, orjson.dumps(v).decode(), f"{path}[{i}].tool_calls", loc)
                elif k not in _OWN_CONTENT_KEYS:
                    self._scan(v, f"{path}[{i}].{k}", loc)

    def _scan(self, val: Any, path: str, loc: dict[str, Any]) -> None:
        if isinstance(val, str):
            if val:  # scan_text starts with the literal prefilter: no separate gate() pass
                for m in self.scanner.scan_text(val, path):
                    self.agg.add_match(m, loc)
        elif isinstance(val, list):
            for i, v in enumerate(val):
                self._scan(v, f"{path}[{i}]", loc)

    def messages(self, trace_id: bytes, chain: str) -> list[dict[str, Any]]:
        """The conversation's message list ending at chain ref ``chain`` (16 hex, :func:`railcar.streams.recorder.chain_ref`)
        of trace ``trace_id`` (16 bytes): the message entries, oldest first, with ``content`` resolved from the
        trace's texts (``None`` where the text was published before this consumer's memory); ``[]`` for a trace or
        chain it does not hold. A lookup neither creates nor evicts trace state."""
        if trace_id not in self._traces:
            return []
        tr = self._traces.get(trace_id)
        out: list[dict[str, Any]] = []
        while chain in tr.chains:
            chain, entry = tr.chains[chain]
            out.append({**entry, "content": tr.texts.get(entry.get("ref", ""))})
        return out[::-1]

    def commit(self) -> list[dict[str, Any]]:
        """Write the fileset durably (blocking I/O: call it in a thread); returns the findings (dicts) not yet
        handed out by an earlier commit, for the findings topic."""
        self.fileset.commit(self.agg.state(self.writer_id), self.agg.suggestions(), self.writer_id)
        new = [f for f in self.agg.findings() if f.id not in self._published]
        self._published.update(f.id for f in new)
        for f in new:
            self._m["findings"].labels(f.type).inc()
        return [f.as_dict() for f in new]


def default_writer_id(kafka: Any) -> str:
    """``<group>-<host>``: stable across restarts of one pod, distinct between pods."""
    return f"{kafka.group_id}-{os.environ.get('POD_NAME') or socket.gethostname()}"


class ConsumerGroupWorker:
    """One member of the ``[kafka] group_id`` consumer group. ``run()`` until ``stop()``.

    ``consumer_kwargs`` are passed to ``AIOKafkaConsumer`` (tests use it for timeouts). ``joined`` is True while
    the member holds an assignment from the group (set by the rebalance listener; what ``/readyz`` reports);
    ``assigned`` is the set of partition numbers it holds. ``registry`` holds its metrics (``/metrics``).
    """

    def __init__(self, config: Any, *, scanner: Any = None, writer_id: str = "",
                 registry: CollectorRegistry = REGISTRY, **consumer_kwargs: Any) -> None:
        from railcar.streams.fileset import open_fileset

        if scanner is None:
            from railcar.rails.scanner import scanner_from_config
            scanner = scanner_from_config(config.detection)
        self.config = config
        self.k = config.kafka
        self.registry = registry
        self.metrics = consumer_metrics(registry)
        self.proc = SecurityProcessor(scanner, open_fileset(config.fileset.root, config.fileset.s3_endpoint_url),
                                      writer_id or default_writer_id(self.k), metrics=self.metrics)
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

    def _listener(self) -> Any:
        from aiokafka import ConsumerRebalanceListener

        worker = self

        class _Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Any) -> None:
                worker.joined = False
                for tp in revoked:
                    worker.assigned.discard(tp.partition)
                    with contextlib.suppress(KeyError):  # a partition gone elsewhere has no lag here
                        worker.metrics["lag"].remove(str(tp.partition))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                worker.assigned = {tp.partition for tp in assigned}
                worker.joined = True

        return _Listener()

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

    async def run(self, max_records: int = 1000) -> None:
        """Consume until :meth:`stop`; per batch: process, fileset commit, findings topic, offset commit."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from railcar.streams.kafka_logging import quiet_aiokafka

        quiet_aiokafka()  # a broker outage must not flood the log with aiokafka's repeats
        opts = self.k.client_options()
        consumer = AIOKafkaConsumer(group_id=self.k.group_id, enable_auto_commit=False,
                                    auto_offset_reset="earliest", **opts, **self.consumer_kwargs)
        consumer.subscribe([self.k.trace_topic], listener=self._listener())
        producer = AIOKafkaProducer(**opts, acks="all", enable_idempotence=True, linger_ms=5)
        await producer.start()
        await consumer.start()
        try:
            while not self._stop.is_set():
                batch = await self._fetch(consumer, max_records)
                if batch:
                    await self._handle(batch, producer)
                    await consumer.commit()
                    self.batches += 1
                self._update_rate()
                await self._update_lag(consumer)
        finally:
            self.joined = False
            self._update_rate(force=True)
            await consumer.stop()
            await producer.stop()

    async def _handle(self, batch: dict[Any, list[Any]], producer: Any) -> None:
        dlq = []
        for tp, records in batch.items():
            for r in records:
                try:
                    self.proc.process(r.value)
                except otlp.OTLPDecodeError as exc:
                    dlq.append((r, str(exc)))
        for r, reason in dlq:
            headers = [("railcar.dlq.reason", reason.encode()), ("railcar.dlq.topic", r.topic.encode()),
                       ("railcar.dlq.partition", str(r.partition).encode()),
                       ("railcar.dlq.offset", str(r.offset).encode())]
            await producer.send_and_wait(self.k.dead_letter_topic, r.value, key=r.key, headers=headers)
            self.dead_lettered += 1
            self.metrics["dlq"].inc()
            log.warning("dead-lettered %s[%d]@%d: %s", r.topic, r.partition, r.offset, reason)
        new = await asyncio.to_thread(self.proc.commit)  # durable before offsets move
        futs = [await producer.send(self.k.findings_topic, orjson.dumps(f), key=f["id"].encode()) for f in new]
        if futs:
            await asyncio.gather(*futs)


def health_app(worker: ConsumerGroupWorker) -> Any:
    """The ``railcar consume`` HTTP app (aiohttp ``web.Application``) for ``worker``.

    ``GET /healthz`` -> 200 ``{"status": "ok"}``; ``GET /readyz`` -> 200 ``{"status": "ready", "partitions":
    [..]}`` once ``worker.joined``, else 503 ``{"status": "not ready", ...}``; ``GET /metrics`` -> the Prometheus
    text exposition (format 0.0.4) of ``worker.registry``: ``railcar_consumer_lag{partition}``,
    ``railcar_consumer_records_total``, ``railcar_consumer_records_per_second``,
    ``railcar_consumer_findings_total{type}``, ``railcar_consumer_dead_lettered_total``. Other paths: 404.
    """
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        body = {"status": "ready" if worker.joined else "not ready", "group": worker.k.group_id,
                "topic": worker.k.trace_topic, "partitions": sorted(worker.assigned)}
        return web.json_response(body, status=200 if worker.joined else 503)

    async def metrics(request: web.Request) -> web.Response:
        worker._update_rate()
        return web.Response(body=generate_latest(worker.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def run_consumer(config: Any, stop: asyncio.Event | None = None, *, scanner: Any = None,
                       registry: CollectorRegistry = REGISTRY, **consumer_kwargs: Any) -> ConsumerGroupWorker:
    """Run one group member with its HTTP endpoints on ``[server] host:port`` until ``stop`` is set (or
    SIGINT/SIGTERM when ``stop`` is None); returns the stopped worker. Raises ``OSError`` when the port cannot
    be bound."""
    from aiohttp import web

    worker = ConsumerGroupWorker(config, scanner=scanner, registry=registry, **consumer_kwargs)
    runner = web.AppRunner(health_app(worker), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True).start()
    log.info("consumer endpoints on http://%s:%d (/healthz /readyz /metrics)", config.server.host,
             config.server.port)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    stopper = loop.create_task(stop.wait())
    stopper.add_done_callback(lambda _: worker.stop())
    t0 = time.monotonic()
    try:
        await worker.run()
    finally:
        stopper.cancel()
        await runner.cleanup()
    log.info("consumed %d records in %.1fs, %d dead-lettered", worker.proc.records, time.monotonic() - t0,
             worker.dead_lettered)
    return worker


def main(args: argparse.Namespace, config: Any) -> int:
    """``railcar consume``: run one group member until SIGINT/SIGTERM, serving ``/healthz``, ``/readyz`` and
    ``/metrics`` on ``[server] host:port``. Exit 2 when ``[kafka] bootstrap_servers`` is empty (the embedded
    default runs inside ``railcar serve`` instead)."""
    if not config.kafka.bootstrap_servers:
        print("railcar consume: configuration error: kafka.bootstrap_servers: required "
              "(RAILCAR_KAFKA_BOOTSTRAP_SERVERS); without Kafka, `railcar serve` scans in-process",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop

        uvloop.run(run_consumer(config))
    except OSError as exc:
        print(f"railcar consume: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0


def iter_findings(values: Iterable[bytes], scanner: Any, fileset: Any, writer_id: str) -> list[dict[str, Any]]:
    """Process record values in-process and commit once; returns the new findings (scripts, tests)."""
    proc = SecurityProcessor(scanner, fileset, writer_id, metrics=consumer_metrics(CollectorRegistry()))
    for v in values:
        proc.process(v)
    return proc.commit()
