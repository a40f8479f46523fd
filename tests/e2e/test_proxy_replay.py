"""Every recorded interaction, direct vs through the sidecar: same status, content type and body; for streams the
same sequence of SSE events (byte-exact), whatever the upstream's transport chunking."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_RESPONSES

from railcar.sidecar.sse import split_events
from railcar.tools.replay_upstream import ReplayUpstream, _body_key, load_records


async def fetch(session: aiohttp.ClientSession, url: str, rec: dict, by_id: bool) -> tuple[int, str, bytes]:
    headers = {"x-replay-id": rec["id"]} if by_id else {}
    async with session.post(url, json=rec["request"], headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


@pytest.mark.parametrize("split", ["event", 7])
async def test_all_records_relay_faithfully(records, make_config, start_sidecar, split):
    assert len(records) == 281
    async with ReplayUpstream(records, split=split) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}))
        async with aiohttp.ClientSession() as s:
            for rec in records:
                direct = await fetch(s, up.base_url + "/chat/completions", rec, by_id=True)
                proxied = await fetch(s, sc.base_url + "/chat/completions", rec, by_id=True)
                assert direct[0] == rec["status"]
                assert proxied[0] == direct[0], rec["id"]
                assert proxied[1] == direct[1], rec["id"]
                if direct[1].startswith("text/event-stream"):
                    assert split_events(proxied[2]) == split_events(direct[2]), rec["id"]
                assert proxied[2] == direct[2], rec["id"]


@pytest.mark.parametrize("recorded, path, count", [(RECORDED_RESPONSES, "/responses", 186),
                                                   (RECORDED_ANTHROPIC, "/messages", 153)])
async def test_responses_and_anthropic_records_relay_faithfully(recorded, path, count, make_config, start_sidecar):
    """Issue 12: the recorded Responses API and Anthropic Messages traffic (streaming and not, tool use, reasoning,
    server tools, errors) through Railcar with no rails reaches the client as it reaches a direct client: byte for
    byte for streams (``event:`` lines included), the same JSON otherwise."""
    records = load_records(recorded)
    assert len(records) == count
    async with ReplayUpstream(records) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}))
        async with aiohttp.ClientSession() as s:
            for rec in records:
                direct = await fetch(s, up.base_url + path, rec, by_id=True)
                proxied = await fetch(s, sc.base_url + path, rec, by_id=True)
                assert direct[0] == rec["status"], rec["id"]
                assert proxied[:2] == direct[:2], rec["id"]
                if direct[1].startswith("text/event-stream"):
                    assert proxied[2] == direct[2], rec["id"]
                else:
                    assert orjson.loads(proxied[2]) == orjson.loads(direct[2]), rec["id"]


async def test_match_by_body_without_replay_id(records, sidecar, replay_upstream):
    # the first record for each distinct body is what a body match must return
    seen: set[str] = set()
    async with aiohttp.ClientSession() as s:
        for rec in records[::7]:
            key = repr(sorted(rec["request"].items(), key=lambda kv: kv[0]))
            if key in seen:
                continue
            seen.add(key)
            expected = replay_upstream.by_body[_body_key(rec["request"])]
            status, _, body = await fetch(s, sidecar.base_url + "/chat/completions", rec, by_id=False)
            assert (status, body) == (expected["status"], expected["response_body"].encode()), rec["id"]


async def test_synthetic_text_streams_the_given_text_in_deltas(make_config, start_sidecar):
    """``x-synthetic-text`` (and the ``text`` constructor argument): the stream carries that text split into
    deltas of ``x-synthetic-chunk-chars`` characters; the real openai client through the sidecar sees exactly it.
    A bad header value is a 400 in the OpenAI error shape."""
    import openai

    text = "Here is the key you asked for: AKIAQ2VZ7KXJ4MR5TBNW and nothing else."
    async with ReplayUpstream(text="default text, in three-char deltas", chunk_chars=3) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}))
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "hi"}]
        got = []
        stream = await client.chat.completions.create(model="m", messages=msgs, stream=True, extra_headers={
            "x-synthetic-text": text, "x-synthetic-chunk-chars": "5"})
        async for ev in stream:
            if ev.choices and ev.choices[0].delta.content:
                got.append(ev.choices[0].delta.content)
        assert got == [text[i:i + 5] for i in range(0, len(text), 5)]
        whole = await client.chat.completions.create(model="m", messages=msgs,
                                                     extra_headers={"x-synthetic-text": text})
        assert whole.choices[0].message.content == text
        # the constructor's text is the default when the upstream is synthetic (here: by the header's presence)
        default = await client.chat.completions.create(model="m", messages=msgs, stream=True,
                                                       extra_headers={"x-synthetic-tokens": "1"})
        assert [e.choices[0].delta.content async for e in default if e.choices and e.choices[0].delta.content] \
            == ["def", "aul", "t t", "ext", ", i", "n t", "hre", "e-c", "har", " de", "lta", "s"]
        with pytest.raises(openai.BadRequestError) as ei:
            await client.chat.completions.create(model="m", messages=msgs, extra_headers={
                "x-synthetic-text": text, "x-synthetic-chunk-chars": "0"})
        assert ei.value.status_code == 400 and "chunk_chars: must be >= 1" in str(ei.value)
