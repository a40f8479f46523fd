"""The Anthropic Messages codec: ``POST /v1/messages``.

Formats (Anthropic API reference, "Messages" and "Streaming Messages" —
``https://docs.anthropic.com/en/api/messages`` and ``.../messages-streaming`` — and "Errors"; checked against the 153
recorded interactions in ``../shared/fixtures/recorded/anthropic_messages.jsonl`` and the ``anthropic`` SDK's
``Stream.__stream__``):

- request: ``model``, ``max_tokens`` and ``messages`` are required; ``system`` is a string or a list of ``text``
  blocks; ``messages[i] = {"role": "user" | "assistant", "content": str | [blocks]}`` with blocks ``text``,
  ``tool_use`` (history), ``tool_result`` (``content``: str or a list of ``text`` / ``image`` blocks: tool
  output), ``thinking``, ``document`` (``source.type == "text"`` carries ``source.data``), server-tool results
  (``*_tool_result``: tool output) ...
- answer: ``{"type": "message", "id", "model", "role": "assistant", "content": [blocks], "stop_reason":
  "end_turn" | "max_tokens" | "stop_sequence" | "tool_use" | "pause_turn" | "refusal", "usage": {"input_tokens",
  "output_tokens"}}``.
- stream: ``event: <type>`` + ``data: {...}``: ``message_start`` (``message`` with empty content),
  ``content_block_start`` (``index``, ``content_block``), ``content_block_delta`` (``index``, ``delta`` of type
  ``text_delta.text`` / ``input_json_delta.partial_json`` / ``thinking_delta.thinking`` /
  ``signature_delta.signature`` / ``citations_delta.citation``), ``content_block_stop``, ``message_delta``
  (``delta.stop_reason``, ``usage``), ``message_stop``; ``ping`` anywhere; ``error`` (``{"type": "error",
  "error": {"type", "message"}}``) ends a stream.
- errors: ``{"type": "error", "error": {"type": "invalid_request_error" | "authentication_error" |
  "permission_error" | "not_found_error" | "request_too_large" | "rate_limit_error" | "api_error" |
  "overloaded_error" | ..., "message"}}``; the SDK raises an ``APIStatusError`` on an ``event: error`` frame with
  the payload in its message (so the rail's name is in ``str(exc)``).

Stream keys: ``(index, <delta type without "_delta">)`` -> ``(0, "text")``, ``(1, "input_json")``,
``(2, "thinking")``, ``(2, "signature")``; any future ``*_delta`` with a string field keys the same way.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from railcar.core import semconv, wire

from .base import (
    Codec,
    Path,
    Piece,
    PieceKind,
    StreamState,
    TextDelta,
    ToolCall,
    Turn,
    flat_strings,
    kinds_under,
    mapping,
    number,
    sse_event,
    stop_list,
    text,
    text_turns,
    with_rail,
)

__all__ = ["AnthropicMessagesCodec", "ANTHROPIC_ERROR_TYPES"]

_DELTA_KINDS: dict[str, PieceKind] = {"text": "text", "input_json": "tool_arguments", "thinking": "reasoning"}

# Railcar's error types (railcar.core.wire) -> Anthropic's; a status picks one when the type is generic
ANTHROPIC_ERROR_TYPES = {"upstream_error": "api_error", "server_error": "api_error", "timeout_error": "timeout_error"}
_STATUS_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


_CALL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_new_tuple = tuple.__new__  # builds a Piece without its keyword constructor (once per string of every event)
_DELTA_PREFIX = ("delta",)
_TEXT_PARTS = ("delta", "text")
_SCALARS = (int, float, bool, type(None))


def _stem(delta: dict[str, Any]) -> str:
    """A delta's ``type`` without ``_delta`` (``text_delta`` -> ``text``): the last field of its stream key."""
    dtype = str(delta.get("type", ""))
    return dtype[:-len("_delta")] if dtype.endswith("_delta") else dtype


def _flat_delta(obj: dict[str, Any], delta: dict[str, Any], types: tuple[str, ...], out: list[Piece]) -> bool:
    """Append the pieces of ``obj["delta"]`` as :meth:`AnthropicMessagesCodec._piece` classifies them, if every value
    of it is a scalar or an empty container; ``False`` (``out`` then partly filled) when it is not."""
    dtype = delta.get("type")
    types = types + (dtype,) if isinstance(dtype, str) else types
    streamed = obj.get("type") == "content_block_delta"
    key = (obj.get("index"), _stem(delta)) if streamed else None
    kind = _DELTA_KINDS.get(key[1], "other") if key is not None else "other"
    kinds = kinds_under(_DELTA_PREFIX, types)
    for k, v in delta.items():
        if isinstance(v, str) and isinstance(k, str):
            if streamed and k != "type":
                out.append(_new_tuple(Piece, (("delta", k), v, key, kind)))
            else:
                out.append(_new_tuple(Piece, (("delta", k), v, None, kinds[k])))
        elif isinstance(v, str) or (isinstance(v, (dict, list)) and v):
            return False
    return True


