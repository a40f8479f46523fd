"""commands/demo_calls.py: the demo's per-API calls read a block the way each SDK reports it.

No sidecar here: the replay upstream itself serves streams that end as Railcar's codecs end a blocked stream
(``codec.blocked_frames``), so what the demo concludes from the real ``openai`` / ``anthropic`` SDKs is checked
against the codecs' own frames, independently of the proxy wiring. Also the recorded traffic of every API is sent
with its SDK and read back as answers or relayed errors.
"""

from __future__ import annotations

import pytest
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_RESPONSES

from railcar.codecs.registry import CODECS
from railcar.commands.demo import recorded_sessions
from railcar.commands.demo_calls import CallResult, Clients, Tap, apply_tap, ends_blocked, send
from railcar.tools.replay_upstream import ReplayUpstream, load_records
from railcar.tools.synthetic import Script, stream_frames

RAIL = "sensitive data"
REQUESTS = {"openai_chat": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            "openai_responses": {"model": "m", "input": "hi", "stream": True},
            "anthropic_messages": {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}],
                                   "stream": True}}


def _blocked_record(api: str) -> dict:
    """A stream of a few text deltas cut by a block, as the codec of ``api`` ends it (Chat: no [DONE] before)."""
    frames = stream_frames(api, Script(("The key ", "is ", "AKIA"), "m"))
    keep = frames[:2 if api == "openai_chat" else 5]  # the opening events and a delta or two
    body = b"".join(keep) + CODECS[api].blocked_frames(RAIL)
    return {"id": f"blocked-{api}", "api": api, "request": REQUESTS[api], "status": 200, "stream": True,
            "response_headers": {"content-type": "text/event-stream"}, "response_body": body.decode()}


@pytest.mark.parametrize("api", sorted(REQUESTS))
async def test_a_blocked_stream_is_read_as_blocked_with_its_rail(api: str) -> None:
    rec = _blocked_record(api)
    taps: dict[str, Tap] = {}
    async with ReplayUpstream([rec]) as up:
        clients = Clients.open(up.base_url, taps)
        res = CallResult("s", rec["id"], True, api=api)
        await send(clients, rec["request"], {"x-replay-id": rec["id"], "x-demo-call": "s#0"}, res)
        apply_tap(res, taps.pop("s#0", None))
        await clients.close()
    assert (res.result, res.rail) == ("blocked_stream", RAIL), res.detail
    assert res.error_chunk_last is True and res.tokens >= 1
    assert ends_blocked(api, rec["response_body"].encode())
    # the same stream without its block frames does not pass for blocked
    cut = rec["response_body"].encode().removesuffix(CODECS[api].blocked_frames(RAIL))
    assert not ends_blocked(api, cut)


@pytest.mark.parametrize("api", sorted(REQUESTS))
async def test_a_plain_stream_is_ok(api: str) -> None:
    async with ReplayUpstream(text="nothing to see here", chunk_chars=3) as up:
        clients = Clients.open(up.base_url, {})
        res = CallResult("s", "-", True, api=api)
        await send(clients, REQUESTS[api], {"x-synthetic-text": "nothing to see here"}, res)
        await clients.close()
    assert res.result == "ok" and res.tokens == 7, res.detail  # 19 characters in 3-character deltas


async def test_recorded_sessions_of_every_api_are_answered() -> None:
    records = load_records(RECORDED_RESPONSES)[:40] + load_records(RECORDED_ANTHROPIC)[:40]
    sessions = recorded_sessions(records)
    assert {s.api for s in sessions} == {"openai_responses", "anthropic_messages"}
    assert len({s.name for s in sessions}) == len(sessions)  # unique names: the calls are keyed by them
    assert all(s.name.startswith(("responses/", "anthropic/")) for s in sessions)
    assert len(recorded_sessions(records, 2)) == 4  # the limit is per API
    by_id = {r["id"]: r for r in records}
    async with ReplayUpstream(records) as up:
        clients = Clients.open(up.base_url, {})
        for s in sessions:
            for rid, req in s.calls:
                res = CallResult(s.name, rid, bool(req.get("stream")), api=s.api)
                await send(clients, req, {"x-replay-id": rid}, res)
                want = "ok" if by_id[rid]["status"] == 200 else "upstream_error"
                assert res.result == want, (rid, res.detail)
        await clients.close()
    assert {q.path for q in up.requests} == {"/v1/responses", "/v1/messages"}
