"""Benchmark: streaming output rails through Railcar vs pass-through vs the ``nemoguardrails server`` as a peer.

One run, one upstream (``python -m sidecar.replay_upstream --synthetic``: N one-token deltas per stream, optional
per-token delay), each contender a separate process on loopback:

- ``passthrough``: ``railcar serve`` with no guardrail config;
- ``railcar sf=true`` / ``railcar sf=false``: ``railcar serve`` with the regex output rails of
  ``rails/default_config`` (chunk 200 / context 50), ``stream_first`` true and false;
- ``nemoguardrails server``: the same regex output rails, streaming enabled, its main model = the same upstream.

Figures: streams/s and tokens/s at the given concurrency, TTFT p50/p99 (ms), each also as a ratio to passthrough
measured in the same run. The contenders run in ``--rounds`` interleaved rounds whose results are pooled (the machine
is shared: a burst of other load then hits every contender alike). Railcar's trace recording is off unless
``--telemetry`` (it costs every Railcar contender the same and is not what this compares).
Usage: ``.venv/bin/python bench/rails.py [--concurrency 32] [--requests 512] [--tokens 256] [--delay-ms 0]
[--rounds 4] [--telemetry] [--out .notes/rails.md]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited: {proc.args}")
            time.sleep(0.2)
    raise RuntimeError(f"port {port} not up")


async def wait_ready(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < end:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


async def load(url: str, body: dict, concurrency: int, requests: int, headers: dict) -> dict:
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
                        if line.startswith(b"data: {") and b'"content"' in line:
                            if first is None:
                                first = time.perf_counter() - t0
                            tokens += 1
                ttfts.append(first if first is not None else time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        wall = time.perf_counter() - t0
    return summarize({"requests": requests, "tokens": tokens, "wall": wall, "ttfts": ttfts})


def summarize(raw: dict) -> dict:
    """Figures of one or several pooled runs: streams/s and tokens/s over the summed wall time, TTFT p50/p99 ms."""
    q = statistics.quantiles(raw["ttfts"], n=100)
    return {"streams_s": raw["requests"] / raw["wall"], "tokens_s": raw["tokens"] / raw["wall"],
            "ttft_p50": q[49] * 1000, "ttft_p99": q[98] * 1000, "raw": raw}


def pool(runs: list[dict]) -> dict:
    raws = [r["raw"] for r in runs]
    return summarize({"requests": sum(r["requests"] for r in raws), "tokens": sum(r["tokens"] for r in raws),
                      "wall": sum(r["wall"] for r in raws), "ttfts": [t for r in raws for t in r["ttfts"]]})


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--out", default=str(ROOT / ".notes" / "rails.md"))
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the requests are split into")
    ap.add_argument("--telemetry", action="store_true", help="keep Railcar's trace recording on (default off)")
    args = ap.parse_args()
    procs: list[subprocess.Popen] = []
    tmp = Path(tempfile.mkdtemp(prefix="railcar-bench-"))
    # NEMO_GUARDRAILS_NO_USAGE_STATS: nemoguardrails would otherwise post usage reports off-host (loopback only here).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "sk-bench", "NEMO_GUARDRAILS_NO_USAGE_STATS": "1"}
    try:
        up_port = free_port()
        procs.append(subprocess.Popen([PY, "-m", "sidecar.replay_upstream", "--port", str(up_port), "--synthetic",
                                       "--tokens", str(args.tokens), "--delay-ms", str(args.delay_ms)],
                                      cwd=ROOT, stdout=subprocess.DEVNULL, env=env))
        wait_port(up_port, procs[-1])
        upstream = f"http://127.0.0.1:{up_port}/v1"
        default = yaml.safe_load((ROOT / "rails" / "default_config" / "config.yml").read_text())
        contenders: list[tuple[str, str, dict]] = []

        def railcar(name: str, config_path: str | None) -> None:
            port = free_port()
            # Trace recording off unless --telemetry: the figures are about the proxy and its rails (the recorder
            # costs the same in every Railcar contender); the fileset goes to the temp dir, never the checkout.
            e = {**env, "RAILCAR_UPSTREAM_BASE_URL": upstream, "RAILCAR_SERVER_PORT": str(port),
                 "RAILCAR_SERVER_LOG_LEVEL": "warning", "RAILCAR_TELEMETRY_ENABLED": str(args.telemetry).lower(),
                 "RAILCAR_FILESET_ROOT": str(tmp / "fileset")}
            if config_path:
                e["RAILCAR_GUARDRAILS_CONFIG_PATH"] = config_path
            procs.append(subprocess.Popen([str(BIN / "railcar"), "serve"], cwd=ROOT, env=e,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            contenders.append((name, f"http://127.0.0.1:{port}", {}))

        railcar("passthrough", None)
        for sf in (True, False):
            cfg = {"rails": {"config": {"regex_detection": {"output": default["rails"]["config"]["regex_detection"]
                                                            ["output"]}},
                             "output": {"flows": ["regex check output"],
                                        "streaming": {"enabled": True, "chunk_size": 200, "context_size": 50,
                                                      "stream_first": sf}}}}
            path = tmp / f"sf_{sf}.yml"
            path.write_text(yaml.safe_dump(cfg))
            railcar(f"railcar rails sf={str(sf).lower()}", str(path))
            if sf:
                peer_dir = tmp / "peer" / "regex"
                peer_dir.mkdir(parents=True)
                peer = {"models": [{"type": "main", "engine": "openai", "model": "synthetic-model",
                                    "parameters": {"base_url": upstream, "api_key": "sk-bench"}}], **cfg}
                (peer_dir / "config.yml").write_text(yaml.safe_dump(peer))
                nport = free_port()
                procs.append(subprocess.Popen([str(BIN / "nemoguardrails"), "server", "--config",
                                               str(tmp / "peer"), "--port", str(nport), "--disable-chat-ui",
                                               "--default-config-id", "regex"],
                                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                nemo = ("nemoguardrails server sf=true", f"http://127.0.0.1:{nport}", {})
        contenders.append(nemo)
        for name, base, _ in contenders:
            if name.startswith("nemo"):
                wait_port(int(base.rsplit(":", 1)[1]), procs[-1])
            else:
                await wait_ready(base + "/readyz")
        body = {"model": "synthetic-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        hdr = {"x-synthetic-tokens": str(args.tokens)}

        def body_for(name: str) -> dict:
            return {**body, "guardrails": {"config_id": "regex"}} if name.startswith("nemo") else body

        for name, base, _ in contenders:
            await load(base + "/v1/chat/completions", body_for(name), 4, 8, hdr)  # warm
        # The machine is shared: run the contenders in interleaved rounds and pool them, so a burst of someone
        # else's load hits every contender alike instead of one of them.
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
        per_round = max(args.concurrency, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, base, _ in contenders:
                n = per_round if not name.startswith("nemo") else max(args.concurrency, per_round // 4)
                runs[name].append(await load(base + "/v1/chat/completions", body_for(name), args.concurrency, n,
                                             hdr))
        results = {name: pool(rs) for name, rs in runs.items()}
        for name, r in results.items():
            print(name, {k: round(v, 1) for k, v in r.items() if k != "raw"}, flush=True)
        base = results["passthrough"]
        lines = [f"Concurrency {args.concurrency}, {args.requests} streams per Railcar contender (a quarter of that "
                 f"for the nemoguardrails server) in {args.rounds} interleaved rounds, {args.tokens} one-token deltas each, "
                 f"{args.delay_ms} ms per token, 2 shared cores, Railcar trace recording "
                 f"{'on' if args.telemetry else 'off'}; ratios vs passthrough in the same run.", "",
                 "| contender | streams/s | tokens/s | vs passthrough | TTFT p50 ms | TTFT p99 ms |",
                 "|---|---:|---:|---:|---:|---:|"]
        for name, r in results.items():
            lines.append(f"| {name} | {r['streams_s']:.1f} | {r['tokens_s']:.0f} | "
                         f"{r['tokens_s'] / base['tokens_s']:.2f} | {r['ttft_p50']:.1f} | {r['ttft_p99']:.1f} |")
        peer = results.get("nemoguardrails server sf=true")
        if peer:
            lines += ["", f"Railcar sf=true vs nemoguardrails server: "
                          f"{results['railcar rails sf=true']['tokens_s'] / peer['tokens_s']:.1f}x tokens/s"]
        text = "\n".join(lines) + "\n"
        print(text)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        old = out.read_text() if out.exists() else ""
        if start in old and end in old:  # replace only the table section of the notes
            text = old[:old.index(start) + len(start)] + "\n" + text + old[old.index(end):]
        out.write_text(text)
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
