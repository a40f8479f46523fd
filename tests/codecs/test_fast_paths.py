"""The codecs' fast string walks return exactly what the generic walk returns.

``Codec.stream_strings`` answers the event shapes a stream is made of (flat Responses events, Anthropic
``content_block_delta``...) from a per-codec fast path, and the generic :meth:`Codec.walk_stream_strings` carries the
keys and enclosing types down the walk and memoizes the classification. The reference here is the walk as it was
first written: :func:`walk_strings` for the strings, :func:`kind_of` (which re-walks the document for every string)
for their kind, and the codec's own per-string rule (``_piece``) for stream keys. Checked over every event of the
recorded traffic, synthetic streams of every API, and generated events (shuffled keys, fields no API has today,
nested values where scalars are expected, non-string types).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_CHAT, RECORDED_RESPONSES

from railcar.codecs import base
from railcar.codecs.base import Codec, Piece, kind_of, walk_strings, walk_typed
from railcar.codecs.registry import CODECS
from railcar.tools.synthetic import SYNTHETIC_APIS, Script, stream_frames

STREAMING = [c for c in CODECS.values() if c.streams]
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


def reference(codec: Codec, obj: dict[str, Any]) -> list[Piece]:
    """The generic walk as first written: every string by :func:`walk_strings`, classified by the codec's rule with
    the re-walking :func:`kind_of`."""
    return [codec._piece(obj, p, s, kind_of(obj, p)) for p, s in walk_strings(obj)]


def assert_same(codec: Codec, obj: dict[str, Any]) -> None:
    want = reference(codec, obj)
    for got in (codec.stream_strings(obj), codec.walk_stream_strings(obj)):
        assert got == want, (codec.name, obj)
        assert all(type(p) is Piece for p in got)


def _data_payloads(body: str) -> list[str]:
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append("\n".join(data))
    return out


def recorded(path: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every JSON object event of the recorded streams, and every recorded non-streamed JSON body."""
    if not path.exists():
        pytest.skip(f"{path} is not checked out beside the repo")
    events: list[dict[str, Any]] = []
    bodies: list[Any] = []
    with path.open() as f:
        for line in f:
            rec = json.loads(line)
            if rec["stream"]:
                for data in _data_payloads(rec["response_body"]):
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        continue  # [DONE]
                    if isinstance(obj, dict):
                        events.append(obj)
            else:
                try:
                    bodies.append(json.loads(rec["response_body"]))
                except ValueError:
                    continue
    return events, bodies


RECORDED = {"openai_responses": RECORDED_RESPONSES, "anthropic_messages": RECORDED_ANTHROPIC,
            "openai_chat": RECORDED_CHAT}


@pytest.mark.parametrize("api", sorted(RECORDED))
def test_recorded_events_and_bodies_match_the_reference(api: str) -> None:
    events, bodies = recorded(RECORDED[api])
    assert len(events) > 100
    for obj in events:  # each event through every streaming codec: a codec must be exact on any shape
        for codec in STREAMING:
            assert_same(codec, obj)
    codec = CODECS[api]
    for body in bodies:
        assert codec.body_strings(body) == [Piece(p, s, None, kind_of(body, p)) for p, s in walk_strings(body)]


@pytest.mark.parametrize("api", sorted(SYNTHETIC_APIS))
@pytest.mark.parametrize("tool", [None, "lookup"])
def test_synthetic_streams_match_the_reference(api: str, tool: str | None) -> None:
    frames = stream_frames(api, Script.of('{"q": "x\\u00e9", "n": [1, 2]} and more text', 3, tool=tool))
    datas = [d for f in frames for d in _data_payloads(f.decode())]
    objs = [json.loads(d) for d in datas if d.startswith("{")]
    assert len(objs) > 5
    for obj in objs:
        assert_same(CODECS[api], obj)


