"""Findings and suggestions, as the NeMo Platform "Secure Agents" workflow defines them
(``../shared/seeds/000_8dc3429b33a751c2.txt``).

* A :class:`Finding` is one leaked value at one place: stable id (same secret + same location -> same id), type,
  detector, severity, masked preview, location, first/last seen, occurrence count and follow-up actions. "Location"
  for the id is the scope (``location["file"]``, else ``location["agent"]``) plus the JSON path; line, trace and span
  ids are informational (first occurrence), so the same leak repeated over many lines or traces is one finding.
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
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from railcar.rails import detectors as _det

SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
GUARD_RAIL_MARKERS = ("content-safety", "content_safety", "topic-control", "topic_control", "safety-guard",
                      "safety_guard", "nemoguard")
SUGGESTION_TYPES = ("data_safety", "guardrails", "deep_scan")


def now_iso(ts: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``."""
    ts = ts or datetime.now(UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """One leaked value at one location. See the module docstring; ``as_dict`` is the JSON form."""

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

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (snapshot ``findings[]``, findings topic value, ``railcar scan --format jsonl`` line)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Rebuild from :meth:`as_dict` output (unknown keys ignored); raises ``TypeError`` when a field without
        a default is missing."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


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

    ``detectors``: the enabled detectors (reported as coverage); ``source``: ``"scan"`` or ``"consume"``.
    """

    def __init__(self, detectors: Iterable[_det.Detector] | None = None, source: str = "scan") -> None:
        self.detectors = tuple(_det.CATALOG if detectors is None else detectors)
        self.source = source
        self._findings: dict[str, Finding] = {}
        self._model_paths: dict[tuple[str, str], dict[str, Any]] = {}
        self.started_at = now_iso()
        self.scan: dict[str, Any] = {"bytes_scanned": 0, "records_scanned": 0, "files_scanned": 0, "capped": False}
        self._high_risk_text = False

    # ------------------------------------------------------------------------------------------- input

    def _add(self, detector: str, kind: str, severity: str, confidence: float, fp: str, preview: str,
             location: Mapping[str, Any], seen_at: datetime | None) -> Finding:
        loc = dict(location)
        fid = finding_id(detector, fp, loc)
        ts = now_iso(seen_at)
        f = self._findings.get(fid)
        if f is None:
            f = Finding(fid, "leaked_secret" if kind == "secret" else "pii", kind, detector, severity, confidence,
                        preview, fp, loc, ts, ts, 1, _actions(kind, detector))
            self._findings[fid] = f
        else:
            f.count += 1
            f.first_seen, f.last_seen = min(f.first_seen, ts), max(f.last_seen, ts)
        return f

    def add_match(self, match: Any, location: Mapping[str, Any], seen_at: datetime | None = None) -> Finding:
        """Record a :class:`railcar.rails.scanner.Match`. ``location`` needs ``file`` or ``agent``; ``json_path`` defaults
        to ``match.path``."""
        loc = {"json_path": match.path, **location}
        return self._add(match.detector, match.kind, match.severity, match.confidence, match.fingerprint,
                         match.preview, loc, seen_at)

    def add_note(self, note: Any, location: Mapping[str, Any], seen_at: datetime | None = None) -> Finding:
        """Record a sidecar :class:`railcar.rails.redaction.RedactionNote` (or its dict form): the value itself is gone
        from the event, the note says what was there. Raises ``ValueError`` naming a missing field."""
        d = note.as_dict() if hasattr(note, "as_dict") else dict(note)
        missing = [k for k in ("detector", "kind", "fingerprint", "masked_preview") if k not in d]
        if missing:
            raise ValueError(f"redaction note: missing field {missing[0]!r}")
        loc = {"json_path": d.get("path", "$"), **location}
        return self._add(d["detector"], d["kind"], d.get("severity", "high"), float(d.get("confidence", 0.9)),
                         d["fingerprint"], d["masked_preview"], loc, seen_at)

    def observe_model_path(self, agent: str, model: str, rails: Iterable[str] = ()) -> None:
        """Record that ``agent`` called ``model`` with the named rails active (coverage and ``guardrails``)."""
        names = sorted({str(r) for r in rails})
        guarded = any(m in n.lower() for n in names for m in GUARD_RAIL_MARKERS)
        entry = self._model_paths.setdefault((agent, model), {"agent": agent, "model": model, "guarded": False,
                                                              "rails": []})
        entry["guarded"] = entry["guarded"] or guarded
        entry["rails"] = sorted(set(entry["rails"]) | set(names))

    def note_scan(self, *, bytes_scanned: int = 0, records: int = 0, files: int = 0, capped: bool = False,
                  free_text: bool = False) -> None:
        """Add scan volume. ``free_text``: the data holds free-form user/tool text (risk profile for deep_scan)."""
        self.scan["bytes_scanned"] += bytes_scanned
        self.scan["records_scanned"] += records
        self.scan["files_scanned"] += files
        self.scan["capped"] = self.scan["capped"] or capped
        self._high_risk_text = self._high_risk_text or free_text

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Resume from this writer's previously committed state (a restarted consumer keeps its counts)."""
        if not state:
            return
        for f in state.get("findings", []):
            self._findings[f["id"]] = Finding.from_dict(f)
        for mp in state.get("model_paths", []):
            self._model_paths[(mp["agent"], mp["model"])] = dict(mp)

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
        """This writer's contribution to the snapshot (merged by :func:`merge_states`)."""
        return {"writer": writer_id, "source": self.source, "updated_at": now_iso(),
                "last_scan": {"writer": writer_id, "source": self.source, "started_at": self.started_at,
                              "finished_at": now_iso(), **self.scan},
                "detectors": [d.id for d in self.detectors],
                "kinds": sorted({d.kind for d in self.detectors}),
                "model_paths": list(self._model_paths.values()),
                "findings": [f.as_dict() for f in self._findings.values()]}


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
    out += _deep_scan_suggestions(pii_groups, ts)
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


def _deep_scan_suggestions(pii_groups: dict[tuple[str, str], list[Mapping[str, Any]]], ts: str) -> list[Suggestion]:
    out = []
    for scope in sorted({scope for scope, _ in pii_groups}):
        ids = sorted(i for (s, _), g in pii_groups.items() if s == scope for i in (x["id"] for x in g))
        out.append(Suggestion(_h("suggestion", "deep_scan", scope), "deep_scan",
                              f"Run a deep PII scan on a subset of traces from {scope or 'telemetry'}",
                              "Regex found structured PII; names, addresses and free-form personal data are beyond "
                              "regex coverage. Run GLiNER PII or a NemoGuard safety model on a sample of these traces.",
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
    """Merge writer states into one view: findings by id (counts summed, first/last seen min/max), model paths by
    (agent, model) (guarded if any writer saw a guard rail), coverage unioned."""
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
                cur["count"] += f["count"]
                cur["first_seen"] = min(cur["first_seen"], f["first_seen"])
                cur["last_seen"] = max(cur["last_seen"], f["last_seen"])
        for mp in st.get("model_paths", []):
            key = (mp["agent"], mp["model"])
            cur = paths.setdefault(key, {"agent": mp["agent"], "model": mp["model"], "guarded": False, "rails": []})
            cur["guarded"] = cur["guarded"] or bool(mp.get("guarded"))
            cur["rails"] = sorted(set(cur["rails"]) | set(mp.get("rails", [])))
    return {"findings": list(findings.values()), "model_paths": list(paths.values()),
            "detectors": sorted(detectors), "kinds": sorted(kinds), "writers": writers}


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
