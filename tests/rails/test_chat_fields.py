"""rails/stream_guard.py, issue 13 item 2: every string of every ``chat.completion.chunk`` is watched.

A catalog key (generated at runtime by ``tests/planted_corpus.py``) streamed in any field of a chat chunk - content,
``reasoning_content``, ``reasoning``, ``reasoning_details[].text``, ``refusal``, ``audio.transcript``, legacy
``function_call.arguments``, tool-call arguments (JSON-escaped: ``\\u0041KIA...``, the escape itself split across
deltas), content parts, ``annotations``, ``logprobs.content[].token``, a field no provider has yet - split across 1-20
deltas never reaches the client whole: the stream ends with the blocked-content error chunk and ``[DONE]``. Driven
through the real stream guard (``RailsGuard.open_stream``) and the real inline hold-back, per upstream read and in
one read (the batch fast path).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as hst
from planted_corpus import GENERATORS
from rails_support import NEVER_FIRING_RAILS, RECORDED, SECRET_PATTERN_YAML, Sink, guard_for, holdback_guard, run_stream

from railcar.core.exchange import Exchange
from railcar.core.jsonpath import walk_strings
from railcar.core.wire import blocked_frames
from railcar.rails import detectors as det
from railcar.rails.codec_stream import INVALID_EVENT_MESSAGE
from railcar.rails.guard import RailsGuard
from railcar.rails.inline import HoldBack
from railcar.rails.json_escape import unescape
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import split_events

DONE = b"data: [DONE]\n\n"
BLOCKED = blocked_frames("sensitive data")
NEVER = NEVER_FIRING_RAILS
KEYS = {det_id: GENERATORS[det_id](random.Random(13)) for det_id in ("aws_access_key_id", "github_token")}


def escaped(key: str) -> str:
    """``key`` spelled with JSON escapes, as a model may write tool arguments: ``\\u0041KIA...`` (every fourth
    character a ``\\uXXXX`` escape, the first one always)."""
    return "".join(f"\\u{ord(c):04x}" if i % 4 == 0 else c for i, c in enumerate(key))


def _chunk(choice: dict[str, Any], **top: Any) -> bytes:
    obj = {"id": "chatcmpl-f", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "system_fingerprint": "fp_1", **top, "choices": [{"index": 0, "finish_reason": None, **choice}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _delta(make: Callable[[str], dict[str, Any]]) -> Callable[[int, str], bytes]:
    return lambda i, p: _chunk({"delta": make(p)})


def _tool(i: int, p: str) -> bytes:
    entry: dict[str, Any] = {"index": 0, "function": {"arguments": p}}
    if i == 0:
        entry.update(id="call_1", type="function", function={"name": "store", "arguments": p})
    return _chunk({"delta": {"tool_calls": [entry]}})


def _function_call(i: int, p: str) -> bytes:
    return _chunk({"delta": {"function_call": {"name": "store", "arguments": p} if i == 0 else {"arguments": p}}})


def _logprobs(i: int, p: str) -> bytes:
    return _chunk({"delta": {}, "logprobs": {"content": [{"token": p, "logprob": -0.1, "bytes": None,
                                                          "top_logprobs": []}]}})


PROSE = "Here is what you asked for: {key} and nothing else."
ARGS = '{{"token": "{key}", "note": "line\\nbreak \\"quoted\\""}}'
# field -> (how the whole value is written around the key, one frame per piece)
FIELDS: dict[str, tuple[str, bool, Callable[[int, str], bytes]]] = {
    "content": (PROSE, False, _delta(lambda p: {"content": p})),
    "reasoning_content": (PROSE, False, _delta(lambda p: {"reasoning_content": p})),
    "reasoning": (PROSE, False, _delta(lambda p: {"reasoning": p})),
    "reasoning_details.text": (PROSE, False, _delta(lambda p: {"reasoning_details": [
        {"type": "reasoning.text", "text": p, "format": "unknown", "index": 0}]})),
    "refusal": (PROSE, False, _delta(lambda p: {"refusal": p})),
    "audio.transcript": (PROSE, False, _delta(lambda p: {"audio": {"id": "audio_1", "transcript": p}})),
    "content_parts": (PROSE, False, _delta(lambda p: {"content": [{"type": "text", "text": p}]})),
    "annotations": (PROSE, False, _delta(lambda p: {"annotations": [
        {"type": "url_citation", "url_citation": {"title": p, "url": "https://example.com/"}}]})),
    "content+reasoning_content": (PROSE, False, _delta(lambda p: {"content": "ok ", "reasoning_content": p})),
    "unlisted_field": (PROSE, False, _delta(lambda p: {"x_vendor_trace": {"note": p}})),
    "logprobs.content.token": (PROSE, False, _logprobs),
    "tool_calls.arguments": (ARGS, False, _tool),
    "tool_calls.arguments_escaped": (ARGS, True, _tool),
    "function_call.arguments": (ARGS, False, _function_call),
    "function_call.arguments_escaped": (ARGS, True, _function_call),
}

def value_of(field: str, key: str) -> str:
    template, esc, _ = FIELDS[field]
    return template.format(key=escaped(key) if esc else key)


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def even_split(text: str, key_at: int, key_len: int, n: int) -> list[str]:
    """``text`` cut so that its key span (``key_at``, ``key_len`` characters as written) falls in ``n`` pieces."""
    return split_at(text, [key_at + key_len * i // n for i in range(1, n)] + [key_at, key_at + key_len])


def stream(field: str, pieces: list[str]) -> list[bytes]:
    frame = FIELDS[field][2]
    return [_chunk({"delta": {"role": "assistant", "content": ""}})] + [frame(i, p) for i, p in enumerate(pieces)] \
        + [_chunk({"delta": {}, "finish_reason": "stop"}), DONE]


def delivered(body: bytes) -> str:
    """Every string the client received, in order, joined, JSON-unescaped as well (what the agent's
    ``json.loads`` of arguments would give back)."""
    strings = []
    for _, data in split_events(body):
        if data and data != b"[DONE]":
            strings.extend(s for _, s in walk_strings(orjson.loads(data)))
    raw = "".join(strings)
    return raw + "\n" + unescape(raw)[0]


async def one_read(guard: RailsGuard, frames: list[bytes]) -> tuple[Sink, Any, Exchange]:
    """The whole stream in one upstream read (``on_events`` batch: the fast path's run and template)."""
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    sink = Sink()
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    await sg.on_events(split_events(b"".join(frames)))
    await sg.on_end()
    return sink, sg, ex


def assert_blocked(sink: Sink, sg: Any, ex: Exchange, key: str) -> None:
    assert sg.stopped and ex.outcome.blocked and ex.outcome.blocked_rail == "sensitive data"
    assert sink.body.endswith(BLOCKED) and sink.body.count(b"[DONE]") == 1
    assert key not in delivered(sink.body)


CASES = [(f, d, n) for f in FIELDS for d in KEYS for n in (1, 2, 3, 7, 20)]


@pytest.mark.parametrize(("field", "det_id", "n"), CASES, ids=[f"{f}-{d}-{n}" for f, d, n in CASES])
async def test_key_in_any_field_split_across_deltas_is_blocked(field: str, det_id: str, n: int) -> None:
    key = KEYS[det_id]
    text = value_of(field, key)
    spelled = escaped(key) if FIELDS[field][1] else key
    pieces = even_split(text, text.index(spelled), len(spelled), n)
    assert "".join(pieces) == text and len(pieces) >= n
    frames = stream(field, pieces)
    for run in (run_stream, one_read):
        for first in (True, False):
            sink, sg, ex = await run(holdback_guard(first), frames)
            assert_blocked(sink, sg, ex, key)


@pytest.mark.parametrize("field", list(FIELDS))
async def test_clean_value_in_any_field_is_relayed_byte_exact(field: str) -> None:
    """The same streams with a placeholder-free, key-free value pass unchanged (no false block, no rewrite)."""
    text = value_of(field, "nothing secret here")
    frames = stream(field, split_at(text, list(range(3, len(text), 5))))
    for run in (run_stream, one_read):
        for action in ("block", "redact"):
            sink, sg, ex = await run(holdback_guard(True, action), frames)
            assert not sg.stopped and sink.body == b"".join(frames), (field, action)
            assert ex.outcome.redactions == []


@pytest.mark.parametrize("field", [f for f in FIELDS if f != "logprobs.content.token"])
async def test_key_in_any_field_is_redacted_in_redact_mode(field: str) -> None:
    """``redact``: the stream goes on, the key is replaced by its placeholder in the field it came in, and a
    redaction note names the field's JSON path."""
    key = KEYS["github_token"]
    text = value_of(field, key)
    spelled = escaped(key) if FIELDS[field][1] else key
    sink, sg, ex = await run_stream(holdback_guard(True, "redact"),
                                    stream(field, even_split(text, text.index(spelled), len(spelled), 5)))
    assert not sg.stopped and key not in delivered(sink.body)
    note = ex.outcome.redactions[0]
    assert note.detector == "github_token" and note.path.startswith("$.choices[0].")
    assert f"[REDACTED:github_token:{note.fingerprint[:8]}]" in delivered(sink.body)
    if FIELDS[field][0] == ARGS:  # the arguments are still JSON the agent can load, with the escapes kept
        args = "".join(s for p, s in _strings(sink.body) if p[-1] == "arguments")
        assert json.loads(args)["note"] == 'line\nbreak "quoted"'


def _strings(body: bytes) -> list[tuple[tuple[Any, ...], str]]:
    out = []
    for _, data in split_events(body):
        if data and data != b"[DONE]":
            out.extend(walk_strings(orjson.loads(data)))
    return out


@pytest.mark.parametrize("where", ["top.error.message", "choice.native_finish_reason", "tool_call.name", "model"])
async def test_key_in_a_whole_value_is_blocked(where: str) -> None:
    """Strings that are whole values (an upstream error, a provider's extra field, a tool name, the model) are
    judged too."""
    key = KEYS["aws_access_key_id"]
    head = _chunk({"delta": {"role": "assistant", "content": ""}})
    frame = {
        "top.error.message": _chunk({"delta": {}}, error={"message": f"upstream said {key}", "type": "x"}),
        "choice.native_finish_reason": _chunk({"delta": {"content": "a"}, "native_finish_reason": key}),
        "tool_call.name": _chunk({"delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                                            "function": {"name": key, "arguments": "{}"}}]}}),
        "model": _chunk({"delta": {"content": "a"}}, model=key),
    }[where]
    for run in (run_stream, one_read):
        sink, sg, ex = await run(holdback_guard(), [head, _chunk({"delta": {"content": "x"}}), frame, DONE])
        assert_blocked(sink, sg, ex, key)


async def test_fast_path_run_does_not_skip_other_fields() -> None:
    """Plain content frames first (a frame template is learnt), then frames with content plus reasoning: one read;
    the reasoning is watched, not relayed with the content run."""
    key = KEYS["github_token"]
    plain = [_chunk({"delta": {"content": f"w{i} "}}) for i in range(12)]
    mixed = [_chunk({"delta": {"content": "x ", "reasoning_content": p}}) for p in split_at(key, [5, 11, 30])]
    frames = [_chunk({"delta": {"role": "assistant", "content": ""}}), *plain, *mixed, DONE]
    sink, sg, ex = await one_read(holdback_guard(), frames)
    assert_blocked(sink, sg, ex, key)
    assert b"".join(plain) in sink.body  # the clean run before it went out as it came


@pytest.mark.parametrize("field", ["reasoning_content", "refusal", "reasoning_details.text"])
async def test_output_rails_read_reasoning_and_refusal(field: str) -> None:
    """Issue 12 item 2: the chunked output rails see reasoning and refusal text, not only content (the placeholder
    key only the regex rail catches: the inline validators reject it)."""
    guard = guard_for(SECRET_PATTERN_YAML % {"chunk": 4, "context": 8, "first": "false"})
    text = "Reasoning about AKIAIOSFODNN7EXAMPLE now, and more text after it."
    sink, sg, ex = await run_stream(guard, stream(field, split_at(text, list(range(4, len(text), 4)))))
    assert sg.stopped and ex.outcome.blocked_rail == "regex check output"
    assert "AKIAIOSFODNN7EXAMPLE" not in delivered(sink.body)


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b'data: {"choices": [], "v": NaN}\n\n'])
async def test_unparsable_event_fails_closed(bad: bytes) -> None:
    """An event orjson rejects (Python's ``json`` would take ``NaN``) is not relayed as if checked: the stream ends
    with the API's error event."""
    frames = [_chunk({"delta": {"role": "assistant", "content": "hi"}}), bad, _chunk({"delta": {"content": "x"}}),
              DONE]
    for run in (run_stream, one_read):
        sink, sg, _ = await run(holdback_guard(), frames)
        assert sg.stopped and bad not in sink.body and b'"content": "x"' not in sink.body
        err = orjson.loads(list(split_events(sink.body))[-1][1])  # the event the openai SDK raises as APIError
        assert err["error"]["message"] == INVALID_EVENT_MESSAGE and err["error"]["code"] == "invalid_upstream_event"


async def test_recorded_streams_byte_exact_with_holdback() -> None:
    """Recorded provider traffic (reasoning_content, reasoning, channel, obfuscation, tool calls ...) relayed byte for
    byte through rails plus the inline hold-back, block and redact, per read and in one read."""
    rows = [json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["stream"] and r["status"] == 200]
    assert any("reasoning_content" in r["response_body"] for r in rows)
    for rec in rows:
        body = rec["response_body"].encode()
        frames = [raw for raw, _ in split_events(body)]
        for action in ("block", "redact"):
            for run in (run_stream, one_read):
                sink, sg, ex = await run(holdback_guard(True, action), frames)
                assert not sg.stopped and sink.body == body, (rec["id"], action)


@hsettings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(field=hst.sampled_from(list(FIELDS)), det_id=hst.sampled_from(list(KEYS)),
       cuts=hst.lists(hst.integers(0, 200), max_size=19), batched=hst.booleans(), first=hst.booleans())
async def test_property_key_never_delivered_whole(field, det_id, cuts, batched, first) -> None:
    """For every watched field, any split of the value (escapes cut anywhere too), per read or in one read: the
    stream is blocked with the error chunk and the key is nowhere in what the client received."""
    key = KEYS[det_id]
    text = value_of(field, key)
    frames = stream(field, split_at(text, cuts))
    sink, sg, ex = await (one_read if batched else run_stream)(holdback_guard(first), frames)
    assert_blocked(sink, sg, ex, key)


@pytest.mark.parametrize("where", ["first", "template"])
async def test_a_chunk_spelling_a_key_twice_is_not_relayed(where: str) -> None:
    # orjson keeps the last of two equal keys; a reader keeping the first would get the smuggled key. The chunk is
    # refused as not JSON whether it is the stream's first content chunk or one the frame template would read.
    key = KEYS["aws_access_key_id"]
    rows = (json.loads(line) for line in RECORDED.read_text().splitlines() if line.strip())
    rec = next(r for r in rows if r["stream"] and r["status"] == 200 and r["response_body"].count('"content":"') > 6)
    frames = [raw for raw, _ in split_events(rec["response_body"].encode())]
    hits = [i for i, f in enumerate(frames) if b'"content":"' in f and b'"content":""' not in f]
    at = hits[0] if where == "first" else hits[4]
    frames[at] = frames[at].replace(b'"content":"', b'"content":"' + key.encode() + b'","content":"', 1)
    sink, sg, ex = await run_stream(holdback_guard(), frames, rec["request"])
    assert key.encode() not in sink.body
    assert sg.stopped and INVALID_EVENT_MESSAGE.encode() in sink.body
