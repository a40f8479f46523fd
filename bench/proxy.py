"""Proxy benchmark (issues 2, 12, 15), measured the way an outside harness measures a sidecar.

Protocol. Every part is its own process. The sidecars (and the peers) are pinned to core 1; the load generator (this
process: uvloop + aiohttp), the synthetic upstream (``python -m railcar.tools.replay_upstream --synthetic``) and the
Kafka broker (``python -m railcar.tools.mock_broker``) to core 0. A contender's CPU is its process tree's time on a
CPU (all threads, children summed: :func:`common.cpu_seconds`, per-thread ``schedstat`` in ns, or utime + stime from
``/proc/<pid>/stat`` when that is more), read before a run and again once the process has gone quiet after it (work
deferred past the last byte, such as trace recording or the embedded consumer's scan, is the contender's too); its
peak RSS is ``VmHWM`` of ``/proc/<pid>/status`` (reset before the c=256 point with ``/proc/<pid>/clear_refs``, so
"RSS c=256" is that point's peak). Streams are 256 one-token deltas; TTFT is request sent to the first chunk
carrying a token (its text, not a ``*_tokens`` usage field), at the load generator. The contenders run point by
point in turn (every contender runs a point before the next point), so a burst of other load on the shared machine
hits them alike.

Contenders (each a ``railcar serve`` unless named otherwise):

- ``direct``: the load generator straight to the upstream (the baseline "added" figures subtract);
- ``floor: TCP pipe`` (``bench/floor_pipe.py``): a uvloop byte pipe pinned like the sidecars, no HTTP at all: what
  one upstream read and one client write cost on this machine, printed beside the per-delta targets;
- ``bare``: no rails, trace recording off;
- ``rails``: the bundled default config (``guardrails.config_path = "default"``: regex input / output rails, the
  inline hold-back on), trace recording off;
- ``rails + recording``: the same plus trace recording published to Kafka (the mock broker);
- ``embedded default``: nothing configured but the upstream and the fileset root: trace recording on, no Kafka, so
  the consumer runs in-process (:mod:`railcar.streams.embedded`);
- peers when installed (``pip install .[bench]``), else skipped with a line saying so: ``nemoguardrails server``
  (stock, and with its logging off) with the same regex output rails (the catalog patterns expanded), streaming;
  the LiteLLM proxy (no rails) in front of the same upstream.

Points: c=1 and c=32 at 0 and 5 ms per token (paced streams' starts staggered over one stream's duration, as
independent agents would start), c=256 at 0 ms (throughput, RSS) and at 20 ms per token (tails: the tail target's
point; at 0 ms the load generator and the upstream saturate their core, and even the floor pipe's TTFT p99 there
is a multiple of the bare sidecar's, so that p99 says more about the queue in front of the sidecar than about
pauses in it). Then, when the upstream and the sidecar speak them,
an OpenAI Responses and an Anthropic Messages stream (issue 12): CPU per stream at c=32 vs the chat codec's; "n/a"
when either side does not. Last, the added TTFT the targets use (c=1, 5 ms per token, every format), paired
(:func:`ttft_rounds`): rounds of one short stream to direct, bare, rails (and the floor) in turn, the median of each
contender's TTFT minus direct's in the same round, so the shared machine's bursts of other load cancel out.

Prints: per contender and point streams/s, tokens/s, TTFT p50/p99, added TTFT p50, CPU ms per stream and µs per
delta; peak RSS per contender; publishing's extra CPU; ratios vs the peers; the issues' targets as met / not met.
Usage: ``python bench/proxy.py [--quick] [--no-peers] [--out .notes/proxy.md]``; ``--quick`` (< 2 minutes) runs
fewer streams per point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from common import (
    ROOT,
    bench_env,
    free_port,
    memory_kb,
    pct,
    peer_config,
    reset_peak_rss,
    run_table,
    start,
    stop,
    tree_cpu_seconds,
    wait_http,
)

from railcar.rails.guardrails_config import expand_catalog_markers

TOKENS = 256
TOKEN = b'tok "'  # the end of a token's JSON string ("tok " per delta), in every format's delta event
FLOOR = "floor: TCP pipe"  # a uvloop byte pipe, no HTTP: the least a Python sidecar can cost per delta
SIDECAR_CPUS, LOAD_CPUS = {1}, {0}
CHAT = b'{"model":"synthetic-model","stream":true,"messages":[{"role":"user","content":"count"}]}'
# Issue 12's formats: the request each API's SDK sends, and the bytes that mark a token event in its stream.
FORMATS = {
    "chat": ("/v1/chat/completions", CHAT, {}),
    "responses": ("/v1/responses", b'{"model":"synthetic-model","stream":true,"input":"count"}', {}),
    "anthropic": ("/v1/messages", b'{"model":"synthetic-model","stream":true,"max_tokens":1024,'
                  b'"messages":[{"role":"user","content":"count"}]}',
                  {"anthropic-version": "2023-06-01", "x-api-key": "sk-bench"}),
}
FORMAT_MARK = {"responses": b"response.output_text.delta", "anthropic": b"content_block_delta"}


@dataclass(frozen=True)
class Point:
    """One load point: ``concurrency`` workers, ``delay_ms`` per token, ``streams`` in all (``peer_streams`` for
    the peers, which are 15-50x slower; 0: the peers skip it), request format ``fmt`` (a key of :data:`FORMATS`)."""

    concurrency: int
    delay_ms: float
    streams: int
    peer_streams: int
    fmt: str = "chat"

    @property
    def label(self) -> str:
        return f"{self.fmt} c={self.concurrency} {self.delay_ms:g} ms/token"


@dataclass
class Run:
    """One contender at one point: per-stream TTFT (s), wall seconds, CPU seconds of the contender (None for
    direct)."""

    streams: int
    seconds: float
    ttft: list[float]
    cpu_s: float | None

    @property
    def cpu_ms_per_stream(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / self.streams * 1000

    @property
    def us_per_delta(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / (self.streams * TOKENS) * 1e6


@dataclass
class Contender:
    """A target: ``base`` URL (``http://host:port``), its process (None for direct), ``peer`` True for the peers
    (their requests select the delay by config, see :func:`request_for`)."""

    name: str
    base: str
    proc: subprocess.Popen | None = None
    peer: str = ""
    runs: dict[Point, Run] = field(default_factory=dict)
    rss_idle_kb: int = 0
    rss_peak_kb: int = 0
    rss_c256_kb: int = 0
    failed: str = ""


def log_name(name: str) -> str:
    """The log file of contender ``name`` (its stderr) in the run's temp directory."""
    return "".join(ch if ch.isalnum() else "_" for ch in name) + ".log"


def request_for(c: Contender, point: Point, tokens: int = TOKENS) -> tuple[str, bytes, dict[str, str]]:
    """``(url, body, headers)`` of one stream of ``point`` to ``c``. Railcar and direct pass the synthetic-upstream
    headers through; the NeMo server does not forward client headers, so its config id (``d0`` / ``d5``) carries the
    delay; the LiteLLM proxy's model name does."""
    path, body, extra = FORMATS[point.fmt]
    delay = f"{point.delay_ms:g}"
    headers = {"Content-Type": "application/json", **extra}
    if c.peer == "nemo":
        body = body[:-1] + b',"guardrails":{"config_id":"d' + delay.encode() + b'"}}'
    elif c.peer == "litellm":
        body = body.replace(b'"synthetic-model"', b'"synthetic-d' + delay.encode() + b'"')
    else:
        headers.update({"x-synthetic-tokens": str(tokens), "x-synthetic-delay-ms": delay})
    return c.base + path, body, headers


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
                     tokens: int = TOKENS) -> float:
    """Send one streamed request; returns its TTFT in seconds: to the first chunk carrying a token (:data:`TOKEN`;
    not ``tok`` alone, which ``input_tokens`` in an Anthropic ``message_start`` and ``max_output_tokens`` in a
    Responses ``response.created`` carry before any token). Raises ``RuntimeError`` on a non-200 or a stream with
    fewer than ``tokens`` tokens."""
    t0 = time.perf_counter()
    first = None
    chunks = []
    async with session.post(url, data=body, headers=headers) as r:
        while chunk := await r.content.readany():
            if first is None and TOKEN in chunk:
                first = time.perf_counter()
            chunks.append(chunk)
    raw = b"".join(chunks)
    n = raw.count(b"tok") - raw.count(b"tokens")  # "tok " per delta; usage fields hold "..._tokens"
    if r.status != 200 or n < tokens or first is None:
        raise RuntimeError(f"{url}: status {r.status}, {n} tokens: {raw[:200]!r}")
    return first - t0


