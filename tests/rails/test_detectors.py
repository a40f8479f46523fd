"""The detector catalog: pattern hygiene and each validator's rules (sources in rails/detectors.py)."""

import re

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from railcar.rails import detectors as d
from railcar.rails.scanner import Scanner


def test_catalog_ids_unique_and_patterns_have_one_capture():
    ids = [x.id for x in d.CATALOG]
    assert len(ids) == len(set(ids))
    for det in d.CATALOG:
        assert det.kind in ("secret", "pii")
        assert 0 < det.confidence <= 1
        for p in det.patterns:
            assert re2.compile(p).groups == 1, (det.id, p)


def test_required_formats_are_covered():
    ids = {x.id for x in d.CATALOG}
    for need in ("email_address", "us_ssn", "phone_number", "payment_card", "iban", "private_key", "jwt",
                 "aws_access_key_id", "github_token", "github_fine_grained_pat", "gitlab_token", "slack_token",
                 "stripe_key", "npm_token", "google_api_key", "openai_api_key", "anthropic_api_key",
                 "nvidia_api_key", "huggingface_token", "groq_api_key", "mistral_api_key", "cohere_api_key"):
        assert need in ids


def test_secret_literals_occur_in_their_pattern_prefix():
    # Literals are what the stream hold-back watches for: every secret value starts with one (or, for keyword
    # context detectors, the keyword is required by the pattern).
    for det in d.CATALOG:
        if det.kind == "secret":
            assert det.literals, det.id
            assert det.max_len and det.max_len > 0


@pytest.mark.parametrize("ssn,ok", [("536-22-1234", True), ("000-22-1234", False), ("666-22-1234", False),
                                    ("912-22-1234", False), ("536-00-1234", False), ("536-22-0000", False),
                                    ("078-05-1120", False)])
def test_ssn_rules(ssn, ok):
    assert d.ssn_ok(ssn) is ok


@pytest.mark.parametrize("card,ok", [("4539 1488 0343 6467", True), ("4539148803436468", False),
                                     ("378282246310005", True), ("5105105105105100", True),
                                     ("1234567812345670", False), ("4111111111111111", False)])
def test_card_luhn_and_issuer(card, ok):
    assert d.card_ok(card) is ok


def test_iban_mod97():
    assert d.iban_ok("DE89 3704 0044 0532 0130 00")
    assert not d.iban_ok("DE88 3704 0044 0532 0130 00")
    assert not d.iban_ok("DE89 3704 0044 0532 0130")  # wrong length for DE


def test_jwt_needs_decodable_header_with_alg():
    good = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.sig"
    assert d.jwt_ok(good)
    assert not d.jwt_ok("eyJmb28iOiJiYXIifQ.eyJzdWIiOiIxIn0.sig")  # header without alg
    assert not d.jwt_ok("eymB3kYEDhNfKscWapB.eyDtcWNOh9NU8ZWGLWH.g13")


def _with_checksum(body: str) -> str:
    """``ghp_`` + a 30-char random part + base62(CRC32(part)), as GitHub's token format specifies."""
    import binascii

    crc, out = binascii.crc32(body.encode()), ""
    while crc:
        crc, r = divmod(crc, 62)
        out = d._B62[r] + out
    return "ghp_" + body + out.rjust(6, "0")


def test_github_checksum():
    body = "A" * 10 + "b" * 10 + "0123456789"
    assert d.github_checksum_ok(_with_checksum(body))
    assert not d.github_checksum_ok("ghp_" + body + "zzzzzz")
    # The scanner reports a checksum-valid token with the confirmed confidence, a checksum-less one still found
    # (test corpora use random bodies) at the catalog's base confidence.

    body = "Xr7Qw2Lm9Tz4Kp8Vn3Bc6Hd1Jf5Gs0"  # a realistic random part (the one above is too repetitive to scan)
    det = d.get("github_token")
    valid, random_body = _with_checksum(body), "ghp_" + body + "k3Xq9Z"
    [m1] = Scanner(key=b"k" * 32).scan_text(f"token {valid} here")
    [m2] = Scanner(key=b"k" * 32).scan_text(f"token {random_body} here")
    assert (m1.detector, m1.confidence) == ("github_token", det.confirmed_confidence)
    assert (m2.detector, m2.confidence) == ("github_token", det.confidence) and m2.confidence < m1.confidence


