"""The streaming output policy over any codec: hold-back, chunked output rails and tool-call holds for one stream.

:class:`CodecStreamGuard` implements :class:`railcar.core.guard.StreamGuard` for every wire API that has a codec
(:mod:`railcar.codecs`): the rails' ordering is written here once, the codec only says what an event carries.
Chat Completions keep their tuned path (:class:`railcar.rails.stream_guard.RailsStreamGuard`); the semantics are
the same.

Per upstream event (``(raw, data)``, byte-exact; :data:`railcar.core.guard.SSEEvent`):

- ``data`` is parsed with orjson. A payload that does not parse (and is not ``codec.terminal_data``) is not relayed
  as if checked: the stream ends with ``codec.error_frame`` (a fixed message, no content), ``abort()`` is called and
  ``stopped`` turns true (fail closed: issue 13 item 2). An event without ``data`` (comment, ``event:`` only) and an
  empty payload carry no content and are relayed in order.
- Every string of the event (``codec.stream_strings``: path, ``stream_key``, kind) is watched, so a field a
  provider adds tomorrow is covered. Deltas of one output value share a ``stream_key``: one
  :class:`railcar.rails.stream_guard.TextFilter` (the inline hold-back, ``rails.filter_factory``) per key sees them
  concatenated; a whole value (key ``None``) gets a fresh filter of its own (fed, then flushed). Text of every
  kind (answer text, reasoning, tool arguments) is passed through an incremental JSON-string unescape first
  (:class:`railcar.rails.json_escape.Unescaper`: ``\\u0041KIA...`` split across deltas is ``AKIA...`` to the
  filter, an escape cut at a delta's end waits for the next delta), because the agent's ``json.loads`` of the
  arguments (or of a structured answer) undoes the escapes.
- Hold-back: while any filter holds a possible match open, frames are held *whole*, in order; when nothing is held
  they go out as they came (clean traffic stays byte-exact, ``event:`` lines included). In ``redact`` mode a held
  frame whose text the filter changed is rewritten at the strings' paths (:func:`railcar.codecs.base.set_at`; the
  released text of a key goes to the last held string of that key, the others become ``""``) and re-serialized with
  its other lines (``event:``, ``id:``) kept. A match in ``block`` mode sends ``codec.blocked_frames(rail, state)``,
  calls ``abort()`` and sets ``stopped``.
- Output rails (``rails.enabled("output")``): the released answer text (kinds ``text``, ``reasoning``, ``refusal``)
  goes through one :class:`railcar.rails.chunker.RollingChunker` (``chunk_size`` / ``context_size``, counted in
  deltas, context carried over); with ``stream_first`` a frame goes out at once and its chunk is checked right after
  (at most one check in flight, :func:`railcar.core.eager.spawn`), without it the frame waits until its chunk
  passed. The last chunk is checked when the stream ends (``codec.is_terminal`` event, ``terminal_data``, or
  :meth:`CodecStreamGuard.on_end`), before the terminal event goes out.
- Tool calls: the frames carrying a call's argument deltas (pieces whose key is a call in ``codec``'s
  :class:`railcar.codecs.base.StreamState`), and the frame that completes it, wait until ``codec.tool_calls_done``
  reports the call complete and its arguments passed the ``tool_input`` rails (when enabled); its filter is flushed
  then. ``codec.flush_tool_calls`` completes what the stream left open.
- Frames are always sent in upstream order (a frame waits behind any earlier held one).

Fast path (same frames, same checks; tests/rails/test_codec_fast_path.py compares it with the general path): the
codec's plain text deltas (:meth:`railcar.codecs.base.Codec.text_delta`) of one read whose other strings are whole
values that passed are gathered into runs; the leading deltas of a run that the stream's filter releases whole go
through one ``TextFilter.pass_through`` call and out as their original bytes (chunker fed per delta), the next one
through the general path. Once a stream's frame template is known (:func:`_template`: the bytes around the delta's
string token and the codec's ``counter_field``), such an event costs one short parse.

At the end the filters' redaction notes go to ``exchange.outcome.redactions`` with the JSON path of the value
(``$.delta`` for Responses deltas, ``$.delta.text`` for Anthropic's, ``$.response.output[0].content[0].text`` for a
whole value).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from railcar.codecs.base import Codec, Piece, ToolCall, set_at, walk_strings
from railcar.core import eager, strict_json
from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import SSEEvent, StreamSink
from railcar.core.jsonpath import Parts, json_path
from railcar.core.wire import sse_frame
from railcar.rails import metrics
from railcar.rails.chunker import ChunkBatch, RollingChunker
from railcar.rails.json_escape import Unescaper, rewrite, unescape
from railcar.rails.text_filter import (
    FilterMatch,
    IdentityFilter,
    StreamRails,
    TextFilter,
    end_stream,
    match_rail,
    withheld_note,
)

log = logging.getLogger("railcar.rails")

__all__ = ["CodecStreamGuard", "INVALID_EVENT_MESSAGE"]

INVALID_EVENT_MESSAGE = "The upstream sent a stream event that is not valid JSON; the guard stopped the stream."
_ANSWER_KINDS = frozenset({"text", "reasoning", "refusal"})
_CLEAN_CACHE = 4096  # whole values that passed (ids, types, model names repeat on every event)
# Long whole values that passed, in characters per stream: a Responses answer repeats its whole text in
# ``output_text.done``, ``content_part.done``, ``output_item.done`` and ``response.completed`` (judged once).
_CLEAN_LONG_CHARS = 1 << 18


# --------------------------------------------------------------------------------------------------- the guard

class _Stream:
    """One output value streamed as deltas (one ``stream_key``): its filter, unescaper and kind; ``parts`` the path
    of its first delta (for redaction notes)."""

    __slots__ = ("filter", "unesc", "kind", "parts")

    def __init__(self, f: TextFilter, kind: str, parts: Parts) -> None:
        self.filter, self.unesc, self.kind, self.parts = f, Unescaper(), kind, parts

    @property
    def holding(self) -> bool:
        return bool(self.filter.held) or bool(self.unesc.pending)


# A plain text delta of on_events' fast path: (raw, text, stream key, kind, path of the text, parsed event or None
# for a template hit, data, the event's counter value (template hit) or None).
_RunItem = tuple[bytes, str, Any, str, Parts, Any, bytes, int | None]
# A per-stream frame template (see _template): (bytes before the delta's string token, bytes between it and the
# counter's digits (or up to the end when there is no counter), bytes after the digits, stream key, kind, path of
# the text, whether there is a counter).
_Template = tuple[bytes, bytes, bytes, Any, str, Parts, bool]
_MARK = 987654321  # the counter value a template is verified with
_TEMPLATE_TRIES = 8  # templates derived per stream at most (a stream whose bytes vary around the delta stops trying)


def _token_at(data: bytes, name: str) -> tuple[int, int] | None:
    """Start and end (exclusive) of the string token that is the value of the last ``"name":`` in ``data``."""
    at = data.rfind(b'"' + name.encode() + b'"')
    if at < 0:
        return None
    i, n = at + len(name) + 2, len(data)
    while i < n and data[i] in b" \t\r\n:":
        i += 1
    if i >= n or data[i] != 0x22:  # '"'
        return None
    j = data.find(b'"', i + 1)
    if j < 0 or data.find(b"\\", i, j) >= 0:  # an escaped token: no template
        return None
    return i, j + 1


def _template(data: bytes, obj: dict[str, Any], key: Any, kind: str, parts: Parts,
              counter: str | None) -> _Template | None:
    """The bytes around the delta's string token (and the ``counter``'s digits) of a plain text delta event
    ``data`` (parsed: ``obj``), or ``None``.

    A payload ``prefix + T + mid + D + suffix`` where ``T`` is a JSON string token and ``D`` a non-negative JSON
    integer is then the same event as ``obj`` with the text ``loads(T)`` at ``parts`` and ``counter = int(D)``: the
    template is accepted only if ``prefix + <a marker string> + mid + <a marker int> + suffix`` parses to ``obj`` with exactly those
    two values changed (whatever duplicate keys or spacing the upstream uses), and JSON being context-free any other
    tokens of those types there give the same structure. Providers send the same bytes around every delta (item
    ids, indexes, ``logprobs: []``), so such an event then costs one short parse instead of the codec's walk."""
    tok = _token_at(data, str(parts[-1]))
    if tok is None:
        return None
    pre, mid, suf = data[:tok[0]], data[tok[1]:], b""
    seq = obj.get(counter) if counter is not None else None
    has = type(seq) is int and seq >= 0
    if has:
        digits = str(seq).encode()
        at = mid.rfind(b'"' + str(counter).encode() + b'":' + digits)
        cut = at + len(counter or "") + 3
        if at < 0 or mid[cut + len(digits):cut + len(digits) + 1] in (b"0", b"1", b"2", b"3", b"4", b"5", b"6",
                                                                        b"7", b"8", b"9", b".", b"e", b"E"):
            return None
        mid, suf = mid[:cut], mid[cut + len(digits):]
    try:
        test = orjson.loads(pre + b'"\\u0001"' + mid + (str(_MARK).encode() if has else b"") + suf)
        want = strict_json.loads(data)
        set_at(want, parts, "\x01")
        if has:
            want[counter] = _MARK
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    if test != want:
        return None
    return pre, mid, suf, key, kind, parts, has


