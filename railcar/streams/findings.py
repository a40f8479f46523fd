"""Findings and suggestions, as the NeMo Platform "Secure Agents" workflow defines them
(``../shared/seeds/000_8dc3429b33a751c2.txt``).

* A :class:`Finding` is one leaked value at one place: stable id (same secret + same location -> same id), type,
  detector, severity, masked preview, location, first/last seen, occurrence count and follow-up actions. "Location"
  for the id is the scope (``location["file"]``, else ``location["agent"]``) plus the JSON path, so the same leak
  repeated over many lines or traces is one finding; every distinct (file, line, JSON path) or (agent, trace, span,
  JSON path) is kept in ``locations`` (up to ``detection.max_locations_per_finding``) with the total in
  ``location_count``, so the affected lines and traces can be purged. Its JSON form is the findings record
  (:data:`SCHEMA_VERSION`, ``findings_record.schema.json`` next to this module), also the value on the findings
  topic, where ``(id, revision)`` names one version (:class:`FindingsAggregator` documents the outbox).
* A :class:`Suggestion` is a recommended action, written to ``security_suggestions.jsonl``:
  ``data_safety`` (secrets: rotate the credential before any other cleanup; PII: redact or regenerate the affected
  traces before using them for evaluation or optimization), ``guardrails`` (the agent's model path has no
  content-safety, topic-control or safety-guard rail) and ``deep_scan`` (regex coverage is not enough for the data's
  risk profile: run GLiNER PII or a NemoGuard model on a subset of traces). Ids are deterministic, so re-runs
  produce the same suggestion ids and the fileset can deduplicate them.
* :class:`FindingsAggregator` merges scanner matches and the sidecar's redaction notes into findings and derives the
  suggestions; :meth:`FindingsAggregator.state` is the writer's contribution that :mod:`railcar.streams.fileset` merges.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from railcar.rails import detectors as _det

SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
GUARD_RAIL_MARKERS = ("content-safety", "content_safety", "topic-control", "topic_control", "safety-guard",
                      "safety_guard", "nemoguard")
SUGGESTION_TYPES = ("data_safety", "guardrails", "deep_scan")
# The findings record layout (``findings_record.schema.json``); bumped on an incompatible change.
SCHEMA_VERSION = 1
SCHEMA_FILE = "findings_record.schema.json"
# Worst first: the value reached the client; it is at rest in telemetry; the sidecar replaced it; the call was stopped.
OUTCOMES = ("delivered", "seen-at-rest", "redacted", "blocked")
LOCATION_KEYS = ("file", "line", "agent", "trace_id", "span_id", "json_path")


def now_iso(ts: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``."""
    ts = ts or datetime.now(UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_schema() -> dict[str, Any]:
    """The findings record's JSON Schema (draft 2020-12), shipped as package data next to this module."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text("utf-8"))


def _h(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def finding_id(detector: str, fingerprint: str, location: Mapping[str, Any]) -> str:
    """16 hex chars of sha256(detector, fingerprint, scope, json_path); scope = file, else agent."""
    scope = location.get("file") or location.get("agent") or ""
    return _h("finding", detector, fingerprint, scope, location.get("json_path", ""))


def _actions(kind: str, detector_id: str) -> list[str]:
    if kind == "secret":
        return ["Rotate the credential now: revoke it at the issuer and issue a new one, before any other cleanup.",
                "Then purge or redact the traces and logs that contain it.",
                "Find how it reached the agent (prompt, tool output, config) and stop it at the source."]
    return ["Redact or regenerate the affected traces before using them for evaluation or optimization.",
            "Check retention and access to the telemetry holding this data.",
            f"Enable inline redaction of '{detector_id}' in the sidecar ([guardrails.inline] kinds includes 'pii')."]


@dataclass
class Finding:
    """One leaked value at one scope (file or agent) and JSON path. See the module docstring; :meth:`as_dict` is
    the JSON form, the findings record (``findings_record.schema.json``, :data:`SCHEMA_VERSION`).

    ``location``: the first occurrence (``file``/``line``/``json_path``, or ``agent``/``namespace``/``trace_id``/
    ``span_id``/``json_path``/``outcome``); ``locations``: every distinct location, first ones first, at most the
    aggregator's ``max_locations``; ``location_count``: how many distinct locations were seen in all (past the cap
    only the last one is remembered, so a repeat of an older place past the cap counts again); ``count``:
    occurrences. ``outcome``: the worst of
    the occurrences' outcomes (:data:`OUTCOMES`, worst first). ``source`` / ``rule`` / ``validation``: the detection
    tier (``catalog`` | ``deep``), the rule id (the detector id for the catalog) and the offline validation result
    (``valid`` | ``invalid`` | None). ``revision``: 0 until this writer first commits it, then +1 per commit that
    changed it; ``(id, revision)`` names one version of the record (what downstream deduplicates on).
    """

    id: str
    type: str
    kind: str
    detector: str
    severity: str
    confidence: float
    masked_preview: str
    fingerprint: str
    location: dict[str, Any]
    first_seen: str
    last_seen: str
    count: int = 1
    follow_up_actions: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    agent: str = ""
    namespace: str = ""
    outcome: str = "seen-at-rest"
    source: str = "catalog"
    rule: str = ""
    validation: str | None = None
    locations: list[dict[str, Any]] = field(default_factory=list)
    location_count: int = 1
    revision: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (snapshot ``findings[]``, findings topic value, ``railcar scan --format jsonl`` line)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Rebuild from :meth:`as_dict` output (unknown keys ignored; a record of an older layout gets its
        ``locations`` from ``location``); raises ``TypeError`` when a field without a default is missing."""
        f = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        if not f.locations:
            f.locations = [dict(f.location)]
        f.schema_version = SCHEMA_VERSION
        return f


