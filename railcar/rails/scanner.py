"""The detection engine: scan text or nested JSON with the detector catalog, compiled once.

How a scan runs (``Scanner.scan_text``; the text is scanned as its UTF-8 bytes):

1. prefilter: one ``re2.Set`` pass names what is present: every detector literal (``Detector.literals``,
   case-insensitively for ``literals_nocase``), the JSON escapes that need the parse path, and the full patterns
   of the *free* detectors (those without a literal: digit-based PII). Clean text stops here. This small
   automaton runs 3x faster than one holding every full pattern (what this module ran before issue 14), whose
   states multiply and miss the CPU caches;
2. extract: a pattern runs only when a literal it requires is present, and only around that literal's
   occurrences: in byte windows bounded by the pattern's widths, or anchored at the few offsets where a match can
   start (:meth:`Scanner._candidates`). RE2 (per-pattern compiled; linear time, no ReDoS) matches a window with
   the whole text as context (``^``, ``$`` and ``\b`` see past the window), so these are exactly the whole-text
   ``finditer`` matches. Free patterns run over the whole text;
3. validate: each capture goes through the detector's validator (checksum, Luhn, mod-97, JSON header,
   placeholder rejection), once per distinct value and document;
4. overlaps are resolved (higher confidence, then longer, wins) so a span is reported once.

Which literal a pattern requires, and how far from a match's start it can be, is derived from the pattern itself
(:func:`_literal_lead`, CPython's regex parser over the catalog patterns, which are Python syntax too); a pattern
for which that cannot be shown is free, so a wrong ``literals`` list costs speed, never a match.

``scan_json`` walks dicts/lists and scans every string value (not keys, not numbers), reporting a JSONPath-like
``path`` (``$.messages[2].content``, ``$["odd key"]``); the strings are joined with two NULs and scanned in one
pass (:meth:`Scanner.scan_strings`, which the consumer uses for a span's strings). ``scan_json_text`` takes a raw
JSON document: it prefilters and validates on the raw text first and parses only when a validated match exists,
which keeps clean JSONL at prefilter speed (a document of at most 8 KB is parsed as soon as the prefilter hits).
Patterns tolerate JSON escaping (a token after ``\n``, a PEM body with ``\n`` escapes), so text that is itself
escaped JSON is scanned correctly too.

Every :class:`Match` carries a keyed fingerprint and a masked preview (:mod:`railcar.rails.masking`), never the value.
"""

from __future__ import annotations

import bisect
import importlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
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

_UNANCHORED = re2._Anchor.UNANCHORED
_ANCHOR_START = re2._Anchor.ANCHOR_START
_SEP = "\x00\x00"  # between joined strings (scan_strings): no catalog pattern matches NUL inside a value
_SEP_B = _SEP.encode()
# JSON escapes that can hide a value from the raw pass of scan_json_text (``\/``, and ``\u00XX`` of a printable
# ASCII character): markers in the literal set, after the literals, so that pass costs no extra scan.
_ESCAPES = (r"\\/", r"\\u00[2-7][0-9A-Fa-f]")
_MAX_OCCURRENCES = 256  # more occurrences of one literal than this: its patterns run over the whole text
_SMALL = 2048  # bytes: a text this short is not windowed (one RE2 call over it costs about as much as a window)
# scan_json_text parses a document up to this size as soon as the prefilter hits, instead of validating on the raw
# bytes first: parsing a small document costs less than the raw extraction it would repeat. The result is the
# walk's, which the raw-first path returns too whenever it finds a validated raw match.
_PARSE_FIRST = 8192


