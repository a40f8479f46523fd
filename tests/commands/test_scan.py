"""`railcar scan`: formats, gzip, most recent first, byte cap, JSONL contract, exit codes, fileset."""

import gzip
import json
import os
import subprocess
import sys

RAILCAR = [sys.executable, "-m", "railcar", "scan", "--no-progress"]


def run(*args, env=None):
    e = {**os.environ, "RAILCAR_FINGERPRINT_KEY": "scan-test-key", **(env or {})}
    return subprocess.run([*RAILCAR, *map(str, args)], capture_output=True, text=True, env=e, timeout=60)


def test_jsonl_contract_and_exit_1(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "traces.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
        + json.dumps({"messages": [{"role": "tool", "content": "AWS key AKIALALEMEL33243OLIB"}]}) + "\n")
    (data / "notes.txt").write_text("nothing here\ncall jane.roe@acme.io today\n")
    otlp = {"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": [
        {"key": "gen_ai.prompt", "value": {"stringValue": "card 4539 1488 0343 6467"}}]}]}]}]}
    with gzip.open(data / "otlp.json.gz", "wt") as fh:
        fh.write(json.dumps(otlp, indent=2))
    r = run(data, "--fileset-root", tmp_path / "fs", "--format", "jsonl")
    assert r.returncode == 1, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    by = {row["detector"]: row for row in rows}
    assert set(by) == {"aws_access_key_id", "email_address", "payment_card"}
    aws = by["aws_access_key_id"]
    assert aws["kind"] == "secret" and aws["masked_preview"] == "AKIA…OLIB"
    assert aws["location"] == {"file": str(data / "traces.jsonl"), "line": 2, "json_path": "$.messages[0].content"}
    assert by["email_address"]["location"]["line"] == 2 and by["email_address"]["location"]["json_path"] is None
    card = by["payment_card"]["location"]
    assert card["file"].endswith("otlp.json.gz") and card["json_path"].endswith(".value.stringValue")
    assert card["line"] > 1  # the line of the value inside the pretty-printed document
    assert "AKIALALEMEL33243OLIB" not in r.stdout + r.stderr
    fsdir = tmp_path / "fs" / "nemo-agent-security"
    snap = json.loads((fsdir / "security_snapshot.json").read_text())
    assert snap["counts"]["findings"] == 3 and snap["last_scan"]["files_scanned"] == 3
    n = len((fsdir / "security_suggestions.jsonl").read_text().splitlines())
    r2 = run(data, "--fileset-root", tmp_path / "fs", "--format", "jsonl")
    assert r2.returncode == 1 and [json.loads(x)["id"] for x in r2.stdout.splitlines()] == [x["id"] for x in rows]
    assert len((fsdir / "security_suggestions.jsonl").read_text().splitlines()) == n


def test_clean_exit_0_and_table(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"content": "The capital of France is Paris."}) + "\n")
    r = run(tmp_path / "a.jsonl", "--fileset-root", tmp_path / "fs")
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout and (tmp_path / "fs" / "nemo-agent-security" / "security_snapshot.json").exists()


def test_usage_errors_exit_2(tmp_path):
    r = run(tmp_path / "missing.jsonl", "--fileset-root", tmp_path / "fs")
    assert r.returncode == 2 and "missing.jsonl" in r.stderr
    (tmp_path / "a.txt").write_text("x\n")
    r = run(tmp_path / "a.txt", "--fileset-root", tmp_path / "fs", "--max-bytes", "0")
    assert r.returncode == 2 and "--max-bytes" in r.stderr


def test_most_recent_first_and_byte_cap(tmp_path):
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("AKIALALEMEL33243OLIB\n" + "x" * 100 + "\n")
    new.write_text("jane.roe@acme.io\n" + "y" * 125 + "\n")
    os.utime(old, (1_600_000_000, 1_600_000_000))
    r = run(tmp_path, "--fileset-root", tmp_path / "fs", "--format", "jsonl", "--max-bytes", "150")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["detector"] for x in rows] == ["email_address"]  # the newer file was read first, then the cap hit
    snap = json.loads((tmp_path / "fs" / "nemo-agent-security" / "security_snapshot.json").read_text())
    assert snap["last_scan"]["capped"] is True and snap["last_scan"]["bytes_scanned"] <= 150
    assert "deep_scan" in {json.loads(x)["type"] for x in
                           (tmp_path / "fs" / "nemo-agent-security" / "security_suggestions.jsonl").read_text().splitlines()}
