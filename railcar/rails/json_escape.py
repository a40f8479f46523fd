"""JSON string escapes (RFC 8259 section 7): what text spells once an agent's ``json.loads`` has undone them.

A model can write a catalog value with escapes (``\\u0041KIA...`` in tool arguments, in a structured answer, in JSON
text inside JSON text); the agent's ``json.loads`` turns it back into the value. Every matcher of the rails therefore
looks at the decoded text, and every change it makes (a placeholder) is mapped back onto the text as it was spelled,
so the escapes outside the changed parts are kept. The one home of that concept, used by the stream guards
(:mod:`railcar.rails.stream_guard`, :mod:`railcar.rails.codec_stream`), the whole-answer and request policy
(:mod:`railcar.rails.codec_guard`) and the trace redaction (:func:`railcar.rails.redaction.redact_escaped`):

- :func:`unescape`: one level decoded, optionally with the offset of each decoded character in the spelled text;
- :class:`Unescaper`: the same over the deltas of one streamed value (an escape cut at a delta's end waits);
- :func:`rewrite`: a change made to the decoded text, applied to the spelled text;
- :func:`decodings` / :func:`through_escapes`: nested JSON text (arguments holding JSON holding escapes), decoded
  level by level, a change at every level mapped back to the top.

Pure functions over ``str``; no I/O, no state beyond :class:`Unescaper`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import orjson

__all__ = ["DEPTH", "Unescaper", "unescape", "rewrite", "decodings", "through_escapes"]

DEPTH = 3  # JSON text inside JSON text inside ...: how many levels of escapes are undone
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")
# The whole-text decode (:func:`_decode_all`): one-character escapes by str.replace (C speed, no call per escape),
# ``\\\\`` first through a sentinel character; then \uXXXX escapes (a surrogate pair, or one code unit).
_REPLACES = [("\\" + c, t) for c, t in _SIMPLE.items() if c != "\\"]
_UNICODE = re.compile(r"\\u(?:([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|([0-9a-fA-F]{4}))")
_SENTINEL = "\x00"


def _code_unit(m: re.Match[str]) -> str:
    hi, lo, cp = m.groups()
    if hi:
        return chr(0x10000 + ((int(hi, 16) - 0xD800) << 10) + (int(lo, 16) - 0xDC00))
    v = int(cp, 16)
    return "\ufffd" if 0xD800 <= v < 0xE000 else chr(v)


def _decode_all(s: str) -> str | None:
    """:func:`unescape` of a final ``s`` without offsets, the fast way; ``None`` when ``s`` holds the sentinel
    (then the loop decodes it)."""
    if _SENTINEL in s:
        return None
    out = s.replace("\\\\", _SENTINEL)
    for esc, text in _REPLACES:
        if esc in out:
            out = out.replace(esc, text)
    if "\\u" in out:
        out = _UNICODE.sub(_code_unit, out)
    return out.replace(_SENTINEL, "\\")


def _hex4(s: str, at: int) -> int | None:
    h = s[at:at + 4]
    return int(h, 16) if len(h) == 4 and all(c in _HEX for c in h) else None


def _partial_escape(rest: str) -> bool:
    """``rest`` (starting with a backslash) may still become an escape with more text."""
    if len(rest) == 1:
        return True
    if rest[1] != "u":
        return False
    tail = rest[2:]
    if len(tail) < 4:
        return all(c in _HEX for c in tail)
    cp = _hex4(rest, 2)
    if cp is None or not 0xD800 <= cp < 0xDC00:
        return False
    low = rest[6:]  # a high surrogate waits for its low half ("\\uDC00")
    return len(low) < 6 and "\\u".startswith(low[:2]) and all(c in _HEX for c in low[2:])


def _escape_at(s: str, j: int) -> tuple[str, int]:
    """The escape at ``s[j]`` (a backslash, with a complete escape after it or ``s`` final): ``(text, length)``.
    Unknown escapes stay literal; a lone surrogate becomes U+FFFD (it could never reach a matcher as UTF-8)."""
    c = s[j + 1] if j + 1 < len(s) else ""
    if c in _SIMPLE and c:
        return _SIMPLE[c], 2
    cp = _hex4(s, j + 2) if c == "u" else None
    if cp is None:
        return "\\", 1
    if 0xD800 <= cp < 0xDC00 and s[j + 6:j + 8] == "\\u":
        lo = _hex4(s, j + 8)
        if lo is not None and 0xDC00 <= lo < 0xE000:
            return chr(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)), 12
    if 0xD800 <= cp < 0xE000:
        return "\ufffd", 6
    return chr(cp), 6


def unescape(s: str, final: bool = True, offsets: list[int] | None = None) -> tuple[str, str]:
    """JSON-string escapes of ``s`` decoded (``\\"`` ``\\\\`` ``\\/`` ``\\b`` ``\\f`` ``\\n`` ``\\r`` ``\\t``
    ``\\uXXXX``, surrogate pairs joined, a lone surrogate as U+FFFD); other text, unknown escapes included, is kept as
    is. Never raises.

    Returns ``(text, rest)``: ``rest`` is an escape cut at the end of ``s`` (``"\\u00"``), kept for the next delta
    when not ``final`` (``""`` otherwise). With ``offsets`` (a list) and ``final``, the index in ``s`` of each
    character of ``text`` is appended to it, then ``len(s)`` (:func:`rewrite` maps positions back with it)."""
    if offsets is None and final:
        if "\\" not in s:
            return s, ""
        fast = _decode_all(s)
        if fast is not None:
            return fast, ""
    out: list[str] = []
    i, n = 0, len(s)
    while True:
        j = s.find("\\", i)
        if j < 0:
            j = n
        if offsets is not None:
            offsets.extend(range(i, j))
        out.append(s[i:j])
        if j >= n:
            break
        if not final and _partial_escape(s[j:]):
            return "".join(out), s[j:]
        text, size = _escape_at(s, j)
        if offsets is not None:
            offsets.extend([j] * len(text))
        out.append(text)
        i = j + size
    if offsets is not None:
        offsets.append(n)
    return "".join(out), ""


class Unescaper:
    """Incremental :func:`unescape` over the deltas of one value: ``feed(delta) -> text``; ``pending`` is an escape
    cut at the last delta's end (``""`` when none), ``flush()`` returns it as literal text at the end. A delta
    without a backslash, with nothing pending, is returned as is (no copy)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = ""

    def feed(self, delta: str) -> str:
        """The decoded text of ``delta`` (with what was pending before it)."""
        if not self.pending and "\\" not in delta:
            return delta
        text, self.pending = unescape(self.pending + delta, final=False)
        return text

    def flush(self) -> str:
        """The end of the value: what is pending, decoded as a final string."""
        rest, self.pending = self.pending, ""
        return unescape(rest)[0] if rest else ""


