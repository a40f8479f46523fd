"""Failures of issue 2 point 6: bad requests, size limit, upstream unreachable/timeout/reset, client disconnect,
SIGTERM grace with a real ``railcar serve`` subprocess. Every error body is in the OpenAI shape."""

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

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}




def assert_openai_error(body: dict, param=None) -> dict:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["param"] == param
    return body["error"]


@pytest.mark.parametrize("data, param, needle", [
    (b'{"model": "m", "messages": [', None, "not valid JSON"),
    (b'[1, 2]', None, "JSON object"),
    (b'{"messages": []}', "model", "'model'"),
    (b'{"model": 3, "messages": []}', "model", "'model'"),
    (b'{"model": "m"}', "messages", "'messages'"),
    (b'{"model": "m", "messages": {}}', "messages", "'messages'"),
    (b'{"model": "m", "messages": [], "guardrails": "x"}', "guardrails", "'guardrails'"),
])
async def test_bad_request_400(sidecar, replay_upstream, data, param, needle):
    async with aiohttp.ClientSession() as s:
        async with s.post(sidecar.base_url + "/chat/completions", data=data,
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400
            err = assert_openai_error(await r.json(), param)
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert replay_upstream.requests == []  # nothing went upstream


async def test_body_over_limit_413(replay_upstream, make_config, start_sidecar):
    sc = await start_sidecar(make_config(server={"max_body_bytes": 2000}, upstream={"base_url": replay_upstream.base_url}))
    big = dict(CHAT, messages=[{"role": "user", "content": "x" * 5000}])
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.base_url + "/chat/completions", json=big) as r:
            assert r.status == 413
            assert assert_openai_error(await r.json())["code"] == "request_too_large"

        async def chunked():  # no Content-Length: the limit applies while reading
            for _ in range(5):
                yield b"x" * 1000

        async with s.post(sc.base_url + "/embeddings", data=chunked()) as r:
            assert r.status == 413
    assert replay_upstream.requests == []


async def test_upstream_unreachable_502(make_config, start_sidecar):
    sc = await start_sidecar(make_config(upstream={"base_url": f"http://127.0.0.1:{free_port()}/v1"}))
    async with aiohttp.ClientSession() as s:
        for path in ("/chat/completions", "/models"):
            async with s.request("POST" if "chat" in path else "GET", sc.base_url + path, json=CHAT) as r:
                assert r.status == 502
                err = assert_openai_error(await r.json())
                assert err["code"] == "upstream_unreachable" and err["type"] == "upstream_error"


async def test_upstream_timeout_504(make_config, start_sidecar):
    async with ReplayUpstream(synthetic=True) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url, "read_timeout_s": 0.3}))
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            async with s.post(sc.base_url + "/chat/completions", json=CHAT, headers={"x-replay-fault": "hang"}) as r:
                assert r.status == 504
                assert assert_openai_error(await r.json())["code"] == "upstream_timeout"
            assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("fault, code", [("hang-after-first", "upstream_timeout"), ("reset", "upstream_unreachable")])
async def test_upstream_fails_mid_stream_error_event(make_config, start_sidecar, fault, code):
    async with ReplayUpstream(synthetic=True, tokens=50) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url, "read_timeout_s": 0.3}))
        async with aiohttp.ClientSession() as s:
            async with s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True),
                              headers={"x-replay-fault": fault}) as r:
                assert r.status == 200
                body = await r.read()
    first, _, rest = body.partition(b"\n\n")
    assert first.startswith(b"data: {") and b'"tok "' in first
    assert rest.startswith(b"data: {\"error\"") and code.encode() in rest and rest.endswith(b"\n\n")


async def test_client_disconnect_closes_upstream(make_config, start_sidecar):
    class Recorder:
        def __init__(self):
            self.done = asyncio.Event()
            self.exchanges = []

        def exchange_finished(self, ex):
            self.exchanges.append(ex)
            self.done.set()

    rec = Recorder()
    async with ReplayUpstream(synthetic=True, tokens=2000, delay_s=0.01) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), observers=[rec])
        async with aiohttp.ClientSession() as s:
            r = await s.post(sc.base_url + "/chat/completions", json=dict(CHAT, stream=True))
            got = 0
            async for _ in r.content.iter_any():
                got += 1
                if got >= 3:
                    break
            t0 = time.monotonic()
            r.close()  # the agent goes away mid-stream
            await asyncio.wait_for(up.disconnected.wait(), 2)
            took = time.monotonic() - t0
            await asyncio.wait_for(rec.done.wait(), 2)
        assert took < 1.0 and up.disconnects == [1] and up.completed == 0 and up.active == 0
        ex = rec.exchanges[0]
        assert ex.error == "client disconnected" and ex.status == 200 and 3 <= len(ex.stream_data) < 2000
        assert 'railcar_inflight_streams 0.0' in sc.app["state"].metrics.render().decode()


def _start_serve(port: int, upstream: str, grace: float) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    env.update(RAILCAR_UPSTREAM_BASE_URL=upstream, RAILCAR_SERVER_PORT=str(port),
               RAILCAR_GUARDRAILS_CONFIG_PATH="none",
               RAILCAR_SERVER_GRACE_PERIOD_S=str(grace), RAILCAR_SERVER_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "railcar", "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


async def _wait_ready(s: aiohttp.ClientSession, port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            async with s.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
                assert r.status == 503
        except aiohttp.ClientConnectorError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("railcar serve never became ready")


@pytest.mark.parametrize("grace, tokens, completes", [(10.0, 60, True), (0.5, 2000, False)])
async def test_sigterm_grace_subprocess(grace, tokens, completes):
    port = free_port()
    async with ReplayUpstream(synthetic=True, delay_s=0.02) as up:
        proc = _start_serve(port, up.base_url, grace)
        try:
            async with aiohttp.ClientSession() as s:
                await _wait_ready(s, port, proc)
                r = await s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=dict(CHAT, stream=True),
                                 headers={"x-synthetic-tokens": str(tokens)})
                assert r.status == 200
                first = await r.content.readany()
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                with pytest.raises(aiohttp.ClientConnectionError):  # no longer accepting
                    async with aiohttp.ClientSession() as s2:
                        await s2.get(f"http://127.0.0.1:{port}/healthz")
                try:
                    body = first + await r.read()
                except aiohttp.ClientPayloadError:
                    body = first
                rc = await asyncio.to_thread(proc.wait, 15)
                took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc == 0
    if completes:
        assert body.endswith(b"data: [DONE]\n\n") and body.count(b'"tok "') == tokens
    else:
        assert b"[DONE]" not in body and took < grace + 3
        assert up.disconnects  # the upstream generation was stopped, not orphaned
