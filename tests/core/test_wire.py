"""rails/blocked.py: the blocked-content error chunk, byte for byte as SEEDS.md gives it."""

from __future__ import annotations

import orjson

from railcar.core.wire import blocked_error, blocked_frames


def test_frame_bytes_exact() -> None:
    assert blocked_frames("self check output") == (
        b'data: {"error":{"message":"Blocked by self check output rails.","type":"guardrails_violation",'
        b'"param":"self check output","code":"content_blocked"}}\n\ndata: [DONE]\n\n')


def test_rail_name_is_escaped_as_json() -> None:
    frame = blocked_frames('odd "rail"').split(b"\n\n")[0]
    assert orjson.loads(frame[6:]) == blocked_error('odd "rail"')
