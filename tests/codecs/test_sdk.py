"""The codecs' synthetic frames and bodies as the real ``openai`` and ``anthropic`` SDKs read them (through an
in-memory transport): blocks and errors raise an error naming the rail, refusals parse into the typed objects."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from shared_fixtures import RECORDED_RESPONSES

from railcar.codecs.registry import CODECS
from railcar.core import wire

RAIL = "regex check output"
MODEL = "gpt-test"


def _openai(status: int, body: bytes, sse: bool) -> openai.OpenAI:
    ctype = "text/event-stream" if sse else "application/json"
    transport = httpx.MockTransport(lambda req: httpx.Response(status, content=body, headers={"content-type": ctype}))
    return openai.OpenAI(api_key="k", base_url="http://upstream/v1", max_retries=0,
                         http_client=httpx.Client(transport=transport))


def _anthropic(status: int, body: bytes, sse: bool) -> anthropic.Anthropic:
    ctype = "text/event-stream" if sse else "application/json"
    transport = httpx2.MockTransport(lambda req: httpx2.Response(status, content=body,
                                                                 headers={"content-type": ctype}))
    return anthropic.Anthropic(api_key="k", base_url="http://upstream", max_retries=0,
                               http_client=httpx2.Client(transport=transport))


CHAT_MSGS: list[Any] = [{"role": "user", "content": "hi"}]
ANTH_MSGS: list[Any] = [{"role": "user", "content": "hi"}]


def _chat_prefix() -> bytes:
    return wire.sse_frame({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
                           "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"},
                                        "finish_reason": None}]})


def _responses_prefix() -> tuple[bytes, Any]:
    """The first events of a recorded Responses stream (up to the first text delta) and the codec state after them."""
    codec = CODECS["openai_responses"]
    state = codec.new_stream_state()
    with RECORDED_RESPONSES.open() as f:
        rec = next(r for r in map(json.loads, f) if r["stream"] and r["status"] == 200 and not r["has_tool_calls"])
    out = b""
    for block in rec["response_body"].split("\n\n"):
        if not block.strip():
            continue
        out += block.encode() + b"\n\n"
        data = json.loads(block.split("data: ", 1)[1])
        codec.tool_calls_done(data, state)
        if data["type"] == "response.output_text.delta":
            break
    return out, state


def _anthropic_prefix() -> bytes:
    codec = CODECS["anthropic_messages"]
    return b"".join(codec.refusal_frames(MODEL, "Hel")[:3])


def test_chat_blocked_stream_raises_api_error_naming_the_rail() -> None:
    client = _openai(200, _chat_prefix() + CODECS["openai_chat"].blocked_frames(RAIL), True)
    with pytest.raises(openai.APIError, match=f"Blocked by {RAIL} rails.") as exc:
        for _ in client.chat.completions.create(model=MODEL, messages=CHAT_MSGS, stream=True):
            pass
    assert exc.value.body["param"] == RAIL and exc.value.body["code"] == "content_blocked"  # type: ignore[index]


def test_responses_blocked_stream_raises_api_error_in_create_and_in_the_stream_helper() -> None:
    codec = CODECS["openai_responses"]
    prefix, state = _responses_prefix()
    last = state.sequence_number
    frames = prefix + codec.blocked_frames(RAIL, state)
    event = json.loads(frames.rsplit(b"data: ", 1)[1])
    assert event["sequence_number"] == last + 1 == state.sequence_number
    assert event["message"] == f"Blocked by {RAIL} rails." and event["code"] == "content_blocked"
    with pytest.raises(openai.APIError, match=f"Blocked by {RAIL} rails.") as exc:
        for _ in _openai(200, frames, True).responses.create(model=MODEL, input="hi", stream=True):
            pass
    assert exc.value.body["type"] == "guardrails_violation"  # type: ignore[index]
    with pytest.raises(openai.APIError, match=RAIL):
        with _openai(200, frames, True).responses.stream(model=MODEL, input="hi") as stream:
            for _ in stream:
                pass


def test_anthropic_blocked_stream_raises_naming_the_rail() -> None:
    frames = _anthropic_prefix() + CODECS["anthropic_messages"].blocked_frames(RAIL)
    with pytest.raises(anthropic.APIStatusError, match=f"Blocked by {RAIL} rails."):
        for _ in _anthropic(200, frames, True).messages.create(model=MODEL, max_tokens=10, messages=ANTH_MSGS,
                                                               stream=True):
            pass
    with pytest.raises(anthropic.APIStatusError, match=RAIL) as exc:
        with _anthropic(200, frames, True).messages.stream(model=MODEL, max_tokens=10, messages=ANTH_MSGS) as s:
            s.get_final_message()
    assert exc.value.body["error"]["type"] == "guardrails_violation"  # type: ignore[index]


@pytest.mark.parametrize("name", ["openai_chat", "openai_responses", "openai_completions", "embeddings"])
def test_openai_error_bodies_raise_the_status_error(name: str) -> None:
    codec = CODECS[name]
    body = codec.blocked_body(RAIL)
    client = _openai(400, body, False)
    calls: dict[str, Callable[[], Any]] = {
        "openai_chat": lambda: client.chat.completions.create(model=MODEL, messages=CHAT_MSGS),
        "openai_responses": lambda: client.responses.create(model=MODEL, input="hi"),
        "openai_completions": lambda: client.completions.create(model=MODEL, prompt="hi"),
        "embeddings": lambda: client.embeddings.create(model=MODEL, input="hi"),
    }
    with pytest.raises(openai.BadRequestError, match=RAIL):
        calls[name]()


def test_openai_in_stream_error_frames_raise() -> None:
    for name in ("openai_chat", "openai_responses"):
        frame = CODECS[name].error_frame("upstream sent garbage", "upstream_error")
        with pytest.raises(openai.APIError, match="upstream sent garbage"):
            for _ in _openai(200, frame, True).responses.create(model=MODEL, input="hi", stream=True):
                pass


def test_anthropic_error_body_and_frame() -> None:
    codec = CODECS["anthropic_messages"]
    assert json.loads(codec.error_body(404, "no such route", "invalid_request_error")) == {
        "type": "error", "error": {"type": "not_found_error", "message": "no such route"}}
    with pytest.raises(anthropic.BadRequestError, match=RAIL) as exc:
        _anthropic(400, codec.blocked_body(RAIL), False).messages.create(model=MODEL, max_tokens=5,
                                                                          messages=ANTH_MSGS)
    assert exc.value.body["error"]["code"] == "content_blocked"  # type: ignore[index]
    with pytest.raises(anthropic.APIStatusError, match="upstream timed out"):
        for _ in _anthropic(200, codec.error_frame("upstream timed out", "timeout_error"), True).messages.create(
                model=MODEL, max_tokens=5, messages=ANTH_MSGS, stream=True):
            pass


def test_problem_bodies_are_the_apis_error_shape() -> None:
    for name, codec in CODECS.items():
        assert codec.validate([]) is not None and codec.validate({"model": 3}).code == "invalid_type"  # type: ignore[union-attr]
        if name != "openai_responses":  # Responses: input is optional (previous_response_id, conversation)
            assert codec.validate({"model": MODEL}) is not None
        problem = codec.validate({})
        assert problem is not None and problem.status == 400 and problem.param == "model", name
        body = json.loads(codec.problem_body(problem))
        err = body["error"]
        assert problem.param in err["message"] or problem.param in err.get("param", ""), name
        if name == "anthropic_messages":
            assert body["type"] == "error" and err["type"] == "invalid_request_error"


def test_chat_refusal_parses() -> None:
    codec = CODECS["openai_chat"]
    body = json.dumps(codec.refusal_body(MODEL, "No.", RAIL)).encode()
    out = _openai(200, body, False).chat.completions.create(model=MODEL, messages=CHAT_MSGS)
    assert isinstance(out, ChatCompletion) and out.choices[0].message.content == "No."
    chunks = list(_openai(200, b"".join(codec.refusal_frames(MODEL, "No.")), True).chat.completions.create(
        model=MODEL, messages=CHAT_MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "No."


def test_responses_refusal_parses_strictly_and_streams_through_the_helper() -> None:
    codec = CODECS["openai_responses"]
    body = codec.refusal_body(MODEL, "I can't help with that.", RAIL)
    strict = Response.model_validate(body)
    assert strict.output_text == "I can't help with that." and strict.status == "completed"
    out = _openai(200, json.dumps(body).encode(), False).responses.create(model=MODEL, input="hi")
    assert out.output_text == "I can't help with that."
    frames = b"".join(codec.refusal_frames(MODEL, "I can't help with that."))
    with _openai(200, frames, True).responses.stream(model=MODEL, input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["I can't help with that."] and final.output_text == "I can't help with that."
    events = list(_openai(200, frames, True).responses.create(model=MODEL, input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert codec.is_terminal(events[-1].model_dump())


def test_anthropic_refusal_parses_strictly_and_streams() -> None:
    codec = CODECS["anthropic_messages"]
    body = codec.refusal_body(MODEL, "I can't help with that.", RAIL)
    strict = Message.model_validate(body)
    assert strict.stop_reason == "refusal" and strict.content[0].text == "I can't help with that."  # type: ignore[union-attr]
    out = _anthropic(200, json.dumps(body).encode(), False).messages.create(model=MODEL, max_tokens=5,
                                                                            messages=ANTH_MSGS)
    assert out.stop_reason == "refusal"
    frames = b"".join(codec.refusal_frames(MODEL, "I can't help with that."))
    with _anthropic(200, frames, True).messages.stream(model=MODEL, max_tokens=5, messages=ANTH_MSGS) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "I can't help with that." and final.stop_reason == "refusal"


def test_completions_refusal_parses_and_embeddings_refusal_is_an_error() -> None:
    codec = CODECS["openai_completions"]
    out = _openai(200, json.dumps(codec.refusal_body(MODEL, "No.")).encode(), False).completions.create(
        model=MODEL, prompt="hi")
    assert out.choices[0].text == "No." and out.choices[0].finish_reason == "content_filter"
    chunks = list(_openai(200, b"".join(codec.refusal_frames(MODEL, "No.")), True).completions.create(
        model=MODEL, prompt="hi", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "No."
    emb = CODECS["embeddings"]
    body = json.dumps(emb.refusal_body(MODEL, "No.", RAIL)).encode()
    with pytest.raises(openai.BadRequestError, match=RAIL):
        _openai(emb.refusal_status, body, False).embeddings.create(model=MODEL, input="hi")
