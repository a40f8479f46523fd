"""railcar.sidecar.app: the guard seam (refusal, rejection, body forwarding, stream stop), observers, pass-through,
health/readiness and metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import orjson
from aiohttp import web
from rails_support import holdback_guard

from railcar.core.exchange import Exchange
from railcar.core.guard import ClientGone, GuardRejected, PassThrough, Refusal
from railcar.sidecar.app import _Sink
from railcar.sidecar.sse import split_events
from railcar.tools.replay_upstream import ReplayUpstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Collect:
    def __init__(self):
        self.exchanges: list[Exchange] = []

    def exchange_finished(self, ex: Exchange) -> None:
        self.exchanges.append(ex)


class ScriptedGuard(PassThrough):
    """Refuses when the user says 'refuse', rejects 'reject', stops streams after ``stop_after`` events, and
    uppercases non-streaming answers."""

    inspects = True  # it judges content: the proxy hands it every event

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.ended = 0

    async def check_request(self, ex):
        text = ex.body["messages"][-1]["content"]
        if text == "refuse":
            return Refusal("self check input", "I can't help with that.")
        if text == "reject":
            raise GuardRejected(400, "streaming disabled for output rails", param="stream", code="stream_unsupported")
        if text == "edit":
            ex.body["messages"][-1]["content"] = "edited"
            ex.body_changed = True
        return None

    async def check_response(self, ex, body):
        body["choices"][0]["message"]["content"] = body["choices"][0]["message"]["content"].upper()
        return body

    def open_stream(self, ex, sink, abort):
        guard = self

        class S:
            stopped = False
            n = 0

            async def on_events(self, events):
                for handled, (raw, _data) in enumerate(events, 1):
                    self.n += 1
                    if guard.stop_after is not None and self.n > guard.stop_after:
                        await sink.send(b'data: {"error": {"message": "blocked"}}\n\ndata: [DONE]\n\n')
                        self.stopped = True
                        return handled
                    await sink.send(raw)
                return len(events)

            async def on_end(self):
                guard.ended += 1

        return S()


async def test_refusal_nonstream_and_stream_parse_with_openai(replay_upstream, make_config, start_sidecar):
    sc = await start_sidecar(make_config(upstream={"base_url": replay_upstream.base_url}), guard=ScriptedGuard())
    async with openai.AsyncOpenAI(base_url=sc.base_url, api_key="k", max_retries=0) as c:
        msgs = [{"role": "user", "content": "refuse"}]
        done = await c.chat.completions.create(model="m1", messages=msgs)
        assert done.choices[0].finish_reason == "content_filter" and done.model == "m1"
        assert done.choices[0].message.content == "I can't help with that."
        chunks = [ch async for ch in await c.chat.completions.create(model="m1", messages=msgs, stream=True)]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "I can't help with that."
        assert chunks[-1].choices[0].finish_reason == "content_filter"
        try:
            await c.chat.completions.create(model="m1", messages=[{"role": "user", "content": "reject"}])
            raise AssertionError("expected BadRequestError")
        except openai.BadRequestError as exc:
            assert exc.body["param"] == "stream" and exc.body["code"] == "stream_unsupported"
    assert replay_upstream.requests == []  # no upstream call for a refused or rejected request


async def test_body_forwarded_as_judged_and_bytes_untouched_without_a_guard(make_config, start_sidecar):
    odd = b'{ "model" : "m",\n "messages": [{"role": "user", "content": "hi"}], "x": 1.50 }'
    # A key spelled twice: orjson (and the guard) keep the last value, a provider's parser may keep the first.
    twice = b'{"model": "m", "messages": [{"role": "user", "content": "unjudged", "content": "hi"}]}'
    async with ReplayUpstream(synthetic=True) as up:
        for guard in (ScriptedGuard(), PassThrough()):
            sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
            async with aiohttp.ClientSession() as s:
                for data in (odd, twice, orjson.dumps(dict(CHAT, guardrails={"options": {"log": {}}})),
                             orjson.dumps(dict(CHAT, messages=[{"role": "user", "content": "edit"}]))):
                    async with s.post(sc.base_url + "/chat/completions", data=data) as r:
                        answer = await r.json()
                        assert r.status == 200 and answer["choices"][0]["message"]["content"].lower().startswith("tok")
    judged, untouched = [r.body for r in up.requests[:4]], [r.body for r in up.requests[4:]]
    assert orjson.loads(judged[0]) == orjson.loads(odd) and judged[0] != odd  # what the guard judged, re-serialized
    assert judged[1] == orjson.dumps(orjson.loads(twice)) and b"unjudged" not in judged[1]
    assert orjson.loads(judged[2]) == CHAT  # `guardrails` removed
    assert orjson.loads(judged[3])["messages"][0]["content"] == "edited"
    assert untouched[:2] == [odd, twice]  # no guard judges: byte for byte
    assert orjson.loads(untouched[2]) == CHAT


async def test_observer_gets_exchange_with_stream_data(make_config, start_sidecar):
    col = Collect()
    async with ReplayUpstream(synthetic=True, tokens=20) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), observers=[col])
        async with aiohttp.ClientSession() as s:
            req = dict(CHAT, stream=True, guardrails={"options": {"log": {"stats": True}}})
            async with s.post(sc.base_url + "/chat/completions", json=req, headers={"x-trace": "t"}) as r:
                body = await r.read()
    ex = col.exchanges[0]
    assert ex.guardrails_options == {"options": {"log": {"stats": True}}} and "guardrails" not in ex.body
    assert ex.status == 200 and ex.error is None and ex.finished_ns >= ex.started_ns
    assert ex.headers["x-trace"] == "t" and "authorization" not in ex.headers
    assert len(ex.stream_data) == 22 and ex.stream_data[-1] == b"[DONE]"
    assert b"".join(b"data: " + d + b"\n\n" for d in ex.stream_data) == body


async def test_huge_stream_is_relayed_whole_but_kept_bounded_for_the_trace(make_config, start_sidecar):
    """Issue 13 (transport): a 24 MB answer reaches the client whole, while what the proxy keeps for the trace
    recorder stops at its budget (a span keeps far less), so memory does not grow with the answer."""
    col = Collect()
    text = "x" * 2000
    async with ReplayUpstream(synthetic=True, text=text * 12000, chunk_chars=2000) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), observers=[col])
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True),
                              headers={"x-synthetic-tokens": "1"}) as r:
                n = 0
                async for chunk in r.content.iter_any():
                    n += len(chunk)
    assert n > 24_000_000
    kept = sum(map(len, col.exchanges[0].stream_data))
    assert 8 * 1024 * 1024 <= kept < 8 * 1024 * 1024 + 256 * 1024  # the budget, plus at most one upstream read


async def test_stream_guard_stop_closes_upstream(make_config, start_sidecar):
    guard = ScriptedGuard(stop_after=3)
    async with ReplayUpstream(synthetic=True, tokens=500, delay_s=0.005) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True)) as r:
                body = await r.read()
        await asyncio.wait_for(up.disconnected.wait(), 2)
    assert body.count(b'"tok "') == 3 and body.endswith(b"data: [DONE]\n\n") and b"blocked" in body
    assert guard.ended == 1 and up.completed == 0


async def test_only_listed_paths_pass_through(replay_upstream, make_config, start_sidecar):
    listed = ["/v1/models", "/v1/models/*", "/v1/files/*", "/v1/batches"]
    sc = await start_sidecar(make_config(upstream={"base_url": replay_upstream.base_url},
                                         server={"passthrough_paths": listed}))
    async with openai.AsyncOpenAI(base_url=sc.base_url, api_key="k", max_retries=0) as c:
        models = [m.id async for m in c.models.list()]
    assert "gpt-4o" in models
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.base_url + "/batches?stream=4", json={"input": "x"}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            body = await r.read()
        async with s.delete(sc.base_url + "/files/abc") as r:
            echo = await r.json()
        n_up = len(replay_upstream.requests)
        async with s.delete(sc.base_url + "/assistants/abc") as r:
            refused = (r.status, await r.json())
        async with s.get(sc.url("/metrics")) as r:
            text = await r.text()
    assert body.count(b"data: ") == 5 and body.endswith(b"data: [DONE]\n\n")
    assert echo["method"] == "DELETE" and echo["path"] == "/v1/files/abc"
    status, err = refused
    assert status == 404 and err["error"]["code"] == "unguarded_path"
    assert "/v1/assistants/abc" in err["error"]["message"] and "server.passthrough_paths" in err["error"]["message"]
    assert len(replay_upstream.requests) == n_up  # the refused call never left the pod
    assert 'railcar_passthrough_requests_total{path="/v1/files/*"} 1.0' in text
    assert 'railcar_passthrough_requests_total{path="/v1/batches"} 1.0' in text
    assert 'railcar_refused_paths_total{code="unguarded_path"} 1.0' in text


async def test_health_ready_metrics(replay_upstream, make_config, start_sidecar):
    sc = await start_sidecar(make_config(upstream={"base_url": replay_upstream.base_url}))
    state = sc.app["state"]
    async with aiohttp.ClientSession() as s:
        state.guard = None  # rails still loading
        async with s.get(sc.url("/readyz")) as r:
            assert r.status == 503
        async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "not_ready"
        state.guard = PassThrough()
        for path in ("/healthz", "/readyz"):
            async with s.get(sc.url(path)) as r:
                assert r.status == 200
        async with s.post(sc.base_url + "/chat/completions", json={"model": "m"}) as r:
            assert r.status == 400
        async with s.post(sc.base_url + "/chat/completions", json=CHAT,
                          headers={"x-replay-id": "pai-azure-azure-provider-call-0"}) as r:
            assert r.status == 200
        async with s.get(sc.url("/metrics")) as r:
            text = await r.text()
            assert r.headers["Content-Type"].startswith("text/plain")
    assert 'railcar_requests_total{route="chat_completions",status="503"} 1.0' in text
    assert 'railcar_requests_total{route="chat_completions",status="400"} 1.0' in text
    assert 'railcar_requests_total{route="chat_completions",status="200"} 1.0' in text
    assert 'railcar_upstream_ttfb_seconds_count{route="chat_completions"} 1.0' in text and "railcar_inflight_streams 0.0" in text


async def test_guard_abort_between_events_closes_upstream(make_config, start_sidecar):
    class AbortingGuard(PassThrough):
        inspects = True

        def open_stream(self, ex, sink, abort):
            class S:
                stopped = False
                n = 0

                async def on_events(self, events):
                    for raw, _data in events:
                        self.n += 1
                        await sink.send(raw)
                        if self.n == 2:  # a background check fails while the proxy waits for the next event
                            asyncio.get_running_loop().call_later(0.02, lambda: asyncio.ensure_future(self.block()))
                    return len(events)

                async def block(self):
                    await sink.send(b'data: {"error": {"message": "blocked"}}\n\ndata: [DONE]\n\n')
                    self.stopped = True
                    abort()

                async def on_end(self):
                    pass

            return S()

    async with ReplayUpstream(synthetic=True, tokens=100, delay_s=0.1) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=AbortingGuard())
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True)) as r:
                body = await asyncio.wait_for(r.read(), 2)
        await asyncio.wait_for(up.disconnected.wait(), 2)
    assert body.count(b'"tok "') == 2 and body.endswith(b'"blocked"}}\n\ndata: [DONE]\n\n')
    assert b"upstream" not in body  # a block, not reported as an upstream failure


async def _one_write_upstream(frames: list[bytes], gate: asyncio.Event):
    """A loopback upstream that writes ``frames[:-1]`` in one write, waits for ``gate``, then the last frame."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"".join(frames[:-1]))
        await gate.wait()
        await resp.write(frames[-1])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/v1"


