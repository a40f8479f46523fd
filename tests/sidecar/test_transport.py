"""The sidecar's server transport (:mod:`railcar.sidecar.transport`), over real sockets.

- every rejection aiohttp makes itself (parser-level: a 70 KB header line, 5000 headers, a garbled request line,
  an 10 KB request target; the router's 404 / 405; a handler bug's 500) reaches the client in the OpenAI error
  shape as JSON, and no byte of the rejected request (a planted token) reaches any log record;
- the read watchdog: slow headers and a slow body get a 408 in the OpenAI shape and a closed connection; an idle
  keep-alive connection is not a slow request;
- the idle cap closes the least recently used idle connections past ``server.max_idle_connections``;
- slowloris: 300 slow-header connections are all closed within ``server.read_timeout_s`` (plus the loop's lag)
  while the agent's real ``openai`` requests go through the sidecar and succeed;
- with ``nofile = 256`` (``resource.setrlimit`` in a ``railcar serve`` subprocess) 300 slow-header connections
  cannot starve the agent: its request succeeds once the watchdog frees the descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import subprocess
import sys
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from ports import free_port
from shared_fixtures import ROOT

from railcar.sidecar import transport
from railcar.sidecar.settings import ServerConfig
from railcar.tools.replay_upstream import ReplayUpstream

TOKEN = "sk-live-PLANTEDTOKEN0123456789abcdef"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _echo(request: web.Request) -> web.Response:
    return web.json_response({"got": len(await request.read())})


async def _bug(request: web.Request) -> web.Response:
    raise RuntimeError(f"a handler bug that quotes the request: {request.headers.get('x-token')}")


@pytest.fixture
async def serve_app():
    """Factory ``start(read_timeout_s=5, max_idle_connections=128) -> SidecarRunner`` over a small app (``/echo``
    any method, ``/bug`` raises, ``/only-get`` GET only) with aiohttp's request limits as ``create_app`` sets them."""
    runners: list[transport.SidecarRunner] = []

    async def start(read_timeout_s: float = 5.0, max_idle_connections: int = 128) -> transport.SidecarRunner:
        app = web.Application(handler_args={"max_field_size": 65536})
        app.router.add_route("*", "/echo", _echo)
        app.router.add_get("/bug", _bug)
        app.router.add_get("/only-get", _echo)
        cfg = ServerConfig(read_timeout_s=read_timeout_s, max_idle_connections=max_idle_connections)
        runners.append(await transport.start(app, cfg, host="127.0.0.1", port=0))
        return runners[-1]

    yield start
    for r in runners:
        await r.cleanup()


