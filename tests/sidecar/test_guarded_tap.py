"""The guarded stream handed over from the upstream socket's callback (``railcar.sidecar.app._GuardedTap``): the real
rails and hold-back judge every read there, and a stream guard that has to wait goes on in a task while later reads
wait, in order; a block from there ends the stream and stops the upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from rails_support import FramesUpstream, holdback_guard, stream_of

from railcar.core.exchange import Exchange
from railcar.sidecar import direct

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
KEY = "AKIA" + "Q3VZ7XKM" + "2PLRW5TN"  # real-shaped, built at run time (the docs' EXAMPLE id is a placeholder)


class WaitingStream:
    """A stream guard that awaits on every ``every``-th event (as a check still running would), relays events as
    they came, records what it saw and the tap's state, and blocks at event ``block_at`` (0: never)."""

    def __init__(self, sink: Any, abort: Any, every: int, block_at: int) -> None:
        self.sink, self.abort, self.every, self.block_at = sink, abort, every, block_at
        self.stopped = False
        self.seen: list[bytes] = []
        self.tapped: list[int] = []

    async def on_events(self, events: list[tuple[bytes, bytes | None]]) -> int:
        for i, (raw, _) in enumerate(events):
            self.seen.append(raw)
            self.tapped.append(len(direct._TAPS))
            if len(self.seen) % self.every == 0:
                await asyncio.sleep(0.004)  # the upstream keeps sending meanwhile: those reads must wait
            if len(self.seen) == self.block_at:
                self.stopped = True
                await self.sink.send(b'data: {"error":"blocked"}\n\n')
                self.abort()
                return i + 1
            await self.sink.send(raw)
        return len(events)

    async def on_end(self) -> None:
        await self.sink.send(b"data: end\n\n")


class WaitingGuard:
    inspects = True
    steps_in_callback = True

    def __init__(self, every: int, block_at: int = 0) -> None:
        self.every, self.block_at = every, block_at
        self.streams: list[WaitingStream] = []

    async def check_request(self, exchange: Exchange) -> None:
        return None

    async def check_response(self, exchange: Exchange, body: dict[str, Any]) -> None:
        return None

    def open_stream(self, exchange: Exchange, sink: Any, abort: Any) -> WaitingStream:
        self.streams.append(WaitingStream(sink, abort, self.every, self.block_at))
        return self.streams[-1]


def _frames(n: int) -> list[bytes]:
    return [b'data: {"n":%d}\n\n' % i for i in range(n)]


async def test_a_waiting_guard_sees_every_read_in_order_and_the_agent_gets_them_in_order(
        make_config, start_sidecar) -> None:
    frames = _frames(120)
    guard = WaitingGuard(every=7)
    async with FramesUpstream(frames, delay_s=0.0005) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s, s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            body = await r.read()
    (st,) = guard.streams
    assert st.seen == frames
    assert body == b"".join(frames) + b"data: end\n\n"
    assert max(st.tapped) == 1  # judged while the body was tapped, not in the readany loop
    assert direct._TAPS == {}


async def test_a_block_from_a_waiting_guard_ends_the_stream_and_stops_the_upstream(make_config, start_sidecar) -> None:
    frames = _frames(400)
    guard = WaitingGuard(every=5, block_at=30)  # the 30th event is judged after an await: in the task
    async with FramesUpstream(frames, delay_s=0.002) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s, s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            body = await r.read()
        await asyncio.wait_for(up.disconnected.wait(), 5)
        assert up.sent < len(frames)
    (st,) = guard.streams
    assert st.seen == frames[:30]
    assert body == b"".join(frames[:29]) + b'data: {"error":"blocked"}\n\n' + b"data: end\n\n"


async def test_the_hold_back_judges_in_the_callback_and_a_split_key_never_reaches_the_agent(
        make_config, start_sidecar) -> None:
    guard = holdback_guard()
    assert guard.steps_in_callback  # model-free local rails: no task needed before a check suspends
    cuts = [0, 3, 5, 9, 12, 16, 19, 20]
    frames = stream_of([f"w{i} " for i in range(40)] + [KEY[a:b] for a, b in zip(cuts, cuts[1:])]
                       + [f" x{i}" for i in range(40)])
    seen: list[int] = []
    upstream = FramesUpstream(frames, delay_s=0.001)
    handle = upstream.handle

    async def spy(request: Any) -> Any:  # the tap's table while the proxy reads this stream
        task = asyncio.ensure_future(handle(request))
        while not task.done():
            seen.append(len(direct._TAPS))
            await asyncio.sleep(0.005)
        return await task

    upstream.handle = spy  # type: ignore[method-assign]
    async with upstream as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s, s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            body = await r.read()
    text = ""
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            obj = orjson.loads(event[6:])
            text += "".join(c["delta"].get("content") or "" for c in obj.get("choices", []))
    assert KEY not in text and "w39 " in text  # the prose before it was relayed, the key was not
    assert b'"code":"content_blocked"' in body
    assert 1 in seen


class LaterBlock(WaitingGuard):
    """Relays every event; 30 ms in, a background "check" blocks (sends the block frame, sets ``stopped``) without
    calling ``abort``: the relay itself must stop at the next read."""

    def open_stream(self, exchange: Exchange, sink: Any, abort: Any) -> WaitingStream:
        st = super().open_stream(exchange, sink, lambda: None)

        async def block() -> None:
            await asyncio.sleep(0.03)
            st.stopped = True
            await sink.send(b'data: {"error":"blocked"}\n\n')

        asyncio.get_running_loop().create_task(block())
        return st


async def test_a_block_between_reads_ends_the_relay_at_the_next_read(make_config, start_sidecar) -> None:
    frames = _frames(400)
    guard = LaterBlock(every=10**9)
    async with FramesUpstream(frames, delay_s=0.002) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s, s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            body = await r.read()
        await asyncio.wait_for(up.disconnected.wait(), 5)
        assert up.sent < len(frames) // 2
    (st,) = guard.streams
    assert body == b"".join(st.seen) + b'data: {"error":"blocked"}\n\n' + b"data: end\n\n"
