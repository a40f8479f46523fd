"""The rails guard: NeMo Guardrails input, tool and chunked streaming output rails around one chat completion.

:func:`build_guard` turns ``[guardrails]`` (:class:`railcar.rails.settings.GuardrailsConfig`) into a :class:`RailsGuard`
implementing :class:`railcar.core.guard.Guard`; ``None`` when no guardrail config is set (the proxy then passes through).

Rail kinds and what runs them (the guardrail config's flows, through :mod:`railcar.rails.engine_local` or
:mod:`railcar.rails.engine_remote`):

=============  ===========================================  ======================
Railcar kind   checks                                       NeMo rail type run
=============  ===========================================  ======================
input          the request's conversation (last user turn)  ``input``
tool_output    each new ``role: "tool"`` message            ``input`` (untrusted text coming in)
output         the answer; chunked when streaming           ``output``
tool_input     each tool call's complete arguments          ``output`` (text the model produced)
=============  ===========================================  ======================

Streaming responses are guarded by :class:`railcar.rails.stream_guard.RailsStreamGuard` (:meth:`RailsGuard.open_stream`):
chunked output rails, tool-call holds and the issue-8 inline filter (:class:`railcar.rails.stream_guard.TextFilter`;
:func:`build_guard` plugs in :class:`railcar.rails.inline.HoldBack` per ``[guardrails.inline]``, on by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from opentelemetry import trace

from railcar.core.config import ConfigError, Problem
from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import GuardRejected, Refusal, StreamSink
from railcar.rails import eager, metrics
from railcar.rails.engine_local import CheckResult, LocalEngine
from railcar.rails.engine_remote import RemoteEngine
from railcar.rails.guardrails_config import LoadedRails, describe_config_error, load_guardrails_config
from railcar.rails.inline import holdback_from_config
from railcar.rails.messages import conversation, last_user, text_of
from railcar.rails.settings import GuardrailsConfig, RailsSettings
from railcar.rails.stream_guard import FilterMatch, IdentityFilter, RailsStreamGuard, TextFilter, match_rail

log = logging.getLogger("railcar.rails")
_tracer = trace.get_tracer("railcar.rails")

__all__ = ["RailsGuard", "RailsStreamGuard", "TextFilter", "build_guard", "DEFAULT_REFUSAL"]

DEFAULT_REFUSAL = "I'm sorry, I can't respond to that."
_NEMO_TYPE = {"input": "input", "tool_output": "input", "output": "output", "tool_input": "output"}
_LOG_KEYS = ("activated_rails", "llm_calls", "internal_events", "colang_history", "stats")


class RailsGuard:
    """The :class:`railcar.core.guard.Guard` backed by a guardrail config.

    ``settings`` is the ``[guardrails]`` section, ``loaded`` the :class:`LoadedRails`, ``engine`` a
    :class:`LocalEngine` or :class:`railcar.rails.engine_remote.RemoteEngine` (anything with ``async check(kind,
    messages) -> CheckResult``, ``mode``, ``warm()``, ``close()``). ``filter_factory`` builds the issue-8 inline
    filter (``None``: :class:`railcar.rails.stream_guard.IdentityFilter`). ``ready`` turns true after :meth:`warm`.
    It is the :class:`railcar.rails.stream_guard.StreamRails` of the stream guards it opens.
    """

    def __init__(self, settings: GuardrailsConfig, loaded: LoadedRails, engine: Any,
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
        self._flows = {"input": tuple(loaded.input_flows), "output": tuple(loaded.output_flows)}

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
        """Close the engine (its workers or HTTP session)."""
        await self.engine.close()

    def enabled(self, kind: str) -> bool:
        """Whether rails of ``kind`` run: the ``[guardrails]`` switch is on and the config has flows for it."""
        return bool(getattr(self.settings, kind)) and bool(self._flows[_NEMO_TYPE[kind]])

    # -- one check -------------------------------------------------------------------------------------------
    async def run_check(self, exchange: Exchange, kind: str, messages: list[dict[str, Any]]) -> CheckResult:
        """Run one check of ``kind`` with spans, metrics, ``fail_mode`` and the exchange's outcome bookkeeping.

        Returns the :class:`CheckResult`; an engine error or timeout becomes a ``blocked`` result (fail_mode
        closed, rail ``"<kind> (error)"``) or a ``passed`` one (open). Never raises for rail failures.

        Cheap when nothing needs more: the child span (``guardrails.check <kind>``, made current around the engine
        call so remote span events land on it) only when the tracer records; the timeout only if the engine
        check suspends (:func:`railcar.rails.eager.run_bounded`; a local model-free check runs to completion in one step
        and could not be interrupted anyway); metric children cached per label set."""
        t0 = time.perf_counter()
        span = _tracer.start_span(f"guardrails.check {kind}")
        if not span.is_recording():
            res, error = await self._judge(kind, messages, None)
            return self._account(exchange, kind, res, error, time.perf_counter() - t0, None)
        with trace.use_span(span, end_on_exit=True):
            span.set_attribute("railcar.rail.kind", kind)
            span.set_attribute("railcar.rail.mode", self.engine.mode)
            res, error = await self._judge(kind, messages, span)
            return self._account(exchange, kind, res, error, time.perf_counter() - t0, span)

    async def _judge(self, kind: str, messages: list[dict[str, Any]], span: Any) -> tuple[CheckResult, str | None]:
        """The engine's verdict and ``None``, or the ``fail_mode`` verdict and the error text."""
        try:
            deadline = asyncio.get_running_loop().time() + self._timeout
            return await eager.run_bounded(self.engine.check(_NEMO_TYPE[kind], messages), deadline), None
        except Exception as exc:  # RailError, TimeoutError, engine bugs: fail_mode covers every rail failure
            if isinstance(exc, TimeoutError):
                error = f"timed out after {self._timeout * 1000:.0f} ms"
            else:
                error = f"{type(exc).__name__}: {exc}"
                if span is not None:
                    span.record_exception(exc)
            log.warning("%s rails failed (%s); fail_mode=%s", kind, error, self.settings.fail_mode)
            if self.settings.fail_mode == "closed":
                return CheckResult("blocked", f"{kind} (error)", DEFAULT_REFUSAL), error
            return CheckResult("passed", None, ""), error

    def _account(self, exchange: Exchange, kind: str, res: CheckResult, error: str | None, dt: float,
                 span: Any) -> CheckResult:
        """Record one check (``dt`` seconds): span attributes, metrics, the exchange's ``activated_rails`` /
        ``rail_log`` / ``rail_errors``; returns ``res``."""
        out = exchange.outcome
        outcome = "error" if error else ("blocked" if res.blocked else "passed")
        names = (res.rail,) if res.blocked and res.rail else self._flows[_NEMO_TYPE[kind]]
        name = ", ".join(names)
        if span is not None:
            span.set_attribute("railcar.rail.name", name)
            span.set_attribute("railcar.rail.outcome", outcome)
            span.set_attribute("railcar.rail.duration_ms", dt * 1000)
        for n in names:
            metrics.record_check(n, kind, outcome, self.engine.mode, dt)
        activated = out.activated_rails
        for n in names:
            if n not in activated:
                activated.append(n)
        if error:
            out.rail_errors.append({"kind": kind, "error": error})
        out.rail_log.append({
            "type": kind, "name": name, "decisions": [outcome], "stop": res.blocked, "duration": dt,
            "error": error})
        return res

    # -- request ---------------------------------------------------------------------------------------------
    async def check_request(self, exchange: Exchange) -> Refusal | None:
        """Input rails on the conversation, tool_output rails on new ``role: "tool"`` messages.

        Raises :class:`GuardRejected` (400) for a streaming request against output rails with streaming disabled,
        or for a malformed ``guardrails`` request field (the message names the field)."""
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
            conv = conversation(messages)
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
                    text = text_of(m.get("content"))
                    if text:
                        res = await self.run_check(exchange, "tool_output", [{"role": "user", "content": text}])
                        if res.blocked:
                            return self._refuse(exchange, res)
        return None

    def _refuse(self, exchange: Exchange, res: CheckResult) -> Refusal:
        rail = res.rail or "input"
        exchange.outcome.block(rail)
        metrics.BLOCKED_REQUESTS.labels(rail).inc()
        return Refusal(rail, res.content or DEFAULT_REFUSAL)

    # -- non-streaming response ------------------------------------------------------------------------------
    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        """The inline filter and output rails on each choice's whole message, the inline filter and tool_input rails
        on each of its tool calls' arguments (as for a stream), and ``guardrails_data``. Returns the body to send
        instead, or ``None`` to relay the upstream bytes. The notes of what the filter redacted in a choice that was
        not blocked go to ``exchange.outcome.redactions``."""
        changed = False
        choices = body.get("choices")
        user = last_user(exchange.body.get("messages") or [])
        for pos, choice in enumerate(choices if isinstance(choices, list) else []):
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict) and await self._check_choice(exchange, pos, choice, msg, user):
                changed = True
        if self._attach_guardrails_data(exchange, body, choices):
            changed = True
        return body if changed else None

    async def _check_choice(self, exchange: Exchange, pos: int, choice: dict[str, Any], msg: dict[str, Any],
                            user: str) -> bool:
        """One choice's ``message`` (``pos``: its place in ``choices``): content, then tool calls; a block replaces
        the message with the refusal. Returns whether the message was changed."""
        notes: list[RedactionNote] = []
        blocked: CheckResult | None = None
        changed = False
        content = msg.get("content")
        if isinstance(content, str) and content:
            text, match = self._filter_whole(content, f"$.choices[{pos}].message.content", notes)
            if match is not None:
                blocked = CheckResult("blocked", match_rail(match), DEFAULT_REFUSAL)
            elif text != content:
                msg["content"] = content = text
                changed = True
        if blocked is None and isinstance(content, str) and content and self.enabled("output"):
            res = await self.run_check(exchange, "output", [{"role": "user", "content": user},
                                                            {"role": "assistant", "content": content}])
            blocked = res if res.blocked else None
        calls = msg.get("tool_calls")
        if blocked is None and isinstance(calls, list):
            blocked, rewritten = await self._check_tool_calls(exchange, pos, calls, user, notes)
            changed = changed or rewritten
        if blocked is None:
            exchange.outcome.redactions.extend(notes)
            return changed
        self._block_choice(exchange, choice, msg, blocked)
        return True

    async def _check_tool_calls(self, exchange: Exchange, pos: int, calls: list[Any], user: str,
                                notes: list[RedactionNote]) -> tuple[CheckResult | None, bool]:
        """The arguments of each tool call of choice ``pos`` through the inline filter (as streamed arguments pass
        it) and the tool_input rails: ``(blocking result or None, whether an argument was rewritten)``."""
        changed = False
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            args = fn.get("arguments")
            if not isinstance(args, str) or not args:
                continue
            text, match = self._filter_whole(args, f"$.choices[{pos}].message.tool_calls[{j}].function.arguments",
                                             notes)
            if match is not None:
                return CheckResult("blocked", match_rail(match), DEFAULT_REFUSAL), changed
            if text != args:
                fn["arguments"] = args = text
                changed = True
            if self.enabled("tool_input"):
                res = await self.run_check(exchange, "tool_input", [{"role": "user", "content": user},
                                                                    {"role": "assistant", "content": args}])
                if res.blocked:
                    return res, changed
        return None, changed

    @staticmethod
    def _block_choice(exchange: Exchange, choice: dict[str, Any], msg: dict[str, Any], blocked: CheckResult) -> None:
        """Replace a blocked choice's message with the refusal (``finish_reason: content_filter``)."""
        rail = blocked.rail or "output"
        msg["content"] = blocked.content or DEFAULT_REFUSAL
        msg.pop("tool_calls", None)
        msg.pop("function_call", None)
        choice["finish_reason"] = "content_filter"
        exchange.outcome.block(rail)
        metrics.BLOCKED_STREAMS.labels(rail).inc()

    def _attach_guardrails_data(self, exchange: Exchange, body: dict[str, Any], choices: Any) -> bool:
        """Put the requested ``guardrails_data`` in ``body`` (as a field, or as an extra choice with
        ``return_choice``); whether there was any."""
        data = self.guardrails_data(exchange)
        if data is None:
            return False
        if (exchange.guardrails_options or {}).get("return_choice"):
            n = len(choices) if isinstance(choices, list) else 0
            body.setdefault("choices", []).append({
                "index": n, "message": {"role": "guardrails_data", "content": orjson.dumps(data).decode()},
                "finish_reason": "stop"})
        else:
            body["guardrails_data"] = data
        return True

    def _filter_whole(self, text: str, path: str, notes: list[RedactionNote]) -> tuple[str, FilterMatch | None]:
        """A fresh inline filter over one whole non-streamed ``text`` (at JSON ``path``): ``(text_out, None)``
        (redacted or unchanged; the notes of a redaction appended to ``notes`` with ``path``), or ``(text, match)``
        when the filter blocks."""
        f = (self.filter_factory or IdentityFilter)()
        released, match = f.feed(text)
        if match is None:
            rest, match = f.flush()
            released += rest
        if match is not None:
            return text, match
        notes.extend(replace(n, path=path) for n in f.notes)
        return released, None

    def guardrails_data(self, exchange: Exchange) -> dict[str, Any] | None:
        """The response's ``guardrails_data`` for the request's ``guardrails.options.log`` flags, or ``None`` when
        none is asked for. ``activated_rails`` lists each check (type, name, decisions, stop, duration in s);
        ``stats`` the time spent per rail kind; ``llm_calls``/``internal_events``/``colang_history`` are empty
        because checks (unlike LLMRails generation) do not record them."""
        opts = exchange.guardrails_options or {}
        flags = ((opts.get("options") or {}).get("log") or {})
        if not any(flags.get(k) for k in _LOG_KEYS) and not opts.get("return_choice"):
            return None
        rlog = exchange.outcome.rail_log
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
        return {"log": logd, "blocked": exchange.outcome.blocked, "blocked_rail": exchange.outcome.blocked_rail}

    # -- streaming -------------------------------------------------------------------------------------------
    def open_stream(self, exchange: Exchange, sink: StreamSink, abort: Callable[[], Any]) -> RailsStreamGuard:
        """A :class:`RailsStreamGuard` for one streamed response; ``abort`` is called once when a block happens,
        possibly between upstream events, so the proxy can close the upstream at once."""
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


