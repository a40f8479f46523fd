"""The stream guard: chunked streaming output rails, tool-call holds and the inline filter over one streamed answer.

:meth:`railcar.rails.guard.RailsGuard.open_stream` makes one :class:`RailsStreamGuard` per streamed response; it implements
:class:`railcar.core.guard.StreamGuard` (``on_events`` per upstream read, ``on_end`` once; ``on_event`` is the
per-event form the property tests compare it with).

Streaming (``rails.output.streaming`` of the guardrail config, NeMo Platform "Running Inference with Guardrails"):
content deltas go through the rolling buffer of :mod:`railcar.rails.chunker`; with ``stream_first`` a delta is sent the
moment it arrives and chunk checks start at once (:func:`railcar.rails.eager.spawn`: a check that has to wait continues in a
background task; at most one in flight: if a check still runs when the next chunk is cut, the guard waits for it,
which bounds what can leak past a block to about one chunk); without ``stream_first`` frames are held until their
chunk passes. Tool-call deltas are held until the call's arguments are complete and pass ``tool_input``. A block
sends :func:`railcar.core.wire.blocked_frames` and sets ``stopped``; the proxy then closes the upstream. Every other
event is relayed byte for byte, in order.

The issue-8 seam: the guard's ``filter_factory`` (default: none, i.e. :class:`IdentityFilter`) makes one
:class:`TextFilter` per choice and per tool call (their redaction notes end up in ``exchange.outcome.redactions``); content and argument text pass through ``feed(text) -> (release, match)`` and
``flush()``. When the released text differs from the delta only that chunk is re-serialized; a ``match`` ends the
stream with the error chunk (rail name ``match.rail`` if it has one, else ``"sensitive data"``). For single-choice
content frames the guard holds the *whole frame* while the filter holds an open tail and then sends the original
bytes when the filter changed nothing (so clean traffic stays byte-exact), or the frames rewritten with the released
text when it redacted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from railcar.codecs.chat_tools import ToolCallAssembler
from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import SSEEvent, StreamSink
from railcar.core.wire import blocked_frames, sse_frame
from railcar.rails import eager, metrics
from railcar.rails.chunker import ChunkBatch, RollingChunker
from railcar.rails.engine_local import CheckResult
from railcar.rails.messages import last_user, text_of

log = logging.getLogger("railcar.rails")

__all__ = ["RailsStreamGuard", "StreamRails", "TextFilter", "FilterMatch", "IdentityFilter", "match_rail"]

_META_KEYS = ("id", "created", "model", "object", "system_fingerprint")


class FilterMatch(Protocol):
    """What a :class:`TextFilter` reports when it ends the stream: ``rail``, the rail name of the blocked-content
    error chunk (``"sensitive data"`` for the inline hold-back)."""

    @property
    def rail(self) -> str: ...


class TextFilter(Protocol):
    """Inline hold-back over one text stream (issue 8); every member is required.

    ``feed(text)`` returns the text safe to release now and a :class:`FilterMatch` (or ``None``); ``flush()``
    releases what is left at the end. ``pass_through(deltas)`` is the batch fast path: how many leading deltas
    ``feed`` would release whole and unchanged (they are consumed as such). ``held``: the text held back now
    (``""`` when none). ``notes``: one :class:`RedactionNote` per placeholder written (paths ``"$"``, relative to
    the filtered text)."""

    @property
    def held(self) -> str: ...

    @property
    def notes(self) -> list[RedactionNote]: ...

    def feed(self, text: str) -> tuple[str, FilterMatch | None]: ...

    def flush(self) -> tuple[str, FilterMatch | None]: ...

    def pass_through(self, deltas: list[str]) -> int: ...


class IdentityFilter:
    """The :class:`TextFilter` of a guard without an inline hold-back: releases everything at once."""

    __slots__ = ()
    held = ""

    @property
    def notes(self) -> list[RedactionNote]:
        """Always empty: nothing is redacted."""
        return []

    def feed(self, text: str) -> tuple[str, FilterMatch | None]:
        """``(text, None)``."""
        return text, None

    def flush(self) -> tuple[str, FilterMatch | None]:
        """``("", None)``: nothing is held."""
        return "", None

    def pass_through(self, deltas: list[str]) -> int:
        """``len(deltas)``: every delta is released whole."""
        return len(deltas)


class StreamRails(Protocol):
    """What a :class:`RailsStreamGuard` needs from its guard (:class:`railcar.rails.guard.RailsGuard` is one):
    the streaming settings (``chunk_size`` / ``context_size`` in content deltas, ``stream_first``), the inline
    filter factory (``None``: :class:`IdentityFilter`), whether rails of a kind run, one check, and the
    ``guardrails_data`` the request asked for."""

    chunk_size: int
    context_size: int
    stream_first: bool
    filter_factory: Callable[[], TextFilter] | None

    def enabled(self, kind: str) -> bool: ...

    async def run_check(self, exchange: Exchange, kind: str, messages: list[dict[str, Any]]) -> CheckResult: ...

    def guardrails_data(self, exchange: Exchange) -> dict[str, Any] | None: ...


def match_rail(match: FilterMatch) -> str:
    """The rail name a filter ``match`` reports (``match.rail``), else ``"sensitive data"``."""
    return match.rail or "sensitive data"


# on_events' frame template (see _template): (bytes before the content string, bytes after it, their total length,
# choice index).
_Template = tuple[bytes, bytes, int, int]
# A gathered simple content frame: (raw, content, parsed object or None for a template hit, data).
_RunItem = tuple[bytes, str, Any, bytes]
_INVALID = object()  # on_events: the payload starts like a JSON object but does not parse


def _template(data: bytes, obj: dict[str, Any], content: str, ci: int) -> _Template | None:
    """The bytes around the content string of a simple content frame: ``(prefix, suffix, len(prefix) +
    len(suffix), choice index)``, or ``None``.

    A frame ``prefix + T + suffix`` where ``T`` parses as a JSON string is then the same event as ``data`` with
    ``delta.content = loads(T)``: the template is accepted only if ``prefix + "\u0001" + suffix`` parses to
    ``obj`` with exactly that one value changed (so ``T``'s position is ``choices[0].delta.content``, whatever
    duplicate keys or spacing the upstream uses), and JSON being context-free, any other string token there
    yields the same structure. Providers send the same bytes around every delta (ids, model, ``logprobs: null``
    ...), so on_events then parses one short string per frame instead of the whole object."""
    at = data.rfind(b'"content"')
    if at < 0:
        return None
    i = at + 9
    n = len(data)
    while i < n and data[i] in b" \t\r\n:":
        i += 1
    if i >= n or data[i] != 0x22:  # '"'
        return None
    j = i + 1
    while True:
        j = data.find(b'"', j)
        if j < 0:
            return None
        k = j - 1
        while data[k] == 0x5C:  # count the backslashes before this quote
            k -= 1
        if (j - 1 - k) % 2 == 0:
            break
        j += 1
    pre, suf = data[:i], data[j + 1:]
    try:
        test = orjson.loads(pre + b'"\\u0001"' + suf)
        d = test["choices"][0]["delta"]
        if d.get("content") != "\x01":
            return None
        d["content"] = content
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None
    if test != obj:
        return None
    return pre, suf, len(pre) + len(suf), ci


def _simple_content(obj: Any) -> tuple[Any, Any]:
    """``(delta.content, choice index)`` of a parsed event with one choice, no ``finish_reason`` and no tool calls
    (content not checked further), else ``(None, 0)``."""
    if type(obj) is dict:
        choices = obj.get("choices")
        if type(choices) is list and len(choices) == 1:
            c = choices[0]
            if type(c) is dict and c.get("finish_reason") is None:
                delta = c.get("delta")
                if type(delta) is dict and not delta.get("tool_calls"):
                    return delta.get("content"), c.get("index", 0)
    return None, 0



def _decode(data: bytes) -> tuple[Any, Any, Any]:
    """``(object, delta.content, choice index)`` of a payload parsed whole (:func:`_simple_content`); the object is
    ``_INVALID`` when the payload is not JSON."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _INVALID, None, 0
    content, ci = _simple_content(obj)
    return obj, content, ci


