"""Prometheus metrics of one sidecar process (``GET /metrics``, text exposition format 0.0.4).

Each :class:`Metrics` owns its own ``CollectorRegistry`` so several apps in one process (tests) never clash.
:meth:`Metrics.render` exposes that registry **and** ``prometheus_client``'s default registry, where the rest of
the process registers (the publisher's ``railcar_publisher_*`` from :mod:`railcar.streams.producer`, the rails'
``railcar_rail_*`` from :mod:`railcar.rails.metrics`, the process and GC collectors); a family name present in both is
rendered once (the sidecar's own registry wins), so the exposition never holds a duplicate family.

- ``railcar_requests_total{route,status}`` counter: answered requests, ``route`` a guarded API
  (``chat_completions``, ``responses``, ``messages``, ``completions``, ``embeddings``), a ``server.passthrough_paths``
  entry (``/v1/models``, ``/v1/models/*``) or ``refused``; ``status`` the HTTP status sent to the agent.
- ``railcar_passthrough_requests_total{path}`` counter: unguarded requests, by the ``server.passthrough_paths`` entry.
- ``railcar_refused_paths_total{code}`` counter: requests refused by routing (``unguarded_path``, ``invalid_path``,
  ``unknown_path``, ``method_not_allowed``).
- ``railcar_upstream_latency_seconds{route}`` histogram: request sent → upstream body fully received.
- ``railcar_upstream_ttfb_seconds{route}`` histogram: request sent → upstream response headers received.
- ``railcar_inflight_streams`` gauge: streamed responses currently being relayed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Union:
    """A read-only collector over several registries for ``generate_latest``: every family of each, in order,
    skipping a family whose name an earlier registry already gave."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        seen: set[str] = set()
        for reg in self.registries:
            for fam in reg.collect():
                if fam.name not in seen:
                    seen.add(fam.name)
                    yield fam


class Metrics:
    """The sidecar's metric families; :meth:`render` gives the exposition bytes.

    ``shared``: the registry the rest of the process registers on, rendered after the sidecar's own (default
    ``prometheus_client.REGISTRY``; None renders only the sidecar's own families).
    """

    def __init__(self, shared: CollectorRegistry | None = REGISTRY) -> None:
        self.shared = shared
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
        self.passthrough = Counter("railcar_passthrough_requests", "Requests forwarded unguarded because "
                                   "server.passthrough_paths lists them, by the matching entry.", ("path",),
                                   registry=self.registry)
        self.refused_paths = Counter("railcar_refused_paths", "Requests refused before routing (no codec and not "
                                     "listed, a path with no single meaning, or the wrong method), by reason.",
                                     ("code",), registry=self.registry)
        self.frozen = Gauge("railcar_gc_frozen_objects", "Objects moved out of the garbage collector's reach at "
                            "start-up (gc.freeze, railcar serve); 0 when the heap was not frozen.",
                            registry=self.registry)
        self.frozen.set_function(gc.get_freeze_count)
        self._req_children: dict[tuple[str, int], Counter] = {}

    def count(self, route: str, status: int) -> None:
        """One answered request (children cached: ``labels()`` is the costly part)."""
        key = (route, status)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(route, str(status))
        child.inc()

    def render(self) -> bytes:
        """All families, the sidecar's and the shared registry's, each once, in the Prometheus text format
        (``CONTENT_TYPE_LATEST``, exposition format 0.0.4)."""
        if self.shared is None or self.shared is self.registry:
            return generate_latest(self.registry)
        return generate_latest(_Union(self.registry, self.shared))
