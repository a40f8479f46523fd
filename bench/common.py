"""Helpers shared by the benchmarks in ``bench/``: processes on loopback, CPU time, percentiles, the notes table.

Each bench runs as a script (``python bench/<name>.py``), so ``bench/`` is first on ``sys.path`` and this module is
imported as ``common``. It imports nothing from Railcar: the contenders run as separate processes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid``, all its threads, with nanosecond resolution where the kernel gives it. Raises
    ``FileNotFoundError`` when the process is gone.

    utime + stime (fields 14 and 15 of ``/proc/<pid>/stat``, proc(5)) count every thread the process ever had but
    in clock ticks (10 ms: ±40 µs per delta on a two-stream run); the first field of each live thread's
    ``/proc/<pid>/task/<tid>/schedstat`` is its time on a CPU in ns (sched-stats.rst) but misses threads that have
    exited. Each undercounts, never overcounts, so the larger of the two is the closer."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()  # the command name may hold spaces: split after it
    ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
    ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                ns += int(fh.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):  # a thread ended while read: the ticks still count it
        ns = 0
    return max(ticks, ns / 1e9)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank on the sorted list; raises ``IndexError`` when
    ``values`` is empty."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def bench_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``RAILCAR_*`` setting (a bench sets its own), with nemoguardrails'
    usage reports off (nothing may leave the host), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    env["NEMO_GUARDRAILS_NO_USAGE_STATS"] = "1"
    env.update(extra)
    return env


def start(cmd: list[str], env: Mapping[str, str], log: Path | None = None,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """Start ``cmd`` in the checkout root with stdout piped (the mock broker prints its address there) and stderr
    to ``log`` (discarded when None), pinned to the CPU set ``cpus`` when given (``sched_setaffinity`` in the
    child before exec, so its threads and children inherit it)."""
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    if log is None:
        return subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                                preexec_fn=pre)
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=fh, cwd=ROOT, preexec_fn=pre)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (``/proc/<pid>/task/<tid>/children``, proc(5)); gone ones are skipped."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` summed over :func:`process_tree` of ``pid`` (a server that forks workers)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """``field`` of ``/proc/<pid>/status`` in KiB (``VmHWM``: peak resident set; ``VmRSS``: resident now), summed
    over :func:`process_tree`; 0 for processes already gone."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid``'s tree to its current RSS (write ``5`` to ``/proc/<pid>/clear_refs``, Linux
    >= 4.0, proc(5)); False when the kernel refuses (the peak then covers the whole run)."""
    ok = True
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            ok = False
    return ok


def peer_config(upstream: str, sf: bool, default: dict, headers: dict | None = None) -> dict:
    """The guardrail config every rails contender runs: the default config's regex output rails, chunk 200 /
    context 50; for the NeMo server also its main model = the same upstream (``default_headers`` select the
    synthetic text or delay, since the server does not forward client headers upstream)."""
    cfg = {"rails": {"config": {"regex_detection": {"output": default["rails"]["config"]["regex_detection"]["output"]}},
                     "output": {"flows": ["regex check output"],
                                "streaming": {"enabled": True, "chunk_size": 200, "context_size": 50,
                                              "stream_first": sf}}}}
    if headers is None:
        return cfg
    params: dict = {"base_url": upstream, "api_key": "sk-bench"}
    if headers:
        params["default_headers"] = headers
    return {"models": [{"type": "main", "engine": "openai", "model": "synthetic-model", "parameters": params}],
            **cfg}


async def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60,
                    interval: float = 0.05) -> None:
    """Poll ``GET url`` until it answers 200. Raises ``RuntimeError`` when ``proc`` exits first or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(interval)
    raise RuntimeError(f"{url} never became ready")


def stop(procs: Iterable[subprocess.Popen], timeout: float = 20) -> None:
    """SIGTERM every process still running, then wait up to ``timeout`` s each and SIGKILL the ones that stay."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def write_notes(path: str | os.PathLike[str], text: str,
                section: tuple[str, str] | None = None) -> None:
    """Write ``text`` to the notes file ``path`` (parents created). With ``section=(start, end)`` markers and a
    file that already holds both, only the part between them (markers included) is replaced by ``text``, which
    should itself start and end with the markers."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if section:
        start, end = section
        old = out.read_text() if out.exists() else ""
        if start in old and end in old:
            text = old[:old.index(start)] + text.rstrip("\n") + old[old.index(end) + len(end):]
    out.write_text(text)


def run_table(main_async: Callable[[Any], Awaitable[str]], args: Any, out: str | os.PathLike[str]) -> int:
    """Run ``main_async(args)`` on uvloop (asyncio when uvloop is missing), print the markdown table it returns and
    write it to ``out``; returns the exit code 0."""
    try:
        import uvloop

        table = uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover
        table = asyncio.run(main_async(args))
    print(table)
    write_notes(out, table)
    return 0
