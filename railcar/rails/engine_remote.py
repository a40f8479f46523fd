"""Remote mode: rails run on a NeMo Guardrails server, called through its ``POST /v1/checks``.

Request (``nemoguardrails/server/schemas/openai.py`` ``GuardrailCheckRequest``, 0.24.1)::

    {"model": "<request model>", "messages": [...],
     "guardrails": {"config_id": "..."  |  "config_ids": [...], "rail_types": ["input"|"output"],
                    "context": {...}, "thread_id": "...", "options": {...}}}

Response: ``{"status": "passed"|"modified"|"blocked", "content": "...", "rail": "<name>"|null}``; HTTP 422 for a
bad request or unknown config id. ``request_defaults`` (NeMo Relay ``request_defaults``: ``context``,
``thread_id``, ``options`` / ``log``, ...) are merged into the ``guardrails`` object. Each check marks the current
OpenTelemetry span with ``nemo_guardrails.remote.start``, then ``.end`` or ``.error`` (NeMo Relay observability
marks, ``../shared/seeds/003_*.txt``). One pooled ``aiohttp.ClientSession`` per engine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from opentelemetry import trace

from railcar.rails.engine_local import CheckResult, RailError

__all__ = ["RemoteEngine"]

# request_defaults keys that belong in the `guardrails` object of /v1/checks; others go to the top level body.
_GUARDRAILS_KEYS = {"context", "thread_id", "options", "rails", "llm_params", "llm_output", "output_vars", "log",
                    "state"}


class RemoteEngine:
    """Client of one Guardrails server. ``endpoint`` is its base URL (``http://127.0.0.1:8000``),
    ``config_ids`` one or more config ids, ``timeout_millis`` the per-check budget (past it: :class:`RailError`),
    ``request_defaults`` a dict passed through to the backend."""

    mode = "remote"
    engine = "remote"
    fallback_reason = None

    def __init__(self, endpoint: str, config_ids: list[str], timeout_millis: int = 2000,
                 request_defaults: dict[str, Any] | None = None, model: str = "railcar") -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("guardrails.remote.endpoint: must start with http:// or https://")  # never the URL
        self.url = endpoint.rstrip("/") + "/v1/checks"
        self.config_ids = [c for c in config_ids if c]
        self.timeout = timeout_millis / 1000.0
        self.model = model
        self._guardrails: dict[str, Any] = {}
        self._top: dict[str, Any] = {}
        for key, value in (request_defaults or {}).items():
            (self._guardrails if key in _GUARDRAILS_KEYS else self._top)[key] = value
        if len(self.config_ids) == 1:
            self._guardrails["config_id"] = self.config_ids[0]
        elif self.config_ids:
            self._guardrails["config_ids"] = self.config_ids
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                                  json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def check(self, kind: str, messages: list[dict[str, Any]]) -> CheckResult:
        """Run the ``kind`` (``"input"`` | ``"output"``) rails of the server's config on ``messages``.

        Raises :class:`RailError` on a timeout, a connection failure, a non-200 answer or a malformed body."""
        span = trace.get_current_span()
        body = {"model": self.model, **self._top, "messages": messages,
                "guardrails": {**self._guardrails, "rail_types": [kind]}}
        span.add_event("nemo_guardrails.remote.start", {"url": self.url, "rail_type": kind,
                                                        "config_ids": self.config_ids})
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                async with self._sess().post(self.url, data=orjson.dumps(body),
                                             headers={"content-type": "application/json"}) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise RailError(f"guardrails server answered HTTP {resp.status}: {_error_message(raw)}")
            doc = orjson.loads(raw)
            result = CheckResult(str(doc["status"]), doc.get("rail"), str(doc.get("content", "")))
        except TimeoutError:
            err = RailError(f"guardrails server did not answer within {self.timeout * 1000:.0f} ms")
            span.add_event("nemo_guardrails.remote.error", {"error": str(err)})
            raise err from None
        except (aiohttp.ClientError, OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
            err = RailError(f"guardrails server call failed: {type(exc).__name__}: {exc}")
            span.add_event("nemo_guardrails.remote.error", {"error": str(err)})
            raise err from None
        except RailError as exc:
            span.add_event("nemo_guardrails.remote.error", {"error": str(exc)})
            raise
        span.add_event("nemo_guardrails.remote.end", {"status": result.status, "rail": result.rail or "",
                                                      "duration_ms": (time.perf_counter() - t0) * 1000})
        return result

    async def warm(self) -> None:
        """Open the pooled connection (the server loads its config lazily; a first check warms it too)."""
        try:
            await self.check("input", [{"role": "user", "content": "hello"}])
        except RailError:
            pass  # the config may have no input rails (HTTP 422) or the server is not up yet; requests decide

    async def close(self) -> None:
        """Close the pooled HTTP session (idempotent)."""
        if self._session is not None:
            await self._session.close()


def _error_message(raw: bytes) -> str:
    """The message of a non-200 answer, never its raw body: error texts end up in logs, spans and trace events,
    and a body can echo the checked messages (pydantic 422 errors carry the offending ``input``; a proxy's error
    page can hold anything). Only the error envelope's message (``{"error": {"message"}}``, what NeMo Guardrails
    0.24.1 ``server/exception_handlers.py`` sends, with request content already stripped) or FastAPI's string
    ``detail`` is kept, capped at 300 characters; else just the body's size."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    msg = None
    if isinstance(doc, dict):
        err = doc.get("error")
        msg = err.get("message") if isinstance(err, dict) else None
        if msg is None:
            msg = doc.get("detail")
    if isinstance(msg, str) and msg:
        return msg[:300]
    return f"<{len(raw)} byte body not shown>"
