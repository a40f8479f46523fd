"""The scanner's shortcuts lose no match (issue 14): the literal/free prefilter, windows and anchored starts
around literal occurrences, NUL-joined strings and the per-document validation cache give exactly what running
every pattern's ``finditer`` over every string gives (the reference below, the pre-issue-14 algorithm without its
gate), on the planted corpus, real traffic, gitleaks' cases and edge cases built for each shortcut."""

from __future__ import annotations

import json
import random
import re
import string
import sys
from functools import cache
from pathlib import Path

import pytest
import re2

from railcar.core.jsonpath import iter_strings
from railcar.rails import detectors as D
from railcar.rails import scanner as S
from railcar.rails.masking import fingerprint, mask
from railcar.rails.scanner import Match, Scanner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planted_corpus import CONTEXT, GENERATORS, generate  # noqa: E402
from shared_fixtures import GITLEAKS_CASES, RECORDED_CHAT  # noqa: E402

KEY = b"prefilter-test"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=KEY)


@cache
def _compiled(pattern: str):
    return re2.compile(pattern, S.re2_options())


def reference_text(sc: Scanner, text: str, path: str = "$") -> list[Match]:
    """Every pattern's finditer over the whole text, validated, overlaps resolved: no shortcut at all."""
    found = []
    for d in sc.detectors:
        for p in d.patterns:
            for m in _compiled(p).finditer(text):
                v = m.group(1)
                if v is not None and d.validate(v):
                    found.append(Match(d.id, d.kind, d.confidence_for(v), d.severity, path, m.start(1), m.end(1),
                                       fingerprint(sc.key, d.id, v), mask(d.id, v)))
    return S._resolve_overlaps(found) if len(found) > 1 else found


def reference_json(sc: Scanner, obj) -> list[Match]:
    out = [m for p, t in iter_strings(obj) for m in reference_text(sc, t, p)]
    return sorted(out, key=lambda m: (m.path, m.start))


def _token(rng: random.Random, det: str) -> str:
    """A valid value of ``det``, with the keyword context its detector needs (``COHERE_API_KEY=...``)."""
    return CONTEXT.get(det, "{v}").format(v=GENERATORS[det](rng))


def test_planted_corpus_and_real_traffic_match_the_reference(scanner) -> None:
    lines = [line for line, _ in generate(150, seed=14, density=0.6)]
    lines += RECORDED_CHAT.read_text().splitlines()[:40]  # large real documents: windows and anchored starts
    found = 0
    for line in lines:
        want = reference_json(scanner, json.loads(line))
        assert scanner.scan_json(json.loads(line)) == want
        assert scanner.scan_json_text(line) == want
        found += len(want)
    assert found > 100  # the corpus exercises the detectors


def test_gitleaks_cases_match_the_reference(scanner) -> None:
    cases = [json.loads(x) for x in GITLEAKS_CASES.read_text().splitlines()]
    hits = 0
    for case in cases[::3]:
        want = reference_text(scanner, case["text"])
        assert scanner.scan_text(case["text"]) == want, case["rule_id"]
        hits += bool(want)
    assert hits > 100


def test_values_at_the_edges_of_joined_strings(scanner) -> None:
    """Two NULs between strings stand for a string's end and the next one's start: a value ending one string
    and one starting the next are both found, alike with ``scan_strings`` and one ``scan_text`` per string."""
    rng = random.Random(3)
    tokens = {det: _token(rng, det) for det in GENERATORS}
    items = []
    for i, tok in enumerate(tokens.values()):
        items.append((f"$.end[{i}]", f"see {tok}"))    # value at the very end
        items.append((f"$.start[{i}]", f"{tok} seen"))  # value at the very start
        items.append((f"$.alone[{i}]", tok))
        items.append((f"$.short[{i}]", "x"))             # shorter than any value: skipped
    got = scanner.scan_strings(items)
    assert got == [scanner.scan_text(t, p) for p, t in items] == [reference_text(scanner, t, p) for p, t in items]
    assert sum(map(len, got)) >= 3 * len(tokens)  # every planted value, in all three places


def test_every_catalog_pattern_is_joinable_and_requires_its_literals() -> None:
    sc = Scanner()
    assert sc._joinable
    assert {p.detector.id for p in sc._free} == {"us_ssn", "payment_card", "iban", "phone_number"}
    assert sc.min_len == 5  # "+1234" is the shortest phone capture; "a@b.io" the shortest email
    assert all(p.lead is not None for p in sc._pats if p.detector.literals and p.detector.id != "private_key")
    # a NUL anywhere inside a value, or a bare ^ the separator cannot stand in for, makes a pattern not joinable
    assert not S._joinable(r"(ab[^c]+)\b") and not S._joinable(r"^(abc)") and S._joinable(r"(?:^|[^a])(abc)\b")


