"""The rails guard: NeMo Guardrails input, tool and chunked streaming output rails around one chat completion.

:func:`build_guard` turns ``[guardrails]`` (:class:`rails.settings.GuardrailsConfig`) into a :class:`RailsGuard`
implementing :class:`sidecar.guard.Guard`; ``None`` when no guardrail config is set (the proxy then passes through).

Rail kinds and what runs them (the guardrail config's flows, through :mod:`rails.engine_local` or
:mod:`rails.engine_remote`):

=============  ===========================================  ======================
Railcar kind   checks                                       NeMo rail type run
=============  ===========================================  ======================
input          the request's conversation (last user turn)  ``input``
tool_output    each new ``role: "tool"`` message            ``input`` (untrusted text coming in)
output         the answer; chunked when streaming           ``output``
tool_input     each tool call's complete arguments          ``output`` (text the model produced)
=============  ===========================================  ======================

Streaming (``rails.output.streaming`` of the guardrail config, NeMo Platform "Running Inference with Guardrails"):
content deltas go through the rolling buffer of :mod:`rails.chunker`; with ``stream_first`` a delta is sent the
moment it arrives and chunk checks run in a background task (at most one in flight: if a check still runs when the
next chunk is cut, the guard waits for it, which bounds what can leak past a block to about one chunk); without
``stream_first`` frames are held until their chunk passes. Tool-call deltas are held until the call's arguments are
complete and pass ``tool_input``. A block sends :func:`rails.blocked.blocked_frames` and sets ``stopped``; the
proxy then closes the upstream. Every other event is relayed byte for byte, in order.

The issue-8 seam: ``filter_factory`` (default: none, i.e. identity) makes one :class:`TextFilter` per choice and per
tool call; content and argument text pass through ``feed(text) -> (release, match)`` and ``flush()``. When the
released text differs from the delta only that chunk is re-serialized; a ``match`` ends the stream with the error
chunk (rail name ``match.rail`` if it has one, else ``"sensitive data"``). :func:`build_guard` plugs in
:class:`rails.inline.HoldBack` per ``[guardrails.inline]`` (on by default). For single-choice content frames the guard
holds the *whole frame* while the filter holds an open tail and then sends the original bytes when the filter changed
nothing (so clean traffic stays byte-exact), or the frames rewritten with the released text when it redacted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import orjson
from opentelemetry import trace

from rails import metrics
from rails.blocked import DONE_FRAME, blocked_frames, sse_frame
from rails.chunker import ChunkBatch, RollingChunker
from rails.engine_local import CheckResult, LocalEngine, RailError
from rails.guardrails_config import LoadedRails, load_guardrails_config
from rails.toolcalls import ToolCallAssembler
from sidecar.config import ConfigError
from sidecar.guard import Exchange, GuardRejected, Refusal, StreamSink

log = logging.getLogger("railcar.rails")
_tracer = trace.get_tracer("railcar.rails")

__all__ = ["RailsGuard", "RailsStreamGuard", "TextFilter", "build_guard", "DEFAULT_REFUSAL"]

DEFAULT_REFUSAL = "I'm sorry, I can't respond to that."
_NEMO_TYPE = {"input": "input", "tool_output": "input", "output": "output", "tool_input": "output"}
_META_KEYS = ("id", "created", "model", "object", "system_fingerprint")
_LOG_KEYS = ("activated_rails", "llm_calls", "internal_events", "colang_history", "stats")


class TextFilter(Protocol):
    """Inline hold-back over a text stream (issue 8). ``feed`` returns the text safe to release now and a match
    object (or ``None``); ``flush`` releases what is left at the end. The identity filter releases everything."""

    def feed(self, text: str) -> tuple[str, Any | None]: ...

    def flush(self) -> tuple[str, Any | None]: ...


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the ``text`` parts of a content-part list (images etc. skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _conversation(messages: list[Any]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"):
            text = _text_of(m.get("content"))
            if text or m["role"] == "user":
                out.append({"role": m["role"], "content": text})
    return out


def _last_user(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


class RailsGuard:
    """The :class:`sidecar.guard.Guard` backed by a guardrail config.

    ``settings`` is the ``[guardrails]`` section, ``loaded`` the :class:`LoadedRails`, ``engine`` a
    :class:`LocalEngine` or :class:`rails.engine_remote.RemoteEngine` (anything with ``async check(kind,
    messages) -> CheckResult``, ``mode``, ``warm()``, ``close()``). ``filter_factory`` builds the issue-8 inline
    filter (``None``: identity). ``ready`` turns true after :meth:`warm`.
    """

    def __init__(self, settings: Any, loaded: LoadedRails, engine: Any,
                 filter_factory: Callable[[], TextFilter] | None = None) -> None:
        self.settings = settings
        self.loaded = loaded
        self.engine = engine
        self.filter_factory = filter_factory
        self.ready = False
        st = loaded.streaming
        self.chunk_size = max(1, st.chunk_size)
        self.context_size = max(0, st.context_size)
        self.stream_first = st.stream_first
        self._timeout = (settings.remote.timeout_millis if engine.mode == "remote"
                         else settings.local_timeout_millis) / 1000.0
        self._flows = {"input": loaded.input_flows, "output": loaded.output_flows}

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def warm(self) -> None:
        """Warm the engine (first checks compile and connect); failures are logged, not raised."""
        try:
            await self.engine.warm()
        except Exception as exc:  # a judge model not up yet must not keep the sidecar from starting
            log.warning("guardrails warm-up failed (%s: %s); the first requests will pay for it",
                        type(exc).__name__, exc)
        self.ready = True

    async def close(self) -> None:
        await self.engine.close()

    def enabled(self, kind: str) -> bool:
        """Whether rails of ``kind`` run: the ``[guardrails]`` switch is on and the config has flows for it."""
        return bool(getattr(self.settings, kind)) and bool(self._flows[_NEMO_TYPE[kind]])

    # -- one check -------------------------------------------------------------------------------------------
    async def run_check(self, exchange: Exchange, kind: str, messages: list[dict[str, Any]]) -> CheckResult:
        """Run one check of ``kind`` with spans, metrics, ``fail_mode`` and the exchange's outcome bookkeeping.

        Returns the :class:`CheckResult`; an engine error or timeout becomes a ``blocked`` result (fail_mode
        closed, rail ``"<kind> (error)"``) or a ``passed`` one (open). Never raises for rail failures."""
        out = exchange.outcome
        t0 = time.perf_counter()
        with _tracer.start_as_current_span(f"guardrails.check {kind}") as span:
            span.set_attribute("railcar.rail.kind", kind)
            span.set_attribute("railcar.rail.mode", self.engine.mode)
            error = None
            try:
                async with asyncio.timeout(self._timeout):
                    res = await self.engine.check(_NEMO_TYPE[kind], messages)
            except Exception as exc:  # RailError, TimeoutError, engine bugs: fail_mode covers every rail failure
                if isinstance(exc, TimeoutError):
                    error = f"timed out after {self._timeout * 1000:.0f} ms"
                else:
                    error = f"{type(exc).__name__}: {exc}"
                    span.record_exception(exc)
                if self.settings.fail_mode == "closed":
                    res = CheckResult("blocked", f"{kind} (error)", DEFAULT_REFUSAL)
                else:
                    res = CheckResult("passed", None, "")
                log.warning("%s rails failed (%s); fail_mode=%s", kind, error, self.settings.fail_mode)
                out.setdefault("rail_errors", []).append({"kind": kind, "error": error})
            dt = time.perf_counter() - t0
            outcome = "error" if error else ("blocked" if res.blocked else "passed")
            names = [res.rail] if res.blocked and res.rail else list(self._flows[_NEMO_TYPE[kind]])
            span.set_attribute("railcar.rail.name", ", ".join(names))
            span.set_attribute("railcar.rail.outcome", outcome)
            span.set_attribute("railcar.rail.duration_ms", dt * 1000)
        for n in names:
            metrics.record_check(n, kind, outcome, self.engine.mode, dt)
        activated = out.setdefault("activated_rails", [])
        for n in names:
            if n not in activated:
                activated.append(n)
        out.setdefault("rail_log", []).append({
            "type": kind, "name": ", ".join(names), "decisions": [outcome], "stop": res.blocked,
            "duration": dt, "error": error})
        return res

    # -- request ---------------------------------------------------------------------------------------------
    async def check_request(self, exchange: Exchange) -> Refusal | None:
        """Input rails on the conversation, tool_output rails on new ``role: "tool"`` messages.

        Raises :class:`GuardRejected` (400) for a streaming request against output rails with streaming disabled,
        or for a malformed ``guardrails`` request field (the message names the field)."""
        out = exchange.outcome
        out.setdefault("activated_rails", [])
        out.setdefault("blocked", False)
        out.setdefault("blocked_rail", None)
        _validate_options(exchange.guardrails_options)
        if exchange.stream and self.enabled("output") and not self.loaded.streaming.enabled:
            raise GuardRejected(
                400, "This guardrail configuration has output rails with streaming disabled; set "
                     "rails.output.streaming.enabled=true in it, or send the request with stream=false.",
                param="stream", code="streaming_not_enabled")
        messages = exchange.body.get("messages")
        if not isinstance(messages, list):
            return None  # the proxy validates the body; nothing to judge here
        if self.enabled("input"):
            conv = _conversation(messages)
            if any(m["role"] == "user" and m["content"] for m in conv):
                res = await self.run_check(exchange, "input", conv)
                if res.blocked:
                    return self._refuse(exchange, res)
        if self.enabled("tool_output"):
            # Only the tool results since the model's last turn are new in this request.
            last_assistant = max((i for i, m in enumerate(messages)
                                  if isinstance(m, dict) and m.get("role") == "assistant"), default=-1)
            for m in messages[last_assistant + 1:]:
                if isinstance(m, dict) and m.get("role") == "tool":
                    text = _text_of(m.get("content"))
                    if text:
                        res = await self.run_check(exchange, "tool_output", [{"role": "user", "content": text}])
                        if res.blocked:
                            return self._refuse(exchange, res)
        return None

    def _refuse(self, exchange: Exchange, res: CheckResult) -> Refusal:
        rail = res.rail or "input"
        exchange.outcome.update(blocked=True, blocked_rail=rail)
        metrics.BLOCKED_REQUESTS.labels(rail).inc()
        return Refusal(rail, res.content or DEFAULT_REFUSAL)

    # -- non-streaming response ------------------------------------------------------------------------------
    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        """Output rails on each choice's whole message, tool_input rails on its tool calls, the inline filter, and
        ``guardrails_data``. Returns the body to send instead, or ``None`` to relay the upstream bytes."""
        changed = False
        choices = body.get("choices")
        user = _last_user(exchange.body.get("messages") or [])
        for choice in choices if isinstance(choices, list) else []:
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                continue
            blocked: CheckResult | None = None
            content = msg.get("content")
            if isinstance(content, str) and content and self.filter_factory is not None:
                f = self.filter_factory()
                a, m1 = f.feed(content)
                b, m2 = f.flush()
                if m1 is not None or m2 is not None:
                    blocked = CheckResult("blocked", _match_rail(m1 or m2), DEFAULT_REFUSAL)
                elif a + b != content:
                    msg["content"] = content = a + b
                    changed = True
            if blocked is None and isinstance(content, str) and content and self.enabled("output"):
                res = await self.run_check(exchange, "output", [{"role": "user", "content": user},
                                                                {"role": "assistant", "content": content}])
                blocked = res if res.blocked else None
            calls = msg.get("tool_calls")
            if blocked is None and isinstance(calls, list) and self.enabled("tool_input"):
                for call in calls:
                    args = ((call or {}).get("function") or {}).get("arguments")
                    if isinstance(args, str) and args:
                        res = await self.run_check(exchange, "tool_input", [{"role": "user", "content": user},
                                                                            {"role": "assistant", "content": args}])
                        if res.blocked:
                            blocked = res
                            break
            if blocked is not None:
                rail = blocked.rail or "output"
                msg["content"] = blocked.content or DEFAULT_REFUSAL
                msg.pop("tool_calls", None)
                msg.pop("function_call", None)
                choice["finish_reason"] = "content_filter"
                exchange.outcome.update(blocked=True, blocked_rail=rail)
                metrics.BLOCKED_STREAMS.labels(rail).inc()
                changed = True
        data = self.guardrails_data(exchange)
        if data is not None:
            if (exchange.guardrails_options or {}).get("return_choice"):
                n = len(choices) if isinstance(choices, list) else 0
                body.setdefault("choices", []).append({
                    "index": n, "message": {"role": "guardrails_data", "content": orjson.dumps(data).decode()},
                    "finish_reason": "stop"})
            else:
                body["guardrails_data"] = data
            changed = True
        return body if changed else None

    def guardrails_data(self, exchange: Exchange) -> dict[str, Any] | None:
        """The response's ``guardrails_data`` for the request's ``guardrails.options.log`` flags, or ``None`` when
        none is asked for. ``activated_rails`` lists each check (type, name, decisions, stop, duration in s);
        ``stats`` the time spent per rail kind; ``llm_calls``/``internal_events``/``colang_history`` are empty
        because checks (unlike LLMRails generation) do not record them."""
        opts = exchange.guardrails_options or {}
        flags = ((opts.get("options") or {}).get("log") or {})
        if not any(flags.get(k) for k in _LOG_KEYS) and not opts.get("return_choice"):
            return None
        rlog = exchange.outcome.get("rail_log", [])
        logd: dict[str, Any] = {}
        if flags.get("activated_rails"):
            logd["activated_rails"] = rlog
        if flags.get("llm_calls"):
            logd["llm_calls"] = []
        if flags.get("internal_events"):
            logd["internal_events"] = []
        if flags.get("colang_history"):
            logd["colang_history"] = ""
        if flags.get("stats"):
            stats: dict[str, float] = {}
            for r in rlog:
                key = f"{r['type']}_rails_duration"
                stats[key] = stats.get(key, 0.0) + r["duration"]
            stats["total_rails_duration"] = sum(r["duration"] for r in rlog)
            stats["rail_checks"] = len(rlog)
            logd["stats"] = stats
        return {"log": logd, "blocked": bool(exchange.outcome.get("blocked")),
                "blocked_rail": exchange.outcome.get("blocked_rail")}

    # -- streaming -------------------------------------------------------------------------------------------
    def open_stream(self, exchange: Exchange, sink: StreamSink,
                    abort: Callable[[], Any] | None = None) -> "RailsStreamGuard":
        """A :class:`RailsStreamGuard` for one streamed response; ``abort`` (optional) is called once when a
        block happens, possibly between upstream events, so the proxy can close the upstream at once."""
        return RailsStreamGuard(self, exchange, sink, abort)


def _validate_options(opts: Any) -> None:
    if opts is None:
        return
    if not isinstance(opts, dict):
        raise GuardRejected(400, "guardrails: must be an object", param="guardrails")
    o = opts.get("options", {})
    if not isinstance(o, dict):
        raise GuardRejected(400, "guardrails.options: must be an object", param="guardrails.options")
    lg = o.get("log", {})
    if not isinstance(lg, dict):
        raise GuardRejected(400, "guardrails.options.log: must be an object", param="guardrails.options.log")
    for k, v in lg.items():
        if k in _LOG_KEYS and not isinstance(v, bool):
            raise GuardRejected(400, f"guardrails.options.log.{k}: must be a boolean",
                                param=f"guardrails.options.log.{k}")
    if not isinstance(opts.get("return_choice", False), bool):
        raise GuardRejected(400, "guardrails.return_choice: must be a boolean", param="guardrails.return_choice")


def _template(data: bytes, obj: dict, content: str, ci: int) -> tuple[bytes, bytes, int, int] | None:
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


def _held(f: Any) -> bool:
    """Whether a text filter holds characters back now (filters without a ``held`` attribute never do)."""
    return bool(getattr(f, "held", ""))


def _match_rail(match: Any) -> str:
    return getattr(match, "rail", None) or "sensitive data"


@dataclass
class _Choice:
    chunker: RollingChunker
    filter: TextFilter | None
    tools: ToolCallAssembler = field(default_factory=ToolCallAssembler)
    tool_filters: dict[int, TextFilter] = field(default_factory=dict)
    checked: int = 0          # deltas covered by a passed chunk check
    finished: bool = False    # finish_reason seen
    # Issue 8: whole frames held while the inline filter holds an open tail, so that a stream the filter leaves
    # unchanged is relayed byte for byte. ``pend_in``/``pend_out``: their content in and as released so far.
    pending: list[tuple[bytes, dict]] = field(default_factory=list)
    pend_in: str = ""
    pend_out: str = ""


class RailsStreamGuard:
    """Guards one streamed response (:class:`sidecar.guard.StreamGuard`).

    ``stopped`` turns true on a block (after the error chunk and ``[DONE]`` went to the sink); ``stop_event``
    (an :class:`asyncio.Event`) is set at the same moment and ``abort`` is called, so the proxy can stop reading
    the upstream even while it waits for the next upstream event. Frames go to the sink in upstream order, except
    that with ``stream_first`` content frames never wait behind held tool-call frames.
    """

    def __init__(self, guard: RailsGuard, exchange: Exchange, sink: StreamSink,
                 abort: Callable[[], Any] | None = None) -> None:
        self.guard = guard
        self.exchange = exchange
        self.sink = sink
        self.abort = abort
        self.stopped = False
        self.stop_event = asyncio.Event()
        self._choices: dict[int, _Choice] = {}
        self._queue: deque[tuple[bytes, tuple, frozenset]] = deque()  # (frame, text gates, tool gates)
        self._approved: set[tuple[int, int]] = set()
        self._inflight: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._ended = False
        self._meta: dict[str, Any] = {}
        self._meta_missing: tuple[str, ...] = _META_KEYS  # stream-level keys not seen yet (for synthesized frames)
        # on_events' frame template (see _template) and how many more times one may be derived in this stream.
        self._tpl: tuple[bytes, bytes, int, int] | None = None
        self._tpl_tries = 8
        self._user = _last_user(exchange.body.get("messages") or [])
        self._check_output = guard.enabled("output")
        self._check_tools = guard.enabled("tool_input")
        exchange.outcome.setdefault("activated_rails", [])
        exchange.outcome.setdefault("blocked", False)
        exchange.outcome.setdefault("blocked_rail", None)

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

    def _gates_open(self, text_gates: tuple, tool_gates: frozenset) -> bool:
        for ci, seq in text_gates:
            if self._choices[ci].checked < seq:
                return False
        return tool_gates <= self._approved

    async def _emit(self, frame: bytes, text_gates: tuple = (), tool_gates: frozenset = frozenset()) -> None:
        """Send ``frame`` now, or queue it behind earlier held frames / until its gates open."""
        if not self._queue and self._gates_open(text_gates, tool_gates):
            await self._send(frame)
        else:
            self._queue.append((frame, text_gates, tool_gates))

    async def _release(self) -> None:
        while self._queue and not self.stopped and self._gates_open(self._queue[0][1], self._queue[0][2]):
            await self._send(self._queue.popleft()[0])

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
        self.exchange.outcome.update(blocked=True, blocked_rail=rail)
        metrics.BLOCKED_STREAMS.labels(rail).inc()
        self.stop_event.set()
        if self.abort is not None:
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
        self._inflight = asyncio.create_task(self._check_batch(ci, batch))

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
            st = self._choices[ci] = _Choice(RollingChunker(g.chunk_size, g.context_size),
                                             g.filter_factory() if g.filter_factory else None)
        return st

    # -- events ----------------------------------------------------------------------------------------------
    async def on_event(self, raw: bytes, data: bytes | None) -> None:
        """One upstream SSE event (see :class:`sidecar.guard.StreamGuard`)."""
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

    async def on_events(self, events: list[tuple[bytes, bytes | None]]) -> int:
        """A batch of consecutive upstream SSE events (one upstream read), ``(raw, data)`` as for :meth:`on_event`.

        The effect is exactly that of :meth:`on_event` called for each event in order (same frames, same order,
        same chunk checks at the same deltas, same blocks); only the per-event overhead is cut. Returns how many
        events were handled: ``len(events)``, or fewer when the stream stopped (a block) part-way, counting the
        event whose handling blocked.

        Fast path: a run of *simple* content frames (one choice, a non-empty string ``delta.content``, no tool
        calls, no ``finish_reason``) whose deltas the inline filter releases whole (``InlineFilter.pass_through``:
        one RE2 pass per delta) is relayed as the original bytes, joined into one ``send``, with the chunker fed
        per delta and a chunk check submitted right after the frame that completes it (the frames before it are
        sent first, as :meth:`on_event` does). Everything else goes through :meth:`on_event`'s code."""
        run: list[tuple] = []  # simple frames of one choice not handled yet: (raw, content, obj or None, data)
        run_st: _Choice | None = None
        run_ci = run_at = 0
        tpl = self._tpl
        for i, (raw, data) in enumerate(events):
            if self.stopped:
                return i
            if data is not None and data[:1] == b"{":
                if tpl is not None and data.startswith(tpl[0]) and data.endswith(tpl[1]) and len(data) > tpl[2]:
                    # Same bytes as the template frame around its content string: only that token is parsed.
                    try:
                        content = orjson.loads(data[len(tpl[0]):len(data) - len(tpl[1])])
                    except orjson.JSONDecodeError:
                        content = None
                    if type(content) is str and content:
                        st = self._choices[tpl[3]]
                        if not st.finished and not st.pending:
                            if run and tpl[3] != run_ci:
                                done = await self._run(run, run_st, run_ci)
                                if self.stopped:
                                    return run_at + done
                                run = []
                            if not run:
                                run_at = i
                            run.append((raw, content, None, data))  # meta: the template frame's, taken already
                            run_st, run_ci = st, tpl[3]
                            continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    obj = None
                content, ci = None, 0
                if type(obj) is dict:
                    choices = obj.get("choices")
                    if type(choices) is list and len(choices) == 1:
                        c = choices[0]
                        if type(c) is dict and c.get("finish_reason") is None:
                            delta = c.get("delta")
                            if type(delta) is dict and not delta.get("tool_calls"):
                                content = delta.get("content")
                                ci = c.get("index", 0)
                if type(content) is str and content and type(ci) is int:
                    st = self._choices.get(ci)
                    if st is None:
                        st = self._state(ci)
                    if not st.finished and not st.pending:
                        if run and ci != run_ci:
                            done = await self._run(run, run_st, run_ci)
                            if self.stopped:
                                return run_at + done
                            run = []
                        if not run:
                            run_at = i
                        if self._meta_missing:
                            self._take_meta(obj)
                        run.append((raw, content, obj, data))
                        run_st, run_ci = st, ci
                        if self._tpl_tries:
                            self._tpl_tries -= 1
                            tpl = self._tpl = _template(data, obj, content, ci) or tpl
                        continue
                if run:
                    done = await self._run(run, run_st, run_ci)
                    if self.stopped:
                        return run_at + done
                    run = []
                if obj is None:
                    await self._emit(raw)  # not ours to judge; relay as is
                else:
                    await self._on_obj(raw, obj)
                continue
            if run:
                done = await self._run(run, run_st, run_ci)
                if self.stopped:
                    return run_at + done
                run = []
            await self.on_event(raw, data)
        if run:
            done = await self._run(run, run_st, run_ci)
            if self.stopped:
                return run_at + done
        return len(events)

    async def _run(self, run: list[tuple], st: _Choice, ci: int) -> int:
        """Handle a run of simple content frames of choice ``ci`` (see :meth:`on_events`); returns how many were
        handled (all unless the stream stopped, counting the frame whose handling blocked)."""
        f = st.filter
        if f is None:
            k = len(run)
        else:
            passer = getattr(f, "pass_through", None)
            k = passer([r[1] for r in run]) if passer is not None else 0
        if k:
            sf = self.guard.stream_first
            chunker = st.chunker if self._check_output else None
            out: list[bytes] = []
            queue = self._queue
            for n, (raw, content, _, _) in enumerate(run[:k], 1):
                if chunker is None:
                    if sf or not queue:
                        out.append(raw)
                    else:
                        queue.append((raw, (), frozenset()))
                    continue
                b = chunker.feed(content)
                if sf:
                    out.append(raw)  # stream_first: text never waits
                elif not queue and st.checked >= chunker.fed:
                    out.append(raw)
                else:
                    queue.append((raw, ((ci, chunker.fed),), frozenset()))
                if b is not None:
                    if out:
                        await self._send(out[0] if len(out) == 1 else b"".join(out))
                        out = []
                    await self._submit(ci, b)
                    if self.stopped:
                        return n
            if out:
                await self._send(out[0] if len(out) == 1 else b"".join(out))
        for n, (raw, _, obj, data) in enumerate(run[k:], k + 1):
            await self._on_obj(raw, obj if obj is not None else orjson.loads(data))
            if self.stopped:
                return n
        return len(run)

    def _take_meta(self, obj: dict) -> None:
        missing = []
        for k in self._meta_missing:
            if k in obj:
                self._meta[k] = obj[k]
            else:
                missing.append(k)
        self._meta_missing = tuple(missing)

    async def _on_obj(self, raw: bytes, obj: Any) -> None:
        """One parsed upstream JSON event ``obj`` with its exact bytes ``raw``."""
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not choices:
            await self._emit(raw)
            return
        if self._meta_missing:
            self._take_meta(obj)

        modified = False
        override: list[bytes] | None = None  # frames to send instead of this one (frame-level hold)
        text_gates: list[tuple[int, int]] = []
        tool_gates: set[tuple[int, int]] = set()
        batches: list[tuple[int, ChunkBatch]] = []
        completed: list[tuple[int, list[int]]] = []
        pre_frames: list[tuple[bytes, tuple]] = []
        has_content = False  # some choice's delta carries content (stream_first sends such frames at once)
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            ci = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            delta = choice.get("delta")
            st = self._state(ci)
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    text = content
                    if st.filter is not None:
                        text, match = st.filter.feed(content)
                        if match is not None:
                            await self._block(_match_rail(match))
                            return
                        if len(choices) == 1 and not delta.get("tool_calls") and choice.get("finish_reason") is None:
                            # Frame-level hold: the frame waits whole while a tail is open, then goes out unchanged
                            # (or rewritten when the filter redacted).
                            st.pend_in += content
                            st.pend_out += text
                            st.pending.append((raw, obj))
                            override = [] if _held(st.filter) else self._resolve_pending(st)
                        elif text != content:
                            delta["content"] = text
                            modified = True
                elif isinstance(content, list):
                    text = _text_of(content)  # content-part deltas (Mistral): judged, never rewritten
                else:
                    text = ""
                if text and self._check_output:
                    b = st.chunker.feed(text)
                    if b is not None:
                        batches.append((ci, b))
                    if not self.guard.stream_first:
                        text_gates.append((ci, st.chunker.fed))
                tcs = delta.get("tool_calls")
                if isinstance(tcs, list) and tcs:
                    try:
                        done = st.tools.feed(tcs)
                    except ValueError:
                        done = []  # malformed entry: relay it; the client will judge
                    for entry in tcs:
                        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int):
                            continue
                        tool_gates.add((ci, entry["index"]))
                        fn = entry.get("function")
                        frag = fn.get("arguments") if isinstance(fn, dict) else None
                        if isinstance(frag, str) and frag and self.guard.filter_factory is not None:
                            tf = st.tool_filters.setdefault(entry["index"], self.guard.filter_factory())
                            rel, match = tf.feed(frag)
                            if match is None and entry["index"] in done:
                                more, match = tf.flush()
                                rel += more
                            if match is not None:
                                await self._block(_match_rail(match))
                                return
                            if rel != frag:
                                fn["arguments"] = rel
                                modified = True
                    if done:
                        completed.append((ci, done))
                if delta.get("content"):  # after the filter may have rewritten it
                    has_content = True
            if choice.get("finish_reason") is not None and not st.finished:
                st.finished = True
                # The choice is over: release what the filter held, cut the last chunk, complete open tool calls.
                extra = await self._flush_choice(ci, st, batches)
                if extra is None:
                    return
                pre_frames.extend(extra)
                open_calls = st.tools.finish()
                if open_calls:
                    completed.append((ci, open_calls))
                    for idx in open_calls:
                        tool_gates.add((ci, idx))

        frames = [raw if not modified else sse_frame(obj)] if override is None else override
        for pf, gates in pre_frames:
            await self._emit(pf, gates)
        if self.guard.stream_first and not tool_gates and not pre_frames and has_content:
            for frame in frames:
                await self._send(frame)  # stream_first: text never waits, not even behind held tool calls
        else:
            for frame in frames:
                await self._emit(frame, tuple(text_gates), frozenset(tool_gates))
        for ci, b in batches:
            await self._submit(ci, b)
            if self.stopped:
                return
        for ci, idx in completed:
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

    async def _flush_choice(self, ci: int, st: _Choice, batches: list) -> list[tuple[bytes, tuple]] | None:
        """End of one choice's content: flush its filter (a synthesized content frame, with its text gate, if text
        was held back) and cut the final chunk into ``batches``. ``None`` when the flush matched (blocked)."""
        frames: list[tuple[bytes, tuple]] = []
        if st.filter is not None:
            text, match = st.filter.flush()
            if match is not None:
                await self._block(_match_rail(match))
                return None
            if st.pending:
                st.pend_out += text
                gates0: tuple = ()
                if text and self._check_output:
                    b = st.chunker.feed(text)
                    if b is not None:
                        batches.append((ci, b))
                    if not self.guard.stream_first:
                        gates0 = ((ci, st.chunker.fed),)
                frames.extend((f, gates0) for f in self._resolve_pending(st))
            elif text:
                gates: tuple = ()
                if self._check_output:
                    b = st.chunker.feed(text)
                    if b is not None:
                        batches.append((ci, b))
                    if not self.guard.stream_first:
                        gates = ((ci, st.chunker.fed),)
                frames.append((sse_frame({**self._meta, "choices": [
                    {"index": ci, "delta": {"content": text}, "finish_reason": None}]}), gates))
        if self._check_output:
            b = st.chunker.finish()
            if b is not None:
                batches.append((ci, b))
        return frames

    async def _finish(self, done_raw: bytes | None) -> None:
        if self._ended:
            return
        self._ended = True
        for ci, st in list(self._choices.items()):
            if self.stopped:
                return
            if not st.finished:
                st.finished = True
                batches: list = []
                extra = await self._flush_choice(ci, st, batches)
                if extra is None:
                    return
                for f, gates in extra:
                    await self._emit(f, gates)
                for _, b in batches:
                    await self._submit(ci, b)
                open_calls = st.tools.finish()
                if open_calls:
                    await self._check_tools_done(ci, open_calls)
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

    def _data_chunk(self, data: dict[str, Any]) -> dict[str, Any]:
        base = {k: self._meta[k] for k in ("id", "created", "model") if k in self._meta}
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

    async def on_end(self) -> None:
        """The upstream ended: run the end-of-stream checks and release what passed (no ``[DONE]`` is invented
        when the upstream did not send one). Idempotent."""
        try:
            await self._finish(None)
        except (ConnectionError, OSError) as exc:  # the client went away while we released the tail
            log.debug("stream ended with the client gone: %s", exc)
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()


