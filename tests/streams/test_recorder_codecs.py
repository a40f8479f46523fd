"""railcar.streams.recorder on every codec: one span per call of each wire API (recorded traffic and exchanges
built here), GenAI semantic-convention attributes, no secret byte at rest (a planted key in any identifier, a PEM
key cut by a block), and the work done off the event loop."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from shared_fixtures import RECORDED_ANTHROPIC, RECORDED_CHAT, RECORDED_RESPONSES

from railcar.core.exchange import Exchange, Outcome
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.fileset import open_fileset
from railcar.streams.processor import iter_findings
from railcar.streams.recorder import TraceRecorder

PROVIDERS = {"openai_chat": "openai", "openai_responses": "openai", "anthropic_messages": "anthropic",
             "openai_completions": "openai", "embeddings": "openai"}
OPERATIONS = {"openai_chat": "chat", "openai_responses": "chat", "anthropic_messages": "chat",
              "openai_completions": "text_completion", "embeddings": "embeddings"}
STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _aws(rng: random.Random) -> str:
    """An AWS access key id shape, built at run time (never a literal in the source)."""
    return "AKIA" + "".join(rng.choice(_B32) for _ in range(16))


def _pem_lines(rng: random.Random, n: int = 7) -> list[str]:
    return ["".join(rng.choice(_B64) for _ in range(64)) for _ in range(n)]


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"k" * 32)


@pytest.fixture()
def rng() -> random.Random:
    return random.Random(1312)


def _span(value: bytes) -> tuple[Any, dict[str, Any]]:
    (_, sp), = list(otlp.iter_spans(otlp.decode(value)))
    return sp, otlp.attributes_of(sp.attributes)


def _events(sp: Any, name: str) -> list[dict[str, Any]]:
    return [otlp.attributes_of(e.attributes) for e in sp.events if e.name == name]


def _texts(sp: Any) -> str:
    return "\n".join(e["text"] for e in _events(sp, "railcar.content"))


def _sse_datas(body: str) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, as the proxy records them in ``exchange.stream_data``."""
    out = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            out.append("\n".join(data).encode())
    return out


