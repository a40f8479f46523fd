"""codecs/chat_tools.py: streamed tool-call assembly from recorded provider streams."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from shared_fixtures import RECORDED_CHAT

from railcar.codecs.chat_tools import ToolCallAssembler
from railcar.sidecar.sse import split_events

RECORDED = RECORDED_CHAT


def _tool_streams():
    rows = [json.loads(x) for x in RECORDED.read_text().splitlines() if x.strip()]
    return [r for r in rows if r["stream"] and r["has_tool_calls"] and r["status"] == 200]


def test_recorded_tool_streams_assemble_to_valid_json() -> None:
    rows = _tool_streams()
    assert rows
    for rec in rows:
        asm = ToolCallAssembler()
        for _, data in split_events(rec["response_body"].encode()):
            if not data or data == b"[DONE]":
                continue
            obj = orjson.loads(data)
            for c in obj.get("choices") or []:
                tcs = (c.get("delta") or {}).get("tool_calls")
                if tcs:
                    asm.feed(tcs)
                if c.get("finish_reason"):
                    asm.finish()
        asm.finish()
        assert asm.calls, rec["id"]
        for call in asm.calls.values():
            assert call.complete and call.name
            json.loads(call.arguments or "{}")


def test_completion_is_detected_as_soon_as_arguments_parse() -> None:
    asm = ToolCallAssembler()
    assert asm.feed([{"index": 0, "id": "a", "function": {"name": "f", "arguments": ""}}]) == []
    assert asm.feed([{"index": 0, "function": {"arguments": '{"x": [1,'}}]) == []
    assert asm.feed([{"index": 0, "function": {"arguments": ' 2]}'}}]) == [0]
    assert asm.calls[0].arguments == '{"x": [1, 2]}' and asm.calls[0].id == "a"


def test_next_index_and_finish_complete_open_calls() -> None:
    asm = ToolCallAssembler()
    asm.feed([{"index": 0, "function": {"name": "f", "arguments": '{"a": "}'}}])  # not valid JSON yet
    assert asm.feed([{"index": 1, "function": {"name": "g", "arguments": "{"}}]) == [0]
    assert asm.open and asm.finish() == [1] and not asm.open


def test_malformed_entry_names_the_field() -> None:
    # (A missing index is not malformed: see below. A non-integer one is.)
    with pytest.raises(ValueError, match="tool_calls\\[\\].index"):
        ToolCallAssembler().feed([{"index": "0", "function": {"arguments": "{}"}}])


def test_entries_without_index_start_or_continue_calls() -> None:
    # Providers that send whole calls without ``index``: a named entry starts the next call, a bare fragment
    # continues the last one; ``indices`` tells which call each entry went to.
    asm = ToolCallAssembler()
    done = asm.feed([{"id": "a", "function": {"name": "f", "arguments": "{}"}},
                     {"id": "b", "function": {"name": "g", "arguments": '{"x": '}}])
    assert asm.indices == [0, 1] and done == [0]
    assert asm.feed([{"function": {"arguments": "1}"}}]) == [1] and asm.indices == [1]
    assert [(c.id, c.name, c.arguments) for c in asm.calls.values()] == [("a", "f", "{}"), ("b", "g", '{"x": 1}')]
