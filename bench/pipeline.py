"""Kafka pipeline benchmark (issue 5): publishing cost on the proxy, consumer capacity, end-to-end events/s.

Processes, all on this machine: a Kafka-protocol broker (``python -m railcar.tools.mock_broker``, librdkafka's mock
cluster, topic ``otlp_spans`` with 8 partitions), the synthetic upstream (``python -m railcar.tools.replay_upstream
--synthetic``), two ``railcar serve`` sidecars in front of it (publishing **off**: ``telemetry.enabled=false``;
publishing **on**: redacted trace events to the broker), a ``railcar consume`` group member writing the fileset,
and this load generator (uvloop + aiohttp).

1. Proxy throughput, publishing on vs off, in the same run (1b: again with each sidecar pinned alone to one core
   and everything else on the others, ``os.sched_setaffinity``, so the sidecar is CPU-bound): the same requests (concurrency 32, 64-token
   streams, every request a new conversation of three messages, ~1 KB, one in ten carrying a planted AWS key)
   go through each sidecar in alternating rounds. Reported: requests/s, and the sidecar's CPU ms per request
   (``/proc/<pid>/stat``), which is less sensitive than wall time to the other tenants of a shared machine.
   Target: publishing costs <= 10% of proxy throughput.
2. Consumer capacity: ``railcar consume`` starts after the load, facing the backlog of every event published in
   step 1; the time from its first processed record to the last (scraped from its ``/metrics``) and its CPU
   seconds give events/s and events per CPU second. Target: >= 5,000 events/s on one core.
3. End to end: with the consumer caught up, a burst of requests through the publishing sidecar; events/s from
   the burst's first request to the consumer's fileset commit of its last event.

Usage: ``python bench/pipeline.py [--quick] [--out .notes/pipeline-bench.md]``. Prints a markdown table and
writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from common import ROOT, bench_env, cpu_seconds, free_port, run_table, start, stop, wait_http

TOKENS = 64
CONCURRENCY = 32
SYSTEM = ("You are a careful operations assistant for the payments team. Answer briefly, cite the runbook "
          "section you used, and never repeat credentials back to the user. ") * 3


def aws_key(rng: random.Random) -> str:
    """A random AWS access key id shape (``AKIA`` + 16 of [A-Z2-7]); never a real credential."""
    return "AKIA" + "".join(rng.choice(string.ascii_uppercase + "234567") for _ in range(16))


def bodies(n: int, seed: int) -> list[bytes]:
    """``n`` distinct streaming chat requests (new conversation each: distinct trace ids and contents)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(("deploy", "rollback", "ledger", "invoice", "retry", "queue", "shard", "p99",
                                     "incident", "runbook", "latency", "refund")) for _ in range(40))
        user = f"Request {seed}-{i}: {words}."
        if i % 10 == 0:
            user += f" The CI job uses {aws_key(rng)} for the bucket."
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                {"role": "assistant", "content": "Which environment?"}, {"role": "user", "content": "production"}]
        out.append(orjson.dumps({"model": "synthetic-model", "stream": True, "messages": msgs}))
    return out


async def load(session: aiohttp.ClientSession, url: str, reqs: list[bytes]) -> float:
    """Send ``reqs`` at ``CONCURRENCY``; returns the wall seconds. Raises on a bad response."""
    it = iter(reqs)
    headers = {"Content-Type": "application/json", "x-synthetic-tokens": str(TOKENS)}

    async def worker() -> None:
        for body in it:
            async with session.post(url, data=body, headers=headers) as r:
                data = await r.read()
                if r.status != 200 or not data.endswith(b"data: [DONE]\n\n"):
                    raise RuntimeError(f"bad response {r.status}: {data[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.perf_counter() - t0


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Unlabelled samples and ``name{labels}`` keys of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(url) as r:
        text = await r.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


async def wait_records(session: aiohttp.ClientSession, url: str, target: float, proc: subprocess.Popen,
                       timeout: float = 300) -> tuple[float, float]:
    """Poll ``/metrics`` every 20 ms until ``railcar_consumer_records_total >= target``; returns
    ``(time the first record was seen processed, time the target was reached)`` (perf_counter)."""
    first = None
    deadline = time.perf_counter() + timeout
    base = (await scrape(session, url)).get("railcar_consumer_records_total", 0.0)
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"railcar consume exited with {proc.returncode}")
        n = (await scrape(session, url)).get("railcar_consumer_records_total", 0.0)
        now = time.perf_counter()
        if first is None and n > base:
            first = now
        if n >= target:
            return first or now, now
        await asyncio.sleep(0.02)
    raise RuntimeError(f"consumer did not reach {target} records")


