"""rails/eager.py: eager start of coroutines, a deadline only once they suspend, tasks only for those that wait."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from railcar.rails import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


async def no_wait(x: int) -> int:
    return x * 2


async def waits(seconds: float, log: list[str]) -> str:
    log.append("started")
    try:
        await asyncio.sleep(seconds)
    finally:
        log.append("cleaned up")
    return "slept"


def test_start_finishes_a_coroutine_that_never_waits_without_a_loop() -> None:
    assert eager.start(no_wait(21)) == (True, 42)


async def test_run_bounded_returns_results_and_propagates_errors() -> None:
    loop = asyncio.get_running_loop()
    assert await eager.run_bounded(no_wait(4), loop.time() - 1) == 8  # never suspends: no deadline to miss
    assert await eager.run_bounded(waits(0.01, []), loop.time() + 5) == "slept"

    async def boom() -> None:
        raise ValueError("rail exploded")

    with pytest.raises(ValueError, match="rail exploded"):
        await eager.run_bounded(boom(), loop.time() + 5)


async def test_run_bounded_times_out_a_coroutine_that_waits_past_the_deadline() -> None:
    log: list[str] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TimeoutError):
        await eager.run_bounded(waits(5, log), t0 + 0.05)
    assert loop.time() - t0 < 1 and log == ["started", "cleaned up"]  # cancelled where it waited


async def test_spawn_runs_eagerly_and_makes_a_task_only_for_a_waiting_coroutine() -> None:
    log: list[str] = []
    assert eager.spawn(no_wait(1)) is None
    task = eager.spawn(waits(0.01, log))
    assert isinstance(task, asyncio.Task) and log == ["started"]  # ran up to its first await already
    assert await task == "slept" and log == ["started", "cleaned up"]


async def test_spawned_coroutine_runs_in_its_own_context_copy() -> None:
    seen: list[str] = []

    async def sets_var() -> None:
        VAR.set("inner")
        await asyncio.sleep(0)
        seen.append(VAR.get())  # still its own value after the suspension, in the task

    task = eager.spawn(sets_var())
    assert VAR.get() == "caller"  # nothing leaked into the caller's context
    await task
    assert seen == ["inner"]


async def test_cancelling_a_spawned_task_reaches_the_coroutine() -> None:
    log: list[str] = []
    task = eager.spawn(waits(5, log))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["started", "cleaned up"]