async def run_point(session: aiohttp.ClientSession, c: Contender, point: Point, total: int) -> Run:
    """``total`` streams of ``point`` to ``c`` from ``point.concurrency`` workers; CPU read before and after the
    contender settles (:func:`settle`)."""
    url, body, headers = request_for(c, point)
    conc = min(point.concurrency, total)
    stagger = TOKENS * point.delay_ms / 1000 / conc if point.delay_ms else 0.0
    ttft: list[float] = []
    remaining = total

    async def worker(i: int) -> None:
        nonlocal remaining
        await asyncio.sleep(i * stagger)
        while remaining > 0:
            remaining -= 1
            ttft.append(await one_stream(session, url, body, headers))

    pid = c.proc.pid if c.proc else None
    cpu0 = tree_cpu_seconds(pid) if pid else None
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    seconds = time.perf_counter() - t0
    cpu = (await settle(pid)) - cpu0 if pid else None
    return Run(total, seconds, ttft, cpu)


TAIL_DELAY_MS = 20  # the c=256 tail point's pace: 12.8k deltas/s in all, within one core for every contender
TTFT_TOKENS = 16  # a TTFT stream: only its first token is timed, so a short one gives many samples per second
TTFT_CONTENDERS = ("direct", "bare", "rails", FLOOR)


