"""Prometheus metrics of one sidecar process (``GET /metrics``, text exposition format 0.0.4).

Each :class:`Metrics` owns its own ``CollectorRegistry`` so several apps in one process (tests) never clash.

- ``railcar_requests_total{route,status}`` counter: answered requests, ``route`` one of ``chat_completions``,
  ``models``, ``passthrough``, ``status`` the HTTP status sent to the agent.
- ``railcar_upstream_latency_seconds{route}`` histogram: request sent → upstream body fully received.
- ``railcar_upstream_ttfb_seconds{route}`` histogram: request sent → upstream response headers received.
- ``railcar_inflight_streams`` gauge: streamed responses currently being relayed.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The sidecar's metric families; :meth:`render` gives the exposition bytes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("railcar_requests", "Requests answered, by route and HTTP status.",
                                ("route", "status"), registry=self.registry)
        self.upstream_latency = Histogram("railcar_upstream_latency_seconds",
                                          "Upstream request sent to body fully received, seconds.", ("route",),
                                          buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.upstream_ttfb = Histogram("railcar_upstream_ttfb_seconds",
                                       "Upstream request sent to response headers received, seconds.", ("route",),
                                       buckets=_TTFB_BUCKETS, registry=self.registry)
        self.inflight_streams = Gauge("railcar_inflight_streams", "Streamed responses being relayed now.",
                                      registry=self.registry)
        self._req_children: dict[tuple[str, int], Counter] = {}

    def count(self, route: str, status: int) -> None:
        """One answered request (children cached: ``labels()`` is the costly part)."""
        key = (route, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(route, str(status))
        child.inc()

    def render(self) -> bytes:
        """All families in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)
