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

from .base import Turn, string_turns, with_rail
from .openai_chat import OpenAIChunkCodec, openai_request_attributes

__all__ = ["OpenAICompletionsCodec"]


class OpenAICompletionsCodec(OpenAIChunkCodec):
    """``openai_completions``: legacy text completions (see module doc)."""

    name = "openai_completions"
    path = "/v1/completions"
    operation = "text_completion"
    api_type = "completions"
    required = {"model": (str,), "prompt": (str, list)}

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """``prompt`` (a string, or each string of a list) and ``suffix`` as user turns."""
        return string_turns(body, "prompt") + string_turns(body, "suffix")

    def refusal_body(self, model: str, message: str, rail: str | None = None, *,
                     id: str | None = None) -> dict[str, Any]:
        """A ``text_completion`` with one choice whose ``text`` is ``message``, ``finish_reason: content_filter``."""
        out = _completion(id or _completion_id(), model, message, "content_filter")
        out["usage"] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return with_rail(out, rail)

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """Two ``text_completion`` chunks (the text, then ``finish_reason: content_filter``) and ``[DONE]``."""
        cid = _completion_id()
        return [wire.sse_frame(_completion(cid, model, message, None)),
                wire.sse_frame(_completion(cid, model, "", "content_filter")), wire.DONE_FRAME]

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        return openai_request_attributes(body, ("max_tokens",))


def _completion_id() -> str:
    return wire.completion_id().replace("chatcmpl", "cmpl", 1)


def _completion(cid: str, model: str, text: str, finish: str | None) -> dict[str, Any]:
    return {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
