"""The streaming output policy over any codec (rails/codec_stream.py): recorded Responses and Anthropic streams pass
byte for byte with the hold-back on; a catalog value split across text or tool-argument deltas (JSON-escaped too) is
never delivered whole and the stream ends with the codec's own blocked frames, which the real SDKs raise; redaction
rewrites the value at its path; output and tool_input rails hold what they have not passed; what does not parse fails
closed."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rails_support import Sink, guard_for
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_RESPONSES

from railcar.codecs.registry import CODECS
from railcar.core.exchange import Exchange
from railcar.core.jsonpath import walk_strings
from railcar.rails import detectors as d
from railcar.rails.codec_stream import INVALID_EVENT_MESSAGE, CodecStreamGuard
from railcar.rails.inline import HoldBack
from railcar.rails.json_escape import Unescaper, rewrite, unescape
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import split_events
from railcar.tools.synthetic import Script, stream_frames

# An AWS access key id built at runtime (a random body, not the documentation placeholder the validator rejects).
KEY = "AKIA" + "".join("QZ7TMB5WX2KR4NPD"[(i * 7) % 16] for i in range(16))
FP_KEY = b"k" * 32
RAILS = """
rails:
  config:
    regex_detection:
      output:
        patterns: ["%(pattern)s"]
  output:
    flows: [regex check output]
    streaming: {enabled: true, chunk_size: 4, context_size: 2, stream_first: %(first)s}