async def ttft_rounds(session: aiohttp.ClientSession, contenders: list[Contender], fmt: str,
                      rounds: int) -> dict[str, list[float]]:
    """Added TTFT at c=1, 5 ms/token (issues 12 and 15), paired: ``rounds`` rounds of one :data:`TTFT_TOKENS`-token
    stream of ``fmt`` to each of :data:`TTFT_CONTENDERS` in turn; ``{name: [ms added vs direct in that round]}``.
    A burst of other load on the shared machine lands in one round of every contender, not in one contender's
    streams in a row, and the median of the paired differences leaves it out."""
    chosen = [c for c in contenders if c.name in TTFT_CONTENDERS and not c.failed]
    if fmt != "chat":
        chosen = [c for c in chosen if c.name != FLOOR]  # the floor's numbers are the chat point's
    point = Point(1, 5, rounds, 0, fmt)
    reqs = {c.name: request_for(c, point, TTFT_TOKENS) for c in chosen}
    for c in chosen:  # warm: connections and caches
        await one_stream(session, *reqs[c.name], tokens=TTFT_TOKENS)
    added: dict[str, list[float]] = {c.name: [] for c in chosen if c.name != "direct"}
    for _ in range(rounds):
        got = {c.name: await one_stream(session, *reqs[c.name], tokens=TTFT_TOKENS) for c in chosen}
        for name in added:
            added[name].append((got[name] - got["direct"]) * 1000)
    return added


async def settle(pid: int, quiet_s: float = 0.003, step_s: float = 0.1, limit_s: float = 10.0) -> float:
    """Wait until ``pid``'s tree uses < ``quiet_s`` CPU seconds per ``step_s`` (a backlog drained), at most
    ``limit_s``; returns its CPU seconds then."""
    prev = tree_cpu_seconds(pid)
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        await asyncio.sleep(step_s)
        now = tree_cpu_seconds(pid)
        if now - prev < quiet_s:
            return now
        prev = now
    return prev


# ------------------------------------------------------------------------------------------------ processes


