"""The legacy OpenAI Completions codec: ``POST /v1/completions``.

Formats (OpenAI API reference, "Completions (Legacy)"): request ``{"model", "prompt": str | [str] | [int] |
[[int]], "suffix"?, "stream"?, ...}``; answer ``{"object": "text_completion", "id", "model", "choices": [{"index",
"text", "logprobs", "finish_reason"}], "usage"}``; a stream is the same object per chunk with ``choices[i].text``
deltas, terminated by ``data: [DONE]``.

Stream key: ``("choices", i, "text")``. Token-array prompts carry no text (nothing for the input rails).
Decisions: OpenAI's error object; a blocked stream ends with the blocked-content error chunk + ``[DONE]``
(:func:`railcar.core.wire.blocked_frames`); a refusal is a ``text_completion`` whose text is the message with
``finish_reason: content_filter``.
"""

from __future__ import annotations

import time
from typing import Any

from railcar.core import wire

from .base import Codec, Path, Piece, RequestProblem, StreamState, Turn, require
from .openai_chat import chunk_piece, openai_request_attributes, openai_response_attributes

__all__ = ["OpenAICompletionsCodec"]


class OpenAICompletionsCodec(Codec):
    """``openai_completions``: legacy text completions (see module doc)."""

    name = "openai_completions"
    path = "/v1/completions"
    operation = "text_completion"
    provider = "openai"
    api_type = "completions"
    terminal_data = "[DONE]"

    def validate(self, body: Any) -> RequestProblem | None:
        """``model`` (string) and ``prompt`` (string or array) are required."""
        return require(body, {"model": (str,), "prompt": (str, list)})

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """``prompt`` (a string, or each string of a list) and ``suffix`` as user turns."""
        out: list[Turn] = []
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            out.append(Turn("user", prompt, "input", ("prompt",)))
        elif isinstance(prompt, list):
            out.extend(Turn("user", p, "input", ("prompt", i)) for i, p in enumerate(prompt) if isinstance(p, str))
        if isinstance(body.get("suffix"), str):
            out.append(Turn("user", body["suffix"], "input", ("suffix",)))
        return out

    def _piece(self, obj: dict[str, Any], parts: Path, text: str) -> Piece:
        return chunk_piece(obj, parts, text)

    def blocked_frames(self, rail: str, state: StreamState | None = None) -> bytes:
        """The blocked-content error chunk + ``data: [DONE]``."""
        return wire.blocked_frames(rail)

    def refusal_body(self, model: str, message: str, rail: str | None = None, *,
                     id: str | None = None) -> dict[str, Any]:
        """A ``text_completion`` with one choice whose ``text`` is ``message``, ``finish_reason: content_filter``."""
        out = _completion(id or wire.completion_id().replace("chatcmpl", "cmpl"), model, message, "content_filter")
        out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        if rail is not None:
            out["guardrails_data"] = {"blocked_rail": rail}
        return out

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """Two ``text_completion`` chunks (the text, then ``finish_reason: content_filter``) and ``[DONE]``."""
        cid = wire.completion_id().replace("chatcmpl", "cmpl")
        return [wire.sse_frame(_completion(cid, model, message, None)),
                wire.sse_frame(_completion(cid, model, "", "content_filter")), wire.DONE_FRAME]

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        return openai_request_attributes(body, ("max_tokens",))

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        return openai_response_attributes(obj)


def _completion(cid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
