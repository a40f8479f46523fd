"""``railcar demo``: the whole job on recorded model traffic, on loopback, in one command.

What runs (all in this process, all on ``127.0.0.1``):

1. the replay upstream (:mod:`railcar.tools.replay_upstream`) answering with the recorded interactions of
   ``--recorded`` (Chat Completions) and of the ``responses.jsonl`` / ``anthropic_messages.jsonl`` beside it, else
   of the bundled samples ``railcar/tools/demo_data/recorded_*sample.jsonl`` (whole cassettes from the same
   MIT-licensed pydantic-ai recordings; ``./dev demo`` passes the full recorded set when the checkout has
   ``../shared`` beside it); Chat and Responses calls reach it through ``upstream.base_url``, Anthropic Messages
   calls through ``[upstream.anthropic]`` (its ``base_url`` emptied: the same upstream);
2. an embedded Kafka-protocol broker: librdkafka's mock cluster (:mod:`railcar.tools.mock_broker`);
3. one sidecar per demo agent (``support-agent``, ``coding-agent``, ``research-agent``; the same guard) with the
   default guardrail config (``guardrails.config_path = "default"`` unless the config names another), each with a
   trace recorder publishing redacted OTLP spans to ``otlp_spans`` through one :class:`railcar.streams.producer.Publisher`;
4. the security consumer group (:class:`railcar.streams.consumer.ConsumerGroupWorker`) writing the fileset
   ``<out>/nemo-agent-security/`` and the findings topic.

Sessions: the recorded interactions of each API grouped by the cassette they were recorded in (one agent run
each), in file order, interactions of a session in order, ``--sessions N`` keeps the first N of each API; plus the
leaking sessions of :mod:`railcar.tools.demo_data.leaks`: on Chat Completions a stream leaking an AWS key, a stream
leaking a private key, a tool result with an e-mail address and SSN, a non-streaming answer with a Google API key, a
prompt injection; on the Responses API and Anthropic Messages each a stream leaking a key split across text deltas,
a streamed tool call with an AWS key split across its argument deltas, a prompt injection. Every call goes through
the sidecar with the real SDK of its API (``openai`` ``chat.completions`` / ``responses``, ``anthropic``
``messages``; streaming and not), with ``x-replay-id`` naming the record to replay and a W3C ``traceparent`` whose
trace id identifies the session, so findings map back to sessions.

Outputs under ``--out`` (default ``./railcar-demo``): the fileset, ``report.html`` (:mod:`railcar.tools.report`) and
``demo-summary.json`` (per-session outcome: calls, blocks with rail, the closing frames of blocked streams,
expected and found detectors; masked previews only). A previous demo fileset in ``<out>/nemo-agent-security`` is
replaced. Prints a summary (``rich``). Exit code 0 after a complete run; 1 when the pipeline lost events, a blocked
stream did not end with its API's error frames (Chat: the error chunk then ``[DONE]``; Responses and Anthropic: an
``event: error`` naming the rail), a leaking session's expected block did not happen, or a leaking session produced
no finding.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import logging
import random
import shutil
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web
from prometheus_client import CollectorRegistry
from rich import box
from rich.console import Console
from rich.table import Table

from railcar.commands.demo_calls import CallResult, Clients, Outcomes, Tap, apply_decision, apply_tap, send
from railcar.core.guard import PassThrough
from railcar.rails.guard import RailsGuard, build_guard
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.sidecar import transport
from railcar.sidecar.app import create_app
from railcar.streams import otlp
from railcar.streams.consumer import ConsumerGroupWorker
from railcar.streams.fileset import FILESET
from railcar.streams.pipeline import build_scanner, configured_fileset
from railcar.streams.producer import Publisher
from railcar.streams.recorder import TraceRecorder
from railcar.tools.demo_data.leaks import Leak, build_api_leaks, build_leaks
from railcar.tools.mock_broker import MockCluster
from railcar.tools.replay_upstream import ReplayUpstream, load_records, record_api
from railcar.tools.report import render_report

__all__ = ["main", "run_demo", "find_recorded", "find_recorded_apis", "recorded_sessions", "Session", "CallResult",
           "BUNDLED_SAMPLE", "BUNDLED_APIS", "AGENTS"]

log = logging.getLogger("railcar.demo")

_DEMO_DATA = Path(__file__).resolve().parents[1] / "tools" / "demo_data"
BUNDLED_SAMPLE = _DEMO_DATA / "recorded_sample.jsonl"
# the other APIs' recorded files: their name beside --recorded (as in ../shared/fixtures/recorded), and the bundled
# sample used when there is none
BUNDLED_APIS = {"openai_responses": ("responses.jsonl", _DEMO_DATA / "recorded_responses_sample.jsonl"),
                "anthropic_messages": ("anthropic_messages.jsonl", _DEMO_DATA / "recorded_anthropic_sample.jsonl")}
# a session's name prefix per API (the chat sessions keep their cassette's name)
_PREFIX = {"openai_chat": "", "openai_responses": "responses/", "anthropic_messages": "anthropic/"}
AGENTS = ("support-agent", "coding-agent", "research-agent")
CONCURRENCY = 8


# ---------------------------------------------------------------------------------------------------- inputs


def find_recorded(explicit: str = "") -> Path:
    """The recorded interactions to replay: ``explicit`` if given (``FileNotFoundError`` naming ``--recorded`` if
    it is not a file), else :data:`BUNDLED_SAMPLE`."""
    if not explicit:
        return BUNDLED_SAMPLE
    p = Path(explicit)
    if not p.is_file():
        raise FileNotFoundError(f"--recorded: no such file: {explicit}")
    return p


def find_recorded_apis(chat: Path) -> dict[str, Path]:
    """The recorded Responses and Anthropic Messages files to replay beside the chat file ``chat``: by API, the file
    of :data:`BUNDLED_APIS`' name in ``chat``'s directory when ``chat`` is not the bundled sample and it exists, else
    the bundled sample of that API."""
    out = {}
    for api, (name, bundled) in BUNDLED_APIS.items():
        beside = chat.parent / name
        out[api] = beside if chat != BUNDLED_SAMPLE and beside.is_file() else bundled
    return out


@dataclass
class Session:
    """One agent run to drive: ``calls`` ``[(record_id, request_body)]`` in order; ``trace_id`` 32 hex chars;
    ``leak`` the planted-leak title (``""`` for a clean recorded session); ``expect`` detector ids to be found;
    ``blocks`` the block expected (``"stream"``, ``"output"``, ``"input"`` or ``""``, see
    :class:`railcar.tools.demo_data.leaks.Leak`); ``api`` the wire API of its calls (a codec name)."""

    name: str
    agent: str
    calls: list[tuple[str, dict[str, Any]]]
    trace_id: str
    leak: str = ""
    expect: tuple[str, ...] = ()
    blocks: str = ""
    api: str = "openai_chat"


def recorded_sessions(records: list[dict[str, Any]], limit: int = 0) -> list[Session]:
    """Group ``records`` by API (:func:`railcar.tools.replay_upstream.record_api`) and cassette (``source.repo`` +
    ``source.path``; the record id when absent), in file order; ``limit`` > 0 keeps the first ``limit`` sessions of
    each API. Agents are assigned round robin; names are unique (non-chat ones prefixed ``responses/`` /
    ``anthropic/``)."""
    groups: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
    for r in records:
        src = r.get("source") or {}
        key = f"{src.get('repo', '')}:{src.get('path', '')}" if src.get("path") else r["id"]
        groups.setdefault((record_api(r), key), []).append(r)
    out: list[Session] = []
    per_api: Counter[str] = Counter()
    names: set[str] = set()
    for (api, key), recs in groups.items():
        per_api[api] += 1
        if limit and per_api[api] > limit:
            continue
        recs.sort(key=lambda r: (r.get("source") or {}).get("interaction_index", 0))
        name = _PREFIX.get(api, api + "/") + (recs[0]["id"].rsplit("-", 1)[0] if recs[0]["id"][-1:].isdigit()
                                              else recs[0]["id"])
        while name in names:  # two cassettes whose first ids share a stem
            name += "+"
        names.add(name)
        # the chat sessions keep their trace id (the cassette's); the others add the API, as a cassette may hold both
        out.append(Session(name=name, agent=AGENTS[len(out) % len(AGENTS)], api=api,
                           trace_id=_trace_id(key if api == "openai_chat" else f"{api}|{key}"),
                           calls=[(r["id"], r["request"]) for r in recs]))
    return out


def _trace_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _leak_sessions(leaks: list[Leak]) -> list[Session]:
    """One session per leak, agents round robin, the trace id derived from the leak's name."""
    return [Session(name=lk.name, agent=AGENTS[i % len(AGENTS)], calls=lk.calls, trace_id=_trace_id(lk.name),
                    leak=lk.title, expect=lk.expect, blocks=lk.blocks, api=lk.api) for i, lk in enumerate(leaks)]