async def test_guarded_stream_writes_one_http_chunk_per_upstream_read(make_config, start_sidecar):
    # 60 events in one upstream write: the stream guard sends each one through the sink, and the client still
    # gets them as one HTTP chunk (one write), before the upstream sends its last frame.
    frames = [b'data: {"choices":[{"index":0,"delta":{"content":"t%d "}}]}\n\n' % i for i in range(60)]
    frames.append(b"data: [DONE]\n\n")
    gate = asyncio.Event()
    runner, base = await _one_write_upstream(frames, gate)
    try:
        sc = await start_sidecar(make_config(upstream={"base_url": base}), guard=ScriptedGuard())
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json={**CHAT, "stream": True}) as r:
                assert r.status == 200
                first = b""
                chunks = 0
                async for data, end_of_chunk in r.content.iter_chunks():
                    first += data
                    chunks += end_of_chunk
                    if len(first) >= len(b"".join(frames[:-1])):
                        break
                assert first == b"".join(frames[:-1])  # all of the first read, before the gate opened
                assert chunks <= 3, chunks  # per-event writes would make this 60
                gate.set()
                rest = await r.read()
        assert rest == frames[-1]
    finally:
        gate.set()
        await runner.cleanup()


async def test_sink_holds_then_writes_once_and_passes_through_otherwise():
    class Resp:
        def __init__(self):
            self.writes: list[bytes] = []
            self.fail = False

        async def write(self, data: bytes) -> None:
            if self.fail:
                raise ConnectionResetError("gone")
            self.writes.append(data)

    resp = Resp()
    sink = _Sink(resp)  # type: ignore[arg-type]
    await sink.send(b"a")  # not held: written at once
    sink.hold()
    await sink.send(b"b")
    await sink.send(b"c")
    assert resp.writes == [b"a"]
    await sink.flush()
    await sink.flush()  # nothing held: no empty write
    assert resp.writes == [b"a", b"bc"]
    await sink.send(b"d")
    assert resp.writes[-1] == b"d"
    resp.fail = True
    sink.hold()
    await sink.send(b"e")  # held: the failure shows at flush
    try:
        await sink.flush()
    except ClientGone:
        pass
    else:
        raise AssertionError("flush to a closed client must raise ClientGone")