def test_leads_and_widths_hold_on_every_match() -> None:
    """What the windows rely on, checked on real matches: a required literal starts at most ``lead`` characters
    after the match's start, and the match is at most ``width`` characters long."""
    sc = Scanner()
    texts = [line for line, _ in generate(150, seed=5, density=0.8)]
    texts += [json.loads(x)["text"] for x in GITLEAKS_CASES.read_text().splitlines()]
    checked = 0
    for pat in sc._pats:
        if pat.lead is None:
            continue
        lits = [x.lower() if pat.detector.literals_nocase else x for x in pat.detector.literals]
        for t in texts:
            for m in _compiled(pat.text).finditer(t):
                s = m.group(0).lower() if pat.detector.literals_nocase else m.group(0)
                assert min(i for i in (s.find(x) for x in lits) if i >= 0) <= pat.lead, (pat.detector.id, s)
                assert pat.width is None or len(s) <= pat.width
                checked += 1
    assert checked > 500


def test_literal_analysis_refuses_what_it_cannot_show() -> None:
    assert S._literal_lead(r"(?:^|\W)(ab[cd]_[0-9]{8})\b", ["abc_", "abd_"], False) == (True, 1)
    assert S._literal_lead(r"(x+AKIA)", ["AKIA"], False) == (True, None)  # required, unbounded lead
    assert S._literal_lead(r"(ab|cd)", ["ab"], False) == (False, None)  # "cd" matches without the literal
    assert S._literal_lead(r"(?i:abc)", ["abc"], False) == (False, None)  # case-folded, search is not
    assert S._literal_lead(r"(?i:abc)", ["ABC"], True) == (True, 0)
    assert S._literal_lead(r"(a(?<=a)b)", ["ab"], False) == (False, None)  # not parseable as RE2-and-Python


def test_a_wrong_literal_list_costs_speed_not_matches() -> None:
    bad = D.get("github_token").__class__(**{**D.get("github_token").__dict__, "literals": ("zzz",)})
    sc = Scanner([bad], key=KEY)
    tok = _token(random.Random(1), "github_token")
    assert [p.lead for p in sc._pats] == [None] and len(sc._free) == 1
    assert [m.detector for m in sc.scan_text(f"token {tok} here")] == ["github_token"]


def test_large_texts_take_windows_anchored_starts_and_the_overflow_path(scanner) -> None:
    rng = random.Random(9)
    filler = " ".join(rng.choice(["ledger", "deploy", "shard"]) for _ in range(2000))  # > _SMALL bytes
    jwt, aws, gh = _token(rng, "jwt"), _token(rng, "aws_access_key_id"), _token(rng, "github_token")
    texts = [
        f"{filler} {jwt} {filler} {aws}, {gh}",                       # windows (aws, gh) and anchored (jwt)
        f"{'eyJ ' * (S._MAX_OCCURRENCES + 10)}{filler} {jwt}",          # too many occurrences: whole text
        f"{'AKIA eyJ ' * (S._MAX_OCCURRENCES + 10)} {aws} {jwt}",       # the same through the all-literals pass
        f"é{filler}ü {jwt} ✓ {aws}\u2019s {gh}",                         # non-ASCII: 4 bytes per character
        f"{filler} CO_API_\u212aEY = {''.join(rng.choice(string.ascii_letters) for _ in range(40))} {filler}",
    ]
    for t in texts:
        want = reference_text(scanner, t)
        assert scanner.scan_text(t) == want
        assert [t[m.start:m.end] for m in want]  # each text holds a value
    assert {m.detector for m in scanner.scan_text(texts[0])} == {"jwt", "aws_access_key_id", "github_token"}


def test_a_json_escape_of_a_printable_character_takes_the_parse_path(scanner) -> None:
    """``\\u0041KIA...`` is ``AKIA...`` once decoded: the raw pass cannot see it, so the document is parsed.
    (Before issue 14 the check looked at the escape's last hex digit and missed ``\\u0041``.)"""
    key = "AKIA" + "QWERTYUZ234567AB"
    for esc in ("\\u0041KIA", "A\\u004bIA", "\\u0061" + "b" * 2 + " " + "AKIA"):
        raw = json.dumps({"a": f"key {key}"}).replace("AKIA", esc, 1)
        want = reference_json(scanner, json.loads(raw))
        assert scanner.scan_json_text(raw) == want
    assert [m.detector for m in scanner.scan_json_text(json.dumps({"a": f"k {key}"}).replace("A", "\\u0041", 1))] \
        == ["aws_access_key_id"]


def test_small_documents_that_are_not_json(scanner) -> None:
    """Parse-first keeps the contract: nothing to find -> [] without checking validity; a value -> the error."""
    assert scanner.scan_json_text(b'{"a": "AKIA not json') == []
    with pytest.raises(ValueError):
        scanner.scan_json_text(b'{"a": "AKIAQWERTYUZ234567AB" not json')


def test_gate_is_a_superset_of_what_matches(scanner) -> None:
    rng = random.Random(2)
    for det in GENERATORS:
        text = f"x {_token(rng, det)} y"
        hit = {scanner._pats[i].detector.id for i in scanner.gate(text)}
        assert {m.detector for m in scanner.scan_text(text)} <= hit
    assert scanner.gate("nothing here at all") == []


def test_run_of_eight_matches_the_back_reference_regex() -> None:
    rng = random.Random(4)
    rx = re.compile(r"(.)\1{7,}")
    for _ in range(3000):
        alphabet = rng.choice(["ab\n", "a\x00\x7f", "aé", string.printable])
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))
        assert D._has_run8(s) == (rx.search(s) is not None), repr(s)
