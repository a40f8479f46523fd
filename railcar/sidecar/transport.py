"""How the sidecar's aiohttp server runs: the runner that ``railcar serve``, the demo and the tests start.

aiohttp's own server protocol (``aiohttp.web_protocol.RequestHandler``) has no header or body read timeout, no cap
on idle keep-alive connections, answers parser-level rejects (a 70 KB header line, 5000 headers, a garbled request
line) with plain-text 400s, and logs those rejects at ERROR with the first ~100 bytes of the offending line, so an
oversized ``Authorization`` header put a raw token in the log. :func:`start` runs an application with a protocol
that closes those gaps:

- **Read timeout** (``server.read_timeout_s``): a per-connection watchdog, armed when a connection opens and when
  the first byte of a next request arrives, disarmed once a request's headers *and* body have arrived (its payload
  reached EOF). When it fires first, the client gets ``408`` in the OpenAI error shape (when no response byte was
  written yet) and the connection is closed; a handler still reading that body is cancelled. So a slow-header
  (slowloris) or slow-body client holds a socket and a file descriptor for at most ``read_timeout_s``.
- **Idle cap** (``server.max_idle_connections``): connections waiting for a next keep-alive request are kept in
  least-recently-used order; past the cap, the oldest idle one is closed (an idle connection has no request in
  flight, so closing it loses nothing: HTTP/1.1 clients retry an idempotent request on a closed idle connection,
  RFC 9112 section 9.3.1, and pools such as httpx's and aiohttp's open a new one).
- **Connection budget** (:func:`connection_budget`: half the soft ``RLIMIT_NOFILE`` minus 16): past it, the server
  sheds the oldest idle connection, else the one waiting longest for its request (a slow client), else the new
  one, each with a ``503`` when no response is under way; so slow clients can never take the descriptors the
  agent's own connection and its upstream connection need (``accept(2)`` or the upstream connect would fail with
  ``EMFILE``).
- **Every rejection in the OpenAI shape** ``{"error": {"message", "type", "param", "code"}}``
  (:mod:`railcar.core.wire`): parser rejects (``431`` for a header line over ``max_field_size`` or too many
  headers, ``400`` for anything else malformed), ``408`` and ``503`` above, ``500`` for a handler bug, and every
  plain-text ``aiohttp.web.HTTPException`` (the router's 404 and 405, aiohttp's 413) become JSON. Messages are
  fixed texts, never a byte of the request.
- **No request bytes in logs**: rejects are logged by ``railcar.sidecar`` as a fixed message with the status and
  the exception class (a handler bug also gets the file, line and function it was raised from, not its message);
  the access log is off; and :func:`install_log_filter` rewrites any record of the ``aiohttp.server``,
  ``aiohttp.access`` and ``aiohttp.internal`` loggers to a fixed message without arguments or traceback (aiohttp's
  own formats quote the request line and exception messages quote the bytes that failed).

Relies on aiohttp 3.14's ``RequestHandler`` (``data_received``, ``finish_response``, ``handle_error``,
``log_exception``) and ``AppRunner._make_server``; ``tests/sidecar/test_transport.py`` pins each behaviour.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
import traceback
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from railcar.core.wire import error_body
from railcar.sidecar.errors import error_response
from railcar.sidecar.settings import ServerConfig

log = logging.getLogger("railcar.sidecar")

__all__ = ["TransportLimits", "SidecarRunner", "start", "install_log_filter", "rejection", "connection_budget"]

# aiohttp's loggers whose records can quote request bytes (request line, header values, exception messages).
_AIOHTTP_LOGGERS = ("aiohttp.server", "aiohttp.access", "aiohttp.internal")


@dataclass(frozen=True)
class TransportLimits:
    """The connection limits of one server: ``read_timeout_s`` (seconds from a connection's opening, or a next
    request's first byte, until that request's headers and body have arrived; > 0), ``max_idle_connections``
    (idle keep-alive connections kept open; >= 1) and ``max_connections`` (open client connections before the
    server sheds; >= 1, default :func:`connection_budget`)."""

    read_timeout_s: float
    max_idle_connections: int
    max_connections: int

    @classmethod
    def of(cls, server: ServerConfig) -> TransportLimits:
        """The limits of a ``[server]`` section (:class:`railcar.sidecar.settings.ServerConfig`), with
        ``max_connections`` from the process's descriptor limit (:func:`connection_budget`)."""
        return cls(float(server.read_timeout_s), int(server.max_idle_connections), connection_budget())


