"""The one place the findings pipeline is wired from the config: the catalog scanner (``[detection]``), the deep
tier (``detection.deep``, :class:`railcar.streams.deep.DeepScanner`), the fileset (``[fileset]``) and the
:class:`railcar.streams.processor.SecurityProcessor` over them.

``railcar consume`` (:class:`railcar.streams.consumer.ConsumerGroupWorker`), the embedded default
(:class:`railcar.streams.embedded.EmbeddedPipeline`), ``railcar scan`` and ``railcar demo`` build them here, so
the four cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry

from railcar.rails.scanner import Scanner, scanner_from_config
from railcar.streams.deep import DeepScanner
from railcar.streams.fileset import Fileset, LocalFileset, open_fileset
from railcar.streams.processor import SecurityProcessor, consumer_metrics
from railcar.streams.settings import StreamsSettings

__all__ = ["KEY_FILE", "build_deep", "build_processor", "build_scanner", "configured_fileset"]

KEY_FILE = ".fingerprint-key"


def configured_fileset(config: StreamsSettings, root: str = "") -> Fileset:
    """The fileset at ``root`` (default ``[fileset] root``) with ``[fileset] s3_endpoint_url``. Raises
    :class:`railcar.streams.fileset.FilesetError` naming ``fileset.root`` when it is unusable."""
    return open_fileset(root or config.fileset.root, config.fileset.s3_endpoint_url)


def build_scanner(config: StreamsSettings, *, key_store: Fileset | None = None,
                  kinds: Iterable[str] | None = None) -> Scanner:
    """The catalog scanner of ``[detection]`` (kinds, disabled detectors, fingerprint key); ``kinds`` overrides
    ``detection.kinds``.

    With ``key_store`` (``railcar scan``) and no key configured, the key is read from (or, the first time, created
    as 32 random bytes in hex in) ``<key_store>/nemo-agent-security/.fingerprint-key`` (0600) when it is a local
    fileset, so re-runs give the same finding ids; otherwise an unset key is a random per-process key. Raises
    ``ValueError`` naming ``detection.disabled_detectors`` or ``detection.fingerprint_key_file``, ``OSError`` when
    the key file cannot be written."""
    scanner = scanner_from_config(config.detection, kinds=kinds)
    if scanner.ephemeral_key and isinstance(key_store, LocalFileset):
        scanner = Scanner(scanner.detectors, _stored_key(key_store))
    return scanner


def _stored_key(fileset: LocalFileset) -> bytes:
    path = fileset.dir / KEY_FILE
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(os.urandom(32).hex().encode())
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_bytes().strip()


def build_deep(config: StreamsSettings, scanner: Scanner, deep: bool | None = None) -> DeepScanner | None:
    """The deep tier when ``deep`` (default: ``detection.deep``) is true and the scanner looks for secrets, else
    None. It fingerprints with ``scanner``'s key, so both tiers' findings share fingerprints and ids. Compiling its
    rules takes a few seconds the first time on a host (then cached by the library); ``railcar scan --deep`` passes
    ``deep=True``."""
    on = config.detection.deep if deep is None else deep
    if not on or not any(d.kind == "secret" for d in scanner.detectors):
        return None
    return DeepScanner(scanner.key)


def build_processor(config: StreamsSettings, *, writer_id: str, scanner: Scanner | None = None,
                    registry: CollectorRegistry = REGISTRY, deep: bool | None = None) -> SecurityProcessor:
    """A :class:`~railcar.streams.processor.SecurityProcessor` writing the configured fileset as ``writer_id``
    (its state restored from that writer's file), scanning with ``scanner`` (default: :func:`build_scanner`) and
    the deep tier of :func:`build_deep` (``deep``: default ``detection.deep``), its metrics in ``registry``. Raises
    what :func:`build_scanner` and :func:`configured_fileset` raise."""
    if scanner is None:
        scanner = build_scanner(config)
    return SecurityProcessor(scanner, configured_fileset(config), writer_id, metrics=consumer_metrics(registry),
                             deep=build_deep(config, scanner, deep),
                             max_locations=config.detection.max_locations_per_finding)
