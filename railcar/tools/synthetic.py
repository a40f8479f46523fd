"""Synthetic model answers in each wire API's own shape, for the replay upstream (tests, the demo, benchmarks).

One :class:`Script` says what the fake model answers: the text deltas in order (``deltas``), or a tool call named
``tool`` whose JSON arguments are streamed as those deltas. Each API renders it as a stream (complete SSE frames,
terminator included) and as a whole answer (a JSON-ready dict), with the fields the official SDKs read:

- ``openai_chat`` (OpenAI API reference, "Chat Completions" / "The chat completion chunk object"): ``chat.completion``
  and ``chat.completion.chunk`` (:func:`railcar.core.wire.chunk_frames` for text; for a tool call a role chunk, one
  chunk opening ``tool_calls[0]`` with its ``id`` / ``name``, one ``function.arguments`` delta per chunk, a
  ``finish_reason: tool_calls`` chunk with ``usage``, ``data: [DONE]``);
- ``openai_responses`` (OpenAI API reference, "Responses" / "Streaming events"): ``event: <type>`` frames with a
  ``sequence_number`` from 0: ``response.created``, ``response.in_progress``, ``response.output_item.added``, then
  for text ``response.content_part.added``, one ``response.output_text.delta`` per delta,
  ``response.output_text.done``, ``response.content_part.done``, or for a tool call one
  ``response.function_call_arguments.delta`` per delta and ``response.function_call_arguments.done``; then
  ``response.output_item.done`` and ``response.completed`` (the whole ``response`` object, with ``usage``);
- ``anthropic_messages`` (Anthropic API reference, "Messages" / "Streaming Messages"): ``message_start``, a
  ``ping``, ``content_block_start`` (a ``text`` block, or a ``tool_use`` block with ``input: {}``), one
  ``content_block_delta`` per delta (``text_delta`` / ``input_json_delta``), ``content_block_stop``,
  ``message_delta`` (``stop_reason`` ``end_turn`` / ``tool_use``, ``usage.output_tokens``), ``message_stop``;
- ``openai_completions`` (legacy "Completions"): ``text_completion`` chunks (one ``choices[0].text`` per delta, a
  ``finish_reason: stop`` chunk, ``data: [DONE]``) and the whole ``text_completion``;
- ``embeddings`` (:func:`embeddings_body`): a ``list`` of ``embedding`` objects, deterministic per input.

Tool arguments (:func:`tool_arguments`): a text that is itself a JSON object is used verbatim (so a caller can match
a real tool's parameters), any other text becomes ``{"text": <text>}``; the deltas are that JSON split into pieces,
so a planted value can straddle deltas in the arguments as in the text. Ids are fixed (``*-synthetic``): the frames
of one script are built once and cached by the server.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from railcar.codecs.base import sse_event
from railcar.core.wire import DONE_FRAME, chunk_frames, sse_frame

__all__ = ["Script", "split_text", "tool_arguments", "stream_frames", "whole_body", "embeddings_body",
           "SYNTHETIC_APIS"]

_CALL_ID = "call_synthetic"
_PROMPT_TOKENS = 8


def split_text(text: str, chunk_chars: int = 4) -> list[str]:
    """``text`` as streamed deltas of ``chunk_chars`` characters each (the last may be shorter); ``[]`` for ``""``.
    Raises ``ValueError`` for ``chunk_chars`` < 1."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars: must be >= 1, got {chunk_chars}")
    return [text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)]


def tool_arguments(text: str) -> str:
    """The JSON arguments of a synthetic tool call carrying ``text``: ``text`` itself when it is a JSON object,
    else ``{"text": <text>}`` (compact JSON)."""
    try:
        if isinstance(orjson.loads(text), dict):
            return text
    except orjson.JSONDecodeError:
        pass
    return orjson.dumps({"text": text}).decode()


@dataclass(frozen=True)
class Script:
    """What the synthetic model answers: ``deltas`` (text pieces in order, or the pieces of a tool call's JSON
    arguments when ``tool`` names the tool), ``model`` (echoed as the answer's model)."""

    deltas: tuple[str, ...]
    model: str = "synthetic-model"
    tool: str | None = None

    @classmethod
    def of(cls, text: str, chunk_chars: int, model: str = "synthetic-model", tool: str | None = None) -> Script:
        """A script answering ``text`` (or a tool call ``tool`` with :func:`tool_arguments` of it) in deltas of
        ``chunk_chars`` characters; ``ValueError`` for ``chunk_chars`` < 1."""
        body = tool_arguments(text) if tool else text
        return cls(tuple(split_text(body, chunk_chars)), model, tool)

    @property
    def text(self) -> str:
        """The whole answer text (or the whole arguments JSON for a tool call)."""
        return "".join(self.deltas)

    @property
    def usage(self) -> tuple[int, int]:
        """``(prompt_tokens, completion_tokens)``: a fixed prompt size and one token per delta."""
        return _PROMPT_TOKENS, len(self.deltas)


