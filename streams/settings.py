"""Config sections owned by ``streams/``: ``[telemetry]``, ``[kafka]`` and ``[fileset]``.

Kafka options map onto aiokafka's producer/consumer arguments; TLS and SASL are passed through. Railcar never
uses the Kafka admin API: topics are created by the cluster's operator (see ``../shared/KAFKA.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import ConfigError, opt


@dataclass
class TelemetryConfig:
    """``[telemetry]``: redacted trace events about each model call."""

    enabled: bool = opt(True, "Build redacted trace events for every model call.")
    agent_id: str = opt("", "Agent identity on events; default from POD_NAME / HOSTNAME.")
    agent_namespace: str = opt("", "Kubernetes namespace of the agent; default from POD_NAMESPACE.")
    service_name: str = opt("railcar", "OpenTelemetry service.name of the sidecar.")
    queue_size: int = opt(10000, "Bounded in-memory queue between the request path and the publisher.")
    spool_dir: str = opt("", "Durable spool directory for events the broker could not take; empty: memory only.")
    spool_max_bytes: int = opt(256 * 1024 * 1024, "Spool size cap in bytes; the oldest segments drop first.")
    spool_segment_bytes: int = opt(4 * 1024 * 1024, "Spool segment size in bytes.")

    def validate(self) -> None:
        if self.queue_size <= 0:
            raise ConfigError("telemetry.queue_size: must be > 0")


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
    linger_ms: int = opt(5, "Producer batching delay in ms.")
    max_batch_size: int = opt(1024 * 1024, "Producer batch size in bytes.")
    security_protocol: str = opt("PLAINTEXT", "Kafka security protocol.",
                                 choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    sasl_mechanism: str = opt("", "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER).")
    sasl_username: str = opt("", "SASL user name.")
    sasl_password_env: str = opt("RAILCAR_KAFKA_SASL_PASSWORD", "Variable holding the SASL password.")
    ssl_cafile: str = opt("", "CA bundle for TLS.")
    ssl_certfile: str = opt("", "Client certificate for mutual TLS.")
    ssl_keyfile: str = opt("", "Client key for mutual TLS.")


@dataclass
class FilesetConfig:
    """``[fileset]``: where the security fileset ``nemo-agent-security/`` is written."""

    root: str = opt("./railcar-fileset", "Directory (or s3://bucket/prefix) holding nemo-agent-security/.")
    s3_endpoint_url: str = opt("", "S3-compatible endpoint for an s3:// root (e.g. MinIO).")
