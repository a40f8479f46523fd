"""sidecar.metrics: GET /metrics exposes the sidecar's families and the process-wide registry's, each once."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from kafka_support import mock_cluster  # noqa: F401  (fixture)
from sidecar.metrics import Metrics
from sidecar.replay_upstream import ReplayUpstream

ROOT = Path(__file__).resolve().parents[1]


def _families(text: str) -> list[str]:
    return [f.name for f in text_string_to_metric_families(text)]


def _type_lines(text: str) -> list[str]:
    return [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ")]


def test_render_merges_the_shared_registry_without_duplicates() -> None:
    shared = CollectorRegistry()
    Counter("railcar_publisher_events_published", "x", registry=shared).inc(3)
    Counter("railcar_requests", "same name as the sidecar's own", ["route", "status"], registry=shared)
    m = Metrics(shared=shared)
    m.count("chat_completions", 200)
    text = m.render().decode()
    names = _type_lines(text)
    assert len(names) == len(set(names)), names
    assert {"railcar_requests", "railcar_publisher_events_published"} <= set(_families(text))
    # The sidecar's own family wins the name: its sample is there.
    assert 'railcar_requests_total{route="chat_completions",status="200"} 1.0' in text
    assert "railcar_publisher_events_published_total 3.0" in text
    assert "railcar_publisher" not in Metrics(shared=None).render().decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_running_sidecar_exposes_publisher_and_rails_metrics(mock_cluster, tmp_path) -> None:
    mock_cluster.create_topic("otlp_spans", 2)
    port = _free_port()
    async with ReplayUpstream(synthetic=True, tokens=4) as up:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
        env.update(RAILCAR_UPSTREAM_BASE_URL=up.base_url, RAILCAR_SERVER_PORT=str(port),
                   RAILCAR_SERVER_LOG_LEVEL="warning", RAILCAR_KAFKA_BOOTSTRAP_SERVERS=mock_cluster.bootstrap,
                   RAILCAR_FILESET_ROOT=str(tmp_path / "fs"))
        with open(tmp_path / "serve.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve"], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=log)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(400):
                    assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                    try:
                        async with http.get(base + "/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)
                body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(base + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200 and (await r.read()).endswith(b"data: [DONE]\n\n")
                text = ""
                for _ in range(100):  # the event is recorded and published in the background
                    async with http.get(base + "/metrics") as r:
                        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
                        text = await r.text()
                    if "railcar_publisher_events_published_total 1.0" in text:
                        break
                    await asyncio.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(20)
    names = _type_lines(text)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    fams = set(_families(text))
    assert {"railcar_requests", "railcar_inflight_streams"} <= fams  # the sidecar's own
    assert {"railcar_publisher_queue_depth", "railcar_publisher_spool_bytes", "railcar_publisher_events_published",
            "railcar_publisher_events_dropped", "railcar_publisher_events_replayed"} <= fams
    assert {"railcar_rail_checks", "railcar_rail_check_seconds"} <= fams
    assert "railcar_publisher_events_published_total 1.0" in text
