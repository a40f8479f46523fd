"""``Codec.text_delta`` (the stream guard's fast path) keeps its contract: when it answers, the event's strings are
exactly its delta (with that stream key, kind and path) plus whole values equal to its ``others``; the event is not
terminal and completes no tool call (nor touches one being assembled). Checked over every recorded Responses /
Anthropic event, synthetic streams and generated events; the fast path must answer the plain text deltas."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

sys.path.insert(0, str(Path(__file__).parent))  # the generators of the sibling test module
from test_fast_paths import (  # noqa: E402
    RECORDED,
    SETTINGS,
    anthropic_events,
    events,
    recorded,
    reference,
    responses_events,
)

from railcar.codecs.base import Codec, Piece  # noqa: E402
from railcar.codecs.registry import CODECS  # noqa: E402

FAST = [CODECS["openai_responses"], CODECS["anthropic_messages"]]


def holds(codec: Codec, obj: dict[str, Any]) -> bool:
    """Check the contract on ``obj``; whether the fast path answered."""
    td = codec.text_delta(obj)
    if td is None:
        return False
    key, text, kind, parts, others = td
    pieces = reference(codec, obj)
    assert [p for p in pieces if p.stream_key is not None] == [Piece(parts, text, key, kind)], obj
    assert sorted(p.text for p in pieces if p.stream_key is None) == sorted(others), obj
    assert not codec.is_terminal(obj)
    state = codec.new_stream_state()
    open_calls = {(i, f): {"id": "c", "name": "n", "arguments": "{"} for i in range(4)
                  for f in ("arguments", "input_json")}
    state.calls.update({k: dict(v) for k, v in open_calls.items()})
    assert codec.tool_calls_done(obj, state) == [] and state.calls == open_calls and not state.done
    return True


@pytest.mark.parametrize("api", ["openai_responses", "anthropic_messages"])
def test_recorded_events_keep_the_contract(api: str) -> None:
    objs, _ = recorded(RECORDED[api])
    taken = sum(holds(CODECS[api], obj) for obj in objs)
    plain = [o for o in objs if o.get("type") in ("response.output_text.delta", "content_block_delta")
             and (api == "openai_responses" or o["delta"].get("type") == "text_delta")]
    assert plain and taken >= len(plain)
    assert all(CODECS[api].text_delta(o) is not None for o in plain)  # every recorded plain text delta is answered
    for codec in FAST:  # and any event through the other codec is exact too
        for obj in objs:
            holds(codec, obj)


def test_plain_deltas_are_answered() -> None:
    r, a = FAST
    assert r.text_delta({"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
                         "content_index": 1, "delta": "hi", "logprobs": [], "obfuscation": "x9"}) == \
        ((0, 1, "text"), "hi", "text", ("delta",), ["response.output_text.delta", "m", "x9"])
    assert a.text_delta({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "hi"}}) \
        == ((2, "text"), "hi", "text", ("delta", "text"), ["content_block_delta", "text_delta"])
    assert a.text_delta({"type": "content_block_delta", "index": 2,
                         "delta": {"type": "text_delta", "text": "hi", "more": "x"}}) is None  # joins the stream
    assert r.text_delta({"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{"}) is None
    assert r.text_delta({"type": "response.output_text.delta", "delta": "hi", "logprobs": [{"t": "x"}]}) is None


@SETTINGS
@given(obj=events() | responses_events() | anthropic_events())
def test_generated_events_keep_the_contract(obj: dict[str, Any]) -> None:
    for codec in FAST:
        holds(codec, obj)
