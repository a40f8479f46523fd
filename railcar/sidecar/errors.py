"""OpenAI-shaped error responses for aiohttp (the payloads themselves are :mod:`railcar.core.wire`)."""

from __future__ import annotations

from aiohttp import web

from railcar.core.wire import error_body

__all__ = ["error_response"]


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An aiohttp ``Response`` with ``status`` and the error JSON (``application/json``)."""
    return web.Response(status=status, body=error_body(message, type, param, code),
                        content_type="application/json", headers=headers)
