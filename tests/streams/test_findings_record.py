"""Findings keep their locations (cap + total), carry outcome / namespace / rule source, seal revisions into an
outbox that survives a restart, and validate against the published JSON Schema (issue 14)."""

from __future__ import annotations

import dataclasses

import jsonschema
import pytest

from railcar.rails.redaction import redact_text
from railcar.rails.scanner import Scanner
from railcar.streams.findings import FindingsAggregator, merge_states, record_schema, worse_outcome

KEY = b"record-key"
AWS = "AKIALALEMEL33243OLIB"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = record_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _trace_loc(i: int, outcome: str = "delivered") -> dict:
    return {"agent": "bot", "namespace": "team-a", "trace_id": f"{i:032x}", "span_id": f"{i:016x}",
            "outcome": outcome}


def test_same_key_on_three_lines_is_one_finding_with_three_locations(validator) -> None:
    s = Scanner(key=KEY)
    agg = FindingsAggregator(s.detectors)
    for line in (1, 2, 3):
        for m in s.scan_text(f"key {AWS}", "$.content"):
            agg.add_match(m, {"file": "t.jsonl", "line": line})
    [f] = agg.findings()
    assert f.count == 3 and f.location_count == 3
    assert [(x["file"], x["line"], x["json_path"]) for x in f.locations] == [("t.jsonl", n, "$.content")
                                                                          for n in (1, 2, 3)]
    assert f.location == f.locations[0] and f.outcome == "seen-at-rest" and f.agent == ""
    assert (f.source, f.rule, f.validation) == ("catalog", "aws_access_key_id", None)
    agg.state("w")
    validator.validate(f.as_dict())


def test_locations_are_capped_and_counted_in_full() -> None:
    s = Scanner(key=KEY)
    agg = FindingsAggregator(s.detectors, max_locations=5)
    m = s.scan_text(AWS, "$.content")[0]
    for i in range(12):
        agg.add_match(m, _trace_loc(i))
        agg.add_match(m, _trace_loc(i))  # the same place twice: an occurrence, not a location
    [f] = agg.findings()
    assert f.count == 24 and f.location_count == 12 and len(f.locations) == 5
    assert [x["trace_id"] for x in f.locations] == [f"{i:032x}" for i in range(5)]


def test_outcome_from_span_and_notes_worst_wins(validator) -> None:
    s = Scanner(key=KEY)
    _, notes = redact_text(s, AWS, "$.content")
    agg = FindingsAggregator(s.detectors)
    f = agg.add_note(notes[0], _trace_loc(1, "blocked"))
    assert f.outcome == "blocked" and f.locations[0]["outcome"] == "blocked"
    agg.add_note(notes[0], _trace_loc(2))  # a note in a span that was not blocked: the value was redacted
    assert f.outcome == "redacted" and f.locations[1]["outcome"] == "redacted"
    agg.add_match(s.scan_text(AWS, "$.content")[0], _trace_loc(3))  # in the clear in a delivered span
    assert f.outcome == "delivered" and f.namespace == "team-a" and f.agent == "bot"
    assert worse_outcome("blocked", "seen-at-rest") == "seen-at-rest"
    agg.state("w")
    validator.validate(f.as_dict())


def test_deep_tier_match_carries_its_rule_and_validation(validator) -> None:
    s = Scanner(key=KEY)
    m = s.scan_text(AWS, "$.content")[0]
    deep = dataclasses.replace(m, source="deep", rule="kingfisher.aws.1", validation="valid")
    agg = FindingsAggregator(s.detectors)
    f = agg.add_match(deep, _trace_loc(1))
    assert (f.source, f.rule, f.validation) == ("deep", "kingfisher.aws.1", "valid")
    agg.state("w")
    validator.validate(f.as_dict())


def test_revisions_outbox_and_restart_resend_the_same_record() -> None:
    s = Scanner(key=KEY)
    m = s.scan_text(AWS, "$.content")[0]
    agg = FindingsAggregator(s.detectors, outbox=True)
    agg.add_match(m, _trace_loc(1))
    st1 = agg.state("w")
    [rec] = agg.pending()
    assert rec["revision"] == 1 and st1["outbox"] == [(rec["id"], 1)]
    assert agg.state("w")["outbox"] == [(rec["id"], 1)] and agg.pending()[0]["revision"] == 1  # unchanged: no bump
    agg.positions["spans/0"] = 7
    st = agg.state("w")
    # a crash before the acknowledgement: the restarted writer sends the identical record again
    again = FindingsAggregator(s.detectors, outbox=True)
    again.restore(st)
    assert again.pending() == [rec] and again.positions == {"spans/0": 7}
    assert again.acknowledge(rec["id"], 1) and again.pending() == []
    # a recurrence (another conversation) is a new revision with the new count and location
    again.add_match(m, _trace_loc(2))
    again.state("w")
    [rec2] = again.pending()
    assert (rec2["id"], rec2["revision"], rec2["count"], rec2["location_count"]) == (rec["id"], 2, 2, 2)
    assert not again.acknowledge(rec["id"], 1)  # a stale acknowledgement leaves the newer revision pending
    assert again.pending() == [rec2]


def test_without_outbox_nothing_is_pending() -> None:
    s = Scanner(key=KEY)
    agg = FindingsAggregator(s.detectors)
    agg.add_match(s.scan_text(AWS, "$.content")[0], {"file": "a", "line": 1})
    assert agg.state("scan")["outbox"] == [] and agg.pending() == []
    assert agg.findings()[0].revision == 1


def test_merge_states_unions_locations_up_to_the_cap() -> None:
    s = Scanner(key=KEY)
    m = s.scan_text(AWS, "$.content")[0]
    a, b = FindingsAggregator(s.detectors, max_locations=3), FindingsAggregator(s.detectors, max_locations=3)
    for i in range(2):
        a.add_match(m, _trace_loc(i))
    for i in range(1, 6):
        b.add_match(m, _trace_loc(i))
    [f] = merge_states([a.state("w1"), b.state("w2")])["findings"]
    assert f["count"] == 7 and len(f["locations"]) == 3
    # 2 + 3 kept distinct (one shared) = 4, plus the 2 that w2 counted past its cap
    assert f["location_count"] == 6


def test_older_state_without_locations_is_restored() -> None:
    s = Scanner(key=KEY)
    agg = FindingsAggregator(s.detectors)
    agg.add_match(s.scan_text(AWS, "$.content")[0], {"agent": "bot"})
    old = agg.state("w")
    for f in old["findings"]:
        for k in ("locations", "location_count", "revision", "outcome", "source", "rule", "schema_version"):
            f.pop(k)
    b = FindingsAggregator(s.detectors)
    b.restore(old)
    [f] = b.findings()
    assert f.locations == [f.location] and f.location_count == 1 and f.schema_version == 1