def _local_engine(gs: GuardrailsConfig, loaded: LoadedRails) -> LocalEngine:
    """The in-process engine; NeMo Guardrails' ``ValueError`` while building it (its ``ConfigurationError`` for a
    flow that does not exist, a model engine it cannot set up) is the config's fault: a :class:`ConfigError` naming
    the setting, its message described without quoting the config (:func:`describe_config_error`)."""
    try:
        return LocalEngine(loaded)
    except ValueError as exc:
        key = "guardrails.config_inline" if gs.config_inline else "guardrails.config_path"
        raise ConfigError(Problem(key, f"the guardrail config does not load: {type(exc).__name__}: "
                                       f"{describe_config_error(exc)}").text()) from None


async def build_guard(config: RailsSettings) -> RailsGuard | None:
    """Build and warm the guard for ``config`` (the ``[guardrails]`` and ``[detection]`` sections, e.g. a
    :class:`railcar.settings.RailcarConfig`).

    Returns ``None`` when ``[guardrails]`` names no config (pass-through). Raises
    :class:`railcar.core.config.ConfigError` for a missing/invalid guardrail config, a policy ``error`` or a bad
    ``[detection]`` / ``[guardrails.inline]`` value."""
    gs = config.guardrails
    if not gs.loaded:
        return None
    loaded = load_guardrails_config(gs)
    engine: LocalEngine | RemoteEngine
    if gs.mode == "remote":
        ids = list(gs.remote.config_ids) or ([gs.remote.config_id] if gs.remote.config_id else [])
        engine = RemoteEngine(gs.remote.endpoint, ids, gs.remote.timeout_millis, dict(gs.request_defaults))
    else:
        engine = _local_engine(gs, loaded)
    # Issue 8: the inline hold-back of catalog values ([guardrails.inline]), on by default with a guardrail config.
    try:
        holdback = holdback_from_config(gs, config.detection)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    guard = RailsGuard(gs, loaded, engine, filter_factory=holdback)
    await guard.warm()
    log.info("guardrails ready: %s mode, engine %s, config %s", engine.mode, engine.engine, loaded.source)
    return guard