@dataclass(frozen=True, slots=True)
class _Pattern:
    """One compiled pattern of ``detector``: ``lead`` = most characters from a match's start to the start of a
    literal it requires, ``width`` = most characters of a match (None: unbounded; ``lead`` None also when the
    pattern requires no literal); ``joinable``: it matches alike in a NUL-joined text and in each string alone."""

    index: int
    detector: _det.Detector
    text: str
    raw: Any  # the C-level RE2 object (``re2`` wraps it in Python generators and match objects)
    lead: int | None
    width: int | None
    joinable: bool

    def spans(self, b: bytes, pos: int, end: int) -> Iterator[tuple[int, int]]:
        """Byte spans of the capture group of each match in ``b[pos:end]`` (all of ``b`` as context), in the order
        and with the skipping of ``re2``'s ``finditer``, which this inlines."""
        match = self.raw.Match
        while True:
            spans = match(_UNANCHORED, b, pos, end)
            e0 = spans[0][1]
            if e0 < 0:
                return
            if spans[1][0] >= 0:
                yield spans[1]
            if pos == end:
                return
            pos = pos + 1 if pos == e0 else e0

    def anchored_spans(self, b: bytes, starts: list[int]) -> Iterator[tuple[int, int]]:
        """Like :meth:`spans` over all of ``b`` when matches can only start at ``starts`` (sorted, unique)."""
        match, n, nxt = self.raw.Match, len(b), 0
        for p in starts:
            if p < nxt:
                continue
            spans = match(_ANCHOR_START, b, p, n)
            e0 = spans[0][1]
            if e0 < 0:
                continue
            if spans[1][0] >= 0:
                yield spans[1]
            nxt = p + 1 if e0 == p else e0

    def plan(self, where: list[int] | None, n: int, factor: int) -> _Plan:
        """How to run on a text of ``n`` bytes whose required literals occur at byte offsets ``where`` (None:
        unknown or too many): windows, or anchored start offsets when that costs less than a window to the end
        (an RE2 call costs about as much as scanning 200 bytes)."""
        if where is None or self.lead is None:
            return _Plan(self, [(0, n)], None)
        back = self.lead * factor
        if self.width is not None:
            ahead = self.width * factor
            return _Plan(self, _merge([(max(0, w - back), min(n, w + ahead)) for w in where]), None)
        first = max(0, min(where) - back)
        if len(where) * (back + 1) * 200 >= n - first:
            return _Plan(self, [(first, n)], None)
        starts = sorted({p for w in where for p in range(max(0, w - back), w + 1)})
        return _Plan(self, [], starts)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Where :attr:`pattern` runs in one text: ``windows`` (byte ``[pos, end)``) and/or anchored ``starts``."""

    pattern: _Pattern
    windows: list[tuple[int, int]]
    starts: list[int] | None


# A validated hit before it becomes a Match: (detector, value, start character offset in its string).
_Hit = tuple[_det.Detector, str, int]


class Scanner:
    """A compiled catalog. Thread-safe after construction (RE2 objects are immutable).

    ``detectors``: the detectors to run (default: the whole catalog); ``key``: the fingerprint key (bytes); when
    None a random per-process key is used and ``ephemeral_key`` is True (fingerprints then do not match across
    processes). ``min_len``: strings shorter than this cannot hold a value (the shortest capture any pattern can
    make; 6 for the catalog, ``a@b.io``). Raises ``re2.error`` if a pattern does not compile (a catalog bug).
    """

    def __init__(self, detectors: Iterable[_det.Detector] | None = None, key: bytes | None = None) -> None:
        self.detectors: tuple[_det.Detector, ...] = tuple(_det.CATALOG if detectors is None else detectors)
        self.ephemeral_key = key is None
        self.key = _PROCESS_KEY if key is None else key
        opts = re2_options()
        self._pats: list[_Pattern] = []
        lits: dict[tuple[str, bool], list[_Pattern]] = {}
        for d in self.detectors:
            for p in d.patterns:
                required, lead = _literal_lead(p, d.literals, d.literals_nocase)
                pat = _Pattern(len(self._pats), d, p, re2.compile(p, opts)._regexp, lead if required else None,
                               _width(p), _joinable(p))
                self._pats.append(pat)
                for lit in d.literals if required else ():
                    lits.setdefault((lit, d.literals_nocase), []).append(pat)
        claimed = {pat.index for ps in lits.values() for pat in ps}
        self._free = [pat for pat in self._pats if pat.index not in claimed]  # no literal shown to be required
        self._lits = [(lit.encode(), nocase, re2.compile(_literal_regex(lit, nocase), opts)._regexp, ps)
                      for (lit, nocase), ps in lits.items()]
        # All literals in one regex: finding where several literals occur costs one pass instead of one each.
        self._lit_alt = re2.compile("|".join(_literal_regex(lit, nc) for lit, nc in lits) or "[^\\x00-\\x{10FFFF}]",
                                    opts)._regexp
        # One set: the literals, the JSON escape markers, the free patterns (in this order). One DFA of them is as
        # fast as one of the literals alone; the patterns themselves all together were 3x slower.
        self._free_at = len(self._lits) + len(_ESCAPES)
        self._set = _compile_set([_literal_regex(lit, nocase) for lit, nocase in lits] + list(_ESCAPES)
                                 + [pat.text for pat in self._free])
        self.min_len = max(1, min((_value_min_width(p.text) for p in self._pats), default=1))
        self._joinable = all(pat.joinable for pat in self._pats)

    # ---------------------------------------------------------------------------------------------- core

    def _candidates(self, b: bytes, factor: int, lit_hits: Sequence[int] | None = None) -> list[_Plan]:
        """How to find every match in ``b``: per pattern that can match, the byte windows ``[pos, end)`` it has to
        run in, or the byte offsets where a match may start (then ``windows`` is empty). ``factor``: most bytes
        per character of ``b`` (1 when ``b`` is ASCII, else 4); ``lit_hits``: the literal set's answer for ``b``
        when already known.

        A match holds a required literal at most ``lead`` characters after its start and is at most ``width``
        characters long, so it lies in ``[literal - lead, literal + width)`` of one of the literal's occurrences.
        Overlapping windows are merged: the merged windows are disjoint and each match lies inside one, so
        ``finditer`` over each window yields exactly the whole-text ``finditer`` matches. A pattern of unbounded
        width is instead tried anchored at each offset where a match can start (``[literal - lead, literal]``),
        in order, skipping offsets inside the previous match: exactly what an unanchored search does there."""
        n = len(b)
        out: list[_Plan] = []
        lits: list[int] = []
        for li in self._set.Match(b) if lit_hits is None else lit_hits:
            if li >= self._free_at:
                out.append(_Plan(self._free[li - self._free_at], [(0, n)], None))
            elif li < len(self._lits):  # else a JSON escape marker (scan_json_text)
                lits.append(li)
        if n <= _SMALL:  # locating literals costs more than running their patterns over a small text
            ran = set()
            for li in lits:
                for pat in self._lits[li][3]:
                    if pat.index not in ran:
                        ran.add(pat.index)
                        out.append(_Plan(pat, [(0, n)], None))
            return out
        found: dict[int, list[int] | None] = {}
        for li, where in self._positions(b, lits):
            for pat in self._lits[li][3]:
                if pat.index in found and found[pat.index] is None:
                    continue
                if pat.lead is None or where is None:
                    found[pat.index] = None
                else:
                    found.setdefault(pat.index, []).extend(where)  # type: ignore[union-attr]
        for idx, where in found.items():
            out.append(self._pats[idx].plan(where, n, factor))
        return out

    def _positions(self, b: bytes, lits: list[int]) -> list[tuple[int, list[int] | None]]:
        """``(literal index, byte offsets of its occurrences or None when more than _MAX_OCCURRENCES)`` for the
        literals ``lits`` (those present in ``b``): ``bytes.find`` for one case-sensitive literal, else one pass of
        the all-literals regex, checking which of ``lits`` starts at each offset it stops at."""
        if len(lits) == 1 and not self._lits[lits[0]][1]:
            return [(lits[0], _occurrences(b, self._lits[lits[0]][0]))]
        out: dict[int, list[int]] = {li: [] for li in lits}
        checks = [(out[li], lit, raw if nocase else None) for li in lits for lit, nocase, raw, _ in (self._lits[li],)]
        match, n, pos, budget = self._lit_alt.Match, len(b), 0, _MAX_OCCURRENCES * len(lits)
        while pos < n:
            s = match(_UNANCHORED, b, pos, n)[0][0]
            if s < 0:
                break
            budget -= 1
            if budget < 0:  # too many: every pattern of these literals runs over the whole text
                return [(li, None) for li in lits]
            for where, lit, raw in checks:
                if (b.startswith(lit, s) if raw is None else raw.Match(_ANCHOR_START, b, s, n)[0][0] >= 0):
                    where.append(s)
            pos = s + 1
        return [(li, where if len(where) <= _MAX_OCCURRENCES else None) for li, where in out.items()]

    def _raw_spans(self, b: bytes, factor: int, lit_hits: Sequence[int] | None = None
                   ) -> Iterator[tuple[_Pattern, int, int]]:
        """``(pattern, value start, value end)``: the byte spans of every match of every pattern in ``b``."""
        for plan in self._candidates(b, factor, lit_hits):
            pat = plan.pattern
            if plan.starts is not None:
                for s, e in pat.anchored_spans(b, plan.starts):
                    yield pat, s, e
            for pos, end in plan.windows:
                for s, e in pat.spans(b, pos, end):
                    yield pat, s, e

    def _hits(self, texts: Sequence[str], valid: dict[tuple[str, str], bool] | None = None) -> list[list[_Hit]]:
        """Validated hits per text (not yet overlap-resolved). Several texts are joined with :data:`_SEP` and
        scanned in one pass when every pattern is joinable (:meth:`scan_strings`). ``valid``: validator results
        by ``(detector id, value)`` already known in this scan (validators are pure), extended here."""
        valid = {} if valid is None else valid
        if len(texts) != 1 and not self._joinable:
            return [self._hits([t], valid)[0] for t in texts]
        joined = _SEP.join(texts)
        ascii_ = joined.isascii()
        blobs = None if ascii_ else [t.encode("utf-8", "surrogatepass") for t in texts]
        if blobs is None:
            b, starts = joined.encode("ascii"), _starts([len(t) for t in texts])
        else:
            b, starts = _SEP_B.join(blobs), _starts([len(x) for x in blobs])
        out: list[list[_Hit]] = [[] for _ in texts]
        for pat, s, e in self._raw_spans(b, 1 if ascii_ else 4):
            k = bisect.bisect_right(starts, s) - 1 if len(starts) > 1 else 0
            s, e = s - starts[k], e - starts[k]
            if blobs is None:
                if e > len(texts[k]):
                    continue  # across the separator: not a joinable pattern's match (cannot happen; kept safe)
                value, start = texts[k][s:e], s
            else:
                if e > len(blobs[k]):
                    continue
                value = blobs[k][s:e].decode("utf-8", "surrogatepass")
                start = len(blobs[k][:s].decode("utf-8", "surrogatepass"))
            det = pat.detector
            ok = valid.get((det.id, value))
            if ok is None:
                ok = valid[(det.id, value)] = det.validate(value)
            if ok:
                out[k].append((det, value, start))
        return out

    def _matches(self, hits: list[_Hit], path: str) -> list[Match]:
        key = self.key
        found = [Match(d.id, d.kind, d.confidence_for(v), d.severity, path, s, s + len(v),
                       _fingerprint(key, d.id, v), mask(d.id, v)) for d, v, s in hits]
        return _resolve_overlaps(found) if len(found) > 1 else found

    # ---------------------------------------------------------------------------------------------- text

    def gate(self, text: str | bytes) -> list[int]:
        """Indices of the patterns that can match somewhere in ``text`` (empty: nothing to find): a superset of
        those that do (a required literal present is enough)."""
        b = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        return sorted(plan.pattern.index for plan in self._candidates(b, 4))

    def scan_text(self, text: str, path: str = "$") -> list[Match]:
        """Validated, non-overlapping matches in ``text``, ordered by ``start``."""
        if len(text) < self.min_len:
            return []
        return self._matches(self._hits([text])[0], path)

    def scan_strings(self, items: Sequence[tuple[str, str]]) -> list[list[Match]]:
        """:meth:`scan_text` of each ``(path, text)`` in one pass: per item, the matches ``scan_text(text, path)``
        returns (same offsets, same order).

        The texts are joined with two NULs between them. A catalog pattern is *joinable* (:func:`_joinable`):
        nothing inside its value matches NUL, and its edges treat a NUL like a string's start or end
        (``(?:^|[^...])`` before, ``\\b`` or ``(?:[^...]|$)`` after), so no value crosses the separator and its two
        NULs serve a match that ends one string and one that starts the next. If any pattern is not joinable,
        each string is scanned alone."""
        out: list[list[Match]] = [[] for _ in items]
        keep = [i for i, (_, t) in enumerate(items) if len(t) >= self.min_len]
        if keep:
            for i, hits in zip(keep, self._hits([items[i][1] for i in keep])):
                if hits:
                    out[i] = self._matches(hits, items[i][0])
        return out

    # ---------------------------------------------------------------------------------------------- JSON

    def scan_json(self, obj: Any, path: str = "$") -> list[Match]:
        """Matches in every string inside ``obj`` (dict/list/str/other JSON values), with their JSON paths."""
        return self._scan_obj(obj, path, {})

    def _scan_obj(self, obj: Any, path: str, valid: dict[tuple[str, str], bool]) -> list[Match]:
        paths: list[Any] = []
        texts: list[str] = []
        min_len = self.min_len
        # Paths are linked (parent, key) tuples, rendered only for strings that hold a match.
        stack: list[tuple[Any, Any]] = [(obj, path)]
        pop, push = stack.pop, stack.append
        while stack:
            o, p = pop()
            if isinstance(o, str):
                if len(o) >= min_len:
                    paths.append(p)
                    texts.append(o)
            elif isinstance(o, dict):
                for k, v in o.items():
                    if isinstance(v, (str, dict, list)):
                        push((v, (p, k)))
            elif isinstance(o, list):
                for i, v in enumerate(o):
                    if isinstance(v, (str, dict, list)):
                        push((v, (p, i)))
        out: list[Match] = []
        if texts:
            for p, hits in zip(paths, self._hits(texts, valid)):
                if hits:
                    out.extend(self._matches(hits, _render(p)))
        if len(out) > 1:
            out.sort(key=lambda m: (m.path, m.start))
        return out

    def scan_json_text(self, raw: str | bytes, path: str = "$") -> list[Match]:
        """Matches in a raw JSON document, with JSON paths.

        Fast path: prefilter, extract and validate on the raw bytes (patterns tolerate JSON escaping); the
        document is parsed and walked only when a validated match exists. ``\\uXXXX`` and ``\\/`` escapes could
        hide a value from the raw pass when they encode printable ASCII, so such documents always take the parse path
        (non-ASCII escapes such as ``\\u2019`` count as boundaries in the patterns). Raises
        ``orjson.JSONDecodeError`` (a ``ValueError``) when a document that has to be parsed is not JSON; a
        document with nothing to find is not parsed, so its validity is not checked.
        """
        b = raw.encode() if isinstance(raw, str) else raw
        hits = self._set.Match(b)
        if not hits:
            return []
        valid: dict[tuple[str, str], bool] = {}  # the raw pass's validations, reused for the decoded strings
        if any(len(self._lits) <= h < self._free_at for h in hits):  # an escape: the raw pass could miss a value
            return self._scan_obj(orjson.loads(b), path, valid)
        if len(b) <= _PARSE_FIRST:
            try:
                obj = orjson.loads(b)
            except orjson.JSONDecodeError:
                if self._any_valid(b, hits, valid):
                    raise
                return []
            return self._scan_obj(obj, path, valid)
        if not self._any_valid(b, hits, valid):
            return []
        return self._scan_obj(orjson.loads(b), path, valid)

    def _any_valid(self, b: bytes, lit_hits: Sequence[int], valid: dict[tuple[str, str], bool]) -> bool:
        for pat, s, e in self._raw_spans(b, 1 if b.isascii() else 4, lit_hits):
            det, value = pat.detector, b[s:e].decode("utf-8", "replace")
            ok = valid.get((det.id, value))
            if ok is None:
                ok = valid[(det.id, value)] = det.validate(value)
            if ok:
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


def _render(p: Any) -> str:
    parts = []
    while isinstance(p, tuple):
        p, k = p
        parts.append(f"[{k}]" if isinstance(k, int) else key_path("", str(k)))
    parts.append(p)
    return "".join(reversed(parts))


def _compile_set(patterns: list[str]) -> Any:
    """The C-level ``RE2::Set`` of ``patterns``: its ``Match(bytes)`` returns the indices that match (the ``re2``
    wrapper only adds an ``isinstance`` and a str encoding)."""
    s = re2.Set.SearchSet(re2_options())
    for p in patterns:
        s.Add(p)
    s.Compile()
    return s._set


def _literal_regex(lit: str, nocase: bool) -> str:
    return f"(?i:{re2.escape(lit)})" if nocase else re2.escape(lit)


def _occurrences(b: bytes, lit: bytes) -> list[int] | None:
    """Byte offsets of every (possibly overlapping) occurrence of ``lit`` in ``b``; None when there are more than
    :data:`_MAX_OCCURRENCES`."""
    out: list[int] = []
    i = b.find(lit)
    while i >= 0 and len(out) <= _MAX_OCCURRENCES:
        out.append(i)
        i = b.find(lit, i + 1)
    return out if len(out) <= _MAX_OCCURRENCES else None


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    windows.sort()
    out = [windows[0]]
    for s, e in windows[1:]:
        if s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _starts(lengths: list[int]) -> list[int]:
    """Offsets of the joined strings of ``lengths`` (separated by :data:`_SEP`)."""
    out, pos = [], 0
    for n in lengths:
        out.append(pos)
        pos += n + len(_SEP)
    return out


# ------------------------------------------------------------------------------------------- pattern analysis
# CPython's own regex parser reads the catalog patterns (which are Python syntax as well as RE2 syntax:
# :func:`railcar.rails.detectors.rail_patterns`). A pattern it cannot read gets the safe answers: no literal
# required, unbounded, not joinable.

_PARSER: Any = importlib.import_module("re._parser")
_UNBOUNDED = int(_PARSER.MAXREPEAT)
_CAP = 4096  # most strings enumerated for a pattern prefix
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")
_NUL_FREE_CATEGORIES = ("CATEGORY_DIGIT", "CATEGORY_SPACE", "CATEGORY_WORD")
_NUL_CATEGORIES = ("CATEGORY_NOT_DIGIT", "CATEGORY_NOT_SPACE", "CATEGORY_NOT_WORD")


def _parse(pattern: str) -> Any:
    try:
        return _PARSER.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None


def _flatten(items: Iterable[Any]) -> list[Any]:
    """The top-level sequence of a parsed pattern with flag-less groups spliced in (concatenation is
    associative, so a group's items belong to the enclosing sequence)."""
    out: list[Any] = []
    for op, av in items:
        if str(op) == "SUBPATTERN" and av[1] == 0 and av[2] == 0:
            out.extend(_flatten(av[3]))
        else:
            out.append((op, av))
    return out


def _class_chars(av: Any) -> set[str] | None:
    """The characters of a non-negated class without categories, or None (negated, categories, too many)."""
    out: set[str] = set()
    for op, a in av:
        name = str(op)
        if name == "LITERAL":
            out.add(chr(a))
        elif name == "RANGE" and a[1] - a[0] < _CAP:
            out.update(chr(c) for c in range(a[0], a[1] + 1))
        else:
            return None
    return out if len(out) <= _CAP else None


def _item_strings(op: str, av: Any, nocase: bool) -> tuple[set[str], bool] | None:
    """``(strings, complete)`` for one parsed item: every match of the item starts with one of ``strings`` (is
    one of them when ``complete``); None when the item cannot be enumerated."""
    if op == "LITERAL":
        return {chr(av)}, True
    if op == "IN":
        chars = _class_chars(av)
        return None if chars is None else (chars, True)
    if op == "AT":
        return {""}, True
    if op == "SUBPATTERN":
        if (av[1] | av[2]) & re.IGNORECASE and not nocase:  # case-folded: the literal search is case-sensitive
            return None
        return _strings(av[3], nocase)
    if op == "BRANCH":
        out: set[str] = set()
        complete = True
        for alt in av[1]:
            s, c = _strings(alt, nocase)
            out |= s
            complete = complete and c
        return (out, complete) if len(out) <= _CAP else None
    if op in _REPEATS:
        lo, hi, sub = av
        s, c = _strings(sub, nocase)
        if lo == 0:  # zero times, or starting like one time
            return s | {""}, c and hi == 1
        return s, c and lo == hi == 1
    return None


def _strings(items: Iterable[Any], nocase: bool) -> tuple[set[str], bool]:
    """``(strings, complete)`` for a sequence: every match starts with one of ``strings`` (is one of them when
    ``complete``). Enumerates item by item until an item cannot be, or more than :data:`_CAP` strings."""
    out = {""}
    for op, av in items:
        got = _item_strings(str(op), av, nocase)
        if got is None:
            return out, False
        alts, complete = got
        grown = {a + s for a in out for s in alts}
        if len(grown) > _CAP:
            return out, False
        out = grown
        if not complete:
            return out, False
    return out, True


def _first_literal(s: str, lits: list[str]) -> int | None:
    at = [i for i in (s.find(x) for x in lits) if i >= 0]
    return min(at) if at else None


def _literal_lead(pattern: str, literals: Sequence[str], nocase: bool) -> tuple[bool, int | None]:
    """``(required, lead)``: whether every match of ``pattern`` contains one of ``literals`` (compared
    case-insensitively when ``nocase``), and then the most characters from a match's start to the start of the
    first literal in it (None: unbounded, e.g. ``-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY``).

    Proof by enumeration: the pattern is a sequence of items; for each suffix of it (after items whose widths
    add up to at most ``offset``), the strings every match of the suffix starts with are enumerated
    (:func:`_strings`); when each of them holds a literal, every match does, within ``offset`` plus the largest
    position of a literal in those strings."""
    tree = _parse(pattern)
    lits = [x.lower() if nocase else x for x in literals if x]
    if tree is None or not lits or (tree.state.flags & re.IGNORECASE and not nocase):
        return False, None
    items = _flatten(tree)
    offset: int | None = 0
    for i in range(len(items)):
        strings, _ = _strings(items[i:], nocase)
        at = [_first_literal(s.lower() if nocase else s, lits) for s in strings]
        found = [a for a in at if a is not None]
        if len(found) == len(at):
            return True, None if offset is None else offset + max(found)
        if offset is not None:
            hi = _PARSER.SubPattern(tree.state, [items[i]]).getwidth()[1]
            offset = None if hi >= _UNBOUNDED else offset + hi
    return False, None


def _width(pattern: str) -> int | None:
    """Most characters a match of ``pattern`` spans (None: unbounded or unknown)."""
    tree = _parse(pattern)
    hi = _UNBOUNDED if tree is None else tree.getwidth()[1]
    return None if hi >= _UNBOUNDED else int(hi)


def _value_min_width(pattern: str) -> int:
    """Fewest characters the capture group (the value) of ``pattern`` matches (1 when unknown)."""
    tree = _parse(pattern)
    try:
        return max(1, int(tree.state.groupwidths[1][0]))
    except (AttributeError, IndexError, TypeError):
        return 1


def _class_has_nul(av: Any) -> bool:
    has, negated = False, False
    for op, a in av:
        name = str(op)
        if name == "NEGATE":
            negated = True
        elif name == "LITERAL":
            has = has or a == 0
        elif name == "RANGE":
            has = has or a[0] == 0
        elif name == "CATEGORY" and str(a) in _NUL_CATEGORIES:
            has = True
        elif not (name == "CATEGORY" and str(a) in _NUL_FREE_CATEGORIES):
            return True  # unknown: assume it may
    return has != negated


def _nul_free(item: Any) -> bool:
    """True when nothing ``item`` matches contains NUL and it asserts no text edge (``^``, ``$``)."""
    op, av = str(item[0]), item[1]
    if op == "LITERAL":
        return bool(av != 0)
    if op == "NOT_LITERAL":  # the parser's form of a one-character negated class such as ``[^a]``
        return bool(av == 0)
    if op == "IN":
        return not _class_has_nul(av)
    if op == "AT":
        return str(av) in ("AT_BOUNDARY", "AT_NON_BOUNDARY")  # a NUL is a non-word character, like an edge
    if op == "SUBPATTERN":
        return all(_nul_free(x) for x in av[3])
    if op == "BRANCH":
        return all(_nul_free(x) for alt in av[1] for x in alt)
    if op in _REPEATS:
        return all(_nul_free(x) for x in av[2])
    return False  # ANY, back references, look-arounds


def _one_char_nul(item: Any) -> bool:
    """True for a one-character class that matches NUL (``[^a-z]``, or ``[^a]`` which the parser makes a
    ``NOT_LITERAL``)."""
    op = str(item[0])
    return (op == "IN" and _class_has_nul(item[1])) or (op == "NOT_LITERAL" and item[1] != 0)


def _edge_ok(item: Any, anchor: str) -> bool:
    """A first (``anchor`` = ``AT_BEGINNING``) or last (``AT_END``) item that meets a NUL of the separator as it
    would meet the string's edge: an alternation of NUL-free alternatives, one-character classes (which take one
    NUL) and ``anchor`` (which a NUL then stands in for)."""
    if str(item[0]) != "BRANCH":
        return False
    alts = [list(a) for a in item[1][1]]
    one_char = [a for a in alts if len(a) == 1 and _one_char_nul(a[0])]
    for a in alts:
        if a in one_char or all(_nul_free(x) for x in a):
            continue
        if not (one_char and len(a) == 1 and str(a[0][0]) == "AT" and str(a[0][1]) == anchor):
            return False
    return True


def _joinable(pattern: str) -> bool:
    """Whether ``pattern`` finds the same values in strings joined with :data:`_SEP` as in each string alone:
    every item is NUL-free but the first and last, which may take one NUL each in place of a string's edge."""
    tree = _parse(pattern)
    items = [] if tree is None else _flatten(tree)
    last = len(items) - 1
    return bool(items) and all(
        _nul_free(it) or (k == 0 and _edge_ok(it, "AT_BEGINNING")) or (k == last and _edge_ok(it, "AT_END"))
        for k, it in enumerate(items))


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
