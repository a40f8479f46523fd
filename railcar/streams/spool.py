"""A durable local spool for records the broker could not take: append-only segments, fsync'd, size-capped.

Layout of ``directory``::

    00000000000000000001.seg   segment files, named by a growing sequence number, oldest first
    cursor                     "<segment seq> <byte offset>": how far replay has been acknowledged

A segment is a sequence of frames ``>I length | >I crc32(payload) | payload`` where payload is
``>H key length | key | value``. Appends go to the newest segment until it exceeds ``segment_bytes``; every
:meth:`Spool.append` call ends with one ``fsync`` (batch appends to amortise it). When the spool's total size
exceeds ``max_bytes`` whole oldest segments are deleted and their records counted in :attr:`Spool.dropped`.
Replay reads oldest first (:meth:`Spool.peek`), and :meth:`Spool.ack` advances the durable cursor, deleting
segments fully replayed (the newest one too once everything is acknowledged, so a drained spool holds 0 bytes),
so a process killed mid-replay resumes after the last acknowledged record. A torn frame at the end of a segment (a
crash mid-write) ends that segment's records. The spool holds trace records: the directory is 0700 and its files
0600 (set on open, whatever the umask or an older version left).

:class:`MemorySpool` has the same interface without a directory (``[telemetry] spool_dir`` empty).
"""

from __future__ import annotations

import collections
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["Spool", "MemorySpool", "SpoolError", "Record"]

# One ``(key, value)`` record. Named at module level: inside the spool classes ``bytes`` is their size property.
Record = tuple[bytes, bytes]

_FRAME = struct.Struct(">II")
_KEYLEN = struct.Struct(">H")


class SpoolError(OSError):
    """The spool directory cannot be used (message names it and the reason)."""


