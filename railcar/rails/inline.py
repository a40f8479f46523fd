"""The inline hold-back (issue 8): the detector catalog run incrementally over streamed text, no model needed.

A :class:`HoldBack` (compiled once per process from a :class:`railcar.rails.scanner.Scanner`) makes one
:class:`InlineFilter` per streamed text (a choice's content, a tool call's arguments). The filter implements the
:class:`railcar.rails.stream_guard.TextFilter` protocol: ``feed(delta) -> (text_to_release, match_or_None)``,
``flush() -> (text, match_or_None)``, the batch fast path ``pass_through(deltas) -> k``, ``held`` and ``notes``.

How one ``feed`` works (all offsets in characters):

1. ``window = ctx + held + delta``: ``held`` is the unreleased tail, ``ctx`` the last :attr:`HoldBack.context_chars`
   released characters (the one boundary character a pattern may consume before its value, or the keyword context
   ``cohere_api_key = `` of keyword detectors: context, never the value, so it may be released);
2. complete matches: ``Scanner.scan_text(window)``, keeping validated matches (validators reject placeholders such as
   ``AKIAIOSFODNN7EXAMPLE``) that start in the unreleased part and are *settled*: at least one character follows the
   value inside the window, so the pattern's trailing boundary (``\\b``, ``(?:[^A-Za-z0-9_\\-]|$)``) and its greedy
   quantifiers have seen real text and more text cannot change the match. ``block``: the match is reported (the
   guard ends the stream with the blocked-content error chunk; nothing of the value is released). ``redact``: the
   value is replaced by ``[REDACTED:<detector>:<fp8>]`` (:func:`railcar.rails.redaction.placeholder`) and the stream goes on;
3. hold: the earliest position from which the rest of the window is still a non-empty *prefix of a value* of some
   pattern (with that pattern's context before it) is found by a second compiled set: for each catalog pattern
   ``PRE (VALUE) POST``, the pattern ``PRE (P(VALUE))$`` where ``P(VALUE)`` is the prefix language of the value
   regex, derived mechanically from the RE2 syntax tree (``P(ab) = P(a) | a P(b)``, ``P(x{m,n}) = x{0,n-1} P(x)``,
   ``P(a|b) = P(a) | P(b)``, assertions inside the completed part are kept). One RE2 ``Set`` pass over the window
   says whether any tail is open; only then the matching patterns locate the start. Everything before that start
   is released; a candidate longer than its detector's ``max_len`` is dead and released.
4. cap: at most ``max_holdback_chars`` are held. A live *secret* candidate longer than the cap (PEM keys and long
   JWTs can be) fails closed: ``block`` reports it; ``redact`` replaces it with the placeholder and keeps dropping
   text while it can still be part of that value (:attr:`InlineFilter.overflows` counts these).

Work per stream is linear: each ``feed`` scans ``len(ctx) + len(held) + len(delta)`` characters twice, with
``len(ctx)`` and ``len(held)`` bounded (``context_chars``, the cap), and RE2 runs in linear time
(:attr:`InlineFilter.scanned` counts the characters scanned). :meth:`HoldBack.redact_or_block` applies the same
treatment to a whole non-streamed message.
"""

from __future__ import annotations

import logging
import re
import re._constants as _c
import re._parser as _p
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from railcar.core.exchange import RedactionNote
from railcar.rails import detectors as _det
from railcar.rails.masking import fingerprint as _fingerprint
from railcar.rails.masking import mask
from railcar.rails.redaction import note_from_match, placeholder, replace_matches
from railcar.rails.scanner import Match, Scanner, re2_options, scanner_from_config
from railcar.rails.settings import DetectionConfig, GuardrailsConfig

log = logging.getLogger("railcar.rails.inline")

__all__ = ["HoldBack", "InlineFilter", "InlineMatch", "KeyOpening", "key_openings", "cut_key", "prefix_pattern",
           "holdback_from_config"]

ACTIONS = ("block", "redact")


# ------------------------------------------------------------------------------------ prefix-language derivation

