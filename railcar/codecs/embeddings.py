"""The OpenAI Embeddings codec: ``POST /v1/embeddings``.

Formats (OpenAI API reference, "Embeddings"): request ``{"model", "input": str | [str] | [int] | [[int]],
"encoding_format"?: "float" | "base64", "dimensions"?}``; answer ``{"object": "list", "data": [{"object":
"embedding", "index", "embedding": [float] | base64 str}], "model", "usage": {"prompt_tokens", "total_tokens"}}``.

Nothing streams. There is no text answer to refuse with, so a refusal is the blocked error
(:attr:`refusal_status` 400, ``guardrails_violation`` / ``content_blocked``).
"""

from __future__ import annotations

from typing import Any

from railcar.core import semconv, wire

from .base import Codec, Turn, mapping, number, string_turns, text

__all__ = ["EmbeddingsCodec"]


class EmbeddingsCodec(Codec):
    """``embeddings``: OpenAI-shaped embeddings (see module doc)."""

    name = "embeddings"
    path = "/v1/embeddings"
    operation = "embeddings"
    provider = "openai"
    api_type = "embeddings"
    streams = False
    refusal_status = 400
    required = {"model": (str,), "input": (str, list)}

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """``input`` (a string, or each string of a list) as user turns."""
        return string_turns(body, "input")

    def refusal_body(self, model: str, message: str, rail: str | None = None) -> dict[str, Any]:
        """The blocked error object (sent with status 400, :func:`railcar.core.wire.blocked_error`); ``message``
        when no rail is named."""
        if rail is not None:
            return wire.blocked_error(rail)
        return wire.error_payload(message, wire.VIOLATION_TYPE, None, wire.BLOCKED_CODE)

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """Not streamed: the error object as one SSE frame + ``[DONE]``."""
        return [wire.sse_frame(self.refusal_body(model, message)), wire.DONE_FRAME]

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        fmt = body.get("encoding_format")
        return {semconv.REQUEST_MODEL: text(body.get("model")),
                semconv.REQUEST_ENCODING_FORMATS: [fmt] if isinstance(fmt, str) else None,
                semconv.EMBEDDINGS_DIMENSION_COUNT: number(body.get("dimensions"))}

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        usage = mapping(obj.get("usage"))
        return {semconv.RESPONSE_MODEL: text(obj.get("model")),
                semconv.USAGE_INPUT_TOKENS: number(usage.get("prompt_tokens"))}
