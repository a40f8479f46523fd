"""The security consumer's logic without Kafka: one trace record in, findings out (``railcar consume`` and the
embedded default both run it).

Per record (an OTLP ``TracesData`` from :mod:`railcar.streams.recorder`, or any OpenTelemetry Collector's
``otlp_proto`` record): decode, keep the published contents of the trace (``railcar.content`` events, by ref)
so deduped message lists can be rebuilt, scan every string (content texts, every span/event/resource attribute
string) with the detector catalog, merge the sidecar's ``railcar.redaction`` notes (a secret redacted inline is
still a finding: it was in the traffic and must be rotated), and record the model path with its rails for the
guardrail-coverage suggestion. Findings aggregate in a :class:`railcar.streams.findings.FindingsAggregator`; the
span layout is :mod:`railcar.streams.schema`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from railcar.core.jsonpath import iter_strings, key_path
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams import schema as S
from railcar.streams.deep import DeepScanner
from railcar.streams.fileset import Fileset
from railcar.streams.findings import FindingsAggregator, tiers_name
from railcar.streams.lru import LRU

__all__ = ["SecurityProcessor", "consumer_metrics", "iter_findings"]

log = logging.getLogger("railcar.consumer")

_METRICS: dict[int, dict[str, Any]] = {}


def consumer_metrics(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The consumer's Prometheus metrics in ``registry`` (created once per registry): ``records``, ``lag``
    (by partition), ``findings`` (by type), ``dlq``, ``rate``."""
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


_DEEP_MIN_LEN = 8  # shorter strings (flags, finish reasons, roles) are skipped by the deep tier: no credential is so short


class _Trace:
    __slots__ = ("texts", "chains", "text_chars")

    def __init__(self) -> None:
        self.text_chars = 0                                  # characters held in ``texts``
        self.texts: dict[str, str] = {}                      # content ref -> redacted text
        self.chains: dict[str, tuple[str, dict[str, Any]]] = {}  # chain ref -> (parent chain ref, entry)


def _entries_of(attrs: dict[str, Any]) -> tuple[Any, Any]:
    """``(input entries, output entry)`` parsed from the span's JSON attributes (``([], None)`` when not JSON)."""
    try:
        return (orjson.loads(attrs.get(S.INPUT_MESSAGES) or "[]"),
                orjson.loads(attrs.get(S.OUTPUT_MESSAGE) or "null"))
    except orjson.JSONDecodeError:
        return [], None


