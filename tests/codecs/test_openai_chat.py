"""The Chat Completions codec: turns, stream keys of every delta field, tool calls, spans."""

from __future__ import annotations

from railcar.codecs.openai_chat import OpenAIChatCodec
from railcar.core import wire

C = OpenAIChatCodec()


def _chunk(delta: dict, index: int = 0, finish: str | None = None) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_every_turn_including_system_history_and_legacy_function_results() -> None:
    body = {"model": "m", "messages": [
        {"role": "system", "content": "sys"}, {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}},
                                     {"type": "text", "text": "u1"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t", "function": {"name": "f"}}]},
        {"role": "tool", "tool_call_id": "t", "content": "result"},
        {"role": "function", "name": "f", "content": "legacy"}]}
    turns = C.request_messages(body)
    assert [(t.role, t.text, t.kind, t.path) for t in turns] == [
        ("system", "sys", "input", "$.messages[0].content"),
        ("developer", "dev", "input", "$.messages[1].content[0].text"),
        ("user", "u1", "input", "$.messages[2].content[1].text"),
        ("tool", "result", "tool_output", "$.messages[4].content"),
        ("function", "legacy", "tool_output", "$.messages[5].content")]
    kinds = {p.path: p.kind for p in C.request_strings(body)}
    assert kinds["$.messages[4].content"] == "tool_output" and kinds["$.model"] == "other"


def test_stream_keys_of_every_delta_field() -> None:
    delta = {"content": "a", "refusal": "b", "reasoning_content": "c", "reasoning": "d",
             "reasoning_details": [{"type": "reasoning.text", "text": "e"}], "audio": {"transcript": "f", "id": "x"},
             "function_call": {"name": "g", "arguments": "{"},
             "tool_calls": [{"index": 2, "id": "call", "function": {"name": "h", "arguments": "{\"a"}}]}
    pieces = {p.path: (p.stream_key, p.kind) for p in C.stream_strings(_chunk(delta, index=1))}
    d = "$.choices[0].delta"
    assert pieces[d + ".content"] == (("choices", 1, "delta", "content"), "text")
    assert pieces[d + ".refusal"] == (("choices", 1, "delta", "refusal"), "refusal")
    assert pieces[d + ".reasoning_content"] == (("choices", 1, "delta", "reasoning_content"), "reasoning")
    assert pieces[d + ".reasoning"] == (("choices", 1, "delta", "reasoning"), "reasoning")
    assert pieces[d + ".reasoning_details[0].text"] == (("choices", 1, "delta", "reasoning_details", "text"),
                                                         "reasoning")
    assert pieces[d + ".audio.transcript"] == (("choices", 1, "delta", "audio", "transcript"), "text")
    assert pieces[d + ".function_call.arguments"] == (("choices", 1, "function_call", "arguments"), "tool_arguments")
    assert pieces[d + ".tool_calls[0].function.arguments"] == (("choices", 1, "tool_calls", 2, "arguments"),
                                                                "tool_arguments")
    assert pieces[d + ".tool_calls[0].id"][0] is None and pieces["$.model"][0] is None


def test_tool_calls_complete_when_their_json_closes_like_the_stream_guard() -> None:
    # the codec assembles with the stream guard's ToolCallAssembler: a call is complete as soon as its arguments
    # parse as a JSON object (so tool_input rails can run before the next call starts), or at finish_reason
    state = C.new_stream_state()
    events = [_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{\"x\":"}}]}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
              _chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{\"y\""}}]}),
              _chunk({}, finish="tool_calls")]
    done = [[(c.id, c.name, c.arguments) for c in C.tool_calls_done(e, state)] for e in events]
    assert done == [[], [("a", "f", '{"x":1}')], [], [("b", "g", '{"y"')]]
    assert C.flush_tool_calls(state) == []


def test_whole_tool_calls_without_index_stay_separate_calls() -> None:
    # some OpenAI-compatible providers send each call whole and leave out ``index``: two calls, not one
    state = C.new_stream_state()
    events = [_chunk({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": '{"x":1}'}}]}),
              _chunk({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": '{"y":2}'}}]}),
              _chunk({}, finish="tool_calls")]
    calls = [(c.id, c.name, c.arguments) for e in events for c in C.tool_calls_done(e, state)]
    assert calls == [("a", "f", '{"x":1}'), ("b", "g", '{"y":2}')]


def test_decisions_are_the_wire_shapes() -> None:
    assert C.blocked_frames("r") == wire.blocked_frames("r")
    assert C.refusal_body("m", "no", "r")["guardrails_data"] == {"blocked_rail": "r"}
    assert C.terminal_data == "[DONE]" and not C.is_terminal({"choices": []})


def test_span_attributes() -> None:
    body = {"model": "m", "messages": [], "seed": 7, "max_completion_tokens": 10, "temperature": 0.5, "stop": "x"}
    resp = {"id": "r", "model": "m-2024", "choices": [{"finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert C.span_attributes(body, resp) == {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat", "openai.api.type": "chat_completions",
        "gen_ai.request.model": "m", "gen_ai.request.seed": 7, "gen_ai.request.max_tokens": 10,
        "gen_ai.request.temperature": 0.5, "gen_ai.request.stop_sequences": ["x"], "gen_ai.response.id": "r",
        "gen_ai.response.model": "m-2024", "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4}


def test_a_delta_field_not_known_today_is_one_stream_per_field_and_call() -> None:
    """Issue 13 item 2: no field list decides what is reassembled; a provider's new field split across chunks joins
    under one key, parallel tool calls stay apart, identifiers stay whole values."""
    key = "AKIAIOSFODNN7EXAMPLE"
    joined: dict = {}
    for a, b in ((0, 7), (7, 20)):
        delta = {"role": "assistant", "thoughts": key[a:b], "content": [{"type": "refusal", "refusal": key[a:b]}],
                 "tool_calls": [{"index": 3, "id": f"c{a}", "type": "custom", "custom": {"input": key[a:b]}},
                                {"index": 4, "custom": {"input": "-"}}]}
        for p in C.stream_strings(_chunk(delta, index=1)):
            if p.stream_key is not None:
                joined[p.stream_key] = (joined.get(p.stream_key, ("", p.kind))[0] + p.text, p.kind)
            else:
                assert p.parts[-1] in ("role", "id", "type", "object", "model"), p
    d = ("choices", 1, "delta")
    assert joined == {d + ("thoughts",): (key, "other"), d + ("content", "refusal"): (key, "refusal"),
                      d + ("tool_calls", 3, "custom", "input"): (key, "tool_arguments"),
                      d + ("tool_calls", 4, "custom", "input"): ("--", "tool_arguments")}


def test_assistant_reasoning_handed_back_is_a_turn_but_tool_arguments_are_not() -> None:
    body = {"model": "m", "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "reasoning_content": "think",
         "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "text": "r",
                                                           "cache_control": {"type": "ephemeral"}}]}]}
    assert [(t.role, t.text, t.kind, t.path) for t in C.request_messages(body)] == [
        ("user", "q", "input", "$.messages[0].content"),
        ("assistant", "think", "input", "$.messages[1].reasoning_content"),
        ("tool", "r", "tool_output", "$.messages[2].content[0].text")]
