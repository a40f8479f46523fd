"""The OpenAI Chat Completions codec: ``POST /v1/chat/completions`` (today's guarded route).

Formats (OpenAI API reference, "Chat Completions": the request, the ``chat.completion`` object and the streamed
``chat.completion.chunk`` objects, ``data: [DONE]``-terminated; the extensions seen in recorded provider traffic):

- request ``messages[i]``: ``{"role": "system" | "developer" | "user" | "assistant" | "tool" | "function",
  "content": str | [{"type": "text", "text": ...} | {"type": "image_url", ...}, ...] | null, ...}``; ``tool`` and
  legacy ``function`` messages are tool results (``tool_output``), the rest ``input``;
- chunk ``choices[i].delta``: ``content``, ``refusal``, ``reasoning_content`` (DeepSeek, vLLM), ``reasoning``
  (OpenRouter, Groq), ``reasoning_details[k].text|summary`` (OpenRouter), ``audio.transcript``,
  ``tool_calls[k] = {"index", "id", "function": {"name", "arguments"}}``, legacy ``function_call.{name,arguments}``;
  ``choices[i].logprobs.content[k].token`` / ``.refusal[k].token``; ``choices[i].finish_reason``.

Stream keys: every string under ``delta`` streams under ``("choices", i, "delta", <its field path>)`` with list
positions dropped (``refusal``, ``reasoning_content``, ``reasoning``, ``audio.transcript``,
``reasoning_details.text``, and any field a provider adds), except: string content and text parts join into
``("choices", i, "delta", "content")`` (Mistral's ``thinking`` parts into ``(..., "content", "thinking")``);
function arguments key by the call's own ``index``, ``("choices", i, "tool_calls", <index>, "arguments")`` (other
fields of a call: ``("choices", i, "delta", "tool_calls", <index>, ...)``) and ``("choices", i, "function_call",
"arguments")``; identifiers (``id``, ``type``, ``role``, ``name``, ``format``, ``signature``, ``data``) are whole
values. Outside ``delta``: ``("choices", i, "logprobs", <content|refusal>, "token")``; everything else is a whole
value.

Decisions use :mod:`railcar.core.wire` unchanged (byte-faithful with today's path).
"""

from __future__ import annotations

from typing import Any

import orjson

from railcar.core import semconv, wire

from .base import (
    Codec,
    Path,
    Piece,
    PieceKind,
    StreamState,
    ToolCall,
    Turn,
    kind_at,
    kind_of,
    kinds_under,
    mapping,
    number,
    stop_list,
    text,
    text_turns,
    walk_typed,
)
from .chat_tools import ToolCallAssembler

__all__ = ["OpenAIChatCodec", "OpenAIChunkCodec", "content_cut", "openai_request_attributes",
           "openai_response_attributes"]

_DELTA_KINDS: dict[str, PieceKind] = {"content": "text", "refusal": "refusal", "reasoning_content": "reasoning",
                                      "reasoning": "reasoning", "reasoning_details": "reasoning", "audio": "text"}
_TOOL_ROLES = frozenset({"tool", "function"})
# strings under a delta that name or label rather than stream text: each is a whole value
_WHOLE_FIELDS = frozenset({"id", "type", "role", "name", "format", "signature", "data"})
_new_tuple = tuple.__new__  # builds a Piece without its keyword constructor (once per string of every chunk)
_CHOICES, _CHOICES_DELTA = ("choices",), ("choices", "delta")


