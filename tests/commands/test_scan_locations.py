"""`railcar scan` keeps every location of a finding (issue 14): the same key on 3 lines of one file is one finding
with 3 locations, listed on the terminal, in the JSONL output and in the snapshot; records validate against the
published JSON Schema."""

import json
import os
import subprocess
import sys

import jsonschema

from railcar.streams.findings import record_schema

RAILCAR = [sys.executable, "-m", "railcar", "scan", "--no-progress"]
AWS = "AKIALALEMEL33243OLIB"


def run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    e.update({"RAILCAR_FINGERPRINT_KEY": "scan-test-key", "COLUMNS": "200", **(env or {})})
    return subprocess.run([*RAILCAR, *map(str, args)], capture_output=True, text=True, env=e, timeout=60)


def test_same_key_on_three_lines_one_finding_three_locations(tmp_path):
    data = tmp_path / "telemetry.jsonl"
    lines = [json.dumps({"messages": [{"role": "tool", "content": f"turn {i}: {AWS}" if i in (2, 4, 5) else "ok"}]})
             for i in range(1, 7)]
    data.write_text("\n".join(lines) + "\n")
    r = run(data, "--fileset-root", tmp_path / "fs", "--format", "jsonl")
    assert r.returncode == 1, r.stderr
    [row] = [json.loads(x) for x in r.stdout.splitlines()]
    assert row["count"] == 3 and row["location_count"] == 3
    assert [(x["line"], x["json_path"]) for x in row["locations"]] == [(n, "$.messages[0].content")
                                                                      for n in (2, 4, 5)]
    assert row["outcome"] == "seen-at-rest" and row["source"] == "catalog"
    jsonschema.Draft202012Validator(record_schema()).validate(row)
    for n in (2, 4, 5):  # the terminal (stderr with --format jsonl) lists each one
        assert f"{data}:{n}  $.messages[0].content" in r.stderr
    assert AWS not in r.stdout + r.stderr
    snap = json.loads((tmp_path / "fs" / "nemo-agent-security" / "security_snapshot.json").read_text())
    assert [x["line"] for x in snap["findings"][0]["locations"]] == [2, 4, 5]
    table = run(data, "--fileset-root", tmp_path / "fs")
    assert table.returncode == 1 and f"{data}:5  $.messages[0].content" in table.stdout


def test_locations_cap_from_the_setting(tmp_path):
    data = tmp_path / "many.txt"
    data.write_text("".join(f"line {i} {AWS}\n" for i in range(30)))
    r = run(data, "--fileset-root", tmp_path / "fs", "--format", "jsonl",
            env={"RAILCAR_DETECTION_MAX_LOCATIONS_PER_FINDING": "4"})
    assert r.returncode == 1, r.stderr
    [row] = [json.loads(x) for x in r.stdout.splitlines()]
    assert row["count"] == 30 and row["location_count"] == 30 and len(row["locations"]) == 4
    assert "and 26 more" in r.stderr


def test_deep_flag_finds_what_the_catalog_does_not(tmp_path):
    """``--deep`` runs the deep tier (Kingfisher) over what the catalog did not claim: a Shopify token (a format
    outside the catalog) is found only with it, at its line and JSON path, with its rule id and tier."""
    token = "shpat_" + "".join("0123456789abcdef"[(i * 7) % 16] for i in range(32))
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "ok"}]}) + "\n"
                    + json.dumps({"messages": [{"role": "tool", "content": f"shop token {token}"}]}) + "\n"
                    + f"plain text line with {token}\n")
    plain = run(data, "--fileset-root", tmp_path / "fs1", "--format", "jsonl")
    assert plain.returncode == 0 and plain.stdout == "", plain.stderr
    deep = run(data, "--fileset-root", tmp_path / "fs2", "--format", "jsonl", "--deep")
    assert deep.returncode == 1, deep.stderr
    rows = [json.loads(x) for x in deep.stdout.splitlines()]
    assert all(r["source"] == "deep" and "shopify" in r["rule"] for r in rows)
    # a finding is one value per (file, JSON path): the JSON line and the text line are two, one location each
    assert sorted((x["line"], x["json_path"] or "") for r in rows for x in r["locations"]) == [
        (2, "$.messages[0].content"), (3, "")]
    assert len({r["fingerprint"] for r in rows}) == 1
    assert token not in deep.stdout + deep.stderr
