"""Findings (stable ids, aggregation) and suggestions (data_safety, guardrails, deep_scan)."""

from datetime import UTC, datetime, timedelta, timezone

from railcar.rails.redaction import redact_text
from railcar.rails.scanner import Scanner
from railcar.streams.findings import FindingsAggregator, finding_id, merge_states

KEY = b"findings-key"


def _agg_with(texts, loc):
    s = Scanner(key=KEY)
    agg = FindingsAggregator()
    for t in texts:
        for m in s.scan_text(t, "$.content"):
            agg.add_match(m, loc)
    return agg


def test_same_secret_same_location_same_id_across_runs():
    a = _agg_with(["AKIALALEMEL33243OLIB"], {"file": "t.jsonl", "line": 1})
    b = _agg_with(["again AKIALALEMEL33243OLIB"], {"file": "t.jsonl", "line": 9})
    assert [f.id for f in a.findings()] == [f.id for f in b.findings()]
    other_place = _agg_with(["AKIALALEMEL33243OLIB"], {"file": "u.jsonl", "line": 1})
    assert other_place.findings()[0].id != a.findings()[0].id


def test_count_and_first_last_seen():
    s = Scanner(key=KEY)
    agg = FindingsAggregator()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(3):
        for m in s.scan_text("mail jane.roe@acme.io"):
            agg.add_match(m, {"agent": "bot"}, seen_at=t0 + timedelta(hours=i))
    [f] = agg.findings()
    assert f.count == 3 and f.first_seen.startswith("2025-01-01T00") and f.last_seen.startswith("2025-01-01T02")
    assert f.type == "pii" and f.masked_preview == "j***@acme.io" and "jane.roe" not in str(f.as_dict())


def test_redaction_notes_merge_with_matches():
    s = Scanner(key=KEY)
    _, notes = redact_text(s, "AKIALALEMEL33243OLIB", "$.content")
    agg = FindingsAggregator()
    f1 = agg.add_note(notes[0], {"agent": "bot"})
    f2 = agg.add_match(s.scan_text("AKIALALEMEL33243OLIB", "$.content")[0], {"agent": "bot"})
    assert f1.id == f2.id and f2.count == 2
    assert f1.id == finding_id("aws_access_key_id", notes[0].fingerprint, {"agent": "bot", "json_path": "$.content"})


def test_suggestions_by_type_and_deterministic_ids():
    def build():
        agg = _agg_with(["key AKIALALEMEL33243OLIB ssn 536-22-1234"], {"agent": "bot"})
        agg.observe_model_path("bot", "gpt-4o", [])
        agg.observe_model_path("bot", "llama-3.1-8b", [])
        agg.observe_model_path("safe", "llama", ["content safety check input $model=nemoguard-content-safety"])
        return agg.suggestions()

    s1, s2 = build(), build()
    assert [s.id for s in s1] == [s.id for s in s2]
    types = [s.type for s in s1]
    assert types.count("data_safety") == 2 and types.count("guardrails") == 1 and types.count("deep_scan") == 1
    secret = next(s for s in s1 if s.type == "data_safety" and s.priority == "critical")
    assert "Rotate" in secret.title and secret.actions[0].startswith("Rotate")
    pii = next(s for s in s1 if s.type == "data_safety" and s.priority == "high")
    assert "evaluation or optimization" in pii.detail
    guard = next(s for s in s1 if s.type == "guardrails")
    assert guard.scope == "bot"  # the guarded agent gets no suggestion
    # one suggestion per agent, naming every unguarded model it calls
    assert "gpt-4o" in guard.detail and "llama-3.1-8b" in guard.detail


def test_capped_scan_suggests_deep_scan():
    agg = FindingsAggregator()
    agg.note_scan(bytes_scanned=10, capped=True)
    assert [s.type for s in agg.suggestions()] == ["deep_scan"]


def test_merge_states_sums_writers():
    a = _agg_with(["AKIALALEMEL33243OLIB"], {"agent": "bot"})
    b = _agg_with(["AKIALALEMEL33243OLIB", "AKIALALEMEL33243OLIB"], {"agent": "bot"})
    merged = merge_states([a.state("w1"), b.state("w2")])
    [f] = merged["findings"]
    assert f["count"] == 3 and set(merged["writers"]) == {"w1", "w2"}


def test_restore_continues_counts():
    a = _agg_with(["AKIALALEMEL33243OLIB"], {"agent": "bot"})
    b = FindingsAggregator()
    b.restore(a.state("w"))
    s = Scanner(key=KEY)
    b.add_match(s.scan_text("AKIALALEMEL33243OLIB", "$.content")[0], {"agent": "bot"})
    assert b.findings()[0].count == 2
