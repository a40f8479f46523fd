"""OpenAI wire shapes: the one source for every frame and body Railcar writes itself.

- SSE framing: :func:`sse_frame` (``data: <compact JSON>\\n\\n``) and :data:`DONE_FRAME` (``data: [DONE]\\n\\n``,
  the Chat Completions stream terminator).
- The error object ``{"error": {"message", "type", "param", "code"}}`` (the shape OpenAI's API returns and the
  ``openai`` client parses into ``APIStatusError.body``; ``../shared/DESIGN.md`` "Contracts"):
  :func:`error_payload`, :func:`error_body`, and in a stream :func:`sse_error_frame`.
- The blocked-content error chunk a stream ends with when a rail blocks it (NeMo Platform "Running Inference with
  Guardrails", Blocked Content Detection; ``../shared/SEEDS.md``)::

      data: {"error":{"message":"Blocked by <rail> rails.","type":"guardrails_violation","param":"<rail>","code":"content_blocked"}}\\n\\n
      data: [DONE]\\n\\n

  ``<rail>`` is the blocking rail's name as NeMo Guardrails reports it (``"regex check output"``).
- Synthetic answers for a refusal (OpenAI's ``chat.completion`` and ``chat.completion.chunk`` objects): the refusal
  text is the assistant's ``content`` and ``finish_reason`` is ``"content_filter"`` (OpenAI's value for content
  omitted by a filter). The streamed form is three chunks (role, content, finish) then ``data: [DONE]``.

Error types used by Railcar: ``invalid_request_error`` (400, 404, 405, 413), ``upstream_error`` (502),
``timeout_error`` (504), ``server_error`` (500, 503), ``guardrails_violation`` (a block). Messages never contain
request or response content.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

__all__ = ["DONE_FRAME", "VIOLATION_TYPE", "BLOCKED_CODE", "sse_frame", "error_payload", "error_body",
           "sse_error_frame", "blocked_error", "blocked_frames", "completion_id", "refusal_completion",
           "refusal_chunks", "chunk_frames"]

DONE_FRAME = b"data: [DONE]\n\n"
VIOLATION_TYPE = "guardrails_violation"
BLOCKED_CODE = "content_blocked"


def sse_frame(payload: Any) -> bytes:
    """One SSE event ``data: <compact JSON>\\n\\n`` (orjson, no spaces, key order kept)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_payload(message: str, type: str = "invalid_request_error", param: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
    """The error object as a dict: ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    """:func:`error_payload` serialized as JSON bytes."""
    return orjson.dumps(error_payload(message, type, param, code))


def sse_error_frame(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """One SSE event carrying the error object (``data: {"error": {...}}\\n\\n``): how a stream that already sent
    its 200 status reports a failure; the ``openai`` client raises ``APIError`` on it."""
    return sse_frame(error_payload(message, type, None, code))


def blocked_error(rail: str) -> dict[str, Any]:
    """The OpenAI-shaped error object for a block by ``rail``: ``{"error": {message, type, param, code}}``."""
    return error_payload(f"Blocked by {rail} rails.", VIOLATION_TYPE, rail, BLOCKED_CODE)


def blocked_frames(rail: str) -> bytes:
    """The error chunk for ``rail`` followed by ``data: [DONE]``, as the exact bytes the client receives."""
    return sse_frame(blocked_error(rail)) + DONE_FRAME


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


def chunk_frames(head: dict[str, Any], texts: list[str], finish: str = "stop", **extra: Any) -> list[bytes]:
    """SSE frames of a streamed answer, each a ``chat.completion.chunk`` with ``head``'s keys (``id``, ``object``,
    ``created``, ``model``, ...): a role chunk carrying ``texts[0]`` (none when ``texts`` is empty), one content
    chunk per further text, a finish chunk (``finish_reason: finish``, plus ``extra`` keys such as ``usage``) and
    ``data: [DONE]``. The one ``chat.completion.chunk`` builder (refusals, the synthetic stream, the demo's leaks)."""

    def frame(delta: dict[str, Any], fin: str | None, **more: Any) -> bytes:
        return sse_frame(dict(head, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}],
                              **more))

    frames = [frame({"role": "assistant", "content": texts[0]}, None)] if texts else []
    frames += [frame({"content": t}, None) for t in texts[1:]]
    frames.append(frame({}, finish, **extra))
    frames.append(DONE_FRAME)
    return frames


def refusal_chunks(model: str, message: str, *, id: str | None = None, created: int | None = None) -> list[bytes]:
    """The streamed equivalent of :func:`refusal_completion` (:func:`chunk_frames`): SSE frames (bytes,
    ``\\n\\n``-ended) for a role chunk, a content chunk, a final chunk with ``finish_reason: content_filter``, then
    ``data: [DONE]``."""
    head = {"id": id or completion_id(), "object": "chat.completion.chunk",
            "created": int(time.time()) if created is None else created, "model": model}
    return chunk_frames(head, ["", message], "content_filter")
