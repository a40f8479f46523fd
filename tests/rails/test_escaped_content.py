"""A catalog key JSON-escaped in the *answer text* (a structured / JSON-mode answer: ``{"key":"\\u0041KIA..."}``) is
what the agent's ``json.loads`` turns back into the key, so the hold-back judges the decoded text everywhere:

- chat ``delta.content`` streamed (rails/stream_guard.py: per upstream read and in one read, i.e. the batch fast
  path), split at every offset (the escapes cut too), block and redact: never delivered whole;
- clean content with backslashes (``C:\\\\path``, ``\\n``, an escape cut at a delta's end) still relayed byte-exact;
- the non-streamed chat body (rails/codec_guard.py), a truncated JSON answer included;
- Responses ``response.output_text.delta`` and Anthropic ``text_delta`` (rails/codec_stream.py), escapes and ``\\"``
  around the key, split at every offset.

The key is built at run time (a real-shaped AWS key id: the documentation's EXAMPLE value is a placeholder the
validators reject); the rails never fire, so whatever stops it is the inline hold-back.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from rails_support import NEVER_FIRING_RAILS, Sink, guard_for, holdback_guard, run_stream

from railcar.codecs.registry import CODECS
from railcar.core.exchange import Exchange
from railcar.core.jsonpath import walk_strings
from railcar.core.wire import blocked_frames
from railcar.rails import detectors as det
from railcar.rails.codec_stream import CodecStreamGuard
from railcar.rails.guard import RailsGuard
from railcar.rails.inline import HoldBack
from railcar.rails.json_escape import unescape
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import split_events
from railcar.tools.synthetic import Script, stream_frames

KEY = "AKIA" + "Q3VZ7XKM" + "2PLRW5TN"
NEVER = NEVER_FIRING_RAILS
DONE = b"data: [DONE]\n\n"
BLOCKED = blocked_frames("sensitive data")


def escaped(value: str) -> str:
    """``value`` with its first character and every third one after it written as ``\\u00XX``."""
    return "".join(f"\\u{ord(c):04x}" if i % 3 == 0 else c for i, c in enumerate(value))


# The structured answer as the model writes it inside ``content`` (the decoded JSON string value of the frame).
ANSWER = '{"key":"' + escaped(KEY) + '","n":1}'
# A JSON answer with escaped quotes around the key (a JSON string literal holding JSON), for the codec streams.
QUOTED = '"{\\"key\\":\\"' + escaped(KEY) + '\\"}"'

def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {"id": "chatcmpl-e", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "system_fingerprint": "fp_1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_stream(pieces: list[str]) -> list[bytes]:
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": p}) for p in pieces),
            chunk({}, "stop"), DONE]


def cuts_of(text: str) -> list[list[str]]:
    """``text`` cut in two at every offset, and cut into single characters."""
    return [[text[:i], text[i:]] for i in range(1, len(text))] + [list(text)]


async def one_read(g: RailsGuard, frames: list[bytes]) -> tuple[Sink, Any, Exchange]:
    """The whole stream in one upstream read (``on_events``' batch fast path)."""
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    sink = Sink()
    sg = g.open_stream(ex, sink, abort=lambda: None)
    await sg.on_events(split_events(b"".join(frames)))
    await sg.on_end()
    return sink, sg, ex


def content_of(body: bytes) -> str:
    """The chat content the client received, joined (as the frames spell it: JSON escapes kept)."""
    out = []
    for _, data in split_events(body):
        if data and data != b"[DONE]":
            for c in orjson.loads(data).get("choices") or []:
                text = (c.get("delta") or {}).get("content")
                out.append(text if isinstance(text, str) else "")
    return "".join(out)


def agent_sees(body: bytes) -> str:
    """Every string the client received, joined, as is and JSON-unescaped (what ``json.loads`` gives back)."""
    strings = [s for _, data in split_events(body) if data and data != b"[DONE]"
               for _, s in walk_strings(orjson.loads(data))]
    raw = "".join(strings)
    return raw + "\n" + unescape(raw)[0]


# ------------------------------------------------------------------------------------------------ chat, streamed

@pytest.mark.parametrize("first", [True, False])
async def test_escaped_key_in_chat_content_is_blocked_at_every_split(first: bool) -> None:
    assert KEY not in ANSWER and KEY in unescape(ANSWER)[0]
    for pieces in cuts_of(ANSWER):
        frames = chat_stream(pieces)
        for run in (run_stream, one_read):
            sink, sg, ex = await run(holdback_guard(first), frames)
            assert sg.stopped and ex.outcome.blocked_rail == "sensitive data", pieces
            assert sink.body.endswith(BLOCKED) and KEY not in agent_sees(sink.body), pieces
            assert [n.detector for n in ex.outcome.redactions] == ["aws_access_key_id"]


async def test_escaped_key_in_chat_content_is_redacted_at_every_split() -> None:
    for pieces in cuts_of(ANSWER):
        frames = chat_stream(pieces)
        for run in (run_stream, one_read):
            sink, sg, ex = await run(holdback_guard(True, "redact"), frames)
            assert not sg.stopped and KEY not in agent_sees(sink.body), pieces
            note = ex.outcome.redactions[0]
            assert note.detector == "aws_access_key_id" and note.path == "$.choices[0].delta.content"
            # the answer is still the JSON the agent loads, the key replaced by its placeholder
            assert json.loads(content_of(sink.body)) == {
                "key": f"[REDACTED:aws_access_key_id:{note.fingerprint[:8]}]", "n": 1}, pieces


async def test_escaped_key_after_a_clean_run_is_blocked_in_one_read() -> None:
    """Clean frames first (the fast path relays them as they came and learns a frame template), then the escaped
    key: the fast path must not take the escaped deltas as clean."""
    clean = [f"w{i} " for i in range(12)]
    frames = chat_stream(clean + [ANSWER[:12], ANSWER[12:20], ANSWER[20:]])
    sink, sg, ex = await one_read(holdback_guard(), frames)
    assert sg.stopped and KEY not in agent_sees(sink.body)
    assert sink.body.startswith(b"".join(frames[:13]))  # the clean run went out byte for byte


CLEAN_TEXTS = [
    "Path: C:\\new\\table and C:\\Users\\u\\x",
    'line\\nbreak, tab\\t, quote \\"q\\", caf\\u00e9, emoji \\ud83d\\ude00, bad \\q and a lone \\',
    '{"answer":"Na\\u00efve caf\\u00e9","path":"C:\\\\temp"}',
]


@pytest.mark.parametrize("text", CLEAN_TEXTS)
async def test_clean_content_with_backslashes_is_relayed_byte_exact(text: str) -> None:
    """No key: the frames go out as the upstream sent them, whatever the split (an escape cut at a delta's end
    included), in both modes, with no redaction note."""
    splits = [[text[i:i + 3] for i in range(0, len(text), 3)], list(text), [text[:text.index("\\") + 1],
                                                                             text[text.index("\\") + 1:]]]
    for pieces in splits:
        frames = chat_stream(pieces)
        for action in ("block", "redact"):
            for run in (run_stream, one_read):
                sink, sg, ex = await run(holdback_guard(True, action), frames)
                assert not sg.stopped and sink.body == b"".join(frames), (pieces, action)
                assert ex.outcome.redactions == []


async def test_stream_ending_inside_an_escape_releases_it_as_text() -> None:
    """A delta that ends with a cut escape and no more text: released at the end (nothing is lost)."""
    frames = chat_stream(["price: 5", " \\u00"])
    for run in (run_stream, one_read):
        sink, sg, _ = await run(holdback_guard(), frames)
        assert not sg.stopped and content_of(sink.body) == "price: 5 \\u00"


# ---------------------------------------------------------------------------------------------- chat, whole body

def chat_body(content: str, finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-w", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}]}


WHOLE = {
    "json-answer": ANSWER,
    "truncated-json": ANSWER[:-6],  # finish_reason "length": the JSON does not parse
    "prose-around-json": "Here you go: " + ANSWER + " (as asked)",
    "json-in-json": json.dumps({"args": ANSWER}),  # escaped twice: the agent loads it twice
}


@pytest.mark.parametrize("case", list(WHOLE))
@pytest.mark.parametrize("action", ["block", "redact"])
async def test_escaped_key_in_non_streamed_chat_content(case: str, action: str) -> None:
    content = WHOLE[case]
    assert KEY not in content
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    out = await holdback_guard(True, action).check_response(ex, chat_body(content, "length"))
    assert out is not None
    msg = out["choices"][0]["message"]["content"]
    assert KEY not in msg and KEY not in unescape(msg)[0] and KEY not in unescape(unescape(msg)[0])[0]
    if action == "block":
        assert ex.outcome.blocked_rail == "sensitive data"
        assert out["choices"][0]["finish_reason"] == "content_filter"
    else:
        note = ex.outcome.redactions[0]
        assert not ex.outcome.blocked and note.detector == "aws_access_key_id"
        assert f"[REDACTED:aws_access_key_id:{note.fingerprint[:8]}]" in msg
        spelled = escaped(KEY) if escaped(KEY) in content else json.dumps(escaped(KEY))[1:-1]  # (escaped twice)
        assert msg.replace(f"[REDACTED:aws_access_key_id:{note.fingerprint[:8]}]", "K") == \
            content.replace(spelled, "K")  # the rest of the answer as the model spelled it


async def test_clean_non_streamed_content_with_escapes_is_relayed() -> None:
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    for text in CLEAN_TEXTS:
        assert await holdback_guard(True, "redact").check_response(ex, chat_body(text)) is None
    assert ex.outcome.redactions == []


# --------------------------------------------------------------------------------- Responses and Anthropic text

async def codec_run(g: RailsGuard, api: str, frames: list[bytes]) -> tuple[Sink, CodecStreamGuard, Exchange]:
    body = {"model": "m", "stream": True, "input": "hi"} if api == "openai_responses" else {
        "model": "m", "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    ex = Exchange(body=body, api=api)
    sink = Sink()
    sg = CodecStreamGuard(g, ex, sink, lambda: None, CODECS[api])
    for f in frames:
        await sg.on_events(split_events(f))
        if sg.stopped:
            break
    await sg.on_end()
    return sink, sg, ex


@pytest.mark.parametrize("text", [ANSWER, QUOTED], ids=["escapes", "escaped-quotes"])
@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages"])
async def test_escaped_key_in_codec_text_deltas_is_never_delivered(api: str, text: str) -> None:
    kind = b"response.output_text.delta" if api == "openai_responses" else b"text_delta"
    for pieces in cuts_of(text):
        frames = stream_frames(api, Script(tuple(pieces)))
        assert sum(kind in f for f in frames) == len(pieces)  # the pieces are text deltas of that kind
        for action in ("block", "redact"):
            sink, sg, ex = await codec_run(holdback_guard(True, action), api, frames)
            assert KEY not in agent_sees(sink.body), (pieces, action)
            assert sg.stopped == (action == "block")
            assert {n.detector for n in ex.outcome.redactions} == {"aws_access_key_id"}
