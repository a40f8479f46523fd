"""The seam between transport (``sidecar``) and judgment (``rails``): what the proxy asks of a guard.

The proxy core owns HTTP; a :class:`Guard` owns every decision about content, in the shape of mitmproxy's addon
hooks (``request`` → ``responseheaders`` → ``response``) around one exchange:

1. ``await guard.check_request(exchange)`` before anything goes upstream. ``None`` lets it pass; a
   :class:`Refusal` makes the proxy answer with a normal completion whose content is the refusal and whose
   ``finish_reason`` is ``content_filter`` (streamed when the client asked to stream); raising
   :class:`GuardRejected` answers with that HTTP status in the OpenAI error shape (e.g. 400 for ``stream: true``
   against output rails with streaming disabled).
2. Non-streaming: ``await guard.check_response(exchange, body)`` with the parsed upstream JSON; ``None`` relays
   the upstream bytes unchanged, a dict is serialized and sent instead.
3. Streaming: ``guard.open_stream(exchange, sink, abort)`` returns a :class:`StreamGuard`. The proxy hands it
   every upstream SSE event, byte-exact, one upstream read at a time (``on_events``), and the stream guard decides
   what the client receives through ``sink``. When ``stream_guard.stopped`` turns true (a block), the proxy stops
   reading and closes the upstream response so the generation stops; a guard checking in the background calls
   ``abort()`` to close it between reads. ``on_end`` is called exactly once when the relay ends: the upstream
   ended, the guard stopped it, the upstream failed, or the client went away (then ``sink.send`` raises
   :class:`ClientGone`).
4. When the exchange is over, every :class:`ExchangeObserver` gets ``exchange_finished(exchange)``.

Every method is required (no optional hooks found by introspection). :class:`PassThrough` is the guard with no
rails: every event goes out unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from railcar.core.exchange import Exchange

__all__ = ["Refusal", "GuardRejected", "ClientGone", "SSEEvent", "StreamSink", "StreamGuard", "Guard",
           "ExchangeObserver", "PassThrough"]

# One SSE event: its exact bytes (terminator included) and its joined ``data:`` payload (``None`` for an event
# with no data line, e.g. a comment).
SSEEvent = tuple[bytes, "bytes | None"]


@dataclass
class Refusal:
    """A rail blocked the request: ``rail`` is the rail's name (e.g. ``"self check input"``), ``message`` the
    text the client receives as the assistant's content."""

    rail: str
    message: str


class GuardRejected(Exception):
    """The request cannot be served as configured; answered as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


class ClientGone(ConnectionResetError):
    """The agent closed its connection while the sidecar was writing to it (raised by :meth:`StreamSink.send`)."""


class StreamSink(Protocol):
    """Where a stream guard writes SSE frames for the client (each frame a complete event, ``\\n\\n``-ended).
    ``send`` raises :class:`ClientGone` when the agent has gone."""

    async def send(self, frame: bytes) -> None: ...


class StreamGuard(Protocol):
    """What :meth:`Guard.open_stream` returns for one streamed response. ``stopped`` (bool) turns true on a
    block."""

    stopped: bool

    async def on_events(self, events: list[SSEEvent]) -> int:
        """The events of one upstream read, in order. Returns how many were handled: ``len(events)``, or fewer
        when the stream stopped (a block) part-way, counting the event whose handling blocked."""
        ...

    async def on_end(self) -> None:
        """The upstream stream ended (normally, early, or the client disconnected)."""
        ...


class Guard(Protocol):
    """The hooks of the module docstring. Exceptions from ``check_request`` or ``check_response`` answer HTTP 500
    ``guard_error`` (fail closed).

    ``inspects``: the guard judges content, so the proxy must not relay what it could not hand to it (a whole answer
    that is not a JSON object, a stream request answered without SSE): the API's 502 replaces it. ``False`` only for
    a guard that relays everything unseen anyway (:class:`PassThrough`).

    Optional ``steps_in_callback`` (default false when absent): the stream guards it opens may be stepped outside
    any task, from the upstream socket's callback (nothing in ``on_events`` needs ``asyncio.current_task()``, e.g.
    ``asyncio.timeout``, before its first suspension); the proxy then hands each read over there."""

    inspects: bool

    async def check_request(self, exchange: Exchange) -> Refusal | None: ...

    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None: ...

    def open_stream(self, exchange: Exchange, sink: StreamSink, abort: Callable[[], Any]) -> StreamGuard: ...


class ExchangeObserver(Protocol):
    """Told once per finished exchange (after the client got its last byte). Must not block: enqueue and return.
    The trace recorder in ``streams`` is one; it parses ``stream_data`` off the hot path."""

    def exchange_finished(self, exchange: Exchange) -> None: ...


class _PassThroughStream:
    stopped = False

    def __init__(self, sink: StreamSink) -> None:
        self._sink = sink

    async def on_events(self, events: list[SSEEvent]) -> int:
        if events:  # one send per upstream read: the sink writes a read as one chunk anyway
            await self._sink.send(events[0][0] if len(events) == 1 else b"".join([raw for raw, _ in events]))
        return len(events)

    async def on_end(self) -> None:
        return None


class PassThrough:
    """The guard with no rails: requests pass, bodies and events are relayed byte for byte."""

    inspects = False

    async def check_request(self, exchange: Exchange) -> Refusal | None:
        return None

    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def open_stream(self, exchange: Exchange, sink: StreamSink, abort: Callable[[], Any]) -> StreamGuard:
        return _PassThroughStream(sink)
