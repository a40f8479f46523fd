"""The security fileset ``nemo-agent-security/`` (NeMo Platform "Secure Agents", ``../shared/seeds/000_*.txt``).

Files:

* ``security_snapshot.json``: the current state (counts by type, detector and agent; coverage; last scan; the
  findings). Replaced atomically: written to a temp file in the same directory, fsynced, renamed over the old one,
  then the directory is fsynced. A reader (or a writer killed mid-write) sees the old or the new file, never a torn one.
* ``security_suggestions.jsonl``: one suggestion per line, appended, never duplicated (dedup by suggestion id,
  across re-runs and restarts); fsynced before :meth:`commit` returns. A line torn by a crash was never acknowledged
  and is cut off by the next commit.
* ``.writers/<writer_id>.json``: each writer's own state (its findings and scan counters). The snapshot is the merge
  of all writers' states, so several consumers of one group each contribute without overwriting one another, and a
  re-run of the same writer replaces (not doubles) its contribution.
* ``.lock``: the single-writer critical section. Local backend: ``fcntl.flock(LOCK_EX)`` (one host or a filesystem
  with working flock). S3 backend: a lock object created with ``If-None-Match: *`` (conditional write), released by
  delete; a lock older than ``lock_ttl_s`` is considered abandoned and broken.

Files and directories are created 0600/0700 (local). Errors: ``OSError`` from the filesystem, ``FilesetError`` for a
lock that cannot be taken in time or an unusable root (the message names ``fileset.root``).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from railcar.streams.findings import Suggestion, build_snapshot, merge_states, now_iso

FILESET = "nemo-agent-security"
SNAPSHOT = "security_snapshot.json"
SUGGESTIONS = "security_suggestions.jsonl"


class FilesetError(RuntimeError):
    """The fileset cannot be written (lock timeout, bad root)."""


@dataclass
class CommitResult:
    """What :meth:`commit` did: the snapshot written and how many suggestion lines were new."""

    snapshot: dict[str, Any]
    new_suggestions: int


def _safe(writer_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", writer_id)[:128] or "default"


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _sugg_dicts(suggestions: Iterable[Suggestion | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [s.as_dict() if hasattr(s, "as_dict") else dict(s) for s in suggestions]


def _new_lines(existing: bytes, items: list[dict[str, Any]]) -> tuple[list[bytes], Counter[str]]:
    """``(lines, counts)``: the JSONL lines of the ``items`` whose ``id`` is neither in ``existing`` (the
    suggestions file's bytes) nor earlier in ``items`` (what both backends append), and the suggestion count by
    ``type`` of the file once they are appended (for the snapshot, without reading the file a second time).
    Unparseable or non-object existing lines are skipped."""
    seen = set()
    counts: Counter[str] = Counter()  # by type (build_snapshot reads only the known types)
    for line in existing.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):  # TypeError: an unhashable id
            s = orjson.loads(line)
            if isinstance(s, dict):
                counts[str(s.get("type"))] += 1
                if "id" in s:
                    seen.add(s["id"])
    new = []
    for s in items:
        if s["id"] not in seen:
            seen.add(s["id"])
            counts[str(s.get("type"))] += 1
            new.append(orjson.dumps(s) + b"\n")
    return new, counts


class Fileset(abc.ABC):
    """What both backends share: :meth:`commit`. A backend provides ``lock()``, ``_put_state``,
    ``_append_suggestions`` (returns ``(number of new lines, counts by type)``), ``_states``, ``_put_snapshot``
    and the readers ``load_state``, ``read_snapshot``, ``read_suggestions``."""

    def commit(self, state: Mapping[str, Any], suggestions: Iterable[Suggestion | Mapping[str, Any]],
               writer_id: str) -> CommitResult:
        """Under the lock: store this writer's ``state`` (:meth:`FindingsAggregator.state`), append the
        suggestions whose id is not in the file yet, rebuild and atomically replace the snapshot. Raises
        :class:`FilesetError` when the lock cannot be taken in time, ``OSError`` (local) or botocore's
        ``ClientError`` (S3) when a write fails."""
        state = {**state, "writer": writer_id}
        with self.lock():
            self._put_state(writer_id, state)
            new, counts = self._append_suggestions(_sugg_dicts(suggestions))
            merged = merge_states(self._states())
            snap = build_snapshot(merged, state.get("last_scan", {}), counts)
            self._put_snapshot(snap)
        return CommitResult(snap, new)

    @abc.abstractmethod
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The single-writer critical section; raises :class:`FilesetError` when it cannot be taken in time."""

    @abc.abstractmethod
    def _put_state(self, writer_id: str, state: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def _append_suggestions(self, items: list[dict[str, Any]]) -> tuple[int, Counter[str]]: ...

    @abc.abstractmethod
    def _states(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    def _put_snapshot(self, snap: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def load_state(self, writer_id: str) -> dict[str, Any] | None:
        """A writer's previously committed state (for a consumer restarting), or None."""

    @abc.abstractmethod
    def read_snapshot(self) -> dict[str, Any] | None:
        """The parsed ``security_snapshot.json``, or None when there is none yet."""

    @abc.abstractmethod
    def read_suggestions(self) -> list[dict[str, Any]]:
        """Every parseable line of ``security_suggestions.jsonl``, in file order ([] when absent)."""


class LocalFileset(Fileset):
    """``<root>/nemo-agent-security/`` on a local (or flock-capable shared) filesystem."""

    def __init__(self, root: str | os.PathLike[str], lock_timeout_s: float = 60.0) -> None:
        self.dir = Path(root) / FILESET
        self.lock_timeout_s = lock_timeout_s
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (self.dir / ".writers").mkdir(exist_ok=True, mode=0o700)
        except OSError as exc:
            raise FilesetError(f"fileset.root: cannot create {self.dir}: {exc.strerror}") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``.lock``; raises :class:`FilesetError` after ``lock_timeout_s``."""
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FilesetError(f"fileset.root: {self.dir}/.lock held by another writer") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _fsync_dir(self, d: Path) -> None:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Temp file + fsync + rename + fsync(dir): ``path`` is the old or the new content, never torn."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        self._fsync_dir(path.parent)

    def _put_snapshot(self, snap: Mapping[str, Any]) -> None:
        self.write_atomic(self.dir / SNAPSHOT, _dumps(snap))

    def _put_state(self, writer_id: str, state: Mapping[str, Any]) -> None:
        self.write_atomic(self.dir / ".writers" / f"{_safe(writer_id)}.json", orjson.dumps(state))

    def load_state(self, writer_id: str) -> dict[str, Any] | None:
        """A writer's previously committed state (for a consumer restarting), or None."""
        try:
            return orjson.loads((self.dir / ".writers" / f"{_safe(writer_id)}.json").read_bytes())
        except FileNotFoundError:
            return None

    def _states(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.dir / ".writers").glob("*.json")):
            with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
                out.append(orjson.loads(p.read_bytes()))
        return out

    def _append_suggestions(self, items: list[dict[str, Any]]) -> tuple[int, Counter[str]]:
        path = self.dir / SUGGESTIONS
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            data = b""
            size = os.fstat(fd).st_size
            if size:
                data = os.pread(fd, size, 0)
                if not data.endswith(b"\n"):  # a torn, never-acknowledged tail from a crash
                    data = data[: data.rfind(b"\n") + 1]
                    os.ftruncate(fd, len(data))
            new, counts = _new_lines(data, items)
            if new:
                os.lseek(fd, 0, os.SEEK_END)
                buf = memoryview(b"".join(new))
                while buf:
                    buf = buf[os.write(fd, buf):]
            os.fsync(fd)
            return len(new), counts
        finally:
            os.close(fd)

    def read_snapshot(self) -> dict[str, Any] | None:
        """The parsed ``security_snapshot.json``, or None when there is none yet; raises ``ValueError`` when it
        is not JSON."""
        try:
            return json.loads((self.dir / SNAPSHOT).read_bytes())
        except FileNotFoundError:
            return None

    def read_suggestions(self) -> list[dict[str, Any]]:
        """Every parseable line of ``security_suggestions.jsonl``, in file order ([] when absent)."""
        try:
            lines = (self.dir / SUGGESTIONS).read_bytes().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out


class S3Fileset(Fileset):
    """``s3://bucket/prefix/nemo-agent-security/`` on S3 or an S3-compatible store (MinIO, moto).

    S3 has no append: the suggestions object is rewritten whole (deduplicated) under the lock; each PUT is atomic,
    so readers see the old or the new object.
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, endpoint_url: str = "",
                 lock_timeout_s: float = 60.0, lock_ttl_s: float = 300.0) -> None:
        if client is None:
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint_url or None)
        self.s3 = client
        self.bucket = bucket
        self.base = "/".join(p for p in (prefix.strip("/"), FILESET) if p) + "/"
        self.lock_timeout_s = lock_timeout_s
        self.lock_ttl_s = lock_ttl_s

    def _get(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self.base + key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def _put(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.base + key, Body=data, ContentType=content_type)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Conditional-create ``.lock`` (``If-None-Match: *``); breaks a lock older than ``lock_ttl_s``."""
        from botocore.exceptions import ClientError

        key = self.base + ".lock"
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=f"{token} {time.time()}".encode(),
                                   IfNoneMatch="*")
                break
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                    raise
                with contextlib.suppress(ClientError, ValueError, IndexError):
                    held = self.s3.get_object(Bucket=self.bucket, Key=key)
                    since = float(held["Body"].read().split()[1])
                    if time.time() - since > self.lock_ttl_s:  # abandoned by a dead writer
                        self.s3.delete_object(Bucket=self.bucket, Key=key)
                        continue
                if time.monotonic() > deadline:
                    raise FilesetError(f"fileset.root: s3://{self.bucket}/{key} held by another writer") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def _put_snapshot(self, snap: Mapping[str, Any]) -> None:
        self._put(SNAPSHOT, _dumps(snap))

    def _put_state(self, writer_id: str, state: Mapping[str, Any]) -> None:
        self._put(f".writers/{_safe(writer_id)}.json", orjson.dumps(state))

    def load_state(self, writer_id: str) -> dict[str, Any] | None:
        """A writer's previously committed state (for a consumer restarting), or None."""
        data = self._get(f".writers/{_safe(writer_id)}.json")
        return orjson.loads(data) if data else None

    def _states(self) -> list[dict[str, Any]]:
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.base + ".writers/")
        for page in pages:
            for obj in page.get("Contents", []):
                data = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                with contextlib.suppress(orjson.JSONDecodeError):
                    out.append(orjson.loads(data))
        return out

    def _append_suggestions(self, items: list[dict[str, Any]]) -> tuple[int, Counter[str]]:
        existing = self._get(SUGGESTIONS) or b""
        new, counts = _new_lines(existing, items)
        if new:
            self._put(SUGGESTIONS, existing + b"".join(new), "application/x-ndjson")
        return len(new), counts

    def read_snapshot(self) -> dict[str, Any] | None:
        """As :meth:`LocalFileset.read_snapshot`, from the bucket."""
        data = self._get(SNAPSHOT)
        return json.loads(data) if data else None

    def read_suggestions(self) -> list[dict[str, Any]]:
        """As :meth:`LocalFileset.read_suggestions`, from the bucket."""
        out = []
        for line in (self._get(SUGGESTIONS) or b"").splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(line))
        return out


def open_fileset(root: str, s3_endpoint_url: str = "", s3_client: Any = None) -> Fileset:
    """``s3://bucket/prefix`` -> :class:`S3Fileset`; anything else is a local directory. Raises
    :class:`FilesetError` naming ``fileset.root`` when it is empty or has no bucket."""
    if not root:
        raise FilesetError("fileset.root: empty")
    if root.startswith("s3://"):
        bucket, _, prefix = root[5:].partition("/")
        if not bucket:
            raise FilesetError(f"fileset.root: {root!r} has no bucket")
        return S3Fileset(bucket, prefix, s3_client, s3_endpoint_url)
    return LocalFileset(root)


__all__ = ["FILESET", "SNAPSHOT", "SUGGESTIONS", "CommitResult", "Fileset", "FilesetError", "LocalFileset", "S3Fileset",
           "open_fileset", "now_iso"]