def location_key(loc: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two locations the same place: file, line, agent, trace, span and JSON path."""
    return tuple(loc.get(k) for k in LOCATION_KEYS)


def worse_outcome(a: str, b: str) -> str:
    """The worse of two :data:`OUTCOMES` (an unknown value ranks as ``seen-at-rest``)."""
    rank = {o: i for i, o in enumerate(OUTCOMES)}
    return a if rank.get(a, 1) <= rank.get(b, 1) else b


def merge_locations(f: dict[str, Any], g: Mapping[str, Any], cap: int) -> None:
    """Merge finding dict ``g``'s locations into ``f`` (in place): distinct locations, ``f``'s first, at most
    ``cap``; ``location_count`` is the distinct kept ones plus what either side counted past its cap."""
    mine = f.get("locations") or [f["location"]]
    theirs = g.get("locations") or [g["location"]]
    keys = {location_key(x) for x in mine}
    merged = list(mine)
    for loc in theirs:
        k = location_key(loc)
        if k not in keys:
            keys.add(k)
            merged.append(loc)
    beyond = max(0, f.get("location_count", len(mine)) - len(mine)) + max(
        0, g.get("location_count", len(theirs)) - len(theirs))
    f["locations"] = merged[:cap]
    f["location_count"] = len(merged) + beyond


@dataclass
class Suggestion:
    """A recommended action (one line of ``security_suggestions.jsonl``)."""

    id: str
    type: str
    title: str
    detail: str
    priority: str
    actions: list[str]
    finding_ids: list[str]
    scope: str
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: one line of ``security_suggestions.jsonl``."""
        return asdict(self)


class FindingsAggregator:
    """Collects findings of one writer (a scan run or a consumer instance).

    ``detectors``: the enabled detectors (reported as coverage); ``source``: ``"scan"`` or ``"consume"``;
    ``max_locations``: locations kept per finding (``detection.max_locations_per_finding``).

    Publishing (the findings topic, at-least-once): with ``outbox`` True, :meth:`state` seals every finding changed
    since the last call (``revision`` + 1) and lists ``(id, revision)`` in the state's ``outbox`` — so the pending
    publishes are written in the same fileset commit as the findings — until :meth:`acknowledge` takes them off
    (durable at the next commit; a record acknowledged but not yet committed is sent again after a crash, with the
    same id, revision and content). :attr:`positions` (``"topic/partition" -> next offset``) are committed in the
    same state, so a restarted consumer skips records already counted.
    """

    def __init__(self, detectors: Iterable[_det.Detector] | None = None, source: str = "scan", *,
                 max_locations: int = 100, outbox: bool = False) -> None:
        self.detectors = tuple(_det.CATALOG if detectors is None else detectors)
        self.source = source
        self.max_locations = max_locations
        self.outbox_enabled = outbox
        self._findings: dict[str, Finding] = {}
        self._loc_keys: dict[str, set[tuple[Any, ...]]] = {}
        self._beyond: dict[str, tuple[Any, ...]] = {}  # finding id -> the last location counted past the cap
        self._dirty: set[str] = set()
        self._outbox: dict[str, int] = {}  # finding id -> sealed revision not yet acknowledged by the broker
        self.positions: dict[str, int] = {}
        self._model_paths: dict[tuple[str, str], dict[str, Any]] = {}
        self.started_at = now_iso()
        self.scan: dict[str, Any] = {"bytes_scanned": 0, "records_scanned": 0, "files_scanned": 0, "capped": False}
        self._high_risk_text = False

    # ------------------------------------------------------------------------------------------- input

    def _add(self, d: Mapping[str, Any], location: Mapping[str, Any], outcome: str,
             seen_at: datetime | None) -> Finding:
        """Merge one occurrence; ``d`` has detector, kind, severity, confidence, fingerprint, masked_preview,
        source, rule, validation."""
        loc = {**location, "outcome": outcome} if "agent" in location else dict(location)
        fid = finding_id(d["detector"], d["fingerprint"], loc)
        ts = now_iso(seen_at)
        f = self._findings.get(fid)
        self._dirty.add(fid)
        if f is None:
            kind = d["kind"]
            f = Finding(fid, "leaked_secret" if kind == "secret" else "pii", kind, d["detector"], d["severity"],
                        d["confidence"], d["masked_preview"], d["fingerprint"], loc, ts, ts, 1,
                        _actions(kind, d["detector"]), agent=str(loc.get("agent") or ""),
                        namespace=str(loc.get("namespace") or ""), outcome=outcome, source=d["source"],
                        rule=d["rule"] or d["detector"], validation=d["validation"], locations=[loc])
            self._findings[fid] = f
            self._loc_keys[fid] = {location_key(loc)}
            return f
        f.count += 1
        f.first_seen, f.last_seen = min(f.first_seen, ts), max(f.last_seen, ts)
        f.outcome = worse_outcome(f.outcome, outcome)
        keys = self._loc_keys.get(fid)
        if keys is None:  # restored: index the kept locations once
            keys = self._loc_keys[fid] = {location_key(x) for x in f.locations}
        k = location_key(loc)
        if k not in keys and self._beyond.get(fid) != k:
            f.location_count += 1
            if len(f.locations) < self.max_locations:
                keys.add(k)
                f.locations.append(loc)
            else:  # past the cap only the last place is remembered: a repeat there is not a new location
                self._beyond[fid] = k
        return f

    def add_match(self, match: Any, location: Mapping[str, Any], seen_at: datetime | None = None) -> Finding:
        """Record a :class:`railcar.rails.scanner.Match` (the value was there in the clear). ``location`` needs
        ``file`` or ``agent``; ``json_path`` defaults to ``match.path``; its ``outcome`` (``delivered`` or
        ``blocked``, from the span) defaults to ``seen-at-rest`` (a file scanned at rest)."""
        d = {"detector": match.detector, "kind": match.kind, "severity": match.severity,
             "confidence": match.confidence, "fingerprint": match.fingerprint, "masked_preview": match.preview,
             "source": getattr(match, "source", "catalog"), "rule": getattr(match, "rule", ""),
             "validation": getattr(match, "validation", None)}
        return self._add(d, {"json_path": match.path, **location}, str(location.get("outcome") or "seen-at-rest"),
                         seen_at)

    def add_note(self, note: Any, location: Mapping[str, Any], seen_at: datetime | None = None) -> Finding:
        """Record a sidecar :class:`railcar.rails.redaction.RedactionNote` (or its dict form): the value itself is gone
        from the event, the note says what was there; the occurrence's outcome is ``blocked`` when the span's
        ``location["outcome"]`` says so, else ``redacted``. Raises ``ValueError`` naming a missing field."""
        d = note.as_dict() if hasattr(note, "as_dict") else dict(note)
        missing = [k for k in ("detector", "kind", "fingerprint", "masked_preview") if k not in d]
        if missing:
            raise ValueError(f"redaction note: missing field {missing[0]!r}")
        rec = {"detector": d["detector"], "kind": d["kind"], "severity": d.get("severity", "high"),
               "confidence": float(d.get("confidence", 0.9)), "fingerprint": d["fingerprint"],
               "masked_preview": d["masked_preview"], "source": str(d.get("source") or "catalog"),
               "rule": str(d.get("rule") or ""), "validation": d.get("validation")}
        outcome = "blocked" if location.get("outcome") == "blocked" else "redacted"
        return self._add(rec, {"json_path": d.get("path", "$"), **location}, outcome, seen_at)

    def observe_model_path(self, agent: str, model: str, rails: Iterable[str] = ()) -> None:
        """Record that ``agent`` called ``model`` with the named rails active (coverage and ``guardrails``)."""
        names = sorted({str(r) for r in rails})
        guarded = any(m in n.lower() for n in names for m in GUARD_RAIL_MARKERS)
        entry = self._model_paths.setdefault((agent, model), {"agent": agent, "model": model, "guarded": False,
                                                              "rails": []})
        entry["guarded"] = entry["guarded"] or guarded
        entry["rails"] = sorted(set(entry["rails"]) | set(names))

    def note_scan(self, *, bytes_scanned: int = 0, records: int = 0, files: int = 0, capped: bool = False,
                  free_text: bool = False, tiers: str | None = None) -> None:
        """Add scan volume. ``free_text``: the data holds free-form user/tool text (risk profile for deep_scan);
        ``tiers``: what detection ran (:func:`tiers_name`), named by the ``deep_scan`` suggestions."""
        if tiers is not None:
            self.scan["tiers"] = tiers
        self.scan["bytes_scanned"] += bytes_scanned
        self.scan["records_scanned"] += records
        self.scan["files_scanned"] += files
        self.scan["capped"] = self.scan["capped"] or capped
        self._high_risk_text = self._high_risk_text or free_text

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Resume from this writer's previously committed state: its findings (counts, locations, revisions),
        model paths, pending publishes and record positions."""
        if not state:
            return
        for f in state.get("findings", []):
            self._findings[f["id"]] = Finding.from_dict(f)
        for mp in state.get("model_paths", []):
            self._model_paths[(mp["agent"], mp["model"])] = dict(mp)
        self._outbox.update({str(i): int(r) for i, r in state.get("outbox", [])})
        self.positions.update({str(k): int(v) for k, v in (state.get("positions") or {}).items()})

    # ------------------------------------------------------------------------------------------ publishing

    def pending(self) -> list[dict[str, Any]]:
        """The records sealed and not yet acknowledged (:meth:`Finding.as_dict` at their sealed revision), oldest
        id first. A record whose finding changed since keeps its sealed content until the next :meth:`state`."""
        return [self._findings[i].as_dict() for i in sorted(self._outbox) if i in self._findings]

    def acknowledge(self, finding_id: str, revision: int) -> bool:
        """The broker took ``(finding_id, revision)``: drop it from the outbox unless a newer revision was sealed
        meanwhile. Returns True when it was dropped."""
        if self._outbox.get(finding_id) == revision:
            del self._outbox[finding_id]
            return True
        return False

    # ------------------------------------------------------------------------------------------ output

    def findings(self) -> list[Finding]:
        """Findings, most severe first, then most recent."""
        out = sorted(self._findings.values(), key=lambda f: f.last_seen, reverse=True)
        return sorted(out, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))

    def suggestions(self) -> list[Suggestion]:
        """Suggestions derived from the findings and model paths (deterministic ids)."""
        return suggestions_for([f.as_dict() for f in self._findings.values()], list(self._model_paths.values()),
                               self.scan, self._high_risk_text)

    def state(self, writer_id: str = "") -> dict[str, Any]:
        """This writer's contribution to the snapshot (merged by :func:`merge_states`), to be committed: seals
        the findings changed since the last call (``revision`` + 1; into the outbox when ``outbox`` is on)."""
        for fid in self._dirty:
            f = self._findings[fid]
            f.revision += 1
            if self.outbox_enabled:
                self._outbox[fid] = f.revision
        self._dirty.clear()
        return {"writer": writer_id, "source": self.source, "updated_at": now_iso(),
                "last_scan": {"writer": writer_id, "source": self.source, "started_at": self.started_at,
                              "finished_at": now_iso(), **self.scan},
                "detectors": [d.id for d in self.detectors],
                "kinds": sorted({d.kind for d in self.detectors}),
                "model_paths": list(self._model_paths.values()),
                "findings": [f.as_dict() for f in self._findings.values()],
                "max_locations": self.max_locations,
                "outbox": sorted(self._outbox.items()), "positions": dict(self.positions)}


def suggestions_for(findings: list[Mapping[str, Any]], model_paths: list[Mapping[str, Any]],
                    scan: Mapping[str, Any] | None = None, free_text: bool = False) -> list[Suggestion]:
    """The suggestions for a set of finding dicts and model paths.

    * ``data_safety``: one per secret finding (rotate first; critical priority) and one per (scope, PII detector)
      (redact or regenerate; high priority);
    * ``guardrails``: one per agent with an unguarded model path (its models named in the detail);
    * ``deep_scan``: one per scope with PII findings, or for a capped scan, or free-form text with no findings.
    """
    ts = now_iso()
    out: list[Suggestion] = []
    pii_groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for f in sorted(findings, key=lambda f: f["id"]):
        loc = f.get("location", {})
        scope = str(loc.get("file") or loc.get("agent") or "")
        if f["kind"] == "secret":
            out.append(_rotate_suggestion(f, scope, ts))
        else:
            pii_groups.setdefault((scope, f["detector"]), []).append(f)
    out += [_pii_suggestion(scope, det, group, ts) for (scope, det), group in sorted(pii_groups.items())]
    out += _guardrails_suggestions(model_paths, ts)
    out += _deep_scan_suggestions(pii_groups, ts, str((scan or {}).get("tiers") or tiers_name(None)))
    coverage = _coverage_suggestion(scan or {}, free_text and not findings, ts)
    return out + ([coverage] if coverage else [])


def _rotate_suggestion(f: Mapping[str, Any], scope: str, ts: str) -> Suggestion:
    loc = f.get("location", {})
    where = f"{scope}" + (f" line {loc['line']}" if loc.get("line") else "") + f" at {loc.get('json_path', '$')}"
    return Suggestion(_h("suggestion", "data_safety", f["id"]), "data_safety",
                      f"Rotate the leaked {f['detector']} credential {f['masked_preview']}",
                      f"A {f['detector']} credential ({f['masked_preview']}) appears in telemetry ({where}). "
                      "Rotate it before any other cleanup; then purge the traces that hold it.",
                      "critical", list(f.get("follow_up_actions") or _actions("secret", f["detector"])),
                      [f["id"]], scope, ts)


def _pii_suggestion(scope: str, det: str, group: list[Mapping[str, Any]], ts: str) -> Suggestion:
    ids = sorted(g["id"] for g in group)
    return Suggestion(_h("suggestion", "data_safety", "pii", scope, det), "data_safety",
                      f"Redact or regenerate traces with {det} in {scope or 'telemetry'}",
                      f"{len(ids)} distinct {det} value(s) found in {scope or 'telemetry'}. Redact or regenerate "
                      "the affected traces before using them for evaluation or optimization.",
                      "high", _actions("pii", det), ids, scope, ts)


def _guardrails_suggestions(model_paths: list[Mapping[str, Any]], ts: str) -> list[Suggestion]:
    unguarded: dict[str, list[str]] = {}
    for mp in model_paths:
        if not mp.get("guarded"):
            unguarded.setdefault(mp["agent"], []).append(mp["model"])
    out = []
    for agent, models in sorted(unguarded.items()):
        # One per agent: the fix (guard its model path) is the same whichever models it calls.
        who = agent or "(unknown)"
        shown = ", ".join(sorted(models)[:5]) + (f" and {len(models) - 5} more" if len(models) > 5 else "")
        out.append(Suggestion(_h("suggestion", "guardrails", agent), "guardrails",
                              f"Guard the model path of agent {who}",
                              f"Agent {who} calls {shown} without a content-safety, topic-control or safety-guard "
                              "rail. Create a guarded virtual model (input and output rails) and point the agent's "
                              "model_name at it.",
                              "high", ["Create a guardrail config using nvidia-llama-3-1-nemoguard-8b-content-safety "
                                       "(and topic-control / nemotron-safety-guard as needed).",
                                       "Point the agent at the guarded virtual model (or at the Railcar sidecar "
                                       "with that config) and re-run evaluation."],
                              [], agent, ts))
    return out


def tiers_name(deep: Any) -> str:
    """What detection ran, for reports and suggestions: ``"Railcar's catalog"``, plus the deep tier's ``name``
    (``"Kingfisher 1.5.0 (488 rules)"``) when one ran."""
    return "Railcar's catalog" + (f" and {deep.name}" if deep is not None else "")


def _deep_scan_suggestions(pii_groups: dict[tuple[str, str], list[Mapping[str, Any]]], ts: str,
                           tiers: str) -> list[Suggestion]:
    out = []
    deep_off = "" if " and " in tiers else (" The deep secret tier was off (`detection.deep = false`): turn it on, "
                                            "or run `railcar scan --deep`.")
    for scope in sorted({scope for scope, _ in pii_groups}):
        ids = sorted(i for (s, _), g in pii_groups.items() if s == scope for i in (x["id"] for x in g))
        out.append(Suggestion(_h("suggestion", "deep_scan", scope), "deep_scan",
                              f"Run a deep PII scan on a subset of traces from {scope or 'telemetry'}",
                              f"Scanned with {tiers}, which found structured PII; names, addresses and free-form "
                              "personal data are beyond both rule sets. Run GLiNER PII or a NemoGuard safety model on "
                              f"a sample of these traces.{deep_off}",
                              "medium", ["Sample recent traces from this scope.",
                                         "Run GLiNER PII or NemoGuard on the sample and review its findings."],
                              ids, scope, ts))
    return out


def _coverage_suggestion(scan: Mapping[str, Any], clean_free_text: bool, ts: str) -> Suggestion | None:
    """The ``deep_scan`` suggestion for a capped scan, or free-form text where regex found nothing."""
    if not (scan.get("capped") or clean_free_text):
        return None
    reason = "capped" if scan.get("capped") else "free_text"
    return Suggestion(_h("suggestion", "deep_scan", "coverage", reason), "deep_scan",
                      "Regex coverage is partial: run a model-based scan on a subset",
                      "The scan stopped at its byte cap or covered free-form text where regex finds only "
                      "structured formats. Run GLiNER PII or a NemoGuard model on a sample of traces.",
                      "low", ["Sample traces beyond the cap or with free-form text.",
                              "Run GLiNER PII or NemoGuard on the sample."], [], "", ts)


def merge_states(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge writer states into one view: findings by id (counts summed, first/last seen min/max, locations
    merged up to the largest writer ``max_locations``, the worse outcome, the highest revision), model paths by
    (agent, model) (guarded if any writer saw a guard rail), coverage unioned."""
    states = list(states)
    cap = max([int(st.get("max_locations") or 100) for st in states] or [100])
    findings: dict[str, dict[str, Any]] = {}
    paths: dict[tuple[str, str], dict[str, Any]] = {}
    detectors: set[str] = set()
    kinds: set[str] = set()
    writers: dict[str, Any] = {}
    for st in states:
        writers[st.get("writer", "")] = {"updated_at": st.get("updated_at"), "last_scan": st.get("last_scan")}
        detectors.update(st.get("detectors", []))
        kinds.update(st.get("kinds", []))
        for f in st.get("findings", []):
            cur = findings.get(f["id"])
            if cur is None:
                findings[f["id"]] = dict(f)
            else:
                _merge_finding(cur, f, cap)
        for mp in st.get("model_paths", []):
            key = (mp["agent"], mp["model"])
            cur = paths.setdefault(key, {"agent": mp["agent"], "model": mp["model"], "guarded": False, "rails": []})
            cur["guarded"] = cur["guarded"] or bool(mp.get("guarded"))
            cur["rails"] = sorted(set(cur["rails"]) | set(mp.get("rails", [])))
    return {"findings": list(findings.values()), "model_paths": list(paths.values()),
            "detectors": sorted(detectors), "kinds": sorted(kinds), "writers": writers}


def _merge_finding(cur: dict[str, Any], f: Mapping[str, Any], cap: int) -> None:
    """Another writer's version ``f`` of finding ``cur`` (same id), merged into ``cur``."""
    cur["count"] += f["count"]
    cur["first_seen"] = min(cur["first_seen"], f["first_seen"])
    cur["last_seen"] = max(cur["last_seen"], f["last_seen"])
    merge_locations(cur, f, cap)
    cur["outcome"] = worse_outcome(cur.get("outcome", "seen-at-rest"), f.get("outcome", "seen-at-rest"))
    cur["revision"] = max(int(cur.get("revision", 0)), int(f.get("revision", 0)))


def build_snapshot(merged: Mapping[str, Any], last_scan: Mapping[str, Any], suggestion_counts: Mapping[str, int],
                   max_findings: int = 5000) -> dict[str, Any]:
    """The ``security_snapshot.json`` document (layout in ``.notes/detection-api.md``)."""
    fs = sorted(merged["findings"], key=lambda f: (SEVERITY_ORDER.get(f["severity"], 9), f["id"]))
    counts: dict[str, Any] = {"findings": len(fs), "occurrences": sum(f["count"] for f in fs)}
    for name, key in (("by_kind", "kind"), ("by_type", "type"), ("by_detector", "detector"),
                      ("by_severity", "severity")):
        counts[name] = dict(Counter(f[key] for f in fs))
    counts["by_agent"] = dict(Counter(f["location"].get("agent") for f in fs if f["location"].get("agent")))
    paths = merged["model_paths"]
    by_type = {t: int(suggestion_counts.get(t, 0)) for t in SUGGESTION_TYPES}
    return {"schema": "railcar.security_snapshot/1", "fileset": "nemo-agent-security", "generated_at": now_iso(),
            "last_scan": dict(last_scan), "counts": counts,
            "coverage": {"detectors": merged["detectors"], "kinds": merged["kinds"], "model_paths": paths,
                         "guarded_agents": len({p["agent"] for p in paths if p["guarded"]}),
                         "unguarded_agents": len({p["agent"] for p in paths if not p["guarded"]})},
            "writers": merged["writers"], "findings": fs[:max_findings], "findings_truncated": len(fs) > max_findings,
            "suggestions": {"total": sum(by_type.values()), "by_type": by_type}}