def _hit(tpl: _Template, data: bytes) -> tuple[str, int | None] | None:
    """``(text, counter)`` of payload ``data`` when it is template ``tpl``'s event with another non-empty text
    (a token without escapes) and counter, else ``None``."""
    pre, mid, suf = tpl[0], tpl[1], tpl[2]
    if not data.startswith(pre) or not data.endswith(suf):
        return None
    n = len(pre)
    j = data.find(b'"', n + 1)
    end = len(data) - len(suf)
    if j < 0 or j >= end or j == n + 1 or data.find(b"\\", n, j) >= 0:
        return None
    rest = data[j + 1:end]
    seq = None
    if tpl[6]:
        digits = rest[len(mid):]
        if not rest.startswith(mid) or not digits.isdigit() or (digits[:1] == b"0" and len(digits) > 1):
            return None
        seq = int(digits)
    elif rest != mid:
        return None
    try:
        text = orjson.loads(data[n:j + 1])
    except orjson.JSONDecodeError:  # (a raw control character, bad UTF-8: the general path fails closed)
        return None
    return text, seq
# (stream key, path of the string or None for text released by a flush, string as sent, decoded, released)
_Seg = tuple[Any, Parts | None, str, str, str]


class _Frame:
    """One upstream event on its way out: ``raw`` bytes, parsed ``obj`` (``None``: nothing to rewrite), the delta
    segments it carried, whether a whole value in it was rewritten, its gates."""

    __slots__ = ("raw", "obj", "segs", "edited", "seq", "tools")

    def __init__(self, raw: bytes, obj: Any = None) -> None:
        self.raw, self.obj = raw, obj
        self.segs: list[_Seg] = []
        self.edited = False
        self.seq = 0                       # chunker deltas that must be checked before it goes (0: none)
        self.tools: set[Any] = set()       # tool-call keys that must be approved before it goes


