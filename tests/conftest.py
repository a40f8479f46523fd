"""Shared fixtures for every room's tests: recorded traffic, the replay upstream, a running sidecar.

- ``recorded_path`` / ``records`` (session): ``../shared/fixtures/recorded/chat_completions.jsonl`` and its
  records (list of dicts; see that directory's README).
- ``replay_upstream``: a :class:`railcar.tools.replay_upstream.ReplayUpstream` replaying every record, with synthetic
  streams for unmatched requests (``x-synthetic-tokens``), on an ephemeral loopback port.
- ``make_config(**sections)``: a validated ``RailcarConfig`` from ``{"server": {...}, "upstream": {...}}``-style
  dicts (keys as in TOML), never reading the real environment.
- ``start_sidecar(config, guard=PassThrough(), observers=())``: an async factory running the sidecar app on an
  ephemeral port; returns a :class:`RunningSidecar` (``base_url``, ``url(path)``, ``app``); stopped at teardown.
- ``sidecar``: a running pass-through sidecar in front of ``replay_upstream``.
- ``railcar_process(command, env)``: a factory starting ``railcar serve`` / ``railcar consume`` as a real
  subprocess on a free loopback port, returning a :class:`RailcarProcess` (``base``, ``wait_ready``, ``stop``);
  any still running is killed at teardown.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from ports import free_port
from shared_fixtures import RECORDED_CHAT, ROOT

from railcar.core.guard import PassThrough
from railcar.settings import RailcarConfig, load_config
from railcar.sidecar import transport
from railcar.sidecar.app import create_app
from railcar.tools.replay_upstream import ReplayUpstream, load_records

RECORDED = RECORDED_CHAT


@pytest.fixture(scope="session")
def recorded_path() -> Path:
    return RECORDED


@pytest.fixture(scope="session")
def records(recorded_path: Path) -> list[dict[str, Any]]:
    return load_records(recorded_path)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + "}"
    raise TypeError(type(v))


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a config through the real loader (TOML file + an explicit, otherwise empty environment)."""

    def make(environ: dict[str, str] | None = None, **sections: dict[str, Any]) -> RailcarConfig:
        lines = []
        for name, table in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        path = tmp_path / f"railcar-{len(list(tmp_path.glob('railcar-*.toml')))}.toml"
        path.write_text("\n".join(lines) + "\n")
        tomllib.loads(path.read_text())  # fail here, not in the loader, if the helper wrote bad TOML
        return load_config(path, environ=environ or {})

    return make


@dataclass
class RunningSidecar:
    app: web.Application
    runner: web.AppRunner
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def start_sidecar():
    started: list[web.AppRunner] = []

    async def start(config: RailcarConfig, guard: Any = None, observers: Iterable[Any] = ()) -> RunningSidecar:
        app = create_app(config, guard=guard if guard is not None else PassThrough(), observers=list(observers))
        runner = await transport.start(app, config.server, host="127.0.0.1", port=0, backlog=4096)
        started.append(runner)
        return RunningSidecar(app, runner, runner.port)

    yield start
    for runner in started:
        await runner.cleanup()


@pytest.fixture
async def replay_upstream(records):
    async with ReplayUpstream(records, synthetic=False) as up:
        yield up


@pytest.fixture
async def sidecar(replay_upstream, make_config, start_sidecar) -> RunningSidecar:
    cfg = make_config(server={"grace_period_s": 2.0}, upstream={"base_url": replay_upstream.base_url})
    return await start_sidecar(cfg)



@dataclass
class RailcarProcess:
    """A ``railcar <command>`` subprocess listening on ``127.0.0.1:port``; its stderr goes to ``log`` (a pipe could
    fill up and block it)."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        """What the process wrote to stderr so far (for assertion messages)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_ready(self, http: aiohttp.ClientSession, path: str = "/readyz", timeout_s: float = 20.0) -> None:
        """Poll ``GET path`` every 50 ms until 200; ``AssertionError`` (with the process's stderr) when it exits
        first or after ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            assert self.proc.poll() is None, f"railcar exited with {self.proc.returncode}:\n{self.output()}"
            try:
                async with http.get(self.base + path) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.proc.args} never answered 200 on {path}:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send ``sig`` and return the exit code (``subprocess.TimeoutExpired`` after ``timeout_s``)."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)


@pytest.fixture
def railcar_process(tmp_path: Path):
    """Factory ``start(command, env=None, *, port=None, log_name=None) -> RailcarProcess``: runs
    ``python -m railcar <command>`` from the checkout with the environment minus every ``RAILCAR_*`` variable,
    plus ``RAILCAR_SERVER_PORT`` (``port`` or a free one), ``RAILCAR_SERVER_LOG_LEVEL=warning`` and ``env``;
    stderr in ``tmp_path / log_name`` (default ``<command>-<n>.log``). Processes still running at teardown are
    killed."""
    started: list[RailcarProcess] = []

    def start(command: str, env: Mapping[str, str] | None = None, *, port: int | None = None,
              log_name: str | None = None) -> RailcarProcess:
        port = port or free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
        full.update({"RAILCAR_SERVER_PORT": str(port), "RAILCAR_SERVER_LOG_LEVEL": "warning"})
        full.update(env or {})  # the caller's settings win
        log = tmp_path / (log_name or f"{command}-{len(started)}.log")
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "railcar", command], env=full, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=fh)
        started.append(RailcarProcess(proc, port, log))
        return started[-1]

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
