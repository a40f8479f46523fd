"""railcar.streams.answer: the answer of an exchange reassembled from streamed chunks or the body."""

from __future__ import annotations

import orjson

from railcar.core.exchange import Exchange
from railcar.streams.answer import reassemble


def _chunk(delta: dict, finish=None, **extra) -> bytes:
    return orjson.dumps({"id": "c1", "model": "m-2024", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def test_reassembles_streamed_content_and_tool_calls() -> None:
    ex = Exchange(body={"model": "m", "stream": True, "messages": []})
    ex.stream_data = [
        _chunk({"role": "assistant", "content": "Hel"}), _chunk({"content": "lo"}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "get", "arguments": '{"a"'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': 1}'}}]}, finish="tool_calls"),
        orjson.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        b"[DONE]",
    ]
    ans = reassemble(ex)
    assert ans["content"] == "Hello"
    assert ans["tool_calls"] == [{"id": "call_1", "name": "get", "arguments": '{"a": 1}'}]
    attrs = ans["attributes"]
    assert attrs["gen_ai.response.finish_reasons"] == ["tool_calls"] and attrs["gen_ai.usage.output_tokens"] == 3
    assert attrs["gen_ai.provider.name"] == "openai" and ans["terminated"]
    # Whole calls without ``index`` (some OpenAI-compatible providers) are separate calls, as the tool rails see them.
    ex.stream_data = [_chunk({"tool_calls": [{"id": "c_a", "function": {"name": "f", "arguments": "{}"}},
                                             {"id": "c_b", "function": {"name": "g", "arguments": '{"b": 2}'}}]})]
    assert [c["id"] for c in reassemble(ex)["tool_calls"]] == ["c_a", "c_b"]


def test_reassembly_skips_a_malformed_chunk_and_keeps_the_last_model() -> None:
    ex = Exchange(body={"model": "m", "stream": True, "messages": []})
    ex.stream_data = [_chunk({"content": "a"}), b"{not json", b": comment", _chunk({"content": "b"}),
                      orjson.dumps({"id": "c2", "model": "m-final", "choices": [
                          {"index": 0, "delta": {"content": "c"}, "finish_reason": "length"},
                          {"index": 1, "delta": {"content": "other choice"}}]}), b"[DONE]"]
    ans = reassemble(ex)
    attrs = ans["attributes"]
    assert ans["content"] == "abc" and attrs["gen_ai.response.finish_reasons"] == ["length"]
    assert attrs["gen_ai.response.model"] == "m-final" and attrs["gen_ai.response.id"] == "c2"