def test_fast_paths_are_taken_for_delta_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """The typical delta events never reach the generic walk (else there is no fast path to speak of)."""
    def generic(self: Codec, obj: dict[str, Any]) -> list[Piece]:
        raise AssertionError(f"generic walk for {obj}")

    monkeypatch.setattr(Codec, "walk_stream_strings", generic)
    responses, anthropic, chat = CODECS["openai_responses"], CODECS["anthropic_messages"], CODECS["openai_chat"]
    text = responses.stream_strings({"type": "response.output_text.delta", "sequence_number": 4, "item_id": "m",
                                     "output_index": 1, "content_index": 0, "delta": "hi", "logprobs": [],
                                     "obfuscation": "zz"})
    assert [(p.parts, p.stream_key, p.kind) for p in text] == [
        (("type",), None, "other"), (("item_id",), None, "other"), (("delta",), (1, 0, "text"), "text"),
        (("obfuscation",), None, "other")]
    args = anthropic.stream_strings({"type": "content_block_delta", "index": 2,
                                     "delta": {"type": "input_json_delta", "partial_json": '{"a'}})
    assert [(p.parts, p.text, p.stream_key, p.kind) for p in args] == [
        (("type",), "content_block_delta", None, "other"), (("delta", "type"), "input_json_delta", None, "other"),
        (("delta", "partial_json"), '{"a', (2, "input_json"), "tool_arguments")]
    chunk = chat.stream_strings({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                 "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None,
                                              "finish_reason": None}], "usage": None})
    assert [(p.parts, p.stream_key, p.kind) for p in chunk] == [
        (("id",), None, "other"), (("object",), None, "other"), (("model",), None, "other"),
        (("choices", 0, "delta", "content"), ("choices", 0, "delta", "content"), "text")]
    legacy = CODECS["openai_completions"].stream_strings({"id": "c", "choices": [{"text": "hi", "index": 1}]})
    assert [(p.parts, p.stream_key, p.kind) for p in legacy] == [
        (("id",), None, "other"), (("choices", 0, "text"), ("choices", 1, "text"), "text")]


