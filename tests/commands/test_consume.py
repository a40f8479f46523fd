"""railcar.commands.consume: the command's own checks (the group member itself: tests/streams/test_consumer.py)."""

from __future__ import annotations

import os

from railcar import cli


def test_consume_without_kafka_exits_2_naming_the_setting(monkeypatch, capsys) -> None:
    for var in [v for v in os.environ if v.startswith("RAILCAR_")]:
        monkeypatch.delenv(var)
    assert cli.main(["consume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("railcar consume: configuration error: kafka.bootstrap_servers: required")
    assert "RAILCAR_KAFKA_BOOTSTRAP_SERVERS" in err and "railcar serve" in err and len(err.splitlines()) == 1