def _recorded(path: Any, limit: int | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        pytest.skip(f"{path} is not checked out beside the repo")
    out = []
    with path.open() as f:
        for line in f:
            if line.strip() and "image_generation_call" not in line[:20000] and "image-as-binary" not in line[:400]:
                out.append(json.loads(line))
    return out[:limit]


def _exchange(rec: dict[str, Any], api: str) -> Exchange:
    ex = Exchange(body=dict(rec["request"]), api=api, upstream_url="https://api.example.test/v1/x")
    ex.status = rec["status"]
    if rec["response_body"].lstrip().startswith(("event:", "data:", ":")):
        ex.stream_data = _sse_datas(rec["response_body"])
    else:
        ex.response_body = rec["response_body"].encode()
    return ex


@pytest.mark.parametrize("path,api", [(RECORDED_RESPONSES, "openai_responses"),
                                      (RECORDED_ANTHROPIC, "anthropic_messages"), (RECORDED_CHAT, "openai_chat")])
def test_every_recorded_call_is_one_span_with_the_semconv_attributes(scanner: Scanner, path: Any, api: str) -> None:
    recs = _recorded(path)
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-r"))
    answered = 0
    for r in recs:
        if r.get("api", "openai_chat") != api or r["kind"].startswith("invalid"):
            continue  # "invalid_non_chat_body": an echo endpoint, no answer of the API
        ex = _exchange(r, api)
        sp, attrs = _span(rec.build(ex)[1])
        assert attrs["gen_ai.provider.name"] == PROVIDERS[api] and attrs["gen_ai.operation.name"] == "chat"
        if isinstance(r["request"].get("model"), str):
            assert attrs["gen_ai.request.model"] == r["request"]["model"]
            assert sp.name == f"chat {r['request']['model']}"
        assert attrs["server.address"] == "api.example.test" and attrs["server.port"] == 443
        assert attrs["gen_ai.conversation.id"] and attrs["http.response.status_code"] == r["status"]
        failed = r["status"] >= 400 or r["kind"] == "error"
        assert (sp.status.code == STATUS_ERROR) == failed, r["id"]
        if failed:
            assert attrs["error.type"]
            continue
        assert attrs.get("gen_ai.response.id") or attrs.get("gen_ai.response.model"), r["id"]
        out = orjson.loads(attrs["railcar.output.message"])
        if r["has_tool_calls"] and api != "openai_chat":
            assert out.get("tool_calls"), r["id"]
        texts = {e["ref"]: e["text"] for e in _events(sp, "railcar.content")}
        answered += bool(out.get("tool_calls") or texts.get(out["ref"]) or texts.get(out.get("reasoning_ref")))
    assert answered > 0.8 * sum(r.get("api", "openai_chat") == api and r["kind"].startswith(("stream", "nonstream"))
                                for r in recs)


def test_recorded_stream_answers_equal_the_final_output(scanner: Scanner) -> None:
    # The reassembled Responses / Anthropic stream text is the text the API reports as final.
    for path, api in ((RECORDED_RESPONSES, "openai_responses"), (RECORDED_ANTHROPIC, "anthropic_messages")):
        checked = 0
        for r in _recorded(path):
            if not (r["stream"] and r["status"] == 200 and r["kind"] == "stream_text"):
                continue
            ex = _exchange(r, api)
            datas = [orjson.loads(d) for d in ex.stream_data if d[:1] == b"{"]
            if api == "openai_responses":
                final = "\n".join(d["text"] for d in datas if d.get("type") == "response.output_text.done")
            else:
                final = "\n".join("".join(d["delta"]["text"] for d in datas
                                          if d.get("type") == "content_block_delta" and d.get("index") == i
                                          and d["delta"].get("type") == "text_delta")
                                  for i in sorted({d.get("index") for d in datas if d.get("type") ==
                                                   "content_block_delta" and d["delta"].get("type") == "text_delta"}))
            sp, attrs = _span(TraceRecorder(scanner, None).build(ex)[1])
            ref = orjson.loads(attrs["railcar.output.message"])["ref"]
            text = next(e["text"] for e in _events(sp, "railcar.content") if e["ref"] == ref)
            assert text == final, r["id"]
            assert attrs["gen_ai.usage.output_tokens"] > 0 and attrs["gen_ai.response.finish_reasons"]
            checked += 1
        assert checked >= 5


def test_completions_and_embeddings_spans(scanner: Scanner, rng: random.Random) -> None:
    key = _aws(rng)
    rec = TraceRecorder(scanner, None)
    comp = Exchange(body={"model": "gpt-3.5-turbo-instruct", "prompt": f"say {key}", "stream": True, "seed": 7,
                          "max_tokens": 5}, api="openai_completions", upstream_url="http://10.0.0.5:8080/v1/completions")
    comp.stream_data = [orjson.dumps({"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
                                      "choices": [{"index": 0, "text": t, "finish_reason": None}]})
                        for t in ("ok ", key[:9], key[9:])] + [b"[DONE]"]
    comp.status = 200
    emb = Exchange(body={"model": "text-embedding-3-small", "input": [f"doc {key}", "two"], "dimensions": 8},
                   api="embeddings", upstream_url="https://api.openai.com/v1/embeddings")
    emb.response_body = orjson.dumps({"object": "list", "model": "text-embedding-3-small",
                                      "data": [{"object": "embedding", "index": 0, "embedding": [0.1] * 8}],
                                      "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    emb.status = 200
    for ex in (comp, emb):
        value = rec.build(ex)[1]
        assert key.encode() not in value
        sp, attrs = _span(value)
        assert attrs["gen_ai.operation.name"] == OPERATIONS[ex.api] and attrs["gen_ai.provider.name"] == "openai"
        assert sp.name == f"{OPERATIONS[ex.api]} {ex.body['model']}"
        assert {n["railcar.redaction.detector"] for n in _events(sp, "railcar.redaction")} == {"aws_access_key_id"}
    _, attrs = _span(rec.build(comp)[1])
    assert attrs["server.address"] == "10.0.0.5" and attrs["server.port"] == 8080
    assert attrs["gen_ai.request.seed"] == 7 and attrs["gen_ai.request.max_tokens"] == 5
    _, attrs = _span(rec.build(emb)[1])
    assert attrs["server.port"] == 443 and attrs["gen_ai.embeddings.dimension.count"] == 8
    assert attrs["gen_ai.usage.input_tokens"] == 4


def _planted(api: str, leak: str) -> Exchange:
    """An exchange of ``api`` with ``leak`` in the model, a message name, tool-call ids and names (request and
    answer) and the response id / model."""
    if api == "openai_chat":
        call = {"id": leak, "type": "function", "function": {"name": leak, "arguments": "{}"}}
        body = {"model": leak, "messages": [{"role": "user", "name": leak, "content": "hi"},
                                            {"role": "assistant", "content": None, "tool_calls": [call]},
                                            {"role": "tool", "tool_call_id": leak, "content": "done"}]}
        answer = {"id": leak, "model": leak, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [call]}}]}
    elif api == "openai_responses":
        body = {"model": leak, "previous_response_id": leak, "input": [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": leak, "name": leak, "arguments": "{}"},
            {"type": "function_call_output", "call_id": leak, "output": "done"}]}
        answer = {"id": leak, "object": "response", "model": leak, "status": "completed", "output": [
            {"type": "function_call", "id": leak, "call_id": leak, "name": leak, "arguments": "{}"}],
            "usage": {"input_tokens": 3, "output_tokens": 2}}
    else:
        body = {"model": leak, "max_tokens": 10, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": leak, "name": leak, "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": leak, "content": "done"}]}]}
        answer = {"type": "message", "id": leak, "model": leak, "role": "assistant", "stop_reason": "tool_use",
                  "content": [{"type": "tool_use", "id": leak, "name": leak, "input": {}}],
                  "usage": {"input_tokens": 3, "output_tokens": 2}}
    ex = Exchange(body=body, api=api, headers={"x-conversation-id": leak})
    ex.response_body, ex.status = orjson.dumps(answer), 200
    return ex


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic_messages"])
def test_a_planted_key_in_any_identifier_is_never_published(scanner: Scanner, rng: random.Random, api: str) -> None:
    key = _aws(rng)
    value = TraceRecorder(scanner, None).build(_planted(api, f"x {key}"))[1]
    assert key.encode() not in value
    sp, attrs = _span(value)
    assert sp.name.startswith("chat x [REDACTED:aws_access_key_id:")
    assert attrs["gen_ai.conversation.id"].startswith("x [REDACTED:aws_access_key_id:")
    paths = {n["railcar.redaction.path"] for n in _events(sp, "railcar.redaction")}
    assert {"$.model", "$.output.model", "$.output.id", "$.conversation", "$.output.tool_calls[0].id",
            "$.output.tool_calls[0].function.name"} <= paths
    entries = orjson.loads(attrs["railcar.input.messages"])
    assert any(tc["id"].startswith("x [REDACTED") and tc["name"].startswith("x [REDACTED")
               for e in entries for tc in e.get("tool_calls", ()))
    assert any(e.get("tool_call_id", "").startswith("x [REDACTED") for e in entries)


def _pem_stream(api: str, text_deltas: list[str]) -> list[bytes]:
    if api == "openai_chat":
        return [orjson.dumps({"id": "c1", "model": "m", "object": "chat.completion.chunk",
                              "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]})
                for d in text_deltas]
    if api == "openai_responses":
        return [orjson.dumps({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                              "content_index": 0, "delta": d, "sequence_number": i})
                for i, d in enumerate(text_deltas)]
    return [orjson.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}})
            for d in text_deltas]


