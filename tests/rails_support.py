"""Shared helpers of the rails guard tests (tests/rails/test_guard.py, tests/rails/test_stream_guard.py, ...): an
in-memory stream sink, OpenAI chunk frames, guards built from inline guardrail configs, and a stream driver."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from shared_fixtures import RECORDED_CHAT

from railcar.core.exchange import Exchange
from railcar.rails import detectors as det
from railcar.rails.engine_local import LocalEngine
from railcar.rails.guard import RailsGuard
from railcar.rails.guardrails_config import load_guardrails_config
from railcar.rails.inline import HoldBack
from railcar.rails.scanner import Scanner
from railcar.rails.settings import GuardrailsConfig
from railcar.sidecar.sse import split_events

RECORDED = RECORDED_CHAT
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_PATTERN_YAML = textwrap.dedent("""
    rails:
      config:
        regex_detection:
          output:
            patterns: ["AKIA[0-9A-Z]{16}"]
      output:
        flows: [regex check output]
        streaming:
          enabled: true
          chunk_size: %(chunk)d
          context_size: %(context)d
          stream_first: %(first)s
""")

# Output rails that never fire (``% "true"`` / ``% "false"`` for stream_first): whatever stops a value is the inline
# hold-back.
NEVER_FIRING_RAILS = """
rails:
  config:
    regex_detection:
      output:
        patterns: ["NEVER-MATCHES-[0-9]{40}"]
  output:
    flows: [regex check output]
    streaming: {enabled: true, chunk_size: 4, context_size: 2, stream_first: %s}
"""

class Sink:
    """In-memory :class:`railcar.core.guard.StreamSink`."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    async def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    @property
    def body(self) -> bytes:
        return b"".join(self.frames)

    def text(self) -> str:
        out = []
        for _, data in split_events(self.body):
            if data and data != b"[DONE]":
                obj = orjson.loads(data)
                for c in obj.get("choices") or []:
                    content = (c.get("delta") or {}).get("content") or ""
                    out.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
        return "".join(out)


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def stream_of(deltas: list[str]) -> list[bytes]:
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": d}) for d in deltas]
    frames += [chunk({}, "stop"), b"data: [DONE]\n\n"]
    return frames


def split_secret(prefix_deltas: int, parts: int, suffix_deltas: int) -> list[str]:
    pieces = [AWS_KEY[i * len(AWS_KEY) // parts:(i + 1) * len(AWS_KEY) // parts] for i in range(parts)]
    return [f"w{i} " for i in range(prefix_deltas)] + pieces + [f" x{i}" for i in range(suffix_deltas)]


def guard_for(yaml_text: str, **settings: Any) -> RailsGuard:
    gs = GuardrailsConfig(config_inline=yaml_text, **settings)
    loaded = load_guardrails_config(gs)
    return RailsGuard(gs, loaded, LocalEngine(loaded))


def secret_guard(chunk_size: int, context: int, first: bool) -> RailsGuard:
    return guard_for(SECRET_PATTERN_YAML % {"chunk": chunk_size, "context": context, "first": str(first).lower()})


async def run_stream(guard: RailsGuard, frames: list[bytes], body: dict | None = None,
                     options: dict | None = None) -> tuple[Sink, Any, Exchange]:
    ex = Exchange(body=body or {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                  guardrails_options=options)
    sink = Sink()
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    for raw in frames:  # one upstream read per frame, as the proxy hands them over (StreamGuard.on_events)
        await sg.on_events(split_events(raw))
        if sg.stopped:
            break
    await sg.on_end()
    return sink, sg, ex


class FramesUpstream:
    """A loopback OpenAI-compatible upstream streaming ``frames`` ``delay_s`` apart (``sent`` counts them);
    ``disconnected`` is set when the client (the proxy) drops the connection before the end. A non-streaming request
    gets a ``chat.completion`` whose content is ``answer``."""

    def __init__(self, frames: list[bytes], delay_s: float = 0.001, answer: str = "") -> None:
        self.frames, self.delay_s, self.answer = frames, delay_s, answer
        self.disconnected = asyncio.Event()
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                          "role": "assistant", "content": self.answer}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for f in self.frames:
                await resp.write(f)
                self.sent += 1
                await asyncio.sleep(self.delay_s)
        except (ConnectionError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp

    async def __aenter__(self) -> FramesUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.runner.cleanup()


async def relay_raw(client: Any, rec: dict[str, Any]) -> bytes:
    """Send recorded interaction ``rec``'s request through ``client`` (an ``openai.AsyncOpenAI`` pointed at the
    sidecar, in front of a replay upstream) and return the raw response bytes the client received."""
    extra = dict(rec["request"])
    raw = await client.chat.completions.with_raw_response.create(
        model=extra.pop("model"), messages=extra.pop("messages"), stream=extra.pop("stream"),
        extra_body=extra, extra_headers={"x-replay-id": rec["id"]})
    return await raw.http_response.aread()


_HOLDBACK_GUARDS: dict[tuple[bool, str], RailsGuard] = {}
_HOLDBACK_LOOP: list[Any] = [None]


def holdback_guard(first: bool = True, action: str = "block") -> RailsGuard:
    """Rails that never fire (:data:`NEVER_FIRING_RAILS`) plus the real inline hold-back of the catalog's secrets
    (``action``: ``block`` | ``redact``), one per event loop (the rails engine keeps loop-bound state: a guard is not
    shared across the tests' loops)."""
    loop = asyncio.get_running_loop()
    if _HOLDBACK_LOOP[0] is not loop:
        _HOLDBACK_GUARDS.clear()
        _HOLDBACK_LOOP[0] = loop
    if (first, action) not in _HOLDBACK_GUARDS:
        g = guard_for(NEVER_FIRING_RAILS % str(first).lower())
        g.filter_factory = HoldBack(Scanner(det.select(["secret"]), b"k" * 32), action)
        _HOLDBACK_GUARDS[first, action] = g
    return _HOLDBACK_GUARDS[first, action]
