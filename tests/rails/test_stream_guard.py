"""rails/stream_guard.py: chunked streaming output rails, tool-call holds, the batch seam (on_events).

The stream guard is driven with real SSE bytes (recorded fixtures split by ``railcar.sidecar.sse``) into an in-memory sink.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as hst
from rails_support import (
    AWS_KEY,
    RECORDED,
    SECRET_PATTERN_YAML,
    Sink,
    chunk,
    guard_for,
    run_stream,
    secret_guard,
    split_secret,
    stream_of,
)

from railcar.core.exchange import Exchange
from railcar.core.wire import blocked_frames
from railcar.rails import detectors as det
from railcar.rails.guard import RailsGuard
from railcar.rails.inline import HoldBack
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import SSESplitter, split_events

# --------------------------------------------------------------------------------------- recorded streams


def recorded_streams() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["stream"] and r["status"] == 200]


@pytest.mark.parametrize("first", [True, False])
async def test_recorded_streams_pass_byte_exact(first: bool) -> None:
    """Default-style rails that pass relay every recorded stream (text and tool calls) byte for byte."""
    guard = guard_for(SECRET_PATTERN_YAML % {"chunk": 3, "context": 1, "first": str(first).lower()})
    rows = recorded_streams()
    assert len(rows) >= 15
    for rec in rows:
        body = rec["response_body"].encode()
        frames = [raw for raw, _ in split_events(body)]
        sink, sg, ex = await run_stream(guard, frames, body=rec["request"])
        assert not sg.stopped, rec["id"]
        assert sink.body == body, rec["id"]
        assert ex.outcome.blocked is False
        if sink.text():  # content was streamed: the output rails checked it
            assert ex.outcome.activated_rails == ["regex check output"], rec["id"]


# --------------------------------------------------------------------------------------- chunked output rails


@pytest.mark.parametrize("parts", [2, 10])
async def test_split_secret_blocked_with_context_and_missed_without(parts: int) -> None:
    """chunk_size smaller than the split: only the carried-over context lets a check see the whole key."""
    deltas = split_secret(7, parts, 12)
    chunk_size = max(1, parts // 2)
    caught_sink, caught, _ = await run_stream(secret_guard(chunk_size, parts, True), stream_of(deltas))
    assert caught.stopped
    assert caught_sink.body.endswith(blocked_frames("regex check output"))
    missed_sink, missed, ex = await run_stream(secret_guard(chunk_size, 0, True), stream_of(deltas))
    assert not missed.stopped and ex.outcome.blocked is False
    assert AWS_KEY in missed_sink.text()  # the miss: without carry-over no window holds the whole key


async def test_stream_first_false_never_releases_blocked_text() -> None:
    deltas = split_secret(9, 4, 30)
    sink, sg, ex = await run_stream(secret_guard(4, 4, False), stream_of(deltas))
    assert sg.stopped and ex.outcome.blocked is True and ex.outcome.blocked_rail == "regex check output"
    text = sink.text()
    # context >= chunk: after the first chunk every delta is checked with 8 deltas of window; the delta that
    # completes the key (index 12) is the blocked chunk's new text and never reaches the client.
    assert AWS_KEY not in text and deltas[12] not in text
    assert text == "".join(deltas[:12])  # exactly the deltas whose checks passed were released
    assert sink.frames[-1] == blocked_frames("regex check output")


async def test_stream_first_true_leaks_at_most_one_chunk() -> None:
    deltas = split_secret(9, 4, 30)
    chunk_size = 4
    sink, sg, _ = await run_stream(secret_guard(chunk_size, 4, True), stream_of(deltas))
    assert sg.stopped
    text = sink.text()
    got = len(text)
    secret_end = len("".join(deltas[:13]))
    # Tokens flow before the check, so the key's chunk went out; no more than one further chunk did.
    assert got >= secret_end - len(AWS_KEY)
    assert got <= len("".join(deltas[:13 + chunk_size]))
    assert sink.body.endswith(blocked_frames("regex check output"))


async def test_final_check_at_end_of_stream() -> None:
    """A key in the last, partial chunk is caught by the end-of-stream check before [DONE]."""
    deltas = ["a ", "b ", "c "] + [AWS_KEY]
    sink, sg, _ = await run_stream(secret_guard(50, 10, True), stream_of(deltas))
    assert sg.stopped
    assert b"data: [DONE]\n\n" == sink.frames[-1][-14:]
    assert sink.body.count(b"[DONE]") == 1  # the upstream's [DONE] was not relayed after the block


async def test_abort_callback_and_stop_event_fire_on_block() -> None:
    guard = secret_guard(2, 2, True)
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    aborted = []
    sg = guard.open_stream(ex, Sink(), abort=lambda: aborted.append(True))
    for raw in stream_of(split_secret(0, 2, 0))[:3]:
        await sg.on_event(raw, raw[6:-2])
    await asyncio.wait_for(sg.stop_event.wait(), 5)  # the background check stopped it between events
    assert sg.stopped and aborted == [True]


# --------------------------------------------------------------------------------------- tool calls


def tool_stream(arguments: list[str], content_after: str | None = None) -> list[bytes]:
    frames = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "deploy", "arguments": ""}}]})]
    frames += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in arguments]
    frames += [chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
    return frames


async def test_tool_call_held_until_arguments_pass() -> None:
    guard = secret_guard(200, 50, True)
    frames = tool_stream(['{"re', 'gion": ', '"eu"}'])
    sink = Sink()
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]})
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    for raw in frames[:3]:
        await sg.on_event(raw, raw[6:-2])
    assert sink.frames == []  # arguments incomplete: held
    await sg.on_event(frames[3], frames[3][6:-2])
    assert sink.body == b"".join(frames[:4])  # complete and passed: released in order (one write), byte-exact
    for raw in frames[4:]:
        await sg.on_event(raw, raw[6:-2])
    await sg.on_end()
    assert sink.body == b"".join(frames)


async def test_blocked_tool_call_is_removed() -> None:
    guard = secret_guard(200, 50, True)
    frames = tool_stream(['{"key": "', AWS_KEY[:10], AWS_KEY[10:], '"}'])
    sink, sg, ex = await run_stream(guard, frames)
    assert sg.stopped and ex.outcome.blocked_rail == "regex check output"
    assert sink.frames == [blocked_frames("regex check output")]  # no fragment of the call went out


async def test_tool_calls_without_index_are_still_checked() -> None:
    # Some OpenAI-compatible providers omit ``index`` and send each call whole in one delta. Such a call must still
    # pass tool_input rails: a secret in its arguments blocks the stream, and a clean one is relayed byte-exact.
    guard = secret_guard(200, 50, True)
    leaky = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "deploy", "arguments": '{"region": "eu"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "store", "arguments": f'{{"key": "{AWS_KEY}"}}'}},
    ]}), chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
    sink, sg, ex = await run_stream(guard, leaky)
    assert sg.stopped and ex.outcome.blocked_rail == "regex check output"
    assert AWS_KEY.encode() not in sink.body
    clean = [chunk({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "deploy", "arguments": '{"region": "eu"}'}}]}),
        chunk({}, "tool_calls"), b"data: [DONE]\n\n"]
    sink, sg, _ = await run_stream(guard, clean)
    assert not sg.stopped and sink.body == b"".join(clean)


async def test_stream_guardrails_data_chunk_before_done() -> None:
    guard = secret_guard(3, 1, True)
    sink, sg, _ = await run_stream(guard, stream_of(["a", "b", "c", "d"]),
                                   options={"options": {"log": {"activated_rails": True}}})
    events = [d for _, d in split_events(sink.body)]
    assert events[-1] == b"[DONE]"
    last = orjson.loads(events[-2])
    assert last["choices"] == [] and last["guardrails_data"]["log"]["activated_rails"][0]["decisions"] == ["passed"]


# --------------------------------------------------------------------------------------- batch seam (on_events)

GHP = "ghp_" + "Zq81mXv2LpT0aRk7wYb4NcJd9sEu3HfGi6Ao"  # github_token shape, random body: the inline filter's catch
_VOCAB = ["tok ", "hello", " world", " A", "KIA", "IOSF", "ODNN7", "EXAMPLE", AWS_KEY, " s", "k-", "gh", "p_",
          GHP[:10], GHP[10:25], GHP[25:], GHP, " ghp_", "\n", ".", "é ü", "AKIA"]


def _frame(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _special(kind: int, i: int) -> bytes:
    """Frames other than simple content deltas: every branch of on_event."""
    base = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    if kind == 0:
        return _frame({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})
    if kind == 1:
        return _frame({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": f"call_{i}", "type": "function",
             "function": {"name": "f", "arguments": '{"a": "' + GHP[:8]}}]}, "finish_reason": None}]})
    if kind == 2:
        return _frame({**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": '"}'}}]}, "finish_reason": None}]})
    if kind == 3:
        return _frame({**base, "choices": [{"index": 1, "delta": {"content": "second choice "},
                                            "finish_reason": None},
                                           {"index": 0, "delta": {"content": "both "}, "finish_reason": None}]})
    if kind == 4:
        return _frame({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if kind == 5:
        return _frame({**base, "choices": [], "usage": {"total_tokens": 3}})
    if kind == 6:
        return b": keep-alive\n\n"
    if kind == 7:
        return b"data: {not json\n\n"
    if kind == 8:
        return _frame({**base, "choices": [{"index": 0, "delta": {"content": "end "}, "finish_reason": "length"}]})
    return b"data: [DONE]\n\n"


_GUARDS: dict[tuple, RailsGuard] = {}


def _batch_guard(first: bool, action: str | None) -> RailsGuard:
    key = (first, action)
    if key not in _GUARDS:
        g = secret_guard(3, 1, first)
        if action is not None:
            g.filter_factory = HoldBack(Scanner(det.select(["secret"]), b"k" * 32), action)
        _GUARDS[key] = g
    return _GUARDS[key]


async def _drive(guard: RailsGuard, reads: list[bytes], batched: bool) -> tuple[bytes, dict, bool, list[int]]:
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    sink = Sink()
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    sp = SSESplitter()
    counts = []
    for r in reads:
        events = sp.feed(r)
        if batched:
            if events:
                counts.append(await sg.on_events(events))
        else:
            n = 0
            for raw, data in events:
                await sg.on_event(raw, data)
                n += 1
                if sg.stopped:
                    break
            if events:
                counts.append(n)
        if sg.stopped:
            break
    if not sg.stopped:
        tail = sp.flush()
        if tail is not None:
            await sg.on_event(*tail)
    await sg.on_end()
    out = {k: getattr(ex.outcome, k) for k in ("blocked", "blocked_rail")}
    return sink.body, out, sg.stopped, counts




@hsettings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(items=hst.lists(hst.integers(0, len(_VOCAB) + 9), min_size=1, max_size=60),
       cuts=hst.lists(hst.integers(1, 400), max_size=12),
       first=hst.booleans(), action=hst.sampled_from([None, "block", "redact"]))
# Explicit cases hypothesis may not reach: a github token split over three deltas (the inline filter's catch) in one
# read and over several, and an AWS key (the chunk rail's catch: the inline validator rejects this placeholder).
@example(items=[1, 2, 0, 13, 14, 15, 2, 0], cuts=[], first=True, action="block")
@example(items=[1, 2, 0, 13, 14, 15, 2, 0, 0, 0], cuts=[150, 90, 400], first=False, action="redact")
@example(items=[0, 1, 2, 0, 8, 2, 0, 0, 0, 0], cuts=[250], first=False, action=None)
@example(items=[0, len(_VOCAB) + 1, 0, 8, len(_VOCAB) + 2, 2, 0, len(_VOCAB) + 4, len(_VOCAB) + 9], cuts=[],
         first=True, action="block")
async def test_on_events_matches_on_event_per_event(items, cuts, first, action) -> None:
    """The batch seam is a pure optimisation: for any stream (content deltas, keys split anywhere, tool calls,
    several choices, finish/usage/comment/invalid/[DONE] events) cut into any upstream reads, ``on_events`` per read
    sends the same bytes, blocks the same way and reports the events it handled as the per-event loop does."""
    frames = [chunk({"content": _VOCAB[x]}) if x < len(_VOCAB) else _special(x - len(_VOCAB), i)
              for i, x in enumerate(items)]
    body = b"".join(frames)
    reads, pos = [], 0
    for c in cuts:
        if pos >= len(body):
            break
        reads.append(body[pos:pos + c])
        pos += c
    if pos < len(body):
        reads.append(body[pos:])
    guard = _batch_guard(first, action)
    one = await _drive(guard, reads, batched=False)
    many = await _drive(guard, reads, batched=True)
    assert many == one


async def test_on_events_fast_path_relays_bytes_and_cuts_chunks_like_on_event() -> None:
    """A clean stream in large reads takes the fast path (no frame rewritten, one send per read up to a chunk
    check) and still cuts the rolling chunks at the same deltas: with chunk 3 / context 1 a key spread over the
    deltas 4-5 is caught by the second chunk check (stream_first false: nothing of it reaches the sink)."""
    guard = secret_guard(3, 1, False)
    pieces = ["AKIAIOSFOD", "NN7EXAMPLE"]
    frames = stream_of(["a ", "b ", "c "] + pieces + ["d "])
    one = await _drive(guard, [b"".join(frames)], batched=False)
    many = await _drive(guard, [b"".join(frames)], batched=True)
    assert many == one
    body, outcome, stopped, counts = many
    assert stopped and outcome["blocked"] and outcome["blocked_rail"]
    assert b"AKIA" not in body and b'"a "' in body and body.endswith(b"data: [DONE]\n\n")
    assert counts[0] < len(frames)  # blocked part-way through the read
    clean = stream_of([f"w{i} " for i in range(10)])
    body2, outcome2, stopped2, counts2 = await _drive(guard, [b"".join(clean)], batched=True)
    assert body2 == b"".join(clean) and not stopped2 and counts2 == [len(clean)]


async def test_stream_redaction_notes_go_to_the_outcome() -> None:
    """A stream the inline hold-back redacted (a key split over deltas, in content and in tool-call arguments)
    leaves one RedactionNote per placeholder in ``exchange.outcome.redactions``, where the trace recorder reads
    them; a clean stream leaves none."""
    guard = secret_guard(50, 2, True)
    guard.filter_factory = HoldBack(Scanner(det.select(["secret"]), b"k" * 32), "redact")
    content = stream_of(["token ", GHP[:9], GHP[9:25], GHP[25:], " end"])[:-2]
    calls = [chunk({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                    "function": {"name": "f", "arguments": '{"t": "' + GHP[:12]}}]}),
             chunk({"tool_calls": [{"index": 0, "function": {"arguments": GHP[12:] + '"}'}}]}),
             chunk({}, "stop"), b"data: [DONE]\n\n"]
    sink, sg, ex = await run_stream(guard, content + calls)
    assert not sg.stopped and GHP not in sink.body.decode()
    notes = ex.outcome.redactions
    assert [(n.detector, n.path) for n in notes] == [
        ("github_token", "$.choices[0].delta.content"),
        ("github_token", "$.choices[0].delta.tool_calls[0].function.arguments")]
    assert f"[REDACTED:github_token:{notes[0].fingerprint[:8]}]" in sink.text()
    _, _, clean = await run_stream(guard, stream_of(["nothing ", "to see"]))
    assert clean.outcome.redactions == []
