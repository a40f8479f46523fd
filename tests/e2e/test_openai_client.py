"""The real ``openai`` client (sync and async, streaming and not, with tools) gets the same parsed objects, and the
same exception for an in-stream error event, through the sidecar as directly from the upstream."""

from __future__ import annotations

import asyncio

import openai
import pytest

STREAM_IDS = [
    "pai-dbos-complex-agent-run-in-workflow-1",          # tool-call deltas (OpenAI)
    "pai-cache-openrouter-cache-streaming-e2e-0",        # `: OPENROUTER PROCESSING` comments
    "pai-deepseek-deepseek-model-thinking-stream-0",     # reasoning deltas
    "pai-mistral-mistral-model-thinking-part-iter-0",
]
NONSTREAM_IDS = ["pai-openai-openai-tool-output-0", "pai-dbos-dbos-agent-with-model-retry-0",
                 "pai-azure-azure-provider-call-0"]
STREAM_ERROR_IDS = ["pai-groq-tool-use-failed-error-streaming-0", "pai-openrouter-openrouter-stream-error-0"]
HTTP_ERROR_IDS = ["pai-openai-openai-o1-mini-system-role-developer-0", "pai-openrouter-openrouter-errors-raised-0",
                  "pai-model-name-suggestions-model-name-suggestion-openai-chat-0"]


@pytest.fixture(scope="module")
def by_id(records):
    return {r["id"]: r for r in records}


def kwargs_for(rec: dict) -> dict:
    req = rec["request"]
    kw = {"model": req["model"], "messages": req["messages"], "extra_headers": {"x-replay-id": rec["id"]}}
    if req.get("tools"):
        kw["tools"] = req["tools"]
    return kw


def outcome_sync(client: openai.OpenAI, rec: dict):
    try:
        if rec["stream"]:
            return [c.model_dump(warnings=False) for c in client.chat.completions.create(stream=True, **kwargs_for(rec))]
        return client.chat.completions.create(**kwargs_for(rec)).model_dump(warnings=False)
    except openai.APIError as exc:
        return ("raised", type(exc).__name__, getattr(exc, "status_code", None), exc.message, exc.body)


async def outcome_async(client: openai.AsyncOpenAI, rec: dict):
    try:
        if rec["stream"]:
            return [c.model_dump(warnings=False) async for c in await client.chat.completions.create(stream=True,
                                                                                         **kwargs_for(rec))]
        return (await client.chat.completions.create(**kwargs_for(rec))).model_dump(warnings=False)
    except openai.APIError as exc:
        return ("raised", type(exc).__name__, getattr(exc, "status_code", None), exc.message, exc.body)


ALL = STREAM_IDS + NONSTREAM_IDS + STREAM_ERROR_IDS + HTTP_ERROR_IDS


async def test_async_client_same_objects(sidecar, replay_upstream, by_id):
    direct = openai.AsyncOpenAI(base_url=replay_upstream.base_url, api_key="sk-test", max_retries=0)
    proxied = openai.AsyncOpenAI(base_url=sidecar.base_url, api_key="sk-test", max_retries=0)
    async with direct, proxied:
        for rid in ALL:
            a, b = await outcome_async(direct, by_id[rid]), await outcome_async(proxied, by_id[rid])
            assert b == a, rid
            if rid in STREAM_IDS:
                assert isinstance(a, list) and len(a) > 2
            if rid in STREAM_ERROR_IDS + HTTP_ERROR_IDS:
                assert a[0] == "raised", rid
    # the tool-call stream reassembles to real tool calls
    chunks = await outcome_async(openai.AsyncOpenAI(base_url=sidecar.base_url, api_key="k", max_retries=0),
                                 by_id[STREAM_IDS[0]])
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


async def test_sync_client_same_objects(sidecar, replay_upstream, by_id):
    def run() -> list[tuple[object, object]]:
        with openai.OpenAI(base_url=replay_upstream.base_url, api_key="k", max_retries=0) as d, \
                openai.OpenAI(base_url=sidecar.base_url, api_key="k", max_retries=0) as p:
            return [(outcome_sync(d, by_id[rid]), outcome_sync(p, by_id[rid])) for rid in ALL]

    pairs = await asyncio.to_thread(run)  # the sync client blocks: keep the servers' loop free
    for rid, (a, b) in zip(ALL, pairs):
        assert b == a, rid
    groq_error = pairs[ALL.index(STREAM_ERROR_IDS[0])][1]
    assert groq_error[0] == "raised" and groq_error[1] == "APIError"
