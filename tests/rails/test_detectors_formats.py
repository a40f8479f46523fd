"""Issue 14's new catalog formats, issue 13's false blocks, and keys glued to a prefix, through the scanner and the
stream hold-back with its default settings (``max_holdback_chars = 512``), as the sidecar runs them."""

import base64
import json
import random

import pytest

from railcar.rails import detectors as d
from railcar.rails.inline import HoldBack
from railcar.rails.scanner import Scanner

KEY = b"f" * 32
AWS = "AKIA4VXQ3MUJEAZB4O3Y"


@pytest.fixture(scope="module")
def scanner():
    return Scanner(d.CATALOG, KEY)


@pytest.fixture(scope="module")
def block(scanner):
    return HoldBack(scanner, "block")  # the default cap


def stream(hb, text, size=7):
    """Feed ``text`` in ``size``-character deltas, then flush: (released text, match or None)."""
    f = hb.filter()
    out = []
    for i in range(0, len(text), size):
        r, m = f.feed(text[i:i + size])
        out.append(r)
        if m is not None:
            return "".join(out), m
    r, m = f.flush()
    return "".join(out) + r, m


def values(scanner, text):
    return [(m.detector, text[m.start:m.end]) for m in scanner.scan_text(text)]


def _rand(rng, chars, n):
    return "".join(rng.choice(chars) for _ in range(n))


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
RNG = random.Random(14)
NEW_FORMATS = [
    ("aws_bedrock_api_key", "ABSK" + _rand(RNG, B64, 132)),
    ("aws_bedrock_api_key", "bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t" + _rand(RNG, B64, 300) + "=="),
    ("slack_legacy_token", "xoxb-263594206564-FGqddMF8t08v8N7Oq4i57vs1"),
    ("slack_legacy_token", "xoxs-416843729158-132049654-5609968301-e708ba56e1"),
    ("slack_legacy_token", "xoxa-2-511111111-31111111111-3111111111111-e039d02840a0b9379c"),
    ("gitlab_session_cookie", "vog6n55uu05vsq104fr71eyrs71decgp"),
]


@pytest.mark.parametrize("det_id,value", NEW_FORMATS)
def test_new_formats_are_found_whole_and_held_back(det_id, value, scanner, block):
    prefix = "_gitlab_session=" if det_id == "gitlab_session_cookie" else "token: "
    text = f"here {prefix}{value} done"
    assert (det_id, value) in values(scanner, text)
    released, m = stream(block, text)
    assert m is not None and m.detector == det_id
    assert value[:-3] not in released  # a block never lets the value reach the client


def test_placeholder_forms_of_the_new_formats_are_not_found(scanner):
    assert values(scanner, "ABSKQmVkcm9ja0FQSUtleS1" + "EXAMPLE" * 18) == []
    assert values(scanner, "_gitlab_session=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") == []
    assert values(scanner, "xoxs-1-2-3-xxxxxxxxxxxx") == []


@pytest.mark.parametrize("text,found", [
    (f"key{AWS}", True),            # glued to a lowercase word: the agent wrote keyAKIA...
    (f"AWS_KEY_{AWS},", True),      # after an underscore
    (f"\\n{AWS}\\n", True),         # after a JSON escape
    (f"{AWS}abc", False),           # the end is still a word boundary
    (f"{AWS},{AWS[:-1]}Z", True),   # two keys, one separator
    (f"X{AWS}", False),             # inside a longer uppercase run (base32, sequences)
    (f"1{AWS}", False),
    (f"{AWS}Q", False),
    ("TODAYINASIAASACKOFRICEFELLOVER", False),  # gitleaks' fp: ASIA inside uppercase text
])
def test_aws_key_glued_to_a_prefix(text, found, scanner):
    got = [v for det, v in values(scanner, text) if det == "aws_access_key_id"]
    assert bool(got) is found
    if found:
        assert got[0] == AWS


def test_glued_aws_key_is_blocked_in_a_stream(block):
    released, m = stream(block, f"Use accessKey{AWS} for the bucket", size=3)
    assert m is not None and m.detector == "aws_access_key_id" and AWS not in released


PROSE = ("This document explains where the deployment keeps its credentials and how the rotation job replaces "
         "them every night. Nothing here is a key: it is a description of the procedure, written for operators "
         "who need to know which file to look at, which team owns it, and what to do when the job fails. ") * 3


@pytest.mark.parametrize("header", ["-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN OPENSSH PRIVATE KEY-----",
                                    "-----BEGIN PRIVATE KEY-----"])
@pytest.mark.parametrize("sep", [" ", "\n", "\n\n"])
def test_pem_header_followed_by_prose_is_released(header, sep, block, scanner):
    text = f"The file starts with {header}{sep}{PROSE[:700]}"
    assert values(scanner, text) == []
    released, m = stream(block, text)
    assert m is None and released == text


def _pem(rng, lines=12):
    body = "\n".join(_rand(rng, B64, 64) for _ in range(lines)) + "\n" + _rand(rng, B64, 20) + "=="
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("form", ["plain", "json", "flattened", "encrypted", "pgp"])
def test_real_pem_keys_are_still_found(form, scanner):
    rng = random.Random(form)
    pem = _pem(rng)
    if form == "json":
        text = json.dumps({"key": pem})[1:-1]
    elif form == "flattened":
        text = pem.replace("\n", " ")
    elif form == "encrypted":
        text = pem.replace("-----\n", "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B2C3D4E5F\n\n", 1)
    elif form == "pgp":
        text = ("-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
                + pem.split("-----\n", 1)[1].rsplit("\n-----END", 1)[0] + "\n=8xQN\n-----END PGP PRIVATE KEY BLOCK-----")
    else:
        text = pem
    found = values(scanner, f"key:\n{text}\nbye")
    assert [det for det, _ in found] == ["private_key"]
    assert found[0][1].startswith("-----BEGIN") and found[0][1].endswith("-----")


def test_base64url_json_cursor_is_released(block, scanner):
    page = {"after": {"id": "c" * 40, "ts": 1700000000}, "filters": [{"field": f"f{i}", "op": "eq", "value": i}
                                                                      for i in range(23)]}
    cursor = base64.urlsafe_b64encode(json.dumps(page).encode()).decode().rstrip("=")
    assert cursor.startswith("eyJ") and "." not in cursor and 1300 <= len(cursor) <= 1600
    text = f'{{"next_cursor": "{cursor}", "has_more": true}}'
    assert values(scanner, text) == []
    released, m = stream(block, text)
    assert m is None and released == text


def test_a_real_jwt_is_still_blocked(block, scanner):
    def seg(o):
        return base64.urlsafe_b64encode(json.dumps(o).encode()).decode().rstrip("=")
    jwt = f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg({'sub': 'u1234567', 'iat': 1700000000})}.{'s' * 10}Q3x9"
    assert [det for det, _ in values(scanner, f"Bearer {jwt} ok")] == ["jwt"]
    released, m = stream(block, f"Bearer {jwt} ok")
    assert m is not None and m.detector == "jwt" and jwt not in released
