"""railcar.sidecar.metrics: GET /metrics exposes the sidecar's families and the process-wide registry's, each once."""

from __future__ import annotations

import asyncio

import aiohttp
from kafka_support import mock_cluster  # noqa: F401  (fixture)
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from railcar.sidecar.metrics import Metrics
from railcar.tools.replay_upstream import ReplayUpstream


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


async def test_running_sidecar_exposes_publisher_and_rails_metrics(mock_cluster, tmp_path, railcar_process) -> None:
    mock_cluster.create_topic("otlp_spans", 2)
    async with ReplayUpstream(synthetic=True, tokens=4) as up:
        serve = railcar_process("serve", {"RAILCAR_UPSTREAM_BASE_URL": up.base_url,
                                          "RAILCAR_KAFKA_BOOTSTRAP_SERVERS": mock_cluster.bootstrap,
                                          "RAILCAR_FILESET_ROOT": str(tmp_path / "fs")})
        base = serve.base
        try:
            async with aiohttp.ClientSession() as http:
                await serve.wait_ready(http)
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
            serve.stop()  # before the upstream closes
    names = _type_lines(text)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    fams = set(_families(text))
    assert {"railcar_requests", "railcar_inflight_streams"} <= fams  # the sidecar's own
    assert {"railcar_publisher_queue_depth", "railcar_publisher_spool_bytes", "railcar_publisher_events_published",
            "railcar_publisher_events_dropped", "railcar_publisher_events_replayed"} <= fams
    assert {"railcar_rail_checks", "railcar_rail_check_seconds"} <= fams
    assert "railcar_publisher_events_published_total 1.0" in text
