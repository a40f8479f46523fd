"""The embedded default: no ``[kafka] bootstrap_servers``, so the sidecar's trace records go to the consumer logic
in-process and the fileset is written locally (``[fileset] root``); a single machine works without a broker.

``EmbeddedPipeline`` has the publisher's interface (``publish(key, value)`` never blocks, ``start``, ``close``):
records wait in a bounded deque; a background task scans them with :class:`railcar.streams.processor.SecurityProcessor`
(CPU work, run in a worker thread so the event loop keeps serving requests) and commits the fileset at most every
``commit_interval_s`` seconds and on close.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import REGISTRY, CollectorRegistry

from railcar.rails.scanner import Scanner
from railcar.streams.background import QueueWorker
from railcar.streams.otlp import OTLPDecodeError
from railcar.streams.pipeline import build_processor
from railcar.streams.settings import StreamsSettings

__all__ = ["EmbeddedPipeline"]

log = logging.getLogger("railcar.embedded")


class EmbeddedPipeline(QueueWorker[bytes]):
    """In-process sink for trace records. ``config``: the root config (its ``[telemetry]``, ``[fileset]`` and
    ``[detection]``); ``scanner``: shared :class:`railcar.rails.scanner.Scanner` (built from ``[detection]`` when
    None). Records beyond ``[telemetry] queue_size`` waiting are dropped and counted in ``stats["dropped"]``.
    Raises what :func:`railcar.streams.pipeline.build_processor` raises (a bad ``[detection]`` or
    ``[fileset] root``)."""

    task_name = "railcar-embedded-consumer"

    def __init__(self, config: StreamsSettings, *, scanner: Scanner | None = None, writer_id: str = "embedded",
                 commit_interval_s: float = 1.0, registry: CollectorRegistry = REGISTRY) -> None:
        self.proc = build_processor(config, scanner=scanner, writer_id=writer_id, registry=registry)
        super().__init__(config.telemetry.queue_size, {"processed": 0, "undecodable": 0, "failed": 0, "commits": 0})
        self._interval = commit_interval_s

    def publish(self, key: bytes, value: bytes) -> bool:
        """Queue one record (O(1)); False when the queue is full (counted). :meth:`close` processes what is
        queued and commits the fileset."""
        return self.offer(value)

    def _work(self, values: list[bytes]) -> None:
        for v in values:
            try:
                self.proc.process(v)
                self.stats["processed"] += 1
            except OTLPDecodeError:
                self.stats["undecodable"] += 1
            except Exception as exc:  # one bad record must not stop the in-process consumer
                self.stats["failed"] += 1
                log.error("embedded consumer: record failed (%s); continuing", type(exc).__name__)

    def _commit(self) -> bool:
        """Write the fileset; False (logged, retried at the next interval) when the write fails (e.g. disk full)."""
        try:
            self.proc.commit()
        except OSError as exc:
            log.error("embedded consumer: fileset write failed (%s); retrying", exc.strerror or type(exc).__name__)
            return False
        self.stats["commits"] += 1
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        dirty, last = False, loop.time()
        while True:
            if self._pending:
                values = [self._pending.popleft() for _ in range(min(len(self._pending), 1000))]
                await asyncio.to_thread(self._work, values)
                dirty = True
            elif self._closing:
                break
            else:
                await self._idle(self._interval)
            if dirty and loop.time() - last >= self._interval:
                dirty = not await asyncio.to_thread(self._commit)
                last = loop.time()
        if dirty or self.stats["commits"] == 0:
            for attempt in range(3):  # the last write: a few tries before findings are given up
                if await asyncio.to_thread(self._commit):
                    break
                await asyncio.sleep(0.1 * (attempt + 1))
