"""The stream guard: chunked streaming output rails, tool-call holds and the inline filter over one streamed answer.

:meth:`railcar.rails.guard.RailsGuard.open_stream` makes one :class:`RailsStreamGuard` per streamed response; it implements
:class:`railcar.core.guard.StreamGuard` (``on_events`` per upstream read, ``on_end`` once; ``on_event`` is the
per-event form the property tests compare it with).

Streaming (``rails.output.streaming`` of the guardrail config, NeMo Platform "Running Inference with Guardrails"):
content deltas go through the rolling buffer of :mod:`railcar.rails.chunker`; with ``stream_first`` a delta is sent the
moment it arrives and chunk checks start at once (:func:`railcar.core.eager.spawn`: a check that has to wait continues in a
background task; at most one in flight: if a check still runs when the next chunk is cut, the guard waits for it,
which bounds what can leak past a block to about one chunk); without ``stream_first`` frames are held until their
chunk passes. Tool-call deltas, and a choice's frames once a legacy ``function_call`` started, are held until the
call's arguments are complete (a legacy call: at ``finish_reason`` or the stream's end) and pass ``tool_input``. A block
sends :func:`railcar.core.wire.blocked_frames` and sets ``stopped``; the proxy then closes the upstream. Every other
event is relayed byte for byte, in order.

The issue-8 seam: the guard's ``filter_factory`` (default: none, i.e. :class:`IdentityFilter`) makes one
:class:`TextFilter` per choice and per tool call (their redaction notes end up in ``exchange.outcome.redactions``); content and argument text pass through ``feed(text) -> (release, match)`` and
``flush()``. When the released text differs from the delta only that chunk is re-serialized; a ``match`` ends the
stream with the error chunk (rail name ``match.rail`` if it has one, else ``"sensitive data"``). For single-choice
content frames the guard holds the *whole frame* while the filter holds an open tail and then sends the original
bytes when the filter changed nothing (so clean traffic stays byte-exact), or the frames rewritten with the released
text when it redacted. Every text, string content included, is JSON-unescaped before the filter sees it (a JSON-mode
answer's ``\\u0041KIA...`` is ``AKIA...`` to the agent's ``json.loads``; :mod:`railcar.rails.json_escape`); content
without a backslash keeps the fast path (one RE2 pass per delta, the original bytes relayed).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import orjson

from railcar.codecs.base import Path, Piece, get_at, set_at
from railcar.codecs.chat_tools import ToolCallAssembler
from railcar.codecs.openai_chat import OpenAIChatCodec, content_cut
from railcar.core import eager, strict_json
from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import SSEEvent, StreamSink
from railcar.core.jsonpath import json_path
from railcar.core.wire import blocked_frames, sse_frame
from railcar.rails import metrics
from railcar.rails.chunker import ChunkBatch, RollingChunker
from railcar.rails.codec_stream import INVALID_EVENT_MESSAGE
from railcar.rails.json_escape import Unescaper, rewrite, unescape
from railcar.rails.messages import last_user
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

__all__ = ["RailsStreamGuard", "StreamRails", "TextFilter", "FilterMatch", "IdentityFilter", "match_rail"]

_META_KEYS = ("id", "created", "model", "object", "system_fingerprint")
_CODEC = OpenAIChatCodec()
_ANSWER_KINDS = frozenset({"text", "reasoning", "refusal"})  # what the output rails read (issue 12 item 2)
_CLEAN_CACHE = 4096  # whole values remembered as passed (ids, model names, roles repeat on every event)
_CONTAINERS = (dict, list)
# Whole values that passed, per filter factory (the judgement depends on the factory only): shared by the streams of
# one guard, so the ids, model names and roles every stream repeats are judged once.
_CLEAN_BY_FACTORY: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _clean_set(factory: Any) -> set[str]:
    """The shared set of passed whole values of ``factory`` (a fresh one when it cannot be weakly referenced)."""
    if factory is None:
        return set()
    try:
        return _CLEAN_BY_FACTORY.setdefault(factory, set())
    except TypeError:
        return set()


# on_events' frame template (see _template): (bytes before the content string, bytes after it, their total length,
# choice index).
_Template = tuple[bytes, bytes, int, int]
# A gathered simple content frame: (raw, content, parsed object or None for a template hit, data).
_RunItem = tuple[bytes, str, Any, bytes]
_INVALID = object()  # on_events: the payload starts like a JSON object but does not parse
_FC = "function_call"  # the tool gate of a choice's legacy function_call: (choice index, _FC); no tool-call index
# A tool gate: (choice index, tool-call index or _FC); a frame with one waits until that call passed tool_input.
_Gate = tuple[int, int | str]


def _template(data: bytes, obj: dict[str, Any], ci: int) -> _Template | None:
    """The bytes around the content string of a simple content frame (:func:`railcar.codecs.openai_chat.content_cut`)
    as ``(prefix, suffix, len(prefix) + len(suffix), choice index)``, or ``None``. Then on_events parses one short
    string per frame instead of the whole object."""
    cut = content_cut(data, obj)
    return None if cut is None else (cut[0], cut[1], len(cut[0]) + len(cut[1]), ci)


# (clean: whole values known to pass; whole_ok: judges one more and remembers it when it passes)
_WholeOk = tuple[set[str], Callable[[str], bool]]


def _others_ok(obj: dict[str, Any], skip: str, ok: _WholeOk) -> bool:
    """No value of ``obj`` but the one under ``skip`` carries text the fast path would not watch: strings are whole
    values that pass (ids, model, ``obfuscation``, ``native_finish_reason``), containers are empty."""
    clean, whole_ok = ok
    for k, v in obj.items():
        t = type(v)
        if t is str:
            if v not in clean and k != skip and not whole_ok(v):
                return False
        elif t in _CONTAINERS and v and k != skip:
            return False
    return True


def _simple_content(obj: Any, ok: _WholeOk) -> tuple[Any, Any]:
    """``(delta.content, choice index)`` of a parsed event whose only variable string is ``delta.content``: one
    choice, no ``finish_reason``, a delta of ``content`` and ``role`` only (beside nulls and empty containers), every
    other string of the event a whole value that passes (``ok``), nothing nested (``logprobs``, ``usage``); else
    ``(None, 0)`` (the general path then watches every string). Content not checked further."""
    if type(obj) is not dict:
        return None, 0
    choices = obj.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return None, 0
    c = choices[0]
    if type(c) is not dict or c.get("finish_reason") is not None:
        return None, 0
    delta = c.get("delta")
    if type(delta) is not dict or not _others_ok(obj, "choices", ok) or not _others_ok(c, "delta", ok):
        return None, 0
    for k, v in delta.items():
        if k == "content" or v is None:
            continue
        if k == "role" and type(v) is str:
            if v not in ok[0] and not ok[1](v):
                return None, 0
        elif type(v) is str or type(v) in _CONTAINERS:
            if v:  # reasoning, refusal, tool calls, any other field: the general path
                return None, 0
    return delta.get("content"), c.get("index", 0)


def _decode(data: bytes, ok: _WholeOk) -> tuple[Any, Any, Any]:
    """``(object, delta.content, choice index)`` of a payload parsed whole (:func:`_simple_content`); the object is
    ``_INVALID`` when the payload is not JSON."""
    try:
        obj = strict_json.loads(data)
    except orjson.JSONDecodeError:
        return _INVALID, None, 0
    content, ci = _simple_content(obj, ok)
    return obj, content, ci


def _holdable(choices: list[Any]) -> int | None:
    """The choice index of an event whose frame may be held whole (one choice with a ``delta``, no tool calls, no
    ``finish_reason``), else ``None``."""
    if len(choices) != 1:
        return None
    c = choices[0]
    if not isinstance(c, dict) or c.get("finish_reason") is not None:
        return None
    delta = c.get("delta")
    if not isinstance(delta, dict) or delta.get("tool_calls"):
        return None
    ci = c.get("index", 0)
    return ci if isinstance(ci, int) else 0


def _choice_handles(parts: Path) -> bool:
    """The string at ``parts`` is a choice's string ``delta.content`` or a tool call's ``function.arguments``: its
    choice's content filter / the call's filter watch it (:meth:`RailsStreamGuard._on_delta`)."""
    n = len(parts)
    if n == 4:
        return parts[3] == "content" and parts[2] == "delta" and parts[0] == "choices"
    return (n == 7 and parts[6] == "arguments" and parts[5] == "function" and parts[3] == "tool_calls"
            and parts[2] == "delta" and parts[0] == "choices")


def _feed(f: TextFilter, text: str) -> tuple[str, FilterMatch | None]:
    """``f.feed(text)``, after one RE2 Set pass (``pass_through``) that releases a clean delta at once."""
    if f.pass_through([text]):
        return text, None
    return f.feed(text)


def _note_function_call(st: _Choice, delta: dict[str, Any]) -> None:
    """A legacy ``delta.function_call`` (``{"name", "arguments"}``, deprecated by OpenAI for ``tool_calls``): the
    call started; its argument fragment is appended as sent (what the tool_input rails judge once complete)."""
    fc = delta.get("function_call")
    if isinstance(fc, dict) and fc:
        st.fc_seen = True
        frag = fc.get("arguments")
        if isinstance(frag, str):
            st.fc_args += frag


def _clean_prefix(st: _Choice, run: list[_RunItem], start: int) -> int:
    """How many content frames of ``run`` from ``start`` on the fast path may relay as they came: the leading ones
    whose content has no backslash (an escape is decoded by the general path first) and that the choice's filter
    releases whole (``pass_through``); 0 while the choice holds frames or an escape cut at a delta's end."""
    if st.pending or st.content.unesc.pending:
        return 0
    texts = []
    for item in run[start:] if start else run:
        c = item[1]
        if "\\" in c:
            break
        texts.append(c)
    return st.filter.pass_through(texts) if texts else 0


