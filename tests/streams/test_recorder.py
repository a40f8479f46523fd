"""railcar.streams.recorder: redacted spans from finished exchanges, reassembly, per-conversation content dedup."""

from __future__ import annotations

import time

import orjson
import pytest
from kafka_support import RECORDED

from railcar.core.exchange import Exchange, Outcome, RedactionNote
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.recorder import TraceRecorder

AWS = "AKIAIOSFODNN7EXAMPLF"  # shape of an AWS access key id
EMAIL = "jane.roe@example-corp.com"


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"k" * 32)


def _chunk(delta: dict, finish=None, **extra) -> bytes:
    return orjson.dumps({"id": "c1", "model": "m-2024", "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def _span(value: bytes):
    td = otlp.decode(value)
    (res, sp), = list(otlp.iter_spans(td))
    return res, sp, otlp.attributes_of(sp.attributes)


def test_span_follows_genai_conventions_and_redacts(scanner: Scanner) -> None:
    out: list = []
    rec = TraceRecorder(scanner, lambda k, v: out.append((k, v)), otlp.make_resource(agent_id="agent-7"))
    ex = Exchange(body={"model": "gpt-x", "stream": True, "temperature": 0.2,
                        "messages": [{"role": "user", "content": f"my key is {AWS}, mail {EMAIL}"}]},
                  headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                  outcome=Outcome(activated_rails=["self check input"], blocked=False))
    ex.stream_data = [_chunk({"content": f"Stored {AWS}."}, finish="stop"),
                      orjson.dumps({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})]
    ex.status = 200
    key, value = rec.build(ex)
    assert AWS.encode() not in value and EMAIL.encode() not in value
    assert key == b"0af7651916cd43dd8448eb211c80319c"
    res, sp, attrs = _span(value)
    assert res["gen_ai.agent.id"] == "agent-7"
    assert sp.name == "chat gpt-x" and sp.parent_span_id == bytes.fromhex("b7ad6b7169203331")
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "gpt-x"
    assert attrs["gen_ai.response.model"] == "m-2024" and attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.usage.input_tokens"] == 9 and attrs["gen_ai.usage.output_tokens"] == 4
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["railcar.rails.activated"] == ["self check input"] and "railcar.rails.blocked" not in attrs
    texts = [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.content"]
    assert any("[REDACTED:aws_access_key_id:" in t["text"] for t in texts)
    notes = [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.redaction"]
    detectors = {n["railcar.redaction.detector"] for n in notes}
    assert {"aws_access_key_id", "email_address"} <= detectors
    assert {n["railcar.redaction.path"] for n in notes} >= {"$.messages[0].content", "$.output.content"}


def test_twenty_turns_publish_only_new_content(scanner: Scanner) -> None:
    out: list = []
    rec = TraceRecorder(scanner, lambda k, v: out.append((k, v)), otlp.make_resource(agent_id="a"))
    messages = [{"role": "system", "content": "You are a careful assistant. " * 20}]
    new_sizes = []
    for turn in range(20):
        # Typical agent turn: a short question, a longer answer (~0.4 KB + ~1.2 KB).
        user = f"Turn {turn}: please summarise section {turn} of the report in detail. " * 6
        answer = f"Section {turn} says the numbers went up by {turn} percent, mostly in Q{turn % 4 + 1}. " * 16
        messages.append({"role": "user", "content": user})
        ex = Exchange(body={"model": "m", "messages": list(messages)})
        ex.response_body = orjson.dumps({"id": f"r{turn}", "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}]})
        key, value = rec.build(ex)
        out.append((key, value))
        messages.append({"role": "assistant", "content": answer})
        new_sizes.append(len(user) + len(answer) + (len(messages[0]["content"]) if turn == 0 else 0))
    assert len({k for k, _ in out}) == 1  # one conversation, one trace, one key
    for (_, value), new in zip(out, new_sizes):
        # + a fixed ~130 bytes: the semconv attributes every span carries (provider, API type, conversation id)
        assert len(value) <= 1.5 * new + 160, (len(value), new)
    # The last span lists only the new user message after a prefix covering the whole history.
    _, _, attrs = _span(out[-1][1])
    assert attrs["railcar.input.prefix"] and len(orjson.loads(attrs["railcar.input.messages"])) == 1


async def test_observer_never_blocks_and_records_in_background(scanner: Scanner) -> None:
    out: list = []
    rec = TraceRecorder(scanner, lambda k, v: out.append((k, v)), max_pending=3)
    await rec.start()
    for i in range(5):  # returns at once: the work is the worker thread's, and a full queue drops
        rec.exchange_finished(Exchange(body={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}))
    await rec.drain()
    await rec.close()
    # the worker may take items while they are offered, so how many of the 5 overflowed the 3 slots varies
    assert rec.stats["recorded"] + rec.stats["dropped"] == 5 and rec.stats["recorded"] >= 3
    assert len(out) == rec.stats["recorded"]


def test_inline_image_request_is_bounded_under_the_record_limit(scanner: Scanner) -> None:
    # The recorded Groq request with an inline base64 image (2.78 MB): its span must fit in a 1 MiB Kafka record,
    # and a secret beyond the kept prefix is still redacted (noted, never published).
    with RECORDED.open("rb") as fh:
        rec_ = next(orjson.loads(line) for line in fh if b"image-as-binary-content-input" in line[:400])
    body = dict(rec_["request"])
    assert len(orjson.dumps(body)) > 2_000_000
    body["messages"] = [*body["messages"], {"role": "user", "content": "x" * 100_000 + f" key {AWS} end"}]
    out: list = []
    rec = TraceRecorder(scanner, lambda k, v: out.append((k, v)))
    _, value = rec.build(Exchange(body=body))
    assert len(value) < 1024 * 1024 // 2 and AWS.encode() not in value
    _, sp, _ = _span(value)
    contents = [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.content"]
    cut = [c for c in contents if c.get("truncated")]
    assert len(cut) == 2 and rec.stats["truncated"] == 2
    for c in cut:
        assert len(c["text"].encode()) <= 64 * 1024 and c["original_length"] > len(c["text"])
    notes = [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.redaction"]
    assert any(n["railcar.redaction.detector"] == "aws_access_key_id" for n in notes)


def test_span_content_budget_caps_many_large_texts(scanner: Scanner) -> None:
    rec = TraceRecorder(scanner, lambda k, v: None, max_content_bytes=64 * 1024, max_span_content_bytes=200_000)
    msgs = [{"role": "user", "content": f"{i} " + "é" * 50_000} for i in range(20)]  # 20 x ~100 KB of UTF-8
    _, value = rec.build(Exchange(body={"model": "m", "messages": msgs}))
    assert 200_000 < len(value) < 200_000 + 20_000
    _, sp, _ = _span(value)
    texts = [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.content"]
    assert sum(len(t["text"].encode()) for t in texts) <= 200_000
    assert all(t["truncated"] and t["original_length"] == 50_000 + len(f"{i} ") for i, t in enumerate(texts[:20]))


def test_text_known_clean_is_scanned_once(scanner: Scanner) -> None:
    calls: list[str] = []

    class Counting:
        detectors = scanner.detectors

        def gate(self, text: str) -> bool:
            calls.append(text)
            return scanner.gate(text)

        def scan_text(self, text: str, path: str = "$"):  # the recorder scans without a separate gate() pass
            calls.append(text)
            return scanner.scan_text(text, path)

        def __getattr__(self, name: str):
            return getattr(scanner, name)

    rec = TraceRecorder(Counting(), lambda k, v: None)
    system = "You are a careful assistant for ticket 4539 and order 12. " * 10
    for i in range(5):  # five conversations sharing the system prompt, one leaking a key
        user = f"question {i}" + (f" key {AWS}" if i == 2 else "")
        _, value = rec.build(Exchange(body={"model": "m", "messages": [{"role": "system", "content": system},
                                                                        {"role": "user", "content": user}]}))
        assert AWS.encode() not in value
    assert calls.count(system) == 1
    assert sum(1 for c in calls if AWS in c) >= 1  # a text with a secret is never cached as clean


def _notes(sp) -> list[dict]:
    return [otlp.attributes_of(e.attributes) for e in sp.events if e.name == "railcar.redaction"]


def test_every_string_of_the_span_is_redacted(scanner: Scanner) -> None:
    # Not only contents: a secret in the model, a role, a name, an id or the error is never published either, and
    # each is noted where it was.
    rec = TraceRecorder(scanner, lambda k, v: None)
    leak = f"x {AWS}"
    call = {"id": leak, "type": "function", "function": {"name": leak, "arguments": "{}"}}
    ex = Exchange(body={"model": leak, "messages": [
        {"role": leak, "name": leak, "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": leak, "content": "done"}]})
    ex.response_body = orjson.dumps({"id": leak, "model": leak, "choices": [
        {"index": 0, "finish_reason": leak, "message": {"role": "assistant", "content": "ok", "tool_calls": [call]}}]})
    ex.error = f"upstream said {AWS}"
    _, value = rec.build(ex)
    assert AWS.encode() not in value
    _, sp, attrs = _span(value)
    assert sp.name.startswith("chat x [REDACTED:aws_access_key_id:")
    paths = {n["railcar.redaction.path"] for n in _notes(sp)}
    assert paths >= {"$.model", "$.messages[0].role", "$.messages[0].name", "$.messages[1].tool_calls[0].id",
                     "$.messages[1].tool_calls[0].function.name", "$.messages[2].tool_call_id", "$.output.id",
                     "$.output.model", "$.output.finish_reasons[0]", "$.output.tool_calls[0].id",
                     "$.output.tool_calls[0].function.name", "$.error"}


def test_entry_field_notes_go_with_the_span_that_lists_the_entry(scanner: Scanner) -> None:
    out: list = []
    rec = TraceRecorder(scanner, lambda k, v: out.append(v))
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "name": f"x {AWS}", "content": "first"}]
    for turn in range(2):
        ex = Exchange(body={"model": "m", "messages": list(msgs)})
        ex.response_body = orjson.dumps({"choices": [{"index": 0, "message": {"content": f"answer {turn}"}}]})
        out.append(rec.build(ex)[1])
        msgs += [{"role": "assistant", "content": f"answer {turn}"}, {"role": "user", "content": f"next {turn}"}]
    first, second = (_span(v)[1] for v in out)
    assert [n["railcar.redaction.path"] for n in _notes(first)] == ["$.messages[1].name"]
    assert _notes(second) == []  # messages[1] is in the prefix: described (and noted) by the first span


def test_guard_notes_of_the_recorded_answer_are_not_doubled(scanner: Scanner) -> None:
    # The inline hold-back noted what it replaced in the answer the client got; the recorder redacts the same
    # upstream text itself: one note per value, so one finding. A value only the guard saw (choice 1) is kept.
    fp = scanner.scan_text(AWS)[0].fingerprint
    other = RedactionNote("github_token", "secret", "$.choices[1].delta.content", "f" * 16, "ghp_****", 0.9, "high")
    seen = RedactionNote("aws_access_key_id", "secret", "$.choices[0].delta.content", fp, "AKIA****", 0.9, "high")
    ex = Exchange(body={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                  outcome=Outcome(redactions=[seen, other]))
    ex.stream_data = [_chunk({"content": f"Stored {AWS}."}, finish="stop")]
    _, value = TraceRecorder(scanner, lambda k, v: None).build(ex)
    _, sp, _ = _span(value)
    got = sorted((n["railcar.redaction.detector"], n["railcar.redaction.path"]) for n in _notes(sp))
    assert got == [("aws_access_key_id", "$.output.content"), ("github_token", "$.choices[1].delta.content")]


def test_conversation_without_system_prompt_stays_one_trace(scanner: Scanner) -> None:
    # The first answer joins the history from the second turn on: it must not move the conversation to a new trace
    # (whose spans could not reference the first one's contents).
    rec = TraceRecorder(scanner, lambda k, v: None)
    msgs: list[dict] = [{"role": "user", "content": "plan the release"}]
    keys, prefixes = [], []
    for turn in range(3):
        ex = Exchange(body={"model": "m", "messages": list(msgs)})
        ex.response_body = orjson.dumps({"choices": [{"index": 0, "message": {"content": f"step {turn}"}}]})
        key, value = rec.build(ex)
        keys.append(key)
        prefixes.append(_span(value)[2].get("railcar.input.prefix"))
        msgs += [{"role": "assistant", "content": f"step {turn}"}, {"role": "user", "content": f"and then {turn}?"}]
    assert len(set(keys)) == 1
    assert prefixes[0] is None and all(prefixes[1:])
