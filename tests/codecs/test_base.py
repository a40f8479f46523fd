"""The codec contract's helpers: paths, the string walk, write-back, kinds."""

from __future__ import annotations

import pytest

from railcar.codecs.base import get_at, json_path, kind_of, require, set_at, sse_event, walk_strings


def test_json_path_renders_keys_indexes_and_odd_keys() -> None:
    assert json_path(()) == "$"
    assert json_path(("messages", 3, "content", 0, "text")) == "$.messages[3].content[0].text"
    assert json_path(("a b", 'q"')) == '$["a b"]["q\\""]'


def test_walk_yields_every_string_value_in_order_and_set_at_writes_back() -> None:
    body = {"a": "x", "b": [1, "y", {"c": "z", "d": None}], "e": {"f": True}}
    found = list(walk_strings(body))
    assert found == [(("a",), "x"), (("b", 1), "y"), (("b", 2, "c"), "z")]
    for parts, _ in found:
        set_at(body, parts, "[REDACTED]")
        assert get_at(body, parts) == "[REDACTED]"
    with pytest.raises(KeyError):
        get_at(body, ("nope",))


def test_kind_of_places() -> None:
    msg = {"choices": [{"message": {"content": "hi", "refusal": "no", "reasoning_content": "hmm",
                                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}}]}
    base = ("choices", 0, "message")
    assert kind_of(msg, base + ("content",)) == "text"
    assert kind_of(msg, base + ("refusal",)) == "refusal"
    assert kind_of(msg, base + ("reasoning_content",)) == "reasoning"
    assert kind_of(msg, base + ("tool_calls", 0, "function", "arguments")) == "tool_arguments"
    assert kind_of(msg, base + ("tool_calls", 0, "id")) == "other"
    block = {"content": [{"type": "tool_use", "input": {"city": "Paris"}}, {"type": "thinking", "thinking": "t"}]}
    assert kind_of(block, ("content", 0, "input", "city")) == "tool_arguments"
    assert kind_of(block, ("content", 1, "thinking")) == "reasoning"


def test_require_names_the_field() -> None:
    assert require({"model": "m"}, {"model": (str,)}) is None
    missing = require({}, {"model": (str,)})
    assert missing is not None and missing.param == "model" and missing.code == "missing_required_parameter"
    wrong = require({"model": True}, {"model": (int,)})
    assert wrong is not None and wrong.code == "invalid_type"


def test_sse_event_framing() -> None:
    assert sse_event("ping", {"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'


def test_json_path_renders_like_the_scanner() -> None:
    """A finding's ``json_path`` is the same whether the codec or :func:`railcar.rails.scanner.iter_strings` found
    the string (non-ASCII identifiers, odd keys, nested lists)."""
    from railcar.core.jsonpath import iter_strings

    body = {"café": ["x", {"a b": "y", "_k9": [["z"]]}], "é1": "w"}
    assert [(json_path(p), s) for p, s in walk_strings(body)] == list(iter_strings(body))


def test_text_turns_read_nested_text_and_skip_ids_urls_and_base64() -> None:
    from railcar.codecs.base import text_turns

    block = {"type": "web_fetch_result", "url": "https://x", "retrieved_at": "2025", "content": {
        "type": "document", "title": "T", "source": {"type": "text", "media_type": "text/plain", "data": "page"}},
        "images": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}],
        "runs": [{"stdout": "out", "stderr": "err", "return_code": 0}]}
    assert [(t.text, t.path) for t in text_turns("tool", "tool_output", block, ("c",))] == [
        ("T", "$.c.content.title"), ("page", "$.c.content.source.data"), ("out", "$.c.runs[0].stdout"),
        ("err", "$.c.runs[0].stderr")]
    assert [t.text for t in text_turns("user", "input", ["a", {"type": "text", "text": "b"}], ("x",))] == ["a", "b"]