@pytest.mark.parametrize("api", ["openai_chat", "openai_responses", "anthropic_messages"])
def test_a_pem_key_cut_by_a_block_never_reaches_the_record(scanner: Scanner, rng: random.Random, api: str) -> None:
    # Issue 13 "at rest": the block cut the stream before the END line, so no catalog pattern matches; the key's
    # body lines must not be published, and the cut value is noted once.
    lines = _pem_lines(rng)
    text = "Here is the key:\n-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n"
    deltas = [text[i:i + 13] for i in range(0, len(text), 13)]
    body = ({"model": "m", "stream": True, "max_tokens": 9, "messages": [{"role": "user", "content": "key?"}]}
            if api != "openai_responses" else {"model": "m", "stream": True, "input": "key?"})
    ex = Exchange(body=body, api=api, outcome=Outcome(blocked=True, blocked_rail="sensitive data"))
    ex.stream_data, ex.status = _pem_stream(api, deltas), 200
    value = TraceRecorder(scanner, None).build(ex)[1]
    for line in lines:
        assert line.encode() not in value and line[:32].encode() not in value
    sp, attrs = _span(value)
    assert "Here is the key:\n[REDACTED:private_key:" in _texts(sp)
    notes = _events(sp, "railcar.redaction")
    assert [(n["railcar.redaction.detector"], n["railcar.redaction.path"]) for n in notes] == [
        ("private_key", "$.output.content")]
    assert sp.status.code != STATUS_ERROR and attrs["railcar.rails.blocked"] is True  # a block is not a failure


