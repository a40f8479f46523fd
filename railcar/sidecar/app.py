"""The sidecar's aiohttp application: routes, the chat-completions proxy path and the pass-through.

Routes (``../shared/DESIGN.md`` "Contracts"):

- ``POST /v1/chat/completions``: parsed with orjson (400 for malformed JSON or a missing ``model`` /
  ``messages``, 413 over ``server.max_body_bytes``), the request's ``guardrails`` field moved to
  ``Exchange.guardrails_options``, checked by the guard, forwarded (the client's original bytes unless the body
  changed), and the response relayed: non-streaming bodies whole, SSE event by event as they arrive.
- ``GET /v1/models`` and any other ``/v1/*`` path, any method: passed through (streamed bodies streamed).
- ``GET /healthz`` (process alive), ``GET /readyz`` (200 once a guard is installed and an upstream configured,
  503 before and while draining), ``GET /metrics`` (Prometheus text, see :mod:`railcar.sidecar.metrics`).

Application state lives in ``app["state"]`` (a :class:`SidecarState`); ``app["observers"]`` is the list of
:class:`railcar.core.guard.ExchangeObserver` told about each finished chat-completions exchange (empty by default;
append to it before the app starts). Errors use the OpenAI shape (:mod:`railcar.sidecar.errors`). No request or
response content is ever logged.
"""

from __future__ import annotations

import asyncio
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

from railcar.core.exchange import Exchange
from railcar.core.guard import ClientGone, ExchangeObserver, Guard, GuardRejected, StreamGuard
from railcar.core.wire import refusal_chunks, refusal_completion, sse_error_frame
from railcar.sidecar.errors import error_response
from railcar.sidecar.headers import forwarded_headers, response_headers, upstream_headers
from railcar.sidecar.metrics import CONTENT_TYPE_LATEST, Metrics
from railcar.sidecar.settings import SidecarSettings
from railcar.sidecar.sse import SSESplitter
from railcar.sidecar.upstream import Upstream, UpstreamError

log = logging.getLogger("railcar.sidecar")

__all__ = ["create_app", "SidecarState"]

