"""The OpenAI Responses API codec: ``POST /v1/responses``.

Formats (OpenAI API reference, "Responses" — create, the ``response`` object, input items — and "Streaming events"
(``https://platform.openai.com/docs/api-reference/responses-streaming``); checked against the 186 recorded
interactions in ``../shared/fixtures/recorded/responses.jsonl``):

- request: ``instructions`` (str, a system turn), ``input``: a string (one user turn) or a list of items:
  messages ``{"role", "content": str | [{"type": "input_text" | "output_text", "text"}, ...]}`` (``type``
  ``message`` or absent), tool results ``{"type": "function_call_output", "call_id", "output": str | [parts]}``
  and every other ``*_output`` item (``custom_tool_call_output``, ``computer_call_output``,
  ``tool_search_output``...), history items (``function_call``, ``reasoning`` with ``summary[].text``...);
  ``previous_response_id`` / ``conversation`` continue a conversation.
- answer: ``{"object": "response", "id", "status", "model", "output": [items], "usage": {"input_tokens",
  "output_tokens"}, "error"}``; items ``message`` (``content[].text`` / ``refusal``), ``function_call``
  (``call_id``, ``name``, ``arguments``), ``reasoning`` (``summary[].text``, ``content[].text``), built-in tool
  calls.
- stream: named SSE events ``event: <type>`` / ``data: {"type", "sequence_number", ...}``: ``response.created``,
  ``.in_progress``, ``.output_item.added/done``, ``.content_part.added/done``, ``*.delta`` / ``*.done`` pairs
  (``output_text``, ``refusal``, ``function_call_arguments``, ``reasoning_summary_text``, ``reasoning_text``,
  ``code_interpreter_call_code``, ``mcp_call_arguments``, ``custom_tool_call_input``, ``audio.transcript``...),
  ending with ``response.completed`` / ``.failed`` / ``.incomplete`` (or ``error``). No ``[DONE]``.

Stream keys (every ``*.delta`` event's ``delta`` string, so an event type added tomorrow is still reassembled):
``(output_index, content_index, "text")`` for ``output_text``, ``(output_index, content_index, "refusal")``,
``(output_index, "arguments")`` for ``function_call_arguments`` / ``mcp_call_arguments``,
``(output_index, summary_index, "summary")``, ``(output_index, content_index, "reasoning")``, and
``(output_index, [content_index | summary_index], <event stem>)`` for any other delta.

Errors: a JSON error is OpenAI's ``{"error": {...}}``. In a stream, the ``error`` event carries the documented flat
fields (``code``, ``message``, ``param``, ``sequence_number``) *and* the nested ``error`` object the live API sends:
the ``openai`` SDK (2.x and 3.x ``Stream.__stream__``) raises ``APIError`` only on a payload with an ``error`` key,
and a reader of the documented schema still finds ``message`` at the top. No ``response.failed`` is needed for the
SDK to raise.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from railcar.core import semconv, wire

from .base import (
    Codec,
    Path,
    Piece,
    PieceKind,
    RequestProblem,
    StreamState,
    TextDelta,
    ToolCall,
    Turn,
    flat_strings,
    kinds_under,
    mapping,
    number,
    require,
    sse_event,
    text,
    text_turns,
    with_rail,
)
from .openai_chat import openai_request_attributes

__all__ = ["OpenAIResponsesCodec", "TERMINAL_TYPES"]

TERMINAL_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})

# event stem -> (field name in the stream key, kind); stems not listed key by their own name, kind "other"
_DELTA_FIELDS: dict[str, tuple[str, PieceKind]] = {
    "output_text": ("text", "text"),
    "refusal": ("refusal", "refusal"),
    "function_call_arguments": ("arguments", "tool_arguments"),
    "mcp_call_arguments": ("arguments", "tool_arguments"),
    "custom_tool_call_input": ("input", "tool_arguments"),
    "reasoning_summary_text": ("summary", "reasoning"),
    "reasoning_text": ("reasoning", "reasoning"),
    "reasoning": ("reasoning", "reasoning"),
    "reasoning_summary": ("summary", "reasoning"),
    "audio.transcript": ("transcript", "text"),
}
# the delta events the guard's fast path takes (Codec.text_delta): answer text of every kind, never tool arguments
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta", "response.reasoning_text.delta",
                          "response.reasoning_summary_text.delta", "response.audio.transcript.delta"})
_CALL_ITEMS = {"function_call": "arguments", "custom_tool_call": "input"}
_FIELD_OF: dict[str, tuple[str, PieceKind]] = {}  # event type -> its _DELTA_FIELDS entry, once computed
_DELTA_PARTS = ("delta",)
_new_tuple = tuple.__new__  # builds a Piece without its keyword constructor (once per string of every event)


def delta_key(obj: dict[str, Any]) -> tuple[tuple[Any, ...], PieceKind]:
    """Stream key and kind of the ``delta`` of a ``response.<stem>.delta`` event (see module doc)."""
    etype = obj.get("type", "")
    found = _FIELD_OF.get(etype) if isinstance(etype, str) else None
    if found is None:
        stem = str(etype)[len("response."):-len(".delta")]
        found = _DELTA_FIELDS.get(stem, (stem, "other"))
        if isinstance(etype, str) and len(_FIELD_OF) < 1024:  # event types come from the upstream: bounded
            _FIELD_OF[etype] = found
    field, kind = found
    key: tuple[Any, ...] = (obj.get("output_index"),)
    for sub in ("content_index", "summary_index"):
        if sub in obj:
            key += (obj[sub],)
    return key + (field,), kind


def _item_turns(i: int, item: dict[str, Any]) -> list[Turn]:
    """Turns of ``input[i]`` (:func:`railcar.codecs.base.text_turns` of the item): a message's content, a
    reasoning item's summary and ``reasoning_text`` content; the results carried by a ``*_output`` item or by a
    built-in tool call in the history (``mcp_call.output``, ``code_interpreter_call.outputs[].logs``,
    ``file_search_call.results[].text``) as tool output. Function / custom tool calls (the model's arguments) are
    not turns; an item of a type not known today is read as the role it names (``user`` when none)."""
    kind = str(item.get("type", "message"))
    if kind in _CALL_ITEMS:
        return []
    if kind == "reasoning":
        return text_turns("assistant", "input", item, ("input", i))
    if kind.endswith(("_output", "_call")):
        return text_turns("tool", "tool_output", item, ("input", i))
    return text_turns(str(item.get("role", "user")), "input", item, ("input", i))


class OpenAIResponsesCodec(Codec):
    """``openai_responses``: the Responses API (see the module doc for the shapes and stream keys)."""

    name = "openai_responses"
    path = "/v1/responses"
    operation = "chat"  # semconv OpenAI page: Responses is a chat operation with openai.api.type "responses"
    provider = "openai"
    api_type = "responses"
    counter_field = "sequence_number"

    def validate(self, body: Any) -> RequestProblem | None:
        """``model`` is required (unless a stored ``prompt`` names it); ``input``, when given, is a string or an
        array; ``instructions`` a string."""
        problem = require(body, {} if isinstance(body, dict) and "prompt" in body else {"model": (str,)})
        if problem is not None:
            return problem
        if body.get("input") is not None and not isinstance(body["input"], (str, list)):
            return RequestProblem("Invalid type for 'input': expected a string or an array.", "input", "invalid_type")
        if body.get("instructions") is not None and not isinstance(body["instructions"], str):
            return RequestProblem("Invalid type for 'instructions': expected a string.", "instructions",
                                  "invalid_type")
        return None

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """``instructions`` (system), the values of a stored prompt's ``prompt.variables`` (strings or
        ``input_text`` parts the provider puts into the prompt), then every input item's text (see module doc)."""
        out: list[Turn] = []
        if isinstance(body.get("instructions"), str):
            out.append(Turn("system", body["instructions"], "input", ("instructions",)))
        for name, value in mapping(mapping(body.get("prompt")).get("variables")).items():
            out.extend(text_turns("user", "input", value, ("prompt", "variables", name)))
        inp = body.get("input")
        if isinstance(inp, str):
            out.append(Turn("user", inp, "input", ("input",)))
        elif isinstance(inp, list):
            for i, item in enumerate(inp):
                if isinstance(item, dict):
                    out.extend(_item_turns(i, item))
        return out

    def stream_strings(self, obj: dict[str, Any]) -> list[Piece]:
        """Every string of one event (see :meth:`Codec.stream_strings`). A flat event — every value a scalar or
        an empty container, as every ``*.delta`` event is, whatever fields it carries — is classified here in one
        pass over its items (its strings sit at depth 1: keys ``(k,)``, types the event's ``type``); any other
        event goes to the generic walk. Equal to :meth:`Codec.walk_stream_strings` for every event."""
        etype = obj.get("type")
        types = (etype,) if isinstance(etype, str) else ()
        is_delta = isinstance(etype, str) and etype.startswith("response.") and etype.endswith(".delta")
        kinds = kinds_under((), types)
        out: list[Piece] = []
        for k, v in obj.items():
            if isinstance(v, str):
                if not isinstance(k, str):  # not JSON; the generic walk keeps it exact
                    return self.walk_stream_strings(obj)
                if is_delta and k == "delta":
                    key, kind = delta_key(obj)
                    out.append(_new_tuple(Piece, (_DELTA_PARTS, v, key, kind)))
                else:
                    out.append(_new_tuple(Piece, ((k,), v, None, kinds[k])))
            elif isinstance(v, (dict, list)) and v:
                return self.walk_stream_strings(obj)
        return out

    def text_delta(self, obj: dict[str, Any]) -> TextDelta | None:
        """A flat ``response.output_text.delta`` (or refusal / reasoning / transcript delta) event: its ``delta`` with
        :func:`delta_key`'s key and kind, the other strings (``type``, ``item_id``, ``obfuscation``...) (see
        :meth:`Codec.text_delta`)."""
        etype = obj.get("type")
        if type(etype) is not str or etype not in _TEXT_DELTAS:
            return None
        text = obj.get("delta")
        if type(text) is not str:
            return None
        others = flat_strings(obj, "delta")
        if others is None:
            return None
        key, kind = delta_key(obj)
        return key, text, kind, _DELTA_PARTS, others

    def _piece(self, obj: dict[str, Any], parts: Path, text: str, kind: PieceKind) -> Piece:
        etype = obj.get("type")
        if (parts == _DELTA_PARTS and isinstance(etype, str) and etype.startswith("response.")
                and etype.endswith(".delta")):
            key, delta_kind = delta_key(obj)
            return _new_tuple(Piece, (parts, text, key, delta_kind))
        return _new_tuple(Piece, (parts, text, None, kind))

    def tool_calls_done(self, obj: dict[str, Any], state: StreamState) -> list[ToolCall]:
        """``function_call`` / ``custom_tool_call`` items: known at ``response.output_item.added``, complete at
        ``response.function_call_arguments.done`` or ``response.output_item.done`` (whichever comes first)."""
        if isinstance(obj.get("sequence_number"), int):
            state.sequence_number = obj["sequence_number"]
        etype = obj.get("type")
        if type(etype) is str and etype in _TEXT_DELTAS:  # (the streamed text: no call starts or ends here)
            return []
        item = mapping(obj.get("item"))
        is_call = item.get("type") in _CALL_ITEMS
        key = (obj.get("output_index"), "arguments")
        if etype == "response.output_item.added" and is_call:
            state.calls[key] = {"id": str(item.get("call_id") or ""), "name": str(item.get("name") or ""),
                                "arguments": ""}
        elif etype == "response.function_call_arguments.delta" and key in state.calls:
            # kept as it streams, so a call cut before its .done (a block, a broken upstream) still has them
            state.calls[key]["arguments"] += str(obj.get("delta") or "")
        elif etype == "response.function_call_arguments.done" and key in state.calls:
            state.calls[key]["arguments"] = str(obj.get("arguments") or "")
            return [c for c in (state.finish(key),) if c]
        elif etype == "response.output_item.done" and is_call:
            state.calls[key] = _call_of(item)
            return [c for c in (state.finish(key),) if c]
        return []

    def body_tool_calls(self, obj: Any) -> list[ToolCall]:
        """The ``function_call`` / ``custom_tool_call`` items of ``output``."""
        output = obj.get("output") if isinstance(obj, dict) else None
        out = []
        for i, item in enumerate(output or []):
            if isinstance(item, dict) and item.get("type") in _CALL_ITEMS:
                call = _call_of(item)
                out.append(ToolCall((i, "arguments"), call["id"], call["name"], call["arguments"]))
        return out

    def is_terminal(self, obj: dict[str, Any]) -> bool:
        """``response.completed`` / ``.failed`` / ``.incomplete``, or an ``error`` event."""
        return obj.get("type") in TERMINAL_TYPES

    def error_frame(self, message: str, type: str = "upstream_error", param: str | None = None,
                    code: str | None = None, state: StreamState | None = None) -> bytes:
        """``event: error`` with ``{"type": "error", "code", "message", "param", "sequence_number", "error": {type,
        code, message, param}}`` (see module doc); ``sequence_number`` continues ``state``'s."""
        seq = state.sequence_number + 1 if state is not None else 0
        if state is not None:
            state.sequence_number = seq
        return sse_event("error", {"type": "error", "code": code, "message": message, "param": param,
                                   "sequence_number": seq,
                                   "error": {"type": type, "code": code, "message": message, "param": param}})

    def blocked_frames(self, rail: str, state: StreamState | None = None) -> bytes:
        """The ``error`` event for a block: ``"Blocked by <rail> rails."``, ``guardrails_violation`` /
        ``content_blocked``, ``param`` the rail."""
        return self.error_frame(**wire.blocked_error(rail)["error"], state=state)

    def refusal_body(self, model: str, message: str, rail: str | None = None, *, id: str | None = None,
                     created: int | None = None) -> dict[str, Any]:
        """A completed ``response`` with one assistant ``message`` item whose ``output_text`` is ``message``;
        ``guardrails_data.blocked_rail`` names the rail (as the chat refusal does); usage is zero."""
        return with_rail(_response(id or _new_id("resp"), model, created, "completed",
                                   [_message_item(message, "completed")]), rail)

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """The event sequence of a streamed one-message answer: ``response.created``, ``.in_progress``,
        ``.output_item.added``, ``.content_part.added``, ``.output_text.delta``, ``.output_text.done``,
        ``.content_part.done``, ``.output_item.done``, ``.completed``."""
        rid, created = _new_id("resp"), int(time.time())
        item = _message_item(message, "completed")
        part = item["content"][0]
        started = _response(rid, model, created, "in_progress", [])
        ids = {"item_id": item["id"], "output_index": 0}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": started},
            {"type": "response.in_progress", "response": started},
            {"type": "response.output_item.added", "output_index": 0,
             "item": dict(item, status="in_progress", content=[])},
            {"type": "response.content_part.added", **ids, "content_index": 0, "part": dict(part, text="")},
            {"type": "response.output_text.delta", **ids, "content_index": 0, "delta": message, "logprobs": []},
            {"type": "response.output_text.done", **ids, "content_index": 0, "text": message, "logprobs": []},
            {"type": "response.content_part.done", **ids, "content_index": 0, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": _response(rid, model, created, "completed", [item])},
        ]
        return [sse_event(e["type"], dict(e, sequence_number=n)) for n, e in enumerate(events)]

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        attrs = openai_request_attributes(body, ("max_output_tokens",))
        conv = body.get("conversation")
        conv_id = conv.get("id") if isinstance(conv, dict) else conv
        attrs[semconv.CONVERSATION_ID] = next(
            (v for v in (conv_id, body.get("previous_response_id")) if isinstance(v, str) and v), None)
        return attrs

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        resp = mapping(obj.get("response")) or obj
        usage = mapping(resp.get("usage"))
        status = resp.get("status")
        conv = resp.get("conversation")
        return {
            semconv.RESPONSE_ID: text(resp.get("id")),
            semconv.RESPONSE_MODEL: text(resp.get("model")),
            semconv.RESPONSE_FINISH_REASONS: [status] if isinstance(status, str) else None,
            semconv.USAGE_INPUT_TOKENS: number(usage.get("input_tokens")),
            semconv.USAGE_OUTPUT_TOKENS: number(usage.get("output_tokens")),
            semconv.CONVERSATION_ID: conv.get("id") if isinstance(conv, dict) else None,
            semconv.OPENAI_RESPONSE_SERVICE_TIER: text(resp.get("service_tier")),
        }


def _call_of(item: dict[str, Any]) -> dict[str, str]:
    field = _CALL_ITEMS.get(str(item.get("type")), "arguments")
    return {"id": str(item.get("call_id") or ""), "name": str(item.get("name") or ""),
            "arguments": str(item.get(field) or "")}


def _new_id(prefix: str) -> str:
    return f"{prefix}_railcar{uuid.uuid4().hex}"


def _message_item(text: str, status: str) -> dict[str, Any]:
    return {"id": _new_id("msg"), "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _response(rid: str, model: str, created: int | None, status: str, output: list[Any]) -> dict[str, Any]:
    """A ``response`` object with the fields the ``openai`` SDK's ``Response`` model requires."""
    done = status == "completed"
    return {
        "id": rid, "object": "response", "created_at": int(time.time()) if created is None else created,
        "status": status, "error": None, "incomplete_details": None, "instructions": None, "metadata": {},
        "model": model, "output": output, "parallel_tool_calls": True, "temperature": None, "tool_choice": "auto",
        "tools": [], "top_p": None,
        "usage": {"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}
        if done else None,
    }
