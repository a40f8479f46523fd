"""railcar.streams.processor: the consumer's logic without Kafka (decode, keep contents, scan, rebuild chains)."""

from __future__ import annotations

import orjson
import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData
from prometheus_client import CollectorRegistry

from railcar.core.exchange import Exchange
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams.fileset import open_fileset
from railcar.streams.processor import SecurityProcessor, consumer_metrics, iter_findings
from railcar.streams.recorder import TraceRecorder
from railcar.streams.schema import chain_ref, content_ref


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(key=b"k" * 32)


def test_railcar_hashes_are_not_scanned_but_content_is(scanner, tmp_path) -> None:
    # bench/pipeline.py's plain text gave 2 payment_card findings: a content ref (16 hex of SHA-256) that happened
    # to be 16 decimal digits with a card prefix and a valid Luhn digit, scanned as the `ref` of its
    # `railcar.content` event and inside `railcar.input.messages`. Find such a text, then record and consume it.
    text = next(t for t in (f"deploy rollback ledger {i}" for i in range(2_000_000))
                if content_ref(t).isdigit() and scanner.scan_text(content_ref(t), "$"))
    assert [m.detector for m in scanner.scan_text(content_ref(text), "$")] == ["payment_card"]
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-a"))
    card = "4539 1488 0343 6467"  # a real PAN shape (Luhn-valid Visa) in the content is still found
    values = []
    for content in (text, f"pay with {card} please"):
        ex = Exchange(body={"model": "m", "messages": [{"role": "user", "content": content}]})
        values.append(rec.build(ex)[1])
    assert content_ref(text).encode() in values[0]
    found = iter_findings(values[:1], scanner, open_fileset(str(tmp_path / "a")), "w")
    assert found == []
    found = iter_findings(values, scanner, open_fileset(str(tmp_path / "b")), "w")
    assert [f["detector"] for f in found] == ["payment_card"]


def test_messages_rebuilds_a_deduped_conversation_and_lookups_do_not_evict(scanner, tmp_path) -> None:
    # The recorder publishes each text once per trace and later spans reference earlier messages by a chain hash;
    # SecurityProcessor.messages walks the chain back. Asking about an unknown trace used to create (and, at the
    # LRU bound, evict a real trace for) an empty entry.
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-a"))
    # the trace id comes from the first two messages, as in a real agent's system + user opening
    turn1 = [{"role": "system", "content": "You are a travel agent."}, {"role": "user", "content": "plan the trip"}]
    turn2 = turn1 + [{"role": "assistant", "content": "where to?"}, {"role": "user", "content": "Lisbon"}]
    values = []
    for msgs, answer in ((turn1, "where to?"), (turn2, "booked")):
        ex = Exchange(body={"model": "m", "messages": msgs})
        ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {"content": answer}}]})
        values.append(rec.build(ex))
    assert values[0][0] == values[1][0]  # one conversation, one trace
    proc = SecurityProcessor(scanner, open_fileset(str(tmp_path)), "w", max_traces=1,
                             metrics=consumer_metrics(CollectorRegistry()))
    for _, v in values:
        proc.process(v)
    (_, span), = otlp.iter_spans(otlp.decode(values[1][1]))
    attrs = otlp.attributes_of(span.attributes)
    assert "railcar.input.prefix" in attrs  # turn 2 only lists the messages after turn 1's
    chain = attrs["railcar.input.prefix"]
    for e in orjson.loads(attrs["railcar.input.messages"]):
        chain = chain_ref(chain, e)
    chain = chain_ref(chain, orjson.loads(attrs["railcar.output.message"]))
    want = [(m["role"], m["content"]) for m in turn2] + [("assistant", "booked")]
    assert [(m["role"], m["content"]) for m in proc.messages(span.trace_id, chain)] == want
    assert proc.messages(b"\x01" * 16, chain) == []
    assert [(m["role"], m["content"]) for m in proc.messages(span.trace_id, chain)] == want