async def _raw(port: int, data: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` on a new connection and read until the server closes it: ``(status, headers, body)``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
    return _parse(raw)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def _openai_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].startswith("application/json")
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert TOKEN not in err["message"]
    return err


def _no_token_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in caplog.records:
        text = formatter.format(record)  # message, arguments and any traceback
        assert TOKEN not in text and TOKEN[:16] not in text, text


REJECTS = {
    "70 KB header line": (b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"A" * 70_000
                          + b"\r\n\r\n", 431, "header_too_large"),
    "5000 headers": (b"GET /echo HTTP/1.1\r\nHost: x\r\n"
                     + b"".join(b"X-H%d: %s\r\n" % (i, TOKEN.encode()) for i in range(5000)) + b"\r\n",
                     431, "too_many_headers"),
    "garbled request line": (b"GE\x01T /" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "10 KB request target": (b"GET /" + TOKEN.encode() + b"A" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                             431, "header_too_large"),
    "bad chunked body": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz" + TOKEN.encode()
                         + b"\r\n", 400, "bad_request"),
    "unknown path": (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    "wrong method": (b"POST /only-get HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405,
                     "method_not_allowed"),
    "handler bug": (b"GET /bug HTTP/1.1\r\nHost: x\r\nX-Token: " + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n",
                    500, None),
}


@pytest.mark.parametrize("case", sorted(REJECTS))
async def test_every_rejection_is_openai_json_and_no_request_byte_is_logged(case, serve_app, caplog) -> None:
    data, status, code = REJECTS[case]
    runner = await serve_app()
    caplog.set_level(logging.DEBUG)
    got, headers, body = await _raw(runner.port, data)
    assert got == status
    err = _openai_error(headers, body)
    assert err["code"] == code and err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if status == 405:
        assert "GET" in headers["allow"]
    if status not in (404, 405):  # the router's answers are no incident; aiohttp's own rejects are logged ...
        assert caplog.records
    _no_token_in_logs(caplog)  # ... without a byte of the request


def test_aiohttp_server_records_are_rewritten_without_content(caplog) -> None:
    transport.install_log_filter()
    caplog.set_level(logging.DEBUG)
    try:
        raise ValueError(f"Got more than 8190 bytes when reading: b'Authorization: Bearer {TOKEN}'")
    except ValueError as exc:
        logging.getLogger("aiohttp.server").error("Error handling request from %s: %s", "127.0.0.1", TOKEN,
                                                  exc_info=exc)
    logging.getLogger("aiohttp.access").info('%s "GET /?key=%s HTTP/1.1" 200', "127.0.0.1", TOKEN)
    assert [r.name for r in caplog.records] == ["aiohttp.server", "aiohttp.access"]
    assert "(ValueError)" in caplog.records[0].getMessage()
    _no_token_in_logs(caplog)


@pytest.mark.parametrize("partial, phase", [
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Le", "headers"),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789", "body"),
    (b"", "headers"),  # connected, never sent a byte
])
async def test_a_slow_request_gets_408_and_a_closed_connection(partial, phase, serve_app, caplog) -> None:
    runner = await serve_app(read_timeout_s=0.5)
    caplog.set_level(logging.INFO, "railcar.sidecar")
    status, headers, body = await _raw(runner.port, partial, timeout_s=5.0)  # bounded: EOF, not the bound
    assert status == 408 and headers["connection"] == "close"
    assert _openai_error(headers, body)["code"] == "request_timeout"
    assert any(f"request {phase} not received" in r.getMessage() for r in caplog.records)


async def test_an_idle_keepalive_connection_is_not_a_slow_request(serve_app) -> None:
    runner = await serve_app(read_timeout_s=0.3)
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{runner.port}/echo"
        async with s.post(url, data=b"abc") as r:
            assert r.status == 200 and await r.json() == {"got": 3}
        await asyncio.sleep(0.6)  # idle past read_timeout_s: still the same open connection
        assert runner.server is not None and len(runner.server.connections) == 1
        async with s.post(url, data=b"abcd") as r:
            assert r.status == 200 and await r.json() == {"got": 4}
        assert len(runner.server.connections) == 1


async def test_idle_connections_past_the_cap_are_closed_oldest_first(serve_app) -> None:
    runner = await serve_app(max_idle_connections=2)
    conns = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(int(_parse(head)[1]["content-length"])), 5)
        conns.append((reader, writer))
    # The first two were evicted (EOF), the last two are open and still serve requests.
    for reader, _ in conns[:2]:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    for reader, writer in conns[2:]:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    for _, writer in conns:
        writer.close()


def test_the_connection_budget_is_half_the_descriptor_limit() -> None:
    assert [transport.connection_budget(n) for n in (64, 256, 1024)] == [16, 112, 496]
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert transport.TransportLimits.of(ServerConfig()).max_connections == transport.connection_budget(soft)


async def test_past_the_budget_the_longest_waiting_slow_connection_is_shed() -> None:
    app = web.Application()
    app.router.add_get("/echo", _echo)
    runner = transport.SidecarRunner(app, transport.TransportLimits(30.0, 128, max_connections=3))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        slow = []
        for _ in range(3):  # the budget, taken by slow clients
            reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            slow.append((reader, writer))
            await asyncio.sleep(0.05)  # accepted in this order
        # The agent's connection is the fourth: the slow one waiting longest is shed (503), the agent served.
        status, headers, body = await _raw(runner.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status == 200
        status, headers, body = _parse(await asyncio.wait_for(slow[0][0].read(), 5))
        assert status == 503 and _openai_error(headers, body)["code"] == "too_many_connections"
        reader, writer = slow[1]  # the others keep their place: this one finishes its request and is answered
        writer.write(b"\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        for _, writer in slow:
            writer.close()
    finally:
        await runner.cleanup()


async def _slow_header(port: int) -> float:
    """One slowloris connection: a partial request, then a header byte every 0.2 s until the server closes it;
    returns how long after connecting it was closed (to within 0.2 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    try:
        while True:
            try:
                writer.write(b"a")
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:  # EOF: the server closed it (after its 408)
                break
        return time.monotonic() - t0
    finally:
        writer.close()


async def test_slowloris_300_connections_are_closed_in_time_and_the_agent_is_served(make_config,
                                                                                   start_sidecar) -> None:
    read_timeout_s, n = 2.0, 300
    async with ReplayUpstream(synthetic=True, tokens=8) as up:
        sc = await start_sidecar(make_config(server={"read_timeout_s": read_timeout_s, "grace_period_s": 1.0},
                                             upstream={"base_url": up.base_url}))
        answers = []
        async with openai.AsyncOpenAI(base_url=sc.base_url, api_key="k", max_retries=0, timeout=20.0) as client:
            # The SDK's first call builds its models for a second or two, in this (the server's) event loop:
            # made before the attack, so the watchdog's timers are not delayed by the test's own client.
            answers.append(await client.chat.completions.create(**CHAT))
            slow = [asyncio.ensure_future(_slow_header(sc.port)) for _ in range(n)]
            await asyncio.sleep(0.5)  # every slow connection is open and trickling
            for _ in range(5):  # the agent, while the 300 hold their sockets
                answers.append(await client.chat.completions.create(**CHAT))
                stream = await client.chat.completions.create(**CHAT, stream=True)
                answers.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
        # Bounded: each slow connection ends by itself at read_timeout_s; the wait only caps a failure.
        closed_after = await asyncio.wait_for(asyncio.gather(*slow), read_timeout_s + 20)
    assert all(a for a in answers) and answers[0].choices[0].message.content
    assert len(closed_after) == n
    # Closed by the watchdog (not by the test's cap): within read_timeout_s plus the loop's lag under 600 sockets.
    assert max(closed_after) < read_timeout_s + 3.0, max(closed_after)
    assert min(closed_after) >= read_timeout_s * 0.9


def _limit_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


async def test_a_low_nofile_limit_cannot_be_starved_by_slow_connections(tmp_path) -> None:
    port, n = free_port(), 300
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    env.update(RAILCAR_SERVER_PORT=str(port), RAILCAR_SERVER_READ_TIMEOUT_S="2", RAILCAR_SERVER_LOG_LEVEL="warning",
               RAILCAR_GUARDRAILS_CONFIG_PATH="none", RAILCAR_TELEMETRY_ENABLED="false",
               RAILCAR_FILESET_ROOT=str(tmp_path / "fs"))
    log = tmp_path / "serve.log"
    async with ReplayUpstream(synthetic=True, tokens=4) as up:
        env["RAILCAR_UPSTREAM_BASE_URL"] = up.base_url
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "railcar", "serve"], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=fh, preexec_fn=_limit_nofile)
        try:
            async with aiohttp.ClientSession() as http:
                await _wait_ready(http, port, proc, log)
                slow = [asyncio.ensure_future(_slow_header(port)) for _ in range(n)]
                await asyncio.sleep(0.5)  # more slow connections than the process has descriptors
                async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT,
                                     timeout=aiohttp.ClientTimeout(total=30)) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["choices"][0]["message"]["content"]
                await asyncio.wait_for(asyncio.gather(*slow), 30)
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 20)
    assert proc.returncode == 0, log.read_text()


async def _wait_ready(http: aiohttp.ClientSession, port: int, proc: subprocess.Popen, log) -> None:
    for _ in range(400):
        assert proc.poll() is None, log.read_text()
        try:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("railcar serve never became ready:\n" + log.read_text())