def connection_budget(nofile: int | None = None) -> int:
    """Client connections the process can hold and still serve each: half the soft ``RLIMIT_NOFILE`` (``nofile``
    when given; ``getrlimit(2)``) minus 16, at least 16. Every client connection with a request in flight needs
    a second descriptor for its upstream connection, and the rest (listening socket, Kafka, the spool, the
    runtime's own) fit in what is left; past the budget, ``accept(2)`` would fail with ``EMFILE`` or an upstream
    connect would, and the agent's own requests with them."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile == resource.RLIM_INFINITY:
            nofile = 1 << 20
    return max(16, nofile // 2 - 16)


def rejection(status: int, exc: BaseException | None) -> tuple[int, str, str, str | None]:
    """``(status, message, type, code)`` for a request aiohttp rejected with ``status`` because of ``exc``.

    Parser errors (``aiohttp.http_exceptions``): :class:`~aiohttp.http_exceptions.LineTooLong` (a request line or
    header over aiohttp's ``max_line_size`` / ``max_field_size``) and "Too many headers" (over ``max_headers``) are
    ``431 Request Header Fields Too Large`` (RFC 6585 section 5); any other parser error stays ``400``. ``408`` is
    the read timeout; 5xx are ``server_error``. The message is fixed per case, never the exception's text (which
    quotes the request)."""
    if isinstance(exc, http_exceptions.LineTooLong):
        return 431, "a request line or header field is too long", "invalid_request_error", "header_too_large"
    if isinstance(exc, http_exceptions.BadHttpMessage) and exc.message.startswith("Too many headers"):
        return 431, "too many request header fields", "invalid_request_error", "too_many_headers"
    if status == 408:
        return 408, "the request was not received within server.read_timeout_s", "invalid_request_error", \
            "request_timeout"
    if status == 503:
        return 503, "too many open connections; retry", "server_error", "too_many_connections"
    if status >= 500:
        return status, "internal error while handling the request", "server_error", None
    return status, "malformed HTTP request", "invalid_request_error", "bad_request"


def _raw_response(status: int, body: bytes) -> bytes:
    """A complete ``HTTP/1.1`` response with a JSON ``body`` and ``Connection: close``, for a connection whose
    request never reached aiohttp's handler (no ``Response`` object can be written there)."""
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


def _where(exc: BaseException | None) -> str:
    """``file:line in function`` of the innermost frame of ``exc``'s traceback ("" without one): where a handler
    bug was raised, without the exception's message (which may quote content)."""
    tb = traceback.extract_tb(exc.__traceback__) if exc is not None and exc.__traceback__ is not None else None
    if not tb:
        return ""
    f = tb[-1]
    return f" at {f.filename}:{f.lineno} in {f.name}"


class _ContentFreeRecords(logging.Filter):
    """Rewrites each record to ``aiohttp <logger> <level> record withheld (<exception class>)``: no arguments, no
    traceback, no stack (aiohttp formats quote the request line; exception messages quote the bytes that failed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = f" ({type(exc).__name__})" if exc is not None else ""
        record.msg = f"{record.name} {record.levelname.lower()} record withheld: it may quote request bytes{kind}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


_FILTER = _ContentFreeRecords()


def install_log_filter() -> None:
    """Attach the content-free filter to aiohttp's server-side loggers (idempotent)."""
    for name in _AIOHTTP_LOGGERS:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


