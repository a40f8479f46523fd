"""Start a coroutine at once and pay for a task or a timeout only if it actually has to wait.

Most local rail checks (IORails regex / injection rails awaited without NeMo's work queue, see
:mod:`railcar.rails.engine_local`) never suspend: they run start to finish in one step. Wrapping each of them in
``asyncio.timeout`` (a timer handle per check) or ``asyncio.create_task`` (a task object and a loop round trip per
chunk check) costs more than the check's own bookkeeping. :func:`start` runs a coroutine up to its first suspension
in the caller's task, like Python 3.12's ``asyncio.eager_task_factory`` (asyncio docs, "Eager Task Factory"; this
is Python 3.11); only when it suspends does the caller get something to await or schedule:

- :func:`run_bounded` awaits a coroutine with a deadline that only exists once it suspends (a check that finishes
  without waiting cannot be interrupted by a timeout anyway: cancellation needs an await point);
- :func:`spawn` returns ``None`` for a coroutine that finished eagerly, else an :class:`asyncio.Task` continuing it.

The continuation is a generator-based coroutine that hands every future the inner coroutine yields to the driving
task and passes back whatever the task sends or throws (cancellation included), i.e. exactly what ``await coro``
does (PEP 380 ``yield from`` semantics).
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["start", "run_bounded", "spawn", "continue_in_task"]


def start(coro: Coroutine[Any, Any, Any], context: contextvars.Context | None = None) -> tuple[bool, Any]:
    """Run ``coro`` until it finishes or first suspends: ``(True, result)`` or ``(False, awaitable continuing it)``.
    With ``context`` the first step runs inside it (``Context.run``), as a task's steps do.

    Exceptions raised before the first suspension propagate from here."""
    try:
        yielded = coro.send(None) if context is None else context.run(coro.send, None)
    except StopIteration as stop:
        return True, stop.value
    return False, _resume(coro, yielded)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Continue ``coro`` from its first suspension (it yielded ``yielded``) under whichever task awaits this."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # CancelledError from task.cancel(), etc.: deliver it where coro waits
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def run_bounded(coro: Coroutine[Any, Any, Any], deadline: float) -> Any:
    """``await coro`` with a deadline (loop time, seconds) around the part after its first suspension; raises
    :class:`TimeoutError` past the deadline, or what ``coro`` raises.

    In a task the deadline is ``asyncio.timeout_at``. Outside any task (the proxy may step a stream guard from a
    socket callback, :attr:`railcar.core.guard.Guard.steps_in_callback`; ``asyncio.timeout`` needs a current task)
    it is ``asyncio.wait_for``'s, with the rest of ``coro`` in a task of its own; a ``CancelledError`` out of it is
    that deadline (Python 3.11's ``wait_for`` can raise one when ``coro`` fails at the deadline) and becomes
    :class:`TimeoutError`, unless the task the caller went on in since is being cancelled."""
    done, value = start(coro)
    if done:
        return value
    if asyncio.current_task() is not None:
        async with asyncio.timeout_at(deadline):
            return await value
    try:
        return await asyncio.wait_for(_continue(value), max(0.0, deadline - asyncio.get_running_loop().time()))
    except asyncio.CancelledError:
        task = asyncio.current_task()  # the caller went on in a task since (the proxy's continuation of a step)
        if task is not None and task.cancelling():
            raise  # that task was cancelled: not the deadline
        raise TimeoutError from None


async def _continue(cont: Any) -> Any:
    return await cont


def continue_in_task(cont: Any, context: contextvars.Context) -> asyncio.Task:
    """A task that goes on with ``cont`` (what :func:`start` returned for a coroutine that suspended) in ``context``
    (the one its first step ran in)."""
    return asyncio.get_running_loop().create_task(_continue(cont), context=context)


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task | None:
    """Run ``coro`` eagerly; ``None`` when it finished without suspending (an exception it raised propagates),
    else a task that continues it (await it, cancel it, as with ``asyncio.create_task``).

    Like a task, ``coro`` runs in a copy of the caller's context from its first step on, so context variables it
    sets (an OpenTelemetry span made current, say) never leak into the caller, and the task continues in that
    same copy."""
    ctx = contextvars.copy_context()
    done, value = start(coro, ctx)
    if done:
        return None
    return continue_in_task(value, ctx)