class Harness:
    """Starts and stops the processes of one run under ``tmp``; ``contenders`` in start order."""

    def __init__(self, tmp: Path, peers: bool) -> None:
        self.tmp, self.peers = tmp, peers
        self.env = bench_env(HF_HUB_OFFLINE="1", OPENAI_API_KEY="sk-bench",
                             RAILCAR_FINGERPRINT_KEY="bench-fingerprint-key-0123456789abcdef")
        self.procs: list[subprocess.Popen] = []
        self.contenders: list[Contender] = []
        self.notes: list[str] = []
        self.up_port = free_port()
        self.upstream = f"http://127.0.0.1:{self.up_port}/v1"

    def spawn(self, cmd: list[str], env: dict[str, str], cpus: set[int], log: str) -> subprocess.Popen:
        p = start(cmd, env, self.tmp / log, cpus=cpus)
        self.procs.append(p)
        return p

    async def wait_ready(self, url: str, c: Contender) -> None:
        """Wait until ``url`` answers 200; on failure re-raise with the end of ``c``'s log (its stderr)."""
        try:
            await wait_http(url, c.proc, timeout=180, interval=0.2)
        except RuntimeError as exc:
            log = self.tmp / log_name(c.name)
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{c.name}: {exc}\n{tail}") from None

    async def start_all(self) -> None:
        up = self.spawn([sys.executable, "-m", "railcar.tools.replay_upstream", "--synthetic", "--port",
                         str(self.up_port), "--tokens", str(TOKENS)], self.env, LOAD_CPUS, "upstream.log")
        broker = self.spawn([sys.executable, "-m", "railcar.tools.mock_broker", "--topic", "otlp_spans:8"],
                            self.env, LOAD_CPUS, "broker.log")
        bootstrap = (await asyncio.to_thread(broker.stdout.readline)).decode().strip()
        await wait_http(self.upstream + "/models", up)
        self.contenders.append(Contender("direct", f"http://127.0.0.1:{self.up_port}"))
        base = {"RAILCAR_UPSTREAM_BASE_URL": self.upstream, "RAILCAR_SERVER_LOG_LEVEL": "warning",
                "RAILCAR_FILESET_ROOT": str(self.tmp / "fileset")}
        off = {"RAILCAR_TELEMETRY_ENABLED": "false"}
        none = {"RAILCAR_GUARDRAILS_CONFIG_PATH": "none"}  # an unset config_path is the bundled default config
        rails = {"RAILCAR_GUARDRAILS_CONFIG_PATH": "default"}
        kafka = {"RAILCAR_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "RAILCAR_TELEMETRY_SPOOL_DIR": str(self.tmp / "spool"),
                 "RAILCAR_TELEMETRY_AGENT_ID": "bench-agent"}
        for name, extra in (("bare", {**none, **off}), ("rails", {**rails, **off}), ("rails + recording", {**rails, **kafka}),
                            ("embedded default", {"RAILCAR_FILESET_ROOT": str(self.tmp / "embedded-fileset")})):
            port = free_port()
            env = {**self.env, **base, **extra, "RAILCAR_SERVER_PORT": str(port)}
            proc = self.spawn([sys.executable, "-m", "railcar.cli", "serve"], env, SIDECAR_CPUS, log_name(name))
            self.contenders.append(Contender(name, f"http://127.0.0.1:{port}", proc))
        port = free_port()  # the floor: what one upstream read and one client write cost here (bench/floor_pipe.py)
        proc = self.spawn([sys.executable, str(ROOT / "bench" / "floor_pipe.py"), str(port), str(self.up_port)],
                          self.env, SIDECAR_CPUS, log_name(FLOOR))
        self.contenders.append(Contender(FLOOR, f"http://127.0.0.1:{port}", proc))
        for c in self.contenders[1:]:
            await self.wait_ready(c.base + "/readyz", c)
        if self.peers:
            await self.start_nemo()
            await self.start_litellm()
        else:
            self.notes.append("Peers skipped (--no-peers).")
        await asyncio.sleep(1.0)  # let start-up work finish before the idle RSS is read
        for c in self.contenders:
            if c.proc:
                c.rss_idle_kb = memory_kb(c.proc.pid, "VmRSS")

    async def start_nemo(self) -> None:
        exe = Path(sys.executable).parent / "nemoguardrails"
        if not exe.exists():
            self.notes.append("nemoguardrails server: not installed (`pip install .[bench]`), skipped.")
            return
        default = yaml.safe_load((ROOT / "railcar" / "rails" / "default_config" / "config.yml").read_text())
        default = expand_catalog_markers(default, "railcar/rails/default_config")  # the same regexes Railcar runs
        for delay in ("0", "5"):
            d = self.tmp / "nemo" / f"d{delay}"
            d.mkdir(parents=True)
            cfg = peer_config(self.upstream, True, default, {"x-synthetic-delay-ms": delay})
            (d / "config.yml").write_text(yaml.safe_dump(cfg))
        quiet = ("import logging, sys; logging.disable(logging.CRITICAL); sys.argv = ['nemoguardrails'] + "
                 "sys.argv[1:]; from nemoguardrails.__main__ import app; sys.exit(app())")
        for name, cmd in (("nemoguardrails server", [str(exe)]),
                          ("nemoguardrails server, logging off", [sys.executable, "-c", quiet])):
            port = free_port()
            proc = self.spawn(cmd + ["server", "--config", str(self.tmp / "nemo"), "--port", str(port),
                                     "--disable-chat-ui", "--default-config-id", "d0"], self.env, SIDECAR_CPUS,
                              log_name(name))
            self.contenders.append(Contender(name, f"http://127.0.0.1:{port}", proc, peer="nemo"))
            await self.wait_ready(f"http://127.0.0.1:{port}/v1/rails/configs", self.contenders[-1])

    async def start_litellm(self) -> None:
        exe = shutil.which("litellm", path=str(Path(sys.executable).parent)) or shutil.which("litellm")
        if not exe:
            self.notes.append("LiteLLM proxy: not installed (`pip install .[bench]`), skipped.")
            return
        models = [{"model_name": f"synthetic-d{d}",
                   "litellm_params": {"model": "openai/synthetic-model", "api_base": self.upstream,
                                      "api_key": "sk-bench", "extra_headers": {"x-synthetic-delay-ms": d}}}
                  for d in ("0", "5")]
        path = self.tmp / "litellm.yml"
        path.write_text(yaml.safe_dump({"model_list": models}))
        port = free_port()
        proc = self.spawn([exe, "--config", str(path), "--port", str(port), "--host", "127.0.0.1", "--num_workers",
                           "1"], {**self.env, "LITELLM_LOG": "ERROR"}, SIDECAR_CPUS, log_name("LiteLLM proxy"))
        self.contenders.append(Contender("LiteLLM proxy", f"http://127.0.0.1:{port}", proc, peer="litellm"))
        await self.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", self.contenders[-1])


