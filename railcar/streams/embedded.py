"""The embedded default: no ``[kafka] bootstrap_servers``, so the sidecar's trace records go to the consumer logic
in-process and the fileset is written locally (``[fileset] root``); a single machine works without a broker.

``EmbeddedPipeline`` has the publisher's interface (``publish(key, value)`` never blocks, ``start``, ``close``).
It never competes with the proxy for the event loop: records wait in a bounded queue
(:class:`railcar.streams.background.ThreadQueueWorker`) drained by one worker thread, which scans them with
:class:`railcar.streams.processor.SecurityProcessor` and commits the fileset at most every ``commit_interval_s``
seconds and on close. Nothing of that runs on the loop; ``publish`` is thread-safe (the recorder may call it from
its own thread). The queue is bounded by count (``[telemetry] queue_size``) and by bytes (``max_pending_bytes``,
which bounds the memory a backlog can take at high concurrency); a record beyond either is dropped, counted in
``stats["dropped"]`` and on ``/metrics`` as ``railcar_embedded_dropped_total``, and the request is never held.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from railcar.rails.scanner import Scanner
from railcar.streams.background import ThreadQueueWorker, drop_counter
from railcar.streams.otlp import OTLPDecodeError
from railcar.streams.pipeline import build_processor
from railcar.streams.settings import StreamsSettings

__all__ = ["EmbeddedPipeline", "MAX_PENDING_BYTES", "embedded_metrics"]

log = logging.getLogger("railcar.embedded")

# A backlog of trace records is memory the sidecar holds: 16 MiB is ~1,500 typical 256-token spans (~10 KiB each),
# several seconds of the consumer's work, and keeps the embedded default's RSS bounded when the load outruns it.
MAX_PENDING_BYTES = 16 * 1024 * 1024

def embedded_metrics(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The embedded consumer's Prometheus metrics in ``registry``: ``dropped`` (``railcar_embedded_dropped_total``,
    trace records dropped because the queue was full)."""
    return {"dropped": drop_counter("railcar_embedded_dropped", "Trace records the embedded consumer dropped because "
                                    "its queue was full (by count or bytes).", registry)}


class EmbeddedPipeline(ThreadQueueWorker[bytes]):
    """In-process sink for trace records. ``config``: the root config (its ``[telemetry]``, ``[fileset]`` and
    ``[detection]``); ``scanner``: shared :class:`railcar.rails.scanner.Scanner` (built from ``[detection]`` when
    None). Records beyond ``[telemetry] queue_size`` waiting, or beyond ``max_pending_bytes`` of record bytes, are
    dropped and counted (``stats["dropped"]``, ``railcar_embedded_dropped_total`` in ``registry``). ``stats`` also
    counts ``processed``, ``undecodable``, ``failed`` records and fileset ``commits``. Raises what
    :func:`railcar.streams.pipeline.build_processor` raises (a bad ``[detection]`` or ``[fileset] root``)."""

    thread_name = "railcar-embedded-consumer"

    def __init__(self, config: StreamsSettings, *, scanner: Scanner | None = None, writer_id: str = "embedded",
                 commit_interval_s: float = 1.0, registry: CollectorRegistry = REGISTRY,
                 max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self.proc = build_processor(config, scanner=scanner, writer_id=writer_id, registry=registry)
        super().__init__(config.telemetry.queue_size,
                         {"processed": 0, "undecodable": 0, "failed": 0, "commits": 0},
                         max_pending_bytes=max_pending_bytes, size=len, tick_s=commit_interval_s)
        self._interval = commit_interval_s
        self._dropped = embedded_metrics(registry)["dropped"]
        self._dirty = False
        self._last_commit = time.monotonic()

    def publish(self, key: bytes, value: bytes) -> bool:
        """Queue one record (O(1), thread-safe, never blocks); False when the queue is full (counted).
        :meth:`close` processes what is queued and commits the fileset."""
        if self.offer(value):
            return True
        self._dropped.inc()
        return False

    # ------------------------------------------------------------ worker thread
    def _process(self, value: bytes) -> None:
        try:
            self.proc.process(value)
            self.stats["processed"] += 1
        except OTLPDecodeError:
            self.stats["undecodable"] += 1
        except Exception as exc:  # one bad record must not stop the in-process consumer
            self.stats["failed"] += 1
            log.error("embedded consumer: record failed (%s); continuing", type(exc).__name__)
        self._dirty = True

    def _tick(self) -> None:
        if self._dirty and time.monotonic() - self._last_commit >= self._interval:
            self._dirty = not self._commit()
            self._last_commit = time.monotonic()

    def _finish(self) -> None:
        if self._dirty or self.stats["commits"] == 0:
            for attempt in range(3):  # the last write: a few tries before findings are given up
                if self._commit():
                    break
                time.sleep(0.1 * (attempt + 1))

    def _commit(self) -> bool:
        """Write the fileset; False (logged, retried at the next interval) when the write fails (e.g. disk full)."""
        try:
            self.proc.commit()
        except OSError as exc:
            log.error("embedded consumer: fileset write failed (%s); retrying", exc.strerror or type(exc).__name__)
            return False
        self.stats["commits"] += 1
        return True