def _spell(text: str) -> str:
    """``text`` JSON-string-escaped (the inside of its JSON string literal, non-ASCII kept)."""
    try:
        return orjson.dumps(text).decode()[1:-1]
    except TypeError:  # a lone surrogate, which orjson refuses: json writes it as \\udXXX
        return json.dumps(text)[1:-1]


def rewrite(orig: str, decoded: str, released: str) -> str:
    """``orig`` (the text as spelled) with the change a filter made to ``decoded`` (its :func:`unescape`, giving
    ``released``) applied, the escapes outside the changed part kept: ``released`` when ``orig`` has no escape.

    The changed part runs from the first to the last character where ``decoded`` and ``released`` differ (common
    prefix and suffix trimmed: linear time, whatever the length); it is inserted JSON-string-escaped, so the
    result decodes to ``released`` exactly. ``released`` itself when ``decoded`` is not the decoding of ``orig``
    (a caller's mistake: the released text is all there is)."""
    if orig == decoded:
        return released
    offsets: list[int] = []
    dec, _ = unescape(orig, True, offsets)
    if dec != decoded:
        return released
    n, m = len(decoded), len(released)
    p = 0
    limit = min(n, m)
    while p < limit and decoded[p] == released[p]:
        p += 1
    s = 0
    while s < limit - p and decoded[n - 1 - s] == released[m - 1 - s]:
        s += 1
    if p == n and p == m:
        return orig
    return orig[:offsets[p]] + _spell(released[p:m - s]) + orig[offsets[n - s]:]


def decodings(text: str, depth: int = DEPTH) -> list[str]:
    """``text`` and its successive :func:`unescape` decodings, ``[text, level 1, level 2, ...]``: the next level is
    taken while the last one still has a backslash and decoding changes it, at most ``depth`` levels (arguments that
    hold JSON text that holds escapes: ``\\\\u0041`` is ``A`` two levels down). ``[text]`` without a backslash."""
    out = [text]
    while len(out) <= depth and "\\" in out[-1]:
        nxt = unescape(out[-1])[0]
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


def through_escapes(text: str, change: Callable[[str], str | None], depth: int = DEPTH,
                    top: bool = True) -> str | None:
    """``change`` (a treatment of one text: the text, or it with parts replaced; ``None`` to stop) applied to every
    level of :func:`decodings` of ``text``, deepest first, each level's result mapped back onto the level above with
    :func:`rewrite` before that level is treated in turn (so a value spelled at any level is seen, and placeholders
    written below are kept above); ``top=False``: not ``text`` itself (the caller treated it already). Returns the
    treated ``text``, ``text`` itself (the same object) when no level changed, or ``None`` as soon as ``change``
    returned ``None``."""
    levels = decodings(text, depth)
    if len(levels) == 1 and not top:
        return text
    out = change(levels[-1])
    for i in range(len(levels) - 2, -1, -1):
        if out is None:
            return None
        below = levels[i + 1]
        out = levels[i] if out == below else rewrite(levels[i], below, out)
        if i or top:
            out = change(out)
    return out
