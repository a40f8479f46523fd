"""CodecStreamGuard's fast path (runs of plain text deltas, ``Codec.text_delta``) sends exactly the frames of the
general path: recorded Responses / Anthropic streams with a catalog value (or an output-rail phrase) planted across
their text deltas, block and redact, stream_first on and off, events handed all in one read or a few at a time, are
compared with the same guard whose codecs take no fast path, one event per read."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # the helpers of the sibling test module
from test_codec_stream import KEY, RECORDS, SETTINGS, escaped, rails_guard, run, split  # noqa: E402

from railcar.codecs.anthropic_messages import AnthropicMessagesCodec
from railcar.codecs.base import Codec
from railcar.codecs.openai_responses import OpenAIResponsesCodec
from railcar.codecs.registry import CODECS
from railcar.rails import codec_stream as cs
from railcar.rails.codec_stream import reframe
from railcar.sidecar.sse import split_events
from railcar.tools.synthetic import Script, stream_frames

STREAMS = [r for r in RECORDS if sum(CODECS[r["api"]].text_delta(orjson.loads(d)) is not None
                                     for _, d in split_events(r["response_body"].encode())
                                     if d and d[:1] == b"{") >= 2]


def planted(rec: dict[str, Any], pieces: list[str]) -> list[bytes]:
    """The recorded stream's frames with ``pieces`` as the texts of the deltas of its first text value (the rest
    joined into the last one; later deltas keep their text)."""
    codec = CODECS[rec["api"]]
    events = split_events(rec["response_body"].encode())
    keys = [(i, td[0]) for i, (_, d) in enumerate(events)
            if d and d[:1] == b"{" and (td := codec.text_delta(orjson.loads(d))) is not None]
    slots = [i for i, key in keys if key == keys[0][1]]  # the deltas of the first text value
    frames = [raw for raw, _ in events]
    for n, i in enumerate(slots[:len(pieces)]):
        text = "".join(pieces[n:]) if n == len(slots) - 1 else pieces[n]
        obj = orjson.loads(events[i][1])
        if rec["api"] == "openai_responses":
            obj["delta"] = text
        else:
            obj["delta"]["text"] = text
        frames[i] = reframe(frames[i], obj)
    return frames


async def both(monkeypatch: pytest.MonkeyPatch, guard: Any, api: str, frames: list[bytes], body: Any,
               per_read: int) -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
    """(fast path result, general path result, how many events the fast path took) for one stream."""
    taken = []
    real = {c: c.text_delta for c in (OpenAIResponsesCodec, AnthropicMessagesCodec)}

    def counting(self: Codec, obj: dict[str, Any]) -> Any:
        got = real[type(self)](self, obj)
        taken.append(got is not None)
        return got

    def result(out: tuple[Any, ...]) -> tuple[Any, ...]:
        sink, sg, ex, aborts = out
        return (sink.body, sg.stopped, aborts, ex.outcome.blocked_rail,
                [(n.detector, n.path, n.fingerprint) for n in ex.outcome.redactions])

    # A guard's first check may suspend once (lazy set-up) and so let a stream_first frame more out: warm it first.
    await run(guard, api, frames, body, per_read=1)
    with monkeypatch.context() as m:
        for c in real:
            m.setattr(c, "text_delta", counting)
        fast = result(await run(guard, api, frames, body, per_read=per_read))
    with monkeypatch.context() as m:
        for c in real:
            m.setattr(c, "text_delta", Codec.text_delta)
        slow = result(await run(guard, api, frames, body, per_read=1))
    return fast, slow, sum(taken)


@pytest.mark.parametrize("action", ["block", "redact"])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("per_read", [1, 3, 10_000])
async def test_recorded_streams_with_a_planted_value(monkeypatch: pytest.MonkeyPatch, action: str, first: bool,
                                                     per_read: int) -> None:
    assert len(STREAMS) >= 5
    guard = rails_guard(first, action)
    for k, rec in enumerate(STREAMS):
        pieces = split(f"Your key: {KEY} keep it.", [3 + k, 11 + 2 * k, 17, 25 + k])
        frames = planted(rec, pieces)
        fast, slow, taken = await both(monkeypatch, guard, rec["api"], frames, rec["request"], per_read)
        assert fast == slow, rec["id"]
        assert taken >= 1, rec["id"]  # the fast path was tried (and taken) on this stream
        assert KEY.encode() not in fast[0]
        if action == "block":
            assert fast[1] and fast[3] == "sensitive data"
        else:
            assert not fast[1] and fast[4]


@pytest.mark.parametrize("per_read", [1, 4, 10_000])
@SETTINGS
@given(cuts=st.lists(st.integers(0, 80), max_size=12), esc=st.lists(st.booleans(), min_size=1, max_size=6),
       first=st.booleans(), rail=st.booleans(), which=st.integers(0, 1 << 16))
async def test_generated_splits_match_the_general_path(monkeypatch: pytest.MonkeyPatch, per_read: int,
                                                       cuts: list[int], esc: list[bool], first: bool, rail: bool,
                                                       which: int) -> None:
    rec = STREAMS[which % len(STREAMS)]
    value = escaped(KEY, esc) if not rail else "plain words"
    text = f"Once more: {value} then a forbidden phrase and clean text after it, tok tok tok."
    guard = rails_guard(first, "redact", pattern="forbidden phrase" if rail else "NEVER-MATCHES-[0-9]{40}")
    pieces = split(text, cuts)
    frames = planted(rec, pieces)
    fast, slow, _ = await both(monkeypatch, guard, rec["api"], frames, rec["request"], per_read)
    assert fast == slow
    if rail and any("forbidden phrase" in p for p in pieces):  # (split finer, a phrase can fall between chunks)
        assert fast[1] and fast[3] is not None


def counted_hits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the frame template's hits (:func:`railcar.rails.codec_stream._hit` answering) from now on."""
    hits = [0]
    real = cs._hit

    def hit(tpl: Any, data: bytes) -> Any:
        got = real(tpl, data)
        hits[0] += got is not None
        return got

    monkeypatch.setattr(cs, "_hit", hit)
    return hits


