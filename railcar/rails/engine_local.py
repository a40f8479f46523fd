"""Local mode: run the guardrail config's rails in-process with NeMo Guardrails' ``Guardrails`` wrapper.

The wrapper picks the IORails engine (``nemoguardrails/guardrails/iorails.py``: input/output rails only, Colang
1.0, flows its rail catalog can compile; ~0.05 ms per regex check here) and otherwise LLMRails (~12 ms per check;
needed for custom actions and Colang flows). :class:`LocalEngine` logs why it fell back, so the slower path is
never silent.

Checks go through ``check_async(messages, rail_types=[...])`` (NeMo Guardrails 0.24.1): ``input`` rails judge the
last ``user`` message, ``output`` rails the last ``assistant`` message.

Model-free configs on IORails (every rail's action takes none of the model / HTTP collaborators, e.g. the ``regex``
and injection-detection rails) skip one hop: ``IORails.check_async`` only submits ``IORails._run_check`` to its
non-streaming admission queue (``AsyncWorkQueue``: a future, a worker task wake-up, ~15 us of a ~65 us check here)
to bound concurrent model calls; a check that calls no model is awaited directly, so it runs start to finish in the
caller's task without suspending. Same rails, same NeMo request span and logs; with NeMo metrics on (they hang off
that queue) or on LLMRails the public ``check_async`` is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from railcar.rails.guardrails_config import LoadedRails

log = logging.getLogger("railcar.rails")

__all__ = ["CheckResult", "LocalEngine", "RailError"]

# CompiledRail parameters through which a NeMo rail action reaches a model or the network (compiled_rail.py,
# RailDependencies / _request_dependencies); an action taking none of them runs on its text and config alone.
_MODEL_PARAMS = frozenset({"llm", "llms", "llm_task_manager", "http_client", "model_caches"})


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
        """``status == "blocked"``."""
        return self.status == "blocked"


class LocalEngine:
    """In-process rails for one :class:`LoadedRails`. ``engine`` is ``"iorails"`` or ``"llmrails"``;
    ``fallback_reason`` says why LLMRails was needed (``None`` on IORails); ``model_free`` is true when every rail
    runs without a model or network client (checks then skip NeMo's admission queue, see the module doc).

    Raises :class:`ValueError` when ``loaded`` has no guardrail config."""

    mode = "local"

    def __init__(self, loaded: LoadedRails) -> None:
        from nemoguardrails.guardrails.guardrails import Guardrails
        from nemoguardrails.guardrails.iorails import INTERNAL_ERROR_MESSAGE, IORails
        from nemoguardrails.rails.llm.options import RailType

        if loaded.rails_config is None:
            raise ValueError("guardrails.config_path: local mode needs a guardrail config")
        self.loaded = loaded
        self.fallback_reason = IORails.unsupported_reason(loaded.rails_config)
        if self.fallback_reason:
            log.warning("guardrail config %s: using LLMRails (slower) because IORails cannot run it: %s",
                        loaded.source, self.fallback_reason)
        self._rails = Guardrails(loaded.rails_config, use_iorails=self.fallback_reason is None)
        self.engine = "iorails" if self._rails.use_iorails_engine else "llmrails"
        # Both engines turn an exception inside an action into this refusal; to Railcar it is an error.
        self._internal_error = INTERNAL_ERROR_MESSAGE
        self._rail_types = {"input": [RailType.INPUT], "output": [RailType.OUTPUT]}  # built once, not per check
        self.model_free = False
        self._direct: Any = None  # IORails._run_check once the engine runs, when model_free
        io = self._rails.rails_engine
        if self.engine == "iorails":
            compiled = getattr(getattr(io, "rails_manager", None), "_rails", None)
            self.model_free = (isinstance(compiled, dict) and bool(compiled) and not io._metrics_enabled
                               and all(not (getattr(r, "_accepted", _MODEL_PARAMS) & _MODEL_PARAMS)
                                       for r in compiled.values()))

    async def check(self, kind: str, messages: list[dict[str, Any]]) -> CheckResult:
        """Run the ``kind`` (``"input"`` | ``"output"``) rails on ``messages`` (OpenAI-shaped, text content).

        Raises :class:`RailError` when a rail's action raised, or whatever the engine raises (the caller applies
        ``fail_mode``)."""
        direct = self._direct
        if direct is not None:
            res = await direct(messages, self._rail_types[kind])
        else:
            res = await self._rails.check_async(messages, rail_types=self._rail_types[kind])
            if self.model_free and getattr(self._rails.rails_engine, "_running", False):
                self._direct = getattr(self._rails.rails_engine, "_run_check", None)
        if res.status.value == "blocked" and res.content == self._internal_error:
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
        self._direct = None
        stop = getattr(self._rails.rails_engine, "stop", None)
        if stop is not None:
            res = stop()
            if hasattr(res, "__await__"):
                await res