def test_content_memory_is_bounded_in_characters(scanner, tmp_path) -> None:
    # Each trace's texts are kept to rebuild deduped conversations; a byte budget (not only a trace count) bounds
    # them, forgetting the least recently seen traces first, and scanning still sees every text.
    rec = TraceRecorder(scanner, None, otlp.make_resource(agent_id="agent-a"))
    proc = SecurityProcessor(scanner, open_fileset(str(tmp_path)), "w", max_text_chars=30_000,
                             metrics=consumer_metrics(CollectorRegistry()))
    traces = []
    for i in range(6):
        big = f"conversation {i} " + "lorem ipsum " * 1000  # ~12k characters per trace
        ex = Exchange(body={"model": "m", "messages": [{"role": "system", "content": f"agent {i}"},
                                                       {"role": "user", "content": big}]})
        ex.response_body = orjson.dumps({"model": "m", "choices": [{"index": 0, "message": {
            "content": "key AKIALALEMEL33243OLIB" if i == 0 else "ok"}}]})
        key, value = rec.build(ex)
        proc.process(value)
        traces.append(next(iter(otlp.iter_spans(otlp.decode(value))))[1].trace_id)
    assert proc.text_chars <= 30_000
    assert proc.text_chars == sum(len(t) for tr in proc._traces._items.values() for t in tr.texts.values())
    assert traces[0] not in proc._traces and traces[-1] in proc._traces  # oldest forgotten, newest kept
    assert [f.detector for f in proc.agg.findings()] == ["aws_access_key_id"]  # scanned before it was forgotten


def test_strings_inside_kvlist_attributes_are_scanned(scanner, tmp_path) -> None:
    # an OTLP span from any producer on the trace topic may carry a kvlist (an object) as an attribute value: its
    # strings are scanned like the rest (they used to be skipped)
    token = "ghp_" + "aZ3kQ9mT2xW7pL4vB8nR1cY6dF0hJ5sG2eKq"
    inner = KeyValueList(values=[KeyValue(key="headers", value=AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="authorization", value=AnyValue(string_value=f"token {token}"))])))])
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat m",
                attributes=[KeyValue(key="http.request", value=AnyValue(kvlist_value=inner))])
    data = TracesData(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]).SerializeToString()
    found = iter_findings([data], scanner, open_fileset(str(tmp_path)), "w")
    assert [(f["detector"], f["location"]["json_path"]) for f in found] == [
        ("github_token", "$.attributes.http.request.headers.authorization")]


class _OneStringAtATime(Scanner):
    """The pre-issue-14 consumer path: one ``scan_text`` per string."""

    def scan_strings(self, items):
        return [self.scan_text(t, p) for p, t in items]


def test_a_span_is_scanned_in_one_pass_with_the_findings_of_one_scan_per_string(tmp_path) -> None:
    """The consumer hands a span's strings to ``Scanner.scan_strings`` at once (issue 14): the findings, their
    locations (in order) are those of scanning each string alone, values at string edges included."""
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from planted_corpus import CONTEXT, GENERATORS

    rng = random.Random(14)
    rec = TraceRecorder(Scanner(key=b"k" * 32, detectors=()), None, otlp.make_resource(agent_id="agent-b"))
    values = []
    for i, det in enumerate(sorted(GENERATORS)):
        v = CONTEXT.get(det, "{v}").format(v=GENERATORS[det](rng))
        args = orjson.dumps({"q": v}).decode()
        ex = Exchange(body={"model": "m", "messages": [
            {"role": "system", "content": v},                       # a whole string
            {"role": "user", "content": f"{i}: please use {v}"},    # at the end
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": args}}]}]})
        ex.response_body = orjson.dumps({"choices": [{"message": {"content": f"{v} noted"}}]})
        values.append(rec.build(ex)[1])
    runs = []
    for k, sc in enumerate((Scanner(key=b"k" * 32), _OneStringAtATime(key=b"k" * 32))):
        proc = SecurityProcessor(sc, open_fileset(str(tmp_path / str(k))), "w",
                                 metrics=consumer_metrics(CollectorRegistry()))
        for v in values:
            proc.process(v)
        runs.append([(f.id, f.detector, f.count, [loc.get("json_path") for loc in f.as_dict()["locations"]])
                     for f in proc.agg.findings()])
    assert sorted(map(repr, runs[0])) == sorted(map(repr, runs[1]))  # findings() orders by time seen
    assert len({f[1] for f in runs[0]}) >= len(GENERATORS) - 2  # nearly every format found, and alike
