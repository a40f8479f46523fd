"""railcar.streams.chunk_template: chunks read against a reference give what parsing each one whole gives."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_fixtures import RECORDED_CHAT

from railcar.core.exchange import Exchange
from railcar.streams import answer
from railcar.streams.answer import _object_payloads, _parse_chunks, reassemble
from railcar.streams.chunk_template import plain_chunks

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def _chunk(content: Any, **extra: Any) -> bytes:
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], **extra})


def _expand(datas: list[bytes]) -> list[dict[str, Any]]:
    """plain_chunks' result with each ``(reference, content)`` pair turned back into a whole chunk."""
    out = []
    for c in plain_chunks(datas):
        if isinstance(c, tuple):
            ref, content = c
            c = json.loads(json.dumps(ref))
            c["choices"][0]["delta"]["content"] = content
        out.append(c)
    return out


def _recorded_streams() -> list[list[bytes]]:
    if not RECORDED_CHAT.exists():
        pytest.skip(f"{RECORDED_CHAT} is not checked out beside the repo")
    out = []
    for line in RECORDED_CHAT.read_text().splitlines():
        rec = json.loads(line)
        if not rec.get("stream"):
            continue
        payloads = [ln[5:].strip().encode() for ln in rec["response_body"].replace("\r\n", "\n").split("\n")
                    if ln.startswith("data:")]
        out.append(_object_payloads(payloads))
    return out


def test_recorded_streams_read_against_a_reference_equal_a_whole_parse() -> None:
    streams = _recorded_streams()
    used = 0
    for datas in streams:
        assert _expand(datas) == _parse_chunks(datas)
        used += sum(isinstance(c, tuple) for c in plain_chunks(datas)) > len(datas) // 2
    # most chunks of the real text streams are read against a reference (tool-call and reasoning ones are not)
    assert used >= 4


def test_recorded_answers_are_the_same_with_and_without_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    for datas in _recorded_streams():
        ex = _exchange(datas + [b"[DONE]"])
        fast = reassemble(ex)
        monkeypatch.setattr(answer, "plain_chunks", _parse_chunks)
        assert reassemble(ex) == fast
        monkeypatch.undo()


# Payloads an attacker shapes to look like the reference around the content while carrying something else.
TRICKS = [
    b'"a","x":"b"',  # a second member smuggled in after the content
    b'"a\\"',  # the closing quote escaped: the string runs on into the suffix
    b'"a\\\\"',  # an escaped backslash, then a real closing quote
    b'"a\\"b"',  # an escaped quote inside
    b'"\\u0041KIAIOSFODNN7EXAMPLE"',  # a key behind a unicode escape
    b'"a\xff"',  # not UTF-8
    b'"a\x01"',  # a raw control character
    b'"a"  ',  # whitespace after the token
    b'123',  # not a string
    b'"a"}]},{"index":0,"delta":{"content":"b"',  # a second choice through the content slot
]


@pytest.mark.parametrize("middle", TRICKS)
def test_a_shaped_middle_is_read_as_a_whole_parse_reads_it(middle: bytes) -> None:
    ref = _chunk("tok ")
    at = ref.index(b'"tok "')
    shaped = ref[:at] + middle + ref[at + len(b'"tok "'):]
    datas = [ref, shaped, _chunk("end")]
    whole = [orjson.loads(d) for d in datas if _parses(d)]  # each payload parsed on its own, bad ones left out
    assert _expand(datas) == whole
    assert reassemble(_exchange(datas))["content"] == "".join(
        c["choices"][0]["delta"]["content"] for c in whole if isinstance(c["choices"][0]["delta"]["content"], str))


def _exchange(datas: list[bytes]) -> Exchange:
    ex = Exchange(body={"model": "m", "stream": True, "messages": []})
    ex.stream_data = list(datas)
    return ex


def _parses(d: bytes) -> bool:
    try:
        return isinstance(orjson.loads(d), dict)
    except orjson.JSONDecodeError:
        return False


@pytest.mark.parametrize("extra", [{"usage": {"completion_tokens": 1}}, {"error": {"message": "x"}}])
def test_a_chunk_that_says_more_is_no_reference(extra: dict[str, Any]) -> None:
    assert not any(isinstance(c, tuple) for c in plain_chunks([_chunk("a", **extra)] * 4))
    finish = orjson.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]})
    assert not any(isinstance(c, tuple) for c in plain_chunks([finish] * 4))
    twice = _chunk("a").replace(b'"content":"a"', b'"content":"a","content":"b"')
    chunks = _expand([twice] * 4)  # "content" named twice: a parser keeps the last, and so does the cut
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["b"] * 4


def test_each_pair_names_the_reference_it_was_read_against() -> None:
    a = [_chunk(t) for t in ("x", "y")]
    b = [_chunk(t, system_fingerprint="fp_2") for t in ("z", "w")]
    odd = orjson.dumps({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": None, "refusal": "r"}}]})
    chunks = plain_chunks(a + [odd] + b + [_chunk("v")])
    assert [type(c).__name__ for c in chunks] == ["dict", "tuple", "dict", "dict", "tuple", "dict"]
    assert chunks[1][0] is chunks[0] and chunks[4][0] is chunks[3]
    ex = _exchange(a + b)
    assert reassemble(ex)["content"] == "xyzw"
    assert reassemble(ex)["attributes"]["openai.response.system_fingerprint"] == "fp_2"
    ex.stream_data = b + a  # the last pair's reference has no fingerprint: the one before it counts
    assert reassemble(ex)["attributes"]["openai.response.system_fingerprint"] == "fp_2"


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(AWS_KEY) - 1), max_size=19, unique=True),
       escape=st.booleans())
def test_a_key_split_across_chunks_is_reassembled_whole(cuts: list[int], escape: bool) -> None:
    text = f"the key is {AWS_KEY} \"quoted\" \\ done"
    bounds = [0] + sorted(c + 11 for c in cuts) + [len(text)]
    parts = [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    datas = [_chunk(p) for p in parts]
    if escape:  # the same text with every character \u-escaped in one chunk
        datas[0] = _chunk("").replace(b'"content":""', b'"content":"' + "".join(
            f"\\u{ord(ch):04x}" for ch in parts[0]).encode() + b'"')
    assert reassemble(_exchange(datas))["content"] == text


@pytest.mark.parametrize("shape", [
    # the content key spelled again with an escape after the first: a parser keeps the last one
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"%s","\\u0063ontent":"kept"},"finish_reason":null}]}',
    # the same bytes under another key before the delta
    b'{"id":"c","choices":[{"index":0,"logprobs":{"content":"%s"},"delta":{"content":"kept"},'
    b'"finish_reason":null}]}',
])
def test_a_reference_whose_first_content_bytes_are_not_the_content_is_not_cut_there(shape: bytes) -> None:
    datas = [shape % t for t in (b"a", b"b", b"c", b"d")]
    assert _expand(datas) == [orjson.loads(d) for d in datas]
    assert reassemble(_exchange(datas))["content"] == "kept" * 4


def test_a_stream_that_varies_per_chunk_stops_looking_for_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from railcar.streams import chunk_template

    calls = []
    real = chunk_template._cut
    monkeypatch.setattr(chunk_template, "_cut", lambda raw, obj: calls.append(1) or real(raw, obj))
    datas = [_chunk(f"t{i}", obfuscation=f"{i:08x}") for i in range(100)]  # a random field per chunk (Responses-like)
    assert _expand(datas) == [orjson.loads(d) for d in datas]
    assert len(calls) <= chunk_template._TRIES + 1  # not one probe parse per chunk