def _block_turns(role: str, block: Any, prefix: Path) -> list[Turn]:
    """Turns of one content block at ``prefix`` (:func:`railcar.codecs.base.text_turns` of the block): every
    string of a ``*tool_result``'s ``content`` at any depth is tool output (text blocks, a fetched page's document
    ``source.data``, search results, ``stdout`` / ``stderr``); the text of other blocks (``text``, ``thinking``,
    a text ``document``'s ``source.data`` / ``title`` / ``context``, ``search_result`` content, ``compaction``) is
    input. ``tool_use`` blocks (the model's arguments) are not turns."""
    if not isinstance(block, dict):
        return []
    btype = str(block.get("type", ""))
    if btype.endswith("tool_result"):
        return text_turns("tool", "tool_output", block.get("content"), prefix + ("content",))
    return [] if btype in _CALL_BLOCKS else text_turns(role, "input", block, prefix)


class AnthropicMessagesCodec(Codec):
    """``anthropic_messages``: the Anthropic Messages API (see the module doc for shapes and stream keys)."""

    name = "anthropic_messages"
    path = "/v1/messages"
    operation = "chat"
    provider = "anthropic"
    required = {"model": (str,), "max_tokens": (int,), "messages": (list,)}

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """``system`` (string or text blocks), then every message's text, thinking, documents and tool results."""
        out = text_turns("system", "input", body.get("system"), ("system",))
        for i, msg in enumerate(body.get("messages") or []):
            if not isinstance(msg, dict):
                continue
            role, content = str(msg.get("role", "user")), msg.get("content")
            if isinstance(content, str):
                out.append(Turn(role, content, "input", ("messages", i, "content")))
            elif isinstance(content, list):
                for j, block in enumerate(content):
                    out.extend(_block_turns(role, block, ("messages", i, "content", j)))
        return out

    def stream_strings(self, obj: dict[str, Any]) -> list[Piece]:
        """Every string of one event (see :meth:`Codec.stream_strings`). An event whose values are scalars, empty
        containers, or (under ``delta``) an object of those — every ``content_block_delta`` but citations, ``ping``,
        ``content_block_stop``, ``message_stop`` — is classified here in one pass over its items; any other event
        goes to the generic walk. Equal to :meth:`Codec.walk_stream_strings` for every event."""
        etype = obj.get("type")
        types = (etype,) if isinstance(etype, str) else ()
        kinds = kinds_under((), types)
        out: list[Piece] = []
        for k, v in obj.items():
            if isinstance(v, str) and isinstance(k, str):
                out.append(_new_tuple(Piece, ((k,), v, None, kinds[k])))
            elif k == "delta" and isinstance(v, dict):
                if not _flat_delta(obj, v, types, out):
                    return self.walk_stream_strings(obj)
            elif isinstance(v, str) or (isinstance(v, (dict, list)) and v):
                return self.walk_stream_strings(obj)
        return out

    def text_delta(self, obj: dict[str, Any]) -> TextDelta | None:
        """A ``content_block_delta`` whose ``delta`` is ``{"type": "text_delta", "text": str}`` (beside scalars and
        empty containers) and whose other values are flat: ``text`` under key ``(index, "text")``, kind ``text``;
        the other strings are the event's ``type`` (and any flat string) and ``"text_delta"`` (see
        :meth:`Codec.text_delta`)."""
        if obj.get("type") != "content_block_delta":
            return None
        delta, index = obj.get("delta"), obj.get("index")
        if type(delta) is not dict or type(index) is not int or delta.get("type") != "text_delta":
            return None
        text = delta.get("text")
        if type(text) is not str:
            return None
        for k, v in delta.items():
            if k != "type" and k != "text" and not (isinstance(v, _SCALARS) or (isinstance(v, (dict, list)) and not v)):
                return None  # another string of the delta joins the text's stream: the general path
        others = flat_strings(obj, "delta")
        if others is None:
            return None
        others.append("text_delta")
        return (index, "text"), text, "text", _TEXT_PARTS, others

    def _piece(self, obj: dict[str, Any], parts: Path, text: str, kind: PieceKind) -> Piece:
        delta = obj.get("delta")
        if obj.get("type") == "content_block_delta" and len(parts) == 2 and parts[0] == "delta" \
                and parts[1] != "type" and isinstance(delta, dict):
            stem = _stem(delta)
            return _new_tuple(Piece, (parts, text, (obj.get("index"), stem), _DELTA_KINDS.get(stem, "other")))
        return _new_tuple(Piece, (parts, text, None, kind))

    def tool_calls_done(self, obj: dict[str, Any], state: StreamState) -> list[ToolCall]:
        """A client ``tool_use`` block is complete at its ``content_block_stop``; its arguments are the joined
        ``input_json_delta`` s (or the start block's ``input`` when no delta came). Server tool blocks
        (``server_tool_use``, ``mcp_tool_use``) run at the provider and are not reported."""
        etype, index = obj.get("type"), obj.get("index")
        key = (index, "input_json")
        if etype == "content_block_start":
            block = obj.get("content_block")
            if isinstance(block, dict) and block.get("type") == "tool_use":
                state.calls[key] = {"id": str(block.get("id") or ""), "name": str(block.get("name") or ""),
                                    "arguments": ""}
                state.extra[key] = block.get("input")
        elif etype == "content_block_delta" and key in state.calls:
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("partial_json"), str):
                state.calls[key]["arguments"] += delta["partial_json"]
        elif etype == "content_block_stop" and key in state.calls:
            if not state.calls[key]["arguments"] and state.extra.get(key):
                state.calls[key]["arguments"] = orjson.dumps(state.extra[key]).decode()
            return [c for c in (state.finish(key),) if c]
        return []

    def body_tool_calls(self, obj: Any) -> list[ToolCall]:
        """The ``tool_use`` blocks of a ``message``; arguments are ``input`` serialized as compact JSON."""
        content = obj.get("content") if isinstance(obj, dict) else None
        return [ToolCall((i, "input_json"), str(b.get("id") or ""), str(b.get("name") or ""),
                         orjson.dumps(b.get("input", {})).decode())
                for i, b in enumerate(content or []) if isinstance(b, dict) and b.get("type") == "tool_use"]

    def is_terminal(self, obj: dict[str, Any]) -> bool:
        """``message_stop`` or ``error``."""
        return obj.get("type") in ("message_stop", "error")

    def error_payload(self, status: int, message: str, type: str = "invalid_request_error",
                      param: str | None = None, code: str | None = None) -> dict[str, Any]:
        """``{"type": "error", "error": {"type", "message"}}``; Railcar's generic types map to Anthropic's
        (:data:`ANTHROPIC_ERROR_TYPES`, by status for 401/403/404/413/429/529); ``code`` / ``param`` are kept as
        extra fields when given (a block: ``code: content_blocked``, ``param``: the rail)."""
        etype = _STATUS_TYPES.get(status, ANTHROPIC_ERROR_TYPES.get(type, type)) \
            if type in ANTHROPIC_ERROR_TYPES or type == "invalid_request_error" else type
        error: dict[str, Any] = {"type": etype, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        return {"type": "error", "error": error}

    def error_frame(self, message: str, type: str = "upstream_error", param: str | None = None,
                    code: str | None = None, state: StreamState | None = None) -> bytes:
        """``event: error`` + the error payload (status 200 already sent: typed by ``type`` alone)."""
        return sse_event("error", self.error_payload(200, message, type, param, code))

    def blocked_frames(self, rail: str, state: StreamState | None = None) -> bytes:
        """``event: error`` with ``{"type": "error", "error": {"type": "guardrails_violation", "message":
        "Blocked by <rail> rails.", "code": "content_blocked", "param": <rail>}}``."""
        return self.error_frame(**wire.blocked_error(rail)["error"])

    def refusal_body(self, model: str, message: str, rail: str | None = None, *,
                     id: str | None = None) -> dict[str, Any]:
        """A ``message`` with one ``text`` block and ``stop_reason: "refusal"`` (Anthropic's value for a
        declined answer); ``guardrails_data.blocked_rail`` names the rail; usage is zero."""
        return with_rail(_message(id or _new_id(), model, [{"type": "text", "text": message}], "refusal"), rail)

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """``message_start``, ``content_block_start`` (empty text), one ``text_delta``, ``content_block_stop``,
        ``message_delta`` (``stop_reason: refusal``), ``message_stop``."""
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": _message(_new_id(), model, [], None)},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": message}},
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": "refusal", "stop_sequence": None},
             "usage": {"output_tokens": 0}},
            {"type": "message_stop"},
        ]
        return [sse_event(e["type"], e) for e in events]

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            semconv.REQUEST_MODEL: text(body.get("model")),
            semconv.REQUEST_MAX_TOKENS: number(body.get("max_tokens")),
            semconv.REQUEST_TEMPERATURE: number(body.get("temperature")),
            semconv.REQUEST_TOP_P: number(body.get("top_p")),
            semconv.REQUEST_TOP_K: number(body.get("top_k")),
            semconv.REQUEST_STOP_SEQUENCES: stop_list(body.get("stop_sequences")),
        }

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        msg = obj.get("message") if obj.get("type") == "message_start" else obj
        if not isinstance(msg, dict):
            return {}
        usage = mapping(msg.get("usage"))
        reason = msg.get("stop_reason")
        return {
            semconv.RESPONSE_ID: text(msg.get("id")),
            semconv.RESPONSE_MODEL: text(msg.get("model")),
            semconv.RESPONSE_FINISH_REASONS: [reason] if isinstance(reason, str) else None,
            semconv.USAGE_INPUT_TOKENS: number(usage.get("input_tokens")),
            semconv.USAGE_OUTPUT_TOKENS: number(usage.get("output_tokens")),
            semconv.USAGE_CACHE_READ_INPUT_TOKENS: number(usage.get("cache_read_input_tokens")),
            semconv.USAGE_CACHE_CREATION_INPUT_TOKENS: number(usage.get("cache_creation_input_tokens")),
        }


def _new_id() -> str:
    return "msg_railcar" + uuid.uuid4().hex


def _message(mid: str, model: str, content: list[Any], stop: str | None) -> dict[str, Any]:
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
