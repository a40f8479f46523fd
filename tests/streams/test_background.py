"""railcar.streams.background: the bounded queue drained by one background task or one worker thread."""

from __future__ import annotations

import asyncio
import threading

from railcar.streams.background import QueueWorker, ThreadQueueWorker


class Collect(QueueWorker[int]):
    """Takes items off one at a time into ``done``; ``gate`` holds the task until set."""

    task_name = "test-collect"

    def __init__(self, max_pending: int) -> None:
        super().__init__(max_pending, {"done": 0})
        self.done: list[int] = []
        self.gate = asyncio.Event()

    async def _handle(self, item: int) -> None:
        await self.gate.wait()
        self.done.append(item)
        self.stats["done"] += 1


async def test_offer_drops_and_counts_beyond_max_pending() -> None:
    w = Collect(3)
    assert [w.offer(i) for i in range(5)] == [True, True, True, False, False]
    assert w.stats == {"dropped": 2, "done": 0}
    await w.start()
    w.gate.set()
    await w.close()
    assert w.done == [0, 1, 2]


async def test_items_offered_while_running_are_processed_in_order_and_close_drains() -> None:
    w = Collect(100)
    await w.start()
    await w.start()  # idempotent: still one task
    w.gate.set()
    for i in range(10):
        w.offer(i)
        if i % 3 == 0:
            await asyncio.sleep(0)  # let the task run and go idle in between
    await w.close()
    assert w.done == list(range(10)) and w.stats["done"] == 10 and w._task is None


async def test_idle_returns_after_its_timeout_without_work() -> None:
    w = Collect(1)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await w._idle(0.05)
    assert 0.04 <= loop.time() - t0 < 1.0


class Threaded(ThreadQueueWorker[bytes]):
    """Records the items and the thread each ran on; ``gate`` holds the worker in ``_process`` until set."""

    thread_name = "test-threaded"

    def __init__(self, max_pending: int, max_pending_bytes: int = 0) -> None:
        super().__init__(max_pending, {}, max_pending_bytes=max_pending_bytes, size=len, tick_s=0.05)
        self.done: list[bytes] = []
        self.threads: set[int] = set()
        self.gate = threading.Event()
        self.finished_on: int | None = None

    def _process(self, item: bytes) -> None:
        self.gate.wait()
        self.threads.add(threading.get_ident())
        self.done.append(item)

    def _finish(self) -> None:
        self.finished_on = threading.get_ident()


async def test_thread_worker_runs_items_in_order_on_its_thread_and_finishes_there() -> None:
    w = Threaded(100)
    await w.start()
    await w.start()  # idempotent: still one thread
    w.gate.set()
    items = [bytes([i]) * (i + 1) for i in range(30)]
    for it in items:
        assert w.offer(it)
    await w.close()
    assert w.done == items and w.threads == {w.ident} and w.finished_on == w.ident
    assert w.ident != threading.get_ident() and w.pending == 0 and w.pending_bytes == 0


async def test_thread_worker_bounds_by_count_and_by_bytes() -> None:
    by_count = Threaded(2)
    assert [by_count.offer(b"x") for _ in range(4)] == [True, True, False, False]
    by_bytes = Threaded(100, max_pending_bytes=10)
    assert [by_bytes.offer(b"abcd") for _ in range(3)] == [True, True, False]
    assert by_bytes.offer(b"ab") and not by_bytes.offer(b"a")  # exactly at the bound, then over it
    assert by_count.stats["dropped"] == 2 and by_bytes.stats["dropped"] == 2 and by_bytes.pending_bytes == 10
    for w in (by_count, by_bytes):
        w.gate.set()
        await w.start()
        await w.close()
    assert by_count.done == [b"x", b"x"] and by_bytes.done == [b"abcd", b"abcd", b"ab"]