def _lit(c: int) -> str:
    ch = chr(c)
    return ch if ch.isascii() and ch.isalnum() else f"\\x{{{c:x}}}"


_CATS = {_c.CATEGORY_DIGIT: r"\d", _c.CATEGORY_NOT_DIGIT: r"\D", _c.CATEGORY_SPACE: r"\s",
         _c.CATEGORY_NOT_SPACE: r"\S", _c.CATEGORY_WORD: r"\w", _c.CATEGORY_NOT_WORD: r"\W"}
_ATS = {_c.AT_BEGINNING: "^", _c.AT_BEGINNING_STRING: r"\A", _c.AT_END: "$", _c.AT_END_STRING: r"\z",
        _c.AT_BOUNDARY: r"\b", _c.AT_NON_BOUNDARY: r"\B"}


def _emit_in(items: list) -> str:
    out, neg = [], False
    for op, av in items:
        if op is _c.NEGATE:
            neg = True
        elif op is _c.LITERAL:
            out.append(_lit(av))
        elif op is _c.RANGE:
            out.append(f"{_lit(av[0])}-{_lit(av[1])}")
        elif op is _c.CATEGORY:
            out.append(_CATS[av])
        else:
            raise ValueError(f"unsupported class item {op}")
    return ("[^" if neg else "[") + "".join(out) + "]"


def _wrap(body: str, flags: int) -> str:
    return f"(?i:{body})" if flags & re.IGNORECASE else f"(?:{body})"


def _emit(seq: Iterable) -> str:
    """RE2 text for a parsed sequence (captures become non-capturing)."""
    out = []
    for op, av in seq:
        if op is _c.LITERAL:
            out.append(_lit(av))
        elif op is _c.NOT_LITERAL:
            out.append(f"[^{_lit(av)}]")
        elif op is _c.ANY:
            out.append(".")
        elif op is _c.IN:
            out.append(_emit_in(av))
        elif op is _c.AT:
            out.append(_ATS[av])
        elif op is _c.SUBPATTERN:
            _, add, _, sub = av
            out.append(_wrap(_emit(sub), add))
        elif op is _c.BRANCH:
            out.append("(?:" + "|".join(_emit(s) for s in av[1]) + ")")
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            lo, hi, sub = av
            out.append(f"(?:{_emit(sub)})" + (f"{{{lo},}}" if hi == _c.MAXREPEAT else f"{{{lo},{hi}}}"))
        else:
            raise ValueError(f"unsupported regex construct {op}")
    return "".join(out)


def _p1_item(op: Any, av: Any) -> str | None:
    """Non-empty prefixes of one item (``None``: the item has none, e.g. an assertion)."""
    if op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN):
        return _emit([(op, av)])
    if op is _c.AT:
        return None
    if op is _c.SUBPATTERN:
        _, add, _, sub = av
        inner = _p1_seq(list(sub))
        return None if inner is None else _wrap(inner, add)
    if op is _c.BRANCH:
        alts = [a for a in (_p1_seq(list(s)) for s in av[1]) if a is not None]
        return "(?:" + "|".join(alts) + ")" if alts else None
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
        lo, hi, sub = av
        if hi == 0:
            return None
        inner = _p1_seq(list(sub))
        if inner is None:
            return None
        full = _emit(sub)
        if hi == _c.MAXREPEAT:
            lead = f"(?:{full})*"
        elif hi > 1:
            lead = f"(?:{full}){{0,{hi - 1}}}"
        else:
            lead = ""
        return f"{lead}(?:{inner})"
    raise ValueError(f"unsupported regex construct {op}")


def _p1_seq(seq: list) -> str | None:
    """Non-empty prefixes of a sequence: ``P(r1) | r1 P(r2) | r1 r2 P(r3) | ...``."""
    alts = []
    for i, (op, av) in enumerate(seq):
        p = _p1_item(op, av)
        if p is not None:
            alts.append(_emit(seq[:i]) + p)
    if not alts:
        return None
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _lazy_end(pattern: str) -> bool:
    """The value regex holds a lazy repeat (``+?``): its match ends at the first terminator that follows."""
    def walk(seq: Iterable) -> bool:
        for op, av in seq:
            if op is _c.MIN_REPEAT:
                return True
            if op is _c.SUBPATTERN and walk(av[3]):
                return True
            if op is _c.BRANCH and any(walk(x) for x in av[1]):
                return True
            if op is _c.MAX_REPEAT and walk(av[2]):
                return True
        return False
    return walk(_p.parse(pattern))


