"""railcar.sidecar.sse: byte-exact event splitting, any chunking, every recorded SSE body."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from railcar.sidecar.sse import SSESplitter, event_data, split_events


def feed_in_pieces(body: bytes, cuts: list[int]) -> list[tuple[bytes, bytes | None]]:
    sp, out, prev = SSESplitter(), [], 0
    for c in sorted(set(cuts)) + [len(body)]:
        out += sp.feed(body[prev:c])
        prev = c
    tail = sp.flush()
    return out + ([tail] if tail else [])


def test_lf_crlf_comments_and_multiline_data():
    body = b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\ndata: x\r\ndata: y\r\n\r\nevent: ping\n\ndata: [DONE]\n\n"
    assert split_events(body) == [
        (b": OPENROUTER PROCESSING\n\n", None),
        (b'data: {"a":1}\n\n', b'{"a":1}'),
        (b"data: x\r\ndata: y\r\n\r\n", b"x\ny"),
        (b"event: ping\n\n", None),
        (b"data: [DONE]\n\n", b"[DONE]"),
    ]


def test_missing_final_blank_line_is_flushed_raw():
    sp = SSESplitter()
    assert sp.feed(b"data: 1\n\ndata: 2\n") == [(b"data: 1\n\n", b"1")]
    assert sp.pending == len(b"data: 2\n")
    assert sp.flush() == (b"data: 2\n", b"2")
    assert sp.flush() is None


def test_terminator_split_across_chunks_waits_for_next_byte():
    sp = SSESplitter()
    assert sp.feed(b"data: a\n") == []
    assert sp.feed(b"\r") == []
    assert sp.feed(b"\n") == [(b"data: a\n\r\n", b"a")]


def test_data_field_rules():
    assert event_data(b"data:no-space\n\n") == b"no-space"
    assert event_data(b"data:  two spaces\n\n") == b" two spaces"
    assert event_data(b"data\n\n") == b""
    assert event_data(b"database: x\n\n") is None
    assert event_data(b"id: 3\ndata: a\nretry: 10\n\n") == b"a"


def test_every_recorded_stream_round_trips(records):
    streams = [r for r in records if r["response_headers"]["content-type"].startswith("text/event-stream")]
    assert len(streams) == 20
    for r in streams:
        body = r["response_body"].encode()
        events = split_events(body)
        assert b"".join(raw for raw, _ in events) == body, r["id"]
        # each data payload is what follows `data: ` in the body, in order
        expected = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert [d for _, d in events if d is not None] == expected, r["id"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"data: {\"x\": 1}", b": comment", b"data: a", b"event: e", b"id: 1", b"",
                                 b"data:", b"data: \xc3\xa9"]), max_size=12),
       st.sampled_from([b"\n", b"\r\n"]), st.lists(st.integers(min_value=1, max_value=200), max_size=10),
       st.booleans())
def test_any_chunking_gives_the_same_events(lines, eol, cuts, terminated):
    body = b"".join(line + eol for line in lines) + (eol if terminated else b"")
    whole = split_events(body)
    assert b"".join(raw for raw, _ in whole) == body
    assert feed_in_pieces(body, [c for c in cuts if c < len(body)]) == whole


class _GeneralOnly(SSESplitter):
    """The splitter with its LF fast path turned off: the line-by-line WHATWG scan for every chunk."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        return self._feed_general(self._buf + chunk)


def _pieces(sp: SSESplitter, body: bytes, cuts: list[int]) -> list[tuple[bytes, bytes | None]]:
    out, prev = [], 0
    for c in sorted(set(cuts)) + [len(body)]:
        out += sp.feed(body[prev:c])
        prev = c
    tail = sp.flush()
    return out + ([tail] if tail else [])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"data: {\"x\": 1}", b": c", b"data: a", b"data:b", b"data", b"id: 1", b"",
                                 b"\n", b"\r", b"\r\n", b"\n\n", b"data: \xc3\xa9"]), max_size=16),
       st.lists(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n\n\n"]), min_size=1, max_size=16),
       st.lists(st.integers(min_value=1, max_value=120), max_size=8))
def test_fast_path_agrees_with_the_general_scan(parts, eols, cuts):
    body = b"".join(p + eols[i % len(eols)] for i, p in enumerate(parts))
    cuts = [c for c in cuts if c < len(body)]
    fast = _pieces(SSESplitter(), body, cuts)
    assert fast == _pieces(_GeneralOnly(), body, cuts)
    assert b"".join(raw for raw, _ in fast) == body


def test_fast_path_shapes():
    sp = SSESplitter()
    assert sp.feed(b'data: {"a":1}\n\ndata: x\ndata: y\n\n: ping\n\ndata: [DO') == [
        (b'data: {"a":1}\n\n', b'{"a":1}'), (b"data: x\ndata: y\n\n", b"x\ny"), (b": ping\n\n", None)]
    assert sp.pending == len(b"data: [DO")
    assert sp.feed(b"NE]\n") == []
    assert sp.feed(b"\n") == [(b"data: [DONE]\n\n", b"[DONE]")]
    assert sp.feed(b"\ndata: z\n\n") == [(b"\n", None), (b"data: z\n\n", b"z")]  # a stray blank line
