"""The codecs against real recorded traffic (``../shared/fixtures/recorded``: 281 Chat Completions, 186 Responses,
153 Anthropic Messages interactions): every string of every event and body is found, deltas reassemble to the
text the API reports as final, every request turn is seen, tool calls come out whole.

The 7 image-generation Responses records (16 MB of base64 PNG) are left out to keep the run fast.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_CHAT, RECORDED_RESPONSES

from railcar.codecs.base import Codec, get_at
from railcar.codecs.registry import CODECS


def _load(path: Any) -> list[dict[str, Any]]:
    if not path.exists():
        pytest.skip(f"{path} is not checked out beside the repo")
    with path.open() as f:  # skip the image records before parsing their megabytes of base64
        return [json.loads(line) for line in f if line.strip() and not _is_image(line)]


def _is_image(line: str) -> bool:
    return "image_generation_call" in line and "image_generation_call" in str(json.loads(line)["meta"]["server_tools"])


def _events(body: str) -> list[tuple[str | None, str]]:
    """SSE events of a recorded body as ``(event name, data)``, comments dropped."""
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            out.append((name, "\n".join(data)))
    return out


def _json_events(rec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for _, data in _events(rec["response_body"]):
        try:
            obj = json.loads(data)
        except ValueError:
            continue  # [DONE]
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _body(rec: dict[str, Any]) -> Any:
    try:
        return json.loads(rec["response_body"])
    except ValueError:
        return None


def _plain_walk(obj: Any) -> Counter[tuple[str, str]]:
    """Every string value as ``(JSONPath, text)``, by an explicit stack (independent of ``walk_strings``)."""
    found: Counter[tuple[str, str]] = Counter()
    stack: list[tuple[str, Any]] = [("$", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            found[(path, value)] += 1
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{path}.{k}" if k.isidentifier() else f"{path}[{json.dumps(k)}]", v))
    return found


CHAT = _load(RECORDED_CHAT)
RESPONSES = _load(RECORDED_RESPONSES)
ANTHROPIC = _load(RECORDED_ANTHROPIC)
ALL = [("openai_chat", r) for r in CHAT] + [("openai_responses", r) for r in RESPONSES] + \
      [("anthropic_messages", r) for r in ANTHROPIC]


def _is_sse(rec: dict[str, Any]) -> bool:
    return "event-stream" in str(rec["response_headers"].get("content-type", "")) or \
        bool(rec["meta"].get("response_is_sse"))


def _deltas(codec: Codec, events: list[dict[str, Any]]) -> dict[tuple[Any, ...], str]:
    joined: dict[tuple[Any, ...], str] = defaultdict(str)
    for obj in events:
        for piece in codec.stream_strings(obj):
            if piece.stream_key is not None:
                joined[piece.stream_key] += piece.text
    return joined


def test_the_fixtures_are_there() -> None:
    assert len(CHAT) == 281 and len(ANTHROPIC) == 153 and len(RESPONSES) == 186 - 7
    assert sum(_is_sse(r) for _, r in ALL) >= 17 + 11 + 18


@pytest.mark.parametrize("name", ["openai_chat", "openai_responses", "anthropic_messages"])
def test_every_string_of_every_event_and_body_is_found(name: str) -> None:
    codec = CODECS[name]
    checked = 0
    for api, rec in ALL:
        if api != name:
            continue
        objs = _json_events(rec) if _is_sse(rec) else [_body(rec)]
        for obj in objs:
            if obj is None:
                continue
            pieces = codec.stream_strings(obj) if _is_sse(rec) else codec.body_strings(obj)
            assert Counter((p.path, p.text) for p in pieces) == _plain_walk(obj), rec["id"]
            assert all(get_at(obj, p.parts) == p.text for p in pieces)
            checked += 1
        req = codec.request_strings(rec["request"])
        assert Counter((p.path, p.text) for p in req) == _plain_walk(rec["request"]), rec["id"]
    assert checked > 100


def test_chat_stream_keys_and_kinds() -> None:
    codec = CODECS["openai_chat"]
    kinds: Counter[str] = Counter()
    for rec in CHAT:
        if not _is_sse(rec):
            continue
        for obj in _json_events(rec):
            for p in codec.stream_strings(obj):
                if p.parts[2:] == ("delta", "content"):
                    assert p.stream_key == ("choices", obj["choices"][p.parts[1]].get("index", p.parts[1]),
                                            "delta", "content") and p.kind == "text"
                if p.parts[-1] == "id":
                    assert p.stream_key is None
                kinds[p.kind] += p.stream_key is not None
    assert kinds["text"] > 50 and kinds["tool_arguments"] > 5


def _done_field(obj: dict[str, Any]) -> str:
    fields = [k for k, v in obj.items() if isinstance(v, str) and k not in ("type", "item_id", "name")]
    assert len(fields) == 1, obj
    return fields[0]


def test_responses_deltas_reassemble_to_the_done_events_and_the_completed_output() -> None:
    codec = CODECS["openai_responses"]
    compared = Counter()
    for rec in RESPONSES:
        if not _is_sse(rec):
            continue
        events = _json_events(rec)
        joined = _deltas(codec, events)
        delta_types = {e["type"] for e in events if e["type"].endswith(".delta")}
        for obj in events:
            etype = obj["type"]
            if etype.endswith(".done") and etype[:-5] + ".delta" in delta_types:
                key = [p.stream_key for p in codec.stream_strings(dict(obj, type=etype[:-5] + ".delta",
                                                                       delta=""))
                       if p.parts == ("delta",)][0]
                assert joined.get(key, "") == obj[_done_field(obj)], (rec["id"], etype)
                compared["done"] += 1
            if etype == "response.completed":
                compared["completed"] += _check_output(obj["response"]["output"], joined, rec["id"])
    assert compared["done"] >= 15 + 5 + 2 + 4 and compared["completed"] >= 20


def _check_output(output: list[dict[str, Any]], joined: dict[tuple[Any, ...], str], rid: str) -> int:
    n = 0
    for oi, item in enumerate(output):
        if item["type"] == "message":
            for ci, part in enumerate(item["content"]):
                if part.get("type") == "output_text":
                    assert joined[(oi, ci, "text")] == part["text"], rid
                    n += 1
        elif item["type"] == "function_call":
            assert joined[(oi, "arguments")] == item["arguments"], rid
            n += 1
        elif item["type"] == "reasoning":
            for si, part in enumerate(item.get("summary") or []):
                assert joined[(oi, si, "summary")] == part["text"], rid
                n += 1
    return n


def test_responses_kinds_of_deltas() -> None:
    codec = CODECS["openai_responses"]
    kinds: dict[str, set[str]] = defaultdict(set)
    for rec in RESPONSES:
        if _is_sse(rec):
            for obj in _json_events(rec):
                for p in codec.stream_strings(obj):
                    if p.stream_key is not None:
                        kinds[obj["type"]].add(p.kind)
    assert kinds["response.output_text.delta"] == {"text"}
    assert kinds["response.reasoning_summary_text.delta"] == {"reasoning"}
    assert kinds["response.reasoning_text.delta"] == {"reasoning"}
    assert kinds["response.function_call_arguments.delta"] == {"tool_arguments"}
    assert kinds["response.code_interpreter_call_code.delta"] == {"other"}


def test_anthropic_deltas_reassemble_per_block() -> None:
    codec = CODECS["anthropic_messages"]
    blocks = 0
    for rec in ANTHROPIC:
        if not _is_sse(rec):
            continue
        events = _json_events(rec)
        joined = _deltas(codec, events)
        starts = {e["index"]: e["content_block"] for e in events if e["type"] == "content_block_start"}
        for index, block in starts.items():
            if block["type"] in ("tool_use", "server_tool_use", "mcp_tool_use") and (index, "input_json") in joined:
                assert isinstance(json.loads(joined[(index, "input_json")]), dict), rec["id"]
                blocks += 1
            if block["type"] == "text":
                assert (index, "text") in joined or block["text"], rec["id"]
            if block["type"] == "thinking":
                assert (index, "thinking") in joined and (index, "signature") in joined, rec["id"]
                blocks += 1
        assert {k[0] for k in joined} <= set(starts), rec["id"]
    assert blocks >= 3


def test_request_messages_cover_every_text_bearing_part() -> None:
    total = Counter()
    for api, rec in ALL:
        codec, body = CODECS[api], rec["request"]
        turns = codec.request_messages(body)
        assert all(get_at(body, t.parts) == t.text for t in turns), rec["id"]
        assert len({t.parts for t in turns}) == len(turns)
        expected = _expected_turn_paths(api, body)
        assert expected <= {t.parts for t in turns}, (rec["id"], expected - {t.parts for t in turns})
        for t in turns:
            assert t.kind == ("tool_output" if t.role == "tool" else "input"), (rec["id"], t)
            total[t.kind] += 1
    assert total["input"] > 700 and total["tool_output"] > 150


def _parts_paths(content: Any, prefix: tuple[Any, ...]) -> set[tuple[Any, ...]]:
    if isinstance(content, str):
        return {prefix}
    return {prefix + (j, "text") for j, p in enumerate(content or [])
            if isinstance(p, dict) and isinstance(p.get("text"), str)}


def _expected_turn_paths(api: str, body: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Independent count: every message's string content or text parts, every tool result's text."""
    out: set[tuple[Any, ...]] = set()
    if api == "openai_chat":
        for i, m in enumerate(body["messages"]):
            out |= _parts_paths(m.get("content"), ("messages", i, "content"))
    elif api == "openai_responses":
        out |= {("instructions",)} if isinstance(body.get("instructions"), str) else set()
        if isinstance(body["input"], str):
            return out | {("input",)}
        for i, it in enumerate(body["input"]):
            if "role" in it:
                out |= _parts_paths(it.get("content"), ("input", i, "content"))
            elif it.get("type", "").endswith("_output"):
                out |= _parts_paths(it.get("output"), ("input", i, "output"))
    else:
        out |= _parts_paths(body.get("system"), ("system",))
        for i, m in enumerate(body["messages"]):
            if isinstance(m["content"], str):
                out.add(("messages", i, "content"))
                continue
            for j, b in enumerate(m["content"]):
                if b["type"] == "text":
                    out.add(("messages", i, "content", j, "text"))
                elif b["type"] == "tool_result":
                    out |= _parts_paths(b.get("content"), ("messages", i, "content", j, "content"))
    return out