"""
NEVER = "NEVER-MATCHES-[0-9]{40}"
BODIES: dict[str, dict[str, Any]] = {
    "openai_responses": {"model": "m", "stream": True, "input": "hi"},
    "anthropic_messages": {"model": "m", "stream": True, "max_tokens": 64,
                           "messages": [{"role": "user", "content": "hi"}]},
    "openai_completions": {"model": "m", "stream": True, "prompt": "hi"},
}
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def holdback(action: str = "block") -> HoldBack:
    return HoldBack(Scanner(d.select(["secret"], []), FP_KEY), action, 512)


_GUARDS: dict[tuple[str, bool, str], Any] = {}


def rails_guard(first: bool = True, action: str | None = "block", pattern: str = NEVER) -> Any:
    """A :class:`RailsGuard` with regex output rails (``pattern``) and the inline hold-back (``action``; ``None``:
    off), cached per combination (the NeMo engine takes a while to build)."""
    k = (pattern, first, str(action))
    if k not in _GUARDS:
        g = guard_for(RAILS % {"pattern": pattern, "first": str(first).lower()})
        g.filter_factory = holdback(action) if action else None
        _GUARDS[k] = g
    return _GUARDS[k]


async def run(guard: Any, api: str, frames: list[bytes], body: dict[str, Any] | None = None,
              per_read: int = 1) -> tuple[Sink, CodecStreamGuard, Exchange, list[int]]:
    """Drive a :class:`CodecStreamGuard` over ``frames`` (``per_read`` frames per upstream read); returns the sink,
    the guard, the exchange and the abort calls."""
    ex = Exchange(body=body or BODIES.get(api, {}), api=api)
    sink, aborts = Sink(), []
    sg = CodecStreamGuard(guard, ex, sink, lambda: aborts.append(1), CODECS[api])
    for i in range(0, len(frames), per_read):
        events = [e for f in frames[i:i + per_read] for e in split_events(f)]
        n = await sg.on_events(events)
        if sg.stopped:
            assert n <= len(events)
            break
        assert n == len(events)
    await sg.on_end()
    return sink, sg, ex, aborts


def recorded(path: Any) -> list[dict[str, Any]]:
    with path.open() as f:
        recs = [json.loads(line) for line in f]
    return [r for r in recs if r["stream"] and r["status"] == 200
            and r["response_headers"].get("content-type", "").startswith("text/event-stream")]


RECORDS = recorded(RECORDED_RESPONSES) + recorded(RECORDED_ANTHROPIC)


# -------------------------------------------------------------------------------------------- recorded traffic

@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("action", ["block", "redact"])
async def test_recorded_streams_pass_byte_for_byte(first: bool, action: str) -> None:
    assert len(RECORDS) >= 20
    guard = rails_guard(first, action)
    for rec in RECORDS:
        body = rec["response_body"].encode()
        frames = [raw for raw, _ in split_events(body)]
        sink, sg, ex, aborts = await run(guard, rec["api"], frames, rec["request"], per_read=3)
        assert sink.body == body, rec["id"]
        assert not sg.stopped and not aborts and not ex.outcome.redactions, rec["id"]


# ------------------------------------------------------------------------------------------------ the property

def escaped(text: str, which: list[bool]) -> str:
    """``text`` with the characters flagged in ``which`` written as JSON ``\\uXXXX`` escapes."""
    return "".join(f"\\u{ord(c):04x}" if which[i % len(which)] else c for i, c in enumerate(text))


def split(text: str, cuts: list[int]) -> list[str]:
    pts = sorted({c % len(text) for c in cuts if c % len(text)})
    pts = [0, *pts, len(text)]
    return [text[a:b] for a, b in zip(pts, pts[1:])]


def delivered(body: bytes) -> tuple[str, list[str]]:
    """What a client got: the delta strings of the stream joined (JSON escapes undone, as ``json.loads`` of the
    arguments would) and every other string."""
    deltas, whole = [], []
    for _, data in split_events(body):
        if not data or data == b"[DONE]":
            continue
        obj = orjson.loads(data)
        for parts, s in walk_strings(obj):
            is_delta = parts in (("delta",), ("delta", "text"), ("delta", "partial_json")) \
                or parts[-1:] == ("text",) and parts[:1] == ("choices",)
            (deltas if is_delta else whole).append(s)
    return unescape("".join(deltas))[0], [unescape(s)[0] for s in whole]


def last_event(body: bytes) -> tuple[bytes, dict[str, Any]]:
    raw, data = [e for e in split_events(body) if e[1] and e[1] != b"[DONE]"][-1]
    return raw, orjson.loads(data)


def assert_blocked(api: str, body: bytes) -> None:
    raw, obj = last_event(body)
    if api == "openai_responses":
        assert raw.startswith(b"event: error\n") and obj["type"] == "error" and obj["code"] == "content_blocked"
        assert obj["error"]["message"] == "Blocked by sensitive data rails."
    elif api == "anthropic_messages":
        assert raw.startswith(b"event: error\n") and obj["error"]["type"] == "guardrails_violation"
    else:
        assert obj["error"]["code"] == "content_blocked" and body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages", "openai_completions"])
@pytest.mark.parametrize("tool", [False, True])
@SETTINGS
@given(cuts=st.lists(st.integers(0, 200), max_size=19), esc=st.lists(st.booleans(), min_size=1, max_size=8),
       first=st.booleans())
async def test_split_value_is_never_delivered_whole(api: str, tool: bool, cuts: list[int], esc: list[bool],
                                                    first: bool) -> None:
    if tool and api == "openai_completions":
        return  # legacy completions have no tool calls
    value = escaped(KEY, esc)
    text = '{"region": "eu", "key": "' + value + '", "n": 1}' if tool else f"Your key: {value} keep it."
    script = Script(tuple(split(text, cuts)), tool="deploy" if tool else None)
    sink, sg, ex, aborts = await run(rails_guard(first), api, stream_frames(api, script))
    joined, whole = delivered(sink.body)
    assert KEY not in joined and not any(KEY in s for s in whole) and KEY.encode() not in sink.body
    assert sg.stopped and aborts == [1] and ex.outcome.blocked_rail == "sensitive data"
    assert_blocked(api, sink.body)


# ----------------------------------------------------------------------------------------------------- the SDKs

def _openai(body: bytes) -> openai.OpenAI:
    transport = httpx.MockTransport(lambda req: httpx.Response(200, content=body,
                                                               headers={"content-type": "text/event-stream"}))
    return openai.OpenAI(api_key="k", base_url="http://upstream/v1", max_retries=0,
                         http_client=httpx.Client(transport=transport))


def _anthropic(body: bytes) -> anthropic.Anthropic:
    transport = httpx2.MockTransport(lambda req: httpx2.Response(200, content=body,
                                                                 headers={"content-type": "text/event-stream"}))
    return anthropic.Anthropic(api_key="k", base_url="http://upstream", max_retries=0,
                               http_client=httpx2.Client(transport=transport))


@pytest.mark.parametrize("tool", [False, True])
async def test_the_sdks_raise_the_block(tool: bool) -> None:
    deltas = ('{"key": "', KEY[:6], KEY[6:], '"}') if tool else ("Key: ", KEY[:9], KEY[9:], " ok")
    script = Script(deltas, tool="deploy" if tool else None)
    sink, *_ = await run(rails_guard(), "openai_responses", stream_frames("openai_responses", script))
    got: list[str] = []
    with pytest.raises(openai.APIError, match="Blocked by sensitive data rails."):
        for ev in _openai(sink.body).responses.create(model="m", input="hi", stream=True):
            got.append(getattr(ev, "delta", "") or "")
    assert KEY not in "".join(got)
    sink, *_ = await run(rails_guard(), "anthropic_messages", stream_frames("anthropic_messages", script))
    with pytest.raises(anthropic.APIStatusError, match="sensitive data") as ei:
        for _ in _anthropic(sink.body).messages.create(model="m", max_tokens=64, stream=True,
                                                       messages=[{"role": "user", "content": "hi"}]):
            pass
    assert KEY not in str(ei.value)


# ------------------------------------------------------------------------------------------------ redaction

@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages"])
async def test_redact_rewrites_the_value_at_its_path(api: str) -> None:
    script = Script(("Your key: ", KEY[:5], KEY[5:12], KEY[12:], " keep it."))
    sink, sg, ex, _ = await run(rails_guard(action="redact"), api, stream_frames(api, script))
    assert not sg.stopped and KEY.encode() not in sink.body
    joined, _ = delivered(sink.body)
    assert joined.startswith("Your key: [REDACTED:aws_access_key_id:") and joined.endswith("] keep it.")
    paths = {n.path for n in ex.outcome.redactions}
    if api == "openai_responses":  # the deltas and the whole text of the .done / .completed events
        assert {"$.delta", "$.text", "$.part.text", "$.item.content[0].text",
                "$.response.output[0].content[0].text"} <= paths
    else:
        assert paths == {"$.delta.text"}
    # Rewritten frames keep their `event:` line; the frames before the value are the upstream's bytes.
    frames = stream_frames(api, script)
    assert all(raw.startswith(b"event: ") for raw, _ in split_events(sink.body))
    assert sink.body.startswith(b"".join(frames[:3]))


async def test_redact_keeps_the_escapes_around_the_value() -> None:
    value = escaped(KEY, [True, False, False])
    args = '{"note": "caf\\u00e9", "key": "' + value + '"}'
    script = Script(tuple(split(args, [3, 17, 30, 31, 44])), tool="deploy")
    sink, sg, ex, _ = await run(rails_guard(action="redact"), "anthropic_messages",
                                stream_frames("anthropic_messages", script))
    joined = "".join(orjson.loads(d)["delta"]["partial_json"] for _, d in split_events(sink.body)
                     if d and b"input_json_delta" in d)
    assert "caf\\u00e9" in joined and KEY not in unescape(joined)[0]
    assert json.loads(joined)["key"].startswith("[REDACTED:aws_access_key_id:")
    assert [n.path for n in ex.outcome.redactions] == ["$.delta.partial_json"]


# ------------------------------------------------------------------------------------------------ rails, holds

async def test_output_rails_hold_text_until_its_chunk_passed() -> None:
    # The output rail blocks "forbidden"; without stream_first the chunk carrying it never reaches the client.
    script = Script(tuple(f"w{i} " for i in range(6)) + ("forb", "idden", " tail"))
    sink, sg, ex, _ = await run(rails_guard(first=False, pattern="forbidden"), "openai_responses",
                                stream_frames("openai_responses", script))
    joined, _ = delivered(sink.body)
    assert sg.stopped and ex.outcome.blocked_rail == "regex check output"
    assert "forb" not in joined and joined.startswith("w0 w1")
    assert_blocked_by(sink.body, "regex check output")


def assert_blocked_by(body: bytes, rail: str) -> None:
    _, obj = last_event(body)
    assert obj["type"] == "error" and obj["param"] == rail


async def test_tool_arguments_wait_for_the_tool_input_rails() -> None:
    args = '{"cmd": "DROP TABLE users"}'
    script = Script(tuple(split(args, [5, 12, 20])), tool="sql")
    sink, sg, ex, _ = await run(rails_guard(pattern="DROP TABLE"), "openai_responses",
                                stream_frames("openai_responses", script))
    assert sg.stopped and ex.outcome.blocked_rail == "regex check output"
    assert b"function_call_arguments.delta" not in sink.body and b"DROP" not in sink.body
    assert_blocked_by(sink.body, "regex check output")


async def test_clean_tool_call_frames_wait_until_the_call_is_complete() -> None:
    script = Script(('{"city": ', '"Paris"}'), tool="weather")
    frames = stream_frames("anthropic_messages", script)
    ex = Exchange(body=BODIES["anthropic_messages"], api="anthropic_messages")
    sink = Sink()
    sg = CodecStreamGuard(rails_guard(), ex, sink, lambda: None, CODECS["anthropic_messages"])
    for f in frames[:5]:  # message_start, ping, content_block_start, the two input_json deltas
        await sg.on_events(split_events(f))
    assert sink.body == b"".join(frames[:3])  # the argument deltas are held
    for f in frames[5:]:
        await sg.on_events(split_events(f))
    await sg.on_end()
    assert sink.body == b"".join(frames)


async def test_a_tail_held_at_the_end_is_checked() -> None:
    # The upstream stops in the middle of the value (no terminal event): the held tail is judged at on_end.
    frames = stream_frames("anthropic_messages", Script(("Key: ", KEY[:10], KEY[10:])))[:6]
    sink, sg, ex, _ = await run(rails_guard(), "anthropic_messages", frames)
    assert sg.stopped and KEY[:10].encode() not in sink.body and ex.outcome.blocked_rail == "sensitive data"


# ------------------------------------------------------------------------------------------------ fail closed

@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b'data: {"type": "x", "v": NaN}\n\n',
                                 b"event: content_block_delta\ndata: <html>\n\n"])
@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages"])
async def test_an_unparsable_event_fails_closed(api: str, bad: bytes) -> None:
    frames = stream_frames(api, Script(("Hello", " there")))
    sink, sg, _, aborts = await run(rails_guard(), api, frames[:3] + [bad] + frames[3:])
    raw, obj = last_event(sink.body)
    assert sg.stopped and aborts == [1] and bad not in sink.body
    assert raw.startswith(b"event: error\n") and INVALID_EVENT_MESSAGE in json.dumps(obj)
    if api == "openai_responses":
        with pytest.raises(openai.APIError, match="not valid JSON"):
            for _ in _openai(sink.body).responses.create(model="m", input="hi", stream=True):
                pass


async def test_no_holdback_relays_and_still_fails_closed() -> None:
    frames = stream_frames("openai_responses", Script(("Key: ", KEY)))
    sink, sg, *_ = await run(rails_guard(action=None), "openai_responses", frames, per_read=4)
    assert sink.body == b"".join(frames) and not sg.stopped
    sink, sg, *_ = await run(rails_guard(action=None), "openai_responses", frames[:2] + [b"data: {\n\n"])
    assert sg.stopped and sink.body.startswith(b"".join(frames[:2]))


# ------------------------------------------------------------------------------------------------ the unescape

@SETTINGS
@given(text=st.text(alphabet='ab\\u0041"n/Dd8 ', max_size=40), cuts=st.lists(st.integers(0, 60), max_size=8))
def test_incremental_unescape_equals_the_whole(text: str, cuts: list[int]) -> None:
    u = Unescaper()
    pieces = split(text, cuts) if text else []
    assert "".join(u.feed(p) for p in pieces) + u.flush() == unescape(text)[0]


def test_unescape_decodes_json_string_escapes() -> None:
    assert unescape('\\u0041KIA \\"q\\" \\\\u0041 \\ud83d\\ude00 \\ud800x \\q')[0] == \
        'AKIA "q" \\u0041 \U0001f600 \ufffdx \\q'
    assert unescape("ab\\u00", final=False) == ("ab", "\\u00")
    assert unescape("ab\\ud83d", final=False) == ("ab", "\\ud83d")
    assert rewrite('x \\u0041BC y', "x ABC y", "x [R] y") == "x [R] y"
    assert rewrite('caf\\u00e9 ABC', "café ABC", "café [R]") == "caf\\u00e9 [R]"


# --------------------------------------------------------------------------------------- a key spelled twice

# The field the first duplicate smuggles the key in: what a text delta event of each API calls its text.
_DUP_FIELD = {"openai_responses": b'"delta":"', "anthropic_messages": b'"text":"'}


@pytest.mark.parametrize("api", list(_DUP_FIELD))
async def test_an_event_spelling_a_key_twice_is_not_relayed(api: str) -> None:
    # orjson keeps the last of two equal keys, a reader that keeps the first would get the smuggled key: the event
    # is refused as not JSON, and its bytes never reach the client.
    rec = next(r for r in RECORDS if r["api"] == api and _DUP_FIELD[api] in r["response_body"].encode())
    field = _DUP_FIELD[api]
    frames = [raw for raw, _ in split_events(rec["response_body"].encode())]
    at = next(i for i, f in enumerate(frames) if field in f)
    frames[at] = frames[at].replace(field, field + KEY.encode() + b'",' + field, 1)
    sink, sg, ex, aborts = await run(rails_guard(), api, frames, rec["request"])
    assert KEY.encode() not in sink.body
    assert sg.stopped and aborts == [1] and INVALID_EVENT_MESSAGE.encode() in sink.body
