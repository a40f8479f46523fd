"""``railcar consume``: one member of the security consumer group, with its HTTP endpoints.

Runs a :class:`railcar.streams.consumer.ConsumerGroupWorker` on ``[kafka] trace_topic`` (group ``[kafka] group_id``)
until SIGINT/SIGTERM and serves :func:`railcar.streams.consumer.health_app` on ``[server] host:port`` (the Helm
chart sets ``0.0.0.0:9464``): ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. A broker that is not reachable
yet is waited for with backoff (a warning per attempt naming ``[kafka] bootstrap_servers``, ``/readyz`` 503
``waiting for kafka``), never an exit. Exit codes: 0 after a clean stop, 1 when the port cannot be bound, 2 when
``[kafka] bootstrap_servers`` is empty (without Kafka, ``railcar serve`` scans in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from railcar.core.config import ConfigError, Problem
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.streams.consumer import ConsumerGroupWorker, health_app

__all__ = ["main", "run_consumer"]

log = logging.getLogger("railcar.consumer")


async def run_consumer(config: RailcarConfig, stop: asyncio.Event | None = None, *, scanner: Scanner | None = None,
                       registry: CollectorRegistry = REGISTRY, **consumer_kwargs: Any) -> ConsumerGroupWorker:
    """Run one group member with its HTTP endpoints on ``[server] host:port`` until ``stop`` is set (or
    SIGINT/SIGTERM when ``stop`` is None); returns the stopped worker. Raises ``OSError`` when the port cannot
    be bound."""
    worker = ConsumerGroupWorker(config, scanner=scanner, registry=registry, **consumer_kwargs)
    runner = web.AppRunner(health_app(worker), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True).start()
    log.info("consumer endpoints on http://%s:%d (/healthz /readyz /metrics)", config.server.host,
             config.server.port)
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    stopper = loop.create_task(stop.wait())
    stopper.add_done_callback(lambda _: worker.stop())
    t0 = time.monotonic()
    try:
        await worker.run()
    finally:
        stopper.cancel()
        await runner.cleanup()
    log.info("consumed %d records in %.1fs, %d dead-lettered", worker.proc.records, time.monotonic() - t0,
             worker.dead_lettered)
    return worker


def main(args: argparse.Namespace, config: RailcarConfig) -> int:
    """``railcar consume``: run one group member until SIGINT/SIGTERM, serving ``/healthz``, ``/readyz`` and
    ``/metrics`` on ``[server] host:port``. Raises :class:`ConfigError` when ``[kafka] bootstrap_servers`` is empty
    (the embedded default runs inside ``railcar serve`` instead: exit 2 from :mod:`railcar.cli`); 1 when the port
    cannot be bound."""
    if not config.kafka.bootstrap_servers:
        raise ConfigError(Problem("kafka.bootstrap_servers", "required for `railcar consume` (without Kafka, "
                                                             "`railcar serve` scans in-process)").text())
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        uvloop.run(run_consumer(config))
    except OSError as exc:
        print(f"railcar consume: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0
