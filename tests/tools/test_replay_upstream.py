"""railcar.tools.replay_upstream on the Responses and Anthropic Messages APIs (and completions / embeddings).

Replay: every record of ``../shared/fixtures/recorded/responses.jsonl`` and ``anthropic_messages.jsonl`` is answered
byte for byte (status, content type, body), SSE one event per write, matched by body or by ``x-replay-id``; the
real ``openai`` / ``anthropic`` SDKs parse the replayed answers. Synthetic: the frames of every API parse with the
real SDKs (``responses.create(stream=True)``, ``responses.stream``, ``messages.create(stream=True)``,
``messages.stream``, chat ``tool_calls``), give back the text or the tool arguments, and carry it split across
deltas as asked.
"""

from __future__ import annotations

import inspect
import json
import math

import aiohttp
import anthropic
import openai
import orjson
import pytest
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_RESPONSES

from railcar.sidecar.sse import split_events
from railcar.tools.replay_upstream import ReplayUpstream, load_records, record_api
from railcar.tools.synthetic import tool_arguments

PLANTED = "Use aws_access_key_id = AKIAQWERTYUIOPASDFG23 for the staging bucket."


@pytest.fixture(scope="module")
def responses_records() -> list[dict]:
    return load_records(RECORDED_RESPONSES)


@pytest.fixture(scope="module")
def anthropic_records() -> list[dict]:
    return load_records(RECORDED_ANTHROPIC)


def _path(record: dict) -> str:
    return "/v1/messages" if record_api(record) == "anthropic_messages" else "/v1/responses"


@pytest.mark.parametrize("which", ["responses", "anthropic"])
async def test_every_record_replays_byte_for_byte(which, responses_records, anthropic_records) -> None:
    records = responses_records if which == "responses" else anthropic_records
    assert {record_api(r) for r in records} == {"openai_responses" if which == "responses" else "anthropic_messages"}
    async with ReplayUpstream(records) as up, aiohttp.ClientSession() as s:
        for rec in records:
            async with s.post(up.root_url + _path(rec), json=rec["request"], headers={"x-replay-id": rec["id"]}) as r:
                body = await r.read()
                assert r.status == rec["status"], rec["id"]
                assert r.headers["Content-Type"] == rec["response_headers"]["content-type"], rec["id"]
                assert body == rec["response_body"].encode(), rec["id"]
        assert [q.path for q in up.requests] == [_path(r) for r in records]
        assert {q.api for q in up.requests} == {record_api(records[0])}


async def test_match_by_body_per_api(responses_records, anthropic_records) -> None:
    records = responses_records + anthropic_records
    async with ReplayUpstream(records) as up, aiohttp.ClientSession() as s:
        for rec in records:
            expected = up.by_api[record_api(rec)][orjson.dumps(rec["request"], option=orjson.OPT_SORT_KEYS)]
            async with s.post(up.root_url + _path(rec), json=rec["request"]) as r:
                assert await r.read() == expected["response_body"].encode(), rec["id"]
        # a Responses body sent to the Anthropic route matches nothing there: Anthropic's own error shape
        async with s.post(up.root_url + "/v1/messages", json=responses_records[0]["request"]) as r:
            assert r.status == 404
            err = await r.json()
            assert err["type"] == "error" and err["error"]["type"] == "not_found_error"
        async with s.post(up.base_url + "/responses", json={"model": "m", "input": "unrecorded"}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "replay_no_match"


async def test_sse_written_one_event_per_write(anthropic_records) -> None:
    rec = next(r for r in anthropic_records if r["stream"] and r["status"] == 200)
    events = [raw for raw, _ in split_events(rec["response_body"].encode())]
    up = ReplayUpstream([rec])
    writes: list[bytes] = []

    async def capture(request, rec_, status, ctype, pieces, delay, fault):  # the pieces handed to the transport
        writes.extend(pieces)
        return await ReplayUpstream._stream(up, request, rec_, status, ctype, pieces, delay, fault)

    up._stream = capture  # type: ignore[method-assign]
    async with up, aiohttp.ClientSession() as s:
        async with s.post(up.root_url + "/v1/messages", json=rec["request"]) as r:
            assert await r.read() == rec["response_body"].encode()
    assert writes == events and len(events) > 5
    assert all(w.startswith(b"event: ") for w in writes)  # the event: lines are kept


async def test_sdks_parse_recorded_streams(responses_records, anthropic_records) -> None:
    """The real SDKs read every recorded successful stream from the replay, event types as recorded."""
    resp_streams = [r for r in responses_records if r["stream"] and r["status"] == 200
                    and r["response_headers"]["content-type"].startswith("text/event-stream")
                    and "image_generation_call" not in r["meta"]["server_tools"]]  # MBs of base64: slow, no news
    anth_streams = [r for r in anthropic_records if r["stream"] and r["status"] == 200]
    assert len(resp_streams) >= 15 and len(anth_streams) >= 10
    async with ReplayUpstream(responses_records + anthropic_records) as up:
        oa = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        an = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="sk-ant-test", max_retries=0)
        for rec in resp_streams:
            stream = await oa.responses.create(**rec["request"], extra_headers={"x-replay-id": rec["id"]})
            types = [ev.type async for ev in stream]
            assert types == [json.loads(d)["type"] for _, d in split_events(rec["response_body"].encode()) if d]
        for rec in anth_streams:
            known = set(inspect.signature(an.messages.stream).parameters)
            req = {k: v for k, v in rec["request"].items() if k in known}
            extra = {k: v for k, v in rec["request"].items() if k not in known and k != "stream"}
            async with an.messages.stream(**req, extra_body=extra, extra_headers={"x-replay-id": rec["id"]}) as stream:
                final = await stream.get_final_message()
            assert final.stop_reason == rec["meta"]["stop"], rec["id"]
        await oa.close()
        await an.close()


