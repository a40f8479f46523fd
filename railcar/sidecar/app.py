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
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from railcar.core.wire import refusal_chunks, refusal_completion
from railcar.core.config import RailcarConfig
from railcar.core.wire import sse_error_frame
from railcar.sidecar.errors import error_response
from railcar.core.exchange import Exchange
from railcar.core.guard import ExchangeObserver, Guard, GuardRejected, PassThrough
from railcar.sidecar.headers import forwarded_headers, response_headers, upstream_headers
from railcar.sidecar.metrics import CONTENT_TYPE_LATEST, Metrics
from railcar.sidecar.sse import SSESplitter
from railcar.sidecar.upstream import Upstream, UpstreamError

log = logging.getLogger("railcar.sidecar")

__all__ = ["create_app", "SidecarState", "ClientGone"]

ROUTE_CHAT = "chat_completions"
ROUTE_MODELS = "models"
ROUTE_PASS = "passthrough"
_SSE = "text/event-stream"


class ClientGone(ConnectionResetError):
    """The agent closed its connection while the sidecar was writing to it."""


@dataclass
class SidecarState:
    """Mutable per-app state (the app itself is frozen once started).

    ``guard`` is ``None`` until the rails are loaded (``/v1/*`` answers 503 meanwhile); ``draining`` turns
    ``/readyz`` to 503 during a graceful shutdown.
    """

    config: RailcarConfig
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
    the guarded path as cheap per read as the pass-through, which writes each read whole. A closed client
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
        self._held = False
        buf = self._buf
        if buf:
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            await self._out(data)

    async def _out(self, data: bytes) -> None:
        try:
            await self._write(data)
        except (ConnectionResetError, ConnectionError, aiohttp.ClientConnectionResetError):
            raise ClientGone("client disconnected") from None