async def supports(session: aiohttp.ClientSession, c: Contender, fmt: str) -> bool:
    """Whether ``c`` streams ``fmt`` (a short synthetic stream in that API's event shape, status 200)."""
    url, body, headers = request_for(c, Point(1, 0, 1, 1, fmt))
    headers["x-synthetic-tokens"] = "4"
    try:
        async with session.post(url, data=body, headers=headers) as r:
            raw = await r.read()
            return r.status == 200 and FORMAT_MARK[fmt] in raw and raw.count(b"tok") >= 4
    except aiohttp.ClientError:
        return False


def points(quick: bool) -> list[Point]:
    """The chat points (streams per contender, for Railcar / for the peers)."""
    if quick:
        return [Point(1, 0, 8, 4), Point(1, 5, 4, 1), Point(32, 0, 32, 32), Point(32, 5, 32, 32),
                Point(256, 0, 256, 0), Point(256, TAIL_DELAY_MS, 256, 0)]
    return [Point(1, 0, 100, 20), Point(1, 5, 10, 4), Point(32, 0, 1024, 96), Point(32, 5, 128, 64),
            Point(256, 0, 2048, 512), Point(256, TAIL_DELAY_MS, 512, 0)]


async def main_async(args: argparse.Namespace) -> str:
    if len(os.sched_getaffinity(0)) >= 2:
        os.sched_setaffinity(0, LOAD_CPUS)  # the load generator shares core 0 with the upstream
    tmp = Path(tempfile.mkdtemp(prefix="railcar-bench-proxy-"))
    h = Harness(tmp, peers=not args.no_peers)
    t_start = time.perf_counter()
    try:
        await h.start_all()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)  # a stalled stream fails after 60 s of silence
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:
            chat = points(args.quick)
            for point in chat:
                await measure_point(s, h.contenders, point)
            fmt_points = await format_points(s, h.contenders, args.quick)
            ttft = {fmt: await ttft_rounds(s, h.contenders, fmt, 24 if args.quick else 80)
                    for fmt in ["chat"] + [f for f, pts in fmt_points.items() if pts]}
        wall = time.perf_counter() - t_start
        notes = h.notes + [c.failed for c in h.contenders if c.failed]
        return render(h.contenders, chat, fmt_points, ttft, notes, wall, args.quick)
    finally:
        stop(h.procs)
        shutil.rmtree(tmp, ignore_errors=True)


