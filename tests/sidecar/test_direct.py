"""The direct relay (:mod:`railcar.sidecar.direct`) under the pass-through guard: what the upstream sends reaches
the agent byte for byte, a slow agent pauses the upstream instead of filling memory, the lazy read timer neither
fires while reads keep coming nor misses a stall, and the upstream connection goes back to the pool."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from railcar.sidecar import direct

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def frame(i: int, size: int = 20) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % (b"%06d" % i + b"x" * size)


class Upstream:
    """An SSE upstream on loopback: ``n`` frames of ``size`` bytes, ``pace`` s apart, then a hang of ``hang`` s
    (0: none) or the end. Records each request's client port (one port for two requests = a pooled connection)."""

    def __init__(self, n: int, size: int = 20, pace: float = 0.0, hang: float = 0.0) -> None:
        self.n, self.size, self.pace, self.hang = n, size, pace, hang
        self.ports: list[int] = []
        self.taps_seen: list[int] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.ports.append(request.transport.get_extra_info("peername")[1])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(self.n):
            await resp.write(frame(i, self.size))
            if self.pace:
                await asyncio.sleep(self.pace)
            if i == self.n // 2:
                self.taps_seen.append(len(direct._TAPS))
        if self.hang:
            await asyncio.sleep(self.hang)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def expected(self) -> bytes:
        return b"".join(frame(i, self.size) for i in range(self.n)) + b"data: [DONE]\n\n"


@pytest.fixture
async def upstream_at():
    runners = []

    async def start(up: Upstream) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", up.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    yield start
    for r in runners:
        await r.cleanup()


async def test_stream_is_relayed_byte_for_byte_through_the_tap_and_the_connection_is_pooled(
        upstream_at, make_config, start_sidecar):
    up = Upstream(200, pace=0.001)
    sc = await start_sidecar(make_config(upstream={"base_url": await upstream_at(up)}))
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
                assert r.status == 200
                assert await r.read() == up.expected()
    assert up.taps_seen == [1, 1]  # mid-stream, the body was relayed by the tap
    assert direct._TAPS == {}
    assert len(up.ports) == 2 and up.ports[0] == up.ports[1]  # the tapped connection went back to the pool


async def test_slow_agent_pauses_the_upstream_and_gets_every_byte(upstream_at, make_config, start_sidecar):
    # 8 MB as fast as the upstream can write; the agent stops reading for longer than the read timeout.
    up = Upstream(4000, size=2000)
    sc = await start_sidecar(make_config(upstream={"base_url": await upstream_at(up), "read_timeout_s": 0.5}))
    buffered: list[int] = []
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            got = [await r.content.readany()]
            for _ in range(10):  # 1 s not reading: the sidecar's socket buffer must stay bounded meanwhile
                await asyncio.sleep(0.1)
                buffered.append(max(t.get_write_buffer_size() for t in _server_transports(sc)))
            while chunk := await r.content.readany():
                got.append(chunk)
    assert b"".join(got) == up.expected()  # no upstream_timeout: the pause was the sidecar's, not the upstream's
    assert max(buffered) < 1024 * 1024, buffered


async def test_lazy_read_timer_spans_many_reads_and_catches_the_stall(upstream_at, make_config, start_sidecar):
    # Reads every 50 ms for 1 s (twice the read timeout in total), then a stall: the error event, after the frames.
    up = Upstream(20, pace=0.05, hang=5.0)
    sc = await start_sidecar(make_config(upstream={"base_url": await upstream_at(up), "read_timeout_s": 0.5}))
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            body = await asyncio.wait_for(r.read(), 4)
    frames = up.expected()[: -len(b"data: [DONE]\n\n")]
    assert body.startswith(frames)
    tail = body[len(frames):]
    assert tail.startswith(b'data: {"error"') and b"upstream_timeout" in tail
    assert direct._TAPS == {}


def _server_transports(sc) -> list[asyncio.Transport]:
    server = sc.runner.server
    return [h.transport for h in server.connections if h.transport is not None]