def _nest(parts: Path, value: Any) -> Any:
    """``value`` under ``parts`` built up as fresh dicts and one-item lists (``("delta", "refusal")`` ->
    ``{"delta": {"refusal": value}}``)."""
    for p in reversed(parts):
        value = [value] if isinstance(p, int) else {p: value}
    return value


class _Field:
    """One streamed string field of a choice (one stream key of :func:`railcar.codecs.openai_chat.chunk_piece`):
    string ``delta.content`` (:attr:`_Choice.content`), tool-call and legacy ``function_call`` arguments,
    ``reasoning_content``, ``reasoning``, ``reasoning_details[].text``, ``refusal``, ``audio.transcript``, content
    parts, ``logprobs`` tokens, any field a provider adds. Its deltas go through one filter, JSON-unescaped first
    (:class:`railcar.rails.json_escape.Unescaper`: the agent's ``json.loads`` of arguments undoes the escapes, so
    ``\\u0041KIA...`` is ``AKIA...`` to the filter); :meth:`feed` says what the frame carries instead of the delta:
    the released part as the upstream spelled it (escapes kept), placeholders JSON-escaped."""

    __slots__ = ("filter", "unesc", "decode", "carry", "ahead", "kind", "path", "parts", "seen", "out")

    def __init__(self, f: TextFilter, kind: str, parts: Path, decode: bool) -> None:
        self.filter, self.kind, self.parts, self.decode = f, kind, parts, decode
        self.unesc = Unescaper()
        self.carry = ""              # the filter's held tail, as the upstream spelled it
        # The start of ``carry + unesc.pending`` already sent: an escape cut at a delta's end goes out with its
        # delta while nothing is held (so a clean stream keeps its bytes); it is not sent twice.
        self.ahead = ""
        self.seen = self.out = ""     # tool arguments: all fragments as sent upstream / as released (see _Lazy)
        self.path = json_path(parts)  # where its redaction notes point (the field's first delta)

    @property
    def holding(self) -> bool:
        """Text of the field is held back (a possible value still open, or an escape cut at a delta's end)."""
        return bool(self.carry) or bool(self.unesc.pending)

    def feed(self, frag: str, final: bool = False, ahead: bool = True) -> tuple[str, str, FilterMatch | None]:
        """Delta ``frag`` (``final``: the field ends with it; ``""`` to flush): ``(text the frame carries, the
        released text as the filter saw it, match or None)``. ``ahead``: an escape cut at the delta's end may go out
        with it (the frame is sent now); without it (the frame is held whole while the escape is pending) it waits
        for its end, so a value starting with that escape is redacted whole."""
        f = self.filter
        if not self.decode or (not self.unesc.pending and "\\" not in frag and "\\" not in self.carry):
            rel, match = _feed(f, frag) if frag else ("", None)
            if match is None and final:
                more, match = f.flush()
                rel += more
            self.carry = f.held
            return rel, rel, match
        src = self.carry + self.unesc.pending + frag
        dec = self.unesc.feed(frag)
        rel, match = f.feed(dec) if dec else ("", None)
        if match is None and final:
            tail = self.unesc.flush()
            if tail:
                rel2, match = f.feed(tail)
                rel += rel2
            if match is None:
                more, match = f.flush()
                rel += more
        if match is not None:
            return "", rel, match
        pending = self.unesc.pending
        sent = self._spell(src[:len(src) - len(pending)], rel)
        if pending and not self.carry and ahead:
            sent += pending[len(self.ahead):]
            self.ahead = pending
        return sent, rel, None

    def _spell(self, src: str, rel: str) -> str:
        """What the frame carries for released text ``rel`` when ``src`` (the field's unreleased original text, no
        escape cut at its end) decodes to what the filter saw: ``src`` up to the held tail (kept in ``carry``), or
        :func:`railcar.rails.json_escape.rewrite` of it when the filter redacted; less what went out ahead."""
        held, ahead = self.filter.held, self.ahead
        offsets: list[int] = []
        full = unescape(src, True, offsets)[0]
        cut = len(full) - len(held)
        if cut < 0 or not full.endswith(held):  # (cannot happen: the held tail is a suffix of what was fed)
            self.carry, self.ahead = held, ""
            return rel
        at = offsets[cut]
        self.carry = src[at:]
        if rel == full[:cut]:  # nothing redacted: the original spelling
            self.ahead = src[at:len(ahead)]
            return src[min(at, len(ahead)):at]
        self.ahead = ""
        if not ahead:
            return rewrite(src[:at], full[:cut], rel)
        # The first character's escape went out in part: complete it; the filter's change applies after it.
        end = offsets[1] if cut > 1 else at
        keep = rel[1:] if rel[:1] == full[:1] else rel
        return src[len(ahead):end] + rewrite(src[end:at], full[1:cut], keep)


