"""The detection engine: scan text or nested JSON with the detector catalog, compiled once.

How a scan runs (``Scanner.scan_text``):

1. gate: one ``re2.Set`` holding every pattern of every enabled detector answers, in a single DFA pass over the
   text, which patterns can match at all. Clean text stops here (hundreds of MB/s). The Set plays the role of the
   literal prefilter: every secret pattern starts with its literal prefix, so the DFA rejects on it;
2. extract: only the patterns the gate named run ``finditer`` (per-pattern compiled RE2; linear time, no ReDoS);
3. validate: each capture goes through the detector's validator (checksum, Luhn, mod-97, JSON header,
   placeholder rejection);
4. overlaps are resolved (higher confidence, then longer, wins) so a span is reported once.

``scan_json`` walks dicts/lists and scans every string value (not keys, not numbers), reporting a JSONPath-like
``path`` (``$.messages[2].content``, ``$["odd key"]``). ``scan_json_text`` takes a raw JSON document: it gates on
the raw text first and parses only when something may match, which keeps clean JSONL at gate speed. Patterns
tolerate JSON escaping (a token after ``\\n``, a PEM body with ``\\n`` escapes), so text that is itself escaped
JSON is scanned correctly too.

Every :class:`Match` carries a keyed fingerprint and a masked preview (:mod:`railcar.rails.masking`), never the value.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import re2

from railcar.core.jsonpath import key_path
from railcar.rails import detectors as _det
from railcar.rails.masking import fingerprint as _fingerprint
from railcar.rails.masking import load_key, mask
from railcar.rails.settings import DetectionConfig


@dataclass(frozen=True, slots=True)
class Match:
    """One validated detection.

    ``path``: where in the scanned object (``"$"`` for a plain string); ``start``/``end``: character offsets of
    the value within the string at ``path`` (Python slice semantics); ``fingerprint``: 16 hex chars of keyed
    HMAC-SHA256; ``preview``: masked preview. ``confidence`` in [0, 1]; ``severity`` from the detector.
    ``source``: the tier that found it, ``catalog`` (Railcar's own detectors, :mod:`railcar.rails.detectors`) or
    ``deep`` (the rules library of the consumer's deep tier); ``rule``: the library's rule id (``""`` for the
    catalog, whose rule is ``detector``); ``validation``: the offline validation result where the rule has one
    (``"valid"`` | ``"invalid"``; ``None``: not validated).
    """

    detector: str
    kind: str
    confidence: float
    severity: str
    path: str
    start: int
    end: int
    fingerprint: str
    preview: str
    source: str = "catalog"
    rule: str = ""
    validation: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The match as a JSON-ready dict (``preview`` under the key ``masked_preview``)."""
        return {"detector": self.detector, "kind": self.kind, "confidence": self.confidence,
                "severity": self.severity, "path": self.path, "start": self.start, "end": self.end,
                "fingerprint": self.fingerprint, "masked_preview": self.preview, "source": self.source,
                "rule": self.rule or self.detector, "validation": self.validation}


def re2_options(max_mem: int = 512 << 20) -> re2.Options:
    """RE2 options with ``max_mem`` bytes for the automata. A Set whose DFA runs out of memory reports "no
    match", so the sets here get plenty: a miss must never be silent."""
    opts = re2.Options()
    opts.max_mem = max_mem
    return opts


# One random key per process when none is configured: every Scanner in the process (the sidecar's hold-back and
# its trace recorder, say) then fingerprints a value alike, so an inline placeholder matches the recorded note.
_PROCESS_KEY = os.urandom(32)


class Scanner:
    """A compiled catalog. Thread-safe after construction (RE2 objects are immutable).

    ``detectors``: the detectors to run (default: the whole catalog); ``key``: the fingerprint key (bytes); when
    None a random per-process key is used and ``ephemeral_key`` is True (fingerprints then do not match across
    processes). Raises ``re2.error`` if a pattern does not compile (a catalog bug).
    """

    def __init__(self, detectors: Iterable[_det.Detector] | None = None, key: bytes | None = None) -> None:
        self.detectors: tuple[_det.Detector, ...] = tuple(_det.CATALOG if detectors is None else detectors)
        self.ephemeral_key = key is None
        self.key = _PROCESS_KEY if key is None else key
        self._set = re2.Set.SearchSet(re2_options())
        self._patterns: list[tuple[_det.Detector, Any]] = []
        opts = re2_options()
        for d in self.detectors:
            for p in d.patterns:
                idx = self._set.Add(p)
                assert idx == len(self._patterns)
                self._patterns.append((d, re2.compile(p, opts)))
        self._set.Compile()

    # ---------------------------------------------------------------------------------------------- text

    def gate(self, text: str | bytes) -> list[int]:
        """Indices of the patterns that can match somewhere in ``text`` (empty: nothing to find)."""
        return self._set.Match(text) or []

    def scan_text(self, text: str, path: str = "$") -> list[Match]:
        """Validated, non-overlapping matches in ``text``, ordered by ``start``."""
        hits = self._set.Match(text)
        if not hits:
            return []
        return self._extract(text, path, hits)

    def _extract(self, text: str, path: str, hits: Iterable[int]) -> list[Match]:
        found: list[Match] = []
        for idx in hits:
            det, rx = self._patterns[idx]
            for m in rx.finditer(text):
                value = m.group(1)
                if value is None or not det.validate(value):
                    continue
                found.append(Match(det.id, det.kind, det.confidence_for(value), det.severity, path, m.start(1),
                                   m.end(1), _fingerprint(self.key, det.id, value), mask(det.id, value)))
        if len(found) > 1:
            found = _resolve_overlaps(found)
        return found

    # ---------------------------------------------------------------------------------------------- JSON

    def scan_json(self, obj: Any, path: str = "$") -> list[Match]:
        """Matches in every string inside ``obj`` (dict/list/str/other JSON values), with their JSON paths."""
        out: list[Match] = []
        match = self._set.Match
        # Paths are linked (parent, key) tuples, rendered only for strings that hit the gate.
        stack: list[tuple[Any, Any]] = [(obj, path)]
        pop, push = stack.pop, stack.append
        while stack:
            o, p = pop()
            if isinstance(o, str):
                if len(o) >= _MIN_LEN:
                    hits = match(o)
                    if hits:
                        out.extend(self._extract(o, _render(p), hits))
            elif isinstance(o, dict):
                for k, v in o.items():
                    if isinstance(v, (str, dict, list)):
                        push((v, (p, k)))
            elif isinstance(o, list):
                for i, v in enumerate(o):
                    if isinstance(v, (str, dict, list)):
                        push((v, (p, i)))
        if len(out) > 1:
            out.sort(key=lambda m: (m.path, m.start))
        return out

    def scan_json_text(self, raw: str | bytes, path: str = "$") -> list[Match]:
        """Matches in a raw JSON document, with JSON paths.

        Fast path: gate and extract on the raw bytes (patterns tolerate JSON escaping) and validate there; the
        document is parsed and walked only when a validated match exists. ``\\uXXXX`` and ``\\/`` escapes could
        hide a value from the raw pass when they encode printable ASCII, so such documents always take the parse path
        (non-ASCII escapes such as ``\\u2019`` count as boundaries in the patterns). Raises
        ``orjson.JSONDecodeError`` (a ``ValueError``) when a document that has to be parsed is not JSON; a
        document with nothing to find is not parsed, so its validity is not checked.
        """
        b = raw.encode() if isinstance(raw, str) else raw
        if b"\\/" not in b and not _ascii_escape(b):
            hits = self._set.Match(b)
            if not hits or not self._any_valid(b, hits):
                return []
        return self.scan_json(orjson.loads(b), path)

    def _any_valid(self, b: bytes, hits: Iterable[int]) -> bool:
        for idx in hits:
            det, rx = self._patterns[idx]
            for m in rx.finditer(b):
                v = m.group(1)
                if v is not None and det.validate(v.decode("utf-8", "replace")):
                    return True
        return False

    def scan(self, obj: Any, path: str = "$") -> list[Match]:
        """``scan_text`` for a str, ``scan_json`` for anything else."""
        return self.scan_text(obj, path) if isinstance(obj, str) else self.scan_json(obj, path)

    def pattern_info(self) -> list[dict[str, Any]]:
        """Per detector: ``id``, ``kind``, ``patterns`` (RE2), ``literals``, ``literals_nocase``, ``max_len``.

        For incremental scanners (the stream hold-back of issue 8): hold back up to ``max_len`` chars after a
        position where a literal starts, and re-scan with :meth:`scan_text`.
        """
        return [{"id": d.id, "kind": d.kind, "patterns": list(d.patterns), "literals": list(d.literals),
                 "literals_nocase": d.literals_nocase, "max_len": d.max_len} for d in self.detectors]


def _resolve_overlaps(found: list[Match]) -> list[Match]:
    found.sort(key=lambda m: (-m.confidence, -(m.end - m.start), m.start))
    kept: list[Match] = []
    for m in found:
        if all(m.end <= k.start or m.start >= k.end for k in kept):
            kept.append(m)
    kept.sort(key=lambda m: m.start)
    return kept


def _ascii_escape(b: bytes) -> bool:
    """True when ``b`` holds a ``\\u00XX`` escape of a printable ASCII char (one that patterns could need)."""
    i = b.find(b"\\u00")
    while i >= 0:
        if b[i + 5:i + 6] in (b"2", b"3", b"4", b"5", b"6", b"7"):
            return True
        i = b.find(b"\\u00", i + 4)
    return False


_MIN_LEN = 6  # the shortest value any detector can match ("a@b.io")


def _render(p: Any) -> str:
    parts = []
    while isinstance(p, tuple):
        p, k = p
        parts.append(f"[{k}]" if isinstance(k, int) else key_path("", str(k)))
    parts.append(p)
    return "".join(reversed(parts))


def scanner_from_config(detection: DetectionConfig, environ: Mapping[str, str] | None = None,
                        kinds: Iterable[str] | None = None) -> Scanner:
    """A :class:`Scanner` for a ``[detection]`` section (:class:`railcar.rails.settings.DetectionConfig`); ``kinds``
    overrides ``detection.kinds`` (the inline hold-back runs ``[guardrails.inline] kinds`` with the same key and
    disabled detectors).

    Raises ``ValueError`` naming ``detection.disabled_detectors`` or ``detection.fingerprint_key_file``.
    """
    dets = _det.select(detection.kinds if kinds is None else kinds, detection.disabled_detectors)
    key = load_key(detection.fingerprint_key_file, detection.fingerprint_key_env, environ)
    return Scanner(dets, key)
