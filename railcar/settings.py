"""Railcar's configuration root: one TOML file plus ``RAILCAR_<SECTION>_<KEY>`` environment variables.

Shape (every section and key optional; defaults shown by ``railcar serve --help``)::

    [server]            host, port, max_body_bytes, grace_period_s, log_level, log_content
    [upstream]          base_url, api_key_env, api_key_file, timeouts, default_headers, ...
    [guardrails]        config_path, mode, input/output/tool_input/tool_output switches, ...
    [guardrails.remote] endpoint, config_id(s), timeout_millis  ([guardrails.policy], [guardrails.inline] too)
    [detection]         fingerprint key, kinds, disabled_detectors
    [telemetry]         enabled, agent identity, queue and spool sizes
    [kafka]             bootstrap_servers, trace_topic, findings_topic, ...
    [fileset]           root, ...

This module is part of the composition root: the only place that knows every room's sections. Each room owns its
sections' dataclasses and their checks (``railcar.sidecar.settings``, ``railcar.rails.settings``,
``railcar.streams.settings``) and reads the root through its own Protocol (``SidecarSettings``, ``RailsSettings``,
``StreamsSettings``); the generic loader is :mod:`railcar.core.config`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from railcar.core import config as _machinery
from railcar.rails.settings import DetectionConfig, GuardrailsConfig
from railcar.sidecar.settings import ServerConfig, UpstreamConfig
from railcar.streams.settings import FilesetConfig, KafkaConfig, TelemetryConfig


@dataclass
class RailcarConfig:
    """All sections, typed: ``cfg.server.port``, ``cfg.guardrails.inline.action``, ... A section not given is its
    defaults. Satisfies ``SidecarSettings``, ``RailsSettings`` and ``StreamsSettings``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    guardrails: GuardrailsConfig = field(default_factory=GuardrailsConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    fileset: FilesetConfig = field(default_factory=FilesetConfig)

    def validate(self) -> None:
        """Run every section's ``validate()`` (nested tables too); raises one :class:`ConfigError` listing every
        problem (``key: why (RAILCAR_KEY)``, one per line). For a config changed after :func:`load_config`."""
        _machinery.raise_problems(self)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> RailcarConfig:
    """Load ``path`` (TOML; optional; ``RAILCAR_CONFIG`` names it when None) and overlay the ``RAILCAR_*`` variables
    of ``environ`` (default ``os.environ``), then run every section's checks.

    Returns a :class:`RailcarConfig`. Raises :class:`railcar.core.config.ConfigError` for an unreadable or malformed
    file, or with ``errors`` listing every unknown section, key or ``RAILCAR_*`` variable (variables named
    by a ``*_env`` field hold credentials and are allowed), wrongly typed value and failed check.
    """
    return _machinery.load(RailcarConfig, path, environ)


def describe_options() -> str:
    """Every option as ``  section.key = default  [RAILCAR_SECTION_KEY]`` plus its help line: what ``--help`` prints."""
    return _machinery.describe_options(RailcarConfig)


__all__ = ["RailcarConfig", "describe_options", "load_config"]