def test_bounded_memos_stay_exact_when_they_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The classification memos are cleared when full (their keys come from the upstream): still exact."""
    monkeypatch.setattr(base, "_KINDS_MAX", 2)
    monkeypatch.setattr(base, "_KINDS", {})  # empty, so the run below misses, fills and overflows them
    monkeypatch.setattr(base, "_UNDER", {})
    events, _ = recorded(RECORDED_ANTHROPIC)
    more, _ = recorded(RECORDED_RESPONSES)
    for obj in events[:400] + more[:400]:
        for codec in (CODECS["anthropic_messages"], CODECS["openai_responses"]):
            assert_same(codec, obj)
    assert len(base._KINDS) <= 2 and len(base._UNDER) <= 2


def test_walk_typed_carries_keys_and_types() -> None:
    doc = {"type": "message", "content": [{"type": "tool_use", "input": {"q": "x", 3: "y"}}, "z"], "id": "m"}
    assert [(p, s) for p, s, _, _ in walk_typed(doc)] == list(walk_strings(doc))
    assert walk_typed(doc) == [
        (("type",), "message", ("type",), ("message",)),
        (("content", 0, "type"), "tool_use", ("content", "type"), ("message", "tool_use")),
        (("content", 0, "input", "q"), "x", ("content", "input", "q"), ("message", "tool_use")),
        (("content", 0, "input", 3), "y", ("content", "input"), ("message", "tool_use")),
        (("content", 1), "z", ("content",), ("message",)),
        (("id",), "m", ("id",), ("message",)),
    ]
    assert walk_typed("s") == [((), "s", (), ())] and walk_typed(5) == []


def test_piece_keeps_its_attributes_and_is_immutable() -> None:
    p = Piece(parts=("choices", 0, "delta", "content"), text="hi", stream_key=("k",), kind="text")
    assert (p.parts, p.text, p.stream_key, p.kind) == (("choices", 0, "delta", "content"), "hi", ("k",), "text")
    assert p.path == "$.choices[0].delta.content"
    assert p == Piece(("choices", 0, "delta", "content"), "hi", ("k",), "text") and hash(p) == hash(p)
    with pytest.raises(AttributeError):
        p.text = "x"  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ generated events

KEYS = ["type", "delta", "text", "partial_json", "thinking", "signature", "index", "output_index", "content_index",
        "summary_index", "item_id", "sequence_number", "logprobs", "obfuscation", "refusal", "arguments", "input",
        "code", "content", "reasoning", "summary", "function", "function_call", "choices", "tool_calls", "id"]
EVENT_TYPES = ["response.output_text.delta", "response.function_call_arguments.delta", "response.refusal.delta",
               "response.reasoning_summary_text.delta", "response.audio.transcript.delta", "response.new_thing.delta",
               "response.output_text.done", "response.output_item.added", "response.completed", "error",
               "content_block_delta", "content_block_start", "message_delta", "ping", "other.delta", "x.delta",
               "response.delta", "response."]
DELTA_TYPES = ["text_delta", "input_json_delta", "thinking_delta", "signature_delta", "citations_delta", "x_delta",
               "_delta", "text", "function_call", "tool_use", "reasoning", "message"]
scalar = st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(["", "a", "tok ", '{"k'])
key = st.sampled_from(KEYS) | st.text(max_size=3)


def _with_type(types: list[str], fields: Any) -> Any:
    """Objects of ``fields`` with a ``type`` (usually one of ``types``) inserted at a random position."""
    typed = st.tuples(st.sampled_from(types) | scalar, st.integers(0, 4), fields)
    return typed.map(lambda t: dict(t[2][:t[1]] + [("type", t[0])] + t[2][t[1]:]))


def _objects(children: Any) -> Any:
    items = st.lists(st.tuples(key, children), max_size=4)
    return items.map(dict) | _with_type(EVENT_TYPES + DELTA_TYPES, items)


json_value = st.recursive(scalar, lambda c: st.lists(c, max_size=3) | _objects(c), max_leaves=12)
flat = st.lists(st.tuples(key, scalar), max_size=4)
delta_like = st.sampled_from(["tok ", ""]) | _with_type(DELTA_TYPES, flat) | flat.map(dict) | json_value


def _shuffled(draw: Any, fields: list[tuple[Any, Any]], *pinned: tuple[str, Any]) -> dict[str, Any]:
    for item in pinned:
        fields.insert(draw(st.integers(0, len(fields))), item)
    return dict(fields)


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """An event-like object: a type, a ``delta`` and other fields in random order."""
    fields: list[tuple[Any, Any]] = draw(st.lists(st.tuples(key, scalar | json_value), max_size=6))
    return _shuffled(draw, fields, ("delta", draw(delta_like)), ("type", draw(st.sampled_from(EVENT_TYPES) | scalar)))


stems = st.sampled_from(["output_text", "refusal", "function_call_arguments", "reasoning_summary_text",
                         "audio.transcript", "custom_tool_call_input", "new_thing", ""]) | st.text(max_size=3)
responses_type = st.builds(lambda a, b, c: a + b + c, st.sampled_from(["response.", "", "x."]), stems,
                           st.sampled_from([".delta", ".done", ""]))


@st.composite
def responses_events(draw: Any) -> dict[str, Any]:
    """A Responses-like event: a ``*.delta``-ish type, a string ``delta`` (mostly), indexes and other flat fields,
    sometimes a nested value (the fast path's bail-out)."""
    fields: list[tuple[Any, Any]] = draw(st.lists(st.tuples(key, scalar), max_size=5))
    for name in draw(st.lists(st.sampled_from(["output_index", "content_index", "summary_index"]), unique=True)):
        fields.append((name, draw(st.integers(0, 2) | scalar)))
    delta = draw(st.text(max_size=4) | scalar | json_value)
    return _shuffled(draw, fields, ("delta", delta), ("type", draw(responses_type | scalar)))


anthropic_type = st.sampled_from(["content_block_delta", "message_delta", "content_block_start", "ping", "x"])
delta_type = st.builds(lambda a, b: a + b, st.sampled_from(["text", "input_json", "thinking", "signature", "x", ""]),
                       st.sampled_from(["_delta", ""])) | scalar


@st.composite
def anthropic_events(draw: Any) -> dict[str, Any]:
    """An Anthropic-like event: a type, an ``index``, a ``delta`` object (mostly flat, with a ``type`` and a text
    field) and other fields, sometimes nested values (the fast path's bail-out)."""
    inner = draw(st.lists(st.tuples(key, scalar | st.text(max_size=3)), max_size=3))
    inner = inner + draw(st.lists(st.tuples(key, json_value), max_size=1))
    delta = _shuffled(draw, inner, ("type", draw(delta_type)))
    fields: list[tuple[Any, Any]] = draw(st.lists(st.tuples(key, scalar), max_size=3))
    return _shuffled(draw, fields, ("index", draw(st.integers(0, 3) | scalar)),
                     ("delta", draw(st.just(delta) | scalar)), ("type", draw(anthropic_type | scalar)))


delta_fields = st.sampled_from(["content", "refusal", "reasoning_content", "reasoning", "role", "name", "id",
                                "type", "text", "x"]) | key
tool_call = st.fixed_dictionaries({"index": st.integers(0, 2) | scalar},
                                  optional={"id": scalar, "type": scalar, "function": st.fixed_dictionaries(
                                      {}, optional={"name": scalar, "arguments": st.text(max_size=3) | scalar})})
delta_value = st.text(max_size=3) | scalar | st.lists(tool_call, max_size=2) | json_value


@st.composite
def chunk_events(draw: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` / ``text_completion``-like object: top-level scalars, ``choices`` of objects with
    an ``index``, a ``text`` or a ``delta`` (string fields, ``tool_calls`` entries, content parts, nested values)
    and other fields, in random order."""
    choices = []
    for _ in range(draw(st.integers(0, 2))):
        delta = dict(draw(st.lists(st.tuples(delta_fields, delta_value), max_size=3)))
        if draw(st.booleans()):
            delta["tool_calls"] = draw(st.lists(tool_call, max_size=2))
        fields = draw(st.lists(st.tuples(st.sampled_from(["finish_reason", "logprobs", "text"]) | key,
                                         scalar | st.text(max_size=2)), max_size=3))
        choices.append(_shuffled(draw, fields, ("index", draw(st.integers(0, 2) | scalar)),
                                 ("delta", draw(st.just(delta) | scalar | json_value))))
    fields = draw(st.lists(st.tuples(st.sampled_from(["id", "object", "model", "created", "usage"]) | key,
                                     scalar | st.text(max_size=2)), max_size=4))
    return _shuffled(draw, fields, ("choices", draw(st.just(choices) | json_value)))


@SETTINGS
@given(chunk_events())
def test_generated_chunks_match_the_reference(obj: dict[str, Any]) -> None:
    assert_same(CODECS["openai_chat"], obj)
    assert_same(CODECS["openai_completions"], obj)


@SETTINGS
@given(st.one_of(events(), responses_events(), anthropic_events(), chunk_events()))
def test_generated_events_match_the_reference(obj: dict[str, Any]) -> None:
    for codec in STREAMING:
        assert_same(codec, obj)


@SETTINGS
@given(responses_events())
def test_generated_responses_events_match_the_reference(obj: dict[str, Any]) -> None:
    assert_same(CODECS["openai_responses"], obj)


@SETTINGS
@given(anthropic_events())
def test_generated_anthropic_events_match_the_reference(obj: dict[str, Any]) -> None:
    assert_same(CODECS["anthropic_messages"], obj)


@SETTINGS
@given(json_value)
def test_generated_bodies_match_the_reference(body: Any) -> None:
    for codec in CODECS.values():
        assert codec.body_strings(body) == [Piece(p, s, None, kind_of(body, p)) for p, s in walk_strings(body)]
    if isinstance(body, dict):
        for codec in STREAMING:
            assert_same(codec, body)
