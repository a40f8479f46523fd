"""Synthetic answers the sidecar sends itself when a guard returns a :class:`sidecar.guard.Refusal`.

Shapes follow OpenAI's Chat Completions objects (``chat.completion`` and ``chat.completion.chunk``): the refusal
text is the assistant's ``content`` and ``finish_reason`` is ``"content_filter"`` (OpenAI's value for content
omitted by a filter). The streamed form is three chunks (role, content, finish) then ``data: [DONE]``, each
frame ``data: <json>\\n\\n``. The ``openai`` client parses both into its ``ChatCompletion`` /
``ChatCompletionChunk`` types.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

__all__ = ["refusal_completion", "refusal_chunks", "completion_id"]

DONE_FRAME = b"data: [DONE]\n\n"


def completion_id() -> str:
    """A fresh ``chatcmpl-…`` id."""
    return "chatcmpl-railcar-" + uuid.uuid4().hex


def refusal_completion(model: str, message: str, *, id: str | None = None, created: int | None = None,
                       rail: str | None = None) -> dict[str, Any]:
    """A ``chat.completion`` whose one choice is the refusal ``message`` with ``finish_reason: content_filter``.

    ``rail`` (the blocking rail's name) is reported under ``guardrails_data.blocked_rail`` like the NeMo
    Guardrails server's ``guardrails_data``; ``usage`` is zero since no model ran.
    """
    out: dict[str, Any] = {
        "id": id or completion_id(),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": message, "refusal": None},
                     "logprobs": None, "finish_reason": "content_filter"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
    if rail is not None:
        out["guardrails_data"] = {"blocked_rail": rail}
    return out


def refusal_chunks(model: str, message: str, *, id: str | None = None, created: int | None = None) -> list[bytes]:
    """The streamed equivalent of :func:`refusal_completion`: SSE frames (bytes, ``\\n\\n``-ended) for a role
    chunk, a content chunk, a final chunk with ``finish_reason: content_filter``, then ``data: [DONE]``."""
    id = id or completion_id()
    created = int(time.time()) if created is None else created

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        obj = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    return [chunk({"role": "assistant", "content": ""}, None), chunk({"content": message}, None),
            chunk({}, "content_filter"), DONE_FRAME]