class _Lazy:
    """A tool-call frame whose argument fragments a filter may change, decided when it is sent: after its call
    completed and passed, so every fragment and the filter's flush are known. ``raw`` (the original bytes) when no
    call's released arguments differ from what the upstream sent (a tail held and then released unchanged moves
    nothing), else ``obj`` with the ``edits`` applied (the released fragments, held tails placed), re-serialized.
    ``modified``: the frame changed for another reason (always re-serialized). ``raw`` may be ``b""`` (a
    synthesized tail frame: nothing to send unless a call changed)."""

    __slots__ = ("raw", "obj", "fields", "edits", "modified")

    def __init__(self, raw: bytes, obj: Any, fields: list[_Field], edits: list[Callable[[], None]],
                 modified: bool) -> None:
        self.raw, self.obj, self.fields, self.edits, self.modified = raw, obj, fields, edits, modified

    def resolve(self) -> bytes:
        """The bytes to send (see the class doc)."""
        changed = any(f.seen != f.out for f in self.fields)
        if not changed and not self.modified:
            return self.raw
        if changed:
            for edit in self.edits:
                edit()
        return sse_frame(self.obj)


_Frame = bytes | _Lazy


def _bytes(frame: _Frame) -> bytes:
    return frame if type(frame) is bytes else frame.resolve()  # type: ignore[union-attr]


@dataclass
class _Choice:
    chunker: RollingChunker
    content: _Field           # string ``delta.content``: the choice's filter, JSON-unescaped like every field
    tools: ToolCallAssembler = field(default_factory=ToolCallAssembler)
    tool_filters: dict[int, _Field] = field(default_factory=dict)
    fields: dict[Any, _Field] = field(default_factory=dict)  # every other streamed field, by stream key
    checked: int = 0          # deltas covered by a passed chunk check
    finished: bool = False    # finish_reason seen
    # Issue 8: whole frames held while the inline filter holds an open tail, so that a stream the filter leaves
    # unchanged is relayed byte for byte. ``pend_in``/``pend_out``: their content in and as released so far.
    pending: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    pend_in: str = ""
    pend_out: str = ""
    # The other fields in the held frames: stream key -> [text as sent, text the frames carry now], the last place
    # of each (a tail released at the end goes there), and whether a whole value in them was redacted.
    pend_keys: dict[Any, list[str]] = field(default_factory=dict)
    pend_loc: dict[Any, tuple[dict[str, Any], Path]] = field(default_factory=dict)
    pend_edit: bool = False
    # Legacy ``delta.function_call`` (one call per choice, complete at ``finish_reason`` or the stream's end): its
    # arguments as sent, whether one started, whether it is complete (its frames wait for the tool_input check).
    fc_args: str = ""
    fc_seen: bool = False
    fc_done: bool = False

    @property
    def filter(self) -> TextFilter:
        """The inline filter of the choice's string content."""
        return self.content.filter

    def holds(self) -> bool:
        """Some text of this choice is held back (content or another field)."""
        return self.content.holding or any(f.holding for f in self.fields.values())


class _Run:
    """The simple content frames of one choice that :meth:`RailsStreamGuard.on_events` gathered and has not handled
    yet: ``items``, their choice ``ci`` and the index ``at`` of the first one in the read."""

    __slots__ = ("items", "ci", "at")

    def __init__(self) -> None:
        self.items: list[_RunItem] = []
        self.ci = 0
        self.at = 0


class _Event:
    """What the general path collects over the choices of one event before its frames go out."""

    __slots__ = ("modified", "override", "text_gates", "tool_gates", "batches", "completed", "pre_frames",
                 "has_content", "watched", "edited", "calls", "edits")

    def __init__(self) -> None:
        self.modified = False                              # a delta was rewritten: re-serialize the object
        self.override: list[bytes] | None = None           # frames to send instead (frame-level hold)
        self.text_gates: list[tuple[int, int]] = []
        self.tool_gates: set[_Gate] = set()
        self.batches: list[tuple[int, ChunkBatch]] = []    # chunks cut, checked after the frames went out
        self.completed: list[tuple[int, Sequence[int | str]]] = []  # calls whose arguments are complete
        self.pre_frames: list[tuple[bytes, tuple[tuple[int, int], ...]]] = []  # synthesized, sent first
        self.has_content = False  # some choice's delta carries content (stream_first sends such frames at once)
        self.watched = False      # the held-frame choice's text went through a filter in this event
        self.edited = False       # a whole value was redacted in place
        self.calls: list[_Field] = []                  # tool-argument filters of the calls in this event
        self.edits: list[Callable[[], None]] = []      # their changes, applied if a call's text changed (_Lazy)


