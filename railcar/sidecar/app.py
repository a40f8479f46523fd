"""The sidecar's aiohttp application: routing, the guarded codec routes and the listed pass-through.

Routes (``../shared/DESIGN.md`` "Contracts"):

- Every path but the health ones is normalised once and routed (:mod:`railcar.sidecar.routes`): the canonical
  route of a codec (``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/messages``, ``/v1/completions``,
  ``/v1/embeddings``: :mod:`railcar.codecs.registry`), a ``server.passthrough_paths`` entry (default
  ``/v1/models``, ``/v1/models/*``; forwarded as is, counted on ``/metrics``), or a refusal in the caller's API shape
  (404 naming the path and the setting, 405 for a guarded route's other methods, 400 for a path with no single
  meaning). The upstream receives the canonical path.
- A guarded call (:class:`_Call`): parsed with orjson and validated by its codec (400 naming the field, 413 over
  ``server.max_body_bytes``, in that API's error shape), the request's ``guardrails`` field moved to
  ``Exchange.guardrails_options``, checked by the guard, forwarded (the client's original bytes unless the body
  changed), and the answer relayed through the guard: whole bodies parsed and checked (what is not a JSON object
  is replaced by a 502), SSE event by event as it arrives (a stream request answered without
  ``text/event-stream`` is a 502; an event over ``server.max_event_bytes`` ends the stream with the API's error).
- ``GET /healthz`` (process alive), ``GET /readyz`` (200 once a guard is installed and an upstream configured,
  503 before and while draining), ``GET /metrics`` (Prometheus text, see :mod:`railcar.sidecar.metrics`).

Application state lives in ``app["state"]`` (a :class:`SidecarState`); ``app["observers"]`` is the list of
:class:`railcar.core.guard.ExchangeObserver` told about each finished guarded exchange (empty by default;
append to it before the app starts). No request or response content is ever logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from railcar.codecs.base import Codec
from railcar.codecs.registry import CODECS
from railcar.core import eager, strict_json
from railcar.core.exchange import Exchange
from railcar.core.guard import ClientGone, ExchangeObserver, Guard, GuardRejected, StreamGuard
from railcar.sidecar.direct import DirectBody
from railcar.sidecar.headers import forwarded_headers, response_headers, upstream_headers
from railcar.sidecar.metrics import CONTENT_TYPE_LATEST, Metrics
from railcar.sidecar.routes import PassthroughPaths, Refused, Route, resolve
from railcar.sidecar.settings import SidecarSettings
from railcar.sidecar.sse import SSESplitter
from railcar.sidecar.upstream import Upstream, UpstreamError

log = logging.getLogger("railcar.sidecar")

__all__ = ["create_app", "SidecarState"]

_SSE = "text/event-stream"
_GONE = "client disconnected"  # ``Exchange.error`` when the agent went away (the trace shows it)


@dataclass
class SidecarState:
    """Mutable per-app state (the app itself is frozen once started).

    ``guard`` is ``None`` until the rails are loaded (``/v1/*`` answers 503 meanwhile); ``draining`` turns
    ``/readyz`` to 503 during a graceful shutdown.
    """

    config: SidecarSettings
    upstream: Upstream
    metrics: Metrics
    guard: Guard | None = None
    draining: bool = False
    observers: list[ExchangeObserver] = field(default_factory=list)
    # Shown on /readyz while ready (e.g. "running without rails: guardrails.config_path = none").
    warning: str | None = None
    passthrough: PassthroughPaths = field(default_factory=lambda: PassthroughPaths(()))

    @property
    def ready(self) -> bool:
        return self.guard is not None and self.upstream.configured and not self.draining


class _Sink:
    """The :class:`railcar.core.guard.StreamSink` over one ``StreamResponse``, batching the frames of one upstream read.

    Between :meth:`hold` and :meth:`flush`, :meth:`send` only appends the frame to a list; :meth:`flush` writes
    what was held as one ``StreamResponse.write`` (one HTTP/1.1 chunk, one transport write, so one ``send``
    syscall for the agent's socket and one chunk for its parser), in the order the frames were sent. Outside a
    hold, :meth:`send` writes at once (a stream guard's background check releasing frames between upstream
    reads). The proxy holds while it hands one upstream read's events to the stream guard and flushes right
    after, so a frame is never delayed past the end of processing the read it came from; this is what keeps
    every stream (the pass-through guard's too) at one client write per upstream read. A closed client
    raises :class:`ClientGone` from :meth:`send` or :meth:`flush`.
    """

    __slots__ = ("_write", "_buf", "_held")

    def __init__(self, resp: web.StreamResponse) -> None:
        self._write = resp.write
        self._buf: list[bytes] = []
        self._held = False

    async def send(self, frame: bytes) -> None:
        if self._held:
            self._buf.append(frame)
            return
        await self._out(frame)

    def hold(self) -> None:
        """Start holding: later :meth:`send` calls append until :meth:`flush`."""
        self._held = True

    async def flush(self) -> None:
        """Stop holding and write the held frames as one write (nothing when none was held)."""
        data = self.release()
        if data is not None:
            await self._out(data)

    def release(self) -> bytes | None:
        """Stop holding and return the held frames joined (``None`` when none was held), for the caller to
        :meth:`write`: :meth:`flush` without its own await, for the relay loop."""
        self._held = False
        buf = self._buf
        if not buf:
            return None
        data = buf[0] if len(buf) == 1 else b"".join(buf)
        buf.clear()
        return data

    async def _out(self, data: bytes) -> None:
        try:
            await self._write(data)
        except _CLIENT_WRITE_ERRORS:
            raise ClientGone(_GONE) from None

    @property
    def write(self) -> Callable[[bytes], Awaitable[None]]:
        """The response's own ``write``: the caller turns :data:`_CLIENT_WRITE_ERRORS` into :class:`ClientGone`."""
        return self._write


# Bytes of one stream's data payloads kept in ``Exchange.stream_data`` for the trace recorder: a span keeps at most
# 512 KiB of content (``railcar.streams.recorder``), so 8 MiB covers every answer the trace can hold while a 64 MB
# stream no longer sits in memory whole.
_RECORD_BUDGET = 8 * 1024 * 1024


def _keep(datas: list[bytes], events: list[tuple[bytes, bytes | None]], room: int) -> int:
    """Append the data payloads of ``events`` to ``datas``; the recording budget left after them."""
    if len(events) == 1:  # the common read at low load; no list built for it
        d = events[0][1]
        if d is None:
            return room
        datas.append(d)
        return room - len(d)
    kept = [d for _, d in events if d is not None]
    datas.extend(kept)
    return room - sum(map(len, kept))


class _EventTooLarge(Exception):
    """An upstream SSE event (complete or still open) is over ``server.max_event_bytes``."""


# What a write to the agent's connection raises when the agent has gone.
_CLIENT_WRITE_ERRORS = (ConnectionResetError, ConnectionError, aiohttp.ClientConnectionResetError)


def create_app(config: SidecarSettings, guard: Guard | None = None, *, upstream: Upstream | None = None,
               observers: list[ExchangeObserver] | None = None) -> web.Application:
    """Build the sidecar application for ``config``.

    ``guard``: the guard to use; ``None`` leaves the app not ready (503) until ``app["state"].guard`` is set
    (``railcar.commands.serve`` does this after ``railcar.rails.guard.build_guard``). Pass ``PassThrough()`` for no rails.
    ``upstream``: an :class:`Upstream` (default: built from ``config.upstream``; its session is opened on app
    startup and closed on cleanup, after in-flight requests finished). Raises ``ConfigError`` if the upstream
    credential file cannot be read.
    """
    app = web.Application(client_max_size=config.server.max_body_bytes, handler_args={"max_field_size": 65536})
    state = SidecarState(config=config, upstream=upstream or Upstream(config.upstream), metrics=Metrics(),
                         guard=guard, observers=observers if observers is not None else [],
                         passthrough=PassthroughPaths(config.server.passthrough_paths))
    with warnings.catch_warnings():
        # The string keys are the documented contract for other rooms (`app["observers"].append(...)`).
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = state
        app["observers"] = state.observers
        app["config"] = config
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/{tail:.*}", _route)
    app.on_startup.append(_on_startup)
    # cleanup, not shutdown: aiohttp runs on_shutdown before waiting for in-flight handlers.
    app.on_cleanup.append(_on_cleanup)
    return app


async def _on_startup(app: web.Application) -> None:
    await app["state"].upstream.start()


async def _on_cleanup(app: web.Application) -> None:
    await app["state"].upstream.close()


# ------------------------------------------------------------------------------------------------ health, metrics


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    st: SidecarState = request.app["state"]
    if st.ready:
        return web.json_response({"status": "ready", **({"warning": st.warning} if st.warning else {})})
    why = ("draining" if st.draining else "upstream.base_url not set" if not st.upstream.configured
           else "guardrails loading")
    return web.json_response({"status": "not ready", "reason": why}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app["state"].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# ------------------------------------------------------------------------------------------------ routing


async def _route(request: web.Request) -> web.StreamResponse:
    """Every path but the health ones: normalised once (:mod:`railcar.sidecar.routes`), then a codec's guarded
    route, a listed pass-through, or a refusal in the caller's API shape."""
    st: SidecarState = request.app["state"]
    route = resolve(request.method, request.rel_url.raw_path, st.passthrough)
    if isinstance(route, Refused):
        st.metrics.refused_paths.labels(route.code).inc()
        st.metrics.count("refused", route.status)
        shape = _shape_of(request)
        return _api_error(shape, route.status, route.message, "invalid_request_error", None, route.code,
                          headers={"Allow": route.allow} if route.allow else None)
    if route.codec is None:
        st.metrics.passthrough.labels(route.label).inc()
        return await _passthrough(request, st, route)
    return await _guarded(request, st, route, route.codec)


def _shape_of(request: web.Request) -> Codec:
    """The codec whose error shape a refused request gets: Anthropic's when the agent speaks it (an
    ``anthropic-version`` header, sent by every Anthropic SDK), else OpenAI's."""
    return CODECS["anthropic_messages" if "anthropic-version" in request.headers else "openai_chat"]


def _api_error(codec: Codec, status: int, message: str, type: str = "invalid_request_error",
               param: str | None = None, code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
    """An error response in ``codec``'s API shape (``application/json``)."""
    return web.Response(status=status, body=codec.error_body(status, message, type, param, code),
                        content_type="application/json", headers=headers)


# ------------------------------------------------------------------------------------------------ shared helpers


def _not_ready(st: SidecarState, codec: Codec, route: str) -> web.Response:
    st.metrics.count(route, 503)
    msg = "upstream.base_url is not configured" if not st.upstream.configured else "sidecar is not ready"
    return _api_error(codec, 503, msg, "server_error", None, "not_ready", headers={"Retry-After": "1"})


async def _read_body(request: web.Request, st: SidecarState, codec: Codec, route: str) -> bytes | web.Response:
    """The request body, or a 413 error response when it exceeds ``server.max_body_bytes``."""
    limit = st.config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(st, codec, route, limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(st, codec, route, limit)


def _too_large(st: SidecarState, codec: Codec, route: str, limit: int) -> web.Response:
    st.metrics.count(route, 413)
    return _api_error(codec, 413, f"request body exceeds server.max_body_bytes ({limit} bytes)",
                      "invalid_request_error", None, "request_too_large")


def _upstream_failed(st: SidecarState, codec: Codec, route: str, exc: UpstreamError) -> web.Response:
    st.metrics.count(route, exc.status)
    log.warning("upstream failure: %s", exc.message)
    return _api_error(codec, exc.status, exc.message, "upstream_error" if exc.status == 502 else "timeout_error",
                      None, exc.code)


def _upstream_request_headers(request: web.Request, st: SidecarState, api: str) -> dict[str, str]:
    """The headers for the upstream call (:func:`railcar.sidecar.headers.upstream_headers` under ``[upstream]``;
    Anthropic Messages carry ``x-api-key`` from ``[upstream.anthropic]``)."""
    cfg = st.config.upstream
    if api == "anthropic_messages":
        return upstream_headers(request.headers, api_key=st.upstream.anthropic_key,
                                pass_client_authorization=cfg.anthropic.pass_client_key,
                                default_headers=cfg.default_headers, credential_header="x-api-key")
    return upstream_headers(request.headers, api_key=st.upstream.api_key,
                            pass_client_authorization=cfg.pass_client_authorization,
                            default_headers=cfg.default_headers)


def _body_failure(exc: BaseException) -> UpstreamError:
    """The :class:`UpstreamError` for a response body that failed after its headers arrived: 504 for a read
    timeout (``upstream.read_timeout_s``), 502 otherwise. Names the exception type only, never content."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(504, "upstream_timeout", "upstream timed out while sending the body")
    return UpstreamError(502, "upstream_unreachable", f"upstream body failed: {type(exc).__name__}")


# ------------------------------------------------------------------------------------------------ guarded routes


async def _guarded(request: web.Request, st: SidecarState, route: Route, codec: Codec) -> web.StreamResponse:
    """One call on a codec's route: parsed with orjson, validated by the codec (400 naming the field), checked by the
    guard, forwarded (the client's exact bytes unless the body changed) and the answer relayed through the guard."""
    label = route.label
    guard = st.guard
    if guard is None or not st.upstream.base_for(codec.name):
        return _not_ready(st, codec, label)
    raw = await _read_body(request, st, codec, label)
    if isinstance(raw, web.Response):
        return raw
    parsed = _parse(st, codec, label, raw)
    if isinstance(parsed, web.Response):
        return parsed
    body, options, had_options = parsed
    base = st.upstream.base_for(codec.name)
    ex = Exchange(body=body, headers=forwarded_headers(request.headers), guardrails_options=options, api=codec.name,
                  upstream_url=st.upstream.url_for(route.path, base=base))
    call = _Call(request, st, guard, codec, label, ex)
    try:
        return await call.serve(route.path, base, raw, body, had_options)
    except asyncio.CancelledError:
        _cancelled(ex)
        raise
    finally:
        ex.finished_ns = time.time_ns()
        _notify(st.observers, ex)


def _parse(st: SidecarState, codec: Codec, label: str,
           raw: bytes) -> tuple[dict[str, Any], dict[str, Any] | None, bool] | web.Response:
    """``(body without "guardrails", the guardrails options or None, whether the field was present)``, or the 400
    answer in the codec's shape naming what is wrong (not JSON, :meth:`Codec.validate`'s problem)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        st.metrics.count(label, 400)
        return _api_error(codec, 400, f"request body is not valid JSON: {exc}", code="invalid_json")
    problem = codec.validate(body)
    if problem is not None:
        st.metrics.count(label, problem.status)
        return web.Response(status=problem.status, body=codec.problem_body(problem), content_type="application/json")
    had_options = "guardrails" in body
    options = body.pop("guardrails", None)
    if options is not None and not isinstance(options, dict):
        st.metrics.count(label, 400)
        return _api_error(codec, 400, "'guardrails' must be an object", param="guardrails", code="invalid_type")
    return body, options, had_options


def _notify(observers: list[ExchangeObserver], ex: Exchange) -> None:
    for obs in observers:
        try:
            obs.exchange_finished(ex)
        except Exception:  # an observer must never break the proxy
            log.exception("exchange observer %s failed", type(obs).__name__)


def _client_gone(ex: Exchange) -> None:
    """The agent went away while we wrote to it. ``ex.error`` keeps the string the trace has always shown."""
    ex.outcome.client_gone = True
    ex.error = _GONE


def _cancelled(ex: Exchange) -> None:
    """The handler was cancelled (aiohttp does that when the agent's connection closes): a gone client, unless an
    earlier error already explains the end."""
    ex.outcome.client_gone = True
    ex.error = ex.error or _GONE


class _Call:
    """One guarded call after parsing: the request checks, the upstream call and the relay of its answer, in the
    API of ``codec`` (its error, refusal and blocked shapes)."""

    __slots__ = ("request", "st", "guard", "codec", "label", "ex")

    def __init__(self, request: web.Request, st: SidecarState, guard: Guard, codec: Codec, label: str,
                 ex: Exchange) -> None:
        self.request, self.st, self.guard, self.codec, self.label, self.ex = request, st, guard, codec, label, ex

    def _error(self, status: int, message: str, type: str, param: str | None, code: str | None) -> web.Response:
        self.ex.status = status
        self.st.metrics.count(self.label, status)
        return _api_error(self.codec, status, message, type, param, code)

    async def serve(self, path: str, base: str, raw: bytes, original: dict[str, Any],
                    had_options: bool) -> web.StreamResponse:
        st, ex, guard = self.st, self.ex, self.guard
        try:
            refusal = await guard.check_request(ex)
        except GuardRejected as rej:
            return self._error(rej.status, rej.message, rej.type, rej.param, rej.code)
        except Exception as exc:
            log.exception("guard check_request failed")
            return self._guard_failed(exc)
        if refusal is not None:
            ex.outcome.block(refusal.rail)
            return await self._send_refusal(refusal.message, refusal.rail)

        if had_options or ex.body_changed or ex.body is not original or guard.inspects:
            # What the guard judged, not the bytes it came from: a key spelled twice in the raw JSON is one value
            # to orjson (the last) and may be another to the provider's parser (the first), unscanned.
            data = orjson.dumps(ex.body)
        else:
            data = raw  # no guard judged it: the client's exact bytes
        headers = _upstream_request_headers(self.request, st, self.codec.name)
        headers["content-type"] = "application/json"
        t0 = time.perf_counter()
        try:
            up = await st.upstream.send("POST", path, headers, data, self.request.rel_url.raw_query_string, base)
        except UpstreamError as exc:
            ex.status, ex.error = exc.status, exc.code
            return _upstream_failed(st, self.codec, self.label, exc)
        st.metrics.upstream_ttfb.labels(self.label).observe(time.perf_counter() - t0)
        ex.status = up.status
        if up.headers.get("Content-Type", "").startswith(_SSE):
            return await self._relay_sse(up, t0)
        if ex.stream and up.status == 200 and self.guard.inspects:
            # A stream asked for, something else answered: relaying it unchecked would hand the agent bytes no
            # rail saw (issue 13: SSE sent as text/plain); the agent gets the API's error instead.
            up.close()
            ex.error = "upstream_not_sse"
            return self._error(502, "upstream answered a streaming request without text/event-stream",
                               "upstream_error", None, "upstream_not_sse")
        return await self._relay_json(up, t0)

    def _guard_failed(self, exc: Exception) -> web.Response:
        """Fail closed when a guard check raises: HTTP 500 ``guard_error`` in the API's shape."""
        resp = self._error(500, "guardrails check failed", "server_error", None, "guard_error")
        self.ex.error = f"guard failed: {type(exc).__name__}"
        return resp

    async def _send_refusal(self, message: str, rail: str) -> web.StreamResponse:
        ex, codec = self.ex, self.codec
        status = codec.refusal_status
        ex.status = status
        self.st.metrics.count(self.label, status)
        if not ex.stream or status != 200:
            return web.Response(status=status, body=orjson.dumps(codec.refusal_body(ex.model, message, rail)),
                                content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(self.request)
        await resp.write(b"".join(codec.refusal_frames(ex.model, message)))  # one write: the frames are all ready
        await resp.write_eof()
        return resp

    async def _relay_json(self, up: aiohttp.ClientResponse, t0: float) -> web.StreamResponse:
        """A whole answer: read, parsed, checked (an error body too: a provider may quote the input in it). An
        answer that is not a JSON object is not relayed as if checked: the API's 502 replaces it."""
        st, ex = self.st, self.ex
        try:
            payload = await up.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            up.close()
            err = _body_failure(exc)
            ex.status, ex.error = err.status, err.code
            return _upstream_failed(st, self.codec, self.label, err)
        finally:
            up.release()
        st.metrics.upstream_latency.labels(self.label).observe(time.perf_counter() - t0)
        ex.response_body = payload
        try:
            parsed = strict_json.loads(payload) if payload else None  # a key spelled twice is not JSON here
        except orjson.JSONDecodeError:
            parsed = None
        status = up.status
        if not isinstance(parsed, dict):
            if not self.guard.inspects or (not payload and status != 200):
                st.metrics.count(self.label, status)
                return web.Response(status=status, body=payload, headers=CIMultiDict(response_headers(up.headers)))
            ex.error = "upstream_not_json"
            return self._error(502, f"upstream answered HTTP {status} with a body that is not a JSON object",
                               "upstream_error", None, "upstream_not_json")
        try:
            replaced = await self.guard.check_response(ex, parsed)
        except Exception as exc:  # fail closed, in the API's shape, like a failing check_request
            log.exception("guard check_response failed")
            return self._guard_failed(exc)
        headers = CIMultiDict(response_headers(up.headers))
        if replaced is not None:
            payload = orjson.dumps(replaced)
            if ex.outcome.blocked:
                status = ex.status = self.codec.refusal_status
        st.metrics.count(self.label, status)
        return web.Response(status=status, body=payload, headers=headers)

    async def _relay_sse(self, up: aiohttp.ClientResponse, t0: float) -> web.StreamResponse:
        """Relay an upstream SSE body through the guard's stream; see the module docstring of
        :mod:`railcar.core.guard`. The 200 and its headers go out first; what follows is up to the stream guard."""
        st, ex = self.st, self.ex
        m = st.metrics
        resp = web.StreamResponse(status=up.status, headers=CIMultiDict(response_headers(up.headers)))
        m.inflight_streams.inc()
        m.count(self.label, up.status)
        relay = _SSERelay(ex, self.request, up, resp, self.codec, st.config.server.max_event_bytes, bool(st.observers))
        try:
            await resp.prepare(self.request)
            await relay.run(self.guard)
        except asyncio.CancelledError:
            _cancelled(ex)
            raise
        finally:
            if relay.clean:
                up.release()
            else:
                up.close()  # stop the generation now: the connection is dropped, not pooled
            m.inflight_streams.dec()
            m.upstream_latency.labels(self.label).observe(time.perf_counter() - t0)
            await relay.finish_quietly()
        return resp


# ------------------------------------------------------------------------------------------------ the SSE relay


class _SSERelay:
    """One streamed response: upstream reads → :class:`SSESplitter` → ``ex.stream_data`` → the stream guard.

    Steps: :meth:`run` opens the guard's stream and pumps (:meth:`_pump`, the one relay loop) until the guard
    stops it or the upstream ends; a gone client or a broken upstream ends it early. ``on_end`` runs exactly
    once (:meth:`_finish`), then the response is ended. ``clean`` is true when the upstream body was read to its
    end (its connection may go back to the pool).
    """

    __slots__ = ("ex", "request", "up", "resp", "codec", "max_event", "record", "sink", "sg", "splitter", "clean",
                 "room", "_ended")

    def __init__(self, ex: Exchange, request: web.Request, up: aiohttp.ClientResponse, resp: web.StreamResponse,
                 codec: Codec, max_event: int, record: bool) -> None:
        self.ex, self.request, self.up, self.resp, self.codec, self.max_event = ex, request, up, resp, codec, max_event
        self.record = record  # an observer reads ``ex.stream_data`` (the trace recorder)
        self.sink = _Sink(resp)
        self.sg: StreamGuard | None = None
        self.splitter = SSESplitter()
        self.clean = False
        # Bytes of payloads still to keep for the trace (nothing when no observer reads them): bounded, so a huge
        # answer costs bounded memory (the span keeps far less).
        self.room = _RECORD_BUDGET if record else 0
        self._ended = False

    async def run(self, guard: Guard) -> None:
        ex = self.ex
        # abort lets a guard that checks in the background stop the upstream between reads
        self.sg = sg = guard.open_stream(ex, self.sink, self.up.close)
        try:
            if guard.inspects:
                await self._pump(sg, getattr(guard, "steps_in_callback", False))
            else:  # a guard that judges nothing relays every event unchanged: the upstream's reads go straight out
                await self._pump_bytes()
        except ClientGone:
            _client_gone(ex)
        except _EventTooLarge:
            await self._fail("upstream_event_too_large",
                             f"upstream sent an SSE event over server.max_event_bytes ({self.max_event} bytes)",
                             "upstream_error")
        except (TimeoutError, aiohttp.ClientError) as exc:
            if sg.stopped:  # the guard aborted the upstream itself: a block, not a failure
                ex.outcome.block()
            elif isinstance(exc, asyncio.TimeoutError):
                await self._fail("upstream_timeout", "upstream timed out mid-stream", "timeout_error")
            else:
                await self._fail("upstream_unreachable", "upstream connection failed mid-stream", "upstream_error",
                                 f"upstream_failed: {type(exc).__name__}")
        await self._finish(self.sink if ex.error is None else None)
        if not ex.outcome.client_gone:
            try:
                await self.resp.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                _client_gone(ex)

    def _split(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        """The events ``chunk`` completes; :class:`_EventTooLarge` when one (or the unfinished one) is over
        ``server.max_event_bytes``."""
        splitter = self.splitter
        big = splitter.pending + len(chunk) > self.max_event  # cheap: only a big read can hold a big event
        events = splitter.feed(chunk)
        if big and (splitter.pending > self.max_event or any(len(r) > self.max_event for r, _ in events)):
            raise _EventTooLarge
        return events

    async def _pump_bytes(self) -> None:
        """The relay loop for a guard that does not inspect (:attr:`railcar.core.guard.Guard.inspects` false):
        each upstream read is written to the client as it came (one read, one write: nothing per event), and
        split into events only while an observer records them, up to the recording budget. The first read goes
        out through ``StreamResponse.write`` (it carries the headers); the rest through :class:`DirectBody` from
        the upstream socket's callback when both ends allow it, else through the same ``readany`` loop."""
        readany, write = self.up.content.readany, self.resp.write
        room = self.room
        datas = self.ex.stream_data

        def record(chunk: bytes) -> None:
            nonlocal room
            if room > 0:
                room = _keep(datas, self._split(chunk), room)

        def relay(chunk: bytes) -> None:  # the direct relay's handler, from the upstream socket's callback
            if room > 0:  # tested here too: no call per read when nothing records
                record(chunk)
            direct.write(chunk)

        direct = DirectBody(self.up, self.resp, self.request)
        while chunk := await readany():
            record(chunk)
            try:
                await write(chunk)
            except _CLIENT_WRITE_ERRORS:
                raise ClientGone(_GONE) from None
            if direct.usable():  # the first write carried the headers: the rest goes direct when both ends allow it
                try:
                    await direct.run(relay)
                except ConnectionResetError:
                    raise ClientGone(_GONE) from None
                break
        if room > 0 and (tail := self.splitter.flush()) is not None:
            _keep(datas, [tail], room)
        self.clean = True

    async def _pump(self, sg: StreamGuard, in_callback: bool) -> None:
        """A guarded stream: through :class:`_GuardedTap` from the upstream socket's callback when the guard's
        stream may run outside a task (``in_callback``: :attr:`railcar.core.guard.Guard.steps_in_callback`) and
        both ends allow it (:meth:`DirectBody.usable`), then (or else) :meth:`_pump_loop` for what is left, the tail
        at EOF."""
        direct = DirectBody(self.up, self.resp, self.request)
        if in_callback and direct.usable():
            tap = _GuardedTap(self, sg, direct)
            try:
                await direct.run(tap.feed)
                await tap.quiesce()
            except _Stopped:
                pass
            except ClientGone:
                raise
            except ConnectionResetError:
                raise ClientGone(_GONE) from None
            finally:
                tap.close()
            if sg.stopped:
                self.ex.outcome.block()
                return
        await self._pump_loop(sg)

    async def _pump_loop(self, sg: StreamGuard) -> None:
        """The relay loop, once per upstream read until the guard stops or the upstream ends: the read's complete
        events → their data payloads recorded in ``ex.stream_data`` → ``sg.on_events`` with the sink held, so
        the frames the guard sends go out as one client write (see :class:`_Sink`). At EOF the splitter's tail
        (a last event without its blank line) is the last batch. A guard that stops part-way keeps only the
        payloads of the events it handled."""
        readany = self.up.content.readany
        split = self._split
        room = self.room
        datas = self.ex.stream_data
        sink = self.sink
        hold, release, write = sink.hold, sink.release, sink.write
        on_events = sg.on_events
        eof = False
        while not (eof or sg.stopped):
            chunk = await readany()
            if chunk:
                events = split(chunk)
            else:
                eof = True
                tail = self.splitter.flush()
                events = [] if tail is None else [tail]
            if not events:  # a read inside one event completes nothing: nothing to hand over yet
                continue
            mark = len(datas)
            if room > 0:  # past the recording budget events are relayed and guarded, no longer kept for the trace
                room = _keep(datas, events, room)
            hold()
            try:
                n = await on_events(events)
            finally:
                # sink.flush() inlined (one coroutine less per read: this loop is every stream's hot path)
                if (data := release()) is not None:
                    try:
                        await write(data)
                    except _CLIENT_WRITE_ERRORS:
                        raise ClientGone(_GONE) from None
            if n < len(events):
                del datas[mark + sum(1 for _, d in events[:n] if d is not None):]
        if sg.stopped:
            self.ex.outcome.block()
        else:
            self.clean = True

    async def _fail(self, code: str, message: str, type: str, error: str | None = None) -> None:
        """The stream cannot go on (the upstream failed, timed out or sent an over-size event): the 200 is already
        sent, so say it in-band in the API's error form (the openai and anthropic clients raise on it) rather
        than end the stream silently. ``error`` is the trace's ``ex.error`` (default ``code``)."""
        ex = self.ex
        ex.error = error or code
        log.warning("upstream stream failed: %s", ex.error)
        await self._finish(None)
        try:
            await self.resp.write(self.codec.error_frame(message, type, None, code))
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            _client_gone(ex)

    async def _finish(self, sink: _Sink | None) -> None:
        """Call ``on_end()`` once; what it releases goes out as one write when ``sink`` is given (else each frame
        at once, or nowhere when the client is gone)."""
        sg = self.sg
        if sg is None or self._ended:
            return
        self._ended = True
        if sink is not None:
            sink.hold()
        try:
            try:
                await sg.on_end()
            finally:
                if sink is not None:
                    await sink.flush()
        except ClientGone:
            _client_gone(self.ex)
        except Exception:
            log.exception("stream guard on_end failed")

    async def finish_quietly(self) -> None:
        """``on_end`` for a relay cancelled before it ran; nothing it raises may replace the cancellation."""
        if self.sg is None or self._ended:
            return
        try:
            await self._finish(None)
        except BaseException:
            pass


class _Stopped(Exception):
    """The stream guard stopped the stream (a block) in the upstream socket's callback."""


class _GuardedTap:
    """The guarded relay from the upstream socket's callback (:class:`DirectBody`): each upstream read is split into
    events, recorded and handed to the stream guard there, and the frames the guard sends go to the agent as one
    write in the same callback: no future, task wake-up or timer per read (issue 15).

    ``sg.on_events`` is a coroutine; it is stepped by hand in the callback (:func:`railcar.core.eager.start`, in the
    relay task's context), and nearly always finishes there (the rails' checks run eagerly). When it does not (it
    awaits a check still running), it goes on in a task (:func:`railcar.core.eager.continue_in_task`) while the
    upstream is held; reads that arrive meanwhile wait
    in order and are handed over when it is done. A block raises :class:`_Stopped` out of :meth:`DirectBody.run`;
    what fails later reaches it through :meth:`DirectBody.fail`."""

    __slots__ = ("relay", "sg", "direct", "ctx", "task", "backlog", "idle")

    def __init__(self, relay: _SSERelay, sg: StreamGuard, direct: DirectBody) -> None:
        self.relay, self.sg, self.direct = relay, sg, direct
        self.ctx = contextvars.copy_context()  # the guard runs as if in the relay's task, never in a bare callback
        self.task: asyncio.Task[int] | None = None  # on_events going on after the callback
        self.backlog: list[bytes] = []
        self.idle: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        """``DirectBody``'s handler: one piece of the upstream body."""
        if self.task is not None:
            self.backlog.append(chunk)
            self.direct.hold()
        elif self.sg.stopped:  # blocked between reads (a background check): nothing more goes to the agent
            raise _Stopped
        else:
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        relay = self.relay
        events = relay._split(chunk)
        if not events:  # a read inside one event completes nothing: nothing to hand over yet
            return
        datas = relay.ex.stream_data
        mark = len(datas)
        if relay.room > 0:
            relay.room = _keep(datas, events, relay.room)
        relay.sink.hold()
        try:
            done, value = eager.start(self.sg.on_events(events), self.ctx)
        except BaseException:
            self._out()  # what the guard sent before it failed still goes out, as in the relay loop
            raise
        if done:
            self._settle(value, events, mark)
            return
        self.task = task = eager.continue_in_task(value, self.ctx)
        self.direct.hold()
        task.add_done_callback(lambda t: self._resumed(t, events, mark))

    def _settle(self, n: int, events: list[tuple[bytes, bytes | None]], mark: int) -> None:
        self._out()
        if n < len(events):  # stopped part-way: only the payloads of the events it handled stay recorded
            datas = self.relay.ex.stream_data
            del datas[mark + sum(1 for _, d in events[:n] if d is not None):]
        if self.sg.stopped:
            raise _Stopped

    def _out(self) -> None:
        data = self.relay.sink.release()
        if data is not None:
            self.direct.write(data)

    def _resumed(self, task: asyncio.Task[int], events: list[tuple[bytes, bytes | None]], mark: int) -> None:
        self.task = None
        try:
            if task.cancelled():
                return
            exc = task.exception()
            if exc is not None:
                self._out()
                raise exc
            self._settle(task.result(), events, mark)
            while self.backlog and self.task is None:
                self._take(self.backlog.pop(0))
        except BaseException as exc:
            self.direct.fail(exc)
        finally:
            if self.task is None:
                self.direct.release()
                if self.idle is not None and not self.idle.done():
                    self.idle.set_result(None)

    async def quiesce(self) -> None:
        """After :meth:`DirectBody.run` returned at the body's end: wait until the guard is done with every read,
        then raise what failed meanwhile."""
        while self.task is not None:
            self.idle = asyncio.get_running_loop().create_future()
            await self.idle
        if self.direct.error is not None:
            raise self.direct.error

    def close(self) -> None:
        """The relay ended: a guard step still going on is cancelled."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.backlog.clear()


# ------------------------------------------------------------------------------------------------ pass-through


async def _passthrough(request: web.Request, st: SidecarState, route: Route) -> web.StreamResponse:
    """A ``server.passthrough_paths`` call: same method, canonical path, query and body; response relayed
    (streamed if the upstream streams: SSE or no ``Content-Length``). Unguarded by the operator's choice."""
    shape = _shape_of(request)
    label = route.label
    if st.guard is None or not st.upstream.base_url:
        return _not_ready(st, shape, label)
    raw = await _read_body(request, st, shape, label)
    if isinstance(raw, web.Response):
        return raw
    headers = _upstream_request_headers(request, st, shape.name)
    t0 = time.perf_counter()
    try:
        up = await st.upstream.send(request.method, route.path, headers, raw or None,
                                    request.rel_url.raw_query_string)
    except UpstreamError as exc:
        return _upstream_failed(st, shape, label, exc)
    st.metrics.upstream_ttfb.labels(label).observe(time.perf_counter() - t0)
    streamed = up.headers.get("Content-Type", "").startswith(_SSE) or (
        up.content_length is None and request.method != "HEAD" and up.status not in (204, 304))
    if streamed:
        return await _pass_stream(request, st, label, up, t0)
    return await _pass_whole(st, shape, label, up, t0)


async def _pass_whole(st: SidecarState, shape: Codec, route: str, up: aiohttp.ClientResponse,
                      t0: float) -> web.Response:
    """A pass-through response with a known length: read whole, then sent."""
    try:
        payload = await up.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        up.close()
        return _upstream_failed(st, shape, route, _body_failure(exc))
    finally:
        up.release()
    st.metrics.upstream_latency.labels(route).observe(time.perf_counter() - t0)
    st.metrics.count(route, up.status)
    return web.Response(status=up.status, body=payload, headers=CIMultiDict(response_headers(up.headers)))


async def _pass_stream(request: web.Request, st: SidecarState, route: str, up: aiohttp.ClientResponse,
                       t0: float) -> web.StreamResponse:
    """A streamed pass-through response: each upstream read written as received."""
    resp = web.StreamResponse(status=up.status, headers=CIMultiDict(response_headers(up.headers)))
    st.metrics.count(route, up.status)
    st.metrics.inflight_streams.inc()
    clean = False
    try:
        await resp.prepare(request)
        while chunk := await up.content.readany():
            await resp.write(chunk)
        await resp.write_eof()
        clean = True
    except (TimeoutError, ConnectionError, aiohttp.ClientError):
        pass  # client gone or upstream broke mid-body: nothing more can be said on this response
    finally:
        up.release() if clean else up.close()
        st.metrics.inflight_streams.dec()
        st.metrics.upstream_latency.labels(route).observe(time.perf_counter() - t0)
    return resp
