"""The calls of ``railcar demo``: one demo agent's call on each wire API with that API's real SDK, and what came of it.

A call is sent through the agent's sidecar by the SDK an agent on that API uses — ``openai`` ``chat.completions``
(``openai_chat``) or ``responses`` (``openai_responses``), ``anthropic`` ``messages`` (``anthropic_messages``) —
streaming or not as recorded, with the recorded body (parameters the SDK method does not declare go as
``extra_body``). Its :class:`CallResult` is filled from three sources:

- what the SDK reported: a normal answer (``tokens``: the deltas received, or the answer's output-token usage), an
  HTTP error (``upstream_error``: a recorded error relayed), an in-stream error naming a rail (``blocked_stream``:
  the ``openai`` SDK raises ``APIError`` with ``body.code == "content_blocked"`` on Chat's error chunk and on the
  Responses ``error`` event; the ``anthropic`` SDK raises ``APIStatusError`` with ``body.error.code`` on Anthropic's
  ``event: error``), or a refusal (Chat ``finish_reason: content_filter``, Anthropic ``stop_reason: refusal``);
- what the guard decided (:class:`Outcomes`, an exchange observer of the sidecar, by the ``x-demo-call`` header):
  the status, and a block the client could not tell from an answer;
- the bytes the client read (:class:`TapTransport`, an ``httpx2`` transport: the HTTP client both SDKs run on):
  how a blocked stream ended (:func:`ends_blocked`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai
import orjson

from railcar.core.exchange import Exchange, Outcome
from railcar.core.wire import BLOCKED_CODE, VIOLATION_TYPE
from railcar.sidecar.sse import split_events

__all__ = ["CallResult", "Clients", "Outcomes", "Tap", "TapTransport", "send", "apply_decision", "apply_tap",
           "ends_blocked"]

# ---------------------------------------------------------------------------------------------------- client tap


class Tap(httpx2.AsyncByteStream):
    """A response stream that keeps a copy of the bytes the client reads (to check how a stream ended); on close
    it reads what the client left unread (the ``data: [DONE]`` after an error event)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.data = bytearray()
        self._it: Any = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._it = self.inner.__aiter__()
        async for chunk in self._it:
            self.data += chunk
            yield chunk

    async def aclose(self) -> None:
        if self._it is not None:
            try:
                await asyncio.wait_for(self._rest(), 2.0)
            except Exception:
                pass
        await self.inner.aclose()

    async def _rest(self) -> None:
        async for chunk in self._it:
            self.data += chunk


