"""Trace recording for ``railcar serve``: the :class:`railcar.streams.recorder.TraceRecorder` and the sink its
records go to, picked from the config.

With ``[kafka] bootstrap_servers`` set, records go to a :class:`railcar.streams.producer.Publisher`; otherwise to
the embedded in-process consumer (:class:`railcar.streams.embedded.EmbeddedPipeline`) that writes the fileset
locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.embedded import EmbeddedPipeline
from railcar.streams.pipeline import build_scanner
from railcar.streams.producer import Publisher
from railcar.streams.recorder import MAX_CONTENT_BYTES, MAX_SPAN_CONTENT_BYTES, TraceRecorder
from railcar.streams.settings import StreamsSettings

__all__ = ["start_recording", "recorded_kinds"]


async def _noop() -> None:
    return None


def recorded_kinds(config: StreamsSettings) -> list[str]:
    """The detector kinds the recorder redacts: ``[detection] kinds`` plus the kinds the inline hold-back applies
    (``[guardrails.inline] kinds``, when it is on): a value the client received redacted is never published raw."""
    kinds = list(config.detection.kinds)
    if config.guardrails.inline_enabled:
        kinds += [k for k in config.guardrails.inline.kinds if k not in kinds]
    return kinds


def start_recording(config: StreamsSettings,
                    scanner: Scanner | None = None) -> tuple[TraceRecorder | None, Callable[[], Awaitable[None]]]:
    """Wire trace recording: returns ``(observer, close)`` to be called inside the running event loop's startup
    (``close`` on shutdown). ``observer`` is None when ``[telemetry] enabled`` is false. ``scanner``: the
    process's catalog scanner (when None: built from ``[detection]`` with :func:`recorded_kinds`).

    Must be called with a running loop (it starts the sink's background task and the recorder's worker thread,
    which hands each encoded record back to this loop for ``sink.publish``). Raises what
    :func:`railcar.streams.pipeline.build_processor` raises for the embedded sink.
    """
    tel = config.telemetry
    if not tel.enabled:
        return None, _noop
    if scanner is None:
        scanner = build_scanner(config, kinds=recorded_kinds(config))
    resource = otlp.make_resource(tel.service_name, tel.agent_id, tel.agent_namespace)
    sink: Publisher | EmbeddedPipeline
    if config.kafka.bootstrap_servers:
        sink = Publisher(config.kafka, tel)
    else:
        sink = EmbeddedPipeline(config, scanner=scanner)
    # Keep a span's texts to half the largest record Kafka takes: attributes, notes and framing need the rest.
    span_budget = min(MAX_SPAN_CONTENT_BYTES, config.kafka.max_request_size // 2)
    recorder = TraceRecorder(scanner, sink.publish, resource, max_pending=tel.queue_size,
                             max_content_bytes=min(MAX_CONTENT_BYTES, span_budget),
                             max_span_content_bytes=span_budget)
    loop = asyncio.get_running_loop()
    starting = loop.create_task(sink.start())
    loop.create_task(recorder.start())

    async def close() -> None:
        await starting
        await recorder.close()
        await sink.close()

    return recorder, close