@dataclass
class _Inputs:
    """What a run replays: the recorded chat file, its records, the other APIs' files and records, the sessions to
    drive (recorded then leaking) and every record the replay upstream serves (recorded plus the leaks' own)."""

    path: Path
    records: list[dict[str, Any]]
    sessions: list[Session]
    replay: list[dict[str, Any]]
    api_paths: dict[str, Path] = field(default_factory=dict)
    api_records: list[dict[str, Any]] = field(default_factory=list)


def _load_inputs(recorded: str, limit: int) -> _Inputs:
    path = find_recorded(recorded)
    records = load_records(path)
    api_paths = find_recorded_apis(path)
    # records that do not name their API are the other file's (a pre-``api`` recording): stamp it
    api_records = [r if "api" in r else dict(r, api=api) for api, p in api_paths.items() for r in load_records(p)]
    leaks = build_leaks(records) + build_api_leaks(api_records)
    sessions = recorded_sessions(records, limit) + recorded_sessions(api_records, limit) + _leak_sessions(leaks)
    return _Inputs(path, records, sessions, records + api_records + [r for lk in leaks for r in lk.records],
                   api_paths, api_records)


# ---------------------------------------------------------------------------------------------------- driving


async def _drive_call(clients: Clients, session: Session, idx: int, record_id: str, request: dict[str, Any],
                      taps: dict[str, Tap], outcomes: Outcomes) -> CallResult:
    call = f"{session.name}#{idx}"
    res = CallResult(session.name, record_id, bool(request.get("stream")), api=session.api)
    headers = {"x-replay-id": record_id, "x-demo-call": call,
               "traceparent": f"00-{session.trace_id}-{random.getrandbits(64) or 1:016x}-01"}
    await send(clients, request, headers, res)
    apply_decision(res, outcomes.by_call.pop(call, None))
    apply_tap(res, taps.pop(call, None))
    return res


