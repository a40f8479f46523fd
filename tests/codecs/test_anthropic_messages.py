"""The Anthropic Messages codec: system and tool_result turns, delta keys, tool_use completion, errors, spans."""

from __future__ import annotations

import json

from railcar.codecs.anthropic_messages import AnthropicMessagesCodec

C = AnthropicMessagesCodec()


def test_turns_of_system_blocks_messages_and_tool_results() -> None:
    body = {"system": [{"type": "text", "text": "sys"}], "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "r"},
                                     {"type": "tool_result", "tool_use_id": "u",
                                      "content": [{"type": "text", "text": "r2"}]},
                                     {"type": "document", "source": {"type": "text", "data": "doc"}},
                                     {"type": "text", "text": "next"}]}]}
    assert [(t.role, t.kind, t.text, t.path) for t in C.request_messages(body)] == [
        ("system", "input", "sys", "$.system[0].text"),
        ("user", "input", "hi", "$.messages[0].content"),
        ("assistant", "input", "hmm", "$.messages[1].content[0].thinking"),
        ("tool", "tool_output", "r", "$.messages[2].content[0].content"),
        ("tool", "tool_output", "r2", "$.messages[2].content[1].content[0].text"),
        ("user", "input", "doc", "$.messages[2].content[2].source.data"),
        ("user", "input", "next", "$.messages[2].content[3].text")]
    assert [t.path for t in C.request_messages({"system": "s", "messages": []})] == ["$.system"]


def test_delta_keys() -> None:
    def key(delta: dict) -> tuple:
        event = {"type": "content_block_delta", "index": 3, "delta": delta}
        return next((p.stream_key, p.kind) for p in C.stream_strings(event) if p.parts[-1] != "type")
    assert key({"type": "text_delta", "text": "a"}) == ((3, "text"), "text")
    assert key({"type": "input_json_delta", "partial_json": "{"}) == ((3, "input_json"), "tool_arguments")
    assert key({"type": "thinking_delta", "thinking": "t"}) == ((3, "thinking"), "reasoning")
    assert key({"type": "signature_delta", "signature": "s"}) == ((3, "signature"), "other")


def test_tool_use_complete_at_block_stop_with_start_input_when_no_delta() -> None:
    state = C.new_stream_state()
    events = [{"type": "content_block_start", "index": 0, "content_block": {
                  "type": "tool_use", "id": "a", "name": "f", "input": {}}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                                    "partial_json": '{"q": 1'}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "}"}},
              {"type": "content_block_stop", "index": 0},
              {"type": "content_block_start", "index": 1, "content_block": {
                  "type": "tool_use", "id": "b", "name": "g", "input": {"x": 2}}},
              {"type": "content_block_stop", "index": 1}]
    calls = [c for e in events for c in C.tool_calls_done(e, state)]
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [("a", "f", {"q": 1}), ("b", "g", {"x": 2})]
    assert C.is_terminal({"type": "message_stop"}) and not C.is_terminal({"type": "message_delta"})


def test_error_types_map_to_anthropics() -> None:
    assert C.error_payload(502, "bad", "upstream_error")["error"]["type"] == "api_error"
    assert C.error_payload(429, "slow down")["error"]["type"] == "rate_limit_error"
    assert C.error_payload(400, "bad")["error"] == {"type": "invalid_request_error", "message": "bad"}
    blocked = json.loads(C.blocked_frames("r").split(b"data: ", 1)[1])
    assert blocked == {"type": "error", "error": {"type": "guardrails_violation", "message": "Blocked by r rails.",
                                                  "code": "content_blocked", "param": "r"}}
    assert C.blocked_frames("r").startswith(b"event: error\n")


def test_span_attributes() -> None:
    attrs = C.span_attributes({"model": "claude", "max_tokens": 5, "top_k": 3},
                              {"type": "message", "id": "msg_1", "model": "claude-x", "stop_reason": "end_turn",
                               "usage": {"input_tokens": 4, "output_tokens": 6, "cache_read_input_tokens": 1}})
    assert attrs == {"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
                     "gen_ai.request.model": "claude", "gen_ai.request.max_tokens": 5, "gen_ai.request.top_k": 3,
                     "gen_ai.response.id": "msg_1", "gen_ai.response.model": "claude-x",
                     "gen_ai.response.finish_reasons": ["end_turn"], "gen_ai.usage.input_tokens": 4,
                     "gen_ai.usage.output_tokens": 6, "gen_ai.usage.cache_read.input_tokens": 1}


def test_turns_inside_server_tool_results_documents_and_search_results() -> None:
    """A fetched page (the recorded ``web_fetch_tool_result`` shape), code execution output and a document nested in
    a ``tool_result`` are tool output; a document given as content blocks and a search result are input; base64
    sources and tool_use arguments are not turns."""
    body = {"messages": [
        {"role": "assistant", "content": [
            {"type": "server_tool_use", "id": "s1", "name": "web_fetch", "input": {"url": "https://x"}},
            {"type": "web_fetch_tool_result", "tool_use_id": "s1", "content": {
                "type": "web_fetch_result", "url": "https://x", "retrieved_at": "2025-11-14", "content": {
                    "type": "document", "title": "Page", "citations": None,
                    "source": {"type": "text", "media_type": "text/plain", "data": "fetched text"}}}},
            {"type": "code_execution_tool_result", "tool_use_id": "s2", "content": {
                "type": "code_execution_result", "stdout": "out", "stderr": "", "return_code": 0}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "nested"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}]},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "c1"}]}},
            {"type": "search_result", "source": "https://s", "title": "S",
             "content": [{"type": "text", "text": "snippet"}]}]}]}
    assert [(t.role, t.kind, t.text, t.path) for t in C.request_messages(body)] == [
        ("tool", "tool_output", "Page", "$.messages[0].content[1].content.content.title"),
        ("tool", "tool_output", "fetched text", "$.messages[0].content[1].content.content.source.data"),
        ("tool", "tool_output", "out", "$.messages[0].content[2].content.stdout"),
        ("tool", "tool_output", "", "$.messages[0].content[2].content.stderr"),
        ("tool", "tool_output", "nested", "$.messages[1].content[0].content[0].source.data"),
        ("user", "input", "c1", "$.messages[1].content[1].source.content[0].text"),
        ("user", "input", "S", "$.messages[1].content[2].title"),
        ("user", "input", "snippet", "$.messages[1].content[2].content[0].text")]
