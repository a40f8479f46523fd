"""railcar.streams.deep: the Kingfisher deep tier over trace-shaped JSON, next to the catalog (issue 14 item 2).

Planted values are random bodies in real formats the catalog does not implement; traces are built by the real
recorder (which redacts catalog secrets before publishing) and consumed by the real processor.
"""

from __future__ import annotations

import binascii
import random
import string
import subprocess
import sys

import orjson
import pytest
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.rails import detectors as d
from railcar.rails.masking import fingerprint, mask
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.deep import DeepScanner
from railcar.streams.fileset import open_fileset
from railcar.streams.processor import SecurityProcessor, consumer_metrics
from railcar.streams.recorder import TraceRecorder

KEY = b"d" * 32
RNG = random.Random(1414)
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"


def _r(chars: str, n: int) -> str:
    return "".join(RNG.choice(chars) for _ in range(n))


# (Kingfisher rule id, value): formats outside the catalog (gitleaks' rule shapes, random bodies).
DEEP_ONLY = [
    ("betterleaks.shopify-access-token", "shpat_" + _r(HEX, 32)),
    ("betterleaks.doppler-api-token", "dp.pt." + _r(ALNUM, 43)),
    ("betterleaks.pypi-upload-token", "pypi-AgEIcHlwaS5vcmc" + _r(ALNUM + "-_", 70)),
    ("betterleaks.databricks-api-token", "dapi" + _r(HEX, 32)),
    ("betterleaks.linear-api-key", "lin_api_" + _r(ALNUM, 40)),
    ("betterleaks.age-secret-key", "AGE-SECRET-KEY-1" + _r("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
]


@pytest.fixture(scope="module")
def deep() -> DeepScanner:
    return DeepScanner(KEY)


@pytest.fixture(scope="module")
def catalog() -> Scanner:
    return Scanner(key=KEY)


def test_deep_matches_have_the_catalog_shape(deep) -> None:
    rule, value = DEEP_ONLY[0]
    text = f"export SHOPIFY_TOKEN={value} # prod é"
    [m] = deep.scan_text(text, "$.attributes.note")
    assert (m.source, m.rule, m.detector, m.kind, m.path) == ("deep", rule, rule, "secret", "$.attributes.note")
    assert text[m.start:m.end] == value
    assert m.fingerprint == fingerprint(KEY, rule, value) and m.preview == mask(rule, value)
    assert value not in repr(m) and m.confidence == 0.9 and m.validation is None
    assert deep.name.startswith("Kingfisher ") and "488 rules" in deep.name


def test_a_catalog_format_found_by_the_deep_tier_shares_id_fingerprint_and_validation(deep, catalog) -> None:
    body = "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1"
    good = "ghp_" + body + _gh_checksum(body)
    bad = "ghp_" + _r(ALNUM, 36)
    assert d.github_checksum_ok(good) and not d.github_checksum_ok(bad)
    for token, validation in ((good, "valid"), (bad, "invalid")):
        [dm] = deep.scan_text(f"token {token} end")
        [cm] = catalog.scan_text(f"token {token} end")
        assert (dm.detector, dm.rule, dm.validation) == ("github_token", "betterleaks.github-pat", validation)
        assert (dm.fingerprint, dm.preview, dm.severity) == (cm.fingerprint, cm.preview, cm.severity)


def _gh_checksum(body: str) -> str:
    """The 6-character base62 CRC32 checksum GitHub appends to the 30-character random part (GitHub engineering
    blog, "Behind GitHub's new authentication token formats")."""
    crc = binascii.crc32(body.encode())
    out = ""
    while crc:
        crc, r = divmod(crc, 62)
        out = d._B62[r] + out
    return out.rjust(6, "0")


def test_claimed_spans_are_skipped(deep, catalog) -> None:
    text = "key ghp_" + _r(ALNUM, 36) + " and " + DEEP_ONLY[3][1]
    claimed = [(m.start, m.end) for m in catalog.scan_text(text)]
    assert len(claimed) == 1
    got = deep.scan_text(text, claimed=claimed)
    assert [m.rule for m in got] == [DEEP_ONLY[3][0]]


def test_strings_of_a_span_are_scanned_in_one_call_with_their_own_paths(deep) -> None:
    items = [(f"$.s{i}", f"value: {v}", ()) for i, (_, v) in enumerate(DEEP_ONLY)]
    items.insert(2, ("$.clean", "nothing to see here", ()))
    got = deep.scan_strings(items)
    assert [(m.path, m.rule) for m in got] == [(f"$.s{i}", r) for i, (r, _) in enumerate(DEEP_ONLY)]
    for m in got:
        text = next(t for p, t, _ in items if p == m.path)
        assert text[m.start:m.end] == DEEP_ONLY[int(m.path[3:])][1]


def test_redaction_placeholders_are_not_findings(deep) -> None:
    text = "key [REDACTED:aws_access_key_id:1a2b3c4d] and [REDACTED:private_key:deadbeef] done"
    assert deep.scan_text(text) == []


def _trace_values(catalog: Scanner, contents: list[str], args: str) -> list[bytes]:
    rec = TraceRecorder(catalog, None, otlp.make_resource(agent_id="agent-deep"))
    out = []
    for i, content in enumerate(contents):
        ex = Exchange(body={"model": "m", "messages": [{"role": "system", "content": "ops assistant"},
                                                       {"role": "user", "content": content}]})
        ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {
            "content": "done", "tool_calls": [{"id": f"c{i}", "type": "function",
                                               "function": {"name": "deploy", "arguments": args}}]}}]})
        out.append(rec.build(ex)[1])
    return out