async def test_failing_check_response_answers_500_in_openai_shape(make_config, start_sidecar):
    """A guard whose response check raises fails closed with the OpenAI error shape, like check_request."""

    class Broken(PassThrough):
        async def check_response(self, ex, body):
            raise RuntimeError("rail backend down")

    col = Collect()
    async with ReplayUpstream(synthetic=True, tokens=3) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=Broken(), observers=[col])
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
                status, body = r.status, await r.json(content_type=None)
    assert status == 500
    assert body == {"error": {"message": "guardrails check failed", "type": "server_error", "param": None,
                              "code": "guard_error"}}
    assert col.exchanges[0].status == 500 and col.exchanges[0].error == "guard failed: RuntimeError"


async def test_uninspected_stream_is_relayed_as_read_and_recorded_when_observed(make_config, start_sidecar):
    """With a guard that inspects nothing, the stream goes out as the upstream's bytes (reads cut inside events);
    every event's payload is kept for the trace when an observer is there to read it."""
    class Observer:
        def __init__(self):
            self.exchanges = []

        def exchange_finished(self, ex):
            self.exchanges.append(ex)

    watched = Observer()
    async with ReplayUpstream(synthetic=True, tokens=20, split=7) as up:
        cfg = make_config(upstream={"base_url": up.base_url})
        bodies = []
        async with aiohttp.ClientSession() as s:
            for sc in (await start_sidecar(cfg, observers=[watched]), await start_sidecar(cfg)):
                async with s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True)) as r:
                    bodies.append(await r.read())
            async with s.post(up.base_url + "/chat/completions", json=dict(CHAT, stream=True)) as r:
                direct = await r.read()
    assert bodies == [direct, direct]
    (ex,) = watched.exchanges
    payloads = [d for _, d in split_events(direct) if d is not None]
    assert len(payloads) > 20 and ex.stream_data == payloads


async def test_whole_answer_spelling_a_key_twice_is_not_relayed(make_config, start_sidecar):
    # The hold-back judged the last "content" (orjson's reading); the raw body relayed as it came would hand a
    # reader that keeps the first duplicate the key. The agent gets the API's 502 instead.
    key = "AKIA" + "Q3VZ7XKM" + "2PLRW5TN"
    body = (b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
            b'"finish_reason":"stop","message":{"role":"assistant","content":"' + key.encode()
            + b'","content":"fine"}}]}')

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        up = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        sc = await start_sidecar(make_config(upstream={"base_url": up}), guard=holdback_guard())
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=CHAT) as r:
                got = await r.read()
                assert r.status == 502
        assert key.encode() not in got and orjson.loads(got)["error"]["code"] == "upstream_not_json"
    finally:
        await runner.cleanup()