def prefix_pattern(pattern: str) -> tuple[str, int | None]:
    """The hold pattern ``PRE (P(VALUE))$`` of a catalog pattern and the longest ``PRE`` in chars (``None``:
    unbounded).

    ``pattern`` must have its one capture group (the value) at top level, as every catalog pattern does
    (:mod:`railcar.rails.detectors`); the group of the result captures the open value prefix at the end of the text.
    Raises ``ValueError`` for a pattern outside the supported subset (lookarounds, backreferences).
    """
    seq = list(_p.parse(pattern))
    idx = next((i for i, (op, av) in enumerate(seq) if op is _c.SUBPATTERN and av[0] == 1), None)
    if idx is None:
        raise ValueError(f"pattern has no top-level capture group: {pattern!r}")
    pre = seq[:idx]
    value = list(seq[idx][1][3])
    p1 = _p1_seq(value)
    if p1 is None:
        raise ValueError(f"value of pattern can be empty only: {pattern!r}")
    width = _p.SubPattern(_p.State(), pre).getwidth()[1] if pre else 0
    return f"{_emit(pre)}({p1})$", (None if width >= _c.MAXREPEAT else width)


# ------------------------------------------------------------------------------------------------- the filter

@dataclass(frozen=True, slots=True)
class InlineMatch:
    """A match the hold-back acted on: the scanner's :class:`Match` (``start``/``end`` are offsets in the whole
    stream's input text), ``rail`` the rail name shown in the blocked-content error chunk, ``overflow`` true when a
    live candidate outgrew ``max_holdback_chars`` (the value was not seen whole)."""

    match: Match
    rail: str = "sensitive data"
    overflow: bool = False

    @property
    def detector(self) -> str:
        """The matched detector's id (``aws_access_key_id``)."""
        return self.match.detector


_KEY_BODY = re.compile(r"[A-Za-z0-9+/=]{32,}")  # a key body line: the detector's own minimum (detectors.pem_ok)
# A detector whose values are too long to wait for (PEM keys), its opening (the BEGIN line) and its full patterns.
KeyOpening = tuple[_det.Detector, re.Pattern[str], list[re.Pattern[str]]]


def key_openings(detectors: Iterable[_det.Detector]) -> list[KeyOpening]:
    """The compiled :data:`KeyOpening` of each of ``detectors`` that has an ``opening``
    (:attr:`railcar.rails.detectors.Detector.opening`), in order."""
    return [(d, re.compile(d.opening), [re.compile(p) for p in d.patterns]) for d in detectors if d.opening]


def cut_key(openings: list[KeyOpening], text: str, start: int = 0,
            body: bool = True) -> tuple[int, _det.Detector] | None:
    """The first value of ``openings`` that opens at or after ``start`` in ``text`` and that no full pattern
    completes from there (a PEM private key cut before its END line): ``(where it opens, detector)``, else
    ``None``. ``body``: only with a key body after the opening (32+ base64 characters), so an opening followed by
    prose is not a key; without it a bare opening counts (a text known to be cut short). Shared by the stream
    hold-back (:meth:`HoldBack.cut_key`) and the trace redaction (:class:`railcar.streams.withheld.Withheld`)."""
    for det, rx, fulls in openings:
        for m in rx.finditer(text, start):
            if any(f.match(text, m.start()) for f in fulls):
                continue  # a whole value (the validator decided about it)
            if not body or _KEY_BODY.search(text, m.end()):
                return m.start(), det
    return None


_HOLD_MEM = 256 << 20  # per hold-back pattern and for the prefix Set
_GATE_MEM = 768 << 20  # the combined gate: at least what its two halves had