# ------------------------------------------------------------------------------------------------ synthetic


def _synthetic(chunk: int = 5, tool: str | None = None) -> dict[str, str]:
    h = {"x-synthetic-text": PLANTED, "x-synthetic-chunk-chars": str(chunk)}
    if tool:
        h["x-synthetic-tool"] = tool
    return h


async def test_responses_synthetic_text_with_the_openai_sdk() -> None:
    async with ReplayUpstream() as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        stream = await client.responses.create(model="gpt-test", input="hi", stream=True,
                                               extra_headers=_synthetic())
        events = [ev async for ev in stream]
        deltas = [ev.delta for ev in events if ev.type == "response.output_text.delta"]
        assert "".join(deltas) == PLANTED and len(deltas) == math.ceil(len(PLANTED) / 5)
        assert [ev.sequence_number for ev in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert events[-1].response.output_text == PLANTED
        assert events[-1].response.usage.output_tokens == len(deltas)

        async with client.responses.stream(model="gpt-test", input="hi", extra_headers=_synthetic(3)) as s:
            texts = [ev.delta async for ev in s if ev.type == "response.output_text.delta"]
            final = await s.get_final_response()
        assert final.output_text == PLANTED and "".join(texts) == PLANTED

        whole = await client.responses.create(model="gpt-test", input="hi", extra_headers=_synthetic())
        assert whole.output_text == PLANTED and whole.status == "completed"
        await client.close()
        assert [(q.path, q.api) for q in up.requests] == [("/v1/responses", "openai_responses")] * 3
        assert up.requests[0].json()["input"] == "hi"


async def test_responses_synthetic_tool_call_with_the_openai_sdk() -> None:
    tool = {"type": "function", "name": "deploy", "parameters": {"type": "object", "properties": {
        "text": {"type": "string"}}, "required": ["text"], "additionalProperties": False}, "strict": True}
    async with ReplayUpstream() as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        stream = await client.responses.create(model="gpt-test", input="deploy", tools=[tool], stream=True,
                                               extra_headers=_synthetic(4, "deploy"))
        events = [ev async for ev in stream]
        arg_deltas = [ev.delta for ev in events if ev.type == "response.function_call_arguments.delta"]
        assert len(arg_deltas) > 10 and json.loads("".join(arg_deltas)) == {"text": PLANTED}
        assert not any(PLANTED in d for d in arg_deltas)  # split across deltas
        async with client.responses.stream(model="gpt-test", input="deploy", tools=[tool],
                                           extra_headers=_synthetic(4, "deploy")) as s:
            final = await s.get_final_response()
        call = final.output[0]
        assert call.type == "function_call" and call.name == "deploy" and call.call_id
        assert json.loads(call.arguments) == {"text": PLANTED}
        whole = await client.responses.create(model="gpt-test", input="deploy", extra_headers=_synthetic(4, "deploy"))
        assert whole.output[0].type == "function_call" and json.loads(whole.output[0].arguments) == {"text": PLANTED}
        await client.close()


async def test_anthropic_synthetic_text_with_the_anthropic_sdk() -> None:
    async with ReplayUpstream() as up:
        client = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="sk-ant-agent", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        stream = await client.messages.create(model="claude-test", max_tokens=100, messages=msgs, stream=True,
                                              extra_headers=_synthetic())
        events = [ev async for ev in stream]
        deltas = [ev.delta.text for ev in events if ev.type == "content_block_delta"]
        assert "".join(deltas) == PLANTED and len(deltas) == math.ceil(len(PLANTED) / 5)
        assert [ev.type for ev in events][:2] == ["message_start", "content_block_start"]  # ping is skipped
        assert [ev.type for ev in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]

        async with client.messages.stream(model="claude-test", max_tokens=100, messages=msgs,
                                          extra_headers=_synthetic(2)) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
        assert text == PLANTED and final.content[0].text == PLANTED and final.stop_reason == "end_turn"
        assert final.usage.output_tokens == math.ceil(len(PLANTED) / 2)

        whole = await client.messages.create(model="claude-test", max_tokens=100, messages=msgs,
                                             extra_headers=_synthetic())
        assert whole.content[0].text == PLANTED and whole.stop_reason == "end_turn"
        await client.close()
        assert [(q.path, q.api) for q in up.requests] == [("/v1/messages", "anthropic_messages")] * 3
        for q in up.requests:  # what an Anthropic call carried upstream, for the header tests (this SDK version
            # sends its api_key as a bearer token)
            assert q.headers["authorization"] == "Bearer sk-ant-agent" and q.headers["anthropic-version"]
        async with aiohttp.ClientSession() as s:  # the x-api-key form (curl, other SDK versions) is recorded too
            async with s.post(up.root_url + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": msgs},
                              headers={**_synthetic(), "x-api-key": "sk-ant-raw", "anthropic-version": "2023-06-01",
                                       "anthropic-beta": "tools-2024-04-04"}) as r:
                assert (await r.json())["content"][0]["text"] == PLANTED
        last = up.requests[-1]
        assert (last.headers["x-api-key"], last.headers["anthropic-version"], last.headers["anthropic-beta"]) == (
            "sk-ant-raw", "2023-06-01", "tools-2024-04-04")


async def test_anthropic_synthetic_tool_use_with_the_anthropic_sdk() -> None:
    args = '{"environment": "staging", "aws_access_key_id": "AKIAQWERTYUIOPASDFG23"}'
    tool = {"name": "deploy", "input_schema": {"type": "object", "properties": {"environment": {"type": "string"}}}}
    headers = {"x-synthetic-text": args, "x-synthetic-chunk-chars": "6", "x-synthetic-tool": "deploy"}
    async with ReplayUpstream() as up:
        client = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="k", max_retries=0)
        msgs = [{"role": "user", "content": "deploy"}]
        stream = await client.messages.create(model="claude-test", max_tokens=100, messages=msgs, tools=[tool],
                                              stream=True, extra_headers=headers)
        parts = [ev.delta.partial_json async for ev in stream if ev.type == "content_block_delta"]
        assert "".join(parts) == args and len(parts) == math.ceil(len(args) / 6)
        async with client.messages.stream(model="claude-test", max_tokens=100, messages=msgs, tools=[tool],
                                          extra_headers=headers) as s:
            final = await s.get_final_message()
        block = final.content[0]
        assert block.type == "tool_use" and block.name == "deploy" and block.input == json.loads(args)
        assert final.stop_reason == "tool_use"
        whole = await client.messages.create(model="claude-test", max_tokens=100, messages=msgs,
                                             extra_headers=headers)
        assert whole.content[0].input == json.loads(args) and whole.stop_reason == "tool_use"
        await client.close()


