"""``railcar demo``: the whole job on recorded model traffic, on loopback, in one command.

What runs (all in this process, all on ``127.0.0.1``):

1. the replay upstream (:mod:`railcar.tools.replay_upstream`) answering with the recorded interactions of
   ``--recorded`` or ``../shared/fixtures/recorded/chat_completions.jsonl`` (looked up from the current directory,
   then beside the repository), else the bundled sample ``sidecar/demo_data/recorded_sample.jsonl`` (24
   interactions from the same MIT-licensed pydantic-ai cassettes);
2. an embedded Kafka-protocol broker: librdkafka's mock cluster (:mod:`railcar.tools.mock_broker`);
3. one sidecar per demo agent (``support-agent``, ``coding-agent``, ``research-agent``; the same guard) with the
   default guardrail config (``guardrails.config_path = "default"`` unless the config names another), each with a
   trace recorder publishing redacted OTLP spans to ``otlp_spans`` through one :class:`railcar.streams.producer.Publisher`;
4. the security consumer group (:class:`railcar.streams.consumer.ConsumerGroupWorker`) writing the fileset
   ``<out>/nemo-agent-security/`` and the findings topic.

Sessions: the recorded interactions grouped by the cassette they were recorded in (one agent run each), in file
order, interactions of a session in order, ``--sessions N`` keeps the first N; plus the leaking sessions of
:mod:`railcar.tools.demo_data.leaks` (a stream leaking an AWS key, a stream leaking a private key, a tool result with an
e-mail address and SSN, a non-streaming answer with a Google API key, a prompt injection). Every call goes through
the sidecar with the real ``openai`` client (streaming and not), with ``x-replay-id`` naming the record to replay
and a W3C ``traceparent`` whose trace id identifies the session, so findings map back to sessions.

Outputs under ``--out`` (default ``./railcar-demo``): the fileset, ``report.html`` (:mod:`railcar.tools.report`) and
``demo-summary.json`` (per-session outcome: calls, blocks with rail, the closing frames of blocked streams,
expected and found detectors; masked previews only). A previous demo fileset in ``<out>/nemo-agent-security`` is
replaced. Prints a summary (``rich``). Exit code 0 after a complete run; 1 when the pipeline lost events, a blocked
stream did not end with the error chunk, or a leaking session produced no finding.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import hashlib
import inspect
import logging
import random
import shutil
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main", "run_demo", "find_recorded", "recorded_sessions", "Session", "CallResult", "BUNDLED_SAMPLE",
           "AGENTS"]

log = logging.getLogger("railcar.demo")

BUNDLED_SAMPLE = Path(__file__).resolve().parents[1] / "tools" / "demo_data" / "recorded_sample.jsonl"
RECORDED_REL = Path("shared") / "fixtures" / "recorded" / "chat_completions.jsonl"
AGENTS = ("support-agent", "coding-agent", "research-agent")
CONCURRENCY = 8


# ---------------------------------------------------------------------------------------------------- inputs


def find_recorded(explicit: str = "", cwd: Path | None = None) -> Path:
    """The recorded interactions to replay: ``explicit`` if given (``FileNotFoundError`` if missing), else
    ``../shared/...`` from ``cwd`` (or ``./shared/...``), else beside the repository, else :data:`BUNDLED_SAMPLE`."""
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"--recorded: no such file: {explicit}")
        return p
    cwd = Path.cwd() if cwd is None else cwd
    for p in (cwd.parent / RECORDED_REL, cwd / RECORDED_REL, Path(__file__).resolve().parents[1].parent / RECORDED_REL):
        if p.is_file():
            return p
    return BUNDLED_SAMPLE


@dataclass
class Session:
    """One agent run to drive: ``calls`` ``[(record_id, request_body)]`` in order; ``trace_id`` 32 hex chars;
    ``leak`` the planted-leak title (``""`` for a clean recorded session); ``expect`` detector ids to be found;
    ``blocks`` the block expected (``"stream"``, ``"output"``, ``"input"`` or ``""``, see
    :class:`railcar.tools.demo_data.leaks.Leak`)."""

    name: str
    agent: str
    calls: list[tuple[str, dict[str, Any]]]
    trace_id: str
    leak: str = ""
    expect: tuple[str, ...] = ()
    blocks: str = ""


def recorded_sessions(records: list[dict[str, Any]], limit: int = 0) -> list[Session]:
    """Group ``records`` by their cassette (``source.repo`` + ``source.path``; the record id when absent), in
    file order; ``limit`` > 0 keeps the first ``limit`` sessions. Agents are assigned round robin."""
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in records:
        src = r.get("source") or {}
        key = f"{src.get('repo', '')}:{src.get('path', '')}" if src.get("path") else r["id"]
        groups.setdefault(key, []).append(r)
    out = []
    for i, (key, recs) in enumerate(groups.items()):
        if limit and i >= limit:
            break
        recs.sort(key=lambda r: (r.get("source") or {}).get("interaction_index", 0))
        name = recs[0]["id"].rsplit("-", 1)[0] if recs[0]["id"][-1:].isdigit() else recs[0]["id"]
        out.append(Session(name=name, agent=AGENTS[i % len(AGENTS)], trace_id=_trace_id(key),
                           calls=[(r["id"], r["request"]) for r in recs]))
    return out


def _trace_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------------- client tap


def _tap_class() -> type:
    import httpx

    class Tap(_TapBase, httpx.AsyncByteStream):
        pass

    return Tap


class _TapBase:
    """An ``httpx.AsyncByteStream`` that keeps a copy of the bytes the client reads (to check how a stream
    ended); on close it reads what the client left unread (the ``data: [DONE]`` after an error event)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.data = bytearray()
        self._it: Any = None

    async def __aiter__(self) -> Any:
        self._it = self.inner.__aiter__()
        async for chunk in self._it:
            self.data += chunk
            yield chunk

    async def aclose(self) -> None:
        if self._it is not None:
            try:
                async def rest() -> None:
                    async for chunk in self._it:
                        self.data += chunk
                await asyncio.wait_for(rest(), 2.0)
            except Exception:
                pass
        await self.inner.aclose()


