"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` (the shape OpenAI's API returns and
the ``openai`` client parses into ``APIStatusError.body``; ``../shared/DESIGN.md`` "Contracts").

Types used by the sidecar: ``invalid_request_error`` (400, 404, 413), ``upstream_error`` (502),
``timeout_error`` (504), ``server_error`` (500, 503). Messages never contain request or response content.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["error_payload", "error_body", "error_response", "sse_error_frame"]


def error_payload(message: str, type: str = "invalid_request_error", param: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
    """The error object as a dict: ``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> bytes:
    """:func:`error_payload` serialized as JSON bytes."""
    return orjson.dumps(error_payload(message, type, param, code))


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An aiohttp ``Response`` with ``status`` and the error JSON (``application/json``)."""
    return web.Response(status=status, body=error_body(message, type, param, code),
                        content_type="application/json", headers=headers)


def sse_error_frame(message: str, type: str = "upstream_error", code: str | None = None) -> bytes:
    """One SSE event carrying the error object (``data: {"error": {...}}\\n\\n``): how a stream that already sent
    its 200 status reports a failure; the ``openai`` client raises ``APIError`` on it."""
    return b"data: " + error_body(message, type, None, code) + b"\n\n"