async def test_chat_synthetic_tool_call_with_the_openai_sdk() -> None:
    async with ReplayUpstream() as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        msgs = [{"role": "user", "content": "deploy"}]
        stream = await client.chat.completions.create(model="m", messages=msgs, stream=True,
                                                      extra_headers=_synthetic(3, "deploy"))
        args, names, finish = [], [], None
        async for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or ():
                names += [call.function.name] if call.function.name else []
                args.append(call.function.arguments or "")
            finish = chunk.choices[0].finish_reason or finish
        assert names == ["deploy"] and finish == "tool_calls"
        assert "".join(args) == tool_arguments(PLANTED) and len([a for a in args if a]) > 10
        async with client.chat.completions.stream(model="m", messages=msgs, extra_headers=_synthetic(3, "deploy")) as s:
            final = await s.get_final_completion()
        call = final.choices[0].message.tool_calls[0]
        assert call.function.name == "deploy" and json.loads(call.function.arguments) == {"text": PLANTED}
        whole = await client.chat.completions.create(model="m", messages=msgs, extra_headers=_synthetic(3, "deploy"))
        assert json.loads(whole.choices[0].message.tool_calls[0].function.arguments) == {"text": PLANTED}
        # the plain text stream is unchanged: one delta per chunk_chars
        texts = [c.choices[0].delta.content async for c in await client.chat.completions.create(
            model="m", messages=msgs, stream=True, extra_headers=_synthetic(7)) if c.choices[0].delta.content]
        assert "".join(texts) == PLANTED and len(texts) == math.ceil(len(PLANTED) / 7)
        await client.close()