def test_tool_calls_reassembled_from_recorded_streams_equal_the_final_arguments() -> None:
    found = Counter()
    for api, rec in ALL:
        if not _is_sse(rec) or not rec.get("has_tool_calls"):
            continue
        codec = CODECS[api]
        state = codec.new_stream_state()
        events = _json_events(rec)
        calls = [c for obj in events for c in codec.tool_calls_done(obj, state)] + codec.flush_tool_calls(state)
        joined = _deltas(codec, events)
        assert calls, rec["id"]
        for call in calls:
            assert call.name and call.id, (rec["id"], call)
            assert call.arguments == joined.get(call.key, call.arguments)
            json.loads(call.arguments)
            found[api] += 1
        if api == "openai_responses":
            final = next(e["response"] for e in events if e["type"] == "response.completed")
            assert [c.arguments for c in calls] == [c.arguments for c in codec.body_tool_calls(final)]
    assert found["openai_chat"] >= 7 and found["openai_responses"] >= 2


def test_anthropic_stream_reports_only_client_tool_use_blocks() -> None:
    codec = CODECS["anthropic_messages"]
    for rec in ANTHROPIC:
        if _is_sse(rec) and rec["has_tool_calls"]:
            state = codec.new_stream_state()
            events = _json_events(rec)
            calls = [c for obj in events for c in codec.tool_calls_done(obj, state)]
            client = [e["content_block"]["id"] for e in events
                      if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"]
            assert [c.id for c in calls] == client


def test_non_streamed_tool_calls_are_complete() -> None:
    n = Counter()
    for api, rec in ALL:
        body = _body(rec)
        if _is_sse(rec) or not isinstance(body, dict) or rec["kind"] != "nonstream_tool":
            continue
        for call in CODECS[api].body_tool_calls(body):
            assert call.name, rec["id"]
            if call.arguments:
                json.loads(call.arguments)
            n[api] += 1
    assert n["openai_chat"] > 80 and n["openai_responses"] > 30 and n["anthropic_messages"] > 30


def test_span_attributes_of_recorded_calls() -> None:
    for api, rec in ALL:
        body = _body(rec)
        if _is_sse(rec):
            events = _json_events(rec)
            body = next((e.get("response") for e in events if e.get("type") == "response.completed"),
                        events[0] if events else None)
        attrs = CODECS[api].span_attributes(rec["request"], body if rec["status"] == 200 else None)
        assert attrs["gen_ai.provider.name"] in ("openai", "anthropic")
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == rec["request"]["model"]
        assert all(v is not None for v in attrs.values())
        if rec["status"] == 200 and isinstance(body, dict) and api != "openai_chat":
            assert "gen_ai.response.id" in attrs, rec["id"]
        if api == "openai_responses" and rec["request"].get("previous_response_id"):
            assert attrs["gen_ai.conversation.id"] == rec["request"]["previous_response_id"]