@dataclass
class _Choice:
    chunker: RollingChunker
    filter: TextFilter
    tools: ToolCallAssembler = field(default_factory=ToolCallAssembler)
    tool_filters: dict[int, TextFilter] = field(default_factory=dict)
    checked: int = 0          # deltas covered by a passed chunk check
    finished: bool = False    # finish_reason seen
    # Issue 8: whole frames held while the inline filter holds an open tail, so that a stream the filter leaves
    # unchanged is relayed byte for byte. ``pend_in``/``pend_out``: their content in and as released so far.
    pending: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    pend_in: str = ""
    pend_out: str = ""


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
                 "has_content")

    def __init__(self) -> None:
        self.modified = False                              # a delta was rewritten: re-serialize the object
        self.override: list[bytes] | None = None           # frames to send instead (frame-level hold)
        self.text_gates: list[tuple[int, int]] = []
        self.tool_gates: set[tuple[int, int]] = set()
        self.batches: list[tuple[int, ChunkBatch]] = []    # chunks cut, checked after the frames went out
        self.completed: list[tuple[int, list[int]]] = []   # tool calls whose arguments are complete
        self.pre_frames: list[tuple[bytes, tuple[tuple[int, int], ...]]] = []  # synthesized, sent first
        self.has_content = False  # some choice's delta carries content (stream_first sends such frames at once)


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
        self._queue: deque[tuple[bytes, tuple[tuple[int, int], ...], frozenset[tuple[int, int]]]] = deque()
        self._approved: set[tuple[int, int]] = set()
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

    def _gates_open(self, text_gates: tuple[tuple[int, int], ...], tool_gates: frozenset[tuple[int, int]]) -> bool:
        for ci, seq in text_gates:
            if self._choices[ci].checked < seq:
                return False
        return tool_gates <= self._approved

    async def _emit(self, frame: bytes, text_gates: tuple[tuple[int, int], ...] = (),
                    tool_gates: frozenset[tuple[int, int]] = frozenset()) -> None:
        """Send ``frame`` now, or queue it behind earlier held frames / until its gates open."""
        if not self._queue and self._gates_open(text_gates, tool_gates):
            await self._send(frame)
        else:
            self._queue.append((frame, text_gates, tool_gates))

    async def _release(self) -> None:
        """Send the frames at the head of the queue whose gates are open, in order, as one write."""
        queue, ready = self._queue, []
        while queue and self._gates_open(queue[0][1], queue[0][2]):
            ready.append(queue.popleft()[0])
        if ready:
            await self._send(ready[0] if len(ready) == 1 else b"".join(ready))

    async def _block(self, rail: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._queue.clear()
        async with self._lock:
            try:
                await self.sink.send(blocked_frames(rail))
            except Exception as exc:  # client already gone: the block still stands
                log.debug("could not send the blocked frame: %s", exc)
        self.exchange.outcome.block(rail)
        metrics.BLOCKED_STREAMS.labels(rail).inc()
        self.stop_event.set()
        try:
            res = self.abort()
            if asyncio.iscoroutine(res):
                await res
        except Exception as exc:
            log.debug("abort callback failed: %s", exc)

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

    async def _check_tools_done(self, ci: int, indices: list[int]) -> None:
        st = self._choices[ci]
        for idx in indices:
            if self.stopped:
                return
            call = st.tools.calls[idx]
            if self._check_tools and call.arguments:
                res = await self.guard.run_check(self.exchange, "tool_input", [
                    {"role": "user", "content": self._user}, {"role": "assistant", "content": call.arguments}])
                if res.blocked:
                    await self._block(res.rail or "tool_input")
                    return
            self._approved.add((ci, idx))
        await self._release()

    def _state(self, ci: int) -> _Choice:
        st = self._choices.get(ci)
        if st is None:
            g = self.guard
            st = self._choices[ci] = _Choice(RollingChunker(g.chunk_size, g.context_size), self._new_filter())
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
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self._emit(raw)  # not ours to judge; relay as is
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
            obj, content, ci = _decode(data)
        if type(content) is str and content and type(ci) is int:
            st = self._state(ci)
            if not st.finished and not st.pending:
                return await self._join(run, i, (raw, content, obj, data), ci)
            if obj is None:  # a template hit on a held or finished choice: the general path needs the object
                obj = orjson.loads(data)
        stop = await self._flush(run)
        if stop is None:
            if obj is _INVALID:
                await self._emit(raw)  # not ours to judge; relay as is
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
                self._tpl = _template(data, obj, content, ci) or self._tpl
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
        k = st.filter.pass_through([r[1] for r in run])
        if k:
            n = await self._relay_clean(run, k, st, ci)
            if self.stopped:
                return n
        for n, (raw, _, obj, data) in enumerate(run[k:], k + 1):
            await self._on_obj(raw, obj if obj is not None else orjson.loads(data))
            if self.stopped:
                return n
        return len(run)

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
        """One parsed upstream JSON event ``obj`` with its exact bytes ``raw``: each choice's content, tool calls
        and finish (:meth:`_on_choice`), then the event's frames (:meth:`_send_event`)."""
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices:
            await self._emit(raw)
            return
        if self._meta_missing:
            self._take_meta(obj)
        ev = _Event()
        single = len(choices) == 1
        for choice in choices:
            if isinstance(choice, dict) and not await self._on_choice(raw, obj, choice, single, ev):
                return  # blocked
        await self._send_event(raw, obj, ev)

    async def _on_choice(self, raw: bytes, obj: dict[str, Any], choice: dict[str, Any], single: bool,
                         ev: _Event) -> bool:
        """One choice of an event; ``False`` when it blocked the stream."""
        ci = choice.get("index", 0)
        if not isinstance(ci, int):
            ci = 0
        delta = choice.get("delta")
        st = self._state(ci)
        if isinstance(delta, dict):
            if not await self._on_delta(raw, obj, choice, delta, single, ci, st, ev):
                return False
        if choice.get("finish_reason") is not None and not st.finished:
            return await self._on_finish_reason(ci, st, ev)
        return True

    async def _on_delta(self, raw: bytes, obj: dict[str, Any], choice: dict[str, Any], delta: dict[str, Any],
                        single: bool, ci: int, st: _Choice, ev: _Event) -> bool:
        """A choice's ``delta``: its content through the filter and the chunker, its tool calls; ``False`` when it
        blocked the stream."""
        content = delta.get("content")
        if isinstance(content, str) and content:
            released = await self._filter_content(raw, obj, choice, delta, content, single, st, ev)
            if released is None:
                return False
            text = released
        elif isinstance(content, list):
            text = text_of(content)  # content-part deltas (Mistral): judged, never rewritten
        else:
            text = ""
        if text:
            ev.text_gates.extend(self._feed_text(ci, st, text, ev.batches))
        tcs = delta.get("tool_calls")
        if isinstance(tcs, list) and tcs and not await self._on_tool_calls(ci, st, tcs, ev):
            return False
        if delta.get("content"):  # after the filter may have rewritten it
            ev.has_content = True
        return True

    async def _filter_content(self, raw: bytes, obj: dict[str, Any], choice: dict[str, Any], delta: dict[str, Any],
                              content: str, single: bool, st: _Choice, ev: _Event) -> str | None:
        """Content ``content`` through the choice's filter: the released text, or ``None`` when it matched
        (blocked)."""
        text, match = st.filter.feed(content)
        if match is not None:
            await self._block(match_rail(match))
            return None
        if single and not delta.get("tool_calls") and choice.get("finish_reason") is None:
            # Frame-level hold: the frame waits whole while a tail is open, then goes out unchanged (or rewritten
            # when the filter redacted).
            st.pend_in += content
            st.pend_out += text
            st.pending.append((raw, obj))
            ev.override = [] if st.filter.held else self._resolve_pending(st)
        elif text != content:
            delta["content"] = text
            ev.modified = True
        return text

    async def _on_tool_calls(self, ci: int, st: _Choice, tcs: list[Any], ev: _Event) -> bool:
        """Tool-call entries of a delta: assembled, gated until their call is complete and passed, their argument
        fragments through a filter per call; ``False`` when a filter blocked the stream."""
        try:
            done = st.tools.feed(tcs)
        except ValueError:
            done = []  # malformed entry: relay it; the client will judge
        # st.tools.indices: the call each entry went to (also for entries without ``index``)
        for entry, idx in zip(tcs, st.tools.indices):
            ev.tool_gates.add((ci, idx))
            fn = entry.get("function")
            frag = fn.get("arguments") if isinstance(fn, dict) else None
            if isinstance(fn, dict) and isinstance(frag, str) and frag:
                rel = await self._filter_arguments(st, idx, frag, idx in done)
                if rel is None:
                    return False
                if rel != frag:
                    fn["arguments"] = rel
                    ev.modified = True
        if done:
            ev.completed.append((ci, done))
        return True

    async def _filter_arguments(self, st: _Choice, idx: int, frag: str, complete: bool) -> str | None:
        """Argument fragment ``frag`` of tool call ``idx`` through that call's filter (flushed when the call is
        ``complete``): the released text, or ``None`` when it matched (blocked)."""
        tf = st.tool_filters.get(idx)
        if tf is None:  # (not setdefault: that would build a filter per fragment)
            tf = st.tool_filters[idx] = self._new_filter()
        rel, match = tf.feed(frag)
        if match is None and complete:
            more, match = tf.flush()
            rel += more
        if match is not None:
            await self._block(match_rail(match))
            return None
        return rel

    async def _on_finish_reason(self, ci: int, st: _Choice, ev: _Event) -> bool:
        """The choice is over: release what the filter held, cut the last chunk, complete open tool calls;
        ``False`` when the filter's flush blocked the stream."""
        st.finished = True
        extra = await self._flush_choice(ci, st, ev.batches)
        if extra is None:
            return False
        ev.pre_frames.extend(extra)
        open_calls = st.tools.finish()
        if open_calls:
            ev.completed.append((ci, open_calls))
            for idx in open_calls:
                ev.tool_gates.add((ci, idx))
        return True

    async def _send_event(self, raw: bytes, obj: dict[str, Any], ev: _Event) -> None:
        """The event's frames (the original bytes unless a delta was rewritten or frames were held), behind any
        synthesized ones, then its chunk checks and tool-call checks."""
        frames = [raw if not ev.modified else sse_frame(obj)] if ev.override is None else ev.override
        for pf, gates in ev.pre_frames:
            await self._emit(pf, gates)
        if self.guard.stream_first and not ev.tool_gates and not ev.pre_frames and ev.has_content:
            for frame in frames:
                await self._send(frame)  # stream_first: text never waits, not even behind held tool calls
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
        """The held frames once the filter holds nothing: the original bytes when the filter changed nothing,
        else the same frames with the released text (placeholders) in the last one."""
        pending, same, out = st.pending, st.pend_in == st.pend_out, st.pend_out
        st.pending, st.pend_in, st.pend_out = [], "", ""
        if same:
            return [r for r, _ in pending]
        frames = []
        for i, (_, o) in enumerate(pending):
            o["choices"][0]["delta"]["content"] = out if i == len(pending) - 1 else ""
            frames.append(sse_frame(o))
        return frames

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
        """End of one choice's content: flush its filter (a synthesized content frame, with its text gate, if text
        was held back) and cut the final chunk into ``batches``. ``None`` when the flush matched (blocked)."""
        frames: list[tuple[bytes, tuple[tuple[int, int], ...]]] = []
        text, match = st.filter.flush()
        if match is not None:
            await self._block(match_rail(match))
            return None
        if st.pending:
            st.pend_out += text
            gates = self._feed_text(ci, st, text, batches)
            frames.extend((f, gates) for f in self._resolve_pending(st))
        elif text:
            frames.append((sse_frame({**self._meta, "choices": [
                {"index": ci, "delta": {"content": text}, "finish_reason": None}]}),
                           self._feed_text(ci, st, text, batches)))
        if self._check_output:
            b = st.chunker.finish()
            if b is not None:
                batches.append((ci, b))
        return frames

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
        for f, gates in extra:
            await self._emit(f, gates)
        for _, b in batches:
            await self._submit(ci, b)
        open_calls = st.tools.finish()
        if open_calls:
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
                out.extend(replace(n, path=f"{base}.tool_calls[{idx}].function.arguments") for n in tf.notes)

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
