"""The Responses codec: turns of every input form, delta keys of any ``*.delta`` event, tool calls, spans."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from railcar.codecs.openai_responses import OpenAIResponsesCodec

C = OpenAIResponsesCodec()
KEY = "AKIAIOSFODNN7EXAMPLE"


def test_turns_of_instructions_string_input_items_and_tool_outputs() -> None:
    assert [(t.role, t.path) for t in C.request_messages({"instructions": "be nice", "input": "hi"})] == [
        ("system", "$.instructions"), ("user", "$.input")]
    body = {"input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "u"},
                                                        {"type": "input_image", "image_url": "x"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "result"},
        {"type": "function_call_output", "call_id": "d", "output": [{"type": "input_text", "text": "r2"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]}]}
    assert [(t.role, t.kind, t.text, t.path) for t in C.request_messages(body)] == [
        ("developer", "input", "dev", "$.input[0].content"),
        ("user", "input", "u", "$.input[1].content[0].text"),
        ("tool", "tool_output", "result", "$.input[3].output"),
        ("tool", "tool_output", "r2", "$.input[4].output[0].text"),
        ("assistant", "input", "thought", "$.input[5].summary[0].text")]


def test_delta_keys_cover_known_and_future_delta_events() -> None:
    def key(event: dict) -> tuple:
        piece = next(p for p in C.stream_strings(event) if p.parts == ("delta",))
        return piece.stream_key, piece.kind
    base = {"item_id": "i", "output_index": 2, "sequence_number": 5, "delta": "x"}
    assert key(dict(base, type="response.output_text.delta", content_index=1)) == ((2, 1, "text"), "text")
    assert key(dict(base, type="response.refusal.delta", content_index=0)) == ((2, 0, "refusal"), "refusal")
    assert key(dict(base, type="response.function_call_arguments.delta")) == ((2, "arguments"), "tool_arguments")
    assert key(dict(base, type="response.reasoning_summary_text.delta", summary_index=0)) == (
        (2, 0, "summary"), "reasoning")
    assert key(dict(base, type="response.brand_new_thing.delta")) == ((2, "brand_new_thing"), "other")
    done = {"type": "response.output_text.done", "output_index": 2, "content_index": 1, "text": "x", "item_id": "i"}
    assert all(p.stream_key is None for p in C.stream_strings(done))


@given(st.lists(st.integers(min_value=1, max_value=len(KEY) - 1), max_size=19, unique=True))
def test_a_value_split_at_any_offsets_reassembles_under_one_key(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(KEY)]
    joined: dict = {}
    for a, b in zip(bounds, bounds[1:]):
        for etype, extra in (("response.output_text.delta", {"content_index": 0}),
                             ("response.function_call_arguments.delta", {})):
            event = {"type": etype, "output_index": 0, "item_id": "i", "delta": KEY[a:b], **extra}
            for p in C.stream_strings(event):
                if p.stream_key is not None:
                    joined[p.stream_key] = joined.get(p.stream_key, "") + p.text
                    assert p.text != KEY or len(bounds) == 2
    assert joined == {(0, 0, "text"): KEY, (0, "arguments"): KEY}


def test_tool_calls_from_added_and_done_events_reported_once() -> None:
    state = C.new_stream_state()
    item = {"type": "function_call", "id": "fc", "call_id": "call_1", "name": "f", "arguments": ""}
    events = [{"type": "response.output_item.added", "output_index": 1, "item": item, "sequence_number": 3},
              {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}",
               "sequence_number": 4},
              {"type": "response.function_call_arguments.done", "output_index": 1, "arguments": "{}",
               "sequence_number": 5},
              {"type": "response.output_item.done", "output_index": 1, "item": dict(item, arguments="{}"),
               "sequence_number": 6}]
    done = [[(c.id, c.name, c.arguments) for c in C.tool_calls_done(e, state)] for e in events]
    assert done == [[], [], [("call_1", "f", "{}")], []] and state.sequence_number == 6


def test_terminal_events_and_conversation_spans() -> None:
    for t in ("response.completed", "response.failed", "response.incomplete", "error"):
        assert C.is_terminal({"type": t})
    assert not C.is_terminal({"type": "response.output_text.done"}) and C.terminal_data is None
    attrs = C.span_attributes({"model": "m", "conversation": {"id": "conv_1"}, "max_output_tokens": 9},
                              {"type": "response.completed", "response": {
                                  "id": "resp_1", "model": "m-1", "status": "completed",
                                  "usage": {"input_tokens": 1, "output_tokens": 2}}})
    assert attrs["gen_ai.conversation.id"] == "conv_1" and attrs["gen_ai.request.max_tokens"] == 9
    assert attrs["gen_ai.response.id"] == "resp_1" and attrs["gen_ai.usage.output_tokens"] == 2
    assert attrs["openai.api.type"] == "responses" and attrs["gen_ai.operation.name"] == "chat"
    assert C.span_attributes({"model": "m", "previous_response_id": "resp_0"})["gen_ai.conversation.id"] == "resp_0"


def test_turns_of_reasoning_text_builtin_tool_results_prompt_variables_and_unknown_items() -> None:
    body = {"prompt": {"id": "pmpt_1", "variables": {"city": "Paris", "note": {"type": "input_text", "text": "n"}}},
            "input": [
                {"type": "reasoning", "id": "rs", "summary": [], "encrypted_content": "gAAA",
                 "content": [{"type": "reasoning_text", "text": "thinking"}]},
                {"type": "shell_call_output", "call_id": "s", "output": [
                    {"stdout": "so", "stderr": "se", "outcome": {"type": "exit", "exit_code": 0}}]},
                {"type": "code_interpreter_call", "id": "ci", "code": "print(1)",
                 "outputs": [{"type": "logs", "logs": "1"}, {"type": "image", "url": "https://x"}]},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{\"text\": \"a\"}"},
                {"type": "input_text", "text": "bare"}]}
    assert [(t.role, t.kind, t.text, t.path) for t in C.request_messages(body)] == [
        ("user", "input", "Paris", "$.prompt.variables.city"),
        ("user", "input", "n", "$.prompt.variables.note.text"),
        ("assistant", "input", "thinking", "$.input[0].content[0].text"),
        ("tool", "tool_output", "so", "$.input[1].output[0].stdout"),
        ("tool", "tool_output", "se", "$.input[1].output[0].stderr"),
        ("tool", "tool_output", "1", "$.input[2].outputs[0].logs"),
        ("user", "input", "bare", "$.input[4].text")]