async def _drive_session(clients: Clients, session: Session, taps: dict[str, Tap], outcomes: Outcomes,
                         sem: asyncio.Semaphore) -> list[CallResult]:
    async with sem:
        return [await _drive_call(clients, session, i, rid, req, taps, outcomes)
                for i, (rid, req) in enumerate(session.calls)]


# ---------------------------------------------------------------------------------------------------- the run


def _clean_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    old = out / FILESET
    if old.is_dir() and (old / "security_snapshot.json").exists():
        shutil.rmtree(old)  # a previous demo's fileset: start clean so counts are this run's


def _demo_config(config: RailcarConfig, out: Path) -> RailcarConfig:
    """A copy of ``config`` for the demo: the default guardrail config unless one was loaded, the fileset under
    ``out``, no S3 and no spool (the broker is in this process); the broker and upstream are set once started."""
    cfg = copy.deepcopy(config)
    if not cfg.guardrails.loaded:
        cfg.guardrails.config_path = "default"
    cfg.kafka.bootstrap_servers = "pending"
    cfg.kafka.group_id = "railcar-demo"
    cfg.fileset.root = str(out)
    cfg.fileset.s3_endpoint_url = ""
    cfg.telemetry.spool_dir = ""
    cfg.upstream.anthropic.base_url = ""  # Anthropic Messages calls go to upstream.base_url too: the replay upstream
    return cfg