async def test_synthetic_mode_answers_every_api_and_tokens_header() -> None:
    async with ReplayUpstream(synthetic=True, tokens=5) as up:
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        r = await client.responses.create(model="m", input="x")
        assert r.output_text == "tok " * 5
        s = await client.responses.create(model="m", input="x", stream=True, extra_headers={"x-synthetic-tokens": "9"})
        assert len([e async for e in s if e.type == "response.output_text.delta"]) == 9
        an = anthropic.AsyncAnthropic(base_url=up.root_url, api_key="k", max_retries=0)
        m = await an.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])
        assert m.content[0].text == "tok " * 5
        assert up.frames(5, api="anthropic_messages")[0].startswith(b"event: message_start\n")
        await client.close()
        await an.close()
    async with ReplayUpstream() as up, aiohttp.ClientSession() as s:  # no synthetic mode: a bad header is a 400
        async with s.post(up.root_url + "/v1/messages", json={"model": "m"},
                          headers={"x-synthetic-text": "x", "x-synthetic-chunk-chars": "0"}) as r:
            assert r.status == 400 and (await r.json())["type"] == "error"


async def test_completions_and_embeddings() -> None:
    async with ReplayUpstream() as up:  # answered without synthetic mode: no recorded traffic exists for them
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="sk-test", max_retries=0)
        c = await client.completions.create(model="m", prompt="say it", extra_headers=_synthetic())
        assert c.object == "text_completion" and c.choices[0].text == PLANTED
        stream = await client.completions.create(model="m", prompt="say it", stream=True, extra_headers=_synthetic())
        pieces = [ch.choices[0].text async for ch in stream]
        assert "".join(pieces) == PLANTED and len(pieces) == math.ceil(len(PLANTED) / 5) + 1  # + the finish chunk

        e = await client.embeddings.create(model="emb", input=["a", "b"])  # the SDK asks base64 and decodes it
        f = await client.embeddings.create(model="emb", input=["a", "b"], encoding_format="float", dimensions=8)
        assert [d.index for d in e.data] == [0, 1] and len(e.data[0].embedding) == 8
        assert e.data[0].embedding == pytest.approx(f.data[0].embedding, abs=1e-6)  # deterministic per input
        assert e.data[0].embedding != e.data[1].embedding
        one = await client.embeddings.create(model="emb", input="a", encoding_format="float", dimensions=40)
        assert len(one.data) == 1 and len(one.data[0].embedding) == 40
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model="emb", input=[])
        await client.close()
        assert [q.path for q in up.requests] == ["/v1/completions"] * 2 + ["/v1/embeddings"] * 4
        assert [q.api for q in up.requests][-1] == "embeddings"