class HoldBack:
    """The compiled hold-back for one detector selection. Thread-safe; build one per process.

    ``scanner``: the :class:`Scanner` with the detectors applied inline (``[guardrails.inline] kinds``);
    ``action``: ``"block"`` or ``"redact"``; ``max_holdback_chars``: cap on held characters (>= 0).
    Raises ``ValueError`` naming ``guardrails.inline.action`` / ``guardrails.inline.max_holdback_chars`` for bad
    values, or a catalog pattern the prefix derivation does not support.
    """

    def __init__(self, scanner: Scanner, action: str = "block", max_holdback_chars: int = 512) -> None:
        if action not in ACTIONS:
            raise ValueError(f"guardrails.inline.action: must be one of {ACTIONS}, got {action!r}")
        if max_holdback_chars < 0:
            raise ValueError("guardrails.inline.max_holdback_chars: must be >= 0")
        self.scanner = scanner
        self.action = action
        self.max_holdback_chars = max_holdback_chars
        self._set = re2.Set.SearchSet(re2_options(_HOLD_MEM))
        # Per catalog pattern: (detector, hold regex, longest context before the value, full regex, lazy end).
        self._holds: list[tuple[_det.Detector, Any, int, Any, bool]] = []
        self._lazy: set[str] = set()
        widths: list[int] = []
        hold_texts: list[str] = []
        for d in scanner.detectors:
            for pat in d.patterns:
                text, width = prefix_pattern(pat)
                hold_texts.append(text)
                back = width if width is not None else 64
                widths.append(back)
                lazy = _lazy_end(pat)
                if lazy:
                    self._lazy.add(d.id)
                self._set.Add(text)
                self._holds.append((d, re2.compile(text, re2_options(_HOLD_MEM)), back,
                                    re2.compile(pat, re2_options(_HOLD_MEM)), lazy))
        self._set.Compile()
        # The clean-delta gate of InlineFilter.pass_through: every scanner pattern and every hold pattern in one Set,
        # so one DFA pass answers both questions _step asks (a complete match? an open tail?) for a delta.
        gate = re2.Set.SearchSet(re2_options(_GATE_MEM))
        for d in scanner.detectors:
            for pat in d.patterns:
                gate.Add(pat)
        for text in hold_texts:
            gate.Add(text)
        gate.Compile()
        self._gate = gate._set.Match  # the C-level call on UTF-8 bytes (the wrapper only encodes str first)
        # Released text kept visible to later scans: the longest pattern context (+1 for a JSON escape).
        self.context_chars = max(widths, default=0) + 1
        # A candidate can never be longer than its detector's longest value.
        self._limit = {d.id: (d.max_len or _det.PEM_MAX_LEN) for d in scanner.detectors}
        self.longest = max(self._limit.values(), default=0)
        self._by_id = {d.id: d for d in scanner.detectors}
        # secrets too long to wait for (PEM keys) whose opening alone says what follows: see cut_key()
        self._openings = key_openings(d for d in scanner.detectors if d.kind == "secret")

    def filter(self) -> InlineFilter:
        """A fresh :class:`InlineFilter` for one text stream."""
        return InlineFilter(self)

    __call__ = filter  # usable as ``RailsGuard(filter_factory=holdback)``

    # -- whole messages -------------------------------------------------------------------------------------
    def redact_or_block(self, text: str, path: str = "$",
                        action: str | None = None) -> tuple[str, InlineMatch | None, list[RedactionNote]]:
        """The non-streaming treatment of a whole message ``text`` (``action``: ``block`` | ``redact`` instead of
        :attr:`action`, e.g. ``[guardrails.inline] request_action`` for what the agent sends).

        Returns ``(text_out, match, notes)``: ``block`` with a match: ``("", InlineMatch, [])``; ``redact``: the
        text with every value replaced by its placeholder and one :class:`RedactionNote` per placeholder; no
        match: ``(text, None, [])`` (the same object)."""
        matches = self.scanner.scan_text(text, path)
        if not matches:
            return text, None, []
        if (action or self.action) == "block":
            return "", InlineMatch(matches[0]), []
        return replace_matches(text, matches), None, [note_from_match(m) for m in matches]

    # -- internals used by InlineFilter -------------------------------------------------------------------
    def hold_start(self, w: str, off: int) -> tuple[int, _det.Detector | None]:
        """Earliest index >= ``off`` of ``w`` from which ``w``'s tail is still an open value prefix (``len(w)``:
        none) and the detector of that candidate."""
        hits = self._set.Match(w)
        best, who = len(w), None
        if not hits:
            return best, who
        n = len(w)
        for i in hits:
            det, rx, back, full, lazy = self._holds[i]
            pos = max(0, off - back)
            for _ in range(6):  # bounded retries: skip candidates that are released, too long or complete
                m = rx.search(w, pos)
                if m is None:
                    break
                s = m.start(1)
                if s >= off and n - s <= self._limit[det.id] and not (lazy and self._complete(full, w, s, back)):
                    if s < best:
                        best, who = s, det
                    break
                pos = m.start() + 1
        return best, who

    @staticmethod
    def _complete(full: Any, w: str, s: int, back: int) -> bool:
        # A lazy value (PEM: body +? then the END line) is over at its first terminator, valid or not.
        m = full.search(w, max(0, s - back))
        while m is not None and m.start(1) < s:
            m = full.search(w, m.start() + 1)
        return m is not None and m.start(1) == s

    def cut_key(self, text: str, start: int = 0) -> tuple[int, _det.Detector] | None:
        """A key that opened at or after ``start`` in ``text`` and never completed, with a key body after its
        opening (32+ base64 characters: a PEM private key cut before its END line): ``(where it opens, detector)``,
        else ``None`` (:func:`cut_key` over the secret detectors). A stream that ends on one fails closed rather than
        releasing key material; an opening followed by prose has no key body and is released."""
        return cut_key(self._openings, text, start)

    def settled(self, detector_id: str, tail: str) -> bool:
        """A match of ``detector_id`` whose value starts ``tail`` can no longer change with more text."""
        det = self._by_id[detector_id]
        return det.id in self._lazy or not self.still_open(det, tail)

    def still_open(self, det: _det.Detector, text: str) -> bool:
        """``text`` (starting at a candidate's first character) is still a prefix of a ``det`` value."""
        for d, rx, _, _, _ in self._holds:
            if d is det:
                m = rx.search(text)
                if m is not None and m.start(1) == 0:
                    return True
        return False

    def completion(self, det: _det.Detector, text: str) -> int | None:
        """End offset of a ``det`` match whose value starts ``text`` (valid or not), or ``None``."""
        for d, _, _, full, _ in self._holds:
            if d is det:
                m = full.search(text)
                if m is not None and m.start(1) == 0:
                    return m.end(1)
        return None


