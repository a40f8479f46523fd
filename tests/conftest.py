"""Shared fixtures for every room's tests: recorded traffic, the replay upstream, a running sidecar.

- ``recorded_path`` / ``records`` (session): ``../shared/fixtures/recorded/chat_completions.jsonl`` and its
  records (list of dicts; see that directory's README).
- ``replay_upstream``: a :class:`sidecar.replay_upstream.ReplayUpstream` replaying every record, with synthetic
  streams for unmatched requests (``x-synthetic-tokens``), on an ephemeral loopback port.
- ``make_config(**sections)``: a validated ``RailcarConfig`` from ``{"server": {...}, "upstream": {...}}``-style
  dicts (keys as in TOML), never reading the real environment.
- ``start_sidecar(config, guard=PassThrough(), observers=())``: an async factory running the sidecar app on an
  ephemeral port; returns a :class:`RunningSidecar` (``base_url``, ``url(path)``, ``app``); stopped at teardown.
- ``sidecar``: a running pass-through sidecar in front of ``replay_upstream``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pytest
from aiohttp import web

from sidecar.app import create_app
from sidecar.config import RailcarConfig, load_config
from sidecar.guard import PassThrough
from sidecar.replay_upstream import ReplayUpstream, load_records

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RECORDED = SHARED / "fixtures" / "recorded" / "chat_completions.jsonl"


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
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                               shutdown_timeout=config.server.grace_period_s)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        started.append(runner)
        return RunningSidecar(app, runner, runner.addresses[0][1])

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
