"""500 concurrent streams through a real ``railcar serve`` subprocess: all complete byte-exact, and the sidecar's
memory (``VmHWM``/``VmRSS`` from ``/proc``) stays bounded and does not grow from one round to the next."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from ports import free_port

from railcar.tools.replay_upstream import ReplayUpstream

STREAMS = 500
TOKENS = 64


def _proc_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.slow
async def test_500_concurrent_streams_bounded_memory():
    port = free_port()
    async with ReplayUpstream(synthetic=True, tokens=TOKENS, delay_s=0.002) as up:
        up.record_requests = False
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
        env.update(RAILCAR_UPSTREAM_BASE_URL=up.base_url, RAILCAR_SERVER_PORT=str(port),
                   RAILCAR_GUARDRAILS_CONFIG_PATH="none",
                   RAILCAR_SERVER_LOG_LEVEL="warning", RAILCAR_SERVER_GRACE_PERIOD_S="2")
        proc = subprocess.Popen([sys.executable, "-m", "railcar", "serve"], env=env,
                                stderr=subprocess.PIPE)
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            conn = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=conn) as s:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectorError:
                        pass
                    assert time.monotonic() < deadline and proc.poll() is None
                    await asyncio.sleep(0.05)

                async def one(i: int) -> bytes:
                    async with s.post(url, json={"model": "m", "stream": True,
                                                 "messages": [{"role": "user", "content": f"hi {i}"}]}) as r:
                        assert r.status == 200
                        return await r.read()

                rss_idle = _proc_kb(proc.pid, "VmRSS")
                rounds = []
                for _ in range(2):
                    t0 = time.monotonic()
                    bodies = await asyncio.gather(*(one(i) for i in range(STREAMS)))
                    rounds.append((time.monotonic() - t0, _proc_kb(proc.pid, "VmRSS")))
                    expected = b"".join(up.frames(TOKENS))
                    assert all(b == expected for b in bodies)
                hwm = _proc_kb(proc.pid, "VmHWM")
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
            assert up.completed == 2 * STREAMS and up.active == 0
            assert "railcar_inflight_streams 0.0" in metrics
            assert f'railcar_requests_total{{route="chat_completions",status="200"}} {2 * STREAMS}.0' in metrics
            print(f"\nidle RSS {rss_idle} kB; rounds {rounds}; peak {hwm} kB")
            # Bounded: 500 open streams cost well under 64 MB over idle, and a second round adds little (no leak).
            assert hwm - rss_idle < 64 * 1024
            assert rounds[1][1] - rounds[0][1] < 8 * 1024
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                assert proc.wait(15) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