# ------------------------------------------------------------------------------------------------ chat completions


def _chat_usage(s: Script) -> dict[str, int]:
    p, c = s.usage
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _chat_stream(s: Script) -> list[bytes]:
    head = {"id": "chatcmpl-synthetic", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": s.model}
    if s.tool is None:
        return chunk_frames(head, list(s.deltas), "stop", usage=_chat_usage(s))

    def frame(delta: dict[str, Any], fin: str | None, **more: Any) -> bytes:
        return sse_frame(dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}],
                              **more))

    opening = {"index": 0, "id": _CALL_ID, "type": "function", "function": {"name": s.tool, "arguments": ""}}
    frames = [frame({"role": "assistant", "content": None}, None), frame({"tool_calls": [opening]}, None)]
    frames += [frame({"tool_calls": [{"index": 0, "function": {"arguments": d}}]}, None) for d in s.deltas]
    frames += [frame({}, "tool_calls", usage=_chat_usage(s)), DONE_FRAME]
    return frames


def _chat_body(s: Script) -> dict[str, Any]:
    if s.tool is None:
        message: dict[str, Any] = {"role": "assistant", "content": s.text, "refusal": None}
    else:
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": _CALL_ID, "type": "function", "function": {"name": s.tool, "arguments": s.text}}]}
    return {"id": "chatcmpl-synthetic", "object": "chat.completion", "created": int(time.time()), "model": s.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "stop" if s.tool is None else "tool_calls"}],
            "usage": _chat_usage(s)}


# ------------------------------------------------------------------------------------------------ responses