ROUTE_CHAT = "chat_completions"
ROUTE_MODELS = "models"
ROUTE_PASS = "passthrough"
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
                         guard=guard, observers=observers if observers is not None else [])
    with warnings.catch_warnings():
        # The string keys are the documented contract for other rooms (`app["observers"].append(...)`).
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["state"] = state
        app["observers"] = state.observers
        app["config"] = config
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_route("*", "/v1/{tail:.*}", _passthrough)
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
        return web.json_response({"status": "ready"})
    why = ("draining" if st.draining else "upstream.base_url not set" if not st.upstream.configured
           else "guardrails loading")
    return web.json_response({"status": "not ready", "reason": why}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app["state"].metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


# ------------------------------------------------------------------------------------------------ shared helpers


def _not_ready(st: SidecarState, route: str) -> web.Response:
    st.metrics.count(route, 503)
    msg = "upstream.base_url is not configured" if not st.upstream.configured else "sidecar is not ready"
    return error_response(503, msg, "server_error", None, "not_ready", headers={"Retry-After": "1"})


async def _read_body(request: web.Request, st: SidecarState, route: str) -> bytes | web.Response:
    """The request body, or a 413 error response when it exceeds ``server.max_body_bytes``."""
    limit = st.config.server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _too_large(st, route, limit)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _too_large(st, route, limit)


def _too_large(st: SidecarState, route: str, limit: int) -> web.Response:
    st.metrics.count(route, 413)
    return error_response(413, f"request body exceeds server.max_body_bytes ({limit} bytes)",
                          "invalid_request_error", None, "request_too_large")


def _upstream_failed(st: SidecarState, route: str, exc: UpstreamError) -> web.Response:
    st.metrics.count(route, exc.status)
    log.warning("upstream failure: %s", exc.message)
    return error_response(exc.status, exc.message, "upstream_error" if exc.status == 502 else "timeout_error",
                          None, exc.code)


def _upstream_request_headers(request: web.Request, st: SidecarState) -> dict[str, str]:
    """The headers for the upstream call (:func:`railcar.sidecar.headers.upstream_headers` under ``[upstream]``)."""
    cfg = st.config.upstream
    return upstream_headers(request.headers, api_key=st.upstream.api_key,
                            pass_client_authorization=cfg.pass_client_authorization,
                            default_headers=cfg.default_headers)


def _body_failure(exc: BaseException) -> UpstreamError:
    """The :class:`UpstreamError` for a response body that failed after its headers arrived: 504 for a read
    timeout (``upstream.read_timeout_s``), 502 otherwise. Names the exception type only, never content."""
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamError(504, "upstream_timeout", "upstream timed out while sending the body")
    return UpstreamError(502, "upstream_unreachable", f"upstream body failed: {type(exc).__name__}")


def _bad_request(st: SidecarState, message: str, param: str | None, code: str) -> web.Response:
    st.metrics.count(ROUTE_CHAT, 400)
    return error_response(400, message, "invalid_request_error", param, code)


# ------------------------------------------------------------------------------------------------ chat completions


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    st: SidecarState = request.app["state"]
    guard = st.guard
    if guard is None or not st.upstream.configured:
        return _not_ready(st, ROUTE_CHAT)
    raw = await _read_body(request, st, ROUTE_CHAT)
    if isinstance(raw, web.Response):
        return raw
    parsed = _parse_chat(st, raw)
    if isinstance(parsed, web.Response):
        return parsed
    body, options, had_options = parsed
    ex = Exchange(body=body, headers=forwarded_headers(request.headers), guardrails_options=options)
    try:
        return await _serve_chat(request, st, guard, ex, raw, body, had_options)
    except asyncio.CancelledError:
        _cancelled(ex)
        raise
    finally:
        ex.finished_ns = time.time_ns()
        _notify(st.observers, ex)


def _parse_chat(st: SidecarState, raw: bytes) -> tuple[dict[str, Any], dict[str, Any] | None, bool] | web.Response:
    """``(body without "guardrails", the guardrails options or None, whether the field was present)`` for a
    chat-completions request body, or the 400 answer naming what is wrong with it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _bad_request(st, f"request body is not valid JSON: {exc}", None, "invalid_json")
    if not isinstance(body, dict):
        return _bad_request(st, "request body must be a JSON object", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        what = "missing required parameter: 'model'" if model is None else "'model' must be a non-empty string"
        return _bad_request(st, what, "model", "missing_required_parameter" if model is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list):
        what = "missing required parameter: 'messages'" if messages is None else "'messages' must be an array"
        return _bad_request(st, what, "messages",
                            "missing_required_parameter" if messages is None else "invalid_type")
    had_options = "guardrails" in body
    options = body.pop("guardrails", None)
    if options is not None and not isinstance(options, dict):
        return _bad_request(st, "'guardrails' must be an object", "guardrails", "invalid_type")
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


async def _serve_chat(request: web.Request, st: SidecarState, guard: Guard, ex: Exchange, raw: bytes,
                      original: dict[str, Any], had_options: bool) -> web.StreamResponse:
    m = st.metrics
    try:
        refusal = await guard.check_request(ex)
    except GuardRejected as rej:
        ex.status = rej.status
        m.count(ROUTE_CHAT, rej.status)
        return error_response(rej.status, rej.message, rej.type, rej.param, rej.code)
    except Exception as exc:
        log.exception("guard check_request failed")
        return _guard_failed(st, ex, exc)
    if refusal is not None:
        ex.outcome.block(refusal.rail)
        return await _send_refusal(request, st, ex, refusal.message, refusal.rail)

    if had_options or ex.body_changed or ex.body is not original:
        data = orjson.dumps(ex.body)
    else:
        data = raw  # untouched: the client's exact bytes
    headers = _upstream_request_headers(request, st)
    headers["content-type"] = "application/json"
    t0 = time.perf_counter()
    try:
        up = await st.upstream.send("POST", request.path, headers, data, request.query_string)
    except UpstreamError as exc:
        ex.status, ex.error = exc.status, exc.code
        return _upstream_failed(st, ROUTE_CHAT, exc)
    m.upstream_ttfb.labels(ROUTE_CHAT).observe(time.perf_counter() - t0)
    ex.status = up.status
    if up.headers.get("Content-Type", "").startswith(_SSE):
        return await _relay_sse(request, st, guard, ex, up, t0)
    return await _relay_json(st, guard, ex, up, t0)


def _guard_failed(st: SidecarState, ex: Exchange, exc: Exception) -> web.Response:
    """Fail closed when a guard check raises: HTTP 500 ``guard_error`` in the OpenAI shape."""
    ex.status, ex.error = 500, f"guard failed: {type(exc).__name__}"
    st.metrics.count(ROUTE_CHAT, 500)
    return error_response(500, "guardrails check failed", "server_error", None, "guard_error")


async def _send_refusal(request: web.Request, st: SidecarState, ex: Exchange, message: str,
                        rail: str) -> web.StreamResponse:
    ex.status = 200
    st.metrics.count(ROUTE_CHAT, 200)
    if not ex.stream:
        return web.Response(body=orjson.dumps(refusal_completion(ex.model, message, rail=rail)),
                            content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b"".join(refusal_chunks(ex.model, message)))  # one write: the frames are all ready
    await resp.write_eof()
    return resp


async def _relay_json(st: SidecarState, guard: Guard, ex: Exchange, up: aiohttp.ClientResponse,
                      t0: float) -> web.StreamResponse:
    try:
        payload = await up.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        up.close()
        err = _body_failure(exc)
        ex.status, ex.error = err.status, err.code
        return _upstream_failed(st, ROUTE_CHAT, err)
    finally:
        up.release()
    st.metrics.upstream_latency.labels(ROUTE_CHAT).observe(time.perf_counter() - t0)
    ex.response_body = payload
    if up.status == 200:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None  # not JSON: nothing a guard could check, relayed as is
        if isinstance(parsed, dict):
            try:
                replaced = await guard.check_response(ex, parsed)
            except Exception as exc:  # fail closed, in the OpenAI shape, like a failing check_request
                log.exception("guard check_response failed")
                return _guard_failed(st, ex, exc)
            if replaced is not None:
                payload = orjson.dumps(replaced)
    st.metrics.count(ROUTE_CHAT, up.status)
    return web.Response(status=up.status, body=payload, headers=CIMultiDict(response_headers(up.headers)))


# ------------------------------------------------------------------------------------------------ the SSE relay


async def _relay_sse(request: web.Request, st: SidecarState, guard: Guard, ex: Exchange,
                     up: aiohttp.ClientResponse, t0: float) -> web.StreamResponse:
    """Relay an upstream SSE body through the guard's stream; see the module docstring of
    :mod:`railcar.core.guard`. The 200 and its headers go out first; what follows is up to the stream guard."""
    m = st.metrics
    resp = web.StreamResponse(status=up.status, headers=CIMultiDict(response_headers(up.headers)))
    m.inflight_streams.inc()
    m.count(ROUTE_CHAT, up.status)
    relay = _SSERelay(ex, up, resp)
    try:
        await resp.prepare(request)
        await relay.run(guard)
    except asyncio.CancelledError:
        _cancelled(ex)
        raise
    finally:
        if relay.clean:
            up.release()
        else:
            up.close()  # stop the generation now: the connection is dropped, not pooled
        m.inflight_streams.dec()
        m.upstream_latency.labels(ROUTE_CHAT).observe(time.perf_counter() - t0)
        await relay.finish_quietly()
    return resp


class _SSERelay:
    """One streamed response: upstream reads → :class:`SSESplitter` → ``ex.stream_data`` → the stream guard.

    Steps: :meth:`run` opens the guard's stream and pumps (:meth:`_pump`, the one relay loop) until the guard
    stops it or the upstream ends; a gone client or a broken upstream ends it early. ``on_end`` runs exactly
    once (:meth:`_finish`), then the response is ended. ``clean`` is true when the upstream body was read to its
    end (its connection may go back to the pool).
    """

    __slots__ = ("ex", "up", "resp", "sink", "sg", "splitter", "clean", "_ended")

    def __init__(self, ex: Exchange, up: aiohttp.ClientResponse, resp: web.StreamResponse) -> None:
        self.ex, self.up, self.resp = ex, up, resp
        self.sink = _Sink(resp)
        self.sg: StreamGuard | None = None
        self.splitter = SSESplitter()
        self.clean = False
        self._ended = False

    async def run(self, guard: Guard) -> None:
        ex = self.ex
        # abort lets a guard that checks in the background stop the upstream between reads
        self.sg = sg = guard.open_stream(ex, self.sink, self.up.close)
        try:
            await self._pump(sg)
        except ClientGone:
            _client_gone(ex)
        except (TimeoutError, aiohttp.ClientError) as exc:
            if sg.stopped:  # the guard aborted the upstream itself: a block, not a failure
                ex.outcome.block()
            else:
                await self._upstream_broke(exc)
        await self._finish(self.sink if ex.error is None else None)
        if not ex.outcome.client_gone:
            try:
                await self.resp.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                _client_gone(ex)

    async def _pump(self, sg: StreamGuard) -> None:
        """The relay loop, once per upstream read until the guard stops or the upstream ends: the read's complete
        events → their data payloads recorded in ``ex.stream_data`` → ``sg.on_events`` with the sink held, so
        the frames the guard sends go out as one client write (see :class:`_Sink`). At EOF the splitter's tail
        (a last event without its blank line) is the last batch. A guard that stops part-way keeps only the
        payloads of the events it handled."""
        readany = self.up.content.readany
        splitter = self.splitter
        feed = splitter.feed
        datas = self.ex.stream_data
        record = datas.append
        sink = self.sink
        hold, release, write = sink.hold, sink.release, sink.write
        on_events = sg.on_events
        eof = False
        while not (eof or sg.stopped):
            chunk = await readany()
            if chunk:
                events = feed(chunk)
            else:
                eof = True
                tail = splitter.flush()
                events = [] if tail is None else [tail]
            if not events:  # a read inside one event completes nothing: nothing to hand over yet
                continue
            mark = len(datas)
            if len(events) == 1:  # the common read at low load; no list built for it
                if (d := events[0][1]) is not None:
                    record(d)
            else:
                datas.extend([d for _, d in events if d is not None])
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

    async def _upstream_broke(self, exc: BaseException) -> None:
        """The upstream failed mid-stream: the 200 is already sent, so say it in-band (the openai client raises
        APIError on an error event) rather than end the stream silently."""
        ex = self.ex
        timeout = isinstance(exc, asyncio.TimeoutError)
        ex.error = "upstream_timeout" if timeout else f"upstream_failed: {type(exc).__name__}"
        log.warning("upstream stream failed: %s", ex.error)
        await self._finish(None)
        try:
            await self.resp.write(sse_error_frame(
                "upstream timed out mid-stream" if timeout else "upstream connection failed mid-stream",
                "timeout_error" if timeout else "upstream_error",
                "upstream_timeout" if timeout else "upstream_unreachable"))
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


# ------------------------------------------------------------------------------------------------ pass-through


async def _passthrough(request: web.Request) -> web.StreamResponse:
    """Any other ``/v1/*`` call: same method, path, query and body; response relayed (streamed if the upstream
    streams: SSE or no ``Content-Length``)."""
    st: SidecarState = request.app["state"]
    route = ROUTE_MODELS if request.path.rstrip("/") == "/v1/models" else ROUTE_PASS
    if st.guard is None or not st.upstream.configured:
        return _not_ready(st, route)
    raw = await _read_body(request, st, route)
    if isinstance(raw, web.Response):
        return raw
    headers = _upstream_request_headers(request, st)
    t0 = time.perf_counter()
    try:
        up = await st.upstream.send(request.method, request.path, headers, raw or None, request.query_string)
    except UpstreamError as exc:
        return _upstream_failed(st, route, exc)
    st.metrics.upstream_ttfb.labels(route).observe(time.perf_counter() - t0)
    streamed = up.headers.get("Content-Type", "").startswith(_SSE) or (
        up.content_length is None and request.method != "HEAD" and up.status not in (204, 304))
    if streamed:
        return await _pass_stream(request, st, route, up, t0)
    return await _pass_whole(st, route, up, t0)


async def _pass_whole(st: SidecarState, route: str, up: aiohttp.ClientResponse, t0: float) -> web.Response:
    """A pass-through response with a known length: read whole, then sent."""
    try:
        payload = await up.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        up.close()
        return _upstream_failed(st, route, _body_failure(exc))
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
