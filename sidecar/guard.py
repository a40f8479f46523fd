"""The seam between transport (``sidecar/``) and judgment (``rails/``): what the proxy asks of a guard.

The proxy core owns HTTP; a :class:`Guard` owns every decision about content, in the shape of mitmproxy's addon
hooks (``request`` → ``responseheaders`` → ``response``) around one chat-completion exchange:

1. ``await guard.check_request(exchange)`` before anything goes upstream. ``None`` lets it pass; a
   :class:`Refusal` makes the proxy answer with a normal completion whose content is the refusal and whose
   ``finish_reason`` is ``content_filter`` (streamed when the client asked to stream); raising
   :class:`GuardRejected` answers with that HTTP status in the OpenAI error shape (e.g. 400 for ``stream: true``
   against output rails with streaming disabled).
2. Non-streaming: ``await guard.check_response(exchange, body)`` with the parsed upstream JSON; ``None`` relays
   the upstream bytes unchanged, a dict is serialized and sent instead.
3. Streaming: ``guard.open_stream(exchange, sink)`` returns a :class:`StreamGuard`. The proxy hands it every
   upstream SSE event, byte-exact, and the stream guard decides what the client receives through ``sink``. When
   ``stream_guard.stopped`` turns true (a block), the proxy stops reading and closes the upstream response so the
   generation stops. ``on_end`` is called exactly once when the relay ends: the upstream ended, the guard stopped
   it, the upstream failed, or the client went away (then ``sink.send`` raises ``ConnectionResetError``).
4. When the exchange is over, every :class:`ExchangeObserver` gets ``exchange_finished(exchange)``.

:class:`PassThrough` is the guard when no guardrail configuration is loaded: every event goes out unchanged.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Exchange:
    """One ``POST /v1/chat/completions`` call as the guard and the trace recorder see it.

    ``body`` is the parsed request with the ``guardrails`` field removed (that field, if any, is in
    ``guardrails_options``). ``outcome`` is filled by the guard for traces and responses: ``activated_rails``
    (list of rail names), ``blocked`` (bool), ``blocked_rail`` (str or None), ``redactions`` (list of notes).
    """

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    guardrails_options: dict[str, Any] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_ns: int = field(default_factory=time.time_ns)
    outcome: dict[str, Any] = field(default_factory=dict)
    # A guard that edits ``body`` in place sets this so the proxy re-serializes it (replacing ``exchange.body``
    # with a new dict is detected without it); otherwise the client's original bytes go upstream untouched.
    body_changed: bool = False
    # Filled by the proxy as the call completes, for ExchangeObserver (trace recording) off the hot path:
    status: int | None = None            # HTTP status sent to the client
    response_body: bytes | None = None   # non-streaming upstream body, as received
    stream_data: list[bytes] = field(default_factory=list)  # upstream SSE `data:` payloads, in order
    error: str | None = None             # transport failure or client disconnect, if any
    finished_ns: int | None = None

    @property
    def stream(self) -> bool:
        """The request asked for a streamed answer (``"stream": true``)."""
        return bool(self.body.get("stream"))

    @property
    def model(self) -> str:
        """The request's ``model`` (``""`` when absent)."""
        return str(self.body.get("model", ""))


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


class StreamSink(Protocol):
    """Where a stream guard writes SSE frames for the client (each frame a complete event, ``\\n\\n``-ended)."""

    async def send(self, frame: bytes) -> None: ...


class StreamGuard(Protocol):
    """What :meth:`Guard.open_stream` returns for one streamed response. ``stopped`` (bool) turns true on a
    block. Optional batch seam: ``async on_events(events) -> int`` (``events`` a list of ``(raw, data)`` of one
    upstream read, returning how many were handled, fewer when it stopped part-way); the proxy calls it instead
    of ``on_event`` when present (``rails.stream_guard.RailsStreamGuard`` has it)."""

    stopped: bool

    async def on_event(self, raw: bytes, data: bytes | None) -> None:
        """One upstream SSE event: ``raw`` its exact bytes (terminator included), ``data`` its joined ``data:``
        payload or ``None`` for a comment-only event."""

    async def on_end(self) -> None:
        """The upstream stream ended (normally, early, or the client disconnected)."""


class Guard(Protocol):
    """The hooks of the module docstring. ``open_stream`` may take a keyword ``abort`` (a no-argument callable
    closing the upstream response) so a guard checking in the background can stop the generation between events;
    the proxy passes it only when the signature declares it. Exceptions from ``check_request`` or
    ``check_response`` answer HTTP 500 ``guard_error`` (fail closed)."""

    async def check_request(self, exchange: Exchange) -> Refusal | None: ...

    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None: ...

    def open_stream(self, exchange: Exchange, sink: StreamSink) -> StreamGuard: ...


class ExchangeObserver(Protocol):
    """Told once per finished exchange (after the client got its last byte). Must not block: enqueue and return.
    The trace recorder in ``streams/`` is one; it parses ``stream_data`` off the hot path."""

    def exchange_finished(self, exchange: Exchange) -> None: ...


class _PassThroughStream:
    stopped = False

    def __init__(self, sink: StreamSink) -> None:
        self._sink = sink

    async def on_event(self, raw: bytes, data: bytes | None) -> None:
        await self._sink.send(raw)

    async def on_end(self) -> None:
        return None


class PassThrough:
    """The guard with no rails: requests pass, bodies and events are relayed byte for byte."""

    async def check_request(self, exchange: Exchange) -> Refusal | None:
        return None

    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def open_stream(self, exchange: Exchange, sink: StreamSink) -> StreamGuard:
        return _PassThroughStream(sink)