def _response(s: Script, status: str, output: list[dict[str, Any]], created: int) -> dict[str, Any]:
    p, c = s.usage
    usage = None if status != "completed" else {
        "input_tokens": p, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": c,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + c}
    return {"id": "resp_synthetic", "object": "response", "created_at": created, "status": status,
            "background": False, "error": None, "incomplete_details": None, "instructions": None,
            "max_output_tokens": None, "model": s.model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": usage, "metadata": {}}


def _responses_item(s: Script, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    if s.tool is not None:
        return {"type": "function_call", "id": "fc_synthetic", "call_id": _CALL_ID, "name": s.tool,
                "arguments": s.text if done else "", "status": status}
    content = [_output_text(s.text)] if done else []
    return {"type": "message", "id": "msg_synthetic", "role": "assistant", "status": status, "content": content}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _responses_events(s: Script) -> list[dict[str, Any]]:
    created = int(time.time())
    started = _response(s, "in_progress", [], created)
    item_id = "fc_synthetic" if s.tool is not None else "msg_synthetic"
    at = {"item_id": item_id, "output_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {"type": "response.output_item.added", "output_index": 0, "item": _responses_item(s, False)}]
    if s.tool is not None:
        events += [{"type": "response.function_call_arguments.delta", **at, "delta": d} for d in s.deltas]
        events.append({"type": "response.function_call_arguments.done", **at, "name": s.tool, "arguments": s.text})
    else:
        part = {**at, "content_index": 0}
        events.append({"type": "response.content_part.added", **part, "part": _output_text("")})
        events += [{"type": "response.output_text.delta", **part, "delta": d, "logprobs": []} for d in s.deltas]
        events += [{"type": "response.output_text.done", **part, "text": s.text, "logprobs": []},
                   {"type": "response.content_part.done", **part, "part": _output_text(s.text)}]
    done = _responses_item(s, True)
    events += [{"type": "response.output_item.done", "output_index": 0, "item": done},
               {"type": "response.completed", "response": _response(s, "completed", [done], created)}]
    return events


def _responses_stream(s: Script) -> list[bytes]:
    return [sse_event(e["type"], {**e, "sequence_number": n}) for n, e in enumerate(_responses_events(s))]


def _responses_body(s: Script) -> dict[str, Any]:
    return _response(s, "completed", [_responses_item(s, True)], int(time.time()))


# ------------------------------------------------------------------------------------------------ anthropic


def _anthropic_message(s: Script, content: list[dict[str, Any]], stop: str | None, out_tokens: int) -> dict[str, Any]:
    return {"id": "msg_synthetic", "type": "message", "role": "assistant", "model": s.model, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": _PROMPT_TOKENS, "output_tokens": out_tokens}}


def _anthropic_stream(s: Script) -> list[bytes]:
    if s.tool is None:
        block: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": d} for d in s.deltas]
    else:
        block = {"type": "tool_use", "id": "toolu_synthetic", "name": s.tool, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": d} for d in s.deltas]
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _anthropic_message(s, [], None, 1)},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": block}]
    events += [{"type": "content_block_delta", "index": 0, "delta": d} for d in deltas]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn" if s.tool is None else "tool_use",
                                                   "stop_sequence": None},
                "usage": {"output_tokens": len(s.deltas)}},
               {"type": "message_stop"}]
    return [sse_event(e["type"], e) for e in events]


def _anthropic_body(s: Script) -> dict[str, Any]:
    if s.tool is None:
        return _anthropic_message(s, [{"type": "text", "text": s.text}], "end_turn", len(s.deltas))
    block = {"type": "tool_use", "id": "toolu_synthetic", "name": s.tool, "input": orjson.loads(s.text)}
    return _anthropic_message(s, [block], "tool_use", len(s.deltas))


# ------------------------------------------------------------------------------------------------ completions


def _completion(s: Script, text: str, finish: str | None, usage: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": "cmpl-synthetic", "object": "text_completion", "created": int(time.time()),
                           "model": s.model,
                           "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
    if usage:
        out["usage"] = _chat_usage(s)
    return out


def _completions_stream(s: Script) -> list[bytes]:
    frames = [sse_frame(_completion(s, d, None, False)) for d in s.deltas]
    return frames + [sse_frame(_completion(s, "", "stop", True)), DONE_FRAME]


def _completions_body(s: Script) -> dict[str, Any]:
    return _completion(s, s.text, "stop", True)


_Renderers = tuple[Callable[[Script], list[bytes]], Callable[[Script], dict[str, Any]]]
_RENDER: dict[str, _Renderers] = {
    "openai_chat": (_chat_stream, _chat_body),
    "openai_responses": (_responses_stream, _responses_body),
    "anthropic_messages": (_anthropic_stream, _anthropic_body),
    "openai_completions": (_completions_stream, _completions_body),
}
SYNTHETIC_APIS = frozenset(_RENDER)


def stream_frames(api: str, script: Script) -> list[bytes]:
    """The SSE frames (each one complete event, terminator included) of ``script`` streamed in ``api``'s shape (a
    codec name of :data:`SYNTHETIC_APIS`; ``KeyError`` for another). Completions take no tool call: ``tool`` is
    ignored there."""
    return _RENDER[api][0](script)


def whole_body(api: str, script: Script) -> dict[str, Any]:
    """The non-streamed answer of ``script`` in ``api``'s shape (``KeyError`` for an API not in
    :data:`SYNTHETIC_APIS`)."""
    return _RENDER[api][1](script)


# ------------------------------------------------------------------------------------------------ embeddings


def _vector(value: Any, dims: int) -> list[float]:
    """A deterministic unit-free vector for one input: SHA-256 counter blocks mapped to [-1, 1)."""
    seed = orjson.dumps(value)
    out: list[float] = []
    block = 0
    while len(out) < dims:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        out += [(b - 128) / 128 for b in digest]
        block += 1
    return out[:dims]


def embeddings_body(body: dict[str, Any], model: str = "synthetic-embedding", dims: int = 8) -> dict[str, Any]:
    """The answer to ``POST /v1/embeddings`` (OpenAI API reference, "Embeddings"): one ``embedding`` object per
    input (``input`` a string, a list of strings, a token list or a list of token lists), ``dimensions`` from the
    request (else ``dims``), the vector as a float list or, for ``encoding_format: "base64"`` (what the ``openai``
    SDK asks by default), base64 of little-endian float32. Raises ``ValueError`` when ``input`` is missing or empty.
    """
    value = body.get("input")
    if value is None or value == [] or value == "":
        raise ValueError("'input' is required and must not be empty")
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, int) for v in value)):
        items = [value]
    else:
        items = list(value) if isinstance(value, list) else [value]
    n = body.get("dimensions")
    n = n if isinstance(n, int) and n > 0 else dims
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        vec = _vector(item, n)
        emb: Any = base64.b64encode(struct.pack(f"<{n}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(len(v.split()) if isinstance(v, str) else len(v) if isinstance(v, list) else 1 for v in items)
    return {"object": "list", "data": data, "model": body.get("model") or model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
