"""Prometheus metrics of the rails, registered on ``prometheus_client``'s default registry (what the sidecar's
``GET /metrics`` exposes with ``generate_latest()``).

- ``railcar_rail_checks_total{rail,kind,outcome}``: checks run; ``kind`` is ``input`` | ``output`` |
  ``tool_input`` | ``tool_output``, ``outcome`` is ``passed`` | ``blocked`` | ``error``.
- ``railcar_rail_check_seconds{kind,mode}``: check latency in seconds (``mode`` local | remote).
- ``railcar_rails_blocked_requests_total{rail}`` and ``railcar_rails_blocked_streams_total{rail}``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

__all__ = ["CHECKS", "CHECK_SECONDS", "BLOCKED_REQUESTS", "BLOCKED_STREAMS", "record_check"]

CHECKS = Counter("railcar_rail_checks", "Guardrail checks run, by rail, kind and outcome.",
                 ("rail", "kind", "outcome"))
# Buckets from 50 µs (local IORails regex) to 5 s (remote / LLM-judged rails).
CHECK_SECONDS = Histogram("railcar_rail_check_seconds", "Guardrail check latency in seconds.", ("kind", "mode"),
                          buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25,
                                   0.5, 1.0, 2.5, 5.0))
BLOCKED_REQUESTS = Counter("railcar_rails_blocked_requests", "Requests refused by input or tool rails.", ("rail",))
BLOCKED_STREAMS = Counter("railcar_rails_blocked_streams", "Responses or streams blocked by output rails.",
                          ("rail",))


# Label children by label values: ``labels()`` takes the metric's lock and validates the values on every call; the
# children are stable for the process (nothing here calls ``remove``), so each set is looked up once.
_CHILDREN: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def record_check(rail: str, kind: str, outcome: str, mode: str, seconds: float) -> None:
    """Count one check and observe its latency (``seconds``, float)."""
    key = (rail, kind, outcome, mode)
    pair = _CHILDREN.get(key)
    if pair is None:
        pair = _CHILDREN[key] = (CHECKS.labels(rail, kind, outcome), CHECK_SECONDS.labels(kind, mode))
    pair[0].inc()
    pair[1].observe(seconds)
