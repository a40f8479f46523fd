"""streams/report.py: the fileset rendered as one self-contained HTML page, checked in headless Chromium.

The fileset is real: the detector catalog scans planted values, the findings aggregator builds findings and
suggestions, and :class:`railcar.streams.fileset.LocalFileset` commits them. ``railcar report`` (the CLI) renders it;
Chromium loads the file with networking off, dumps the DOM and takes a screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from railcar.cli import main as cli_main
from railcar.rails.scanner import Scanner
from railcar.streams.fileset import open_fileset
from railcar.streams.findings import FindingsAggregator
from railcar.tools.report import render_report

AWS = "AKIA" + "QX7ZK2MB4TRWNPLE"[:16]
EMAIL = "maria.keller@fjordline-mail.no"
SSN = "512-43-7781"
HOSTILE_AGENT = "<script>alert(1)</script>&agent"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                                    reason="chromium not installed (apt-get install -y chromium); required in CI")


def _fileset(root: Path) -> None:
    scanner = Scanner(key=b"report-test-key-0123456789abcdef")
    agg = FindingsAggregator(scanner.detectors, source="consume")
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    texts = [("support-agent", f"deploy with aws_access_key_id={AWS} today", 0),
             ("billing-agent", f"customer record: {EMAIL}, ssn {SSN}", 40),
             (HOSTILE_AGENT, f"again {AWS}", 90)]
    for agent, text, minutes in texts:
        for m in scanner.scan_text(text, "$.events.railcar.content.text"):
            agg.add_match(m, {"agent": agent, "trace_id": "ab" * 16, "span_id": "cd" * 8},
                          seen_at=t0 + timedelta(minutes=minutes))
    agg.observe_model_path("support-agent", "gpt-4o", ["regex check input", "regex check output"])
    agg.observe_model_path("billing-agent", "llama-3.3-70b", ["content safety check input $model=content_safety"])
    agg.note_scan(bytes_scanned=4096, records=3)
    open_fileset(str(root)).commit(agg.state("test"), agg.suggestions(), "test")


@pytest.fixture
def report(tmp_path: Path) -> Path:
    _fileset(tmp_path / "fs")
    out = tmp_path / "out" / "report.html"
    assert cli_main(["report", "--fileset-root", str(tmp_path / "fs"), "--out", str(out)]) == 0
    return out


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=90)


def test_page_is_self_contained_escaped_and_masked(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    # no external references of any kind: no script, no src/href, no url() in CSS, no @import
    assert not re.search(r"<script|\ssrc=|\shref=|url\(|@import", page, re.I)
    # the hostile agent name is text, never markup
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;agent" in page
    # masked previews only
    for raw in (AWS, EMAIL, SSN, AWS[4:]):
        assert raw not in page
    assert "AKIA…" in page and "***-**-7781" in page and "m***@fjordline-mail.no" in page


@needs_chromium
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    url = report.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    html = dom.stdout.decode()
    text = re.sub(r"<[^>]+>", " ", html)
    text = re.sub(r"\s+", " ", text)
    assert "Railcar security report" in text
    for heading in ("Findings by type", "Findings by agent", "Timeline", "Suggestions", "Guardrail coverage"):
        assert heading in text
    # findings: types, detectors, agents, masked previews, follow-up actions
    for s in ("aws_access_key_id", "email_address", "us_ssn", "support-agent", "billing-agent", "Leaked secret",
              "Personal data", "***-**-7781", "Rotate the credential now"):
        assert s in text, s
    # the hostile name stayed text in the live DOM (dump-dom re-serializes it escaped), no script element exists
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    # coverage: billing-agent runs a content-safety rail (guarded), support-agent only regex rails (unguarded)
    cov = text[text.index("Guardrail coverage"):]
    assert re.search(r"billing-agent guarded", cov) and re.search(r"support-agent unguarded", cov)
    # suggestion types and their actions
    assert "Data safety" in text and "Guardrails" in text
    # charts are inline SVG: bars for the 3 detectors with findings, one dot per finding on the timeline
    assert html.count("<rect") >= 3
    assert html.count("<circle") == 4  # AWS key for two agents, e-mail address, SSN

    shot = tmp_path / "report.png"
    res = _chromium(["--window-size=1280,2200", "--hide-scrollbars", f"--screenshot={shot}", url], tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr.decode(errors="replace")[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1280, 2200)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank canvas
    keep = os.environ.get("REPORT_SCREENSHOT_OUT")
    if keep:
        shutil.copy(shot, keep)


def test_render_is_pure_and_handles_an_empty_fileset() -> None:
    page = render_report({}, [])
    assert page.startswith("<!DOCTYPE html>") and "No secrets or personal data were found" in page
    assert "No model paths were observed" in page
    with pytest.raises(TypeError, match="snapshot"):
        render_report([], [])  # type: ignore[arg-type]


def test_cli_errors_name_the_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["report", "--fileset-root", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")]) == 2
    assert "--fileset-root" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()  # a reader creates nothing
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    assert cli_main(["report", "--fileset-root", str(not_a_dir), "--out", str(tmp_path / "r.html")]) == 2
    assert "--fileset-root" in capsys.readouterr().err
    (tmp_path / "torn" / "nemo-agent-security").mkdir(parents=True)
    (tmp_path / "torn" / "nemo-agent-security" / "security_snapshot.json").write_text("{not json")
    assert cli_main(["report", "--fileset-root", str(tmp_path / "torn"), "--out", str(tmp_path / "r.html")]) == 2
    assert "--fileset-root" in capsys.readouterr().err
    _fileset(tmp_path / "fs")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["report", "--fileset-root", str(tmp_path / "fs"), "--out", str(blocker / "r.html")]) == 2
    assert "--out" in capsys.readouterr().err


def test_report_command_runs_as_a_process(tmp_path: Path) -> None:
    _fileset(tmp_path / "fs")
    out = tmp_path / "r.html"
    res = subprocess.run([sys.executable, "-m", "railcar", "report", "--fileset-root", str(tmp_path / "fs"),
                          "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "4 findings" in res.stdout  # the AWS key under two agents, the e-mail address, the SSN
    assert out.read_text().count("<section") == 6  # two charts, timeline, findings, suggestions, coverage
