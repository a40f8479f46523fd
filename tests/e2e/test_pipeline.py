"""The whole path: openai client -> sidecar (real proxy, recorded upstream) -> recorder -> publisher -> mock
Kafka -> consumer group -> fileset; plus a second Kafka client (confluent-kafka) reading the topic."""

from __future__ import annotations

import asyncio
import random

import openai
import orjson
from confluent_kafka import Consumer
from kafka_support import mock_cluster, read_topic  # noqa: F401  (fixture)
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from planted_corpus import GENERATORS
from prometheus_client import CollectorRegistry

from railcar.rails.masking import fingerprint
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.consumer import ConsumerGroupWorker
from railcar.streams.fileset import open_fileset
from railcar.streams.producer import Publisher
from railcar.streams.recorder import TraceRecorder

PLANT = ["aws_access_key_id", "github_token", "slack_token", "stripe_key", "jwt", "gitlab_token"]


async def test_recorded_traffic_with_planted_secrets(mock_cluster, records, replay_upstream, make_config,
                                                     start_sidecar, tmp_path) -> None:
    mock_cluster.create_topic("otlp_spans", 4)
    cfg = make_config(upstream={"base_url": replay_upstream.base_url},
                      kafka={"bootstrap_servers": mock_cluster.bootstrap, "group_id": "sec-e2e"},
                      fileset={"root": str(tmp_path / "fs")},
                      telemetry={"spool_dir": str(tmp_path / "spool"), "agent_id": "agent-e2e"})
    scanner = Scanner(key=b"e2e-key" * 4)
    pub = Publisher(cfg.kafka, cfg.telemetry, registry=CollectorRegistry())
    rec = TraceRecorder(scanner, pub.publish, otlp.make_resource(agent_id="agent-e2e"))
    await pub.start()
    await rec.start()
    sc = await start_sidecar(cfg, observers=[rec])
    client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="sk-test", max_retries=0)

    rng = random.Random(5)
    chosen = [r for r in records if r.get("status") == 200 and r["request"].get("messages")][:16]
    planted: list[tuple[str, str]] = []
    for i, r in enumerate(chosen):
        det = PLANT[i % len(PLANT)]
        value = GENERATORS[det](rng)
        planted.append((det, value))
        req = r["request"]
        msgs = list(req["messages"]) + [{"role": "user", "content": f"Also, use this credential: {value}"}]
        kwargs = {"model": req["model"], "messages": msgs, "extra_headers": {"x-replay-id": r["id"]}}
        if r["stream"]:
            stream = await client.chat.completions.create(stream=True, **kwargs)
            async for _ in stream:
                pass
        else:
            await client.chat.completions.create(**kwargs)
    await rec.drain()
    await rec.close()
    await pub.close()
    assert pub.stats["published"] == len(chosen)

    kafka_recs = await read_topic(mock_cluster.bootstrap, "otlp_spans", len(chosen))
    assert len(kafka_recs) == len(chosen)
    for r in kafka_recs:
        blob = (r.key or b"") + r.value + b"".join(k.encode() + v for k, v in r.headers)
        for _, value in planted:
            assert value.encode() not in blob

    w = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="e2e", registry=CollectorRegistry())
    task = asyncio.create_task(w.run())
    for _ in range(300):
        if w.proc.records >= len(chosen):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    w.stop()
    await task
    snap = open_fileset(str(tmp_path / "fs")).read_snapshot()
    found = {(f["detector"], f["fingerprint"]) for f in snap["findings"]}
    for det, value in planted:
        assert (det, fingerprint(scanner.key, det, value)) in found, det
    assert all(f["location"]["agent"] == "agent-e2e" for f in snap["findings"])
    assert not any(v.encode() in orjson.dumps(snap) for _, v in planted)

    # A second, independent client (librdkafka through confluent-kafka) reads the topic; values are TracesData.
    def read_with_confluent() -> list[bytes]:
        c = Consumer({"bootstrap.servers": mock_cluster.bootstrap, "group.id": "interop",
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe(["otlp_spans"])
        got: list[bytes] = []
        try:
            for _ in range(100):
                m = c.poll(0.2)
                if m is not None and not m.error():
                    got.append(m.value())
                if len(got) >= len(chosen):
                    break
        finally:
            c.close()
        return got

    values = await asyncio.to_thread(read_with_confluent)
    assert len(values) == len(chosen)
    for v in values:
        td = TracesData.FromString(v)
        span = td.resource_spans[0].scope_spans[0].spans[0]
        assert span.name.startswith("chat ") and len(span.trace_id) == 16