class _Throttle:
    """At most one log record per ``every_s`` seconds per message (a slowloris run would otherwise write one line
    per connection); each record says how many events it stands for."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def note(self, level: int, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last, count = self._last.get(msg, (float("-inf"), 0))
        if now - last < self.every_s:
            self._last[msg] = (last, count + 1)
            return
        self._last[msg] = (now, 0)
        if count:
            log.log(level, msg + " (and %d more since the last such record)", *args, count)
        else:
            log.log(level, msg, *args)


class _Server(web.Server):
    """aiohttp's low-level ``Server`` building :class:`_Handler` protocols, plus the connection pools: idle
    (waiting for a next keep-alive request) and pending (a request not yet fully received), each least recently
    entered first."""

    def __init__(self, base: web.Server, limits: TransportLimits) -> None:
        # The application's handler, request factory and protocol kwargs as aiohttp assembled them (access log
        # class, debug, the app's handler_args such as max_field_size).
        super().__init__(base.request_handler, request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation, loop=asyncio.get_running_loop(),
                         **base._kwargs)
        self.limits = limits
        self.log = _Throttle()
        self._open = 0
        self._idle: dict[_Handler, None] = {}  # insertion order = least recently idle first
        self._pending: dict[_Handler, None] = {}  # insertion order = waiting longest first

    def __call__(self) -> _Handler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def opened(self, handler: _Handler) -> None:
        """A client connection opened: past ``max_connections``, shed the oldest idle connection, else the one
        waiting longest for its request (a slow client, by then), else this new one; each with a 503 when no
        response is under way."""
        self._open += 1
        if self._open <= self.limits.max_connections:
            return
        victim = next(iter(self._idle), None) or next(iter(self._pending), None) or handler
        self.log.note(logging.WARNING, "shedding a connection: %d open, past the budget of %d (half of "
                                       "RLIMIT_NOFILE)", self._open, self.limits.max_connections)
        victim.reject(503)

    def closed(self, handler: _Handler) -> None:
        """A client connection closed."""
        self._open -= 1
        self.drop(handler)

    def drop(self, handler: _Handler) -> None:
        """``handler`` is closing: out of every pool (so the next shed picks another)."""
        self._idle.pop(handler, None)
        self._pending.pop(handler, None)

    def waiting(self, handler: _Handler, pending: bool) -> None:
        """``handler``'s read watchdog was armed (``pending``) or disarmed."""
        self._pending.pop(handler, None)
        if pending:
            self._pending[handler] = None

    @property
    def idle_count(self) -> int:
        """Connections currently waiting for a next keep-alive request."""
        return len(self._idle)

    def idle(self, handler: _Handler) -> None:
        """``handler`` finished a response and waits for a next request; closes the oldest idle connections past
        ``max_idle_connections``."""
        self._idle.pop(handler, None)
        self._idle[handler] = None
        while len(self._idle) > self.limits.max_idle_connections:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.force_close()

    def busy(self, handler: _Handler) -> None:
        """``handler`` received bytes (a next request): no longer idle."""
        self._idle.pop(handler, None)


