"""Benchmark: streaming output rails through Railcar vs pass-through vs the ``nemoguardrails server`` as a peer.

One run, one upstream (``python -m railcar.tools.replay_upstream --synthetic``: N one-token deltas per stream, optional
per-token delay), each contender a separate process on loopback:

- ``passthrough``: ``railcar serve`` with no guardrail config;
- ``railcar sf=true`` / ``railcar sf=false``: ``railcar serve`` with the regex output rails of
  ``railcar/rails/default_config`` (chunk 200 / context 50), ``stream_first`` true and false;
- ``nemoguardrails server sf=true`` / ``sf=false``: one ``nemoguardrails server`` process with the same regex
  output rails, streaming enabled, its main model = the same upstream (one config id per scenario).

Figures: streams/s and tokens/s at the given concurrency, TTFT p50/p99 (ms), each also as a ratio to passthrough
and to the nemoguardrails server measured in the same run. Then the issue-8 peer table: the nemoguardrails server
(stream_first true and false) vs Railcar (rails + the inline hold-back): TTFT p50/p99 at 5 ms per token (concurrency
``--ttft-concurrency``), tokens/s at ``--concurrency``, and whether an AWS key planted in streamed prose
(``x-synthetic-text`` of :mod:`railcar.tools.replay_upstream`) reached the client whole. The contenders run in
``--rounds`` interleaved rounds whose results are pooled (the machine is shared: a burst of other load then hits
every contender alike). Railcar's trace recording is off unless
``--telemetry`` (it costs every Railcar contender the same and is not what this compares).
Usage: ``.venv/bin/python bench/rails.py [--concurrency 32] [--requests 512] [--tokens 256] [--delay-ms 0]
[--rounds 4] [--telemetry] [--ttft-concurrency 2] [--ttft-requests 24] [--no-peer] [--baseline DIR]
[--out .notes/rails-bench.md]``; about 2 minutes on 2 shared cores (``--baseline``: two more contenders, before/after
in the same interleaved rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml
from common import ROOT, bench_env, free_port, peer_config, stop, wait_http, write_notes

PY = sys.executable
BIN = Path(PY).parent
# An AWS access key id of the catalog's shape (random body: the validators reject documented placeholders such as
# AKIAIOSFODNN7EXAMPLE), planted in prose ~300 characters in, streamed in 4-character deltas (~75 deltas before
# it, so a chunk_size 200 rail has not run when it streams by).
LEAK_KEY = "AKIAQ2VZ7KXJ4MR5TBNW"
LEAK_TEXT = ("Sure. Here is the deployment checklist you asked for, step by step, with the settings we use in "
             "staging. First make sure the bucket policy allows the CI role to read the artifacts, then set the "
             "region to eu-west-1 and point the uploader at the artifacts bucket. The access key for the uploader "
             "is " + LEAK_KEY + " and the secret is stored in the vault under ci/uploader. After that, run the "
             "smoke tests against staging and check the dashboards for errors before you promote the build. "
             + "If anything looks off, roll back with the previous tag and open an incident ticket. " * 8).strip()
# (HTTP header values cannot end in whitespace: the text travels as the x-synthetic-text header.)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Block until 127.0.0.1:``port`` accepts a TCP connection; ``RuntimeError`` when ``proc`` exits first or
    after ``timeout`` seconds (the nemoguardrails server has no readiness route)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited: {proc.args}") from None
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not up")


_EMPTY = re.compile(rb'"content":\s*(?:""|null)')


def has_token(line: bytes) -> bool:
    """An SSE line carrying a non-empty content delta (Railcar and the NeMo server both send OpenAI chunks)."""
    return line.startswith(b"data: {") and b'"content"' in line and not _EMPTY.search(line)


async def load(url: str, body: dict, concurrency: int, requests: int, headers: dict) -> dict:
    """POST ``requests`` streaming ``body`` to ``url``, ``concurrency`` at a time; returns :func:`summarize` of
    the run (TTFT = request sent to the first non-empty content delta). ``AssertionError`` on a non-200."""
    ttfts: list[float] = []
    tokens = 0
    sem = asyncio.Semaphore(concurrency)
    conn = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=conn) as s:
        async def one() -> None:
            nonlocal tokens
            async with sem:
                t0 = time.perf_counter()
                first = None
                async with s.post(url, json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    async for line in r.content:
                        if has_token(line):
                            if first is None:
                                first = time.perf_counter() - t0
                            tokens += 1
                ttfts.append(first if first is not None else time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        wall = time.perf_counter() - t0
    return summarize({"requests": requests, "tokens": tokens, "wall": wall, "ttfts": ttfts})


async def leak_probe(url: str, body: dict, headers: dict) -> dict:
    """One stream of the leak text: did the whole key reach the client, and how did the stream end?"""
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=body, headers=headers) as r:
            raw = await r.read()
    content = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                obj = json.loads(line[6:])
            except ValueError:
                continue
            for c in obj.get("choices") or []:
                content.append(((c or {}).get("delta") or {}).get("content") or "")
    text = "".join(content)
    key = LEAK_KEY.encode()
    if b"[REDACTED:" in raw:
        end = "redacted in place, stream completed"
    elif b"Blocked by" in raw or b"guardrails_violation" in raw:
        end = "error chunk (blocked)"
    else:
        end = "completed"
    # The key arrives split across deltas: look in the joined content, and in the raw bytes for any other shape.
    return {"leaked": LEAK_KEY in text or key in raw, "chars": len(text), "end": end}


def summarize(raw: dict) -> dict:
    """Figures of one or several pooled runs: streams/s and tokens/s over the summed wall time, TTFT p50/p99 ms."""
    q = statistics.quantiles(raw["ttfts"], n=100)
    return {"streams_s": raw["requests"] / raw["wall"], "tokens_s": raw["tokens"] / raw["wall"],
            "ttft_p50": q[49] * 1000, "ttft_p99": q[98] * 1000, "raw": raw}


def pool(runs: list[dict]) -> dict:
    """:func:`summarize` of several :func:`load` results taken together (requests, tokens, wall time summed)."""
    raws = [r["raw"] for r in runs]
    return summarize({"requests": sum(r["requests"] for r in raws), "tokens": sum(r["tokens"] for r in raws),
                      "wall": sum(r["wall"] for r in raws), "ttfts": [t for r in raws for t in r["ttfts"]]})


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / ".notes" / "rails-bench.md"))
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the requests are split into")
    ap.add_argument("--telemetry", action="store_true", help="keep Railcar's trace recording on (default off)")
    ap.add_argument("--ttft-concurrency", type=int, default=2, help="concurrency of the 5 ms/token TTFT runs")
    ap.add_argument("--ttft-requests", type=int, default=24, help="streams per contender in the TTFT runs")
    ap.add_argument("--no-peer", action="store_true", help="throughput table only (skip the issue-8 peer table)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also run the rails contenders from DIR (a copy of an earlier railcar/, put first "
                         "on PYTHONPATH), interleaved with the rest: before/after in one run")
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="railcar-bench-"))
    # bench_env: no inherited RAILCAR_* setting reaches a contender, nemoguardrails' usage reports off (loopback only).
    env = bench_env(HF_HUB_OFFLINE="1", OPENAI_API_KEY="sk-bench")
    t_start = time.perf_counter()
    try:
        up_port = free_port()
        procs.append(subprocess.Popen([PY, "-m", "railcar.tools.replay_upstream", "--port", str(up_port), "--synthetic",
                                       "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms)],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, env=env))
        wait_port(up_port, procs[-1])
        upstream = f"http://127.0.0.1:{up_port}/v1"
        default = yaml.safe_load((ROOT / "railcar" / "rails" / "default_config" / "config.yml").read_text())
        contenders: list[tuple[str, str]] = []

        def railcar(name: str, config_path: str | None, overlay: str | None = None) -> None:
            port = free_port()
            # Trace recording off unless --telemetry: the figures are about the proxy and its rails (the recorder
            # costs the same in every Railcar contender); the fileset goes to the temp dir, never the checkout.
            e = {**env, "RAILCAR_UPSTREAM_BASE_URL": upstream, "RAILCAR_SERVER_PORT": str(port),
                 "RAILCAR_SERVER_LOG_LEVEL": "warning", "RAILCAR_TELEMETRY_ENABLED": str(args.telemetry).lower(),
                 "RAILCAR_FILESET_ROOT": str(tmp / "fileset")}
            if config_path:
                e["RAILCAR_GUARDRAILS_CONFIG_PATH"] = config_path
            if overlay:  # a baseline's packages ahead of the checkout's (the editable install is found last)
                e["PYTHONPATH"] = os.pathsep.join(p for p in (overlay, os.environ.get("PYTHONPATH")) if p)
            procs.append(subprocess.Popen([str(BIN / "railcar"), "serve"], cwd=ROOT, env=e,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            contenders.append((name, f"http://127.0.0.1:{port}"))

        railcar("passthrough", "none")
        # One NeMo server, one config id per (scenario, stream_first): the synthetic text / delay reach the shared
        # upstream as the model's default headers, since the server does not forward client headers upstream.
        scenarios = {"tp": {}, "ttft": {"x-synthetic-delay-ms": "5"},
                     "leak": {"x-synthetic-text": LEAK_TEXT, "x-synthetic-delay-ms": "1"}}
        for sf in (True, False):
            path = tmp / f"sf_{sf}.yml"
            path.write_text(yaml.safe_dump(peer_config(upstream, sf, default)))
            railcar(f"railcar rails sf={str(sf).lower()}", str(path))
            if args.baseline:
                railcar(f"railcar rails sf={str(sf).lower()} (baseline)", str(path), args.baseline)
            for scen, headers in scenarios.items():
                d = tmp / "peer" / f"{scen}_sf_{str(sf).lower()}"
                d.mkdir(parents=True)
                (d / "config.yml").write_text(yaml.safe_dump(peer_config(upstream, sf, default, headers)))
        nport = free_port()
        procs.append(subprocess.Popen([str(BIN / "nemoguardrails"), "server", "--config", str(tmp / "peer"),
                                       "--port", str(nport), "--disable-chat-ui",
                                       "--default-config-id", "tp_sf_true"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        nemo_base = f"http://127.0.0.1:{nport}"
        for sf in ("true", "false"):
            contenders.append((f"nemoguardrails server sf={sf}", nemo_base))
        for name, base in contenders:
            if name.startswith("nemo"):
                wait_port(nport, procs[-1])
            else:
                await wait_http(base + "/readyz", interval=0.2)
        body = {"model": "synthetic-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        hdr = {"x-synthetic-tokens": str(args.tokens)}

        def body_for(name: str, scen: str = "tp") -> dict:
            if name.startswith("nemo"):
                return {**body, "guardrails": {"config_id": f"{scen}_sf_{name.rsplit('=', 1)[1]}"}}
            return body

        for name, base in contenders:
            await load(base + "/v1/chat/completions", body_for(name), 4, 8, hdr)  # warm
        # The machine is shared: run the contenders in interleaved rounds and pool them, so a burst of someone
        # else's load hits every contender alike instead of one of them.
        runs: dict[str, list[dict]] = {name: [] for name, _ in contenders}
        per_round = max(args.concurrency, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, base in contenders:
                n = per_round if not name.startswith("nemo") else max(args.concurrency, per_round // 4)
                runs[name].append(await load(base + "/v1/chat/completions", body_for(name), args.concurrency, n,
                                             hdr))
        results = {name: pool(rs) for name, rs in runs.items()}
        for name, r in results.items():
            print(name, {k: round(v, 1) for k, v in r.items() if k != "raw"}, flush=True)
        base = results["passthrough"]
        peer = results["nemoguardrails server sf=true"]
        lines = ["<!-- bench:start -->",
                 f"## Throughput at concurrency {args.concurrency}", "",
                 f"{args.requests} streams per Railcar contender (a quarter of that for the nemoguardrails server) in "
                 f"{args.rounds} interleaved rounds, {args.tokens} one-token deltas each, {args.delay_ms} ms per "
                 f"token, regex output rails chunk 200 / context 50 everywhere (Railcar: plus the inline hold-back, "
                 f"on by default), 2 shared cores, Railcar trace recording {'on' if args.telemetry else 'off'}; "
                 f"ratios vs passthrough and vs the nemoguardrails server (sf=true) in the same run.", "",
                 "| contender | streams/s | tokens/s | vs passthrough | vs nemoguardrails server | TTFT p50 ms "
                 "| TTFT p99 ms |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in results.items():
            lines.append(f"| {name} | {r['streams_s']:.1f} | {r['tokens_s']:.0f} | "
                         f"{r['tokens_s'] / base['tokens_s']:.2f} | {r['tokens_s'] / peer['tokens_s']:.1f}x | "
                         f"{r['ttft_p50']:.1f} | {r['ttft_p99']:.1f} |")
        if not args.no_peer:
            lines += await peer_table(args, contenders, body_for, results)
        lines += ["", f"Bench wall time {time.perf_counter() - t_start:.0f} s.", "<!-- bench:end -->"]
        text = "\n".join(lines) + "\n"
        print(text)
        # replace only the table section of the notes
        write_notes(args.out, text, section=("<!-- bench:start -->", "<!-- bench:end -->"))
        return 0
    finally:
        stop(procs, 10)


async def peer_table(args: argparse.Namespace, contenders: list[tuple[str, str]], body_for, results: dict) -> list:
    """Issue 8: TTFT at 5 ms per token, tokens/s at the bench concurrency, and the leak probe, per contender."""
    ttft: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    hdr5 = {"x-synthetic-tokens": str(args.tokens), "x-synthetic-delay-ms": "5"}
    half = max(1, args.ttft_requests // 2)
    for _ in range(2):  # two interleaved rounds, as above
        for name, base in contenders:
            ttft[name].append(await load(base + "/v1/chat/completions", body_for(name, "ttft"),
                                         args.ttft_concurrency, half, hdr5))
    leak_hdr = {"x-synthetic-text": LEAK_TEXT, "x-synthetic-delay-ms": "1"}
    leaks = {name: await leak_probe(base + "/v1/chat/completions", body_for(name, "leak"), leak_hdr)
             for name, base in contenders}
    lines = ["", "## Issue 8: streaming without the trade-off (peer: nemoguardrails server, same rails)", "",
             f"TTFT: {args.tokens} one-token deltas at 5 ms per token, concurrency {args.ttft_concurrency}, "
             f"{2 * half} streams per contender (2 interleaved rounds). tokens/s: the concurrency "
             f"{args.concurrency} runs above. Leak probe: one stream of prose ({len(LEAK_TEXT)} chars in 4-char "
             f"deltas, 1 ms apart) with an AWS access key id ~{LEAK_TEXT.index(LEAK_KEY)} chars in; "
             "\"key reached client\" = the whole key is anywhere in the bytes the client received.", "",
             f"| contender | TTFT p50 ms | TTFT p99 ms | tokens/s c={args.concurrency} | key reached client | how the "
             "stream ended | content chars received |",
             "|---|---:|---:|---:|---|---|---:|"]
    for name, _ in contenders:
        t = pool(ttft[name])
        lk = leaks[name]
        label = name if not name.startswith("railcar") else name + " + inline hold-back"
        lines.append(f"| {label} | {t['ttft_p50']:.1f} | {t['ttft_p99']:.1f} | {results[name]['tokens_s']:.0f} | "
                     f"{'**yes**' if lk['leaked'] else 'no'} | {lk['end']} | {lk['chars']} |")
        print(name, "ttft", {k: round(v, 1) for k, v in t.items() if k != "raw"}, lk, flush=True)
    return lines


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