def _security_pipeline(cfg: RailcarConfig) -> tuple[Scanner, ConsumerGroupWorker]:
    """The scanner (shared by the recorders and the consumer) and the consumer group worker, which opens the
    fileset under ``cfg.fileset.root`` and runs the security processor. Raises ``ValueError`` naming the
    ``[detection]`` key for a bad detector list or key file."""
    scanner = build_scanner(cfg)
    worker = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="railcar-demo", registry=CollectorRegistry())
    return scanner, worker


@dataclass
class _Run:
    """What one run started, in data-flow order: the guard, the sidecars (one per agent, each with its trace
    recorder), the publisher, and the consumer; then what the summary reads back."""

    cfg: RailcarConfig
    scanner: Scanner
    worker: ConsumerGroupWorker
    pub: Publisher
    guard: RailsGuard | None
    consume_task: asyncio.Task[None]
    runners: list[web.AppRunner] = field(default_factory=list)
    recorders: dict[str, TraceRecorder] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    outcomes: Outcomes = field(default_factory=Outcomes)
    published: int = 0
    calls_s: float = 0.0


async def _start_sidecar(run: _Run, agent: str) -> None:
    # The recorder bounds each span under the record limit (a recorded request carries a 2.8 MB inline image);
    # anything Kafka still refuses is dropped and counted by the publisher.
    rec = TraceRecorder(run.scanner, run.pub.publish, otlp.make_resource(run.cfg.telemetry.service_name, agent))
    await rec.start()
    run.recorders[agent] = rec
    app = create_app(run.cfg, guard=run.guard or PassThrough(), observers=[rec, run.outcomes])
    runner = await transport.start(app, run.cfg.server, host="127.0.0.1", port=0, shutdown_timeout=5.0)
    run.runners.append(runner)
    run.urls[agent] = f"http://127.0.0.1:{runner.port}/v1"


async def _start(cfg: RailcarConfig, say: Callable[[str], None], runners: list[web.AppRunner]) -> _Run:
    """Build the guard, start the publisher, the consumer and one sidecar per agent (``cfg`` fully set); the
    sidecars' runners go to ``runners`` as they start, so the caller can clean up after a failed start."""
    scanner, worker = _security_pipeline(cfg)
    guard = await build_guard(cfg)
    say(f"guardrails loaded: {cfg.guardrails.config_path or ('inline' if cfg.guardrails.config_inline else 'default')}")
    pub = Publisher(cfg.kafka, cfg.telemetry, registry=CollectorRegistry())
    await pub.start()
    run = _Run(cfg, scanner, worker, pub, guard, asyncio.create_task(worker.run(), name="railcar-demo-consumer"),
               runners=runners)
    for agent in AGENTS:
        await _start_sidecar(run, agent)
    say("sidecars: " + ", ".join(f"{a} {u}" for a, u in run.urls.items()))
    return run


async def _drive_all(run: _Run, sessions: list[Session]) -> list[list[CallResult]]:
    """Drive every session through its agent's sidecar, ``CONCURRENCY`` sessions at a time; results per session."""
    taps: dict[str, Tap] = {}
    clients = {a: Clients.open(u, taps) for a, u in run.urls.items()}
    sem = asyncio.Semaphore(CONCURRENCY)
    t_calls = time.monotonic()
    per_session = await asyncio.gather(*(_drive_session(clients[s.agent], s, taps, run.outcomes, sem)
                                         for s in sessions))
    run.calls_s = time.monotonic() - t_calls
    for c in clients.values():
        await c.close()
    return list(per_session)


async def _stop(run: _Run) -> None:
    """Stop in data-flow order: sidecars (drain), recorders, publisher (flush), then the consumer once it has read
    everything the publisher had acknowledged (30 s at most), then the guard."""
    for runner in run.runners:
        await runner.cleanup()
    run.runners.clear()
    for rec in run.recorders.values():
        await rec.drain()
        await rec.close()
    await run.pub.close()
    run.published = run.pub.stats["published"]
    deadline = time.monotonic() + 30.0
    task = run.consume_task
    while run.worker.proc.records < run.published and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
    run.worker.stop()
    await task
    if run.guard is not None:
        await run.guard.close()


