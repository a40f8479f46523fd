"""The inline hold-back in the stream guard, end to end: real proxy (railcar.sidecar.app), real ``openai`` client, upstreams
on loopback. A key split across deltas is blocked (error chunk; the client never sees the whole key) or redacted;
a clean stream through stream_first rails + hold-back keeps passthrough timing; non-streaming answers are treated
the same; recorded traffic is relayed byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from rails_support import NEVER_FIRING_RAILS, FramesUpstream, relay_raw

from railcar.rails.guard import build_guard
from railcar.tools.replay_upstream import ReplayUpstream, synthetic_frames

KEY = "ghp_" + "Zq81mXv2LpT0aRk7wYb4NcJd9sEu3HfGi6Ao"  # github_token shape, random body, not a placeholder
RAILS = NEVER_FIRING_RAILS % "true"


def frames_of(deltas: list[str]) -> list[bytes]:
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = []
    for i, d in enumerate(deltas):
        delta = {"role": "assistant", "content": d} if i == 0 else {"content": d}
        out.append(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": delta,
                                                                    "finish_reason": None}]}) + b"\n\n")
    out.append(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {},
                                                              "finish_reason": "stop"}]}) + b"\n\n")
    return out + [b"data: [DONE]\n\n"]


def delta_upstream(deltas: list[str], delay_s: float = 0.001) -> FramesUpstream:
    """A loopback upstream streaming fixed deltas ``delay_s`` apart (or one JSON answer for stream=false)."""
    return FramesUpstream(frames_of(deltas), delay_s, answer="".join(deltas))


def split_key(pieces: int) -> list[str]:
    step = -(-len(KEY) // pieces)
    parts = [KEY[i:i + step] for i in range(0, len(KEY), step)]
    return ["Your", " token", " is ", *parts, " and", " keep", " it", " safe."]


async def guarded(make_config, start_sidecar, tmp_path: Path, base_url: str, **inline: Any):
    rails = tmp_path / "rails.yml"
    rails.write_text(RAILS)
    gs: dict[str, Any] = {"config_path": str(rails)}
    if inline:
        gs["inline"] = inline
    cfg = make_config(upstream={"base_url": base_url}, guardrails=gs)
    guard = await build_guard(cfg)
    return guard, await start_sidecar(cfg, guard=guard)


@pytest.mark.parametrize("pieces", [2, 10])
async def test_key_split_across_deltas_is_blocked(make_config, start_sidecar, tmp_path, pieces):
    deltas = split_key(pieces) + [" more"] * 200  # the upstream is still sending when the block lands
    async with delta_upstream(deltas) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url)
        assert guard.filter_factory is not None  # on by default with a guardrail config
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError) as ei:
            stream = await client.chat.completions.create(model="m", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            async for ev in stream:
                if ev.choices and ev.choices[0].delta.content:
                    got.append(ev.choices[0].delta.content)
        assert "Blocked by sensitive data rails." in str(ei.value)
        text = "".join(got)
        assert KEY not in text and text.startswith("Your token is")
        await asyncio.wait_for(up.disconnected.wait(), 10)  # generation stopped
        await guard.close()


async def test_key_split_across_deltas_is_redacted(make_config, start_sidecar, tmp_path):
    deltas = split_key(7)
    async with delta_upstream(deltas) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url, action="redact")
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="m", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        got = [ev.choices[0].delta.content or "" async for ev in stream if ev.choices]
        text = "".join(got)
        assert KEY not in text
        assert text.startswith("Your token is [REDACTED:github_token:") and text.endswith("] and keep it safe.")
        # Non-streaming answers get the same treatment on the whole message.
        whole = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert whole.choices[0].message.content == text
        await guard.close()


async def test_non_streaming_answer_with_key_is_blocked(make_config, start_sidecar, tmp_path):
    async with delta_upstream(split_key(3)) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url)
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        whole = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert whole.choices[0].finish_reason == "content_filter" and KEY not in whole.choices[0].message.content
        await guard.close()


async def test_inline_off_lets_the_key_through(make_config, start_sidecar, tmp_path):
    # The control: with [guardrails.inline] enabled = false these rails do not stop the key.
    async with delta_upstream(split_key(4)) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url, enabled=False)
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="m", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        assert KEY in "".join([ev.choices[0].delta.content or "" async for ev in stream if ev.choices])
        await guard.close()


async def test_clean_stream_is_relayed_frame_by_frame_with_holdback(make_config, start_sidecar, tmp_path):
    """A clean stream through the hold-back and stream_first output rails is not buffered: each token reaches the
    client while the upstream is still generating, at most a frame behind (the upstream paces frames 50 ms apart,
    so the check is about order, not speed; the added latency is measured in bench/proxy.py)."""
    frames = synthetic_frames(12)
    async with FramesUpstream(frames, delay_s=0.05) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url)
        assert guard.stream_first and guard.filter_factory is not None
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="m", stream=True,
                                                      messages=[{"role": "user", "content": "hi"}])
        sent_at_token = [up.sent async for ev in stream if ev.choices and ev.choices[0].delta.content]
        await client.close()
        await guard.close()
    assert len(sent_at_token) == 12
    assert all(sent <= i + 2 for i, sent in enumerate(sent_at_token, 1)), sent_at_token
    assert sent_at_token[0] < len(frames) - 5  # the first token went out long before the upstream finished


async def test_recorded_streams_relayed_unchanged_with_holdback(make_config, start_sidecar, tmp_path, records):
    # Frames are held whole while a tail is open and then sent as they came: clean traffic stays byte-exact.
    async with ReplayUpstream(records) as up:
        guard, sc = await guarded(make_config, start_sidecar, tmp_path, up.base_url)
        client = openai.AsyncOpenAI(base_url=sc.base_url, api_key="x", max_retries=0)
        streamed = [r for r in records if r["stream"] and r["status"] == 200][:12]
        for rec in streamed:
            assert await relay_raw(client, rec) == rec["response_body"].encode(), rec["id"]
        await guard.close()