@pytest.mark.parametrize("value", ["AKIAIOSFODNN7EXAMPLE", "sk-xxxxxxxxxxxxxxxxxxxxxxxx", "<your key>",
                                   "AIzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ghp_000000000000000000000000000000000000"])
def test_placeholders(value):
    assert d.is_placeholder(value, 4)


def test_real_looking_values_are_not_placeholders():
    assert not d.is_placeholder("AKIALALEMEL33243OLIB", 4)
    assert not d.is_placeholder("ghp_ljlgcugi9yo8ncycci5odfl1m0usx07swa0f", 4)


@pytest.mark.parametrize("value", ["AKIAIOSFODNN7EXAMPLE", "AKIAXXXXXXXXXXXXXXXX", "AKIAABABABABABABABAB",
                                   "ASIA2222222222222222"])
def test_aws_placeholders_are_rejected(value):
    assert not d.get("aws_access_key_id").validate(value)


def test_aws_random_key_with_a_placeholder_word_inside_is_a_finding():
    # bench/pipeline.py planted this random key (body random over [A-Z2-7]): "XXXX" inside it made it a
    # "placeholder", so one planted key in ~700 was never a finding.

    key = "AKIA4VXXXXUJEAZB4O3Y"
    assert d.get("aws_access_key_id").validate(key)
    assert d.get("aws_access_key_id").validate("AKIAQ7YOURM3KD5ZTB2N")
    text = f"The CI job uses {key} for the bucket."
    assert [text[m.start:m.end] for m in Scanner().scan_text(text)] == [key]


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16))
@settings(max_examples=300, deadline=None)
def test_aws_random_bodies_are_found_unless_low_variety_or_example(body):
    # gitleaks' aws-access-token rule (allowlist ".+EXAMPLE$") plus Railcar's low-variety rules, nothing else.
    low_variety = len(set(body)) < 5 or re.search(r"(.)\1{7,}", body) is not None
    expected = not (low_variety or body.endswith("EXAMPLE"))
    assert d.get("aws_access_key_id").validate("AKIA" + body) is expected


def test_phone_uses_libphonenumber():
    assert d.phone_ok("+1 650-253-0000")
    assert d.phone_ok("+44 20 7946 0958")
    assert not d.phone_ok("+1 111-111-1111")
    assert not d.phone_ok("123-456-7890")  # area code 123 does not exist


def test_email_rules():
    assert d.email_ok("jane.roe@acme.io")
    assert not d.email_ok("user@example.com")
    assert not d.email_ok("logo@2x.png")


def test_select_and_get():
    assert all(x.kind == "pii" for x in d.select(["pii"]))
    assert "jwt" not in {x.id for x in d.select(disabled=["jwt"])}
    with pytest.raises(ValueError, match="disabled_detectors"):
        d.select(disabled=["nope"])
    with pytest.raises(KeyError, match="nope"):
        d.get("nope")


@pytest.mark.parametrize("text", [
    # A Luhn-valid Visa number glued inside hex digests / identifiers (SHA-256, a content ref, a build id).
    "sha256:e3b0c44298fc1c14a4539148803436467fb92427ae41e4649b934ca495991b7852b855",
    "ref 9f4539148803436467 and commit 4539148803436467ab",
    "build_4539148803436467",
])
def test_card_digits_inside_hex_or_identifiers_are_not_cards(text):

    assert d.card_ok("4539148803436467")  # the digits alone are a valid card: only the context rejects them
    assert [m.detector for m in Scanner(key=b"k" * 32).scan_text(text) if m.detector == "payment_card"] == []


def test_card_after_json_escape_or_punctuation_still_found():

    sc = Scanner(key=b"k" * 32)
    for text in ('{"note":"card:\\n4539148803436467"}', "pay (4539 1488 0343 6467).", "card=4539148803436467;"):
        assert [m.detector for m in sc.scan_text(text)] == ["payment_card"], text