def reframe(raw: bytes, obj: Any) -> bytes:
    """``raw`` (one SSE event) with its ``data:`` lines replaced by one ``data: <compact JSON of obj>`` line where
    the first one was; ``event:`` / ``id:`` / comment lines are kept in place."""
    lines = raw.split(b"\n")
    out: list[bytes] = []
    done = False
    for line in lines:
        if line.rstrip(b"\r") == b"data" or line.startswith(b"data:"):
            if not done:
                out.append(b"data: " + orjson.dumps(obj))
                done = True
        elif line.rstrip(b"\r"):
            out.append(line)
    if not done:
        return sse_frame(obj)
    return b"\n".join(out) + b"\n\n"


class CodecStreamGuard:
    """Guards one streamed answer of the wire API ``codec`` (a :class:`railcar.codecs.base.Codec`) for ``rails`` (a
    :class:`railcar.rails.stream_guard.StreamRails`, e.g. :class:`railcar.rails.guard.RailsGuard`): the
    :class:`railcar.core.guard.StreamGuard` of the module doc.

    ``stopped`` turns true on a block or a fail-closed stop (after the codec's frames went to ``sink``);
    ``stop_event`` is set and ``abort`` called at the same moment. ``state`` is the codec's
    :class:`railcar.codecs.base.StreamState` for this stream."""

    def __init__(self, rails: StreamRails, exchange: Exchange, sink: StreamSink, abort: Callable[[], Any],
                 codec: Codec) -> None:
        self.rails, self.exchange, self.sink, self.abort, self.codec = rails, exchange, sink, abort, codec
        self.stopped = False
        self.stop_event = asyncio.Event()
        self.state = codec.new_stream_state()
        self._factory = rails.filter_factory
        self._streams: dict[Any, _Stream] = {}
        self._holding: set[Any] = set()            # stream keys whose filter holds an open tail
        self._held: list[_Frame] = []              # frames held whole by the hold-back, in order
        self._queue: deque[_Frame] = deque()       # frames waiting for their gates (or behind one that waits)
        self._approved: set[Any] = set()
        self._checked = 0
        self._check_output = rails.enabled("output")
        self._check_tools = rails.enabled("tool_input")
        self._chunker = RollingChunker(rails.chunk_size, rails.context_size)
        self._inflight: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._out: list[bytes] | None = None       # frames collected during one upstream read (one write)
        self._notes: list[RedactionNote] = []
        self._clean: set[str] = set()
        self._long = 0                             # characters of the long values in _clean
        self._tpl: _Template | None = None        # the frame template of this stream's text deltas (_template)
        self._tpl_tries = _TEMPLATE_TRIES
        self._user_text: str | None = None
        self._noted = False

    # -- output plumbing -------------------------------------------------------------------------------------
    async def _send(self, frame: bytes) -> None:
        if self.stopped or not frame:
            return
        if self._out is not None:
            self._out.append(frame)
            return
        await self._write(frame)

    async def _write(self, frame: bytes) -> None:
        if not self._lock.locked():
            await self.sink.send(frame)  # nobody is mid-send: no await before the sink takes the frame
            return
        async with self._lock:
            if not self.stopped:
                await self.sink.send(frame)

    async def _flush_out(self) -> None:
        """Write what this read collected (before anything that may wait, and at the end of the read)."""
        out = self._out
        if out:
            self._out = []
            await self._write(out[0] if len(out) == 1 else b"".join(out))

    def _open(self, f: _Frame) -> bool:
        return f.seq <= self._checked and f.tools <= self._approved

    async def _emit(self, f: _Frame) -> None:
        """Send frame ``f`` now, or queue it behind earlier frames / until its gates open."""
        if not self._queue and self._open(f):
            await self._send(f.raw)
        else:
            self._queue.append(f)

    async def _release(self) -> None:
        """Send the frames at the head of the queue whose gates are open, in order, as one write."""
        queue, ready = self._queue, []
        while queue and self._open(queue[0]):
            ready.append(queue.popleft().raw)
        if ready:
            await self._send(b"".join(ready))

    async def _stop(self, frames: bytes) -> None:
        """End the stream with ``frames`` (already approved frames go first), then stop the upstream."""
        if self.stopped:
            return
        await self._flush_out()
        self._out = None
        self.stopped = True
        self._queue.clear()
        self._held.clear()
        await end_stream(self.sink, self._lock, frames, self.stop_event, self.abort)

    async def _block(self, rail: str, match: FilterMatch | None = None) -> None:
        if self.stopped:
            return
        if match is not None:  # the withheld value is noted for the trace (and so becomes a finding)
            self.exchange.outcome.redactions.append(withheld_note(match))
        self.exchange.outcome.block(rail)
        metrics.BLOCKED_STREAMS.labels(rail).inc()
        await self._stop(self.codec.blocked_frames(rail, self.state))

    async def _fail(self, message: str) -> None:
        log.warning("%s stream stopped: %s", self.codec.name, message)
        await self._stop(self.codec.error_frame(message, "upstream_error", None, "invalid_upstream_event",
                                                self.state))

    # -- checks ----------------------------------------------------------------------------------------------
    @property
    def _user(self) -> str:
        """The last user turn of the request (what the rails see beside the answer)."""
        if self._user_text is None:
            try:
                turns = self.codec.request_messages(self.exchange.body)
            except Exception:  # a body the codec cannot read: the rails judge the answer alone
                turns = []
            self._user_text = next((t.text for t in reversed(turns) if t.role == "user" and t.kind == "input"), "")
        return self._user_text

    async def _check_batch(self, batch: ChunkBatch) -> None:
        if self.stopped:
            return
        res = await self.rails.run_check(self.exchange, "output", [
            {"role": "user", "content": self._user}, {"role": "assistant", "content": batch.text}])
        if res.blocked:
            await self._block(res.rail or "output")
            return
        self._checked = max(self._checked, batch.end)
        await self._release()

    async def _submit(self, batch: ChunkBatch) -> None:
        await self._flush_out()
        if not self.rails.stream_first:
            await self._check_batch(batch)
            return
        if self._inflight is not None and not self._inflight.done():
            await self._inflight  # bound the lag to one chunk: never two checks behind
        self._inflight = eager.spawn(self._check_batch(batch))

    async def _drain(self) -> None:
        if self._inflight is not None:
            await self._inflight
            self._inflight = None

    async def _check_calls(self, calls: list[ToolCall]) -> None:
        for call in calls:
            if self.stopped:
                return
            if self._check_tools and call.arguments:
                await self._flush_out()
                res = await self.rails.run_check(self.exchange, "tool_input", [
                    {"role": "user", "content": self._user}, {"role": "assistant", "content": call.arguments}])
                if res.blocked:
                    await self._block(res.rail or "tool_input")
                    return
            self._approved.add(call.key)
        await self._release()

    # -- filters ---------------------------------------------------------------------------------------------
    @staticmethod
    def _feed(f: TextFilter, text: str) -> tuple[str, FilterMatch | None]:
        if f.pass_through([text]):  # one RE2 Set pass for a clean delta
            return text, None
        return f.feed(text)

    async def _whole(self, p: Piece, f: _Frame) -> bool:
        """A whole value through a fresh filter; rewritten in place when redacted. ``False`` when it blocked."""
        text = p.text
        if text in self._clean or self._factory is None:
            return True
        dec = unescape(text)[0] if "\\" in text else text
        flt = self._factory()
        if flt.pass_through([dec]):
            self._remember(text)
            return True
        rel, match = flt.feed(dec)
        if match is None:
            more, match = flt.flush()
            rel += more
        if match is not None:
            await self._block(match_rail(match), match)
            return False
        if rel != dec:
            set_at(f.obj, p.parts, rewrite(text, dec, rel))
            f.edited = True
            path = json_path(p.parts)
            self._notes.extend(_at(n, path) for n in flt.notes)
        return True

    async def _delta(self, p: Piece, f: _Frame, batches: list[ChunkBatch]) -> bool:
        """One delta of stream ``p.stream_key`` through its filter (released answer text to the chunker).
        ``False`` when it blocked."""
        key = p.stream_key
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream(self._factory() if self._factory else IdentityFilter(), p.kind, p.parts)
        dec = s.unesc.feed(p.text) if self._factory is not None else p.text
        rel = ""
        if dec:
            rel, match = self._feed(s.filter, dec)
            if match is not None:
                await self._block(match_rail(match), match)
                return False
        f.segs.append((key, p.parts, p.text, dec, rel))
        if s.holding:
            self._holding.add(key)
        else:
            self._holding.discard(key)
        self._chunk(s.kind, rel, f, batches)
        if key in self.state.calls and key not in self._approved:
            f.tools.add(key)
        return True

    def _chunk(self, kind: str, rel: str, f: _Frame, batches: list[ChunkBatch]) -> None:
        if rel and self._check_output and kind in _ANSWER_KINDS:
            b = self._chunker.feed(rel)
            if b is not None:
                batches.append(b)
            if not self.rails.stream_first:
                f.seq = self._chunker.fed

    async def _flush_stream(self, key: Any, f: _Frame, batches: list[ChunkBatch]) -> bool:
        """The end of stream ``key``'s value: its held tail judged and released into ``f``. ``False`` on a block."""
        s = self._streams.get(key)
        if s is None or not s.holding:
            return True
        tail = s.unesc.flush()
        rel, match = s.filter.feed(tail) if tail else ("", None)
        if match is None:
            more, match = s.filter.flush()
            rel += more
        if match is not None:
            await self._block(match_rail(match), match)
            return False
        f.segs.append((key, None, "", tail, rel))
        self._holding.discard(key)
        self._chunk(s.kind, rel, f, batches)
        return True

    # -- frames ----------------------------------------------------------------------------------------------
    async def _place(self, f: _Frame) -> None:
        """Frame ``f`` after its strings were seen: held whole while a filter holds a tail open, else out (with
        the frames held before it)."""
        if self._held or self._holding:
            self._held.append(f)
            if self._holding:
                return
            frames, self._held = self._held, []
            if self._changed(frames):
                self._rewrite(frames)
            joined = _Frame(b"".join(x.raw for x in frames))
            for x in frames:
                joined.seq = max(joined.seq, x.seq)
                joined.tools |= x.tools
            f = joined
        elif self._changed([f]):
            self._rewrite([f])
        await self._emit(f)

    @staticmethod
    def _changed(frames: list[_Frame]) -> bool:
        """A filter changed the text of some key in ``frames`` (compared per key: a tail held in one frame is
        released in a later one), or a whole value was rewritten."""
        if any(x.edited for x in frames):
            return True
        dec: dict[Any, list[str]] = {}
        rel: dict[Any, list[str]] = {}
        for x in frames:
            for key, _, _, d, r in x.segs:
                if d != r:
                    dec.setdefault(key, []).append(d)
                    rel.setdefault(key, []).append(r)
        return any("".join(dec[k]) != "".join(rel[k]) for k in dec)

    def _rewrite(self, frames: list[_Frame]) -> None:
        """Put each changed key's released text (mapped back onto the escapes it was sent with) into the last of
        its strings in ``frames``, ``""`` into the others, and re-serialize the frames that changed."""
        by_key: dict[Any, list[tuple[_Frame, _Seg]]] = {}
        for x in frames:
            for seg in x.segs:
                by_key.setdefault(seg[0], []).append((x, seg))
        for segs in by_key.values():
            if "".join(seg[3] for _, seg in segs) == "".join(seg[4] for _, seg in segs):
                continue
            new = rewrite("".join(s[2] for _, s in segs), "".join(s[3] for _, s in segs),
                          "".join(s[4] for _, s in segs))
            located = [(x, seg[1]) for x, seg in segs if seg[1] is not None]
            if not located:
                continue
            for n, (x, parts) in enumerate(located):
                set_at(x.obj, parts, new if n == len(located) - 1 else "")
                x.edited = True
        for x in frames:
            if x.edited:
                x.raw = reframe(x.raw, x.obj)

    # -- events ----------------------------------------------------------------------------------------------
    async def on_events(self, events: list[SSEEvent]) -> int:
        """The events of one upstream read, ``(raw, data)`` each, in order (see the module doc); the frames this
        read lets through go out as one write. Returns how many events were handled: ``len(events)``, or fewer when
        the stream stopped part-way, counting the event whose handling stopped it."""
        self._out = []
        run: list[_RunItem] = []
        try:
            for i, (raw, data) in enumerate(events):
                if self.stopped:
                    return i
                item = self._simple_hit(raw, data) if data is not None and data[:1] == b"{" else None
                if item is not None and (not run or run[0][2] == item[2]):
                    if not run:
                        at = i
                    run.append(item)
                    continue
                if run:
                    done = await self._run(run)
                    if self.stopped:
                        return at + done
                    run = []
                if item is not None:
                    at, run = i, [item]
                    continue
                await self._on_event(raw, data)
                if self.stopped:
                    return i + 1
            if run:
                done = await self._run(run)
                if self.stopped:
                    return at + done
            return len(events)
        finally:
            while self._out and not self.stopped:  # (a check finishing meanwhile may add frames)
                await self._flush_out()
            self._out = None

    # -- fast path: runs of plain text deltas ----------------------------------------------------------------
    def _simple(self, raw: bytes, data: bytes) -> _RunItem | None:
        """A run item when event ``data`` is the codec's plain text delta (:meth:`Codec.text_delta`) whose other
        strings are whole values that pass (judged here as :meth:`_whole` would, and remembered), of a stream that
        is no tool call; else ``None`` (the general path takes the event, parsing it again)."""
        try:
            obj = strict_json.loads(data)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict:
            return None
        td = self.codec.text_delta(obj)
        if td is None:
            return None
        key, text, kind, parts, others = td
        if not text or "\\" in text or key in self.state.calls:
            return None
        clean = self._clean
        for v in others:
            if v and v not in clean and not self._whole_ok(v):
                return None
        if self._tpl_tries:  # (a plain delta the template missed, or there is none yet: learn this one's bytes)
            self._tpl_tries -= 1
            self._tpl = _template(data, obj, key, kind, parts, self.codec.counter_field) or self._tpl
        return raw, text, key, kind, parts, obj, data, None

    def _simple_hit(self, raw: bytes, data: bytes) -> _RunItem | None:
        """:meth:`_simple` for a payload that is this stream's template event (:func:`_template`): its other
        strings are the template's, which passed; only the delta's token is parsed."""
        tpl = self._tpl
        got = _hit(tpl, data) if tpl is not None else None
        if got is None or tpl is None:
            return self._simple(raw, data)
        text, seq = got
        if "\\" in text or tpl[3] in self.state.calls:
            return None
        return raw, text, tpl[3], tpl[4], tpl[5], None, data, seq

    def _whole_ok(self, text: str) -> bool:
        """``text`` as a whole value passes the hold-back unchanged (one RE2 pass; remembered when short)."""
        if self._factory is None:
            return True
        dec = unescape(text)[0] if "\\" in text else text
        if not self._factory().pass_through([dec]):
            return False
        self._remember(text)
        return True

    def _remember(self, text: str) -> None:
        """``text`` passed as a whole value: remember it (bounded in count, long values in characters)."""
        if len(self._clean) >= _CLEAN_CACHE:
            return
        if len(text) >= 256:
            if self._long + len(text) > _CLEAN_LONG_CHARS:
                return
            self._long += len(text)
        self._clean.add(text)

    async def _run(self, run: list[_RunItem]) -> int:
        """Handle a run of plain text deltas of one stream key (see :meth:`on_events`): the leading ones its filter
        releases whole (one ``pass_through`` call) go out as their original bytes, the chunker fed per delta;
        the next one takes the general path, then again. Returns how many were handled (all unless the stream
        stopped, counting the event whose handling stopped it)."""
        n, total = 0, len(run)
        while n < total:
            k = self._clean_prefix(run, n)
            if k:
                done = await self._relay(run, n, n + k)
                if self.stopped:
                    return n + done
                n += k
                continue
            raw, _, _, _, _, obj, data, _ = run[n]
            n += 1
            await self._on_obj(raw, obj if obj is not None else strict_json.loads(data))
            if self.stopped:
                return n
        return total

    def _clean_prefix(self, run: list[_RunItem], start: int) -> int:
        """How many items of ``run`` from ``start`` on the filter of their stream releases whole: 0 while any
        frame or tail is held (the general path then decides)."""
        if self._held or self._holding:
            return 0
        key, kind, parts = run[start][2], run[start][3], run[start][4]
        s = self._streams.get(key)
        if s is None:
            s = self._streams[key] = _Stream(self._factory() if self._factory else IdentityFilter(), kind, parts)
        if s.holding:
            return 0
        return s.filter.pass_through([item[1] for item in run[start:]])

    async def _relay(self, run: list[_RunItem], start: int, end: int) -> int:
        """Send ``run[start:end]`` (released whole) as the general path would: each frame out at once or queued
        behind earlier ones / its chunk check, a chunk check submitted after the frame that completed it. Returns
        how many were handled (``end - start`` unless a check stopped the stream)."""
        chunked = self._check_output and run[start][3] in _ANSWER_KINDS
        sf = self.rails.stream_first
        chunker, queue, out = self._chunker, self._queue, self._out
        for n in range(start, end):
            raw, text, obj, seq = run[n][0], run[n][1], run[n][5], run[n][7]
            if obj is not None:
                self.codec.tool_calls_done(obj, self.state)  # (its bookkeeping: e.g. the sequence number)
            elif seq is not None:  # a template hit: the counter is all that bookkeeping records
                self.state.sequence_number = seq
            b = chunker.feed(text) if chunked else None
            seq = chunker.fed if chunked and not sf else 0
            if not queue and seq <= self._checked:
                if out is None:
                    await self._send(raw)
                else:
                    out.append(raw)
            else:
                f = _Frame(raw)
                f.seq = seq
                queue.append(f)
            if b is not None:
                await self._submit(b)
                if self.stopped:
                    return n - start + 1
                out = self._out
        if queue:
            await self._release()
        return end - start

    async def _on_event(self, raw: bytes, data: bytes | None) -> None:
        if data is None:
            await self._place(_Frame(raw))
            return
        term = self.codec.terminal_data
        if data[:1] != b"{" and (not data.strip() or (term is not None and data.strip() == term.encode())):
            if data.strip():  # the terminal sentinel: the end-of-stream checks come before it
                await self._finish()
            await self._place(_Frame(raw))
            return
        try:
            obj = strict_json.loads(data)
        except orjson.JSONDecodeError:
            await self._fail(INVALID_EVENT_MESSAGE)
            return
        await self._on_obj(raw, obj)

    async def _on_obj(self, raw: bytes, obj: Any) -> None:
        """One parsed event: its tool-call bookkeeping, every string, then the frame (and, for the terminal event,
        the end-of-stream checks before it)."""
        codec = self.codec
        is_obj = type(obj) is dict
        calls = codec.tool_calls_done(obj, self.state) if is_obj else []
        pieces = codec.stream_strings(obj) if is_obj else [Piece(p, s, None, "other") for p, s in walk_strings(obj)]
        f = _Frame(raw, obj)
        batches: list[ChunkBatch] = []
        for p in pieces:
            if not p.text:
                continue
            ok = await (self._whole(p, f) if p.stream_key is None else self._delta(p, f, batches))
            if not ok:
                return
        for call in calls:
            f.tools.add(call.key)
            if not await self._flush_stream(call.key, f, batches):
                return
        if is_obj and codec.is_terminal(obj):
            await self._finish(f, batches, calls)
            return
        await self._place(f)
        for b in batches:
            await self._submit(b)
            if self.stopped:
                return
        await self._check_calls(calls)

    # -- end of stream ---------------------------------------------------------------------------------------
    async def _finish(self, last: _Frame | None = None, batches: list[ChunkBatch] | None = None,
                      calls: list[ToolCall] | None = None) -> None:
        """End of the answer: flush every filter (a held tail is judged), the last chunk check, the calls left
        open; then ``last`` (the terminal event, with the ``batches`` and completed ``calls`` it brought) and
        whatever passed. Safe to run more than once."""
        batches = [] if batches is None else batches
        tail = _Frame(b"")
        for key in list(self._holding):
            if not await self._flush_stream(key, tail, batches):
                return
        if tail.segs:
            await self._place(tail)
        if self._check_output:
            b = self._chunker.finish()
            if b is not None:
                batches.append(b)
        open_calls = list(calls or ()) + self.codec.flush_tool_calls(self.state)
        if last is not None:
            last.tools |= {c.key for c in open_calls}
            await self._place(last)
        for b in batches:
            await self._submit(b)
            if self.stopped:
                return
        await self._check_calls(open_calls)
        await self._drain()
        if self.stopped:
            return
        await self._release()
        if self._queue:  # gates that can no longer open (e.g. no check configured): everything passed
            self._checked = 1 << 62
            self._approved |= {k for x in self._queue for k in x.tools}
            await self._release()

    def _note_redactions(self) -> None:
        """Once: the redaction notes, each with the JSON path of the value it was made in."""
        if self._noted:
            return
        self._noted = True
        out = self.exchange.outcome.redactions
        out.extend(self._notes)
        for s in self._streams.values():
            path = json_path(s.parts)
            out.extend(_at(n, path) for n in s.filter.notes)

    async def on_end(self) -> None:
        """The upstream ended (normally, early, or the client went away): the end-of-stream checks, release what
        passed (nothing is invented: no terminal event the upstream did not send), record the redaction notes.
        Idempotent."""
        try:
            if not self.stopped:
                await self._finish()
        except (ConnectionError, OSError) as exc:  # the client went away while we released the tail
            log.debug("stream ended with the client gone: %s", exc)
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
            self._note_redactions()


def _at(note: RedactionNote, path: str) -> RedactionNote:
    return RedactionNote(note.detector, note.kind, path, note.fingerprint, note.masked_preview, note.confidence,
                         note.severity)
