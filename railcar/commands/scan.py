"""``railcar scan PATH... --fileset-root DIR [--format jsonl] [--max-bytes N] [--no-progress] [--deep]``: offline
telemetry scan (``--deep``: the deep tier, :mod:`railcar.streams.deep`, over what the catalog did not claim).

Walks files and directories (recursively), most recently modified first, reading JSONL (one JSON document per
line, e.g. OTLP JSON exports or recorded chat completions), whole-file JSON (an OTLP JSON ``TracesData`` file),
and plain text; ``.gz`` (gzip magic) is decompressed on the fly. Stops at ``--max-bytes`` of (decompressed) input,
1 GB by default as the "Secure Agents" workflow caps telemetry (``../shared/seeds/000_*.txt``). Findings and
suggestions go to ``DIR/nemo-agent-security/`` (:mod:`railcar.streams.fileset`); a summary table goes to the terminal
(stderr with ``--format jsonl``, where stdout carries one finding per line as JSON with ``id``, ``kind``,
``detector``, ``masked_preview``, ``location`` {``file``, 1-based ``line``, ``json_path``} (the first occurrence),
``locations`` (every distinct one, up to ``detection.max_locations_per_finding``), ``location_count`` and the other
fields of the findings record, ``railcar/streams/findings_record.schema.json``), followed by each finding's
locations (``file:line json_path``, the first :data:`SHOWN_LOCATIONS`), so every affected line can be purged.

Exit codes: 0 nothing found, 1 findings, 2 usage or input error (missing path, unreadable file, bad option).
Fingerprint key: ``[detection]`` key file / variable; when neither is set, a random key is created once in
``DIR/nemo-agent-security/.fingerprint-key`` (0600) so re-runs give the same finding ids.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from railcar.core.jsonpath import iter_strings
from railcar.rails.scanner import Scanner
from railcar.settings import RailcarConfig
from railcar.streams.deep import DeepScanner
from railcar.streams.fileset import Fileset, FilesetError
from railcar.streams.findings import FindingsAggregator, tiers_name
from railcar.streams.pipeline import build_deep, build_scanner, configured_fileset

SHOWN_LOCATIONS = 20  # per finding on the terminal; the JSONL output and the snapshot keep them all (up to the cap)


class ScanInputError(ValueError):
    """A path is missing or unreadable; the message names it."""


def collect_files(paths: list[str]) -> list[Path]:
    """Files under ``paths`` (recursing into directories, skipping hidden entries), newest mtime first.

    Raises :class:`ScanInputError` naming a path that does not exist."""
    found: dict[Path, float] = {}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise ScanInputError(f"{raw}: no such file or directory")
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d != "nemo-agent-security"]
                for name in files:
                    if not name.startswith("."):
                        f = Path(root) / name
                        found[f] = f.stat().st_mtime
        else:
            found[p] = p.stat().st_mtime
    return sorted(found, key=lambda f: (-found[f], str(f)))


def _open(path: Path) -> BinaryIO:
    f = open(path, "rb")
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.GzipFile(fileobj=f)  # type: ignore[return-value]
    f.seek(0)
    return f


def _line_of(raw: bytes, value: str) -> int:
    """Best-effort 1-based line of ``value`` inside a multi-line JSON document (by its encoded form)."""
    needle = orjson.dumps(value)[1:-1][:48]
    pos = raw.find(needle) if needle else -1
    return raw.count(b"\n", 0, pos) + 1 if pos >= 0 else 1


class FileScanner:
    """Scans files into a :class:`FindingsAggregator`, counting bytes against a cap."""

    def __init__(self, scanner: Scanner, agg: FindingsAggregator, max_bytes: int,
                 deep: DeepScanner | None = None) -> None:
        self.scanner, self.agg, self.max_bytes, self.deep = scanner, agg, max_bytes, deep
        self.bytes = 0
        self.records = 0
        self.capped = False

    def scan_file(self, path: Path, on_bytes: Any = None) -> None:
        """Scan one file; raises :class:`ScanInputError` when it cannot be read or decompressed."""
        name = str(path)
        try:
            with _open(path) as fh:
                first_line = fh.readline().strip()
                whole_json = first_line[:1] in (b"{", b"[") and not _is_json(first_line)
                fh.seek(0)
                if whole_json:
                    self._scan_document(fh, name, on_bytes)
                else:
                    self._scan_lines(fh, name, on_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise ScanInputError(f"{name}: cannot read: {exc}") from None

    def _budget(self, n: int) -> bool:
        if self.bytes + n > self.max_bytes:
            self.capped = True
            return False
        self.bytes += n
        return True

    def _scan_lines(self, fh: BinaryIO, name: str, on_bytes: Any) -> None:
        scanner, agg = self.scanner, self.agg
        for lineno, line in enumerate(fh, 1):
            if not self._budget(len(line)):
                return
            self.records += 1
            if on_bytes:
                on_bytes(len(line))
            body = line.strip()
            matches = None
            if body[:1] in (b"{", b"["):
                try:
                    matches = scanner.scan_json_text(body)  # gates on the raw line, parses only on a hit
                except orjson.JSONDecodeError:
                    matches = None
            if matches is None:
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                matches = scanner.scan_text(text, "$") if scanner.gate(line) else []
                loc: dict[str, Any] = {"file": name, "line": lineno, "json_path": None}
                for m in matches:
                    agg.add_match(m, loc)
                if self.deep is not None:
                    self._add_deep([("$", text)], matches, loc)
                continue
            for m in matches:
                agg.add_match(m, {"file": name, "line": lineno})
            if self.deep is not None:
                self._add_deep(list(iter_strings(orjson.loads(body))), matches, {"file": name, "line": lineno})

    def _add_deep(self, strings: list[tuple[str, str]], claimed: list[Any], loc: dict[str, Any]) -> None:
        """The deep tier over ``strings`` (``(json path, text)``), minus the spans the catalog's ``claimed`` matches
        hold, into the aggregator at ``loc``."""
        assert self.deep is not None
        spans: dict[str, list[tuple[int, int]]] = {}
        for m in claimed:
            spans.setdefault(m.path, []).append((m.start, m.end))
        for m in self.deep.scan_strings([(p, s, spans.get(p, ())) for p, s in strings]):
            self.agg.add_match(m, loc)

    def _scan_document(self, fh: BinaryIO, name: str, on_bytes: Any) -> None:
        raw = fh.read(max(0, self.max_bytes - self.bytes) + 1)
        if not self._budget(len(raw)):
            raw = raw[: max(0, self.max_bytes - self.bytes)]
            self.capped = True
            self.bytes += len(raw)
        if on_bytes:
            on_bytes(len(raw))
        self.records += 1
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Truncated by the cap or not JSON after all: scan it as text, line by line.
            self._scan_text_blob(raw, name)
            return
        for path, s in iter_strings(doc):
            found = self.scanner.scan_text(s, path)  # prefilters itself: no separate gate() pass
            for m in found:
                self.agg.add_match(m, {"file": name, "line": _line_of(raw, s)})
            if self.deep is not None:
                self._add_deep([(path, s)], found, {"file": name, "line": _line_of(raw, s)})

    def _scan_text_blob(self, raw: bytes, name: str) -> None:
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            text = line.decode("utf-8", "replace")
            found = self.scanner.scan_text(text, "$") if self.scanner.gate(line) else []
            loc: dict[str, Any] = {"file": name, "line": lineno, "json_path": None}
            for m in found:
                self.agg.add_match(m, loc)
            if self.deep is not None:
                self._add_deep([("$", text)], found, loc)


def _is_json(b: bytes) -> bool:
    try:
        orjson.loads(b)
        return True
    except orjson.JSONDecodeError:
        return False


def _summary_table(agg: FindingsAggregator, fs: FileScanner, files: int, new_sugg: int, root: str) -> Table:
    t = Table(title=f"railcar scan: {files} file(s), {fs.bytes / 1e6:.1f} MB"
                    f"{' (stopped at the byte cap)' if fs.capped else ''}")
    for col in ("detector", "kind", "severity", "findings", "occurrences", "example"):
        t.add_column(col)
    rows: dict[str, list[Any]] = {}
    for f in agg.findings():
        r = rows.setdefault(f.detector, [f.detector, f.kind, f.severity, 0, 0, f.masked_preview])
        r[3] += 1
        r[4] += f.count
    for r in rows.values():
        t.add_row(*[str(x) for x in r])
    if not rows:
        t.add_row("-", "-", "-", "0", "0", "clean")
    t.caption = f"{new_sugg} new suggestion(s) -> {root}/nemo-agent-security/"
    return t


def _locations_text(findings: list[Any]) -> Text:
    """Each finding's locations, ``file:line  json_path`` (a plain-text line: no path), worst first."""
    out = Text()
    for f in findings:
        out.append(f"{f.detector} {f.masked_preview} ({f.location_count} location(s), {f.count} occurrence(s))\n",
                   style="bold")
        for loc in f.locations[:SHOWN_LOCATIONS]:
            out.append(f"  {loc.get('file')}:{loc.get('line')}  {loc.get('json_path') or '(text)'}\n")
        more = f.location_count - min(len(f.locations), SHOWN_LOCATIONS)
        if more > 0:
            out.append(f"  ... and {more} more (--format jsonl and the snapshot list up to the cap)\n")
    return out


