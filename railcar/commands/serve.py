"""``railcar serve``: run the sidecar until SIGTERM/SIGINT.

Lifecycle: uvloop runs the event loop; the HTTP listener starts first (``/healthz`` 200, ``/readyz`` 503; the
server protocol of :mod:`railcar.sidecar.transport`: read timeout, idle cap, OpenAI-shaped rejects), then the guard
is built with ``await railcar.rails.guard.build_guard(config)``, then ``/readyz`` turns 200 and ``/v1/*`` is served.
An unset ``guardrails.config_path`` loads the bundled default rails; only ``guardrails.config_path = "none"`` runs
``railcar.core.guard.PassThrough()`` (``build_guard`` returns ``None``), with a WARNING at start and
:data:`NO_RAILS_WARNING` in ``/readyz``'s body (``SidecarState.warning``). On SIGTERM or SIGINT: ``/readyz`` turns
503, the listening socket closes (no new connections), in-flight requests (streams included) get up to
``server.grace_period_s`` to finish, the rest are cancelled, the upstream session is closed, pending trace events
are flushed to Kafka (or spooled, or handed to the embedded consumer), exit code 0.
Logs go to stderr at ``server.log_level``, never with request or response content.

The start-up heap is frozen (``freeze_heap``, what ``railcar serve`` runs with): once the guard is built, one full
collection, then :func:`gc.freeze` moves every object alive then (NeMo Guardrails, its dependencies, the compiled
catalog: hundreds of thousands) out of the collector's reach. Without it each generation-2 collection walks them
all: measured at c=256, 20 ms/token, pauses of the event loop of 140-580 ms with rails (280 ms bare), 42-65 ms with
the freeze (issue 15 item 2: nothing that can stall the loop). ``railcar_gc_frozen_objects`` on ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

import uvloop

from railcar.core.config import ConfigError, Problem
from railcar.core.guard import Guard, PassThrough
from railcar.rails.guard import RailsGuard, build_guard
from railcar.settings import RailcarConfig
from railcar.sidecar import transport
from railcar.sidecar.app import create_app
from railcar.streams.recording import start_recording

log = logging.getLogger("railcar.sidecar")

__all__ = ["main", "serve", "NO_RAILS_WARNING"]

NO_RAILS_WARNING = ("guardrails.config_path = 'none': no rails run; requests and answers pass unchecked "
                    "(unset it for the bundled default rails)")


async def serve(config: RailcarConfig, stop: asyncio.Event | None = None, *, freeze_heap: bool = False) -> int:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None); returns the exit code (0).
    ``freeze_heap``: freeze the start-up heap before ``/readyz`` turns 200 (module doc; off for callers that
    share their process, such as tests).

    Raises :class:`ConfigError` when ``upstream.base_url`` is empty, the credential file is unreadable or the
    guardrail config's content does not compile (a ``ValueError`` of ``railcar.rails.guard.build_guard``, after
    the listener and the trace recorder are stopped again), and ``OSError`` when the port cannot be bound.
    """
    if not config.upstream.base_url:
        raise ConfigError(Problem("upstream.base_url", "required for `railcar serve`").text())
    app = create_app(config, guard=None)
    state = app["state"]
    runner = await transport.start(app, config.server)
    log.info("listening on http://%s:%d/v1 (upstream %s)", config.server.host, config.server.port,
             state.upstream.host())
    if not config.guardrails.loaded:
        # Fail closed is the default (an unset config_path loads the bundled rails): running without rails was
        # asked for explicitly, and is said at start and on /readyz for as long as it runs.
        state.warning = NO_RAILS_WARNING
        log.warning("%s", NO_RAILS_WARNING)

    # Trace recording: redacted events to Kafka, or to the embedded in-process consumer when no broker is set.
    observer, close_recording = start_recording(config)
    if observer is not None:
        app["observers"].append(observer)

    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        guard_task = asyncio.ensure_future(build_guard(config))
        await asyncio.wait({guard_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if guard_task.done():
            guard = _built_guard(guard_task)
            if freeze_heap:
                gc.collect()  # what start-up left as garbage is not frozen with the rest
                gc.freeze()
            state.guard = guard
            log.info("ready: guard %s", type(state.guard).__name__)
            await stop_task
        else:
            guard_task.cancel()
    finally:
        stop_task.cancel()  # not left pending when the guard failed to build
        state.draining = True
        log.info("stopping: draining in-flight requests for up to %.1fs", config.server.grace_period_s)
        # cleanup(): stop accepting, wait for in-flight handlers up to shutdown_timeout, cancel the rest.
        await runner.cleanup()
        # After the last exchange: flush or spool pending trace events.
        await close_recording()
        log.info("stopped")
    return 0


def _built_guard(task: asyncio.Task[RailsGuard | None]) -> Guard:
    """The guard ``build_guard`` returned (``PassThrough()`` for ``None``). A guardrail config that does not load
    raises :class:`ConfigError` from ``build_guard`` (exit 2, no traceback); any other exception is a bug and keeps
    its traceback."""
    guard = task.result()
    return guard if guard is not None else PassThrough()


def main(args: argparse.Namespace, config: RailcarConfig) -> int:
    """Entry point of ``railcar serve`` (see :mod:`railcar.cli`): returns the process exit code."""
    logging.basicConfig(level=config.server.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Content never reaches logs: aiohttp's access log is off, and NeMo Guardrails (whose INFO/DEBUG records can
    # carry message text and matched patterns) only speaks at WARNING unless `server.log_content` is on.
    if not config.server.log_content:
        logging.getLogger("nemoguardrails").setLevel(max(logging.WARNING, logging.getLogger().level))
    return uvloop.run(serve(config, freeze_heap=True))
