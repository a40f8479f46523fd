"""Redaction: typed placeholders, notes, nothing recoverable, idempotent."""

import json
import sys
from pathlib import Path

import pytest

from railcar.core.exchange import RedactionNote
from railcar.rails.redaction import PLACEHOLDER_RE, placeholder, redact_json, redact_text
from railcar.rails.scanner import Scanner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planted_corpus import generate  # noqa: E402


@pytest.fixture(scope="module")
def scanner():
    return Scanner(key=b"redaction-key")


def test_placeholder_and_note(scanner):
    out, notes = redact_text(scanner, "key AKIALALEMEL33243OLIB, mail jane.roe@acme.io", "$.content")
    [n1, n2] = notes
    assert out == f"key {placeholder('aws_access_key_id', n1.fingerprint)}, mail {placeholder('email_address', n2.fingerprint)}"
    assert PLACEHOLDER_RE.fullmatch(placeholder("aws_access_key_id", n1.fingerprint)).group(1) == "aws_access_key_id"
    assert (n1.detector, n1.kind, n1.path, n1.masked_preview) == ("aws_access_key_id", "secret", "$.content", "AKIA…OLIB")
    assert RedactionNote.from_dict(n1.as_dict()) == n1
    with pytest.raises(ValueError, match="fingerprint"):
        RedactionNote.from_dict({"detector": "x", "kind": "secret", "path": "$", "masked_preview": "x"})


def test_untouched_input_is_shared_and_not_mutated(scanner):
    clean = {"a": ["hello", {"b": "world"}], "n": 3}
    out, notes = redact_json(scanner, clean)
    assert out is clean and notes == []
    dirty = {"keep": {"x": "fine"}, "msg": "ssn 536-22-1234"}
    out, notes = redact_json(scanner, dirty)
    assert dirty["msg"] == "ssn 536-22-1234"  # input unchanged
    assert out["keep"] is dirty["keep"] and "536-22-1234" not in out["msg"]
    assert notes[0].path == "$.msg"


def test_no_planted_value_recoverable_and_idempotent(scanner):
    for line, planted in generate(1500, seed=9, density=0.8):
        obj = json.loads(line)
        out, notes = redact_json(scanner, obj)
        dumped = json.dumps(out)
        blob = dumped + json.dumps(json.loads(dumped))
        for det, value in planted:
            assert value not in blob, (det, value[:6])
            assert json.dumps(value)[1:-1] not in dumped, det  # nor its JSON-escaped form
            assert any(n.detector == det for n in notes), det
        for n in notes:
            assert n.masked_preview not in ("", None)
        again, notes2 = redact_json(scanner, out)
        assert again == out and notes2 == []