def _pack(key: bytes, value: bytes) -> bytes:
    payload = _KEYLEN.pack(len(key)) + key + value
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _read_frames(path: Path, start: int = 0) -> list[tuple[int, bytes, bytes]]:
    """``(end_offset, key, value)`` for every intact frame of ``path`` from byte ``start``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out, pos = [], start
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data):
            break
        payload = data[pos + _FRAME.size:end]
        if zlib.crc32(payload) != crc or length < _KEYLEN.size:
            break  # torn or corrupt tail: nothing after it can be trusted
        (klen,) = _KEYLEN.unpack_from(payload)
        out.append((end, payload[2:2 + klen], payload[2 + klen:]))
        pos = end
    return out


class Spool:
    """Durable spool in ``directory``. ``max_bytes`` caps the total size (bytes on disk), ``segment_bytes`` the
    size at which a new segment starts. Raises :class:`SpoolError` when the directory cannot be created."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int = 256 << 20,
                 segment_bytes: int = 4 << 20) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("spool: max_bytes and segment_bytes must be > 0")
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)  # mkdir's mode is masked by the umask and ignored for an existing directory
            for p in self.dir.iterdir():
                if p.is_file():
                    os.chmod(p, 0o600)
        except OSError as exc:
            raise SpoolError(f"telemetry.spool_dir: cannot create {str(self.dir)!r}: {exc.strerror}") from None
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.dropped = 0  # records lost to the size cap since this process opened the spool
        # seq -> [size in bytes, record count]
        self._segments: dict[int, list[int]] = {}
        for p in sorted(self.dir.glob("*.seg")):
            frames = _read_frames(p)
            self._segments[int(p.stem)] = [p.stat().st_size, len(frames)]
        self._cursor_seq, self._cursor_off = self._load_cursor()
        # The sequence number of the newest segment ever used: a new segment always gets a higher one.
        self._last_seq = max(max(self._segments, default=0), self._cursor_seq - 1)
        self._fh: BinaryIO | None = None
        for seq in [s for s in self._segments if s < self._cursor_seq]:
            self._delete(seq)  # fully replayed before a crash, not yet deleted
        self._pending = sum(c for _, c in self._segments.values())
        if self._cursor_seq in self._segments and self._cursor_off:
            self._pending -= len([f for f in _read_frames(self._path(self._cursor_seq)) if f[0] <= self._cursor_off])
        if not self._pending:
            for seq in list(self._segments):
                self._delete(seq)  # drained (e.g. by a version that kept the newest segment)
        self._fh_seq = -1
        self._peeked: list[tuple[int, bytes, bytes]] = []  # frames of the last peek not yet acknowledged

    # ---------------------------------------------------------------- internals
    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:020d}.seg"

    def _load_cursor(self) -> tuple[int, int]:
        try:
            seq, off = (self.dir / "cursor").read_text().split()
            return int(seq), int(off)
        except (FileNotFoundError, ValueError):
            return (min(self._segments) if self._segments else 0), 0

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        with os.fdopen(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600), "w") as fh:
            fh.write(f"{self._cursor_seq} {self._cursor_off}")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / "cursor")

    def _delete(self, seq: int) -> None:
        if self._fh is not None and self._fh_seq == seq:
            self._fh.close()
            self._fh, self._fh_seq = None, -1
        try:
            self._path(seq).unlink()
        except FileNotFoundError:
            pass
        self._segments.pop(seq, None)

    # ---------------------------------------------------------------- API
    @property
    def bytes(self) -> int:
        """Total size of the segments on disk, in bytes."""
        return sum(s for s, _ in self._segments.values())

    @property
    def pending(self) -> int:
        """Records appended and not yet acknowledged by :meth:`ack`."""
        return self._pending

    def append(self, records: Sequence[Record]) -> None:
        """Append ``(key, value)`` records durably (one fsync per call), then enforce the size cap."""
        if not records:
            return
        if not self._segments or self._segments[self._last_seq][0] >= self.segment_bytes:
            self._last_seq += 1
            self._segments[self._last_seq] = [0, 0]
        last = self._last_seq
        fh = self._fh
        if fh is None or self._fh_seq != last:
            if fh is not None:
                fh.close()
            fd = os.open(self._path(last), os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
            fh = os.fdopen(fd, "ab")
            self._fh, self._fh_seq = fh, last
        blob = b"".join(_pack(k, v) for k, v in records)
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
        self._segments[last][0] += len(blob)
        self._segments[last][1] += len(records)
        self._pending += len(records)
        while self.bytes > self.max_bytes and len(self._segments) > 1:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        seq = min(self._segments)
        lost = self._segments[seq][1]
        if seq == self._cursor_seq and self._cursor_off:
            lost = len([f for f in _read_frames(self._path(seq), self._cursor_off)])
        self.dropped += lost
        self._pending -= lost
        if seq == self._cursor_seq:  # the last peek came from this segment: an ack of it must not move the cursor
            self._peeked = []
        self._delete(seq)
        self._cursor_seq, self._cursor_off = (min(self._segments) if self._segments else 0), 0
        self._save_cursor()

    def peek(self, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` oldest unacknowledged ``(key, value)`` records, in append order, from the
        oldest segment only (call again after :meth:`ack`)."""
        while self._segments:
            seq = min(self._segments)
            if seq != self._cursor_seq:
                self._cursor_seq, self._cursor_off = seq, 0
            frames = self._peeked = _read_frames(self._path(seq), self._cursor_off)[:max_records]
            if frames:
                return [(k, v) for _, k, v in frames]
            if seq == max(self._segments):
                return []  # the newest segment is being appended to; keep it
            self._delete(seq)
        return []

    def ack(self, n: int) -> None:
        """The first ``n`` records of the last :meth:`peek` reached the broker: advance and persist the cursor.
        Records of that peek the size cap dropped meanwhile (counted in :attr:`dropped`) are not acknowledged
        again."""
        frames = self._peeked[:n]
        if not frames:
            return
        self._cursor_off = frames[-1][0]
        self._pending -= len(frames)
        self._peeked = self._peeked[len(frames):]
        seq = self._cursor_seq
        # A fully replayed segment goes; the newest one too when nothing is left (the next append starts a new one).
        if self._segments and self._cursor_off >= self._segments.get(seq, [0])[0] and (
                seq != max(self._segments) or not self._pending):
            self._delete(seq)
            self._cursor_seq, self._cursor_off = (min(self._segments) if self._segments else seq + 1), 0
        self._save_cursor()

    def close(self) -> None:
        """Close the open segment (data is already durable)."""
        if self._fh is not None:
            self._fh.close()
            self._fh, self._fh_seq = None, -1


class MemorySpool:
    """The same interface as :class:`Spool`, in memory (lost on exit), capped at ``max_bytes`` of key+value: past
    it the oldest records are dropped and counted in :attr:`dropped`."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.dropped = 0
        self._q: collections.deque[Record] = collections.deque()
        self._bytes = 0
        # Records of the last peek not yet acknowledged, and how many of them the cap dropped meanwhile (always
        # the first ones: both the peek and the cap take from the head).
        self._peek_n = self._peek_gone = 0

    @property
    def bytes(self) -> int:
        """Total key+value bytes held."""
        return self._bytes

    @property
    def pending(self) -> int:
        """Records appended and not yet acknowledged (nor dropped)."""
        return len(self._q)

    def append(self, records: Sequence[Record]) -> None:
        """Add ``(key, value)`` records at the tail, then drop the oldest while over ``max_bytes``."""
        for k, v in records:
            self._q.append((k, v))
            self._bytes += len(k) + len(v)
        while self._bytes > self.max_bytes and self._q:
            k, v = self._q.popleft()
            self._bytes -= len(k) + len(v)
            self.dropped += 1
            if self._peek_gone < self._peek_n:
                self._peek_gone += 1

    def peek(self, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` oldest records, in append order (they stay until :meth:`ack`)."""
        out = [self._q[i] for i in range(min(max_records, len(self._q)))]
        self._peek_n, self._peek_gone = len(out), 0
        return out

    def ack(self, n: int) -> None:
        """The first ``n`` records of the last :meth:`peek` were delivered: remove those the cap has not dropped
        meanwhile (so an ack never removes a record that was not sent)."""
        n = min(n, self._peek_n)
        for _ in range(max(0, n - self._peek_gone)):
            k, v = self._q.popleft()
            self._bytes -= len(k) + len(v)
        self._peek_gone = max(0, self._peek_gone - n)
        self._peek_n -= n

    def close(self) -> None:
        """Nothing to release (same interface as :meth:`Spool.close`)."""
        return None