async def build_guard(config: Any) -> RailsGuard | None:
    """Build and warm the guard for ``config`` (a :class:`sidecar.config.RailcarConfig`).

    Returns ``None`` when ``[guardrails]`` names no config (pass-through). Raises
    :class:`sidecar.config.ConfigError` for a missing/invalid guardrail config or a policy ``error``."""
    gs = config.guardrails
    if not gs.loaded:
        return None
    loaded = load_guardrails_config(gs)
    if gs.mode == "remote":
        from rails.engine_remote import RemoteEngine

        ids = list(gs.remote.config_ids) or ([gs.remote.config_id] if gs.remote.config_id else [])
        engine: Any = RemoteEngine(gs.remote.endpoint, ids, gs.remote.timeout_millis, dict(gs.request_defaults))
    else:
        engine = LocalEngine(loaded)
    # Issue 8: the inline hold-back of catalog values ([guardrails.inline]), on by default with a guardrail config.
    from rails.inline import holdback_from_config

    detection = getattr(config, "detection", None)
    try:
        holdback = holdback_from_config(gs, detection) if detection is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    guard = RailsGuard(gs, loaded, engine, filter_factory=holdback)
    await guard.warm()
    log.info("guardrails ready: %s mode, engine %s, config %s", engine.mode, engine.engine, loaded.source)
    return guard
