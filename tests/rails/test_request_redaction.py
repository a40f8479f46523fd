"""Catalog secrets in what the agent sends (issue 13 item 3): every request string of every codec, JSON-escaped
values in tool-call arguments included, per ``[guardrails.inline] request_action`` (redact | block | off).

Requests are recorded ones (``../shared/fixtures/recorded``) with a key planted in one field; completions and
embeddings follow the OpenAI API reference. The key is built at run time."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from rails.test_codec_guard import (
    KEY,
    agent_strings,
    completions_request,
    default_guard,
    embeddings_request,
    escaped,
    leaks,
    recorded,
)

from railcar.core.exchange import Exchange


def _chat_tool_args(b: dict[str, Any]) -> None:
    b["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"city": "' + escaped(KEY) + '"}'


def _responses_call_args(b: dict[str, Any]) -> None:
    b["input"][2]["arguments"] = '{"q": "' + escaped(KEY) + '"}'


# (case id, api, request maker, expected note path)
CASES = [
    ("chat-user", "openai_chat", lambda: recorded("openai_chat", "pai-dbos-dbos-agent-with-model-retry-1")[0],
     lambda b: b["messages"][0].update(content=f"my key is {KEY}"), "$.messages[0].content"),
    ("chat-tool-call-arguments-escaped", "openai_chat",
     lambda: recorded("openai_chat", "pai-dbos-dbos-agent-with-model-retry-1")[0], _chat_tool_args,
     "$.messages[1].tool_calls[0].function.arguments"),
    ("chat-tool-result", "openai_chat", lambda: recorded("openai_chat", "pai-dbos-dbos-agent-with-model-retry-1")[0],
     lambda b: b["messages"][2].update(content=f"AWS_ACCESS_KEY_ID={KEY}"), "$.messages[2].content"),
    ("responses-instructions", "openai_responses",
     lambda: recorded("openai_responses", "pai-openai-responses-tool-output-1")[0],
     lambda b: b.update(instructions=f"Use {KEY} for AWS."), "$.instructions"),
    ("responses-function-call-arguments-escaped", "openai_responses",
     lambda: recorded("openai_responses", "pai-openai-responses-tool-output-1")[0], _responses_call_args,
     "$.input[2].arguments"),
    ("responses-function-call-output", "openai_responses",
     lambda: recorded("openai_responses", "pai-openai-responses-tool-output-1")[0],
     lambda b: b["input"][3].update(output=json.dumps({"key": KEY})), "$.input[3].output"),
    ("anthropic-system", "anthropic_messages",
     lambda: recorded("anthropic_messages", "pai-anthropic-anthropic-mixed-strict-tool-run-2")[0],
     lambda b: b.update(system=f"The deploy key is {KEY}."), "$.system"),
    ("anthropic-tool-use-input", "anthropic_messages",
     lambda: recorded("anthropic_messages", "pai-anthropic-anthropic-mixed-strict-tool-run-2")[0],
     lambda b: b["messages"][3]["content"][0]["input"].update(country=KEY), "$.messages[3].content[0].input.country"),
    ("anthropic-tool-result", "anthropic_messages",
     lambda: recorded("anthropic_messages", "pai-anthropic-anthropic-mixed-strict-tool-run-2")[0],
     lambda b: b["messages"][2]["content"][0].update(content=f"env: {KEY}"), "$.messages[2].content[0].content"),
    ("completions-prompt", "openai_completions", lambda: completions_request("x"),
     lambda b: b.update(prompt=["hello", f"key={KEY}"]), "$.prompt[1]"),
    ("embeddings-input", "embeddings", lambda: embeddings_request("x"),
     lambda b: b.update(input=f"index this: {KEY}"), "$.input"),
]


def _planted(case: tuple[Any, ...]) -> dict[str, Any]:
    _, _, make, plant, _ = case
    body = make()
    plant(body)
    assert leaks(body)
    return body


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_request_secret_is_redacted_before_upstream(case: tuple[Any, ...]) -> None:
    _, api, _, _, path = case
    guard = default_guard()  # request_action = "redact" (the default)
    ex = Exchange(body=_planted(case), api=api)
    assert await guard.check_request(ex) is None and not ex.outcome.blocked
    assert ex.body_changed and not leaks(ex.body)
    sent = orjson.loads(orjson.dumps(ex.body))  # what the proxy re-serializes and sends upstream
    assert not leaks(sent)
    notes = ex.outcome.redactions
    assert [(n.detector, n.path) for n in notes] == [("aws_access_key_id", path)]
    assert KEY not in notes[0].masked_preview
    assert any(f"[REDACTED:aws_access_key_id:{notes[0].fingerprint[:8]}]" in s for s in agent_strings(sent))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_request_action_block_refuses(case: tuple[Any, ...]) -> None:
    _, api, _, _, _ = case
    guard = default_guard(request_action="block")
    ex = Exchange(body=_planted(case), api=api)
    refusal = await guard.check_request(ex)
    assert refusal is not None and refusal.rail == "sensitive data"
    assert ex.outcome.blocked and ex.outcome.blocked_rail == "sensitive data" and not ex.body_changed
    assert guard.engine.calls == []  # refused before any rail saw the value


async def test_request_action_off_leaves_the_body() -> None:
    guard = default_guard(request_action="off")
    body = _planted(CASES[0])
    ex = Exchange(body=copy.deepcopy(body), api="openai_chat")
    assert await guard.check_request(ex) is None
    assert ex.body == body and not ex.body_changed and not ex.outcome.redactions


async def test_redacted_history_is_judged_once() -> None:
    # The agent keeps the plain key in its history; each call redacts it to the same placeholder, so the rails'
    # verdict cache still sees one turn.
    guard = default_guard()
    for _ in range(2):
        ex = Exchange(body=_planted(CASES[0]), api="openai_chat")
        assert await guard.check_request(ex) is None
    judged = [text for _, text in guard.engine.calls]
    assert len(judged) == len(set(judged)) and not any(KEY in t for t in judged)


# Object keys go to the provider too, and some are the agent's to choose.
KEY_CASES = [
    ("chat-metadata-key", "openai_chat", lambda b: b.update(metadata={KEY: "deploy", "team": "red"}), ("metadata",)),
    ("chat-tool-schema-property", "openai_chat",
     lambda b: b.update(tools=[{"type": "function", "function": {"name": "f", "parameters": {
         "type": "object", "properties": {"city": {"type": "string"}, f"key_{KEY}": {"type": "string"}}}}}]),
     ("tools", 0, "function", "parameters", "properties")),
    ("anthropic-tool-use-input-key", "anthropic_messages",
     lambda b: b["messages"][3]["content"][0]["input"].update({KEY: 1}), ("messages", 3, "content", 0, "input")),
]
_KEY_REQUESTS = {"openai_chat": lambda: recorded("openai_chat", "pai-dbos-dbos-agent-with-model-retry-1")[0],
                 "anthropic_messages": lambda: recorded("anthropic_messages",
                                                        "pai-anthropic-anthropic-mixed-strict-tool-run-2")[0]}


def _at(body: Any, parts: tuple[Any, ...]) -> Any:
    for p in parts:
        body = body[p]
    return body


@pytest.mark.parametrize("case", KEY_CASES, ids=[c[0] for c in KEY_CASES])
async def test_a_secret_in_an_object_key_is_redacted_in_place(case: tuple[Any, ...]) -> None:
    _, api, plant, obj_parts = case
    body = _KEY_REQUESTS[api]()
    plant(body)
    order = [k if KEY not in k else None for k in _at(body, obj_parts)]
    guard = default_guard()
    for _ in range(2):  # a redacted key is not cached as clean: found again on the next call
        ex = Exchange(body=copy.deepcopy(body), api=api)
        assert await guard.check_request(ex) is None and ex.body_changed
        sent = orjson.dumps(ex.body)
        assert KEY.encode() not in sent
        renamed = list(_at(ex.body, obj_parts))
        assert [k if "[REDACTED:aws_access_key_id:" not in k else None for k in renamed] == order  # order kept
        (note,) = ex.outcome.redactions
        assert note.detector == "aws_access_key_id" and KEY not in note.masked_preview and KEY not in note.path
    blocked = Exchange(body=copy.deepcopy(body), api=api)
    refusal = await default_guard(request_action="block").check_request(blocked)
    assert refusal is not None and refusal.rail == "sensitive data" and blocked.outcome.blocked
