"""The rails guard: NeMo Guardrails input, tool and output rails and the inline hold-back around one model call, on
every wire API (the codecs of :mod:`railcar.codecs`).

:func:`build_guard` turns ``[guardrails]`` (:class:`railcar.rails.settings.GuardrailsConfig`) into a :class:`RailsGuard`
implementing :class:`railcar.core.guard.Guard`; ``None`` only for ``config_path = "none"`` (the proxy then passes
through).

Rail kinds and what runs them (the guardrail config's flows, through :mod:`railcar.rails.engine_local` or
:mod:`railcar.rails.engine_remote`):

=============  ==================================================  ======================
Railcar kind   checks                                              NeMo rail type run
=============  ==================================================  ======================
input          every input turn of the request, each judged once   ``input``
tool_output    every tool result turn, each judged once            ``input`` (untrusted text coming in)
output         the answer; chunked when streaming                  ``output``
tool_input     each tool call's complete arguments                 ``output`` (text the model produced)
=============  ==================================================  ======================

Requests and non-streamed answers follow the one policy of :mod:`railcar.rails.codec_guard` over the exchange's
codec (``CODECS[exchange.api]``); turns already judged are looked up in :class:`railcar.rails.turn_cache.TurnCache`.
Streaming responses are guarded by :class:`railcar.rails.stream_guard.RailsStreamGuard` (:meth:`RailsGuard.open_stream`):
chunked output rails, tool-call holds and the issue-8 inline filter (:class:`railcar.rails.stream_guard.TextFilter`;
:func:`build_guard` plugs in :class:`railcar.rails.inline.HoldBack` per ``[guardrails.inline]``, on by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from railcar.codecs.registry import CODECS
from railcar.core import eager
from railcar.core.config import ConfigError, Problem
from railcar.core.exchange import Exchange
from railcar.core.guard import GuardRejected, Refusal, StreamSink
from railcar.rails import metrics
from railcar.rails.codec_guard import DEFAULT_REFUSAL, guard_body, guard_request
from railcar.rails.codec_stream import CodecStreamGuard
from railcar.rails.engine_local import CheckResult, LocalEngine
from railcar.rails.engine_remote import RemoteEngine
from railcar.rails.guardrails_config import LoadedRails, describe_config_error, load_guardrails_config
from railcar.rails.inline import holdback_from_config
from railcar.rails.settings import GuardrailsConfig, RailsSettings
from railcar.rails.stream_guard import RailsStreamGuard, TextFilter
from railcar.rails.turn_cache import TurnCache

log = logging.getLogger("railcar.rails")
_tracer = trace.get_tracer("railcar.rails")

__all__ = ["RailsGuard", "RailsStreamGuard", "TextFilter", "build_guard", "DEFAULT_REFUSAL"]

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

    inspects = True  # what cannot be parsed is refused, never relayed unchecked

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
        self.turn_cache = TurnCache()
        # Model-free local IORails checks run start to finish without a task (no asyncio.timeout, no admission
        # queue once warm): the relay may step the stream guard in the upstream socket's callback. A remote or
        # LLMRails engine (no model_free) uses task-bound timeouts, so its streams stay in the relay's task.
        self.steps_in_callback = bool(getattr(engine, "model_free", False))

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
        """The :class:`CheckResult` of :meth:`check_once`."""
        return (await self.check_once(exchange, kind, messages))[0]

    async def check_once(self, exchange: Exchange, kind: str,
                         messages: list[dict[str, Any]]) -> tuple[CheckResult, bool]:
        """Run one check of ``kind`` with spans, metrics, ``fail_mode`` and the exchange's outcome bookkeeping.

        Returns ``(result, failed)``: an engine error or timeout (``failed`` true) becomes a ``blocked`` result
        (fail_mode closed, rail ``"<kind> (error)"``) or a ``passed`` one (open). Never raises for rail failures.

        Cheap when nothing needs more: the child span (``guardrails.check <kind>``, made current around the engine
        call so remote span events land on it) only when the tracer records; the timeout only if the engine
        check suspends (:func:`railcar.core.eager.run_bounded`; a local model-free check runs to completion in one step
        and could not be interrupted anyway); metric children cached per label set."""
        t0 = time.perf_counter()
        span = _tracer.start_span(f"guardrails.check {kind}")
        if not span.is_recording():
            res, error = await self._judge(kind, messages, None)
            return self._account(exchange, kind, res, error, time.perf_counter() - t0, None), error is not None
        with trace.use_span(span, end_on_exit=True):
            span.set_attribute("railcar.rail.kind", kind)
            span.set_attribute("railcar.rail.mode", self.engine.mode)
            res, error = await self._judge(kind, messages, span)
            return self._account(exchange, kind, res, error, time.perf_counter() - t0, span), error is not None

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
        """The request policy of :func:`railcar.rails.codec_guard.guard_request` over the exchange's codec
        (``CODECS[exchange.api]``): catalog secrets in every request string redacted (or refused) per
        ``[guardrails.inline] request_action``, then input rails on every input turn and tool_output rails on every
        tool result, each distinct turn judged once (:attr:`turn_cache`).

        Raises :class:`GuardRejected` (400) for a streaming request against output rails with streaming disabled,
        or for a malformed ``guardrails`` request field (the message names the field); ``KeyError`` for an
        ``exchange.api`` that names no codec."""
        _validate_options(exchange.guardrails_options)
        codec = CODECS[exchange.api]
        if exchange.stream and self.enabled("output") and not self.loaded.streaming.enabled:
            raise GuardRejected(
                400, "This guardrail configuration has output rails with streaming disabled; set "
                     "rails.output.streaming.enabled=true in it, or send the request with stream=false.",
                param="stream", code="streaming_not_enabled")
        return await guard_request(self, exchange, codec)

    # -- non-streaming response ------------------------------------------------------------------------------
    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        """The whole-answer policy of :func:`railcar.rails.codec_guard.guard_body` over the exchange's codec: the
        inline hold-back on every string of ``body`` (JSON-escaped text and logprobs token runs included), output
        rails on the answer text, tool_input rails on each tool call's arguments, and ``guardrails_data``. Chat
        answers are judged choice by choice (a blocked choice becomes the refusal, ``finish_reason:
        content_filter``); other APIs as a whole (a block returns ``codec.refusal_body``, sent with
        ``codec.refusal_status``, and marks ``exchange.outcome`` blocked). Returns the body to send instead, or
        ``None`` to relay the upstream bytes; redaction notes go to ``exchange.outcome.redactions``."""
        return await guard_body(self, exchange, CODECS[exchange.api], body)

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
    def open_stream(self, exchange: Exchange, sink: StreamSink,
                    abort: Callable[[], Any]) -> RailsStreamGuard | CodecStreamGuard:
        """The stream guard of one streamed response: chat's fast :class:`RailsStreamGuard`, or the
        :class:`railcar.rails.codec_stream.CodecStreamGuard` over the codec of ``exchange.api`` for every other API.
        ``abort`` is called once when a block happens, possibly between upstream events, so the proxy can close the
        upstream at once."""
        if exchange.api != "openai_chat":
            return CodecStreamGuard(self, exchange, sink, abort, CODECS[exchange.api])
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

    Returns ``None`` only for ``guardrails.config_path = "none"`` (no rails: pass-through). Raises
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