class SecurityProcessor:
    """Consumer logic without Kafka (also the embedded default's). Not thread-safe; one per consumer instance.

    ``scanner``: :class:`railcar.rails.scanner.Scanner`; ``fileset``: from :func:`railcar.streams.fileset.open_fileset`;
    ``writer_id``: this instance's fileset writer name (stable across restarts of the same instance).
    ``max_traces`` and ``max_text_chars`` bound the content kept to rebuild deduped conversations: the least
    recently seen traces are forgotten first (a span can carry up to 512 KiB of text, so a count alone could hold
    gigabytes). Scanning never depends on that memory: each text is scanned when its span arrives.
    ``deep``: the deep tier (:class:`railcar.streams.deep.DeepScanner`, ``detection.deep``), run once per span over
    all its scanned strings, minus the spans the catalog matched; None: the catalog only. ``max_locations``: locations
    kept per finding (``detection.max_locations_per_finding``).
    :func:`railcar.streams.pipeline.build_processor` builds one from the config.
    """

    def __init__(self, scanner: Scanner, fileset: Fileset, writer_id: str, *, max_traces: int = 10000,
                 max_text_chars: int = 64 * 1024 * 1024, metrics: dict[str, Any] | None = None,
                 deep: DeepScanner | None = None, max_locations: int = 100) -> None:
        self.scanner, self.fileset, self.writer_id = scanner, fileset, writer_id
        self.deep = deep
        self._pending: list[tuple[str, str]] = []  # this span's (path, string)s, scanned together at its end
        self.agg = FindingsAggregator(scanner.detectors, source="consume", max_locations=max_locations)
        self.agg.restore(fileset.load_state(writer_id))
        self.agg.note_scan(tiers=tiers_name(deep))
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
        td = otlp.decode(value)
        n = 0
        for res, sp in otlp.iter_spans(td):
            n += 1
            self._span(res, sp)
        self.records += 1
        self.bytes += len(value)
        self.agg.note_scan(bytes_scanned=len(value), records=1, free_text=True)
        self._m["records"].inc()
        return n

    def _span(self, res: dict[str, Any], sp: Any) -> None:
        attrs = otlp.attributes_of(sp.attributes)
        agent = str(attrs.get(S.AGENT_ID) or res.get(S.AGENT_ID) or res.get(S.SERVICE_NAME, ""))
        loc = {"agent": agent, "namespace": str(res.get(S.K8S_NAMESPACE_NAME, "")), "trace_id": sp.trace_id.hex(),
               "span_id": sp.span_id.hex(), "outcome": "blocked" if attrs.get(S.RAILS_BLOCKED) else "delivered"}
        self._pending = []  # a span that raised must not hand its strings to the next one
        tr = self._traces.get(sp.trace_id)
        events = [(ev.name, otlp.attributes_of(ev.attributes)) for ev in sp.events]  # decoded once
        self._read_events(tr, events, loc)
        # Rebuild the message list (prefix from earlier spans + this span's entries) to register chains.
        entries, out_entry = _entries_of(attrs)
        self._register_chains(tr, str(attrs.get(S.INPUT_PREFIX, "")), entries, out_entry)
        self._scan_events(events, loc)
        self._scan_attributes(attrs, entries, out_entry, loc)
        if self._pending:
            self._scan_pending(loc)
        model = str(attrs.get(S.RESPONSE_MODEL) or attrs.get(S.REQUEST_MODEL) or "")
        if model:
            self.agg.observe_model_path(agent, model, attrs.get(S.RAILS_ACTIVATED) or ())

    def _read_events(self, tr: _Trace, events: list[tuple[str, dict[str, Any]]], loc: dict[str, Any]) -> None:
        """Keep the content texts; merge the redaction notes into the findings."""
        for name, ea in events:
            if name == S.CONTENT_EVENT:
                self._keep(tr, str(ea.get(S.REF, "")), str(ea.get(S.TEXT, "")))
            elif name == S.REDACTION_EVENT:
                try:
                    self.agg.add_note(S.redaction_note(ea), loc)
                except ValueError:
                    log.warning("ignored a malformed redaction note in trace %s", loc["trace_id"])

    @staticmethod
    def _register_chains(tr: _Trace, prefix: str, entries: Any, out_entry: Any) -> None:
        chain = prefix
        for parent, chain, e in S.chain_walk(prefix, entries if isinstance(entries, list) else ()):
            tr.chains.setdefault(chain, (parent, e))
        if isinstance(out_entry, dict):
            tr.chains.setdefault(S.chain_ref(chain, out_entry), (chain, out_entry))

    def _scan_events(self, events: list[tuple[str, dict[str, Any]]], loc: dict[str, Any]) -> None:
        """Scan every event attribute string but Railcar's own derived values (content refs are SHA-256 hex: a
        16-hex ref made only of digits can pass a card's Luhn check) and the redaction notes, whose masked
        previews were already merged."""
        for name, ea in events:
            if name == S.REDACTION_EVENT:
                continue
            for key, val in ea.items():
                if not (name == S.CONTENT_EVENT and key in S.OWN_CONTENT_KEYS):
                    self._scan(val, f"$.events.{name}.{key}", loc)

    def _scan_attributes(self, attrs: dict[str, Any], entries: Any, out_entry: Any, loc: dict[str, Any]) -> None:
        """Scan every span attribute string but the chain hash and the tools ref; message entries by field."""
        for key, val in attrs.items():
            if key in S.OWN_ATTRS:
                continue
            if key in S.ENTRY_ATTRS:  # JSON message entries: scan names and ids, not refs
                parsed = entries if key == S.INPUT_MESSAGES else [out_entry]
                self._scan_entries(parsed, val, f"$.attributes.{key}", loc)
                continue
            self._scan(val, f"$.attributes.{key}", loc)

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
                elif k not in S.OWN_CONTENT_KEYS:
                    self._scan(v, key_path(f"{path}[{i}]", k), loc)

    def _scan(self, val: Any, path: str, loc: dict[str, Any]) -> None:
        """Queue every string under ``val`` (a string, or lists and objects of them) at its JSON path for
        :meth:`_scan_pending`."""
        if isinstance(val, str):  # the common case: no walk
            if val:
                self._pending.append((path, val))
        else:
            self._pending.extend((p, t) for p, t in iter_strings(val, path) if t)

    def _scan_pending(self, loc: dict[str, Any]) -> None:
        """The span's strings through the catalog in one pass (:meth:`railcar.rails.scanner.Scanner.scan_strings`:
        the same matches as one ``scan_text`` per string), then the deep tier in one native scan over those it may
        hold a credential in, minus the spans the catalog matched."""
        items, self._pending = self._pending, []
        deep_items: list[tuple[str, str, list[tuple[int, int]]]] = []
        for (p, text), ms in zip(items, self.scanner.scan_strings(items)):
            for m in ms:
                self.agg.add_match(m, loc)
            if self.deep is not None and len(text) >= _DEEP_MIN_LEN:
                deep_items.append((p, text, [(m.start, m.end) for m in ms]))
        if deep_items:
            assert self.deep is not None
            for m in self.deep.scan_strings(deep_items):
                self.agg.add_match(m, loc)

    def messages(self, trace_id: bytes, chain: str) -> list[dict[str, Any]]:
        """The conversation's message list ending at chain ref ``chain`` (16 hex,
        :func:`railcar.streams.schema.chain_ref`) of trace ``trace_id`` (16 bytes): the message entries, oldest
        first, with ``content`` resolved from the trace's texts (``None`` where the text was published before this
        consumer's memory); ``[]`` for a trace or chain it does not hold. A lookup neither creates nor evicts
        trace state."""
        if trace_id not in self._traces:
            return []
        tr = self._traces.get(trace_id)
        out: list[dict[str, Any]] = []
        while chain in tr.chains:
            chain, entry = tr.chains[chain]
            out.append({**entry, "content": tr.texts.get(entry.get(S.REF, ""))})
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


def iter_findings(values: Iterable[bytes], scanner: Scanner, fileset: Fileset, writer_id: str,
                  deep: DeepScanner | None = None) -> list[dict[str, Any]]:
    """Process record values in-process and commit once; returns the new findings (scripts, tests)."""
    proc = SecurityProcessor(scanner, fileset, writer_id, metrics=consumer_metrics(CollectorRegistry()), deep=deep)
    for v in values:
        proc.process(v)
    return proc.commit()
