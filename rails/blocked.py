"""The blocked-content error chunk a stream ends with when a rail blocks it.

Format (NeMo Platform "Running Inference with Guardrails", Blocked Content Detection; ``../shared/SEEDS.md``)::

    data: {"error":{"message":"Blocked by <rail> rails.","type":"guardrails_violation","param":"<rail>","code":"content_blocked"}}\\n\\n
    data: [DONE]\\n\\n

``<rail>`` is the blocking rail's name as NeMo Guardrails reports it (``"regex check output"``,
``"self check output"``).
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DONE_FRAME", "VIOLATION_TYPE", "BLOCKED_CODE", "blocked_error", "blocked_frames", "sse_frame"]

DONE_FRAME = b"data: [DONE]\n\n"
VIOLATION_TYPE = "guardrails_violation"
BLOCKED_CODE = "content_blocked"


def blocked_error(rail: str) -> dict[str, Any]:
    """The OpenAI-shaped error object for a block by ``rail``: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": f"Blocked by {rail} rails.", "type": VIOLATION_TYPE, "param": rail,
                      "code": BLOCKED_CODE}}


def sse_frame(payload: Any) -> bytes:
    """One SSE event ``data: <compact JSON>\\n\\n`` (orjson, no spaces, key order kept)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def blocked_frames(rail: str) -> bytes:
    """The error chunk for ``rail`` followed by ``data: [DONE]``, as the exact bytes the client receives."""
    return sse_frame(blocked_error(rail)) + DONE_FRAME
