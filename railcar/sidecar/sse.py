"""Byte-exact Server-Sent Events splitting for the proxy hot path.

Format: the WHATWG HTML "Server-sent events" event-stream grammar. An event is a run of lines ended by a blank
line; a line ends with ``\\n``, ``\\r\\n`` (or a lone ``\\r``, which no model provider sends and which this splitter
treats as part of the line); lines starting with ``:`` are comments (``: OPENROUTER PROCESSING``); ``data:``
lines carry the payload, one optional space after the colon removed, several ``data:`` lines joined with ``\\n``.

:class:`SSESplitter` is incremental: feed it transport chunks as they arrive (any split, even inside a line or a
``\\r\\n``) and it yields ``(raw, data)`` per complete event, where ``raw`` is the event's exact bytes including its
terminating blank line and ``data`` is the joined payload (``bytes``) or ``None`` when the event has no ``data:``
field (comment-only, ``event:``/``id:``/``retry:`` only, or a stray blank line). Concatenating every ``raw``
plus :meth:`SSESplitter.flush` gives back the input stream exactly. Nothing is decoded or parsed as JSON.
"""

from __future__ import annotations

__all__ = ["SSESplitter", "event_data", "split_events"]


def event_data(raw: bytes) -> bytes | None:
    """The joined ``data:`` payload of one event's ``raw`` bytes (terminator optional), or ``None`` if it has none.

    ``b"data: {\\"a\\":1}\\n\\n"`` → ``b'{"a":1}'``; ``b"data: a\\ndata: b\\n\\n"`` → ``b"a\\nb"``;
    ``b": comment\\n\\n"`` → ``None``. A field line without a colon (``b"data\\n"``) is a ``data`` field with an
    empty value, as the WHATWG grammar says.
    """
    # Fast path: the shape every provider sends, one `data: ...` line and `\n\n`.
    if raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.find(b"\n", 6) == len(raw) - 2:
        return raw[6:-2]
    parts: list[bytes] | None = None
    for line in raw.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(b"data"):
            continue
        if line == b"data":
            value = b""
        elif line[4:5] == b":":
            value = line[6:] if line[5:6] == b" " else line[5:]
        else:
            continue  # e.g. `database: x` is another field name
        if parts is None:
            parts = [value]
        else:
            parts.append(value)
    if parts is None:
        return None
    return parts[0] if len(parts) == 1 else b"\n".join(parts)


class SSESplitter:
    """Incremental splitter: ``feed(chunk)`` → list of ``(raw, data)`` for the events completed by ``chunk``.

    ``raw`` (bytes) is the exact event including its terminating blank line (``\\n\\n``, ``\\r\\n\\r\\n`` or a mix);
    ``data`` is :func:`event_data` of it. Bytes of an unfinished event are kept until a later ``feed`` completes it
    or :meth:`flush` returns them (a stream that ends without the final blank line). Never raises on any input.
    Memory: holds at most one unfinished event.
    """

    __slots__ = ("_buf", "_scan")

    def __init__(self) -> None:
        self._buf = b""
        self._scan = 0  # where to resume searching for a blank line in _buf

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        """Add ``chunk`` (bytes); return the events it completes, in order (possibly none)."""
        if self._buf:
            buf = self._buf + chunk
        else:
            # The read of a token-paced stream: exactly one `data: ...` line and its blank line, nothing held.
            if chunk.find(b"\n") == len(chunk) - 2 and chunk[-1:] == b"\n" and chunk[:6] == b"data: " \
                    and b"\r" not in chunk:
                return [(chunk, chunk[6:-2])]
            buf = chunk
        # Fast path for what every provider sends (LF only, events separated by exactly one blank line, no
        # stray blank lines): cut at `\n\n` with C-level split instead of scanning line by line. Same result
        # as the general scan below (tests/test_sse.py checks the two agree on any input).
        if b"\r" not in buf and b"\n\n\n" not in buf and buf[:1] != b"\n":
            end = buf.rfind(b"\n\n")
            if end < 0:
                self._buf, self._scan = buf, 0
                return []
            self._buf, self._scan = buf[end + 2:], 0
            return [(p + b"\n\n", p[6:] if p[:6] == b"data: " and b"\n" not in p else event_data(p + b"\n\n"))
                    for p in buf[:end].split(b"\n\n")]
        return self._feed_general(buf)

    def _feed_general(self, buf: bytes) -> list[tuple[bytes, bytes | None]]:
        """The WHATWG scan over ``buf`` (held bytes + new chunk): any terminator mix, stray blank lines."""
        out: list[tuple[bytes, bytes | None]] = []
        start = 0
        scan = self._scan
        n = len(buf)
        while True:
            # A blank line is a line terminator right after the previous line's `\n`: `\n\n` or `\n\r\n`.
            # A blank line at the very start of an event (a stray `\n`/`\r\n`) is its own empty event.
            if scan == start:
                if buf.startswith(b"\n", start):
                    out.append((buf[start:start + 1], None))
                    start = scan = start + 1
                    continue
                if buf.startswith(b"\r\n", start):
                    out.append((buf[start:start + 2], None))
                    start = scan = start + 2
                    continue
                if n - start == 1 and buf[start] == 13:  # a lone `\r` may be the start of `\r\n`
                    break
            i = buf.find(b"\n", scan)
            if i < 0:
                scan = n
                break
            nxt = buf[i + 1:i + 2]
            if nxt == b"\n":
                end = i + 2
            elif nxt == b"\r":
                if i + 2 >= n:  # `\n\r` at the end: wait for the byte after it
                    scan = i
                    break
                if buf[i + 2] == 10:
                    end = i + 3
                else:
                    scan = i + 1
                    continue
            elif not nxt:  # `\n` is the last byte: the next chunk decides
                scan = i
                break
            else:
                scan = i + 1
                continue
            raw = buf[start:end]
            out.append((raw, event_data(raw)))
            start = scan = end
        if start:
            self._buf = buf[start:]
            self._scan = scan - start
        else:
            self._buf = buf
            self._scan = scan
        return out

    def flush(self) -> tuple[bytes, bytes | None] | None:
        """End of stream: the unfinished event's ``(raw, data)`` (no terminator) or ``None`` if nothing is pending."""
        buf, self._buf, self._scan = self._buf, b"", 0
        if not buf:
            return None
        return buf, event_data(buf)

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished event."""
        return len(self._buf)


def split_events(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """Split a whole SSE body at once: every ``(raw, data)``, including a final unterminated event."""
    sp = SSESplitter()
    events = sp.feed(body)
    tail = sp.flush()
    if tail is not None:
        events.append(tail)
    return events
