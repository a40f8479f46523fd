"""railcar.streams.background: the bounded queue drained by one background task."""

from __future__ import annotations

import asyncio

from railcar.streams.background import QueueWorker


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