class InlineFilter:
    """The incremental hold-back over one text stream (a :class:`railcar.rails.stream_guard.TextFilter`).

    ``feed(delta)`` returns ``(text_to_release, match)``; after a match in ``block`` mode the filter is spent
    (``blocked`` true, further calls release nothing). ``flush()`` releases the held tail at the end of the
    stream (scanning it once more, so a value ending the stream is caught). Attributes: ``notes`` (one
    :class:`RedactionNote` per placeholder written), ``scanned`` (characters scanned so far: the linear-work
    counter), ``max_held`` (most characters held at once), ``overflows``.
    """

    def __init__(self, hb: HoldBack) -> None:
        self.hb = hb
        self.ctx = ""       # released output tail (context for the next scans)
        self.held = ""      # input text not released yet
        self.consumed = 0   # input chars before ``held`` (for match offsets)
        self.blocked = False
        self.notes: list[RedactionNote] = []
        self.scanned = 0
        self.max_held = 0
        self.overflows = 0
        # After an overflow in redact mode: (detector, head, tail, fingerprint) of the candidate being dropped.
        self._suppress: tuple[_det.Detector, str, str, str] | None = None

    # -- public -----------------------------------------------------------------------------------------------
    def feed(self, text: str) -> tuple[str, InlineMatch | None]:
        """Take one delta; return what may be released now and the match that ended the stream, if any."""
        if self.blocked or not text:
            return "", None
        if self._suppress is not None:
            text = self._drop_suppressed(text, self._suppress)
            if not text:
                return "", None
        return self._step(text, final=False)

    def pass_through(self, deltas: list[str]) -> int:
        """Batch fast path: release the leading ``deltas`` that :meth:`feed` would release whole and unchanged.

        Returns ``k``: ``deltas[:k]`` were consumed exactly as ``k`` calls of :meth:`feed` would have (each returning
        ``(delta, None)``); the caller then feeds ``deltas[k:]`` one by one. ``k`` is 0 while a tail is held, after
        a block or during an overflow suppression. Per delta this is one RE2 ``Set`` pass over the same window
        ``_step`` scans (``ctx + delta``) with the scanner's patterns and the hold patterns together: no hit means
        no complete match and no open value prefix, which is exactly when ``_step`` releases the delta whole.
        Deltas must be non-empty ``str``."""
        if self.blocked or self.held or self._suppress is not None:
            return 0
        gate = self.hb._gate
        cc = self.hb.context_chars
        ctx = self.ctx
        k = chars = scanned = 0
        for d in deltas:
            w = ctx + d
            try:
                if gate(w.encode()):
                    break
            except UnicodeEncodeError:  # lone surrogates: let feed() handle (and fail) it the usual way
                break
            ctx = w[-cc:]
            k += 1
            chars += len(d)
            scanned += 2 * len(w)  # _step scans the window twice (complete matches, open tails)
        if k:
            self.ctx = ctx
            self.consumed += chars
            self.scanned += scanned
        return k

    def flush(self) -> tuple[str, InlineMatch | None]:
        """End of the stream: judge and release whatever is held."""
        if self.blocked:
            return "", None
        self._suppress = None
        if not self.held:
            return "", None
        return self._step("", final=True)

    # -- internals --------------------------------------------------------------------------------------------
    def _match(self, m: Match, off: int, overflow: bool = False) -> InlineMatch:
        base = self.consumed - off
        moved = Match(m.detector, m.kind, m.confidence, m.severity, m.path, m.start + base, m.end + base,
                      m.fingerprint, m.preview)
        return InlineMatch(moved, overflow=overflow)

    def _step(self, delta: str, final: bool) -> tuple[str, InlineMatch | None]:
        hb = self.hb
        ctx = self.ctx
        off = len(ctx)
        window = ctx + self.held + delta
        n = len(window)
        self.scanned += n
        out: list[str] = []
        pos = off
        open_at = -1  # earliest start of a still-open candidate, looked up at the first complete match
        for m in hb.scanner.scan_text(window):
            if m.start < off:
                continue  # in released context (judged already)
            if not final and not hb.settled(m.detector, window[m.start:]):
                continue  # not settled: more text could extend the value (".co" -> ".co.uk") or void it
            if not final:
                if open_at < 0:
                    self.scanned += n
                    open_at = hb.hold_start(window, pos)[0]
                if open_at <= m.start:
                    # a longer candidate that starts first is still open (an IBAN around a card-like digit run):
                    # the whole-text scan would report it instead, so hold both until it settles
                    break
            if hb.action == "block":
                self.blocked = True
                self.held = ""
                return "", self._match(m, off)
            out.append(window[pos:m.start])
            out.append(placeholder(m.detector, m.fingerprint))
            self.notes.append(note_from_match(self._match(m, off).match))
            pos = m.end
        if final and (cut_key := hb.cut_key(window, max(pos, off))) is not None:
            at, key_det = cut_key
            over = self._overflow(key_det, window[at:], off, window, at, "cut short at the end of the stream")
            if over is not None:
                return "", over
            out.append(window[pos:at] + placeholder(key_det.id, self._suppress[3] if self._suppress else ""))
            self._suppress = None
            pos = n
        if final:
            out.append(window[pos:])
            self.consumed += n - off
            self.held = ""
            return self._release("".join(out)), None
        # What of the rest may still open a value? Scan it with the released output before it as context.
        head = "".join(out)
        prefix = (ctx + head)[-hb.context_chars:] if (head or ctx) else ""
        rest = window[pos:]
        w = prefix + rest
        self.scanned += len(w)
        start, det = hb.hold_start(w, len(prefix))
        cut = start - len(prefix)
        release, held = rest[:cut], rest[cut:]
        if len(held) > hb.max_holdback_chars:
            over = self._overflow(det, held, off, window, pos + cut)
            if over is not None:
                return "", over
            if self._suppress is not None:
                release += placeholder(self._suppress[0].id, self._suppress[3])
                held = ""
            else:
                keep = len(held) - hb.max_holdback_chars
                release, held = release + held[:keep], held[keep:]
        self.consumed += (n - off) - len(held)
        self.held = held
        self.max_held = max(self.max_held, len(held))
        return self._release(head + release), None

    def _release(self, text: str) -> str:
        if text:
            self.ctx = (self.ctx + text)[-self.hb.context_chars:]
        return text

    def _overflow(self, det: _det.Detector | None, held: str, off: int, window: str, at: int,
                  why: str = "longer than max_holdback_chars") -> InlineMatch | None:
        """A live candidate outgrew the cap (or was cut short: ``why``). Secrets fail closed (block, or placeholder
        + suppression)."""
        if det is None or det.kind != "secret":
            return None
        self.overflows += 1
        fp = _fingerprint(self.hb.scanner.key, det.id, held)
        m = Match(det.id, det.kind, det.confidence, det.severity, "$", at, at + len(held), fp,
                  mask(det.id, held))
        log.warning("inline hold-back: %s candidate %s (max_holdback_chars=%d, %s); failing closed",
                    det.id, why, self.hb.max_holdback_chars, m.preview)
        if self.hb.action == "block":
            self.blocked = True
            self.held = ""
            return self._match(m, off, overflow=True)
        self._suppress = (det, held[:128], held[128:][-64:], fp)
        self.notes.append(note_from_match(self._match(m, off, overflow=True).match))
        return None

    def _drop_suppressed(self, text: str, suppress: tuple[_det.Detector, str, str, str]) -> str:
        """Redact mode after an overflow: drop the part of ``text`` that still belongs to the candidate (up to its
        terminator when it completes, else as long as it can still continue). The candidate is represented by its
        first and last characters seen (``head + tail``), enough for repeat-bodied values such as PEM."""
        det, head, tail, fp = suppress
        base = head + tail
        self.scanned += len(base) + len(text)
        end = self.hb.completion(det, base + text)
        if end is not None:
            cut = max(0, end - len(base))
        elif self.hb.still_open(det, base + text):
            self.consumed += len(text)
            self._suppress = (det, head, (tail + text)[-64:], fp)
            return ""
        else:
            lo, hi = 0, len(text)  # prefix-closed: binary search the longest continuation
            while lo < hi:
                mid = (lo + hi + 1) // 2
                self.scanned += len(base) + mid
                if self.hb.still_open(det, base + text[:mid]):
                    lo = mid
                else:
                    hi = mid - 1
            cut = lo
        self._suppress = None
        self.consumed += cut
        return text[cut:]


def holdback_from_config(guardrails: GuardrailsConfig, detection: DetectionConfig,
                         environ: Mapping[str, str] | None = None) -> HoldBack | None:
    """The :class:`HoldBack` for ``[guardrails.inline]`` + ``[detection]``, or ``None`` when it is off (``environ``:
    where the fingerprint key variable is read, default ``os.environ``).

    Detectors: ``guardrails.inline.kinds`` minus ``detection.disabled_detectors``; fingerprints use the
    ``[detection]`` key (so placeholders match the consumer's fingerprints). Raises ``ValueError`` naming the
    field for bad values."""
    if not guardrails.inline_enabled:
        return None
    scanner = scanner_from_config(detection, environ, kinds=guardrails.inline.kinds)
    return HoldBack(scanner, guardrails.inline.action, guardrails.inline.max_holdback_chars)