def _tap_transport(taps: dict[str, Any]) -> Any:
    import httpx

    tap_cls = _tap_class()

    class TapTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            resp = await self.inner.handle_async_request(request)
            call = request.headers.get("x-demo-call")
            if not call:
                return resp
            tap = tap_cls(resp.stream)
            taps[call] = tap
            return httpx.Response(resp.status_code, headers=resp.headers, stream=tap, extensions=resp.extensions)

        async def aclose(self) -> None:
            await self.inner.aclose()

    return TapTransport()


class _Outcomes:
    """An :class:`railcar.core.guard.ExchangeObserver` keeping what the guard decided, by ``x-demo-call`` header."""

    def __init__(self) -> None:
        self.by_call: dict[str, dict[str, Any]] = {}

    def exchange_finished(self, exchange: Any) -> None:
        call = exchange.headers.get("x-demo-call")
        if call:
            self.by_call[call] = {"outcome": dataclasses.asdict(exchange.outcome), "status": exchange.status,
                                  "upstream_called": exchange.response_body is not None or bool(exchange.stream_data),
                                  "error": exchange.error}


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class CallResult:
    """What one call did, as the client saw it and the guard decided.

    ``result``: ``ok`` | ``blocked_input`` | ``blocked_stream`` | ``blocked_output`` | ``upstream_error`` (a
    recorded error relayed) | ``client_error``; ``rail`` the blocking rail; ``tokens`` content deltas received
    (streams) or ``usage.completion_tokens`` (non-streaming); ``tail`` the last two SSE data payloads of a blocked
    stream; ``error_chunk_last``: the stream ended with the blocked-content error chunk then ``[DONE]``."""

    session: str
    record_id: str
    stream: bool
    result: str = "ok"
    rail: str = ""
    tokens: int = 0
    status: int | None = None
    tail: list[str] = field(default_factory=list)
    error_chunk_last: bool | None = None
    detail: str = ""


def _sse_datas(raw: bytes) -> list[str]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [ln[5:].lstrip() for ln in block.split(b"\n") if ln.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data).decode("utf-8", "replace"))
    return out


def _ends_with_error_chunk(datas: list[str]) -> bool:
    if len(datas) < 2 or datas[-1] != "[DONE]":
        return False
    try:
        err = orjson.loads(datas[-2]).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return err.get("type") == "guardrails_violation" and err.get("code") == "content_blocked"


_CREATE_PARAMS: set[str] | None = None


