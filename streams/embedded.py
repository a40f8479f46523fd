"""The embedded default: no ``[kafka] bootstrap_servers``, so the sidecar's trace records go to the consumer logic
in-process and the fileset is written locally (``[fileset] root``); a single machine works without a broker.

``EmbeddedPipeline`` has the publisher's interface (``publish(key, value)`` never blocks, ``start``, ``close``):
records wait in a bounded deque; a background task scans them with :class:`streams.consumer.SecurityProcessor`
(CPU work, run in a worker thread so the event loop keeps serving requests) and commits the fileset at most every
``commit_interval_s`` seconds and on close.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

__all__ = ["EmbeddedPipeline"]

log = logging.getLogger("railcar.embedded")


class EmbeddedPipeline:
    """In-process sink for trace records. ``config``: the :class:`sidecar.config.RailcarConfig`; ``scanner``:
    shared :class:`rails.scanner.Scanner` (built from ``[detection]`` when None). Records beyond
    ``[telemetry] queue_size`` waiting are dropped and counted in ``stats["dropped"]``."""

    def __init__(self, config: Any, *, scanner: Any = None, writer_id: str = "embedded",
                 commit_interval_s: float = 1.0, registry: CollectorRegistry = REGISTRY) -> None:
        from streams.consumer import SecurityProcessor, consumer_metrics
        from streams.fileset import open_fileset

        if scanner is None:
            from rails.scanner import scanner_from_config
            scanner = scanner_from_config(config.detection)
        self.proc = SecurityProcessor(scanner, open_fileset(config.fileset.root, config.fileset.s3_endpoint_url),
                                      writer_id, metrics=consumer_metrics(registry))
        self._q: collections.deque[bytes] = collections.deque()
        self._max = config.telemetry.queue_size
        self._interval = commit_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = {"processed": 0, "dropped": 0, "undecodable": 0, "commits": 0}

    def publish(self, key: bytes, value: bytes) -> bool:
        """Queue one record (O(1)); False when the queue is full (counted)."""
        if len(self._q) >= self._max:
            self.stats["dropped"] += 1
            return False
        self._q.append(value)
        self._wake.set()
        return True

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="railcar-embedded-consumer")

    async def close(self) -> None:
        """Process what is queued, commit the fileset, stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    def _work(self, values: list[bytes]) -> None:
        from streams.otlp import OTLPDecodeError

        for v in values:
            try:
                self.proc.process(v)
                self.stats["processed"] += 1
            except OTLPDecodeError:
                self.stats["undecodable"] += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        dirty, last = False, loop.time()
        while True:
            if self._q:
                values = [self._q.popleft() for _ in range(min(len(self._q), 1000))]
                await asyncio.to_thread(self._work, values)
                dirty = True
            elif self._closing:
                break
            else:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                except asyncio.TimeoutError:
                    pass
            if dirty and loop.time() - last >= self._interval:
                await asyncio.to_thread(self.proc.commit)
                self.stats["commits"] += 1
                dirty, last = False, loop.time()
        if dirty or self.stats["commits"] == 0:
            await asyncio.to_thread(self.proc.commit)
            self.stats["commits"] += 1