def _session_results(sessions: list[Session], per_session: list[list[CallResult]],
                     findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session: who ran it, what it planted and expected, the detectors found in its trace, its calls."""
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_trace.setdefault(str((f.get("location") or {}).get("trace_id", "")), []).append(f)
    out = []
    for s, rs in zip(sessions, per_session):
        found = sorted({f["detector"] for f in by_trace.get(s.trace_id, ())})
        out.append({"name": s.name, "agent": s.agent, "api": s.api, "trace_id": s.trace_id, "leak": s.leak,
                    "expect": list(s.expect), "expected_block": s.blocks, "found": found,
                    "calls": [r.__dict__ for r in rs]})
    return out


def _traffic(results: list[CallResult]) -> dict[str, Any]:
    """The summary's traffic figures: calls, results by kind (overall and per API), tokens, blocks with their rail
    and API."""
    blocked_streams = [r for r in results if r.result == "blocked_stream"]
    by_api: dict[str, dict[str, int]] = {}
    for r in results:
        row = by_api.setdefault(r.api, {"calls": 0, "streaming": 0})
        row["calls"] += 1
        row["streaming"] += r.stream
        row[r.result] = row.get(r.result, 0) + 1
    return {
        "calls": len(results), "streaming_calls": sum(r.stream for r in results),
        "results": dict(Counter(r.result for r in results)), "tokens_relayed": sum(r.tokens for r in results),
        "by_api": by_api,
        "blocked": [{"session": r.session, "kind": r.result, "rail": r.rail, "api": r.api} for r in results
                    if r.result.startswith("blocked")],
        "blocked_streams_with_error_chunk": sum(1 for r in blocked_streams if r.error_chunk_last),
    }


def _events(run: _Run) -> dict[str, Any]:
    """The summary's event-pipeline figures: published, consumed, dropped (by reason), truncated, spooled."""
    stats = run.pub.stats
    return {
        "events_published": run.published, "events_consumed": run.worker.proc.records,
        "events_dropped": sum(v for k, v in stats.items() if k.startswith("dropped_")),
        "events_dropped_by_reason": {k.removeprefix("dropped_"): v for k, v in stats.items()
                                     if k.startswith("dropped_") and v},
        "events_truncated": sum(r.stats["truncated"] for r in run.recorders.values()),
        "events_spooled": stats["spooled"], "dead_lettered": run.worker.dead_lettered,
    }


def _write_outputs(inputs: _Inputs, out: Path, run: _Run, per_session: list[list[CallResult]],
                   t_start: float) -> dict[str, Any]:
    """Write ``report.html`` and ``demo-summary.json`` from the fileset and the calls; returns the summary."""
    fs = configured_fileset(run.cfg)
    snapshot = fs.read_snapshot() or {}
    suggestions = fs.read_suggestions()
    report_path = out / "report.html"
    report_path.write_text(render_report(snapshot, suggestions), encoding="utf-8")
    results = [r for rs in per_session for r in rs]
    summary = {
        "recorded": str(inputs.path), "recorded_apis": {a: str(p) for a, p in inputs.api_paths.items()},
        "out": str(out), "fileset": str(out / FILESET), "report": str(report_path),
        "sessions": len(inputs.sessions), **_traffic(results), **_events(run),
        "findings": snapshot.get("findings") or [], "suggestions": suggestions,
        "coverage": snapshot.get("coverage") or {},
        "seconds": round(time.monotonic() - t_start, 2), "calls_seconds": round(run.calls_s, 2),
        "session_results": _session_results(inputs.sessions, per_session, snapshot.get("findings") or []),
    }
    (out / "demo-summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


async def run_demo(config: RailcarConfig, out: Path, *, sessions: int = 0, recorded: str = "",
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole job once; returns the summary dict written to ``<out>/demo-summary.json``.

    ``config``: the root :class:`railcar.settings.RailcarConfig` (copied; upstream, Kafka bootstrap and fileset root are set by the demo);
    ``sessions`` > 0 keeps the first recorded sessions of each API; ``recorded`` a ``chat_completions.jsonl``
    (``""``: the bundled sample; the Responses and Anthropic files beside it are used too, see
    :func:`find_recorded_apis`); ``progress`` gets one line per step. Raises ``FileNotFoundError`` for a missing
    ``recorded`` file, ``ValueError`` for unusable records and :class:`railcar.core.config.ConfigError` for a bad
    guardrail config.
    """
    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    inputs = _load_inputs(recorded, sessions)
    say(f"{len(inputs.records)} recorded interactions from {inputs.path}, "
        + ", ".join(f"{sum(r['api'] == api for r in inputs.api_records)} from {p}"
                    for api, p in inputs.api_paths.items())
        + f"; {len(inputs.sessions)} sessions")
    _clean_out(out)
    cfg = _demo_config(config, out)

    mc = MockCluster(brokers=1)
    runners: list[web.AppRunner] = []
    try:
        for topic, partitions in ((cfg.kafka.trace_topic, 4), (cfg.kafka.findings_topic, 1),
                                  (cfg.kafka.dead_letter_topic, 1)):
            mc.create_topic(topic, partitions)
        cfg.kafka.bootstrap_servers = mc.bootstrap
        say(f"Kafka-protocol broker (librdkafka mock cluster) at {mc.bootstrap}")
        async with ReplayUpstream(inputs.replay, synthetic=False) as upstream:
            cfg.upstream.base_url = upstream.base_url
            cfg.validate()
            say(f"replay upstream at {upstream.base_url}")
            run = await _start(cfg, say, runners)
            per_session = await _drive_all(run, inputs.sessions)
            say(f"{sum(len(r) for r in per_session)} calls in {run.calls_s:.1f}s; stopping")
            await _stop(run)
    finally:
        for runner in runners:
            await runner.cleanup()
        mc.close()
    return _write_outputs(inputs, out, run, per_session, t_start)


def _problems(summary: dict[str, Any]) -> list[str]:
    """Why a run is incomplete (empty when the demo did its whole job)."""
    out = []
    if summary["events_consumed"] < summary["events_published"]:
        out.append(f"consumer read {summary['events_consumed']} of {summary['events_published']} events")
    bs = [b for b in summary["blocked"] if b["kind"] == "blocked_stream"]
    if summary["blocked_streams_with_error_chunk"] != len(bs):
        out.append("a blocked stream did not end with the error chunk and [DONE]")
    for s in summary["session_results"]:
        want = s["expected_block"]
        if want and not any(c["result"] == f"blocked_{want}" for c in s["calls"]):
            got = ", ".join(sorted({c["result"] for c in s["calls"]}))
            out.append(f"session {s['name']} ({s['api']}): expected its {want} to be blocked, got {got}")
        missing = set(s["expect"]) - set(s["found"])
        if missing:
            out.append(f"session {s['name']} ({s['api']}): no finding for {', '.join(sorted(missing))}")
    return out


# ---------------------------------------------------------------------------------------------------- summary


_API_NAMES = {"openai_chat": "Chat", "openai_responses": "Responses", "anthropic_messages": "Anthropic"}


def _print_by_api(con: Console, summary: dict[str, Any]) -> None:
    """The traffic table per wire API: calls, streams, and what came of them."""
    t = Table(title="Traffic by API", box=box.SIMPLE_HEAVY, title_justify="left")
    cols = ("calls", "streaming", "ok", "blocked_input", "blocked_stream", "blocked_output", "upstream_error",
            "client_error")
    t.add_column("API")
    for col in cols:
        t.add_column(col.replace("_", " "), justify="right")
    for api, row in summary["by_api"].items():
        t.add_row(_API_NAMES.get(api, api), *(str(row.get(c, 0)) for c in cols))
    con.print(t)


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the run's summary with ``rich``: traffic, blocks with their rail, Kafka, findings (masked previews),
    suggestions, and where the fileset and the report are."""
    con = console or Console()
    res = summary["results"]
    con.rule("[bold]Railcar demo")
    t = Table(title="Traffic through the sidecars", box=box.SIMPLE_HEAVY, title_justify="left")
    t.add_column("what")
    t.add_column("count", justify="right")
    rows = [("sessions", summary["sessions"]), ("calls", summary["calls"]),
            ("  streaming", summary["streaming_calls"]), ("  passed", res.get("ok", 0)),
            ("  blocked inputs", res.get("blocked_input", 0)), ("  blocked streams", res.get("blocked_stream", 0)),
            ("  blocked answers", res.get("blocked_output", 0)),
            ("  recorded upstream errors relayed", res.get("upstream_error", 0)),
            ("  not a chat completion (client error)", res.get("client_error", 0)),
            ("tokens relayed", summary["tokens_relayed"])]
    for k, v in rows:
        t.add_row(k, str(v))
    con.print(t)
    _print_by_api(con, summary)
    if summary["blocked"]:
        b = Table(title="Blocked by the rails", box=box.SIMPLE_HEAVY, title_justify="left")
        for col in ("session", "API", "what", "rail"):
            b.add_column(col)
        for x in summary["blocked"]:
            stream = "stream (error chunk + [DONE])" if x["api"] == "openai_chat" else "stream (error event)"
            what = {"blocked_input": "input", "blocked_stream": stream,
                    "blocked_output": "answer"}.get(x["kind"], x["kind"])
            b.add_row(x["session"], _API_NAMES.get(x["api"], x["api"]), what, x["rail"] or "-")
        con.print(b)
    con.print(f"Kafka: [bold]{summary['events_published']}[/] trace events published to otlp_spans, "
              f"[bold]{summary['events_consumed']}[/] consumed by the security consumer group "
              f"({summary['events_spooled']} spooled, {summary['events_dropped']} dropped"
              + "".join(f", {n} {r.replace('_', ' ')}" for r, n in summary["events_dropped_by_reason"].items())
              + f", {summary['dead_lettered']} dead-lettered; {summary['events_truncated']} over-long texts "
              "published as a prefix)")
    f = Table(title=f"Findings ({len(summary['findings'])})", box=box.SIMPLE_HEAVY, title_justify="left")
    for col in ("type", "detector", "severity", "agent", "masked preview", "count"):
        f.add_column(col)
    for x in sorted(summary["findings"], key=lambda d: (d.get("type", ""), d.get("detector", ""))):
        f.add_row(x.get("type", ""), x.get("detector", ""), x.get("severity", ""),
                  str((x.get("location") or {}).get("agent", "")), x.get("masked_preview", ""), str(x.get("count", 1)))
    con.print(f)
    s = Table(title=f"Suggestions ({len(summary['suggestions'])}; same titles grouped)", box=box.SIMPLE_HEAVY,
              title_justify="left")
    for col in ("type", "priority", "title", "n", "first action"):
        s.add_column(col)
    grouped: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
    for x in summary["suggestions"]:
        grouped.setdefault((x.get("type", ""), x.get("title", "")), []).append(x)
    rank = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    for (stype, title), xs in sorted(grouped.items(), key=lambda kv: rank.get(kv[1][0].get("priority", ""), 9)):
        s.add_row(stype, xs[0].get("priority", ""), title, str(len(xs)), (xs[0].get("actions") or [""])[0])
    con.print(s)
    con.print(f"Fileset: [bold]{summary['fileset']}[/]  (security_snapshot.json, security_suggestions.jsonl)")
    con.print(f"Report:  [bold]{summary['report']}[/]")
    con.print(f"Done in {summary['seconds']:.1f}s ({summary['calls']} calls in {summary['calls_seconds']:.1f}s).")


def main(args: argparse.Namespace, config: RailcarConfig) -> int:
    """``railcar demo [--out DIR] [--sessions N] [--recorded PATH]`` (see :mod:`railcar.cli`); exit code 0 after a
    complete run, 1 when the run was incomplete (the reasons are printed), 2 for bad arguments."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    con = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True)
    if args.sessions < 0:
        err.print("railcar demo: --sessions: must be >= 0")
        return 2
    try:
        summary = uvloop.run(run_demo(config, Path(args.out), sessions=args.sessions, recorded=args.recorded,
                                      progress=lambda m: err.print(f"[dim]{m}[/]")))
    except FileNotFoundError as exc:
        err.print(f"railcar demo: {exc}")
        return 2
    print_summary(summary, con)
    problems = _problems(summary)
    for p in problems:
        err.print(f"[red]incomplete:[/] {p}")
    return 1 if problems else 0
