"""A real Kafka-protocol broker for tests, the demo and benchmarks: librdkafka's mock cluster, through ctypes.

The ``confluent-kafka`` wheel bundles ``librdkafka*.so*`` in ``site-packages/confluent_kafka.libs/``; librdkafka
contains a mock cluster (``rdkafka_mock.h``): N in-process brokers listening on loopback ports that implement
Produce, Fetch, Metadata, ListOffsets, the group protocol, InitProducerId. Any Kafka client, aiokafka included,
connects to :attr:`MockCluster.bootstrap`. Limits (``../shared/KAFKA.md``): no admin API, tiny retention (5 MiB
or 100k batches per partition), groups of two or more aiokafka consumers need a test-only SyncGroup delay, and
a member that joins after another was SIGKILLed waits ``session_timeout_ms - 1000`` before the leader election,
which may elect the dead member (then about 2.5 session timeouts): tests shorten the session
(``tests/kafka_support.py``).

Usage::

    with MockCluster(brokers=1) as mc:
        mc.create_topic("otlp_spans", partitions=4)
        producer = AIOKafkaProducer(bootstrap_servers=mc.bootstrap)
        mc.broker_down(1); ...; mc.broker_up(1)

``python -m railcar.tools.mock_broker [--brokers N] [--topic NAME:PARTITIONS ...]`` prints the bootstrap string on
stdout (one line, flushed) and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from collections.abc import Iterable
from ctypes import c_char_p, c_int, c_int16, c_int32, c_size_t, c_void_p

__all__ = ["MockCluster", "MockBrokerError", "load_librdkafka"]

_LIB: ctypes.CDLL | None = None
_LIB_LOCK = threading.Lock()


class MockBrokerError(RuntimeError):
    """librdkafka could not be loaded or a mock-cluster call returned an error code."""


def load_librdkafka() -> ctypes.CDLL:
    """The ``librdkafka`` shared library bundled in the ``confluent-kafka`` wheel, with prototypes declared.

    Raises :class:`MockBrokerError` when the wheel or the library is missing.
    """
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB
        try:
            import confluent_kafka  # noqa: F401  (only to locate the wheel)
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise MockBrokerError("confluent-kafka is not installed; it carries librdkafka") from exc
        site = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
        paths = sorted(glob.glob(os.path.join(site, "confluent_kafka.libs", "librdkafka*.so*")))
        if not paths:
            raise MockBrokerError(f"no librdkafka*.so* under {site}/confluent_kafka.libs")
        lib = ctypes.CDLL(paths[0])
        protos = {
            "rd_kafka_conf_new": (c_void_p, []),
            "rd_kafka_conf_set": (c_int, [c_void_p, c_char_p, c_char_p, c_char_p, c_size_t]),
            "rd_kafka_new": (c_void_p, [c_int, c_void_p, c_char_p, c_size_t]),
            "rd_kafka_destroy": (None, [c_void_p]),
            "rd_kafka_mock_cluster_new": (c_void_p, [c_void_p, c_int]),
            "rd_kafka_mock_cluster_destroy": (None, [c_void_p]),
            "rd_kafka_mock_cluster_bootstraps": (c_char_p, [c_void_p]),
            "rd_kafka_mock_topic_create": (c_int, [c_void_p, c_char_p, c_int, c_int]),
            "rd_kafka_mock_broker_set_down": (c_int, [c_void_p, c_int32]),
            "rd_kafka_mock_broker_set_up": (c_int, [c_void_p, c_int32]),
            "rd_kafka_mock_broker_set_rtt": (c_int, [c_void_p, c_int32, c_int]),
            "rd_kafka_mock_push_request_errors_array": (None, [c_void_p, c_int16, c_size_t, ctypes.POINTER(c_int)]),
            "rd_kafka_mock_partition_set_leader": (c_int, [c_void_p, c_char_p, c_int32, c_int32]),
            "rd_kafka_mock_group_initial_rebalance_delay_ms": (None, [c_void_p, c_int32]),
            "rd_kafka_err2str": (c_char_p, [c_int]),
        }
        for name, (restype, argtypes) in protos.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _LIB = lib
        return lib


class MockCluster:
    """``brokers`` in-process Kafka brokers on loopback (ids ``1..brokers``), started on construction.

    Group joins complete without the default 3 s initial rebalance delay. Use as a context manager or call
    :meth:`close`. All methods raise :class:`MockBrokerError` when librdkafka reports an error.
    """

    # Kafka API keys (https://kafka.apache.org/protocol#protocol_api_keys), for push_request_errors.
    PRODUCE, FETCH, METADATA, OFFSET_COMMIT, JOIN_GROUP, HEARTBEAT, SYNC_GROUP = 0, 1, 3, 8, 11, 12, 14

    def __init__(self, brokers: int = 1) -> None:
        if brokers < 1:
            raise MockBrokerError("brokers: must be >= 1")
        self._lib = load_librdkafka()
        errstr = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The owning handle never talks to anything; keep its own logging quiet.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, 512)
        self._rk = self._lib.rd_kafka_new(0, conf, errstr, 512)
        if not self._rk:
            raise MockBrokerError(f"rd_kafka_new: {errstr.value.decode(errors='replace')}")
        self._mc = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            self._lib.rd_kafka_destroy(self._rk)
            raise MockBrokerError("rd_kafka_mock_cluster_new failed")
        self.brokers = brokers
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._mc, 0)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()

    def _check(self, err: int, what: str) -> None:
        if err:
            raise MockBrokerError(f"{what}: {self._lib.rd_kafka_err2str(err).decode()} ({err})")

    def _need(self) -> None:
        if not self._mc:
            raise MockBrokerError("mock cluster is closed")

    def create_topic(self, topic: str, partitions: int = 4, replication_factor: int = 1) -> None:
        """Create ``topic`` (the admin API does not exist on the mock; auto-creation gives 4 partitions)."""
        self._need()
        self._check(self._lib.rd_kafka_mock_topic_create(self._mc, topic.encode(), partitions, replication_factor),
                    f"create_topic({topic!r})")

    def broker_down(self, broker_id: int = 1) -> None:
        """Take broker ``broker_id`` down: its connections close and new ones are refused until :meth:`broker_up`."""
        self._need()
        self._check(self._lib.rd_kafka_mock_broker_set_down(self._mc, broker_id), f"broker_down({broker_id})")

    def broker_up(self, broker_id: int = 1) -> None:
        """Bring broker ``broker_id`` back."""
        self._need()
        self._check(self._lib.rd_kafka_mock_broker_set_up(self._mc, broker_id), f"broker_up({broker_id})")

    def set_rtt(self, broker_id: int, rtt_ms: int) -> None:
        """Delay every response of broker ``broker_id`` by ``rtt_ms`` milliseconds (a slow broker)."""
        self._need()
        self._check(self._lib.rd_kafka_mock_broker_set_rtt(self._mc, broker_id, rtt_ms), f"set_rtt({broker_id})")

    def push_request_errors(self, api_key: int, errors: Iterable[int]) -> None:
        """The next ``len(errors)`` requests of Kafka API ``api_key`` fail with these Kafka error codes."""
        self._need()
        errs = list(errors)
        arr = (c_int * len(errs))(*errs)
        self._lib.rd_kafka_mock_push_request_errors_array(self._mc, api_key, len(errs), arr)

    def set_partition_leader(self, topic: str, partition: int, broker_id: int) -> None:
        """Move leadership of ``topic``/``partition`` to ``broker_id`` (``broker_down`` alone does not)."""
        self._need()
        self._check(self._lib.rd_kafka_mock_partition_set_leader(self._mc, topic.encode(), partition, broker_id),
                    f"set_partition_leader({topic!r}, {partition})")

    def close(self) -> None:
        """Stop the brokers (idempotent)."""
        if getattr(self, "_mc", None):
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if getattr(self, "_rk", None):
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    """Run a mock cluster in the foreground; prints its bootstrap string, then waits for SIGINT/SIGTERM."""
    import argparse
    import signal

    p = argparse.ArgumentParser(prog="python -m railcar.tools.mock_broker", description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", type=int, default=1)
    p.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]",
                   help="create a topic (default partitions 4); repeatable")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with MockCluster(args.brokers) as mc:
        for spec in args.topic:
            name, _, parts = spec.partition(":")
            mc.create_topic(name, int(parts or 4))
        print(mc.bootstrap, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