async def main_async(args: argparse.Namespace) -> str:
    scale = 0.25 if args.quick else 1.0
    rounds, per_round = 3, int(1000 * scale)
    tmp = Path(tempfile.mkdtemp(prefix="railcar-bench-pipeline-"))
    env = bench_env(RAILCAR_FINGERPRINT_KEY="bench-fingerprint-key-0123456789abcdef")
    procs: list[subprocess.Popen] = []
    try:
        broker = start([sys.executable, "-m", "railcar.tools.mock_broker", "--topic", "otlp_spans:8"], env,
                       tmp / "broker.log")
        procs.append(broker)
        bootstrap = broker.stdout.readline().decode().strip()
        if not bootstrap:
            raise RuntimeError("mock broker did not start")
        up_port, off_port, on_port, c_port = free_port(), free_port(), free_port(), free_port()
        upstream = start([sys.executable, "-m", "railcar.tools.replay_upstream", "--synthetic", "--port", str(up_port),
                          "--tokens", str(TOKENS)], env, tmp / "upstream.log")
        procs.append(upstream)
        common = dict(env, RAILCAR_UPSTREAM_BASE_URL=f"http://127.0.0.1:{up_port}/v1",
                      RAILCAR_SERVER_LOG_LEVEL="warning", RAILCAR_FILESET_ROOT=str(tmp / "fileset"),
                      RAILCAR_GUARDRAILS_CONFIG_PATH="none")
        off = start([sys.executable, "-m", "railcar.cli", "serve"],
                    dict(common, RAILCAR_SERVER_PORT=str(off_port), RAILCAR_TELEMETRY_ENABLED="false"),
                    tmp / "sidecar-off.log")
        on = start([sys.executable, "-m", "railcar.cli", "serve"],
                   dict(common, RAILCAR_SERVER_PORT=str(on_port), RAILCAR_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                        RAILCAR_TELEMETRY_SPOOL_DIR=str(tmp / "spool"), RAILCAR_TELEMETRY_AGENT_ID="bench-agent"),
                   tmp / "sidecar-on.log")
        procs += [off, on]
        await wait_http(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        await wait_http(f"http://127.0.0.1:{off_port}/readyz", off)
        await wait_http(f"http://127.0.0.1:{on_port}/readyz", on)
        urls = {"off": f"http://127.0.0.1:{off_port}/v1/chat/completions",
                "on": f"http://127.0.0.1:{on_port}/v1/chat/completions"}
        pids = {"off": off.pid, "on": on.pid}
        wall = {"off": 0.0, "on": 0.0}
        cpu = {"off": 0.0, "on": 0.0}
        n_req = {"off": 0, "on": 0}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for side in ("off", "on"):  # warm-up: connections, caches, the producer's metadata
                await load(s, urls[side], bodies(CONCURRENCY * 2, seed=999))
            published = CONCURRENCY * 2
            for r in range(rounds):
                reqs = bodies(per_round, seed=r)
                for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    c0 = cpu_seconds(pids[side])
                    wall[side] += await load(s, urls[side], reqs)
                    cpu[side] += cpu_seconds(pids[side]) - c0
                    n_req[side] += len(reqs)
                print(f"round {r + 1}/{rounds} done", file=sys.stderr)
            published += n_req["on"]

            # 1b. CPU-bound: each sidecar alone on core 0, everything else (this load generator, the upstream,
            # the broker) on the other cores, so the sidecar's CPU is the bottleneck and requests/s shows what
            # publishing costs a saturated sidecar.
            bound = {"off": 0.0, "on": 0.0}
            bound_n = {"off": 0, "on": 0}
            cores = sorted(os.sched_getaffinity(0))
            if len(cores) >= 2:
                mine = set(os.sched_getaffinity(0))
                rest = set(cores[1:])
                for pid in (os.getpid(), upstream.pid, broker.pid):
                    os.sched_setaffinity(pid, rest)
                for side in ("off", "on"):
                    os.sched_setaffinity(pids[side], {cores[0]})
                try:
                    for r in range(rounds):
                        reqs = bodies(per_round, seed=200 + r)
                        for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                            bound[side] += await load(s, urls[side], reqs)
                            bound_n[side] += len(reqs)
                finally:
                    for pid in (os.getpid(), upstream.pid, broker.pid, pids["off"], pids["on"]):
                        os.sched_setaffinity(pid, mine)
                published += bound_n["on"]
                print("cpu-bound rounds done", file=sys.stderr)
            await asyncio.sleep(1.0)  # the recorder and producer finish the last events

            # 2. consumer capacity over the backlog
            consume = start([sys.executable, "-m", "railcar.cli", "consume"],
                            dict(env, RAILCAR_KAFKA_BOOTSTRAP_SERVERS=bootstrap, RAILCAR_SERVER_PORT=str(c_port),
                                 RAILCAR_SERVER_LOG_LEVEL="warning", RAILCAR_FILESET_ROOT=str(tmp / "fileset"),
                                 RAILCAR_KAFKA_GROUP_ID="bench"), tmp / "consume.log")
            procs.append(consume)
            murl = f"http://127.0.0.1:{c_port}/metrics"
            await wait_http(f"http://127.0.0.1:{c_port}/healthz", consume)
            c0, t_ready = cpu_seconds(consume.pid), time.perf_counter()
            first, last = await wait_records(s, murl, published, consume)
            c_cpu = cpu_seconds(consume.pid) - c0
            c_wall = last - first if last > first else last - t_ready  # the whole backlog in one poll (--quick)

            # 3. end to end: a burst through the publishing sidecar, consumer running and caught up
            burst = bodies(per_round, seed=100)
            t0 = time.perf_counter()
            await load(s, urls["on"], burst)
            _, t_end = await wait_records(s, murl, published + len(burst), consume)
            e2e = len(burst) / (t_end - t0)
            await asyncio.sleep(1.5)  # the last batch's fileset commit follows its processing
            metrics = await scrape(s, murl)
            snapshot = orjson.loads((tmp / "fileset" / "nemo-agent-security" / "security_snapshot.json").read_bytes())
    finally:
        stop(reversed(procs))
    on_rounds = rounds + 1 + (rounds if bound_n["on"] else 0)  # measured, CPU-bound and burst rounds
    planted = sum(1 for i in range(per_round) if i % 10 == 0) * on_rounds + sum(
        1 for i in range(CONCURRENCY * 2) if i % 10 == 0)
    return render(wall, cpu, n_req, published, c_wall, c_cpu, e2e, len(burst), metrics, snapshot, planted,
                  bound, bound_n)


def render(wall, cpu, n_req, published, c_wall, c_cpu, e2e, burst, metrics, snapshot, planted, bound=None,
           bound_n=None) -> str:
    rps = {k: n_req[k] / wall[k] for k in wall}
    brps = {k: bound_n[k] / bound[k] for k in bound} if bound and bound_n and bound_n["on"] else None
    ms = {k: cpu[k] / n_req[k] * 1000 for k in cpu}
    cost_tp = 1 - rps["on"] / rps["off"]
    cost_cpu = ms["on"] / ms["off"] - 1
    leaked = sum(v for k, v in metrics.items() if k.startswith("railcar_consumer_findings_total"))
    out = [f"Pipeline benchmark: {os.cpu_count()} cores shared by the broker, upstream, two sidecars, the consumer "
           f"and the load generator; {TOKENS}-token streams, concurrency {CONCURRENCY}, ~1 KB requests, each a new "
           "conversation (one in ten with a planted AWS key).", "",
           "| measure | publishing off | publishing on | ratio on/off | target |",
           "|---|---:|---:|---:|---|",
           f"| proxy requests/s | {rps['off']:.1f} | {rps['on']:.1f} | {rps['on'] / rps['off']:.3f} | "
           f"cost <= 10% (measured {cost_tp * 100:.1f}%) |",
           f"| sidecar CPU ms/request | {ms['off']:.2f} | {ms['on']:.2f} | {ms['on'] / ms['off']:.3f} | "
           f"(CPU cost {cost_cpu * 100:.1f}%) |",
           *([f"| proxy requests/s, sidecar CPU-bound (pinned to one core) | {brps['off']:.1f} | {brps['on']:.1f} "
              f"| {brps['on'] / brps['off']:.3f} | cost <= 10% (measured {(1 - brps['on'] / brps['off']) * 100:.1f}%) |"]
             if brps else []),
           "", "| consumer (`railcar consume`, one process) | value | target |", "|---|---:|---|",
           f"| backlog of trace events | {published} | |",
           f"| events/s, first to last record | {published / c_wall:,.0f} | >= 5,000 |",
           f"| events per CPU second | {published / c_cpu:,.0f} | >= 5,000 on one core |",
           f"| end to end events/s (sidecar -> broker -> consumer scanned), burst of {burst} | {e2e:,.0f} | |",
           f"| findings in the fileset / planted AWS keys published | {len(snapshot['findings'])} / {planted} "
           f"({leaked:.0f} on /metrics; by detector {snapshot['counts']['by_detector']}) | |",
           "", "Reading the proxy rows: in this run the sidecars are not the bottleneck (the load generator and the "
           "upstream share the same 2 cores), so requests/s shows that publishing does not slow requests; the CPU "
           "row is what publishing costs the sidecar process (recorder: reassembly, redaction, OTLP encoding; "
           "publisher: aiokafka batching). From the CPU row, a sidecar saturating its CPU would lose about "
           f"{(1 - ms['off'] / ms['on']) * 100:.0f}% of its throughput to publishing; the CPU-bound row measures it.",
           "", "The end-to-end figure is bounded by the proxy (the sidecar serves the burst's requests at the "
           "proxy rate above); the consumer's own capacity is the backlog row."]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a quarter of the requests")
    p.add_argument("--out", default=str(ROOT / ".notes" / "pipeline-bench.md"), help="markdown file for the table")
    args = p.parse_args()
    return run_table(main_async, args, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