def _open_inputs(args: argparse.Namespace, config: RailcarConfig,
                 root: str) -> tuple[list[Path], Fileset, Scanner]:
    """The files to scan, the fileset and the scanner (its key kept in the fileset when none is configured).
    Raises :class:`ScanInputError`, :class:`FilesetError`, ``ValueError`` or ``OSError`` naming what is wrong."""
    files = collect_files(args.paths)
    fileset = configured_fileset(config, root)
    return files, fileset, build_scanner(config, key_store=fileset)


def _scan_files(fs: FileScanner, files: list[Path], err: Console, no_progress: bool) -> int:
    """Scan ``files`` newest first until the byte cap, with a progress bar on a terminal; returns how many were
    scanned. Raises :class:`ScanInputError` for a file that cannot be read."""
    total = min(sum(f.stat().st_size for f in files), fs.max_bytes)
    scanned = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err, disable=no_progress or not err.is_terminal, transient=True) as progress:
        task = progress.add_task("scanning", total=total)
        for f in files:
            if fs.capped:
                break
            progress.update(task, description=f"scanning {f.name}")
            fs.scan_file(f, on_bytes=lambda n: progress.advance(task, n))
            scanned += 1
    return scanned


def main(args: argparse.Namespace, config: RailcarConfig) -> int:
    """Entry point of ``railcar scan`` (see the module docstring); returns the exit code."""
    err = Console(stderr=True)
    term = err if args.format == "jsonl" else Console()
    if args.max_bytes is not None and args.max_bytes <= 0:
        err.print("railcar scan: --max-bytes: must be > 0")
        return 2
    root = args.fileset_root or config.fileset.root
    try:
        files, fileset, scanner = _open_inputs(args, config, root)
    except (ScanInputError, FilesetError, ValueError, OSError) as exc:
        err.print(f"railcar scan: {exc}", markup=False)
        return 2
    agg = FindingsAggregator(scanner.detectors, source="scan",
                             max_locations=config.detection.max_locations_per_finding)
    fs = FileScanner(scanner, agg, args.max_bytes, build_deep(config, scanner, deep=True) if args.deep else None)
    try:
        scanned = _scan_files(fs, files, err, args.no_progress)
    except ScanInputError as exc:
        err.print(f"railcar scan: {exc}", markup=False)
        return 2
    agg.note_scan(bytes_scanned=fs.bytes, records=fs.records, files=scanned, capped=fs.capped,
                  tiers=tiers_name(fs.deep))
    writer = "scan-" + hashlib.sha256("\0".join(sorted(str(f.resolve()) for f in files)).encode()).hexdigest()[:12]
    try:
        result = fileset.commit(agg.state(writer), agg.suggestions(), writer)
    except (FilesetError, OSError) as exc:
        err.print(f"railcar scan: cannot write the fileset: {exc}", markup=False)
        return 2
    findings = agg.findings()
    if args.format == "jsonl":
        out = sys.stdout.buffer
        for f in findings:
            out.write(orjson.dumps(f.as_dict()) + b"\n")
        out.flush()
    term.print(_summary_table(agg, fs, scanned, result.new_suggestions, root))
    if findings:
        term.print(_locations_text(findings), end="")
    return 1 if findings else 0