def test_an_unterminated_key_is_redacted_anywhere_but_a_header_with_prose_is_kept(scanner: Scanner,
                                                                                  rng: random.Random) -> None:
    lines = _pem_lines(rng, 3)
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
    prose = ("-----BEGIN PRIVATE KEY----- is the header line a PEM file opens with, and a parser reads on until it "
             "finds the matching END line, so look for both when you review a config file.")
    ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": f"check this: {cut}"},
                                                   {"role": "user", "content": prose}]})
    value = TraceRecorder(scanner, None).build(ex)[1]
    assert not any(line.encode() in value for line in lines)
    sp, _ = _span(value)
    assert prose in _texts(sp)
    assert [n["railcar.redaction.path"] for n in _events(sp, "railcar.redaction")] == ["$.messages[0].content"]


def test_a_value_prefix_held_back_by_a_block_is_redacted(scanner: Scanner, rng: random.Random) -> None:
    # A rail blocked mid-stream while the hold-back held an open value prefix: the recorded upstream text ends
    # inside the value; what the client never got is not published either.
    key = _aws(rng)
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]},
                  outcome=Outcome(blocked=True, blocked_rail="self check output"))
    ex.stream_data = _pem_stream("openai_chat", ["the id is ", key[:14]])
    value = TraceRecorder(scanner, None).build(ex)[1]
    assert key[:14].encode() not in value
    sp, _ = _span(value)
    assert "the id is [REDACTED:aws_access_key_id:" in _texts(sp)
    (note,) = _events(sp, "railcar.redaction")
    assert note["railcar.redaction.masked_preview"] == "AKIA…(14 chars)"
    # A cut word is an open e-mail prefix too, but without an "@" it is no evidence of one: kept, no note.
    ex.stream_data = _pem_stream("openai_chat", ["the configuration"])
    sp, _ = _span(TraceRecorder(scanner, None).build(ex)[1])
    assert "the configuration" in _texts(sp) and not _events(sp, "railcar.redaction")


def test_the_consumer_finds_a_key_leaked_on_each_api(scanner: Scanner, rng: random.Random, tmp_path: Any) -> None:
    rec = TraceRecorder(scanner, None)
    values = []
    for api in ("openai_responses", "anthropic_messages"):
        key = _aws(rng)
        ex = Exchange(body={"model": "m", "max_tokens": 5, "stream": True, "input": "hi",
                            "messages": [{"role": "user", "content": "hi"}]}, api=api)
        ex.stream_data = _pem_stream(api, ["Stored ", key[:7], key[7:], "."])
        values.append(rec.build(ex)[1])
        assert key.encode() not in values[-1]
    found = iter_findings(values, scanner, open_fileset(str(tmp_path / "fs")), "w")
    assert sorted(f["detector"] for f in found) == ["aws_access_key_id", "aws_access_key_id"]


def test_failed_calls_have_error_status_blocked_calls_do_not(scanner: Scanner) -> None:
    rec = TraceRecorder(scanner, None)
    failed = Exchange(body={"model": "m", "max_tokens": 5, "messages": []}, api="anthropic_messages")
    failed.status = 404
    failed.response_body = orjson.dumps({"type": "error", "error": {"type": "not_found_error", "message": "no model"}})
    sp, attrs = _span(rec.build(failed)[1])
    assert sp.status.code == STATUS_ERROR and attrs["error.type"] == "not_found_error"
    in_stream = Exchange(body={"model": "m", "stream": True, "input": "hi"}, api="openai_responses")
    in_stream.status = 200
    in_stream.stream_data = [orjson.dumps({"type": "response.failed", "sequence_number": 3, "response": {
        "id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": "boom"}}})]
    sp, attrs = _span(rec.build(in_stream)[1])
    assert sp.status.code == STATUS_ERROR and attrs["error.type"] == "server_error"
    refused = Exchange(body={"model": "m", "input": "ignore previous instructions"}, api="embeddings",
                       outcome=Outcome(blocked=True, blocked_rail="self check input"))
    refused.status = 400  # embeddings answer a refusal with the blocked error (refusal_status 400)
    sp, attrs = _span(rec.build(refused)[1])
    assert sp.status.code != STATUS_ERROR and "error.type" not in attrs and attrs["railcar.rails.blocked"] is True


