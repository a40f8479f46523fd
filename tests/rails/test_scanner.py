"""The scanning engine: spans, JSON paths, escaped JSON, fingerprints, previews, the planted corpus and real traffic."""

import json
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from railcar.core.jsonpath import iter_strings
from railcar.rails.inline import holdback_from_config
from railcar.rails.redaction import redact_text
from railcar.rails.scanner import Scanner, scanner_from_config
from railcar.rails.settings import DetectionConfig, GuardrailsConfig, InlineConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from planted_corpus import GENERATORS, generate  # noqa: E402
from shared_fixtures import RECORDED_CHAT

RECORDED = RECORDED_CHAT


@pytest.fixture(scope="module")
def scanner():
    return Scanner(key=b"test-key")


def test_span_and_preview(scanner):
    text = "use AKIALALEMEL33243OLIB for s3"
    [m] = scanner.scan_text(text)
    assert (m.detector, m.kind) == ("aws_access_key_id", "secret")
    assert text[m.start:m.end] == "AKIALALEMEL33243OLIB"
    assert m.preview == "AKIA…OLIB" and "LALEMEL33243" not in m.preview
    assert len(m.fingerprint) == 16


def test_prefix_glued_to_a_word_is_not_a_token(scanner):
    # short lowercase prefixes glued to a word are part of it (``task-...``, ``shelf_...``); an AWS key id glued
    # to a lowercase word is still a key (the agent wrote ``keyAKIA...``), inside an uppercase run it is not
    assert scanner.scan_text("pnpm_" + "a1B2c3D4e5" * 3 + "a1B2c3") == []
    assert scanner.scan_text("XAKIALALEMEL33243OLIB") == []
    assert [m.detector for m in scanner.scan_text("xAKIALALEMEL33243OLIB")] == ["aws_access_key_id"]


def test_json_paths(scanner):
    obj = {"messages": [{"role": "user", "content": "mail jane.roe@acme.io"}], "odd key": ["ssn 536-22-1234"]}
    got = {(m.detector, m.path) for m in scanner.scan_json(obj)}
    assert got == {("email_address", "$.messages[0].content"), ("us_ssn", '$["odd key"][0]')}


def test_json_escaped_text(scanner):
    pem = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpQIBAAKCAQEAn6/O8li+SX4m98LLYt/PKSzEmQ++ZBD7Loh9P13f4yQ92EF3\n"
           "yxR5MsXFu9PRsrYQA7/4UTPHiC4y2sAVCBg4C2yyBpUEtMQjyCESi6Y=\n-----END RSA PRIVATE KEY-----")
    key = "ghp_ljlgcugi9yo8ncycci5odfl1m0usx07swa0f"
    escaped = json.dumps({"args": json.dumps({"pem": pem, "k": key})})  # JSON inside JSON, as a raw line
    dets = Counter(m.detector for m in scanner.scan_text(escaped))
    assert dets == {"private_key": 1, "github_token": 1}
    # after \n (escaped newline) a token is still found
    assert [m.detector for m in scanner.scan_text(r'"BACKUP=1\nGITHUB=' + key + r'\"')] == ["github_token"]
    # the same PEM escaped and raw gives the same fingerprint
    raw_fp = scanner.scan_text(pem)[0].fingerprint
    assert {m.fingerprint for m in scanner.scan_text(escaped) if m.detector == "private_key"} == {raw_fp}


def test_scan_json_text_equals_parse_then_scan(scanner):
    for line, _ in generate(300, seed=11, density=0.7):
        assert scanner.scan_json_text(line) == scanner.scan_json(json.loads(line))


def test_fingerprint_is_keyed_and_normalised():
    a, b = Scanner(key=b"k1"), Scanner(key=b"k2")
    fa = a.scan_text("card 4539 1488 0343 6467")[0].fingerprint
    assert fa == a.scan_text("card 4539-1488-0343-6467")[0].fingerprint
    assert fa != b.scan_text("card 4539 1488 0343 6467")[0].fingerprint
    assert Scanner().ephemeral_key


def test_overlaps_resolved_once(scanner):
    ms = scanner.scan_text("call +1 650-253-0000 or 4539148803436467")
    spans = [(m.start, m.end) for m in ms]
    assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
    assert {m.detector for m in ms} == {"phone_number", "payment_card"}


def test_pattern_info_for_holdback(scanner):
    info = {i["id"]: i for i in scanner.pattern_info()}
    assert info["aws_access_key_id"]["max_len"] == 20 and "AKIA" in info["aws_access_key_id"]["literals"]
    assert info["private_key"]["patterns"]


def _truth(value: str) -> str:
    return value.replace("\\n", "\n")


def test_planted_corpus_recall_and_precision(scanner):
    data = generate(4000, seed=5, density=0.6)
    tp = fp = fn = 0
    per_det = Counter()
    for line, planted in data:
        strings = dict(iter_strings(orjson.loads(line)))
        got = [(m.detector, _truth(strings[m.path][m.start:m.end])) for m in scanner.scan_json_text(line)]
        for g in got:
            if any(g[0] == w[0] and (w[1] in g[1] or g[1] in w[1]) for w in planted):
                tp += 1
            else:
                fp += 1
        for w in planted:
            per_det[w[0]] += 1
            if not any(g[0] == w[0] and (w[1] in g[1] or g[1] in w[1]) for g in got):
                fn += 1
    assert set(per_det) == set(GENERATORS)  # every detector kind was planted
    recall = 1 - fn / sum(per_det.values())
    precision = tp / (tp + fp)
    assert recall >= 0.99, (recall, fn)
    assert precision >= 0.99, (precision, fp)


def test_recorded_traffic_has_no_secret_findings(scanner):
    pii = []
    for line in RECORDED.read_text().splitlines():
        for m in scanner.scan_json_text(line):
            assert m.kind != "secret", m
            pii.append(m)
    # The recordings were reviewed: they hold no email, phone, SSN, card or IBAN of a real person, so any PII
    # finding here would be a false positive (token counts, ids, timestamps, base64 are all in this traffic).
    assert pii == []


def test_unconfigured_key_is_shared_by_every_scanner_in_the_process():
    # With no fingerprint key configured, the sidecar builds two scanners (the inline hold-back's, secrets only, and
    # the trace recorder's): an inline placeholder must carry the same fingerprint as the recorded redaction note.
    text = "deploy with AKIAZ3MHQWERTYXU4ABC today"
    recorder = scanner_from_config(DetectionConfig(), environ={})
    hold = holdback_from_config(GuardrailsConfig(config_path="default", inline=InlineConfig(action="redact")),
                                DetectionConfig(), environ={})
    assert recorder.ephemeral_key and hold is not None
    inline_out, match, _ = hold.redact_or_block(text)
    _, notes = redact_text(recorder, text)
    assert match is None and f"[REDACTED:aws_access_key_id:{notes[0].fingerprint[:8]}]" in inline_out
