"""Placeholder until the rails issue lands: no guardrail configuration means the pass-through guard."""

from __future__ import annotations

from typing import Any


async def build_guard(config: Any) -> Any:
    """Build the guard for ``config`` (a :class:`sidecar.config.RailcarConfig`); ``None`` when no rails are set."""
    return None
