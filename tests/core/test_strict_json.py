"""core/strict_json.py: JSON whose bytes spell a key twice is refused; every recorded upstream payload is read as
orjson reads it (no false refusal on real traffic)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_CHAT, RECORDED_RESPONSES

from railcar.core.strict_json import loads
from railcar.sidecar.sse import split_events


def _payloads() -> list[bytes]:
    out = []
    for path in (RECORDED_CHAT, RECORDED_RESPONSES, RECORDED_ANTHROPIC):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            body = rec["response_body"].encode()
            if rec["stream"]:
                out += [d for _, d in split_events(body) if d and d[:1] in b"{["]
            elif body[:1] in b"{[":
                out.append(body)
    return out


def test_every_recorded_payload_reads_as_orjson_reads_it() -> None:
    payloads = _payloads()
    parsed = 0
    for data in payloads:
        try:
            want = orjson.loads(data)
        except orjson.JSONDecodeError:  # (a `[DONE]`-like sentinel)
            continue
        assert loads(data) == want
        parsed += 1
    assert parsed > 5000


@pytest.mark.parametrize("data", [
    b'{"content":"AKIA","content":"ok"}',
    b'{"content" :"AKIA", "content": "ok"}',  # whitespace around the colon
    b'{"\\u0063ontent":"AKIA","content":"ok"}',  # the same key spelled with an escape
    b'{"choices":[{"delta":{"a":1,"b":2,"a":3}}]}',  # nested, in a list
    b'[{"x":1},{"y":2,"y":2}]',
])
def test_a_key_spelled_twice_is_refused(data: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        loads(data)


@pytest.mark.parametrize("data", [
    b'{"arguments":"{\\"city\\": \\"Paris\\"}"}',  # quotes and colons inside a string are no keys
    b'{"a":"x\\\\","b":"\\":"}',  # an escaped backslash before a closing quote
    b'{"":1,"k\\\\":2}',
    b'"a string"',
])
def test_strings_that_look_like_keys_are_not_counted(data: bytes) -> None:
    assert loads(data) == orjson.loads(data)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=4), max_leaves=20)


@given(_json, st.booleans())
def test_any_document_round_trips_and_any_repeated_key_is_refused(doc: Any, pretty: bool) -> None:
    data = json.dumps(doc, indent=1 if pretty else None).encode()
    assert loads(data) == orjson.loads(data)
    if isinstance(doc, dict) and doc:
        k, v = next(iter(doc.items()))
        twice = b"{" + json.dumps(k).encode() + b": " + json.dumps(v).encode() + b", " + data[1:]
        with pytest.raises(orjson.JSONDecodeError):
            loads(twice)
