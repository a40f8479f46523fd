"""A bounded FIFO drained by one background task: the shape of the trace recorder and the embedded consumer.

The request path calls :meth:`QueueWorker.offer` (O(1), never blocks, never awaits); a task started by
:meth:`QueueWorker.start` takes items off in order (a subclass's ``_run``); :meth:`QueueWorker.close` lets
``_run`` finish what is queued and waits for it. When ``max_pending`` items wait, new ones are dropped and counted
in ``stats["dropped"]`` (losing a trace record is better than holding a request).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Generic, TypeVar

__all__ = ["QueueWorker"]

T = TypeVar("T")


class QueueWorker(Generic[T]):
    """Base class: ``self._pending`` (deque of ``T``), ``self.stats`` (dict of counters, with ``"dropped"``).

    Subclasses implement ``async def _handle(self, item)`` (one item, in order; the default :meth:`_run` loop), or
    override ``_run`` itself (e.g. to take batches): take items off ``self._pending``; when it is empty, return if
    ``self._closing`` else ``await self._idle(timeout)``. ``task_name`` names the asyncio task.
    """

    task_name = "railcar-queue-worker"

    def __init__(self, max_pending: int, stats: dict[str, Any]) -> None:
        self._pending: collections.deque[T] = collections.deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = {"dropped": 0, **stats}

    def offer(self, item: T) -> bool:
        """Queue ``item`` for the background task (O(1)); False (and ``stats["dropped"]`` + 1) when full."""
        if len(self._pending) >= self._max_pending:
            self.stats["dropped"] += 1
            return False
        self._pending.append(item)
        self._wake.set()
        return True

    async def start(self) -> None:
        """Start the background task (once; later calls do nothing). Needs a running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def close(self) -> None:
        """Let the task process what is queued, then wait for it to end."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _idle(self, timeout: float | None = None) -> None:
        """Sleep until :meth:`offer` or :meth:`close` wakes the task, or ``timeout`` seconds pass (None: no limit)."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        """Hand the queued items to :meth:`_handle` one at a time, in order, until closed and empty."""
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._idle()
                continue
            await self._handle(self._pending.popleft())

    async def _handle(self, item: T) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
