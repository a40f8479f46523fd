"""``railcar serve`` fails closed by default (issue 13, item 4).

Table-driven over ``guardrails.config_path``: unset and ``"default"`` run the bundled rails (a planted key streamed
by the upstream never reaches the client, ``/readyz`` carries no warning); ``"none"`` runs without rails, and says
so: a WARNING record at start and a ``warning`` in ``/readyz``'s body. A misspelt section
(``RAILCAR_GUARDRAIL_CONFIG_PATH``) stops the process with exit 2 and the nearest setting's name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import aiohttp
import orjson
import pytest
from ports import free_port

from railcar.commands.serve import NO_RAILS_WARNING, serve
from railcar.tools.replay_upstream import ReplayUpstream

PLANTED = "AKIAZ3MHQWERTYXU4ABC"
CASES = {  # config_path (None: unset) -> (key delivered to the client, warning expected)
    "unset": (None, False, False),
    "default": ("default", False, False),
    "none": ("none", True, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_config_path_default_is_rails_and_none_is_said(case, make_config, tmp_path, caplog) -> None:
    config_path, delivered, warned = CASES[case]
    caplog.set_level(logging.INFO, "railcar.sidecar")
    port = free_port()
    async with ReplayUpstream(synthetic=True, text=f"the deploy key is {PLANTED} for the bucket", chunk_chars=3) as up:
        cfg = make_config(server={"port": port, "grace_period_s": 1.0}, upstream={"base_url": up.base_url},
                          telemetry={"enabled": False}, fileset={"root": str(tmp_path / "fs")},
                          **({"guardrails": {"config_path": config_path}} if config_path else {}))
        stop = asyncio.Event()
        task = asyncio.ensure_future(serve(cfg, stop))
        try:
            async with aiohttp.ClientSession() as http:
                ready = await _ready(http, port, task)
                async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                     json={"model": "m", "stream": True,
                                           "messages": [{"role": "user", "content": "the key please"}]}) as r:
                    streamed = await r.read()
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 30) == 0
    assert (PLANTED in _content(streamed)) is delivered
    assert (ready.get("warning") == NO_RAILS_WARNING) is warned and ("warning" in ready) is warned
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == NO_RAILS_WARNING]
    assert bool(warnings) is warned
    guard = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ready: guard "))
    assert guard == ("ready: guard PassThrough" if warned else "ready: guard RailsGuard")


def _content(stream: bytes) -> str:
    """The answer's text: every ``delta.content`` of the stream's chunks, joined (the key spans deltas)."""
    out = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in orjson.loads(line[6:]).get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


async def _ready(http: aiohttp.ClientSession, port: int, task: asyncio.Future) -> dict:
    """``/readyz``'s body once it answers 200 (the guard built); bounded by 400 polls."""
    for _ in range(400):
        assert not task.done(), task.exception()
        try:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return await r.json()
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("never ready")


def test_a_misspelt_section_stops_serve_with_the_nearest_setting(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    env.update(RAILCAR_GUARDRAIL_CONFIG_PATH="none", RAILCAR_UPSTREAM_BASE_URL="http://127.0.0.1:9/v1")
    out = subprocess.run([sys.executable, "-m", "railcar", "serve"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "RAILCAR_GUARDRAIL_CONFIG_PATH: unknown setting (did you mean RAILCAR_GUARDRAILS_CONFIG_PATH?" in out.stderr
    assert "Traceback" not in out.stderr and "listening on" not in out.stderr
