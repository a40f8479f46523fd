"""commands/demo.py: ``railcar demo`` end to end on recorded traffic (a shortened session list), as a process.

Runs the real command (replay upstream, librdkafka mock broker, three sidecars with the default guardrail config,
the real ``openai`` client, the consumer group) and checks the fileset, ``demo-summary.json``, ``report.html`` and
the printed summary: the leaking sessions produce their findings, the clean recorded sessions produce none, every
blocked stream ended with the error chunk then ``[DONE]``, and no planted value is printed or persisted.
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

from railcar.commands.demo import BUNDLED_SAMPLE, find_recorded, recorded_sessions
from railcar.rails.scanner import Scanner
from railcar.tools.demo_data.leaks import build_leaks
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


def _planted_values(records: list[dict]) -> list[str]:
    """The raw values the leaking sessions carry (the same seed as the demo), to prove none is persisted."""
    scanner = Scanner()
    values = []
    for lk in build_leaks(records):
        for r in lk.records:
            body = r["response_body"]
            texts = [orjson.dumps(r["request"]).decode()]
            if r.get("stream"):
                texts.append("".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                                     for line in body.split("\n\n") if line.startswith("data: {")))
            else:
                texts.append(body)
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
    assert len(recorded) == SESSIONS
    assert {s["name"] for s in leaking} == {"leak-stream-aws-key", "leak-stream-private-key",
                                            "leak-tool-result-pii", "leak-answer-google-key"}
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
    assert len(rotate) == 3  # AWS key, private key, Google key


def test_blocked_streams_end_with_the_error_chunk(demo_run) -> None:
    res, out = demo_run
    summary = json.loads((out / "demo-summary.json").read_text())
    calls = [c for s in summary["session_results"] for c in s["calls"]]
    blocked_streams = [c for c in calls if c["result"] == "blocked_stream"]
    assert {c["session"] for c in blocked_streams} == {"leak-stream-aws-key", "leak-stream-private-key"}
    for c in blocked_streams:
        assert c["error_chunk_last"] is True
        err = json.loads(c["tail"][0])["error"]
        # The inline hold-back ([guardrails.inline], on with any guardrail config) stops the key before the
        # chunked regex rail would have seen it: its rail is "sensitive data".
        assert err == {"message": "Blocked by sensitive data rails.", "type": "guardrails_violation",
                       "param": "sensitive data", "code": "content_blocked"}
        assert c["tail"][1] == "[DONE]"
        assert 0 < c["tokens"] < 300  # tokens flowed first (stream_first), then the hold-back cut the answer
    kinds = {(c["session"], c["result"], c["rail"]) for c in calls if c["result"].startswith("blocked")}
    assert ("attack-prompt-injection", "blocked_input", "regex check input") in kinds
    assert ("leak-answer-google-key", "blocked_output", "sensitive data") in kinds
    # the clean recorded sessions are relayed: nothing of theirs is blocked
    leaky = {"leak-stream-aws-key", "leak-stream-private-key", "leak-answer-google-key", "attack-prompt-injection"}
    assert {c["session"] for c in calls if c["result"].startswith("blocked")} == leaky


def test_printed_summary_and_nothing_raw_persisted(demo_run) -> None:
    res, out = demo_run
    text = res.stdout
    summary = json.loads((out / "demo-summary.json").read_text())
    for s in ("Traffic through the sidecars", "blocked streams", "Blocked by the rails", "sensitive data",
              "regex check input", "tokens relayed", "trace events published to otlp_spans", "Findings (5)",
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
    values = _planted_values(load_records(RECORDED))
    assert len(values) >= 5
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