class RailsStreamGuard:
    """Guards one streamed response (:class:`railcar.core.guard.StreamGuard`) for ``guard`` (a
    :class:`StreamRails`).

    ``stopped`` turns true on a block (after the error chunk and ``[DONE]`` went to the sink); ``stop_event``
    (an :class:`asyncio.Event`) is set at the same moment and ``abort`` is called, so the proxy can stop reading
    the upstream even while it waits for the next upstream event. Frames go to the sink in upstream order, except
    that with ``stream_first`` content frames never wait behind held tool-call frames. When the stream ends the
    inline filters' redaction notes go to ``exchange.outcome.redactions``.
    """

    def __init__(self, guard: StreamRails, exchange: Exchange, sink: StreamSink,
                 abort: Callable[[], Any]) -> None:
        self.guard = guard
        self.exchange = exchange
        self.sink = sink
        self.abort = abort
        self.stopped = False
        self.stop_event = asyncio.Event()
        self._new_filter: Callable[[], TextFilter] = guard.filter_factory or IdentityFilter
        self._choices: dict[int, _Choice] = {}
        # (frame, text gates, tool gates)
        self._queue: deque[tuple[_Frame, tuple[tuple[int, int], ...], frozenset[_Gate]]] = deque()
        self._approved: set[_Gate] = set()
        self._inflight: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._ended = False
        self._noted = False
        self._meta: dict[str, Any] = {}
        self._meta_missing: tuple[str, ...] = _META_KEYS  # stream-level keys not seen yet (for synthesized frames)
        # on_events' frame template (see _template) and how many more times one may be derived in this stream.
        self._tpl: _Template | None = None
        self._tpl_tries = 8
        self._user = last_user(exchange.body.get("messages") or [])
        self._check_output = guard.enabled("output")
        self._check_tools = guard.enabled("tool_input")
        self._clean = _clean_set(guard.filter_factory)  # whole values that passed the filter (see _whole_ok)
        self._notes: list[RedactionNote] = []  # redactions of whole values, with their paths

    # -- output plumbing -------------------------------------------------------------------------------------
    async def _send(self, frame: bytes) -> None:
        if self.stopped:
            return
        if not self._lock.locked():
            # Nobody is mid-send: no await point before the sink takes the frame (a held sink appends; aiohttp
            # hands the bytes to the transport before it awaits a drain), so order holds without the lock.
            await self.sink.send(frame)
            return
        async with self._lock:
            if not self.stopped:
                await self.sink.send(frame)

    def _gates_open(self, text_gates: tuple[tuple[int, int], ...], tool_gates: frozenset[_Gate]) -> bool:
        for ci, seq in text_gates:
            if self._choices[ci].checked < seq:
                return False
        return tool_gates <= self._approved

    async def _emit(self, frame: _Frame, text_gates: tuple[tuple[int, int], ...] = (),
                    tool_gates: frozenset[_Gate] = frozenset()) -> None:
        """Send ``frame`` now, or queue it behind earlier held frames / until its gates open."""
        if not self._queue and self._gates_open(text_gates, tool_gates):
            data = _bytes(frame)
            if data:
                await self._send(data)
        else:
            self._queue.append((frame, text_gates, tool_gates))

    async def _release(self) -> None:
        """Send the frames at the head of the queue whose gates are open, in order, as one write."""
        queue, ready = self._queue, []
        while queue and self._gates_open(queue[0][1], queue[0][2]):
            data = _bytes(queue.popleft()[0])
            if data:
                ready.append(data)
        if ready:
            await self._send(ready[0] if len(ready) == 1 else b"".join(ready))

    async def _block(self, rail: str, match: FilterMatch | None = None) -> None:
        if self.stopped:
            return
        if match is not None:  # the withheld value is noted for the trace (and so becomes a finding)
            self.exchange.outcome.redactions.append(withheld_note(match))
        self.exchange.outcome.block(rail)
        metrics.BLOCKED_STREAMS.labels(rail).inc()
        await self._stop(blocked_frames(rail))

    async def _fail(self) -> None:
        """Fail closed on an event that is not JSON (issue 13 item 2): the codec's error event, then stop."""
        if self.stopped:
            return
        log.warning("openai_chat stream stopped: %s", INVALID_EVENT_MESSAGE)
        await self._stop(_CODEC.error_frame(INVALID_EVENT_MESSAGE, "upstream_error", None, "invalid_upstream_event"))

    async def _stop(self, frames: bytes) -> None:
        """End the stream with ``frames``, then stop the upstream (:func:`railcar.rails.text_filter.end_stream`)."""
        self.stopped = True
        self._queue.clear()
        await end_stream(self.sink, self._lock, frames, self.stop_event, self.abort)

    # -- checks ----------------------------------------------------------------------------------------------
    async def _check_batch(self, ci: int, batch: ChunkBatch) -> None:
        if self.stopped:
            return
        res = await self.guard.run_check(self.exchange, "output", [
            {"role": "user", "content": self._user}, {"role": "assistant", "content": batch.text}])
        if res.blocked:
            await self._block(res.rail or "output")
            return
        st = self._choices[ci]
        st.checked = max(st.checked, batch.end)
        await self._release()

    async def _submit(self, ci: int, batch: ChunkBatch) -> None:
        if not self.guard.stream_first:
            await self._check_batch(ci, batch)
            return
        if self._inflight is not None and not self._inflight.done():
            await self._inflight  # bound the lag to one chunk: never two checks behind
        # Started eagerly: a check that never waits (local model-free rails) is done before the next delta, with no
        # task; one that waits (remote, model-judged) continues in a task while text keeps streaming.
        self._inflight = eager.spawn(self._check_batch(ci, batch))

    async def _drain(self) -> None:
        if self._inflight is not None:
            await self._inflight
            self._inflight = None

    async def _check_tools_done(self, ci: int, indices: Sequence[int | str]) -> None:
        """Tool calls ``indices`` of choice ``ci`` (``_FC``: its legacy ``function_call``) are complete: each one's
        arguments through the tool_input rails (when enabled), then its frames may go (a block stops the stream)."""
        st = self._choices[ci]
        for idx in indices:
            if self.stopped:
                return
            args = st.tools.calls[idx].arguments if isinstance(idx, int) else st.fc_args
            if self._check_tools and args:
                res = await self.guard.run_check(self.exchange, "tool_input", [
                    {"role": "user", "content": self._user}, {"role": "assistant", "content": args}])
                if res.blocked:
                    await self._block(res.rail or "tool_input")
                    return
            self._approved.add((ci, idx))
        await self._release()

    def _state(self, ci: int) -> _Choice:
        st = self._choices.get(ci)
        if st is None:
            g = self.guard
            content = _Field(self._new_filter(), "text", ("choices", ci, "delta", "content"),
                             g.filter_factory is not None)
            st = self._choices[ci] = _Choice(RollingChunker(g.chunk_size, g.context_size), content)
        return st

    # -- events ----------------------------------------------------------------------------------------------
    async def on_event(self, raw: bytes, data: bytes | None) -> None:
        """One upstream SSE event: what :meth:`on_events` does for ``[(raw, data)]`` (the per-event form the
        property tests compare it with)."""
        if self.stopped:
            return
        if data is None:
            await self._emit(raw)
            return
        # JSON objects start with "{": only other payloads can be the [DONE] sentinel (no strip() copy per event).
        if data[:1] != b"{" and (data == b"[DONE]" or data.strip() == b"[DONE]"):
            await self._finish(raw)
            return
        try:
            obj = strict_json.loads(data)
        except orjson.JSONDecodeError:
            await self._fail()  # not relayed as if checked
            return
        await self._on_obj(raw, obj)

    async def on_events(self, events: list[SSEEvent]) -> int:
        """A batch of consecutive upstream SSE events (one upstream read), ``(raw, data)`` each: the
        :class:`railcar.core.guard.StreamGuard` entry point.

        The effect is exactly that of :meth:`on_event` called for each event in order (same frames, same order,
        same chunk checks at the same deltas, same blocks); only the per-event overhead is cut. Returns how many
        events were handled: ``len(events)``, or fewer when the stream stopped (a block) part-way, counting the
        event whose handling blocked.

        Fast path: a run of *simple* content frames (one choice, a non-empty string ``delta.content``, no tool
        calls, no ``finish_reason``) whose deltas the inline filter releases whole (``TextFilter.pass_through``:
        one RE2 pass per delta) is relayed as the original bytes, joined into one ``send``, with the chunker fed
        per delta and a chunk check submitted right after the frame that completes it (the frames before it are
        sent first, as :meth:`on_event` does). Once a frame template is known (:func:`_template`), such a frame
        costs one short parse (its content string) and is gathered here without a call; everything else goes
        through :meth:`_gather` and the general path (:meth:`_on_obj`)."""
        run = _Run()
        items = run.items
        tpl = self._tpl
        choices = self._choices
        for i, (raw, data) in enumerate(events):
            if self.stopped:
                return i
            content: Any = None
            if tpl is not None and data is not None and data.startswith(tpl[0]) and data.endswith(tpl[1]) \
                    and len(data) > tpl[2]:
                # Same bytes as the template frame around its content string: only that token is parsed.
                try:
                    content = orjson.loads(data[len(tpl[0]):len(data) - len(tpl[1])])
                except orjson.JSONDecodeError:
                    content = None
                ci = tpl[3]
                st = choices[ci]  # (the template's choice has its state: it was gathered before)
                if type(content) is str and content and not st.finished and not st.pending \
                        and (not items or run.ci == ci):
                    if not items:
                        run.at, run.ci = i, ci
                    items.append((raw, content, None, data))
                    continue
            stop = await self._gather(run, i, raw, data, content)
            if stop is not None:
                return stop
            tpl = self._tpl
        stop = await self._flush(run)
        return len(events) if stop is None else stop

    async def _gather(self, run: _Run, i: int, raw: bytes, data: bytes | None, hit: Any) -> int | None:
        """Event ``i`` of :meth:`on_events` off its inline fast path (``hit``: the content string a template gave,
        else anything). A simple content frame of a choice that is neither held nor finished joins ``run``;
        anything else is handled after the run. Returns :meth:`on_events`' result when the stream stopped, else
        ``None``."""
        if data is None or data[:1] != b"{":
            stop = await self._flush(run)
            if stop is None:
                await self.on_event(raw, data)
            return stop
        tpl = self._tpl
        if tpl is not None and type(hit) is str and hit:
            obj, content, ci = None, hit, tpl[3]
        else:
            obj, content, ci = _decode(data, (self._clean, self._whole_ok))
        if type(content) is str and content and type(ci) is int:
            st = self._state(ci)
            if not st.finished and not st.pending:
                return await self._join(run, i, (raw, content, obj, data), ci)
            if obj is None:  # a template hit on a held or finished choice: the general path needs the object
                obj = strict_json.loads(data)
        stop = await self._flush(run)
        if stop is None:
            if obj is _INVALID:
                await self._fail()  # not relayed as if checked
            else:
                await self._on_obj(raw, obj)
        return stop

    async def _join(self, run: _Run, i: int, item: _RunItem, ci: int) -> int | None:
        """Add simple frame ``item`` (event ``i``, choice ``ci``) to ``run``, handling the run first when it is
        another choice's; learns the stream's meta and frame template from a parsed frame."""
        if run.items and ci != run.ci:
            stop = await self._flush(run)
            if stop is not None:
                return stop
        if not run.items:
            run.at, run.ci = i, ci
        raw, content, obj, data = item
        if obj is not None:  # (a template hit has the template frame's meta, taken already)
            if self._meta_missing:
                self._take_meta(obj)
            if self._tpl_tries:
                self._tpl_tries -= 1
                self._tpl = _template(data, obj, ci) or self._tpl
        run.items.append(item)
        return None

    async def _flush(self, run: _Run) -> int | None:
        """Handle the gathered ``run`` (if any) and empty it; :meth:`on_events`' result when the stream stopped in
        it, else ``None``."""
        if not run.items:
            return None
        done = await self._run(run.items, run.ci)
        if self.stopped:
            return run.at + done
        run.items.clear()
        return None

    async def _run(self, run: list[_RunItem], ci: int) -> int:
        """Handle a run of simple content frames of choice ``ci`` (see :meth:`on_events`); returns how many were
        handled (all unless the stream stopped, counting the frame whose handling blocked)."""
        st = self._choices[ci]
        n, total = 0, len(run)
        while n < total:
            k = _clean_prefix(st, run, n)
            if k:  # (again after a frame the general path took: a short hold must not slow the rest of the run)
                done = await self._relay_clean(run[n:n + k], k, st, ci)
                if self.stopped:
                    return n + done
                n += k
                continue
            raw, _, obj, data = run[n]
            n += 1
            await self._on_obj(raw, obj if obj is not None else strict_json.loads(data))
            if self.stopped:
                return n
        return total

    async def _relay_clean(self, run: list[_RunItem], k: int, st: _Choice, ci: int) -> int:
        """Relay the first ``k`` frames of ``run`` (deltas the filter released whole) as their original bytes, the
        chunker fed per delta; returns how many were handled (``k`` unless a chunk check blocked)."""
        if not self._check_output:
            await self._relay_unchecked(run, k)
            return k
        sf = self.guard.stream_first
        queue = self._queue
        chunker = st.chunker
        out: list[bytes] = []
        # Frames waiting for their chunk's check (sf=false), queued as one entry gated on the last one: no cut
        # falls between them (a cut flushes them), so one check releases all of them or none.
        held: list[bytes] = []
        for n, (raw, content, _, _) in enumerate(run[:k], 1):
            b = chunker.feed(content)
            if sf:
                out.append(raw)  # stream_first: text never waits
            elif not queue and not held and st.checked >= chunker.fed:
                out.append(raw)
            else:
                held.append(raw)
            if b is not None:
                if out:
                    await self._send(out[0] if len(out) == 1 else b"".join(out))
                    out = []
                if held:
                    queue.append((b"".join(held), ((ci, chunker.fed),), frozenset()))
                    held = []
                await self._submit(ci, b)
                if self.stopped:
                    return n
        if out:
            await self._send(out[0] if len(out) == 1 else b"".join(out))
        if held:
            queue.append((b"".join(held), ((ci, chunker.fed),), frozenset()))
        return k

    async def _relay_unchecked(self, run: list[_RunItem], k: int) -> None:
        """:meth:`_relay_clean` without output rails: the frames go out now (behind queued ones without
        ``stream_first``)."""
        sf = self.guard.stream_first
        queue = self._queue
        out: list[bytes] = []
        for raw, _, _, _ in run[:k]:
            if sf or not queue:
                out.append(raw)
            else:
                queue.append((raw, (), frozenset()))
        if out:
            await self._send(out[0] if len(out) == 1 else b"".join(out))

    def _take_meta(self, obj: dict[str, Any]) -> None:
        missing = []
        for k in self._meta_missing:
            if k in obj:
                self._meta[k] = obj[k]
            else:
                missing.append(k)
        self._meta_missing = tuple(missing)

    # -- the general path: one parsed event ------------------------------------------------------------------
    async def _on_obj(self, raw: bytes, obj: Any) -> None:
        """One parsed upstream JSON event ``obj`` with its exact bytes ``raw``: every string of it that is not a
        choice's string content or tool-call arguments (:meth:`_strings`), then each choice's content, tool calls
        and finish (:meth:`_on_choice`), then the event's frames (:meth:`_send_event`)."""
        choices = obj.get("choices") if isinstance(obj, dict) else None
        ev = _Event()
        if not isinstance(choices, list) or not choices:
            if await self._strings(obj, None, ev):
                await self._send_event(raw, obj, ev)
            return
        if self._meta_missing:
            self._take_meta(obj)
        hold = _holdable(choices)
        if not await self._strings(obj, hold, ev):
            return
        single = len(choices) == 1
        for choice in choices:
            if isinstance(choice, dict) and not await self._on_choice(raw, obj, choice, single, hold, ev):
                return  # blocked
        if hold is not None:
            self._hold_frame(raw, obj, hold, ev)
        if ev.edited and ev.override is None:
            ev.modified = True
        await self._send_event(raw, obj, ev)

    def _hold_frame(self, raw: bytes, obj: dict[str, Any], ci: int, ev: _Event) -> None:
        """Frame-level hold of a single-choice event: the frame waits whole, behind the choice's held frames, while
        any of its text is held back; then they all go out unchanged (or rewritten when a filter redacted)."""
        st = self._choices.get(ci)
        if st is None or not (st.pending or ev.watched):
            return
        st.pending.append((raw, obj))
        st.pend_edit = st.pend_edit or ev.edited
        ev.edited = False
        ev.override = [] if st.holds() else self._resolve_pending(st)

    async def _strings(self, obj: Any, hold: int | None, ev: _Event) -> bool:
        """Every string of the event (:meth:`railcar.codecs.openai_chat.OpenAIChatCodec.stream_strings`: paths,
        stream keys with choice and tool-call indexes) except string ``delta.content`` and tool-call
        ``function.arguments`` (their choice handles them): whole values through a fresh filter, streamed fields
        through their :class:`_Field`. ``False`` when it blocked the stream."""
        pieces = _CODEC.stream_strings(obj) if isinstance(obj, dict) else _CODEC.body_strings(obj)
        for p in pieces:
            if not p.text or _choice_handles(p.parts):
                continue
            if p.stream_key is None:
                if not await self._whole(p, obj, ev):
                    return False
            elif not await self._field(p, obj, hold, ev):
                return False
        return True

    def _whole_ok(self, text: str) -> bool:
        """Whole value ``text`` passes a fresh inline filter unchanged (JSON-unescaped first; one RE2 Set pass when
        clean, else fed and flushed: a value's end closes any open prefix); short passing values are remembered
        for the stream."""
        if text in self._clean or self.guard.filter_factory is None:
            return True
        dec = unescape(text)[0] if "\\" in text else text
        flt = self._new_filter()
        if not flt.pass_through([dec]):
            rel, match = flt.feed(dec)
            if match is None:
                more, match = flt.flush()
                rel += more
            if match is not None or rel != dec:
                return False
        if len(text) < 256:
            if len(self._clean) >= _CLEAN_CACHE:  # (one-off values such as ``obfuscation`` filled it: start over)
                self._clean.clear()
            self._clean.add(text)
        return True

    async def _judge(self, text: str, path: str) -> str | None:
        """Whole value ``text`` through a fresh filter (JSON-unescaped first): the value to send (``text``, or it
        with placeholders; the notes are kept with ``path``), ``None`` when it matched (blocked)."""
        if self._whole_ok(text):
            return text
        dec = unescape(text)[0] if "\\" in text else text
        flt = self._new_filter()
        rel, match = flt.feed(dec)
        if match is None:
            more, match = flt.flush()
            rel += more
        if match is not None:
            await self._block(match_rail(match), match)
            return None
        if rel == dec:
            return text
        self._notes.extend(replace(n, path=path) for n in flt.notes)
        return rewrite(text, dec, rel)

    async def _whole(self, p: Piece, obj: Any, ev: _Event) -> bool:
        """A whole value (id, name, model, an annotation's url, an error message ...) through :meth:`_judge`;
        redacted in place (``ev.edited``). ``False`` when it blocked."""
        if p.text in self._clean:
            return True
        sent = await self._judge(p.text, p.path)
        if sent is None:
            return False
        if sent != p.text:
            set_at(obj, p.parts, sent)
            ev.edited = True
        return True

    async def _field(self, p: Piece, obj: dict[str, Any], hold: int | None, ev: _Event) -> bool:
        """One delta of a streamed field (stream key ``p.stream_key``, under choice ``key[1]``) through its
        :class:`_Field`; the frame carries what it released (as spelled upstream); released answer text (reasoning,
        refusal, text) goes to the choice's chunker. ``False`` when it blocked."""
        key = p.stream_key
        assert key is not None
        ci = key[1] if type(key[1]) is int else 0
        st = self._state(ci)
        fs = st.fields.get(key)
        if fs is None:
            fs = st.fields[key] = _Field(self._new_filter(), p.kind, p.parts, self.guard.filter_factory is not None)
        sent, rel, match = fs.feed(p.text, ahead=hold != ci)
        if match is not None:
            await self._block(match_rail(match), match)
            return False
        fs.parts = p.parts
        if hold == ci:  # the frame may be held whole: its changes are judged over the held frames
            acc = st.pend_keys.setdefault(key, ["", ""])
            acc[0] += p.text
            acc[1] += sent
            st.pend_loc[key] = (obj, p.parts)
            ev.watched = True
            if sent != p.text:
                set_at(obj, p.parts, sent)
        elif sent != p.text:
            set_at(obj, p.parts, sent)
            ev.modified = True
        if p.kind in _ANSWER_KINDS:
            ev.text_gates.extend(self._feed_text(ci, st, rel, ev.batches))
        return True

    async def _on_choice(self, raw: bytes, obj: dict[str, Any], choice: dict[str, Any], single: bool,
                         hold: int | None, ev: _Event) -> bool:
        """One choice of an event; ``False`` when it blocked the stream."""
        ci = choice.get("index", 0)
        if not isinstance(ci, int):
            ci = 0
        delta = choice.get("delta")
        st = self._state(ci)
        if isinstance(delta, dict):
            if not await self._on_delta(delta, hold == ci, ci, st, ev):
                return False
            if "function_call" in delta and not st.fc_done:
                _note_function_call(st, delta)
        if st.fc_seen and (ci, _FC) not in self._approved:
            # A legacy function_call is under way: the choice's frames (the call's deltas, frames held with them)
            # wait until it is complete and passed tool_input, as a tool call's do.
            ev.tool_gates.add((ci, _FC))
        if choice.get("finish_reason") is not None and not st.finished:
            return await self._on_finish_reason(ci, st, delta, ev)
        return True

    async def _on_delta(self, delta: dict[str, Any], held: bool, ci: int, st: _Choice, ev: _Event) -> bool:
        """A choice's ``delta``: its string content through the filter and the chunker (content parts are fields,
        :meth:`_field`), its tool calls; ``False`` when it blocked the stream."""
        content = delta.get("content")
        if isinstance(content, str) and content:
            released = await self._filter_content(delta, content, held, st, ev)
            if released is None:
                return False
            if released:
                ev.text_gates.extend(self._feed_text(ci, st, released, ev.batches))
        tcs = delta.get("tool_calls")
        if isinstance(tcs, list) and tcs and not await self._on_tool_calls(ci, st, tcs, ev):
            return False
        if delta.get("content"):  # after the filter may have rewritten it
            ev.has_content = True
        return True

    async def _filter_content(self, delta: dict[str, Any], content: str, held: bool, st: _Choice,
                              ev: _Event) -> str | None:
        """Content ``content`` through the choice's :class:`_Field` (JSON-unescaped first when it has a backslash: a
        structured answer's ``\\u0041KIA...`` is ``AKIA...`` to the agent's ``json.loads``): the released text as
        the filter saw it, or ``None`` when it matched (blocked). The frame carries the released part as the
        upstream spelled it; in a frame that may be held whole (``held``) the change is judged over the held
        frames."""
        sent, rel, match = st.content.feed(content, ahead=not held)
        if match is not None:
            await self._block(match_rail(match), match)
            return None
        if held:
            st.pend_in += content
            st.pend_out += sent
            ev.watched = True
        elif sent != content:
            delta["content"] = sent
            ev.modified = True
        return rel

    async def _on_tool_calls(self, ci: int, st: _Choice, tcs: list[Any], ev: _Event) -> bool:
        """Tool-call entries of a delta: assembled, gated until their call is complete and passed, their argument
        fragments through a filter per call (JSON-unescaped: :class:`_Field`); a call completed by a later one
        gets its held tail in this delta. ``False`` when a filter blocked the stream."""
        try:
            done = st.tools.feed(tcs)
        except ValueError:
            done = []  # malformed entry: relay it; the client will judge
        # st.tools.indices: the call each entry went to (also for entries without ``index``)
        seen = set()
        for entry, idx in zip(tcs, st.tools.indices):
            ev.tool_gates.add((ci, idx))
            seen.add(idx)
            fn = entry.get("function")
            frag = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(fn, dict) and isinstance(frag, str) and frag:
                rel = await self._filter_arguments(st, idx, frag, idx in done)
                if rel is None:
                    return False
                ev.calls.append(st.tool_filters[idx])
                if rel != frag:
                    ev.edits.append(partial(fn.__setitem__, "arguments", rel))
        for entry in tcs[len(st.tools.indices):]:  # entries the assembler refused: each judged whole
            if not await self._malformed_call(entry, ev):
                return False
        tails = await self._tool_tails(st, [i for i in done if i not in seen], ev)
        if tails is None:
            return False
        if tails:
            ev.edits.append(lambda: tcs.__setitem__(slice(0, 0), tails))
        if done:
            ev.completed.append((ci, done))
        return True

    async def _malformed_call(self, entry: Any, ev: _Event) -> bool:
        """The arguments of a tool-call entry without a usable ``index`` through :meth:`_judge` (redacted in place);
        ``False`` when they matched (blocked)."""
        fn = entry.get("function") if isinstance(entry, dict) else None
        frag = fn.get("arguments") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(frag, str) or not frag:
            return True
        sent = await self._judge(frag, "$.choices.delta.tool_calls.function.arguments")
        if sent is None:
            return False
        if sent != frag:
            fn["arguments"] = sent
            ev.modified = True
        return True

    async def _filter_arguments(self, st: _Choice, idx: int, frag: str, complete: bool) -> str | None:
        """Argument fragment ``frag`` of tool call ``idx`` through that call's :class:`_Field` (flushed when the call
        is ``complete``): what the frame carries, or ``None`` when it matched (blocked)."""
        tf = st.tool_filters.get(idx)
        if tf is None:  # (not setdefault: that would build a filter per fragment)
            tf = st.tool_filters[idx] = _Field(self._new_filter(), "tool_arguments", (),
                                               self.guard.filter_factory is not None)
        sent, _, match = tf.feed(frag, complete)
        if match is not None:
            await self._block(match_rail(match), match)
            return None
        tf.seen += frag
        tf.out += sent
        return sent

    async def _tool_tails(self, st: _Choice, indices: list[int], ev: _Event | None = None
                          ) -> list[dict[str, Any]] | None:
        """The held argument tails of the complete calls ``indices``, judged and released as tool-call entries
        (``{"index", "function": {"arguments"}}``; their filters go to ``ev.calls``); ``None`` when one matched
        (blocked)."""
        out = []
        for idx in indices:
            tf = st.tool_filters.get(idx)
            if tf is None or not tf.holding:
                continue
            sent, _, match = tf.feed("", True)
            if match is not None:
                await self._block(match_rail(match), match)
                return None
            tf.out += sent
            if ev is not None:
                ev.calls.append(tf)
            if sent:
                out.append({"index": idx, "function": {"arguments": sent}})
        return out

    async def _on_finish_reason(self, ci: int, st: _Choice, delta: Any, ev: _Event) -> bool:
        """The choice is over: release what the filters held, cut the last chunk, complete open tool calls (their
        held argument tails go into this delta); ``False`` when a flush blocked the stream."""
        st.finished = True
        extra = await self._flush_choice(ci, st, ev.batches)
        if extra is None:
            return False
        ev.pre_frames.extend(extra)
        open_calls = st.tools.finish()
        if open_calls:
            tails = await self._tool_tails(st, open_calls, ev)
            if tails is None:
                return False
            if tails and isinstance(delta, dict):
                ev.edits.append(lambda: delta.__setitem__("tool_calls", tails + (delta.get("tool_calls") or [])))
            ev.completed.append((ci, open_calls))
            for idx in open_calls:
                ev.tool_gates.add((ci, idx))
        if st.fc_seen and not st.fc_done:
            st.fc_done = True
            ev.completed.append((ci, [_FC]))
        return True

    async def _send_event(self, raw: bytes, obj: dict[str, Any], ev: _Event) -> None:
        """The event's frames (the original bytes unless a delta was rewritten or frames were held), behind any
        synthesized ones, then its chunk checks and tool-call checks."""
        frames: list[_Frame]
        if ev.override is not None:
            frames = list(ev.override)
        elif ev.calls:
            frames = [_Lazy(raw, obj, ev.calls, ev.edits, ev.modified)]
        else:
            frames = [raw if not ev.modified else sse_frame(obj)]
        fc_gates = frozenset(g for g in ev.tool_gates if g[1] == _FC)  # released tails may be function_call text
        for pf, gates in ev.pre_frames:
            await self._emit(pf, gates, fc_gates)
        if self.guard.stream_first and not ev.tool_gates and not ev.pre_frames and ev.has_content:
            for frame in frames:
                await self._send(_bytes(frame))  # stream_first: text never waits, not even behind held tool calls
        else:
            for frame in frames:
                await self._emit(frame, tuple(ev.text_gates), frozenset(ev.tool_gates))
        for ci, b in ev.batches:
            await self._submit(ci, b)
            if self.stopped:
                return
        for ci, idx in ev.completed:
            await self._check_tools_done(ci, idx)

    @staticmethod
    def _resolve_pending(st: _Choice) -> list[bytes]:
        """The held frames once nothing is held: the original bytes when no filter changed anything, else the
        frames re-serialized, the content released in the last one that carries content (the other fields carry
        what their filters released, written in as they went)."""
        pending, out = st.pending, st.pend_out
        content_same = st.pend_in == out
        same = content_same and not st.pend_edit and all(a == b for a, b in st.pend_keys.values())
        st.pending, st.pend_in, st.pend_out, st.pend_edit = [], "", "", False
        st.pend_keys, st.pend_loc = {}, {}
        if same:
            return [r for r, _ in pending]
        deltas = [o["choices"][0]["delta"] for _, o in pending]
        if not content_same:
            has = [i for i, d in enumerate(deltas) if isinstance(d.get("content"), str)]
            last = has[-1] if has else len(deltas) - 1
            for i in has:
                deltas[i]["content"] = ""
            deltas[last]["content"] = out
        return [sse_frame(o) for _, o in pending]

    def _feed_text(self, ci: int, st: _Choice, text: str,
                   batches: list[tuple[int, ChunkBatch]]) -> tuple[tuple[int, int], ...]:
        """Feed choice ``ci``'s released ``text`` to its chunker when output rails run (a chunk it cuts goes to
        ``batches``); returns the text gate of the frame carrying it: ``((ci, deltas fed),)`` without
        ``stream_first``, else ``()``."""
        if not text or not self._check_output:
            return ()
        b = st.chunker.feed(text)
        if b is not None:
            batches.append((ci, b))
        return () if self.guard.stream_first else ((ci, st.chunker.fed),)

    async def _flush_choice(self, ci: int, st: _Choice,
                            batches: list[tuple[int, ChunkBatch]]) -> list[tuple[bytes, tuple[tuple[int, int], ...]]] | None:
        """End of one choice's text: flush its filters (the held frames released, or a synthesized frame per field
        when text was held back outside them, each with its text gate) and cut the final chunk into ``batches``.
        ``None`` when a flush matched (blocked)."""
        frames: list[tuple[bytes, tuple[tuple[int, int], ...]]] = []
        text, rel, match = st.content.feed("", True)  # the filter's flush, and an escape cut at the end
        if match is not None:
            await self._block(match_rail(match), match)
            return None
        gates = self._feed_text(ci, st, rel, batches)
        tails = await self._field_tails(ci, st, batches)
        if tails is None:
            return None
        loose, more = tails
        gates = more or gates
        if st.pending:
            st.pend_out += text
            frames.extend((f, gates) for f in self._resolve_pending(st))
        elif text:
            frames.append((sse_frame({**self._meta, "choices": [
                {"index": ci, "delta": {"content": text}, "finish_reason": None}]}), gates))
        frames.extend((f, gates) for f in loose)
        if self._check_output:
            b = st.chunker.finish()
            if b is not None:
                batches.append((ci, b))
        return frames

    async def _field_tails(self, ci: int, st: _Choice, batches: list[tuple[int, ChunkBatch]]
                           ) -> tuple[list[bytes], tuple[tuple[int, int], ...]] | None:
        """Flush the choice's fields that hold text: a released tail goes after the field's last delta in the held
        frames, else into a synthesized frame of its own (returned, with the last text gate). ``None`` when one
        matched (blocked)."""
        loose: list[bytes] = []
        gates: tuple[tuple[int, int], ...] = ()
        for key, fs in list(st.fields.items()):
            if not fs.holding:
                continue
            sent, rel, match = fs.feed("", True)
            if match is not None:
                await self._block(match_rail(match), match)
                return None
            if fs.kind in _ANSWER_KINDS:
                gates = self._feed_text(ci, st, rel, batches) or gates
            if not sent:
                continue
            loc = st.pend_loc.get(key)
            if loc is not None and st.pending:
                o, parts = loc
                set_at(o, parts, get_at(o, parts) + sent)
                st.pend_keys[key][1] += sent
            else:
                loose.append(sse_frame({**self._meta, "choices": [
                    {"index": ci, **_nest(fs.parts[2:], sent), "finish_reason": None}]}))
        return loose, gates

    # -- end of stream ---------------------------------------------------------------------------------------
    async def _finish(self, done_raw: bytes | None) -> None:
        if self._ended:
            return
        self._ended = True
        for ci, st in list(self._choices.items()):
            if self.stopped:
                return
            if not st.finished and not await self._finish_choice(ci, st):
                return
        await self._drain()
        if self.stopped:
            return
        await self._release()
        if self._queue:  # gates that can no longer open (e.g. no check configured): everything passed
            for st in self._choices.values():
                st.checked = 1 << 62
            self._approved |= {g for _, _, tg in self._queue for g in tg}
            await self._release()
        if done_raw is not None:
            data = self.guard.guardrails_data(self.exchange)
            if data is not None:
                await self._send(sse_frame(self._data_chunk(data)))
            await self._send(done_raw)

    async def _finish_choice(self, ci: int, st: _Choice) -> bool:
        """A choice the upstream ended without a ``finish_reason``: flush, last chunk, open tool calls; ``False``
        when the filter's flush blocked the stream."""
        st.finished = True
        batches: list[tuple[int, ChunkBatch]] = []
        extra = await self._flush_choice(ci, st, batches)
        if extra is None:
            return False
        fc_gates = frozenset({(ci, _FC)}) if st.fc_seen and (ci, _FC) not in self._approved else frozenset()
        for f, gates in extra:
            await self._emit(f, gates, fc_gates)
        for _, b in batches:
            await self._submit(ci, b)
        if st.fc_seen and not st.fc_done:
            st.fc_done = True
            await self._check_tools_done(ci, [_FC])
            if self.stopped:
                return False
        open_calls = st.tools.finish()
        if open_calls:
            calls: list[_Field] = []
            tails = await self._tool_tails(st, open_calls)
            if tails is None:
                return False
            if tails:
                calls = [st.tool_filters[e["index"]] for e in tails]
                await self._emit(_Lazy(b"", {**self._meta, "choices": [
                    {"index": ci, "delta": {"tool_calls": tails}, "finish_reason": None}]}, calls, [], False),
                    (), frozenset((ci, i) for i in open_calls))
            await self._check_tools_done(ci, open_calls)
        return True

    def _data_chunk(self, data: dict[str, Any]) -> dict[str, Any]:
        base: dict[str, Any] = {k: self._meta[k] for k in ("id", "created", "model") if k in self._meta}
        base["object"] = "chat.completion.chunk"
        if (self.exchange.guardrails_options or {}).get("return_choice"):
            n = max(self._choices, default=-1) + 1
            base["choices"] = [{"index": n, "delta": {"role": "guardrails_data",
                                                      "content": orjson.dumps(data).decode()},
                                "finish_reason": "stop"}]
        else:
            base["choices"] = []
            base["guardrails_data"] = data
        return base

    def _note_redactions(self) -> None:
        """Once: the inline filters' redaction notes to ``exchange.outcome.redactions``, each with the JSON path of
        the text it was made in (``$.choices[0].delta.content``, ``...tool_calls[1].function.arguments``)."""
        if self._noted:
            return
        self._noted = True
        out = self.exchange.outcome.redactions
        for ci, st in self._choices.items():
            base = f"$.choices[{ci}].delta"
            out.extend(replace(n, path=f"{base}.content") for n in st.filter.notes)
            for idx, tf in st.tool_filters.items():
                out.extend(replace(n, path=f"{base}.tool_calls[{idx}].function.arguments") for n in tf.filter.notes)
            for fs in st.fields.values():
                out.extend(replace(n, path=fs.path) for n in fs.filter.notes)
        out.extend(self._notes)

    async def on_end(self) -> None:
        """The upstream ended: run the end-of-stream checks and release what passed (no ``[DONE]`` is invented
        when the upstream did not send one), then record the redaction notes. Idempotent."""
        try:
            await self._finish(None)
        except (ConnectionError, OSError) as exc:  # the client went away while we released the tail
            log.debug("stream ended with the client gone: %s", exc)
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()
            self._note_redactions()