def test_consumer_finds_deep_values_in_traces_and_never_sees_what_the_sidecar_redacted(deep, catalog,
                                                                                       tmp_path) -> None:
    aws = "AKIA" + _r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
    contents = [f"Deploy with {v} now please" for _, v in DEEP_ONLY[:4]] + [f"my key is {aws}"]
    args = orjson.dumps({"env": {"LINEAR": DEEP_ONLY[4][1]}, "note": f"age {DEEP_ONLY[5][1]}"}).decode()
    values = _trace_values(catalog, contents, args)
    assert all(aws.encode() not in v for v in values)  # the recorder redacted it before publishing
    proc = SecurityProcessor(catalog, open_fileset(str(tmp_path)), "w", deep=deep,
                             metrics=consumer_metrics(CollectorRegistry()))
    for v in values:
        proc.process(v)
    found = proc.commit()
    by_det = {f["detector"] for f in found}
    assert {r for r, _ in DEEP_ONLY} <= by_det  # content, tool arguments inside JSON inside JSON
    assert "aws_access_key_id" in by_det  # from the sidecar's redaction note, not from a raw value
    deep_found = [f for f in found if f["detector"].startswith("betterleaks.")]
    assert all(f.get("source", "deep") == "deep" for f in deep_found)
    assert all(v not in orjson.dumps(found).decode() for _, v in DEEP_ONLY)  # masked previews only
    plain = SecurityProcessor(catalog, open_fileset(str(tmp_path / "plain")), "w",
                              metrics=consumer_metrics(CollectorRegistry()))
    for v in values:
        plain.process(v)
    assert {f["detector"] for f in plain.commit()} & {r for r, _ in DEEP_ONLY} == set()


NO_NET_SCAN = """
import socket, sys
from railcar.streams.deep import DeepScanner
value = sys.argv[1]
try:
    socket.create_connection(("1.1.1.1", 443), timeout=2)
    print("NETWORK")
except OSError:
    pass
print([m.rule for m in DeepScanner(b"k").scan_text("token " + value + " end")])
"""


def test_deep_scan_runs_without_a_network(tmp_path) -> None:
    # unshare -rn: a new user and network namespace with only a down loopback; the scan must work the same.
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rn is not permitted here")
    rule, value = DEEP_ONLY[1]
    out = subprocess.run(["unshare", "-rn", sys.executable, "-c", NO_NET_SCAN, value], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NETWORK" not in out.stdout and f"['{rule}']" in out.stdout


def test_offsets_are_characters_whether_the_span_is_ascii_or_not(deep) -> None:
    """The joined span is encoded once when it is ASCII (byte offsets are character offsets) and per string
    otherwise (issue 14): the same findings at the same character offsets either way."""
    for prefix in ("plain ", "héllo wörld ✓ "):
        items = [("$.a", prefix * 3, ()), *[(f"$.s{i}", f"{prefix}{v} ü", ()) for i, (_, v) in enumerate(DEEP_ONLY)]]
        got = deep.scan_strings(items)
        assert [m.rule for m in got] == [r for r, _ in DEEP_ONLY]
        for m in got:
            assert next(t for p, t, _ in items if p == m.path)[m.start:m.end] == DEEP_ONLY[int(m.path[3:])][1]
