"""commands/demo.py: ``railcar demo`` end to end on recorded traffic (a shortened session list), as a process.

Runs the real command (replay upstream, librdkafka mock broker, three sidecars with the default guardrail config,
the real ``openai`` and ``anthropic`` clients, the consumer group) on the recorded Chat Completions, Responses and
Anthropic Messages traffic, and checks the fileset, ``demo-summary.json``, ``report.html`` and the printed summary:
the leaking sessions of every API are blocked where expected and produce their findings, the clean recorded
sessions produce none, every blocked stream ended with its API's error frames (Chat: the error chunk then
``[DONE]``; Responses / Anthropic: ``event: error`` naming the rail), and no planted value is printed or persisted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from shared_fixtures import RECORDED_CHAT

from railcar.commands.demo import BUNDLED_APIS, BUNDLED_SAMPLE, find_recorded, find_recorded_apis, recorded_sessions
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import split_events
from railcar.tools.demo_data.leaks import build_api_leaks, build_leaks
from railcar.tools.replay_upstream import load_records

RECORDED = RECORDED_CHAT
SESSIONS = 8


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo") / "railcar-demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    res = subprocess.run([sys.executable, "-m", "railcar", "demo", "--out", str(out),
                          "--sessions", str(SESSIONS), "--recorded", str(RECORDED)],
                         capture_output=True, text=True, timeout=120, env=env)
    return res, out


API_FILES = {"openai_responses": RECORDED.parent / "responses.jsonl",
             "anthropic_messages": RECORDED.parent / "anthropic_messages.jsonl"}
NEW_LEAKS = {"leak-responses-stream-key", "leak-responses-tool-args-aws-key", "leak-anthropic-stream-key",
             "leak-anthropic-tool-args-aws-key"}


def _api_records() -> list[dict]:
    return [r for p in API_FILES.values() for r in load_records(p)]


def _deltas(body: str) -> str:
    """The text a streamed body carries, its deltas joined: Chat ``delta.content``, Responses ``delta`` strings,
    Anthropic ``delta.text`` / ``delta.partial_json``."""
    out = []
    for _, data in split_events(body.encode()):
        if not data or data == b"[DONE]":
            continue
        obj = orjson.loads(data)
        delta = obj["choices"][0]["delta"] if obj.get("choices") else obj.get("delta")
        if isinstance(delta, str):
            out.append(delta)
        elif isinstance(delta, dict):
            out.append(delta.get("content") or delta.get("text") or delta.get("partial_json") or "")
    return "".join(out)


def _planted_values(records: list[dict], api_records: list[dict]) -> list[str]:
    """The raw values the leaking sessions carry (the same seeds as the demo), to prove none is persisted."""
    scanner = Scanner()
    values = []
    for lk in build_leaks(records) + build_api_leaks(api_records):
        for r in lk.records:
            body = r["response_body"]
            texts = [orjson.dumps(r["request"]).decode(), _deltas(body) if r.get("stream") else body]
            for t in texts:
                values += [t[m.start:m.end] for m in scanner.scan_text(t)]
    return values


def test_demo_exits_0_and_leaks_are_found(demo_run) -> None:
    res, out = demo_run
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "demo-summary.json").read_text())
    snap = json.loads((out / "nemo-agent-security" / "security_snapshot.json").read_text())
    sugg = [json.loads(line) for line in (out / "nemo-agent-security" / "security_suggestions.jsonl").open()]

    sessions = summary["session_results"]
    recorded = [s for s in sessions if not s["leak"] and not s["name"].startswith("attack-")]
    leaking = [s for s in sessions if s["expect"]]
    # --sessions keeps the first SESSIONS cassettes of each API (the Responses / Anthropic files beside --recorded)
    assert [s["api"] for s in recorded] == ["openai_chat"] * SESSIONS + ["openai_responses"] * SESSIONS + [
        "anthropic_messages"] * SESSIONS
    assert summary["recorded_apis"] == {a: str(p) for a, p in API_FILES.items()}
    assert {s["name"] for s in leaking} == {"leak-stream-aws-key", "leak-stream-private-key",
                                            "leak-tool-result-pii", "leak-answer-google-key"} | NEW_LEAKS
    assert set(summary["by_api"]) == {"openai_chat", "openai_responses", "anthropic_messages"}
    by_trace: dict[str, set[str]] = {}
    for f in snap["findings"]:
        by_trace.setdefault(f["location"]["trace_id"], set()).add(f["detector"])
    for s in leaking:  # each leak is found in its own session's trace
        assert set(s["expect"]) <= by_trace.get(s["trace_id"], set()), s["name"]
    for s in recorded:  # the clean recorded sessions produce no finding
        assert s["trace_id"] not in by_trace, s["name"]
        assert s["found"] == []
    assert {f["detector"] for f in snap["findings"]} == {d for s in leaking for d in s["expect"]}

    # every call of the Kafka path arrived: published == consumed, nothing dropped or dead-lettered
    assert summary["events_published"] == summary["events_consumed"] > 0
    assert summary["events_dropped"] == 0 and summary["dead_lettered"] == 0
    # suggestions: rotate the leaked credentials, redact the PII traces, guard the (regex-only) model paths
    types = {s["type"] for s in sugg}
    assert {"data_safety", "guardrails"} <= types
    rotate = [s for s in sugg if s["type"] == "data_safety" and s["priority"] == "critical"]
    # Chat: AWS key, private key, Google key; Responses: two AWS keys; Anthropic: an Anthropic key and an AWS key
    assert len(rotate) == 3 + 4


def test_blocked_streams_end_with_the_error_chunk(demo_run) -> None:
    res, out = demo_run
    summary = json.loads((out / "demo-summary.json").read_text())
    calls = [c for s in summary["session_results"] for c in s["calls"]]
    blocked_streams = [c for c in calls if c["result"] == "blocked_stream"]
    assert {c["session"] for c in blocked_streams} == {"leak-stream-aws-key", "leak-stream-private-key"} | NEW_LEAKS
    block = {"message": "Blocked by sensitive data rails.", "type": "guardrails_violation",
             "param": "sensitive data", "code": "content_blocked"}
    for c in blocked_streams:
        assert c["error_chunk_last"] is True
        # The inline hold-back ([guardrails.inline], on with any guardrail config) stops the key before the
        # chunked regex rail would have seen it: its rail is "sensitive data".
        if c["api"] == "openai_chat":
            assert json.loads(c["tail"][0])["error"] == block and c["tail"][1] == "[DONE]"
        else:  # the API's error event: Responses {"type": "error", ..., "error": {...}}, Anthropic's error object
            err = json.loads(c["tail"][-1])["error"]
            assert (err["type"], err["code"], err["param"]) == (block["type"], block["code"], block["param"])
        if "tool-args" not in c["session"]:  # text flowed first (stream_first); tool arguments are held whole
            assert 0 < c["tokens"] < 300, c["session"]
    kinds = {(c["session"], c["result"], c["rail"]) for c in calls if c["result"].startswith("blocked")}
    assert ("attack-prompt-injection", "blocked_input", "regex check input") in kinds
    assert ("leak-answer-google-key", "blocked_output", "sensitive data") in kinds
    for api in ("responses", "anthropic"):  # the same input rail refuses the injection on every API
        assert (f"attack-{api}-prompt-injection", "blocked_input", "regex check input") in kinds
    # the clean recorded sessions are relayed: nothing of theirs is blocked
    leaky = {"leak-stream-aws-key", "leak-stream-private-key", "leak-answer-google-key", "attack-prompt-injection",
             "attack-responses-prompt-injection", "attack-anthropic-prompt-injection"} | NEW_LEAKS
    assert {c["session"] for c in calls if c["result"].startswith("blocked")} == leaky


def test_printed_summary_and_nothing_raw_persisted(demo_run) -> None:
    res, out = demo_run
    text = res.stdout
    summary = json.loads((out / "demo-summary.json").read_text())
    for s in ("Traffic through the sidecars", "Traffic by API", "Responses", "Anthropic", "blocked streams",
              "Blocked by the rails", "stream (error event)", "sensitive data", "regex check input", "tokens relayed",
              "trace events published to otlp_spans", f"Findings ({len(summary['findings'])})",
              "Suggestions", str(out / "nemo-agent-security"), str(out / "report.html")):
        assert s in text, s
    assert f"{summary['events_published']} trace events published" in text
    assert f"{summary['events_consumed']} consumed" in text
    # The demo relies on the pipeline's own size bound: no record filter of its own, the producer's drop count.
    flat = " ".join(text.split())  # rich wraps lines at 120 columns
    assert "1 MiB record limit" not in flat and "events_oversize" not in summary
    assert f"{summary['events_dropped']} dropped" in flat and "over-long texts published as a prefix" in flat
    for f in summary["findings"]:
        assert f["masked_preview"][:8] in text
    values = _planted_values(load_records(RECORDED), _api_records())
    assert len(values) >= 5 + 4
    persisted = [res.stdout, res.stderr] + [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    for v in values:
        for blob in persisted:
            assert v not in blob
    page = (out / "report.html").read_text()
    assert "Railcar security report" in page and page.count("<tr>") >= 5  # at least one row per finding


def test_recorded_lookup_and_bundled_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="--recorded"):
        find_recorded(str(tmp_path / "nope.jsonl"))
    (tmp_path / "shared" / "fixtures" / "recorded").mkdir(parents=True)
    mine = tmp_path / "shared" / "fixtures" / "recorded" / "chat_completions.jsonl"
    mine.write_text(BUNDLED_SAMPLE.read_text())
    assert find_recorded(str(mine)) == mine  # the explicit file
    work = tmp_path / "clone"
    work.mkdir()
    monkeypatch.chdir(work)
    # Without --recorded: the bundled sample, even with ../shared beside the working directory (shipped code
    # never builds ../shared paths; ./dev demo passes --recorded).
    assert find_recorded("") == BUNDLED_SAMPLE
    sample = load_records(BUNDLED_SAMPLE)
    assert 20 <= len(sample) <= 30
    assert {r["kind"] for r in sample} >= {"stream_text", "nonstream_text", "nonstream_tool", "error"}
    sessions = recorded_sessions(sample)
    assert sum(len(s.calls) for s in sessions) == len(sample)
    assert len(recorded_sessions(sample, 3)) == 3
    leaks = build_leaks(sample)  # the leaking sessions can be built from the bundled sample alone
    assert [lk.blocks for lk in leaks] == ["stream", "stream", "", "output", "input"]

    # the other APIs: the files beside an explicit --recorded, else the bundled samples
    bundled = {api: path for api, (_, path) in BUNDLED_APIS.items()}
    assert find_recorded_apis(BUNDLED_SAMPLE) == bundled
    assert find_recorded_apis(mine) == bundled  # nothing beside it yet
    (mine.parent / "responses.jsonl").write_text(bundled["openai_responses"].read_text())
    assert find_recorded_apis(mine) == dict(bundled, openai_responses=mine.parent / "responses.jsonl")
    api_sample = [r for p in bundled.values() for r in load_records(p)]
    assert {r["api"] for r in api_sample} == {"openai_responses", "anthropic_messages"}
    for api in ("openai_responses", "anthropic_messages"):
        kinds = {r["kind"] for r in api_sample if r["api"] == api}
        assert {"stream_text", "stream_tool", "nonstream_text", "nonstream_tool", "error"} <= kinds, api
    api_sessions = recorded_sessions(api_sample)
    assert sum(len(s.calls) for s in api_sessions) == len(api_sample)
    api_leaks = build_api_leaks(api_sample)
    assert [(lk.api, lk.blocks) for lk in api_leaks] == [
        (api, b) for api in ("openai_responses", "anthropic_messages") for b in ("stream", "stream", "input")]
    assert [lk.blocks for lk in build_api_leaks([])] == [lk.blocks for lk in api_leaks]  # no records: default models