def content_cut(data: bytes, obj: dict[str, Any]) -> tuple[bytes, bytes] | None:
    """``(prefix, suffix)``: the bytes of ``chat.completion.chunk`` payload ``data`` (parsed: ``obj``) before and
    after the JSON string token of ``choices[0].delta.content``, or ``None``.

    A payload ``prefix + T + suffix`` where ``T`` parses as one JSON string is then the same chunk as ``obj`` with
    ``delta.content = loads(T)``: the cut is accepted only if ``prefix + "\\u0001" + suffix`` parses to ``obj`` with
    exactly that one value changed (so ``T``'s place is the content a parser keeps, whatever duplicate keys, escaped
    key spellings or spacing the upstream uses), and JSON being context-free, any other string token there gives the
    same structure. Providers send the same bytes around every delta, so a reader of many chunks (the stream guard's
    frame template, the recorder's :mod:`railcar.streams.chunk_template`) parses one short string per chunk."""
    at = data.rfind(b'"content"')
    if at < 0:
        return None
    i, n = at + 9, len(data)
    while i < n and data[i] in b" \t\r\n:":
        i += 1
    if i >= n or data[i] != 0x22:  # '"'
        return None
    j = i + 1
    while True:
        j = data.find(b'"', j)
        if j < 0:
            return None
        k = j - 1
        while data[k] == 0x5C:  # count the backslashes before this quote
            k -= 1
        if (j - 1 - k) % 2 == 0:
            break
        j += 1
    pre, suf = data[:i], data[j + 1:]
    try:
        test = orjson.loads(pre + b'"\\u0001"' + suf)
        d = test["choices"][0]["delta"]
        if d.get("content") != "\x01":
            return None
        d["content"] = obj["choices"][0]["delta"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None
    return (pre, suf) if test == obj else None


def openai_request_attributes(body: dict[str, Any], max_tokens_fields: tuple[str, ...]) -> dict[str, Any]:
    """Request-side GenAI attributes shared by the OpenAI codecs (``gen_ai.request.*``, ``openai.request.*``)."""
    max_tokens = next((number(body[f]) for f in max_tokens_fields if number(body.get(f)) is not None), None)
    return {
        semconv.REQUEST_MODEL: text(body.get("model")),
        semconv.REQUEST_MAX_TOKENS: max_tokens,
        semconv.REQUEST_TEMPERATURE: number(body.get("temperature")),
        semconv.REQUEST_TOP_P: number(body.get("top_p")),
        semconv.REQUEST_SEED: number(body.get("seed")),
        semconv.REQUEST_FREQUENCY_PENALTY: number(body.get("frequency_penalty")),
        semconv.REQUEST_PRESENCE_PENALTY: number(body.get("presence_penalty")),
        semconv.REQUEST_STOP_SEQUENCES: stop_list(body.get("stop")),
        semconv.REQUEST_CHOICE_COUNT: number(body.get("n")) if body.get("n") not in (None, 1) else None,
        semconv.OPENAI_REQUEST_SERVICE_TIER: text(body.get("service_tier")),
    }


def openai_response_attributes(obj: dict[str, Any]) -> dict[str, Any]:
    """Response-side GenAI attributes of a ``chat.completion`` / ``text_completion`` (or a chunk)."""
    usage = mapping(obj.get("usage"))
    reasons = [c.get("finish_reason") for c in obj.get("choices") or [] if isinstance(c, dict)]
    return {
        semconv.RESPONSE_ID: text(obj.get("id")),
        semconv.RESPONSE_MODEL: text(obj.get("model")),
        semconv.RESPONSE_FINISH_REASONS: [r for r in reasons if isinstance(r, str)] or None,
        semconv.USAGE_INPUT_TOKENS: number(usage.get("prompt_tokens")),
        semconv.USAGE_OUTPUT_TOKENS: number(usage.get("completion_tokens")),
        semconv.OPENAI_RESPONSE_SERVICE_TIER: text(obj.get("service_tier")),
        semconv.OPENAI_RESPONSE_SYSTEM_FINGERPRINT: text(obj.get("system_fingerprint")),
    }


def _delta_key(parts: Path, choice: dict[str, Any]) -> tuple[tuple[Any, ...], PieceKind] | None:
    """Stream key and kind of a string at ``parts`` = ``("choices", pos, "delta", ...)``, ``None`` for a whole value
    (:data:`_WHOLE_FIELDS`). Keys use the choice's own ``index`` (with ``n > 1`` each chunk may carry one choice whose
    ``index`` differs from its position) and a tool call's own ``index``; other list positions are dropped (they
    restart at 0 in every chunk), so any field, a provider's new one too, is one stream per field path."""
    i, rest = choice.get("index", parts[1]), parts[3:]
    head, fields = rest[0], tuple(p for p in rest if isinstance(p, str))
    if not fields or rest[-1] in _WHOLE_FIELDS:
        return None
    if head == "tool_calls" and len(rest) > 2:
        call = choice["delta"]["tool_calls"][rest[1]]
        index = call.get("index", rest[1]) if isinstance(call, dict) else rest[1]
        if rest[2:] == ("function", "arguments"):
            return ("choices", i, "tool_calls", index, "arguments"), "tool_arguments"
        return ("choices", i, "delta", "tool_calls", index, *fields[1:]), "tool_arguments"
    if fields == ("function_call", "arguments"):
        return ("choices", i, "function_call", "arguments"), "tool_arguments"
    if head == "content" and fields[-1] in ("content", "text"):
        if "thinking" in rest:  # Mistral streams reasoning as content parts {"type": "thinking", "thinking": [..]}
            return ("choices", i, "delta", "content", "thinking"), "reasoning"
        return ("choices", i, "delta", "content"), "text"  # string content and text parts: one stream
    return ("choices", i, "delta", *fields), _kind(fields)


def _kind(fields: tuple[str, ...]) -> PieceKind:
    return _DELTA_KINDS.get(fields[-1]) or _DELTA_KINDS.get(fields[0], "other")


def chunk_piece(obj: dict[str, Any], parts: Path, text: str, kind: PieceKind | None = None) -> Piece:
    """Classify one string of a ``chat.completion.chunk`` / streamed ``text_completion`` (see module doc); ``kind``
    is its :func:`railcar.codecs.base.kind_of` when the caller knows it (computed here when ``None``), the kind of a
    whole value."""
    if len(parts) >= 4 and parts[0] == "choices" and isinstance(parts[1], int):
        choice = mapping(obj["choices"][parts[1]])
        if parts[2] == "delta":
            found = _delta_key(parts, choice)
            if found:
                return _new_tuple(Piece, (parts, text, found[0], found[1]))
        elif parts[2] == "logprobs" and parts[3] in ("content", "refusal") and parts[-1] == "token" \
                and len(parts) == 6:
            return _new_tuple(Piece, (parts, text, ("choices", choice.get("index", parts[1]), "logprobs", parts[3],
                                                    "token"), "other"))
    elif len(parts) == 3 and parts[0] == "choices" and parts[2] == "text":  # legacy completions chunk
        return _new_tuple(Piece, (parts, text, ("choices", mapping(obj["choices"][parts[1]]).get("index", parts[1]),
                                                "text"), "text"))
    return _new_tuple(Piece, (parts, text, None, kind_of(obj, parts) if kind is None else kind))


def _flat_choice(obj: dict[str, Any], ci: int, choice: dict[str, Any], types: tuple[str, ...],
                 out: list[Piece]) -> bool:
    """Append the pieces of ``obj["choices"][ci]`` as :func:`chunk_piece` classifies them, if its values are
    scalars, empty containers and a ``delta`` object; ``False`` (``out`` then partly filled) otherwise."""
    t = choice.get("type")
    types = types + (t,) if isinstance(t, str) else types
    kinds = kinds_under(_CHOICES, types)
    i = choice.get("index", ci)
    for k, v in choice.items():
        if isinstance(v, str) and isinstance(k, str):
            if k == "text":  # legacy completions chunk
                out.append(_new_tuple(Piece, (("choices", ci, k), v, ("choices", i, "text"), "text")))
            else:
                out.append(_new_tuple(Piece, (("choices", ci, k), v, None, kinds[k])))
        elif k == "delta" and isinstance(v, dict):
            _flat_delta(obj, ci, i, v, types, out)
        elif isinstance(v, str) or (isinstance(v, (dict, list)) and v):
            return False
    return True


def _flat_delta(obj: dict[str, Any], ci: int, i: Any, delta: dict[str, Any], types: tuple[str, ...],
                out: list[Piece]) -> None:
    """Append the pieces of ``obj["choices"][ci]["delta"]`` (choice ``index`` ``i``) as :func:`chunk_piece`
    classifies them: its direct strings here (:func:`_delta_key` for a one-field path), anything nested by the
    generic walk of that value."""
    t = delta.get("type")
    types = types + (t,) if isinstance(t, str) else types
    kinds = kinds_under(_CHOICES_DELTA, types)
    for k, v in delta.items():
        if isinstance(v, str) and isinstance(k, str):
            parts = ("choices", ci, "delta", k)
            if k in _WHOLE_FIELDS:
                out.append(_new_tuple(Piece, (parts, v, None, kinds[k])))
            elif k == "content":
                out.append(_new_tuple(Piece, (parts, v, ("choices", i, "delta", "content"), "text")))
            else:
                out.append(_new_tuple(Piece, (parts, v, ("choices", i, "delta", k), _kind((k,)))))
        elif isinstance(v, str) or (isinstance(v, (dict, list)) and v):  # a str here: under a non-string key
            keys = _CHOICES_DELTA + (k,) if isinstance(k, str) else _CHOICES_DELTA
            out.extend(chunk_piece(obj, p, s, kind_at(ks, ts))
                       for p, s, ks, ts in walk_typed(v, ("choices", ci, "delta", k), keys, types))


class OpenAIChunkCodec(Codec):
    """What the ``choices[]``-chunk APIs share (Chat Completions and legacy Completions): OpenAI's errors and
    blocked frames (the :class:`Codec` defaults), ``data: [DONE]``-terminated streams classified by
    :func:`chunk_piece`, and the ``chat.completion`` / ``text_completion`` response attributes."""

    terminal_data = "[DONE]"

    def stream_strings(self, obj: dict[str, Any]) -> list[Piece]:
        """Every string of one chunk (see :meth:`Codec.stream_strings`). A chunk whose values are scalars, empty
        containers or a ``choices`` list of objects — each of scalars and a ``delta`` object — is classified here
        in one pass (a value nested under ``delta``, such as ``tool_calls``, by the generic walk of that value and
        :func:`chunk_piece`); any other chunk goes to the generic walk. Equal to :meth:`Codec.walk_stream_strings`
        for every chunk."""
        t = obj.get("type")
        types = (t,) if isinstance(t, str) else ()
        kinds = kinds_under((), types)
        out: list[Piece] = []
        for k, v in obj.items():
            if isinstance(v, str) and isinstance(k, str):
                out.append(_new_tuple(Piece, ((k,), v, None, kinds[k])))
            elif k == "choices" and isinstance(v, list):
                for ci, choice in enumerate(v):
                    if not (isinstance(choice, dict) and _flat_choice(obj, ci, choice, types, out)) \
                            and (isinstance(choice, (str, dict)) or (isinstance(choice, list) and choice)):
                        return self.walk_stream_strings(obj)
            elif isinstance(v, str) or (isinstance(v, (dict, list)) and v):
                return self.walk_stream_strings(obj)
        return out

    def _piece(self, obj: dict[str, Any], parts: Path, text: str, kind: PieceKind) -> Piece:
        return chunk_piece(obj, parts, text, kind)

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        return openai_response_attributes(obj)


class OpenAIChatCodec(OpenAIChunkCodec):
    """``openai_chat``: Chat Completions (see the module doc for the shapes and stream keys)."""

    name = "openai_chat"
    path = "/v1/chat/completions"
    api_type = "chat_completions"
    required = {"model": (str,), "messages": (list,)}

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """Every message's text (string content or text parts, and the reasoning an assistant turn hands back);
        ``tool`` / ``function`` roles are tool output. Tool-call arguments are the model's, not turns."""
        out: list[Turn] = []
        for i, msg in enumerate(body.get("messages") or []):
            if isinstance(msg, dict):
                role = str(msg.get("role", "user"))
                out.extend(text_turns(role, "tool_output" if role in _TOOL_ROLES else "input", msg, ("messages", i)))
        return out

    def tool_calls_done(self, obj: dict[str, Any], state: StreamState) -> list[ToolCall]:
        """A choice's tool calls, assembled by :class:`railcar.codecs.chat_tools.ToolCallAssembler` (one per choice,
        in ``state.extra``): complete when the arguments parse as JSON, a later call starts or the choice has a
        ``finish_reason``; legacy ``function_call`` at ``finish_reason``. A malformed entry is skipped."""
        out: list[ToolCall] = []
        for ci, choice in enumerate(obj.get("choices") or []):
            if not isinstance(choice, dict):
                continue
            i = choice.get("index", ci)
            delta = mapping(choice.get("delta"))
            calls = delta.get("tool_calls")
            if isinstance(calls, list) and calls:
                out.extend(self._tool_deltas(state, i, [c for c in calls if isinstance(c, dict)]))
            if isinstance(delta.get("function_call"), dict):
                _accumulate(state, ("choices", i, "function_call", "arguments"), None, delta["function_call"])
            if choice.get("finish_reason"):
                _assembler(state, i).finish()
                out.extend(c for c in (state.finish(key) for key in list(state.calls) if key[1] == i) if c)
        return out

    def _tool_deltas(self, state: StreamState, i: Any, entries: list[dict[str, Any]]) -> list[ToolCall]:
        asm = _assembler(state, i)
        try:
            done = asm.feed(entries)
        except ValueError:  # a non-integer index: the entries before it were applied
            done = []
        for idx in set(asm.indices) | set(done):  # mirror what changed into the codec's per-key view
            call = asm.calls[idx]
            state.calls[("choices", i, "tool_calls", idx, "arguments")] = {
                "id": call.id or "", "name": call.name, "arguments": call.arguments}
        return [c for c in (state.finish(("choices", i, "tool_calls", idx, "arguments")) for idx in done) if c]

    def body_tool_calls(self, obj: Any) -> list[ToolCall]:
        """``choices[i].message.tool_calls[k]`` (and legacy ``function_call``) of a ``chat.completion``."""
        out: list[ToolCall] = []
        for ci, choice in enumerate(mapping(obj).get("choices") or []):
            if isinstance(choice, dict):
                out.extend(_message_calls(choice.get("index", ci), mapping(choice.get("message"))))
        return out

    def refusal_body(self, model: str, message: str, rail: str | None = None) -> dict[str, Any]:
        """:func:`railcar.core.wire.refusal_completion`."""
        return wire.refusal_completion(model, message, rail=rail)

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """:func:`railcar.core.wire.refusal_chunks`."""
        return wire.refusal_chunks(model, message)

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        return openai_request_attributes(body, ("max_completion_tokens", "max_tokens"))


def _message_calls(i: Any, msg: dict[str, Any]) -> list[ToolCall]:
    """The complete tool calls of one non-streamed assistant message (choice ``i``)."""
    out: list[ToolCall] = []
    for k, call in enumerate(msg.get("tool_calls") or []):
        fn = mapping(mapping(call).get("function"))
        if fn:
            out.append(ToolCall(("choices", i, "tool_calls", call.get("index", k), "arguments"),
                                str(call.get("id") or ""), str(fn.get("name") or ""), str(fn.get("arguments") or "")))
    fc = mapping(msg.get("function_call"))
    if fc.get("name") or fc.get("arguments"):  # Snowflake sends an empty {"name": "", "arguments": ""}
        out.append(ToolCall(("choices", i, "function_call", "arguments"), "", str(fc.get("name") or ""),
                            str(fc.get("arguments") or "")))
    return out


def _assembler(state: StreamState, i: Any) -> ToolCallAssembler:
    """The tool-call assembler of choice ``i`` of this stream."""
    asm: ToolCallAssembler = state.extra.setdefault(("tool_calls", i), ToolCallAssembler())
    return asm


def _accumulate(state: StreamState, key: tuple[Any, ...], call_id: Any, fn: dict[str, Any]) -> None:
    """Add one delta of a call (``id``, ``name`` once; ``arguments`` appended) to ``state.calls[key]``."""
    call = state.calls.setdefault(key, {"id": "", "name": "", "arguments": ""})
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    if isinstance(fn.get("name"), str) and fn["name"]:
        call["name"] = fn["name"]
    if isinstance(fn.get("arguments"), str):
        call["arguments"] += fn["arguments"]