class _Handler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol with the read watchdog, idle bookkeeping and OpenAI-shaped, content-free
    rejections described in the module docstring."""

    __slots__ = ("_pool", "_rx_timer", "_rx_mark", "_rx_payload")

    def __init__(self, manager: _Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._pool = manager
        self._rx_timer: asyncio.TimerHandle | None = None
        self._rx_mark = 0  # _request_count when the watchdog was armed: unchanged = headers still pending
        self._rx_payload: Any = None  # the body stream of the latest parsed request

    # -- the read watchdog ------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection that never sends a request is closed like a slow one
        self._pool.opened(self)

    def data_received(self, data: bytes) -> None:
        if data:
            self._pool.busy(self)
            if self._rx_timer is None:
                self._arm()  # the first byte of a next request
        before = len(self._messages)  # data_received is synchronous: nothing pops the queue meanwhile
        super().data_received(data)
        if len(self._messages) > before:
            self._rx_payload = self._messages[-1][1]
        if self._rx_timer is not None and self._received():
            self._disarm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._manager is not None:  # aiohttp calls it once per connection; guard against a second call
            self._pool.closed(self)
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._rx_mark = self._request_count
        self._rx_timer = self._loop.call_later(self._pool.limits.read_timeout_s, self._expired)
        self._pool.waiting(self, True)

    def _disarm(self) -> None:
        if self._rx_timer is not None:
            self._rx_timer.cancel()
            self._rx_timer = None
            self._pool.waiting(self, False)

    def _received(self) -> bool:
        """A request was parsed since the watchdog was armed and its body has fully arrived."""
        return self._request_count != self._rx_mark and self._rx_payload is not None and self._rx_payload.is_eof()

    def _expired(self) -> None:
        self._rx_timer = None
        self._pool.waiting(self, False)
        if self.transport is None or self._received():
            return
        self._pool.log.note(logging.INFO, "closing a connection: request %s not received within "
                                          "server.read_timeout_s = %gs",
                            "headers" if self._request_count == self._rx_mark else "body",
                            self._pool.limits.read_timeout_s)
        self.reject(408)

    def reject(self, status: int) -> None:
        """Close the connection, first answering ``status`` (408, 503; :func:`rejection`) where the client can
        tell which request it answers: nothing in flight (its headers pending), or the request whose body is
        late, before any byte of its response."""
        self._pool.drop(self)
        if self.transport is None:
            return
        headers_pending = self._request_count == self._rx_mark
        current = self._current_request
        if (current is None if headers_pending else current is not None and current.content is self._rx_payload
                and current.writer.output_size == 0):
            status, message, type_, code = rejection(status, None)
            self.transport.write(_raw_response(status, error_body(message, type_, None, code)))
        self.force_close()  # the transport flushes the answer before it closes

    # -- idle keep-alive connections ---------------------------------------------------------------------------
    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        resp = _openai_shaped(resp)
        out = await super().finish_response(request, resp, start_time)
        if not out[1] and out[0].keep_alive and not self._messages and not (self._close or self._force_close):
            self._pool.idle(self)
        return out

    # -- rejections and logs -----------------------------------------------------------------------------------
    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        status, text, type_, code = rejection(status, exc)
        kind = type(exc).__name__ if exc is not None else "none"
        if status >= 500:
            log.error("HTTP %d: request handler failed with %s%s", status, kind, _where(exc))
        else:
            log.info("HTTP %d: rejected a malformed request (%s)", status, kind)
        if request.writer.output_size > 0:  # the response already started: only closing is left (as aiohttp)
            raise ConnectionError("response already started, cannot send an error response")
        resp = error_response(status, text, type_, None, code)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        exc = exc if isinstance(exc, BaseException) else None
        log.error("aiohttp server error (%s)%s", type(exc).__name__ if exc else "no exception", _where(exc))

    def log_debug(self, *args: Any, **kw: Any) -> None:
        pass  # aiohttp's debug records can carry exception messages; its events are covered by our own records


def _openai_shaped(resp: web.StreamResponse) -> web.StreamResponse:
    """A plain-text ``HTTPException`` response with status >= 400 (the router's 404 / 405, aiohttp's 413) as the
    OpenAI error JSON with the same status and headers (``Allow`` kept); anything else unchanged."""
    if not isinstance(resp, web.HTTPException) or resp.status < 400 or resp.prepared \
            or resp.content_type == "application/json":
        return resp
    status = resp.status
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    try:
        code: str | None = HTTPStatus(status).phrase.lower().replace(" ", "_")  # "not_found", "method_not_allowed"
    except ValueError:
        code = None
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-type", "content-length")}
    return error_response(status, resp.reason, type_, None, code, headers=headers)


class SidecarRunner(web.AppRunner):
    """An ``aiohttp.web.AppRunner`` whose server speaks through :class:`_Handler` with ``limits``
    (:class:`TransportLimits`); handler cancellation on (a client that goes away cancels its handler), aiohttp's
    access log off. ``port``: the first bound port once a site started."""

    def __init__(self, app: web.Application, limits: TransportLimits, *, shutdown_timeout: float = 60.0,
                 handle_signals: bool = False) -> None:
        super().__init__(app, handle_signals=handle_signals, access_log=None, handler_cancellation=True,
                         shutdown_timeout=shutdown_timeout)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server(), self.limits)

    @property
    def port(self) -> int:
        """The TCP port of the first listening socket (raises ``IndexError`` before a site started)."""
        return int(self.addresses[0][1])


async def start(app: web.Application, server: ServerConfig, *, host: str | None = None, port: int | None = None,
                backlog: int = 1024, shutdown_timeout: float | None = None) -> SidecarRunner:
    """Run ``app`` on ``host``:``port`` (default ``server.host`` / ``server.port``; port 0: an ephemeral one, read
    it from :attr:`SidecarRunner.port`) with the limits of ``server`` (a ``[server]`` section) and a listen
    ``backlog``; ``shutdown_timeout`` (seconds in-flight handlers get on ``cleanup()``) defaults to
    ``server.grace_period_s``. Installs :func:`install_log_filter`. Returns the started runner (stop it with
    ``await runner.cleanup()``). Raises ``OSError`` when the address cannot be bound (the app is cleaned up first)."""
    install_log_filter()
    runner = SidecarRunner(app, TransportLimits.of(server), shutdown_timeout=(
        server.grace_period_s if shutdown_timeout is None else shutdown_timeout))
    await runner.setup()
    site = web.TCPSite(runner, server.host if host is None else host, server.port if port is None else port,
                       backlog=backlog, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