def _split_params(client: Any, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(kwargs, extra_body)``: parameters ``chat.completions.create`` declares, and the rest of the recorded
    body (provider-specific fields such as ``reasoning_format``) sent as ``extra_body``."""
    global _CREATE_PARAMS
    if _CREATE_PARAMS is None:
        sig = inspect.signature(client.chat.completions.create)
        _CREATE_PARAMS = {p for p in sig.parameters if not p.startswith("extra_") and p != "timeout"}
    kwargs = {k: v for k, v in request.items() if k in _CREATE_PARAMS}
    extra = {k: v for k, v in request.items() if k not in _CREATE_PARAMS}
    return kwargs, extra


async def _drive_call(client: Any, session: Session, idx: int, record_id: str, request: dict[str, Any],
                      taps: dict[str, Any], outcomes: _Outcomes) -> CallResult:
    import openai

    call = f"{session.name}#{idx}"
    stream = bool(request.get("stream"))
    res = CallResult(session.name, record_id, stream)
    kwargs, extra = _split_params(client, request)
    kwargs["stream"] = stream
    headers = {"x-replay-id": record_id, "x-demo-call": call,
               "traceparent": f"00-{session.trace_id}-{random.getrandbits(64) or 1:016x}-01"}
    error_body: Any = None
    try:
        if stream:
            resp = await client.chat.completions.create(**kwargs, extra_body=extra or None, extra_headers=headers)
            try:
                async for chunk in resp:
                    for ch in chunk.choices or ():
                        if ch.delta is not None and ch.delta.content:
                            res.tokens += 1
                        if ch.finish_reason == "content_filter":
                            res.result = "blocked_input"
            finally:
                await resp.close()
        else:
            comp = await client.chat.completions.create(**kwargs, extra_body=extra or None, extra_headers=headers)
            usage = getattr(comp, "usage", None)
            res.tokens = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
            if any(getattr(c, "finish_reason", None) == "content_filter" for c in comp.choices or ()):
                res.result = "blocked_output"
    except openai.APIStatusError as exc:
        res.result, res.status, res.detail = "upstream_error", exc.status_code, type(exc).__name__
    except openai.APIError as exc:  # an in-band error event in a 200 stream
        error_body = exc.body if isinstance(exc.body, dict) else {}
        if error_body.get("code") == "content_blocked":
            res.result, res.rail = "blocked_stream", str(error_body.get("param") or "")
        else:
            res.result, res.detail = "upstream_error", f"{type(exc).__name__}: {exc}"[:200]
    except Exception as exc:  # a body the client cannot parse (e.g. a recorded non-chat echo)
        res.result, res.detail = "client_error", type(exc).__name__
    seen = outcomes.by_call.get(call) or {}
    if res.status is None:
        res.status = seen.get("status")
    out = seen.get("outcome") or {}
    if out.get("blocked") and res.result in ("ok", "blocked_input", "blocked_output"):
        if not seen.get("upstream_called"):
            res.result = "blocked_input"
        elif stream:
            res.result = "blocked_stream"
        else:
            res.result = "blocked_output"
        res.rail = res.rail or str(out.get("blocked_rail") or "")
    tap = taps.pop(call, None)
    if stream and tap is not None:
        datas = _sse_datas(bytes(tap.data))
        if res.result == "blocked_stream":
            res.tail = datas[-2:]
            res.error_chunk_last = _ends_with_error_chunk(datas)
    return res


async def _drive_session(client: Any, session: Session, taps: dict[str, Any], outcomes: _Outcomes,
                         sem: asyncio.Semaphore) -> list[CallResult]:
    async with sem:
        return [await _drive_call(client, session, i, rid, req, taps, outcomes)
                for i, (rid, req) in enumerate(session.calls)]


# ---------------------------------------------------------------------------------------------------- the run


async def run_demo(config: Any, out: Path, *, sessions: int = 0, recorded: str = "",
                   progress: Any = None) -> dict[str, Any]:
    """Run the whole job once; returns the summary dict written to ``<out>/demo-summary.json``.

    ``config``: a :class:`railcar.core.config.RailcarConfig` (copied; upstream, Kafka bootstrap and fileset root are
    set by the demo). Raises ``FileNotFoundError`` for a missing ``recorded`` file, ``ValueError`` for unusable
    records and :class:`railcar.core.config.ConfigError` for a bad guardrail config.
    """
    import httpx
    import openai
    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from railcar.rails.guard import build_guard
    from railcar.rails.scanner import scanner_from_config
    from railcar.sidecar.app import create_app
    from railcar.tools.demo_data.leaks import build_leaks
    from railcar.core.guard import PassThrough
    from railcar.tools.replay_upstream import ReplayUpstream, load_records
    from railcar.streams import otlp
    from railcar.streams.consumer import ConsumerGroupWorker
    from railcar.streams.fileset import FILESET, open_fileset
    from railcar.tools.mock_broker import MockCluster
    from railcar.streams.producer import Publisher
    from railcar.streams.recorder import TraceRecorder
    from railcar.tools.report import render_report

    say = progress or (lambda msg: None)
    t_start = time.monotonic()
    rec_path = find_recorded(recorded)
    records = load_records(rec_path)
    sess = recorded_sessions(records, sessions)
    leaks = build_leaks(records)
    for i, lk in enumerate(leaks):
        sess.append(Session(name=lk.name, agent=AGENTS[i % len(AGENTS)], calls=lk.calls, trace_id=_trace_id(lk.name),
                            leak=lk.title, expect=lk.expect, blocks=lk.blocks))
    replay = records + [r for lk in leaks for r in lk.records]
    say(f"{len(records)} recorded interactions from {rec_path}; {len(sess)} sessions")

    out.mkdir(parents=True, exist_ok=True)
    old = out / FILESET
    if old.is_dir() and (old / "security_snapshot.json").exists():
        shutil.rmtree(old)  # a previous demo's fileset: start clean so counts are this run's

    cfg = copy.deepcopy(config)
    if not cfg.guardrails.loaded:
        cfg.guardrails.config_path = "default"
    cfg.kafka.bootstrap_servers = "pending"
    cfg.kafka.group_id = "railcar-demo"
    cfg.fileset.root = str(out)
    cfg.fileset.s3_endpoint_url = ""
    cfg.telemetry.spool_dir = ""
    scanner = scanner_from_config(cfg.detection)

    mc = MockCluster(brokers=1)
    runners: list[web.AppRunner] = []
    try:
        mc.create_topic(cfg.kafka.trace_topic, 4)
        mc.create_topic(cfg.kafka.findings_topic, 1)
        mc.create_topic(cfg.kafka.dead_letter_topic, 1)
        cfg.kafka.bootstrap_servers = mc.bootstrap
        say(f"Kafka-protocol broker (librdkafka mock cluster) at {mc.bootstrap}")
        async with ReplayUpstream(replay, synthetic=False) as upstream:
            cfg.upstream.base_url = upstream.base_url
            cfg.validate()
            say(f"replay upstream at {upstream.base_url}")
            guard = await build_guard(cfg)
            say(f"guardrails loaded: {cfg.guardrails.config_path or 'inline'}")
            pub = Publisher(cfg.kafka, cfg.telemetry, registry=CollectorRegistry())
            await pub.start()
            worker = ConsumerGroupWorker(cfg, scanner=scanner, writer_id="railcar-demo", registry=CollectorRegistry())
            consume_task = asyncio.create_task(worker.run(), name="railcar-demo-consumer")
            outcomes = _Outcomes()
            recorders: dict[str, TraceRecorder] = {}
            urls: dict[str, str] = {}
            for agent in AGENTS:
                # The recorder bounds each span under the record limit (a recorded request carries a 2.8 MB
                # inline image); anything Kafka still refuses is dropped and counted by the publisher.
                rec = TraceRecorder(scanner, pub.publish, otlp.make_resource(cfg.telemetry.service_name, agent))
                await rec.start()
                recorders[agent] = rec
                app = create_app(cfg, guard=guard or PassThrough(), observers=[rec, outcomes])
                runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                runners.append(runner)
                urls[agent] = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
            say("sidecars: " + ", ".join(f"{a} {u}" for a, u in urls.items()))

            taps: dict[str, Any] = {}
            clients = {a: openai.AsyncOpenAI(base_url=u, api_key="railcar-demo", max_retries=0, timeout=60.0,
                                             http_client=httpx.AsyncClient(transport=_tap_transport(taps),
                                                                           timeout=60.0))
                       for a, u in urls.items()}
            sem = asyncio.Semaphore(CONCURRENCY)
            t_calls = time.monotonic()
            per_session = await asyncio.gather(*(_drive_session(clients[s.agent], s, taps, outcomes, sem)
                                                 for s in sess))
            calls_s = time.monotonic() - t_calls
            for c in clients.values():
                await c.close()
            say(f"{sum(len(r) for r in per_session)} calls in {calls_s:.1f}s; stopping")

            # Stop in data-flow order: sidecars (drain), recorders, publisher (flush), then the consumer once it
            # has read everything the publisher had acknowledged.
            for runner in runners:
                await runner.cleanup()
            runners.clear()
            for rec in recorders.values():
                await rec.drain()
                await rec.close()
            await pub.close()
            published = pub.stats["published"]
            deadline = time.monotonic() + 30.0
            while worker.proc.records < published and time.monotonic() < deadline and not consume_task.done():
                await asyncio.sleep(0.05)
            worker.stop()
            await consume_task
            if guard is not None:
                await guard.close()
    finally:
        for runner in runners:
            await runner.cleanup()
        mc.close()

    fs = open_fileset(str(out))
    snapshot = fs.read_snapshot() or {}
    suggestions = fs.read_suggestions()
    report_path = out / "report.html"
    report_path.write_text(render_report(snapshot, suggestions), encoding="utf-8")

    results = [r for rs in per_session for r in rs]
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for f in snapshot.get("findings") or ():
        by_trace.setdefault(str((f.get("location") or {}).get("trace_id", "")), []).append(f)
    sess_out = []
    for s, rs in zip(sess, per_session):
        found = sorted({f["detector"] for f in by_trace.get(s.trace_id, ())})
        sess_out.append({"name": s.name, "agent": s.agent, "trace_id": s.trace_id, "leak": s.leak,
                         "expect": list(s.expect), "expected_block": s.blocks, "found": found,
                         "calls": [r.__dict__ for r in rs]})
    counts = Counter(r.result for r in results)
    blocked_streams = [r for r in results if r.result == "blocked_stream"]
    summary = {
        "recorded": str(rec_path), "out": str(out), "fileset": str(out / FILESET), "report": str(report_path),
        "sessions": len(sess), "calls": len(results), "streaming_calls": sum(r.stream for r in results),
        "results": dict(counts), "tokens_relayed": sum(r.tokens for r in results),
        "blocked": [{"session": r.session, "kind": r.result, "rail": r.rail} for r in results
                    if r.result.startswith("blocked")],
        "blocked_streams_with_error_chunk": sum(1 for r in blocked_streams if r.error_chunk_last),
        "events_published": published, "events_consumed": worker.proc.records,
        "events_dropped": sum(v for k, v in pub.stats.items() if k.startswith("dropped_")),
        "events_dropped_by_reason": {k.removeprefix("dropped_"): v for k, v in pub.stats.items()
                                     if k.startswith("dropped_") and v},
        "events_truncated": sum(r.stats["truncated"] for r in recorders.values()),
        "events_spooled": pub.stats["spooled"], "dead_lettered": worker.dead_lettered,
        "findings": snapshot.get("findings") or [], "suggestions": suggestions,
        "coverage": snapshot.get("coverage") or {},
        "seconds": round(time.monotonic() - t_start, 2), "calls_seconds": round(calls_s, 2),
        "session_results": sess_out,
    }
    (out / "demo-summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def _problems(summary: dict[str, Any]) -> list[str]:
    """Why a run is incomplete (empty when the demo did its whole job)."""
    out = []
    if summary["events_consumed"] < summary["events_published"]:
        out.append(f"consumer read {summary['events_consumed']} of {summary['events_published']} events")
    bs = [b for b in summary["blocked"] if b["kind"] == "blocked_stream"]
    if summary["blocked_streams_with_error_chunk"] != len(bs):
        out.append("a blocked stream did not end with the error chunk and [DONE]")
    for s in summary["session_results"]:
        missing = set(s["expect"]) - set(s["found"])
        if missing:
            out.append(f"session {s['name']}: no finding for {', '.join(sorted(missing))}")
    return out


# ---------------------------------------------------------------------------------------------------- summary


def print_summary(summary: dict[str, Any], console: Any = None) -> None:
    """Print the run's summary with ``rich``: traffic, blocks with their rail, Kafka, findings (masked previews),
    suggestions, and where the fileset and the report are."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

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
    if summary["blocked"]:
        b = Table(title="Blocked by the rails", box=box.SIMPLE_HEAVY, title_justify="left")
        for col in ("session", "what", "rail"):
            b.add_column(col)
        for x in summary["blocked"]:
            what = {"blocked_input": "input", "blocked_stream": "stream (error chunk + [DONE])",
                    "blocked_output": "answer"}.get(x["kind"], x["kind"])
            b.add_row(x["session"], what, x["rail"] or "-")
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


def main(args: argparse.Namespace, config: Any) -> int:
    """``railcar demo [--out DIR] [--sessions N] [--recorded PATH]`` (see :mod:`railcar.cli`); exit code 0 after a
    complete run, 1 when the run was incomplete (the reasons are printed), 2 for bad arguments."""
    import sys

    from rich.console import Console

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    con = Console(width=None if sys.stdout.isatty() else 120)
    err = Console(stderr=True)
    if args.sessions < 0:
        err.print("railcar demo: --sessions: must be >= 0")
        return 2
    try:
        import uvloop

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