class TapTransport(httpx2.AsyncBaseTransport):
    """The clients' transport: responses to requests with an ``x-demo-call`` header are read through a
    :class:`Tap` kept in ``taps`` under that header's value."""

    def __init__(self, taps: dict[str, Tap]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.taps = taps

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        resp = await self.inner.handle_async_request(request)
        call = request.headers.get("x-demo-call")
        if not call:
            return resp
        tap = Tap(resp.stream)
        self.taps[call] = tap
        return httpx2.Response(resp.status_code, headers=resp.headers, stream=tap, extensions=resp.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Decision:
    """What the guard decided for one call: its outcome, the status sent, whether the upstream was called."""

    outcome: Outcome
    status: int | None
    upstream_called: bool


class Outcomes:
    """An :class:`railcar.core.guard.ExchangeObserver` keeping what the guard decided, by ``x-demo-call`` header."""

    def __init__(self) -> None:
        self.by_call: dict[str, Decision] = {}

    def exchange_finished(self, exchange: Exchange) -> None:
        call = exchange.headers.get("x-demo-call")
        if call:
            self.by_call[call] = Decision(exchange.outcome, exchange.status,
                                          exchange.response_body is not None or bool(exchange.stream_data))


@dataclass
class Clients:
    """One demo agent's SDK clients, both reading through one :class:`TapTransport`: ``openai`` (``base_url`` the
    sidecar's ``/v1``) and ``anthropic`` (the sidecar's root: the SDK appends ``/v1/messages``)."""

    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic

    @classmethod
    def open(cls, base_url: str, taps: dict[str, Tap]) -> Clients:
        """The clients of a sidecar at ``base_url`` (``http://host:port/v1``); no retries, 60 s timeouts."""
        # httpx2, the httpx fork both SDKs run on (``anthropic`` refuses an ``httpx`` client; ``openai`` types its
        # parameter as ``httpx`` and takes either)
        http: Any = httpx2.AsyncClient(transport=TapTransport(taps), timeout=60.0)
        return cls(openai.AsyncOpenAI(base_url=base_url, api_key="railcar-demo", max_retries=0, timeout=60.0,
                                      http_client=http),
                   anthropic.AsyncAnthropic(base_url=base_url.removesuffix("/v1"), api_key="railcar-demo",
                                            max_retries=0, timeout=60.0, http_client=http))

    async def close(self) -> None:
        """Close both clients (and their shared transport)."""
        await self.openai.close()
        await self.anthropic.close()


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class CallResult:
    """What one call did, as the client saw it and the guard decided.

    ``api``: the wire API (codec name); ``result``: ``ok`` | ``blocked_input`` | ``blocked_stream`` |
    ``blocked_output`` | ``upstream_error`` (a recorded error relayed) | ``client_error``; ``rail`` the blocking
    rail; ``tokens`` content deltas received (streams) or the answer's output-token usage (non-streaming); ``tail``
    the last two SSE data payloads of a blocked stream; ``error_chunk_last``: the blocked stream ended with its API's
    blocked-content frames (:func:`ends_blocked`)."""

    session: str
    record_id: str
    stream: bool
    result: str = "ok"
    rail: str = ""
    tokens: int = 0
    status: int | None = None
    tail: list[str] = field(default_factory=list)
    error_chunk_last: bool | None = None
    detail: str = ""
    api: str = "openai_chat"


def _sse(raw: bytes) -> list[tuple[str, str]]:
    """``(event name, data)`` of every SSE event with data in ``raw`` (name ``""`` without an ``event:`` line)."""
    out = []
    for ev, data in split_events(raw):
        if data is None:
            continue
        name = next((line[6:].strip().decode() for line in ev.splitlines() if line.startswith(b"event:")), "")
        out.append((name, data.decode("utf-8", "replace")))
    return out


def _blocked_error(data: str) -> bool:
    """``data`` is a JSON payload whose ``error`` is Railcar's block (``guardrails_violation`` /
    ``content_blocked``)."""
    try:
        err = orjson.loads(data).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(err, dict) and err.get("type") == VIOLATION_TYPE and err.get("code") == BLOCKED_CODE


def ends_blocked(api: str, raw: bytes) -> bool:
    """The stream ``raw`` (the bytes the client read) ends as ``api`` ends a blocked stream: Chat with the
    blocked-content error chunk then ``data: [DONE]`` (``../shared/SEEDS.md``); Responses and Anthropic with an
    ``event: error`` carrying the block (a Responses ``response.failed`` may follow it)."""
    events = _sse(raw)
    if api == "openai_chat":
        return len(events) >= 2 and events[-1][1] == "[DONE]" and _blocked_error(events[-2][1])
    if events and api == "openai_responses" and events[-1][0] == "response.failed":
        events = events[:-1]
    return bool(events) and events[-1][0] == "error" and _blocked_error(events[-1][1])


# ---------------------------------------------------------------------------------------------------- sending

_PARAMS: dict[str, set[str]] = {}


def _split_params(api: str, method: Callable[..., Any], request: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                         dict[str, Any]]:
    """``(kwargs, extra_body)``: the parameters ``method`` declares, and the rest of the recorded body
    (provider-specific or beta fields such as ``reasoning_format``, ``context_management``) sent as ``extra_body``;
    ``stream`` is the caller's."""
    known = _PARAMS.get(api)
    if known is None:
        known = _PARAMS[api] = {p for p in inspect.signature(method).parameters
                                if not p.startswith("extra_") and p not in ("timeout", "stream")}
    return ({k: v for k, v in request.items() if k in known},
            {k: v for k, v in request.items() if k not in known and k != "stream"})


async def _chat(clients: Clients, request: dict[str, Any], headers: dict[str, str], res: CallResult) -> None:
    create = clients.openai.chat.completions.create
    kwargs, extra = _split_params(res.api, create, request)
    answer: Any = await create(**kwargs, stream=res.stream, extra_body=extra or None, extra_headers=headers)
    if not res.stream:
        usage = getattr(answer, "usage", None)
        res.tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
        if any(getattr(c, "finish_reason", None) == "content_filter" for c in answer.choices or ()):
            res.result = "blocked_output"  # the whole-message output rail replaced the answer
        return
    try:
        async for chunk in answer:
            for ch in chunk.choices or ():
                if ch.delta is not None and ch.delta.content:
                    res.tokens += 1
                if ch.finish_reason == "content_filter":
                    res.result = "blocked_input"  # a streamed refusal: the input was refused
    finally:
        await answer.close()


async def _responses(clients: Clients, request: dict[str, Any], headers: dict[str, str], res: CallResult) -> None:
    create = clients.openai.responses.create
    kwargs, extra = _split_params(res.api, create, request)
    answer: Any = await create(**kwargs, stream=res.stream, extra_body=extra or None, extra_headers=headers)
    if not res.stream:
        usage = getattr(answer, "usage", None)
        res.tokens = int(getattr(usage, "output_tokens", 0) or 0) if usage else 0
        return
    try:
        async for event in answer:
            if str(getattr(event, "type", "")).endswith(".delta"):
                res.tokens += 1
    finally:
        await answer.close()


async def _anthropic(clients: Clients, request: dict[str, Any], headers: dict[str, str], res: CallResult) -> None:
    create = clients.anthropic.messages.create
    kwargs, extra = _split_params(res.api, create, request)
    answer: Any = await create(**kwargs, stream=res.stream, extra_body=extra or None, extra_headers=headers)
    if not res.stream:
        res.tokens = int(getattr(answer.usage, "output_tokens", 0) or 0)
        if answer.stop_reason == "refusal":
            res.result = "blocked_output"
        return
    try:
        async for event in answer:
            if event.type == "content_block_delta":
                res.tokens += 1
            elif event.type == "message_delta" and event.delta.stop_reason == "refusal":
                res.result = "blocked_input"
    finally:
        await answer.close()


_SENDERS = {"openai_chat": _chat, "openai_responses": _responses, "anthropic_messages": _anthropic}


def _blocked_by(body: Any) -> str | None:
    """The rail named by an SDK error's body when it is Railcar's block (OpenAI's ``{code, param}`` or
    Anthropic's ``{"type": "error", "error": {code, param}}``), else ``None``."""
    if not isinstance(body, dict):
        return None
    inner = body.get("error")
    err: dict[str, Any] = inner if isinstance(inner, dict) else body
    return str(err.get("param") or "") if err.get("code") == BLOCKED_CODE else None


async def send(clients: Clients, request: dict[str, Any], headers: dict[str, str], res: CallResult) -> None:
    """Send one recorded ``request`` of ``res.api`` (``KeyError`` for an API with no sender) with that API's SDK and
    fill ``res`` with what the client saw; never raises for what the SDK raises."""
    try:
        await _SENDERS[res.api](clients, request, headers, res)
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        rail = _blocked_by(exc.body) if exc.status_code == 200 else None  # Anthropic: an in-stream error event
        if rail is not None:
            res.result, res.rail = "blocked_stream", rail
        else:
            res.result, res.status, res.detail = "upstream_error", exc.status_code, type(exc).__name__
    except (openai.APIError, anthropic.APIError) as exc:  # an in-band error event in a 200 stream
        rail = _blocked_by(exc.body)
        if rail is not None:
            res.result, res.rail = "blocked_stream", rail
        else:
            res.result, res.detail = "upstream_error", f"{type(exc).__name__}: {exc}"[:200]
    except Exception as exc:  # a body the client cannot parse (e.g. a recorded non-chat echo)
        res.result, res.detail = "client_error", type(exc).__name__


def apply_decision(res: CallResult, seen: Decision | None) -> None:
    """Complete ``res`` with the guard's decision (``None`` when the sidecar reported none): the status the client
    did not see, and a block the client could not tell from a normal answer (where it happened: before the
    upstream was called, in a stream, or in a whole answer)."""
    if seen is None:
        return
    if res.status is None:
        res.status = seen.status
    if not seen.outcome.blocked or res.result not in ("ok", "blocked_input", "blocked_output"):
        return
    if not seen.upstream_called:
        res.result = "blocked_input"
    elif res.stream:
        res.result = "blocked_stream"
    else:
        res.result = "blocked_output"
    res.rail = res.rail or (seen.outcome.blocked_rail or "")


def apply_tap(res: CallResult, tap: Tap | None) -> None:
    """The closing frames of a blocked stream, from the bytes the client received."""
    if not res.stream or tap is None or res.result != "blocked_stream":
        return
    raw = bytes(tap.data)
    res.tail = [data for _, data in _sse(raw)][-2:]
    res.error_chunk_last = ends_blocked(res.api, raw)
