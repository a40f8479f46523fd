"""The direct relay: an upstream response body handed to the relay by aiohttp's HTTP parser, as it parses it.

Relaying a stream through aiohttp's ``readany()`` and ``StreamResponse.write()`` costs, per upstream read, a future,
a task wake-up, two coroutines, a buffer round trip that resumes the transport's reading, and the re-arming of the
``sock_read`` timer (one libuv timer per read): most of the sidecar's CPU per delta at the pace models stream
(issue 15). :class:`DirectBody` removes all of it and keeps aiohttp's connection handling, HTTP parsing (chunked
decoding, the body's end, its errors), pooling and decompression: for the rest of one response the body's
``StreamReader`` becomes a :class:`_Tapped` one (same layout, ``__class__`` swapped back afterwards) whose
``feed_data`` hands each parsed piece to the relay's handler, which writes it to the agent's transport in the same
callback (:meth:`DirectBody.write`: the HTTP/1.1 chunk framing aiohttp's ``StreamWriter`` uses). The response's
coroutine sleeps on one future until the body ends, fails, times out or the agent's socket needs draining.

The read timeout (``upstream.read_timeout_s``, aiohttp's ``sock_read``) becomes one lazy timer per stream: a read
only records the loop's time; the timer re-arms itself at the last read plus the timeout when it fires, and ends
the body with ``aiohttp.SocketTimeoutError`` (what ``readany()`` raises) when no read came in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.streams import StreamReader

__all__ = ["DirectBody"]

# aiohttp's StreamWriter drains the agent's socket past this many bytes written (its ``write(LIMIT=0x10000)``).
_DRAIN_AT = 0x10000

# The tapped readers and their relays (a slotted StreamReader has no room for one more attribute).
_TAPS: dict[StreamReader, DirectBody] = {}


class _Tapped(StreamReader):
    """A ``StreamReader`` whose parser callbacks go to its :class:`DirectBody` instead of its buffer."""

    __slots__ = ()

    def feed_data(self, data: bytes, size: int = 0) -> bool:
        _TAPS[self].received(data)
        return False

    def begin_http_chunk_receiving(self) -> None:  # chunk boundaries matter to iter_chunks() only
        pass

    def end_http_chunk_receiving(self) -> None:
        pass

    def feed_eof(self) -> None:
        body = _TAPS[self]
        body.untap()  # before aiohttp pools the connection (in feed_eof): it goes back with its own timeout
        StreamReader.feed_eof(self)
        body.wakeup()

    def set_exception(self, exc: BaseException, exc_cause: BaseException = aiohttp.streams._EXC_SENTINEL) -> None:
        super().set_exception(exc, exc_cause)  # a broken connection, a parse error, the read timeout
        _TAPS[self].wakeup()


class DirectBody:
    """One response body relayed from aiohttp's parser to a handler (see the module docstring).

    ``up``: the aiohttp client response, headers read, body not read to its end. ``resp``: the agent's prepared
    ``StreamResponse`` whose headers are already on the wire (a first ``write`` sent them); ``request`` its request.
    :meth:`usable` says whether both ends allow it (an HTTP/1.1 chunked response without compression, a body
    still open).

    :meth:`run` ``(handler)``: ``handler(data: bytes)`` is called with each piece of the body, in order, from the
    upstream socket's callback; it must not block, and what it raises ends the relay and is re-raised by
    :meth:`run`. A handler that must wait for something (a stream guard's check that did not finish in the
    callback) calls :meth:`hold` and later :meth:`release`, and :meth:`fail` when that later work fails. Returns
    when the body ended; raises what ``readany()`` would (``aiohttp.ClientPayloadError``,
    ``aiohttp.SocketTimeoutError``, …), or :class:`ConnectionResetError` from :meth:`write` when the agent is gone.
    """

    __slots__ = ("up", "content", "writer", "out", "loop", "proto", "handler", "wake", "error", "last", "timeout",
                 "timer", "drain", "held")

    def __init__(self, up: aiohttp.ClientResponse, resp: web.StreamResponse, request: web.Request) -> None:
        self.up, self.content = up, up.content
        self.writer: Any = getattr(resp, "_payload_writer", None)  # aiohttp's StreamWriter: its byte counts, drain
        # HTTP/1.1 without compression: the writer frames chunks (an HTTP/1.0 agent keeps the readany loop)
        chunked = getattr(self.writer, "chunked", False) and not resp.compression
        self.out: Any = request.transport if chunked else None
        self.loop = asyncio.get_running_loop()
        self.proto: Any = None  # aiohttp's ResponseHandler of the connection, once run() taps it
        self.handler: Callable[[bytes], None] | None = None
        self.wake: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.last = 0.0
        self.timeout: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.drain = False
        self.held = False  # the handler asked for no more reads for now (hold() / release())

    def usable(self) -> bool:
        """Both ends allow the direct relay (else the caller keeps the ``readany`` loop)."""
        c = self.content
        return (self.out is not None and type(c) is StreamReader and self.up.connection is not None
                and not c.is_eof() and c.exception() is None
                and not getattr(self.writer, "_headers_buf", None))  # the headers left: body bytes may follow

    def write(self, data: bytes) -> None:
        """Write ``data`` to the agent as one HTTP/1.1 chunk, now. Raises :class:`ConnectionResetError` when the
        agent's transport is closing."""
        out = self.out
        if out.is_closing():
            raise ConnectionResetError("client disconnected")
        n = len(data)
        out.write(b"%x\r\n%b\r\n" % (n, data))
        w = self.writer
        w.output_size += n
        w.buffer_size += n
        if w.buffer_size > _DRAIN_AT:
            self.drain = True

    async def run(self, handler: Callable[[bytes], None]) -> None:
        content = self.content
        self.handler = handler
        if content._buffer:  # what the parser had buffered before the tap: first, in order
            handler(content.read_nowait())
        proto: Any = self.up.connection.protocol  # type: ignore[union-attr]  # usable() checked it
        self.proto = proto
        # aiohttp re-arms its sock_read timer on every read; this one re-arms itself only when it fires
        self.timeout, proto.read_timeout = proto.read_timeout, None
        self.last = self.loop.time()
        if self.timeout:
            self.timer = self.loop.call_at(self.last + self.timeout, self._expire)
        _TAPS[content] = self
        content.__class__ = _Tapped
        try:
            while self.error is None and not content.is_eof() and content.exception() is None:
                self.wake = self.loop.create_future()
                await self.wake
                if self.drain and self.error is None:
                    await self._drain(proto)
        finally:
            self.untap()
            self.wake = self.handler = None  # the handler's closure refers back to this relay: no cycle left behind
        if self.error is not None:
            raise self.error
        if (exc := content.exception()) is not None:
            raise exc

    # -------------------------------------------------------------------------------------------- parser callbacks

    def received(self, data: bytes) -> None:
        """A piece of the body, from the parser: to the handler, unless the relay already ended."""
        self.last = self.loop.time()
        if self.error is not None or not data:
            return
        try:
            self.handler(data)  # type: ignore[misc]
        except BaseException as exc:  # the handler's or the agent's transport's end: run() re-raises it
            self.error = exc
            self.wakeup()
            return
        if self.drain:
            self.wakeup()

    def untap(self) -> None:
        """The body's reader and the connection's read timeout back to aiohttp's own (idempotent)."""
        content = self.content
        if _TAPS.pop(content, None) is None:
            return
        content.__class__ = StreamReader
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.proto.read_timeout = self.timeout
        self.release()  # the body's end came in the read the handler held after: the connection goes back reading

    def wakeup(self) -> None:
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, exc: BaseException) -> None:
        """End the relay from outside the parser's callback (work the handler finished later failed): :meth:`run`
        raises ``exc``."""
        if self.error is None:
            self.error = exc
        self.wakeup()

    def hold(self) -> None:
        """Stop reading the upstream until :meth:`release` (the handler is busy with what it has); the upstream's
        silence meanwhile does not count against the read timeout. Nothing once the body ended (its connection
        may already serve another request)."""
        if _TAPS.get(self.content) is not self or self.held:
            return
        self.held = True
        transport = self.proto.transport
        if transport is not None:
            transport.pause_reading()

    def release(self) -> None:
        """Read the upstream again after :meth:`hold`; the read timeout restarts now."""
        if not self.held:
            return
        self.held = False
        self.last = self.loop.time()
        transport = self.proto.transport
        if transport is not None and not transport.is_closing() and not self.drain:
            transport.resume_reading()

    # -------------------------------------------------------------------------------------------- internals

    async def _drain(self, proto: Any) -> None:
        """The agent reads slower than the upstream writes: stop reading the upstream until its socket drained."""
        self.writer.buffer_size = 0
        transport = proto.transport  # the socket itself: aiohttp's pause_reading() would also pause its parser
        if transport is None:  # the upstream connection is gone: run() sees the body's error
            self.drain = False
            return
        transport.pause_reading()
        try:
            await self.writer.drain()
        except (ConnectionError, aiohttp.ClientConnectionResetError) as exc:
            self.error = ConnectionResetError(str(exc))
        finally:
            self.drain = False  # the upstream's silence while paused was ours: the read timeout restarts now
            self.last = self.loop.time()
            if not transport.is_closing() and not self.held:
                transport.resume_reading()

    def _expire(self) -> None:
        """The lazy read timer: end the body with aiohttp's read timeout when no read came for ``timeout`` s."""
        assert self.timeout is not None
        now = self.loop.time()
        # while the agent drains or the handler holds, the upstream is paused by us: its silence does not count
        due = now + self.timeout if self.drain or self.held else self.last + self.timeout
        if now < due:
            self.timer = self.loop.call_at(due, self._expire)
            return
        self.timer = None
        self.content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
