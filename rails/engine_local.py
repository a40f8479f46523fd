"""Local mode: run the guardrail config's rails in-process with NeMo Guardrails' ``Guardrails`` wrapper.

The wrapper picks the IORails engine (``nemoguardrails/guardrails/iorails.py``: input/output rails only, Colang
1.0, flows its rail catalog can compile; ~0.05 ms per regex check here) and otherwise LLMRails (~12 ms per check;
needed for custom actions and Colang flows). :class:`LocalEngine` logs why it fell back, so the slower path is
never silent.

Checks go through ``check_async(messages, rail_types=[...])`` (NeMo Guardrails 0.24.1): ``input`` rails judge the
last ``user`` message, ``output`` rails the last ``assistant`` message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rails.guardrails_config import LoadedRails

log = logging.getLogger("railcar.rails")

__all__ = ["CheckResult", "LocalEngine", "RailError"]


class RailError(RuntimeError):
    """A rail failed to decide (its action raised, its model or server failed, it timed out); ``fail_mode``
    decides whether that blocks (``closed``) or passes (``open``)."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of one rail check: ``status`` ``"passed"`` | ``"modified"`` | ``"blocked"``; ``rail`` the blocking
    rail's name (``"regex check output"``) or ``None``; ``content`` the text after the rails (for a block, the
    refusal message NeMo Guardrails produced)."""

    status: str
    rail: str | None = None
    content: str = ""

    @property
    def blocked(self) -> bool:
        return self.status == "blocked"


class LocalEngine:
    """In-process rails for one :class:`LoadedRails`. ``engine`` is ``"iorails"`` or ``"llmrails"``;
    ``fallback_reason`` says why LLMRails was needed (``None`` on IORails)."""

    mode = "local"

    def __init__(self, loaded: LoadedRails) -> None:
        from nemoguardrails.guardrails.guardrails import Guardrails
        from nemoguardrails.guardrails.iorails import IORails

        if loaded.rails_config is None:
            raise ValueError("guardrails.config_path: local mode needs a guardrail config")
        self.loaded = loaded
        self.fallback_reason = IORails.unsupported_reason(loaded.rails_config)
        if self.fallback_reason:
            log.warning("guardrail config %s: using LLMRails (slower) because IORails cannot run it: %s",
                        loaded.source, self.fallback_reason)
        self._rails = Guardrails(loaded.rails_config, use_iorails=self.fallback_reason is None)
        self.engine = "iorails" if self._rails.use_iorails_engine else "llmrails"

    async def check(self, kind: str, messages: list[dict[str, Any]]) -> CheckResult:
        """Run the ``kind`` (``"input"`` | ``"output"``) rails on ``messages`` (OpenAI-shaped, text content).

        Raises :class:`RailError` when a rail's action raised, or whatever the engine raises (the caller applies
        ``fail_mode``)."""
        from nemoguardrails.rails.llm.options import RailType

        from nemoguardrails.guardrails.iorails import INTERNAL_ERROR_MESSAGE

        res = await self._rails.check_async(messages, rail_types=[RailType(kind)])
        if res.status.value == "blocked" and res.content == INTERNAL_ERROR_MESSAGE:
            # Both engines turn an exception inside an action into this refusal; to Railcar it is an error.
            raise RailError(f"rail {res.rail!r} raised inside NeMo Guardrails (see its log)")
        return CheckResult(res.status.value, res.rail, res.content)

    async def warm(self) -> None:
        """Start the engine and run each configured rail type once on harmless text, so the first request does not
        pay for lazy initialisation (imports, pattern compilation, model clients)."""
        if self.loaded.has_input:
            await self.check("input", [{"role": "user", "content": "hello"}])
        if self.loaded.has_output:
            await self.check("output", [{"role": "user", "content": "hello"},
                                        {"role": "assistant", "content": "hello"}])

    async def close(self) -> None:
        """Stop the engine's workers (IORails)."""
        stop = getattr(self._rails.rails_engine, "stop", None)
        if stop is not None:
            res = stop()
            if hasattr(res, "__await__"):
                await res
