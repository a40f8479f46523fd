"""The findings topic as alerting sees it (issue 14): every record validates against the published JSON Schema and
carries namespace, agent, outcome, locations and a revision; a recurrence is republished with its new count and
location; ``railcar consume`` started with the broker down waits (``/readyz`` 503 naming the servers) and joins
once the broker is up."""

from __future__ import annotations

import asyncio

import aiohttp
import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from kafka_support import eventually, mock_cluster, read_topic  # noqa: F401  (fixture)
from ports import free_port
from prometheus_client import CollectorRegistry

from railcar.commands.consume import run_consumer
from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.sidecar.settings import ServerConfig
from railcar.streams import otlp
from railcar.streams.consumer import ConsumerGroupWorker
from railcar.streams.findings import record_schema
from railcar.streams.recorder import TraceRecorder
from railcar.streams.settings import FilesetConfig, KafkaConfig

GH = "ghp_" + "Zq8vK2mN5pR7tW1yB4cF6hJ9kL3sX0aD2eG5"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"r" * 32)


def _config(bootstrap: str, root, port: int = 0) -> RailcarConfig:
    cfg = RailcarConfig(kafka=KafkaConfig(bootstrap_servers=bootstrap, trace_topic="spans", findings_topic="findings",
                                          dead_letter_topic="dlq", group_id="rec"),
                        fileset=FilesetConfig(root=str(root)))
    if port:
        cfg.server = ServerConfig(host="127.0.0.1", port=port)
    return cfg


def _conversation(rec: TraceRecorder, text: str, *, blocked: bool = False) -> tuple[bytes, bytes]:
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": text}]})
    ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": "ok"}}]})
    if blocked:
        ex.outcome.block("content safety check output")
    return rec.build(ex)


async def _produce(bootstrap: str, records) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for k, v in records:
            await p.send("spans", v, key=k)
        await p.flush()
    finally:
        await p.stop()


async def test_records_validate_and_a_recurrence_is_republished(mock_cluster, tmp_path, scanner) -> None:
    mock_cluster.create_topic("spans", 2)
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-r", agent_namespace="payments"))
    w = ConsumerGroupWorker(_config(mock_cluster.bootstrap, tmp_path), scanner=scanner, writer_id="w",
                            registry=CollectorRegistry())
    task = asyncio.create_task(w.run())
    try:
        await _produce(mock_cluster.bootstrap, [_conversation(rec, f"first conversation: {GH}"),
                                                _conversation(rec, f"blocked one {GH[:-4]}BBBB", blocked=True)])
        assert await eventually(lambda: w.published >= 2, 30), w.published
        # the same key leaks again in another conversation: the finding is republished as revision 2
        await _produce(mock_cluster.bootstrap, [_conversation(rec, f"second conversation: {GH}")])
        assert await eventually(lambda: w.published >= 3, 30), w.published
    finally:
        w.stop()
        await task
    records = await read_topic(mock_cluster.bootstrap, "findings", 3)
    validator = jsonschema.Draft202012Validator(record_schema())
    for r in records:
        validator.validate(orjson.loads(r.value))
    recs = [orjson.loads(r.value) for r in records]
    assert len(recs) == 3 and len({(x["id"], x["revision"]) for x in recs}) == 3
    leaked = sorted((x for x in recs if x["outcome"] == "redacted"), key=lambda x: x["revision"])
    assert [(x["revision"], x["count"], x["location_count"]) for x in leaked] == [(1, 1, 1), (2, 2, 2)]
    assert leaked[0]["id"] == leaked[1]["id"] and leaked[1]["locations"][0] == leaked[0]["locations"][0]
    assert leaked[1]["locations"][1]["trace_id"] != leaked[1]["locations"][0]["trace_id"]
    [blocked] = [x for x in recs if x["outcome"] == "blocked"]
    for x in recs:
        assert (x["namespace"], x["agent"], x["schema_version"]) == ("payments", "agent-r", 1)
        assert x["location"]["namespace"] == "payments" and x["source"] == "catalog"
    assert blocked["locations"][0]["outcome"] == "blocked"
    assert {dict(r.headers)["railcar.finding.revision"] for r in records} == {b"1", b"2"}
    assert not any(GH[:-4].encode() in r.value for r in records)
    assert w.agg.pending() == []


async def test_consume_waits_for_a_broker_that_is_down(mock_cluster, tmp_path, scanner, caplog) -> None:
    mock_cluster.create_topic("spans", 1)
    mock_cluster.broker_down(1)
    port = free_port()
    cfg = _config(mock_cluster.bootstrap, tmp_path, port)
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(cfg, stop, scanner=scanner, registry=CollectorRegistry()))
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as http:
        async def readyz() -> tuple[int, dict]:
            try:
                async with http.get(url) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                return 0, {}

        seen: list[tuple[int, dict]] = []

        async def waiting() -> bool:
            seen.append(await readyz())
            return seen[-1][1].get("status") == "waiting for kafka"

        for _ in range(200):
            if await waiting():
                break
            await asyncio.sleep(0.05)
        code, body = seen[-1]
        assert not task.done() and code == 503, seen[-3:]
        assert body["status"] == "waiting for kafka" and body["bootstrap_servers"] == mock_cluster.bootstrap
        assert any(mock_cluster.bootstrap in r.getMessage() and "retrying" in r.getMessage()
                   for r in caplog.records)
        mock_cluster.broker_up(1)
        for _ in range(600):
            code, body = await readyz()
            if code == 200:
                break
            assert not task.done()
            await asyncio.sleep(0.05)
        assert code == 200 and body["status"] == "ready"
    stop.set()
    worker = await asyncio.wait_for(task, 30)
    assert not worker.waiting
