"""core/eager.py: eager start of coroutines, a deadline only once they suspend, tasks only for those that wait."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from railcar.core import eager

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


async def _outside_a_task(coro, then=None):
    """Step ``coro`` from a plain loop callback (no current task), as the proxy's guarded tap does; the task that
    goes on with it, or its result."""
    loop = asyncio.get_running_loop()
    out: asyncio.Future = loop.create_future()

    def step() -> None:
        assert asyncio.current_task() is None
        done, value = eager.start(coro, contextvars.copy_context())
        out.set_result((done, value if done else eager.continue_in_task(value, contextvars.copy_context())))

    loop.call_soon(step)
    return await out


async def test_run_bounded_outside_a_task_keeps_its_deadline_and_a_cancel_stays_a_cancel() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    done, task = await _outside_a_task(eager.run_bounded(waits(5.0, log), loop.time() + 0.05))
    assert not done
    with pytest.raises(TimeoutError):  # asyncio.timeout would have refused to run without a task
        await task
    assert log == ["started", "cleaned up"]

    done, task = await _outside_a_task(eager.run_bounded(waits(5.0, []), loop.time() + 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # not turned into the deadline's TimeoutError
        await task
    assert task.cancelled()