@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages"])
@pytest.mark.parametrize("per_read", [1, 5, 10_000])
@SETTINGS
@given(cuts=st.lists(st.integers(0, 60), max_size=14), esc=st.lists(st.booleans(), min_size=1, max_size=6),
       first=st.booleans(), action=st.sampled_from(["block", "redact"]), plant=st.booleans())
async def test_synthetic_streams_take_the_template_and_match(monkeypatch: pytest.MonkeyPatch, api: str,
                                                             per_read: int, cuts: list[int], esc: list[bool],
                                                             first: bool, action: str, plant: bool) -> None:
    value = escaped(KEY, esc) if plant else "nothing secret"
    text = f"tok tok Your key: {value} keep it. tok tok tok tok"
    pieces = split(text, cuts)
    frames = stream_frames(api, Script(tuple(pieces)))
    hits = counted_hits(monkeypatch)
    fast, slow, _ = await both(monkeypatch, rails_guard(first, action), api, frames, None, per_read)
    assert fast == slow
    assert KEY.encode() not in fast[0]
    if len(pieces) > 3 and not plant:
        assert hits[0] > 0  # the template was learnt and used
    if plant and action == "block":
        assert fast[1] and fast[3] == "sensitive data"


def _delta_frame(seq: bytes, token: bytes, pad: bytes = b"") -> bytes:
    return (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"m",'
            b'"output_index":0,"content_index":0,"delta":' + token + pad
            + b',"logprobs":[],"sequence_number":' + seq + b'}\n\n')


@pytest.mark.parametrize("odd", [b'"x\\u0041y"', b'"ctl\x01"', b'"bad\xff"', b'"x"', b'""', b'"x" ',
                                 b'"x","delta":"y"'])  # (the last: a key spelled twice where the template applies)
@pytest.mark.parametrize("seq", [b"7", b"07", b"7.5", b"-1", b"70000000000000000000"])
async def test_template_edges_match_the_general_path(monkeypatch: pytest.MonkeyPatch, odd: bytes,
                                                     seq: bytes) -> None:
    """Escaped / empty / invalid tokens, a key spelled twice and odd counters where the template would apply: the
    same frames (and the same fail-closed stop) as the general path."""
    frames = [_delta_frame(str(i).encode(), b'"tok %d "' % i) for i in range(1, 6)]
    frames += [_delta_frame(seq, odd), _delta_frame(b"9", b'"after "')]
    frames.append(b'event: response.completed\ndata: {"type":"response.completed","sequence_number":10,'
                  b'"response":{"id":"r","status":"completed","output":[]}}\n\n')
    hits = counted_hits(monkeypatch)
    fast, slow, _ = await both(monkeypatch, rails_guard(True, "redact"), "openai_responses", frames,
                               None, 10_000)
    assert fast == slow
    assert hits[0] >= 3
