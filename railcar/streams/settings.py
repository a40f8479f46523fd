"""Config sections owned by ``streams/``: ``[telemetry]``, ``[kafka]`` and ``[fileset]``.

Kafka options map onto aiokafka's producer/consumer arguments; TLS and SASL are passed through. Railcar never
uses the Kafka admin API: topics are created by the cluster's operator (see ``../shared/KAFKA.md``). Every
``validate()`` runs at load time (:func:`railcar.settings.load_config`) and returns its problems.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from railcar.core.config import ConfigError, Problem, opt
from railcar.rails.settings import DetectionConfig, GuardrailsConfig


@dataclass
class TelemetryConfig:
    """``[telemetry]``: redacted trace events about each model call."""

    enabled: bool = opt(True, "Build redacted trace events for every model call.")
    agent_id: str = opt("", "Agent identity on events; default from POD_NAME / HOSTNAME.")
    agent_namespace: str = opt("", "Kubernetes namespace of the agent; default from POD_NAMESPACE.")
    service_name: str = opt("railcar", "OpenTelemetry service.name of the sidecar.")
    queue_size: int = opt(10000, "Bounded in-memory queue between the request path and the publisher.", bound=">0")
    spool_dir: str = opt("", "Durable spool directory for events the broker could not take; empty: memory only.")
    spool_max_bytes: int = opt(256 * 1024 * 1024, "Spool size cap in bytes; the oldest segments drop first.", bound=">0")
    spool_segment_bytes: int = opt(4 * 1024 * 1024, "Spool segment size in bytes.", bound=">0")

    def validate(self) -> list[Problem]:
        """Problems: ``spool_segment_bytes`` larger than ``spool_max_bytes`` (a segment must fit under the cap); the
        sizes' bounds are the fields' ``bound``."""
        out = []
        if 0 < self.spool_max_bytes < self.spool_segment_bytes:
            out.append(Problem("telemetry.spool_segment_bytes",
                               f"{self.spool_segment_bytes} is larger than telemetry.spool_max_bytes "
                               f"({self.spool_max_bytes})"))
        return out


@dataclass
class KafkaConfig:
    """``[kafka]``: the cluster the sidecar publishes to and the consumer group reads from."""

    bootstrap_servers: str = opt("", "host:port[,host:port]; empty: embedded default (in-process consumer).")
    trace_topic: str = opt("otlp_spans", "Topic of redacted OTLP trace events (TracesData protobuf, key trace id).")
    findings_topic: str = opt("railcar.findings", "Topic of findings (JSON, key finding id) for alerting.")
    dead_letter_topic: str = opt("railcar.dlq", "Topic for undecodable records, with the reason in a header.")
    group_id: str = opt("railcar-security", "Consumer group of `railcar consume`.")
    client_id: str = opt("railcar", "Kafka client id.")
    acks: str = opt("all", "Producer acks.", choices=("all", "1", "0"))
    enable_idempotence: bool = opt(True, "Idempotent producer.")
    compression_type: str = opt("zstd", "Producer compression.", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    linger_ms: int = opt(5, "Producer batching delay in ms.", bound=">=0")
    max_batch_size: int = opt(1024 * 1024, "Producer batch size in bytes.", bound=">0")
    max_request_size: int = opt(1024 * 1024, "Largest record the producer sends, in bytes (aiokafka "
                                "max_request_size; keep <= the broker's message.max.bytes). Larger trace events "
                                "are dropped and counted.", bound=">0")
    request_timeout_ms: int = opt(5000, "Producer request timeout in ms; past it, unsent events go to the spool.", bound=">0")
    retry_backoff_ms: int = opt(200, "Wait between reconnect/replay attempts while the broker is unreachable.", bound=">0")
    security_protocol: str = opt("PLAINTEXT", "Kafka security protocol.",
                                 choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = opt("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER).")
    sasl_username: str = opt("", "SASL user name.")
    sasl_password_env: str = opt("RAILCAR_KAFKA_SASL_PASSWORD", "Variable holding the SASL password.")
    ssl_cafile: str = opt("", "CA bundle for TLS.")
    ssl_certfile: str = opt("", "Client certificate for mutual TLS.")
    ssl_keyfile: str = opt("", "Client key for mutual TLS.")

    def validate(self) -> list[Problem]:
        """Problems: ``acks`` not ``all`` with idempotence, ``max_request_size`` < 65536, a SASL ``security_protocol`` without ``sasl_mechanism``."""
        out = []
        if self.enable_idempotence and self.acks != "all":
            out.append(Problem("kafka.acks", "must be 'all' when kafka.enable_idempotence is true"))
        if 0 < self.max_request_size < 64 * 1024:
            out.append(Problem("kafka.max_request_size", "must be >= 65536 (a trace event needs room)"))
        if self.security_protocol.startswith("SASL") and not self.sasl_mechanism:
            out.append(Problem("kafka.sasl_mechanism", f"required with security_protocol {self.security_protocol}"))
        return out

    def client_options(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """aiokafka connection keyword arguments (bootstrap, client id, TLS, SASL) shared by producer and consumer.

        The SASL password is read from the variable named by ``sasl_password_env`` in ``environ`` (default
        ``os.environ``); TLS uses ``aiokafka.helpers.create_ssl_context`` with the configured files. Raises
        :class:`ConfigError` for a SASL protocol without a mechanism (a section built without the loader).
        """
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers, "client_id": self.client_id,
                              "security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context  # aiokafka only when a client starts, not at load

            kw["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile or None,
                                                   certfile=self.ssl_certfile or None,
                                                   keyfile=self.ssl_keyfile or None)
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism:
                raise ConfigError("kafka.sasl_mechanism: required with a SASL security_protocol")
            kw.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username or None,
                      sasl_plain_password=env.get(self.sasl_password_env) or None)
        return kw


@dataclass
class FilesetConfig:
    """``[fileset]``: where the security fileset ``nemo-agent-security/`` is written."""

    root: str = opt("./railcar-fileset", "Directory (or s3://bucket/prefix) holding nemo-agent-security/.")
    s3_endpoint_url: str = opt("", "S3-compatible endpoint for an s3:// root (e.g. MinIO).")

    def validate(self) -> list[Problem]:
        """Problems: ``root`` empty, or ``s3://`` without a bucket."""
        if not self.root:
            return [Problem("fileset.root", "must not be empty")]
        if self.root.startswith("s3://") and not self.root[5:].partition("/")[0]:
            return [Problem("fileset.root", f"{self.root!r} has no bucket")]
        return []


class StreamsSettings(Protocol):
    """The sections ``streams`` reads from the root config (:class:`railcar.settings.RailcarConfig` has them):
    its own, plus ``detection`` (the catalog's key and switches) and ``guardrails`` (whether rails guard the
    agent, for the guardrails suggestion)."""

    telemetry: TelemetryConfig
    kafka: KafkaConfig
    fileset: FilesetConfig
    detection: DetectionConfig
    guardrails: GuardrailsConfig
