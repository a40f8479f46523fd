"""Legacy ``function_call`` (chat's deprecated single call: ``delta.function_call.{name,arguments}``, non-streamed
``message.function_call``) waits for the tool_input rails the way ``tool_calls`` do: its frames are held until the
call is complete (``finish_reason``, or the stream's end) and its arguments passed; a blocking rail sends the
blocked-content error chunk and nothing of the call.

The rails are the regex rail of tests/rails_support.py (``AKIA[0-9A-Z]{16}`` on output, which tool_input runs too);
the value is the documentation's EXAMPLE key, which the inline validators reject, so only the rail can stop it.
"""

from __future__ import annotations

from typing import Any

import pytest
from rails_support import AWS_KEY, Sink, chunk, run_stream, secret_guard

from railcar.core.exchange import Exchange
from railcar.core.wire import blocked_frames
from railcar.rails import detectors as det
from railcar.rails.inline import HoldBack
from railcar.rails.scanner import Scanner
from railcar.sidecar.sse import split_events

DONE = b"data: [DONE]\n\n"
RAIL = "regex check output"


def fc_stream(arguments: list[str], finish: str | None = "function_call") -> list[bytes]:
    frames = [chunk({"role": "assistant", "content": None,
                     "function_call": {"name": "deploy", "arguments": ""}})]
    frames += [chunk({"function_call": {"arguments": a}}) for a in arguments]
    if finish is not None:
        frames += [chunk({}, finish), DONE]
    return frames


def leaky_args() -> list[str]:
    return ['{"region": "eu", ', '"key": "', AWS_KEY[:9], AWS_KEY[9:], '"}']


async def one_read(guard: Any, frames: list[bytes]) -> tuple[Sink, Any, Exchange]:
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]})
    sink = Sink()
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    await sg.on_events(split_events(b"".join(frames)))
    await sg.on_end()
    return sink, sg, ex


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("finish", ["function_call", None], ids=["finish_reason", "stream-end"])
async def test_function_call_blocked_by_tool_input_sends_nothing_of_the_call(first: bool, finish: str | None) -> None:
    guard = secret_guard(200, 50, first)
    for run in (run_stream, one_read):
        sink, sg, ex = await run(guard, fc_stream(leaky_args(), finish))
        assert sg.stopped and ex.outcome.blocked_rail == RAIL, run
        assert sink.frames == [blocked_frames(RAIL)], run  # no fragment of the call (nor its name) went out
        assert AWS_KEY.encode() not in sink.body


async def test_clean_function_call_is_held_until_complete_then_relayed_byte_exact() -> None:
    guard = secret_guard(200, 50, True)
    frames = fc_stream(['{"re', 'gion": ', '"eu"}'])
    sink = Sink()
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]})
    sg = guard.open_stream(ex, sink, abort=lambda: None)
    for raw in frames[:4]:
        await sg.on_events(split_events(raw))
    assert sink.frames == []  # the call is not complete (no finish_reason yet): held, its name too
    for raw in frames[4:]:
        await sg.on_events(split_events(raw))
    await sg.on_end()
    assert not sg.stopped and sink.body == b"".join(frames)
    for run in (run_stream, one_read):
        sink, sg, _ = await run(guard, frames)
        assert not sg.stopped and sink.body == b"".join(frames)


async def test_function_call_frames_held_by_the_holdback_still_wait_for_the_rail() -> None:
    """With the inline hold-back on, the call's frames may be held whole for an open value (``ghp_...`` cut at the
    end) and released at ``finish_reason``: the released frames wait for the tool_input check all the same."""
    guard = secret_guard(200, 50, True)
    guard.filter_factory = HoldBack(Scanner(det.select(["secret"]), b"k" * 32), "block")
    try:
        args = ['{"key": "', AWS_KEY, '", "t": "gh', 'p_Zq81m']
        for run in (run_stream, one_read):
            sink, sg, ex = await run(guard, fc_stream(args))
            assert sg.stopped and ex.outcome.blocked_rail == RAIL, run
            assert sink.frames == [blocked_frames(RAIL)], run
        clean = ['{"t": "gh', 'p_Zq81m', '"}']
        frames = fc_stream(clean)
        sink, sg, _ = await run_stream(guard, frames)
        assert not sg.stopped and sink.body == b"".join(frames)
    finally:
        guard.filter_factory = None


async def test_content_before_a_function_call_is_not_held_back() -> None:
    """Text the choice streamed before the call started goes out at once (stream_first); only the call waits."""
    guard = secret_guard(200, 50, True)
    frames = [chunk({"role": "assistant", "content": "Deploying now."})] + fc_stream(leaky_args())
    sink, sg, ex = await run_stream(guard, frames)
    assert sg.stopped and ex.outcome.blocked_rail == RAIL
    assert sink.frames == [frames[0], blocked_frames(RAIL)]


@pytest.mark.parametrize("args", [f'{{"key": "{AWS_KEY}"}}', '{"region": "eu"}'], ids=["leaky", "clean"])
async def test_non_streamed_function_call_is_judged_by_tool_input(args: str) -> None:
    guard = secret_guard(200, 50, True)
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [{
        "index": 0, "finish_reason": "function_call",
        "message": {"role": "assistant", "content": None, "function_call": {"name": "deploy", "arguments": args}}}]}
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": "go"}]})
    out = await guard.check_response(ex, body)
    if AWS_KEY in args:
        assert out is not None and ex.outcome.blocked_rail == RAIL
        assert out["choices"][0]["finish_reason"] == "content_filter"
        assert "function_call" not in out["choices"][0]["message"]
    else:
        assert out is None and not ex.outcome.blocked