def test_conversation_ids_and_previous_response_id_join_the_trace(scanner: Scanner) -> None:
    rec = TraceRecorder(scanner, None)
    first = Exchange(body={"model": "m", "input": "plan the release"}, api="openai_responses")
    first.response_body = orjson.dumps({"id": "resp_A", "object": "response", "model": "m", "status": "completed",
                                        "output": []})
    key1, value1 = rec.build(first)
    second = Exchange(body={"model": "m", "input": "and then?", "previous_response_id": "resp_A"},
                      api="openai_responses")
    key2, value2 = rec.build(second)
    assert key1 == key2 and _span(value2)[1]["gen_ai.conversation.id"] == key1.decode()
    named = Exchange(body={"model": "m", "input": "x", "conversation": {"id": "conv_9"}}, api="openai_responses")
    assert _span(rec.build(named)[1])[1]["gen_ai.conversation.id"] == "conv_9"
    header = Exchange(body={"model": "m", "messages": []}, headers={"x-session-id": "sess-4"})
    assert _span(rec.build(header)[1])[1]["gen_ai.conversation.id"] == "sess-4"


async def test_recording_runs_off_the_event_loop(scanner: Scanner, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 15 item 2: reassembly, redaction and encoding run in the recorder's thread; publish runs on the loop.
    where: dict[str, set[str]] = {"scan": set(), "encode": set(), "publish": set()}

    class Watching:
        detectors = scanner.detectors
        key = scanner.key

        def scan_text(self, text: str, path: str = "$"):
            where["scan"].add(threading.current_thread().name)
            return scanner.scan_text(text, path)

        def __getattr__(self, name: str):
            return getattr(scanner, name)

    encode = otlp.encode_call

    def watched_encode(*a: Any, **kw: Any) -> bytes:
        where["encode"].add(threading.current_thread().name)
        return encode(*a, **kw)

    monkeypatch.setattr(otlp, "encode_call", watched_encode)
    published: list[bytes] = []

    def publish(key: bytes, value: bytes) -> None:
        where["publish"].add(threading.current_thread().name)
        published.append(value)

    rec = TraceRecorder(Watching(), publish, registry=CollectorRegistry())
    await rec.start()
    loop_thread = threading.current_thread().name
    for api in ("openai_chat", "openai_responses", "anthropic_messages"):
        ex = Exchange(body={"model": "m", "max_tokens": 5, "input": "hi", "messages": [{"role": "user",
                                                                                         "content": "hi"}]}, api=api)
        ex.stream_data = _pem_stream(api, ["a", "b"])
        rec.exchange_finished(ex)
    await rec.drain()
    await rec.close()
    assert len(published) == 3 and rec.stats["recorded"] == 3
    assert dict(rec.threads) == {"railcar-recorder": 3}
    assert where["scan"] == {"railcar-recorder"} and where["encode"] == {"railcar-recorder"}
    assert where["publish"] == {loop_thread} and loop_thread != "railcar-recorder"


async def test_a_full_queue_drops_and_counts_without_waiting(scanner: Scanner) -> None:
    registry = CollectorRegistry()
    rec = TraceRecorder(scanner, lambda k, v: None, max_pending=2, registry=registry)
    for _ in range(5):  # the worker is not started: nothing drains the queue
        rec.exchange_finished(Exchange(body={"model": "m", "messages": []}))
    assert rec.stats["dropped"] == 3
    assert registry.get_sample_value("railcar_recorder_dropped_total") == 3
    await rec.start()
    await rec.drain()
    await rec.close()
    assert rec.stats["recorded"] == 2
    await asyncio.sleep(0)
