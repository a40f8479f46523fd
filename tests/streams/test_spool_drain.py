"""The spool once drained (issue 14) and its permissions (issue 13): segments fully replayed are deleted — the
newest one too — so ``railcar_publisher_spool_bytes`` falls to 0; files 0600 in a 0700 directory."""

from __future__ import annotations

import asyncio
import os
import stat

from kafka_support import eventually, mock_cluster, publish_first, read_topic  # noqa: F401  (fixture)
from prometheus_client import CollectorRegistry

from railcar.streams.producer import Publisher
from railcar.streams.settings import KafkaConfig, TelemetryConfig
from railcar.streams.spool import Spool


def _recs(a: int, b: int) -> list[tuple[bytes, bytes]]:
    return [(f"k{i}".encode(), f"value-{i}".encode() * 20) for i in range(a, b)]


def _drain(sp: Spool) -> list[tuple[bytes, bytes]]:
    out = []
    while batch := sp.peek(7):
        out += batch
        sp.ack(len(batch))
    return out


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_drained_spool_holds_no_segment_and_new_records_follow(tmp_path) -> None:
    d = tmp_path / "spool"
    sp = Spool(d, segment_bytes=1000)
    for i in range(0, 30, 5):
        sp.append(_recs(i, i + 5))
    assert len(list(d.glob("*.seg"))) > 1 and sp.bytes > 0
    assert _drain(sp) == _recs(0, 30)
    assert sp.bytes == 0 and sp.pending == 0 and not list(d.glob("*.seg"))
    sp.append(_recs(30, 35))  # a new outage after the drain: a new segment, numbered after the old ones
    sp.close()
    again = Spool(d, segment_bytes=1000)  # a restart replays only what was not acknowledged
    assert _drain(again) == _recs(30, 35) and again.bytes == 0


def test_a_drained_spool_left_by_an_older_version_is_cleaned_on_open(tmp_path) -> None:
    d = tmp_path / "spool"
    sp = Spool(d)
    sp.append(_recs(0, 5))
    seg = next(d.glob("*.seg"))
    (d / "cursor").write_text(f"{int(seg.stem)} {seg.stat().st_size}")  # acknowledged to its end, file kept
    sp.close()
    assert Spool(d).bytes == 0 and not list(d.glob("*.seg"))


def test_spool_files_0600_in_a_0700_directory(tmp_path) -> None:
    d = tmp_path / "spool"
    d.mkdir(mode=0o755)
    (d / "00000000000000000001.seg").write_bytes(b"")  # what an older version left, 0644
    os.chmod(d / "00000000000000000001.seg", 0o644)
    old = os.umask(0o022)
    try:
        sp = Spool(d, segment_bytes=100)
        sp.append(_recs(0, 10))
        sp.peek(3)
        sp.ack(3)
    finally:
        os.umask(old)
    assert _mode(d) == 0o700
    files = list(d.iterdir())
    assert any(p.name == "cursor" for p in files) and any(p.suffix == ".seg" for p in files)
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}


async def test_publisher_spool_gauge_falls_to_zero_after_the_outage(mock_cluster, tmp_path) -> None:
    mock_cluster.create_topic("spans", 2)
    k = KafkaConfig(bootstrap_servers=mock_cluster.bootstrap, trace_topic="spans", request_timeout_ms=1000,
                    retry_backoff_ms=100, linger_ms=2)
    reg = CollectorRegistry()
    pub = Publisher(k, TelemetryConfig(spool_dir=str(tmp_path / "spool"), spool_segment_bytes=4096), registry=reg)
    await pub.start()

    def gauge() -> float:
        return reg.get_sample_value("railcar_publisher_spool_bytes") or 0.0

    try:
        await publish_first(pub)
        mock_cluster.broker_down(1)
        for i in range(200):  # over ~2 s: what is queued after the first window stalls goes to the spool
            pub.publish(b"t", f"event {i}".encode() * 10)
            await asyncio.sleep(0.01)
        assert await eventually(lambda: gauge() > 0, 15), pub.stats
        peak = gauge()
        mock_cluster.broker_up(1)
        assert await eventually(lambda: pub.spool.pending == 0 and gauge() == 0, 30), (pub.stats, gauge(), peak)
        assert not list((tmp_path / "spool").glob("*.seg"))
    finally:
        await pub.close()
    assert len(await read_topic(mock_cluster.bootstrap, "spans", 201)) == 201
