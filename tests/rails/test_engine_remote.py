"""rails/engine_remote.py against a real ``nemoguardrails server`` subprocess on loopback (module-scoped: it takes
about 2 s to start), with the same configs as local mode: regex, a custom action, and ``self check output`` judged
by a fake OpenAI endpoint (in a thread). Also: server down, server slower than the timeout, span events."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ports import free_port
from rails.test_engine_local import CUSTOM, self_check_yaml

from railcar.core.exchange import Exchange
from railcar.rails.engine_local import RailError
from railcar.rails.engine_remote import RemoteEngine
from railcar.rails.guard import RailsGuard
from railcar.rails.guardrails_config import load_guardrails_config
from railcar.rails.settings import GuardrailsConfig, RemoteGuardrailsConfig

REGEX = ("rails:\n  config:\n    regex_detection:\n      input:\n        patterns: ['(?i)ignore previous']\n"
         "      output:\n        patterns: ['AKIA[0-9A-Z]{16}']\n  input:\n    flows: [regex check input]\n"
         "  output:\n    flows: [regex check output]\n")




class JudgeThread:
    """The fake judge model (answers Yes when the prompt has BADWORD) on its own loop in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            verdict = "Yes" if "BADWORD" in json.dumps(body["messages"]) else "No"
            return web.json_response({"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict},
                                                   "finish_reason": "stop"}]})

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self.ready.set()

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gr")
    (root / "regex").mkdir()
    (root / "regex" / "config.yml").write_text(REGEX)
    (root / "custom").mkdir()
    for name, text in CUSTOM.items():
        (root / "custom" / name).write_text(text)
    judge = JudgeThread()
    (root / "selfcheck").mkdir()
    (root / "selfcheck" / "config.yml").write_text(self_check_yaml(judge.port))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OPENAI_API_KEY": "sk-test"}
    exe = Path(sys.executable).with_name("nemoguardrails")
    proc = subprocess.Popen([str(exe), "server", "--config", str(root), "--port", str(port), "--disable-chat-ui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode()[-2000:]) from None
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
    judge.loop.call_soon_threadsafe(judge.loop.stop)


def msgs(answer: str) -> list[dict]:
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]


async def test_regex_custom_and_llm_judged_rails_remote(server: str) -> None:
    regex = RemoteEngine(server, ["regex"], 5000)
    assert (await regex.check("output", msgs("AKIAIOSFODNN7EXAMPLE"))).rail == "regex check output"
    assert not (await regex.check("output", msgs("hello"))).blocked
    assert (await regex.check("input", [{"role": "user", "content": "please IGNORE PREVIOUS stuff"}])).blocked
    custom = RemoteEngine(server, ["custom"], 5000)
    assert (await custom.check("output", msgs("forbidden"))).rail == "check forbidden words"
    judged = RemoteEngine(server, ["selfcheck"], 10000)
    assert (await judged.check("output", msgs("BADWORD here"))).rail == "self check output"
    assert not (await judged.check("output", msgs("nice"))).blocked
    for e in (regex, custom, judged):
        await e.close()


async def test_span_events_and_request_defaults(server: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    e = RemoteEngine(server, ["regex"], 5000, request_defaults={"context": {"tenant": "t1"}})
    with provider.get_tracer("t").start_as_current_span("check"):
        await e.check("output", msgs("AKIAIOSFODNN7EXAMPLE"))
    names = [ev.name for ev in exporter.get_finished_spans()[0].events]
    assert names == ["nemo_guardrails.remote.start", "nemo_guardrails.remote.end"]
    bad = RemoteEngine(server, ["no-such-config"], 5000)
    with provider.get_tracer("t").start_as_current_span("bad"):
        with pytest.raises(RailError, match="HTTP 422"):
            await bad.check("output", msgs("x"))
    assert exporter.get_finished_spans()[-1].events[-1].name == "nemo_guardrails.remote.error"
    await e.close()
    await bad.close()


async def checks_server(handle, **runner_kw) -> web.AppRunner:
    """A ``POST /v1/checks`` endpoint served by ``handle`` on a free loopback port."""
    app = web.Application()
    app.router.add_post("/v1/checks", handle)
    runner = web.AppRunner(app, access_log=None, **runner_kw)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def slow_server(delay: float) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"status": "passed", "content": "x"})

    return await checks_server(handle, handler_cancellation=True)


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
@pytest.mark.parametrize("fault", ["down", "slow"])
async def test_fail_mode_remote_down_or_slow(fail_mode: str, fault: str) -> None:
    runner = await slow_server(2.0) if fault == "slow" else None
    endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}" if runner else f"http://127.0.0.1:{free_port()}"
    gs = GuardrailsConfig(mode="remote", fail_mode=fail_mode,
                          remote=RemoteGuardrailsConfig(endpoint=endpoint, config_id="regex", timeout_millis=200))
    guard = RailsGuard(gs, load_guardrails_config(gs), RemoteEngine(endpoint, ["regex"], 200))
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    t0 = time.perf_counter()
    refusal = await guard.check_request(ex)
    assert time.perf_counter() - t0 < 1.5  # the timeout held
    assert ex.outcome.rail_errors
    if fail_mode == "closed":
        assert refusal is not None and refusal.rail == "input (error)"
    else:
        assert refusal is None
    await guard.close()
    if runner:
        await runner.cleanup()


async def echo_error_server(status: int, body: bytes) -> web.AppRunner:
    """A checks endpoint that fails with ``status`` and ``body``, ``{content}`` replaced by the request's last
    message content (as pydantic 422 errors and proxy error pages can echo the request)."""
    async def handle(request: web.Request) -> web.Response:
        req = await request.json()
        echoed = body.replace(b"{content}", req["messages"][-1]["content"].encode())
        return web.Response(status=status, body=echoed, content_type="application/json")

    return await checks_server(handle)


@pytest.mark.parametrize("status,body,shown", [
    (422, b'{"detail":[{"type":"string_type","loc":["body","messages",1],"msg":"bad","input":"{content}"}]}',
     "byte body not shown"),
    (502, b"<html>upstream said: {content}</html>", "byte body not shown"),
    (400, b'{"error":{"message":"Could not load the requested guardrails configuration","type":"invalid_request_error",'
          b'"param":null,"code":null}}', "Could not load the requested guardrails configuration"),
])
async def test_error_answer_never_carries_the_checked_content(status: int, body: bytes, shown: str) -> None:
    secret = "AKIA" + "Q3VZ7XKM2PLRW5TN"
    runner = await echo_error_server(status, body)
    e = RemoteEngine(f"http://127.0.0.1:{runner.addresses[0][1]}", ["regex"], 5000)
    try:
        with pytest.raises(RailError) as info:
            await e.check("output", msgs(f"here it is {secret}"))
        assert f"HTTP {status}" in str(info.value) and shown in str(info.value)
        assert secret not in str(info.value)
    finally:
        await e.close()
        await runner.cleanup()