def create_app(config: RailcarConfig, guard: Guard | None = None, *, upstream: Upstream | None = None,
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

    ex = Exchange(body=body, headers=forwarded_headers(request.headers), guardrails_options=options)
    try:
        return await _serve_chat(request, st, guard, ex, raw, body, had_options)
    except asyncio.CancelledError:
        ex.error = ex.error or "client disconnected"
        raise
    finally:
        ex.finished_ns = time.time_ns()
        for obs in st.observers:
            try:
                obs.exchange_finished(ex)
            except Exception:  # an observer must never break the proxy
                log.exception("exchange observer %s failed", type(obs).__name__)


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
        ex.status, ex.error = 500, f"guard failed: {type(exc).__name__}"
        log.exception("guard check_request failed")
        m.count(ROUTE_CHAT, 500)
        return error_response(500, "guardrails check failed", "server_error", None, "guard_error")
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
    return await _relay_json(request, st, guard, ex, up, t0)


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


async def _relay_json(request: web.Request, st: SidecarState, guard: Guard, ex: Exchange,
                      up: aiohttp.ClientResponse, t0: float) -> web.StreamResponse:
    try:
        payload = await up.read()
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        up.close()
        err = _body_failure(exc)
        ex.status, ex.error = err.status, err.code
        return _upstream_failed(st, ROUTE_CHAT, err)
    finally:
        up.release()
    st.metrics.upstream_latency.labels(ROUTE_CHAT).observe(time.perf_counter() - t0)
    ex.response_body = payload
    if up.status == 200 and type(guard) is not PassThrough:
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            try:
                replaced = await guard.check_response(ex, parsed)
            except Exception as exc:  # fail closed, in the OpenAI shape, like a failing check_request
                ex.status, ex.error = 500, f"guard failed: {type(exc).__name__}"
                log.exception("guard check_response failed")
                st.metrics.count(ROUTE_CHAT, 500)
                return error_response(500, "guardrails check failed", "server_error", None, "guard_error")
            if replaced is not None:
                payload = orjson.dumps(replaced)
    st.metrics.count(ROUTE_CHAT, up.status)
    return web.Response(status=up.status, body=payload, headers=CIMultiDict(response_headers(up.headers)))


async def _relay_sse(request: web.Request, st: SidecarState, guard: Guard, ex: Exchange,
                     up: aiohttp.ClientResponse, t0: float) -> web.StreamResponse:
    """Relay an upstream SSE body event by event; see the module docstring of :mod:`railcar.core.guard`."""
    m = st.metrics
    resp = web.StreamResponse(status=up.status, headers=CIMultiDict(response_headers(up.headers)))
    clean = False  # upstream read to its end: the connection may go back to the pool
    m.inflight_streams.inc()
    m.count(ROUTE_CHAT, up.status)
    sg = None
    try:
        await resp.prepare(request)
        sink = _Sink(resp)
        send = sink.send
        splitter = SSESplitter()
        feed = splitter.feed
        datas = ex.stream_data
        readany = up.content.readany
        try:
            if type(guard) is PassThrough:
                # Fast path: the transport chunk goes out as received (byte-exact whatever its event
                # boundaries); the splitter only collects data payloads for observers.
                while chunk := await readany():
                    await send(chunk)
                    for _, data in feed(chunk):
                        if data is not None:
                            datas.append(data)
                tail = splitter.flush()
                if tail is not None and tail[1] is not None:
                    datas.append(tail[1])
                clean = True
            else:
                # abort lets a guard that checks in the background stop the upstream between events
                sg = guard.open_stream(ex, sink, abort=up.close)
                on_event = sg.on_event
                # The batch seam: one call per upstream read instead of one per event, when the guard has it.
                on_events = getattr(sg, "on_events", None)
                hold, flush = sink.hold, sink.flush
                while not sg.stopped and (chunk := await readany()):
                    # One client write per upstream read, like the pass-through (see _Sink).
                    hold()
                    try:
                        events = feed(chunk)
                        if on_events is not None:
                            if events:
                                mark = len(datas)
                                datas.extend([d for _, d in events if d is not None])
                                n = await on_events(events)
                                if n < len(events):  # blocked part-way: record only what the guard handled
                                    del datas[mark + sum(1 for _, d in events[:n] if d is not None):]
                        else:
                            for raw, data in events:
                                if data is not None:
                                    datas.append(data)
                                await on_event(raw, data)
                                if sg.stopped:
                                    break
                    finally:
                        await flush()
                if sg.stopped:
                    ex.outcome.block()
                else:
                    tail = splitter.flush()
                    if tail is not None:
                        if tail[1] is not None:
                            datas.append(tail[1])
                        await on_event(*tail)
                    clean = True
        except ClientGone:
            ex.error = "client disconnected"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if sg is not None and sg.stopped:  # the guard aborted the upstream itself: a block, not a failure
                ex.outcome.block()
                await _finish_stream(sg, ex)
                sg = None
                raise _Blocked() from None
            # The upstream failed mid-stream: the 200 is already sent, so say it in-band (the openai client
            # raises APIError on an error event) rather than end the stream silently.
            timeout = isinstance(exc, asyncio.TimeoutError)
            ex.error = "upstream_timeout" if timeout else f"upstream_failed: {type(exc).__name__}"
            log.warning("upstream stream failed: %s", ex.error)
            await _finish_stream(sg, ex)
            sg = None
            try:
                await resp.write(sse_error_frame(
                    "upstream timed out mid-stream" if timeout else "upstream connection failed mid-stream",
                    "timeout_error" if timeout else "upstream_error",
                    "upstream_timeout" if timeout else "upstream_unreachable"))
            except (ConnectionError, aiohttp.ClientConnectionResetError):
                ex.error = "client disconnected"
        await _finish_stream(sg, ex, sink if ex.error is None else None)
        sg = None
        await _end(resp, ex)
    except _Blocked:
        await _end(resp, ex)
    except asyncio.CancelledError:
        ex.error = ex.error or "client disconnected"
        raise
    finally:
        if clean:
            up.release()
        else:
            up.close()  # stop the generation now: the connection is dropped, not pooled
        m.inflight_streams.dec()
        m.upstream_latency.labels(ROUTE_CHAT).observe(time.perf_counter() - t0)
        if sg is not None:  # cancelled before on_end ran
            try:
                await _finish_stream(sg, ex)
            except BaseException:
                pass
    return resp


class _Blocked(Exception):
    pass


async def _end(resp: web.StreamResponse, ex: Exchange) -> None:
    if ex.error != "client disconnected":
        try:
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientConnectionResetError):
            ex.error = "client disconnected"


async def _finish_stream(sg: Any, ex: Exchange, sink: _Sink | None = None) -> None:
    """Call ``sg.on_end()`` once; what it releases goes out as one write when ``sink`` is given."""
    if sg is None:
        return
    if sink is not None:
        sink.hold()
    try:
        try:
            await sg.on_end()
        finally:
            if sink is not None:
                await sink.flush()
    except ClientGone:
        ex.error = "client disconnected"
    except Exception:
        log.exception("stream guard on_end failed")


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
    if not streamed:
        try:
            payload = await up.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            up.close()
            return _upstream_failed(st, route, _body_failure(exc))
        finally:
            up.release()
        st.metrics.upstream_latency.labels(route).observe(time.perf_counter() - t0)
        st.metrics.count(route, up.status)
        return web.Response(status=up.status, body=payload, headers=CIMultiDict(response_headers(up.headers)))
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
    except (ConnectionError, aiohttp.ClientError, asyncio.TimeoutError):
        pass  # client gone or upstream broke mid-body: nothing more can be said on this response
    finally:
        up.release() if clean else up.close()
        st.metrics.inflight_streams.dec()
        st.metrics.upstream_latency.labels(route).observe(time.perf_counter() - t0)
    return resp
