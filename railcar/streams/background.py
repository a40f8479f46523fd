"""A bounded FIFO drained in the background: by one asyncio task (the trace recorder) or one worker thread.

The request path calls :meth:`QueueWorker.offer` (O(1), never blocks, never awaits); a task started by
:meth:`QueueWorker.start` takes items off in order (a subclass's ``_run``); :meth:`QueueWorker.close` lets
``_run`` finish what is queued and waits for it. When ``max_pending`` items wait, new ones are dropped and counted
in ``stats["dropped"]`` (losing a trace record is better than holding a request).

:class:`ThreadQueueWorker` is the same shape drained by a worker thread instead of a task, for CPU work and
blocking writes that must never run on the event loop (the embedded consumer's scanning and fileset writes).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter

__all__ = ["QueueWorker", "ThreadQueueWorker", "drop_counter"]

_DROP_COUNTERS: dict[tuple[int, str], Counter] = {}


def drop_counter(name: str, documentation: str, registry: CollectorRegistry = REGISTRY) -> Counter:
    """The counter ``<name>_total`` of items a bounded queue worker dropped, in ``registry`` (created once per
    registry and name, so several workers of one process share it)."""
    key = (id(registry), name)
    c = _DROP_COUNTERS.get(key)
    if c is None:
        c = _DROP_COUNTERS[key] = Counter(name, documentation, registry=registry)
    return c

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


class ThreadQueueWorker(Generic[T]):
    """A bounded FIFO drained by one worker **thread** (not a task): work that must never run on the event loop.

    :meth:`offer` is thread-safe, O(1) and never blocks (a short lock, no I/O): it may be called from the loop or
    from any other thread. Items beyond ``max_pending`` waiting, or beyond ``max_pending_bytes`` of ``size(item)``
    (when both are given), are dropped and counted in ``stats["dropped"]``. The worker thread hands items, in order,
    to :meth:`_process` and calls :meth:`_tick` after each item and at least every ``tick_s`` seconds while idle;
    after :meth:`close`, once the queue is empty, it calls :meth:`_finish` and ends. ``ident`` is the worker
    thread's ``threading.get_ident()`` once it runs (None before).

    The GIL: a CPU-bound thread delays the loop thread until the interpreter's switch interval (5 ms) forces a
    hand-over, so the worker pauses ``pause_s`` seconds after every ``slice_s`` seconds of work: the loop waits at
    most about one slice (or one item) for the GIL, at the cost of ``pause_s / slice_s`` of the worker's throughput.
    """

    thread_name = "railcar-thread-worker"

    def __init__(self, max_pending: int, stats: dict[str, Any], *, max_pending_bytes: int = 0,
                 size: Callable[[T], int] | None = None, tick_s: float = 1.0, slice_s: float = 0.001,
                 pause_s: float = 0.0002) -> None:
        self._pending: collections.deque[T] = collections.deque()
        self._max_pending, self._max_bytes, self._size = max_pending, max_pending_bytes, size
        self._pending_bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closing = False
        self._tick_s, self._slice_s, self._pause_s = tick_s, slice_s, pause_s
        self.ident: int | None = None
        self.stats = {"dropped": 0, **stats}

    @property
    def pending(self) -> int:
        """Items waiting for the worker."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Sum of ``size(item)`` over the waiting items (0 without ``size``)."""
        return self._pending_bytes

    def offer(self, item: T) -> bool:
        """Queue ``item`` for the worker thread; False (and ``stats["dropped"]`` + 1) when the queue is full by
        count or by bytes. Thread-safe; never blocks beyond a short lock."""
        n = self._size(item) if self._size is not None else 0
        with self._cond:
            if len(self._pending) >= self._max_pending or (
                    self._max_bytes and self._pending_bytes + n > self._max_bytes):
                self.stats["dropped"] += 1
                return False
            self._pending.append(item)
            self._pending_bytes += n
            self._cond.notify()
        return True

    async def start(self) -> None:
        """Start the worker thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Let the worker process what is queued and :meth:`_finish`, then wait for the thread (in a helper thread:
        the loop keeps running meanwhile)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _take(self) -> tuple[bool, T | None]:
        """``(True, item)`` for the next item; ``(False, None)`` after an idle wait of up to ``tick_s``;
        ``(True, None)`` when closing and empty."""
        with self._cond:
            if not self._pending and not self._closing:
                self._cond.wait(self._tick_s)
            if self._pending:
                item = self._pending.popleft()
                if self._size is not None:
                    self._pending_bytes -= self._size(item)
                return True, item
            return self._closing, None

    def _loop(self) -> None:
        self.ident = threading.get_ident()
        started = time.perf_counter()
        while True:
            got, item = self._take()
            if got and item is None:
                break
            if got:
                self._process(item)  # type: ignore[arg-type]
                if time.perf_counter() - started >= self._slice_s:
                    time.sleep(self._pause_s)  # release the GIL long enough for the loop thread to take it
                    started = time.perf_counter()
            else:
                started = time.perf_counter()
            self._tick()
        self._finish()

    def _process(self, item: T) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tick(self) -> None:
        """Periodic work in the worker thread (after each item, and every ``tick_s`` while idle)."""

    def _finish(self) -> None:
        """Last work in the worker thread after :meth:`close`, once the queue is empty."""
