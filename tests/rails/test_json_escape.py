"""rails/json_escape.py, the one home of JSON-string unescaping, and its users outside the streams:
:func:`railcar.rails.redaction.redact_escaped` (trace redaction) and :func:`railcar.rails.inline.cut_key` (shared
by the hold-back and :class:`railcar.streams.withheld.Withheld`)."""

from __future__ import annotations

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planted_corpus import GENERATORS

from railcar.rails import detectors as det
from railcar.rails.inline import HoldBack, cut_key, key_openings
from railcar.rails.json_escape import decodings, rewrite, through_escapes, unescape
from railcar.rails.redaction import PLACEHOLDER_RE, redact_escaped, redact_text
from railcar.rails.scanner import Scanner
from railcar.streams.withheld import Withheld

KEY = "AKIA" + "Q3VZ7XKM" + "2PLRW5TN"
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(alphabet='ab\\u0041"n/Dd8é ', max_size=40)


def esc(value: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in value[:4]) + value[4:]


@SETTINGS
@given(text=TEXT)
def test_offsets_map_each_decoded_character_to_its_spelling(text: str) -> None:
    offsets: list[int] = []
    dec, rest = unescape(text, True, offsets)
    assert rest == "" and len(offsets) == len(dec) + 1 and offsets[-1] == len(text)
    assert offsets == sorted(offsets)
    for i in range(len(dec)):  # the spelling of character i decodes to it alone
        assert unescape(text[offsets[i]:offsets[i + 1]])[0] == dec[i]


@SETTINGS
@given(parts=st.lists(st.sampled_from(["a", "\\", "u", "0", "4", "1", "d", "8", "3", "D", "c", "e", '"', "n", "/",
                                       "\\u", "\\ud83d", "\\ude00", "\\\\", "\x00", "é"]), max_size=16))
def test_whole_text_decode_equals_the_offsets_decode(parts: list[str]) -> None:
    """The whole-text decode (str.replace, then the \\uXXXX escapes) gives what the escape-by-escape loop gives."""
    text = "".join(parts)
    assert unescape(text)[0] == unescape(text, True, [])[0]


@SETTINGS
@given(text=TEXT, a=st.integers(0, 40), b=st.integers(0, 40), new=st.text(alphabet='[R]"\\é\n', max_size=6))
def test_rewrite_decodes_to_the_released_text_and_keeps_the_spelling_around(text: str, a: int, b: int,
                                                                              new: str) -> None:
    dec = unescape(text)[0]
    a, b = sorted((a % (len(dec) + 1), b % (len(dec) + 1)))
    released = dec[:a] + new + dec[b:]
    out = rewrite(text, dec, released)
    if text == dec:  # nothing escaped: the released text is the answer as it is
        assert out == released
        return
    assert unescape(out)[0] == released
    offsets: list[int] = []
    unescape(text, True, offsets)
    assert out.startswith(text[:offsets[a]])  # the spelling before the change is kept
    assert out.endswith(text[offsets[b]:])      # and after it


def test_rewrite_of_long_text_keeps_the_spelling_outside_the_changes() -> None:
    """Prefix and suffix trimmed, no diff: a 400k-character value with two redactions far apart comes back exact;
    the spelling outside the first and last change is kept, what lies between is re-escaped."""
    body = "caf\\u00e9 " * 20000
    text = body + esc(KEY) + " " + body + esc(KEY) + body
    dec = unescape(text)[0]
    released = dec.replace(KEY, "[R]")
    out = rewrite(text, dec, released)
    assert unescape(out)[0] == released and out.startswith(body + "[R] caf") and out.endswith("[R]" + body)


def test_decodings_stop_at_depth_and_when_nothing_changes() -> None:
    twice = json.dumps({"args": json.dumps({"k": "A\u00e9"}, ensure_ascii=True)})
    levels = decodings(twice)
    assert len(levels) == 3 and "é" in levels[-1] and "\\" not in levels[-1]
    assert decodings("plain") == ["plain"] and decodings("lone \\q") == ["lone \\q"]
    assert len(decodings("\\\\\\\\\\\\\\\\x", depth=2)) == 3


def test_through_escapes_maps_changes_back_and_keeps_identity() -> None:
    text = json.dumps({"args": json.dumps({"k": KEY, "note": "caf\u00e9"})})
    seen: list[str] = []

    def change(s: str) -> str | None:
        seen.append(s)
        return s.replace(KEY, "[R]")

    out = through_escapes(esc(KEY) + " and " + text, change)
    assert out is not None and KEY not in out and KEY not in unescape(unescape(out)[0])[0]
    assert len(seen) == 3  # every level treated, the top one included
    clean = 'x \\"y\\"'
    assert through_escapes(clean, lambda s: s) is clean
    assert through_escapes(esc(KEY), lambda s: None if KEY in s else s) is None
    assert through_escapes(esc(KEY), lambda s: s + "!", top=False) == esc(KEY)[:-1] + "N!"


def test_redact_escaped_finds_keys_in_text_that_does_not_parse() -> None:
    scanner = Scanner(det.select(["secret"]), b"k" * 32)
    for text in ['{"key": "' + esc(KEY) + '", "more',           # arguments cut short
                 'Here: {"key": "' + esc(KEY) + '"} done',       # prose around JSON
                 json.dumps({"a": '{"key": "' + esc(KEY) + '"}'}),  # escaped twice
                 '{"key": "' + esc(KEY) + '"}']:
        assert not redact_text(scanner, text)[1]  # the raw scan cannot see it
        out, notes = redact_escaped(scanner, text, "$.args")
        assert [n.detector for n in notes] == ["aws_access_key_id"] and notes[0].path == "$.args"
        assert KEY not in unescape(unescape(out)[0])[0] and PLACEHOLDER_RE.search(out)
    clean = '{"note": "caf\\u00e9 \\"q\\""}'
    assert redact_escaped(scanner, clean) == (clean, [])


def test_cut_key_is_the_one_test_of_holdback_and_withheld() -> None:
    scanner = Scanner(det.select(["secret"]), b"k" * 32)
    pem = GENERATORS["private_key"](random.Random(3))
    cut = pem[:pem.index("\n", 60) + 40]  # the BEGIN line and a body line, no END line
    openings = key_openings(scanner.detectors)
    at, d = cut_key(openings, "x " + cut)
    assert at == 2 and d.id == "private_key"
    assert HoldBack(scanner).cut_key("x " + cut) == (at, d)
    assert cut_key(openings, pem) is None  # a whole key is the catalog's match, not a cut one
    header = pem.split("\n")[0] + "\nthen some prose"
    assert cut_key(openings, header) is None and cut_key(openings, header, body=False) == (0, d)
    w = Withheld(scanner)
    assert w.redact(header, "$")[1] is None and w.redact(header, "$", cut=True)[1] is not None
    out, note = w.redact("x " + cut, "$")
    assert note is not None and note.detector == "private_key" and out.startswith("x [REDACTED:private_key:")