async def measure_point(s: aiohttp.ClientSession, contenders: list[Contender], point: Point) -> None:
    """Run ``point`` on every contender in turn (a warm-up first); the c=256 point resets and reads the peak RSS.
    A peer that fails (or stalls past the read timeout) is reported and left out of later points, not fatal."""
    for c in contenders:
        n = point.peer_streams if c.peer else point.streams
        if not n or c.failed:
            continue
        try:
            await measure_one(s, c, point, n)
        except (RuntimeError, TimeoutError, aiohttp.ClientError) as exc:
            if not c.peer:
                raise
            c.failed = f"{c.name}: failed at {point.label} ({type(exc).__name__}: {str(exc)[:160]}); left out."
            print(c.failed, file=sys.stderr, flush=True)
    for c in contenders:
        if c.proc:
            c.rss_peak_kb = max(c.rss_peak_kb, c.rss_c256_kb, memory_kb(c.proc.pid, "VmHWM"))


async def measure_one(s: aiohttp.ClientSession, c: Contender, point: Point, n: int) -> None:
    """Warm ``c`` up (pacing does not matter to connections and caches), then run ``n`` streams of ``point``."""
    await run_point(s, c, Point(point.concurrency, 0, 0, 0, point.fmt), min(n, max(2, point.concurrency // 8)))
    if c.proc and point.concurrency == 256:
        reset_peak_rss(c.proc.pid)
    r = c.runs[point] = await run_point(s, c, point, n)
    if c.proc and point.concurrency == 256:
        c.rss_c256_kb = max(c.rss_c256_kb, memory_kb(c.proc.pid, "VmHWM"))  # the peak of both c=256 points
    print(f"{point.label} {c.name}: {r.streams / r.seconds:.1f} streams/s, TTFT p50 {pct(r.ttft, .5) * 1000:.1f} ms,"
          f" CPU {_f(r.cpu_ms_per_stream, '.2f')} ms/stream", file=sys.stderr, flush=True)


async def format_points(s: aiohttp.ClientSession, contenders: list[Contender], quick: bool) -> dict[str, list]:
    """Issue 12: the Responses and Anthropic points on direct / bare / rails, when both the upstream and the
    sidecar speak the format; ``{fmt: [points]}`` (empty list: not supported)."""
    out: dict[str, list] = {}
    chosen = [c for c in contenders if c.name in ("direct", "bare", "rails")]
    for fmt in ("responses", "anthropic"):
        ok = [await supports(s, c, fmt) for c in chosen]
        if not all(ok):
            out[fmt] = []
            continue
        pts = [Point(32, 0, 32 if quick else 512, 0, fmt)]  # its added TTFT: ttft_rounds
        for point in pts:
            await measure_point(s, chosen, point)
        out[fmt] = pts
    return out


# ------------------------------------------------------------------------------------------------ report


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v * 1000:.2f}"


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "" if v is None else format(v, fmt)


def point_table(contenders: list[Contender], pts: list[Point]) -> list[str]:
    """One row per (point, contender): streams/s, tokens/s, TTFT p50/p99 ms, added TTFT p50 ms vs direct, CPU ms
    per stream, µs per delta."""
    out = ["| point | contender | streams/s | tokens/s | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms "
           "| CPU ms/stream | µs CPU/delta |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p in pts:
        direct = next((c.runs[p] for c in contenders if c.name == "direct" and p in c.runs), None)
        for c in contenders:
            r = c.runs.get(p)
            if r is None:
                continue
            added = pct(r.ttft, .5) - pct(direct.ttft, .5) if direct and c.name != "direct" else None
            out.append(f"| {p.label} | {c.name} | {r.streams / r.seconds:.1f} | {r.streams * TOKENS / r.seconds:,.0f} "
                       f"| {_ms(pct(r.ttft, .5))} | {_ms(pct(r.ttft, .99))} | {_ms(added)} "
                       f"| {_f(r.cpu_ms_per_stream, '.2f')} | {_f(r.us_per_delta)} |")
    return out


def _ms_or_na(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} ms"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


class Figures:
    """Look-ups over the finished runs: ``run(name, point)`` or None."""

    def __init__(self, contenders: list[Contender], ttft: dict[str, dict[str, list[float]]]) -> None:
        self.by_name = {c.name: c for c in contenders}
        self.ttft = ttft

    def run(self, name: str, point: Point) -> Run | None:
        c = self.by_name.get(name)
        return c.runs.get(point) if c else None

    def added_paired(self, name: str, fmt: str) -> float | None:
        """Median added TTFT (ms) of ``name`` over :func:`ttft_rounds` of ``fmt``; None when not measured."""
        v = self.ttft.get(fmt, {}).get(name)
        return pct(v, .5) if v else None


def targets(f: Figures, chat: list[Point], fmt_points: dict[str, list]) -> list[str]:
    """The issues' targets, each as ``| target | measured | met / not met |``."""
    c1_5, c32_0, c32_5, c256 = (next(p for p in chat if (p.concurrency, p.delay_ms) == k)
                                for k in ((1, 5), (32, 0), (32, 5), (256, TAIL_DELAY_MS)))
    rows = []
    for name, limit in (("bare", 60), ("rails", 90)):
        vals = [f.run(name, p).us_per_delta for p in (c1_5, c32_5)]
        floor = [r.us_per_delta if (r := f.run(FLOOR, p)) else None for p in (c1_5, c32_5)]
        shown = f" (floor: a TCP pipe, {floor[0]:.1f} and {floor[1]:.1f})" if None not in floor else ""
        rows.append((f"µs CPU per delta at 5 ms/token, c=1 and c=32, {name} <= {limit} (#15)",
                     f"{vals[0]:.1f} and {vals[1]:.1f}{shown}", all(v <= limit for v in vals)))
    bare99, rec99 = pct(f.run("bare", c256).ttft, .99), pct(f.run("rails + recording", c256).ttft, .99)
    rows.append((f"TTFT p99 at c=256 {TAIL_DELAY_MS} ms/token, rails + recording <= 2x bare (#15)",
                 f"{rec99 * 1000:.0f} ms vs {bare99 * 1000:.0f} ms ({rec99 / bare99:.2f}x)", rec99 <= 2 * bare99))
    emb = f.by_name["embedded default"]
    rows.append(("embedded default RSS at c=256 <= 150 MB (#15)", f"{emb.rss_c256_kb / 1024:.0f} MB",
                 emb.rss_c256_kb <= 150 * 1024))
    for p in (c32_0, c32_5):
        extra = f.run("rails + recording", p).cpu_s / f.run("rails", p).cpu_s - 1
        rows.append((f"publishing <= 10% extra sidecar CPU per stream, {p.label} (#15)", f"{extra * 100:+.1f}%",
                     extra <= 0.10))
    for name in ("bare", "rails"):
        v = f.added_paired(name, "chat")
        rows.append((f"added TTFT p50 <= 1 ms at c=1, 5 ms/token, {name}, paired (#15)", _ms_or_na(v),
                     None if v is None else v <= 1.0))
    for fmt in ("responses", "anthropic"):
        rows += format_targets(f, fmt, fmt_points.get(fmt) or [], c32_0)
    return ["| target (issue) | measured | |", "|---|---|---|"] + [f"| {t} | {m} | {_verdict(ok)} |"
                                                                  for t, m, ok in rows]


def format_targets(f: Figures, fmt: str, pts: list[Point], chat_c32: Point) -> list[tuple[str, str, bool | None]]:
    """Issue 12 for ``fmt``: CPU per stream within 1.5x of chat's (c=32, rails and bare), added TTFT p50 <= 1 ms."""
    if not pts:
        return [(f"{fmt}: CPU per 256-token stream <= 1.5x chat's; added TTFT p50 <= 1 ms (#12)",
                 "n/a (the upstream or the sidecar does not stream this format yet)", None)]
    rows = []
    for name in ("bare", "rails"):
        r, chat = f.run(name, pts[0]), f.run(name, chat_c32)
        ratio = r.cpu_s / r.streams / (chat.cpu_s / chat.streams)
        rows.append((f"{fmt}: CPU per stream <= 1.5x chat's, c=32, {name} (#12)",
                     f"{r.cpu_ms_per_stream:.2f} ms vs {chat.cpu_ms_per_stream:.2f} ms ({ratio:.2f}x)", ratio <= 1.5))
        v = f.added_paired(name, fmt)
        rows.append((f"{fmt}: added TTFT p50 <= 1 ms, c=1 5 ms/token, {name}, paired (#12)", _ms_or_na(v),
                     None if v is None else v <= 1.0))
    return rows


def peer_lines(f: Figures, chat: list[Point]) -> list[str]:
    """Ratios of Railcar (rails) vs each peer present: tokens/s at c=32 0 ms, CPU per stream at c=32 0 and 5 ms."""
    out = []
    ours = "rails"
    for peer in ("nemoguardrails server", "nemoguardrails server, logging off", "LiteLLM proxy"):
        if peer not in f.by_name:
            continue
        parts = []
        for p in chat:
            a, b = f.run(ours, p), f.run(peer, p)
            if a is None or b is None:
                continue
            if p.concurrency == 32 and not p.delay_ms:
                parts.append(f"tokens/s at {p.label} {b.seconds / b.streams / (a.seconds / a.streams):.1f}x the peer's")
            if p.concurrency in (1, 32):
                parts.append(f"CPU per stream at {p.label} {b.cpu_ms_per_stream / a.cpu_ms_per_stream:.1f}x less")
        if parts:
            out.append(f"- Railcar rails + hold-back vs {peer}: " + "; ".join(parts) + ".")
    return out


def render(contenders: list[Contender], chat: list[Point], fmt_points: dict[str, list],
           ttft: dict[str, dict[str, list[float]]], notes: list[str], wall: float, quick: bool) -> str:
    """The markdown report of one run."""
    f = Figures(contenders, ttft)
    out = [f"Proxy benchmark{' (--quick)' if quick else ''}: {TOKENS}-token streams from the synthetic upstream; "
           f"contenders pinned to core {min(SIDECAR_CPUS)}, load generator + upstream + broker on core "
           f"{min(LOAD_CPUS)} ({os.cpu_count()} cores, shared with other work); CPU of the contender's "
           f"process tree (per-thread schedstat, ns), RSS from VmHWM. Wall time {wall:.0f} s.", ""]
    out += targets(f, chat, fmt_points) + [""]
    rounds = max((len(v) for d in ttft.values() for v in d.values()), default=0)
    out += [f"Added TTFT, c=1 5 ms/token, paired ({rounds} rounds of one {TTFT_TOKENS}-token stream to each "
            "contender in turn; median and p90 of its TTFT minus direct's in the same round, ms): "
            + "; ".join(f"{fmt} {name} {pct(v, .5):.2f} / {pct(v, .9):.2f}"
                        for fmt, d in ttft.items() for name, v in d.items()) + ".", ""]
    out += point_table(contenders, chat + [p for pts in fmt_points.values() for p in pts]) + [""]
    out += ["| contender | RSS idle MB | peak RSS c=256 MB | peak RSS whole run MB |", "|---|---:|---:|---:|"]
    out += [f"| {c.name} | {c.rss_idle_kb / 1024:.0f} | {_f(c.rss_c256_kb / 1024 if c.rss_c256_kb else None, '.0f')} "
            f"| {c.rss_peak_kb / 1024:.0f} |"
            for c in contenders if c.proc]
    pub = [f"{p.label} {(f.run('rails + recording', p).cpu_s / f.run('rails', p).cpu_s - 1) * 100:+.1f}%"
           for p in chat]
    out += ["", "Publishing's extra sidecar CPU per stream (rails + recording vs rails): " + "; ".join(pub) + "."]
    out += [""] + (peer_lines(f, chat) or ["- No peer ran: no ratios."]) + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer streams per point (< 2 minutes)")
    p.add_argument("--no-peers", action="store_true", help="skip nemoguardrails server and LiteLLM")
    p.add_argument("--out", default=str(ROOT / ".notes" / "proxy.md"), help="markdown file for the report")
    args = p.parse_args()
    return run_table(main_async, args, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
