"""railcar.streams.otlp: GenAI spans built with the SDK, encoded as OTLP TracesData and decoded back."""

from __future__ import annotations

import random

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from railcar.streams import otlp
from railcar.streams.otlp import CallSpan, build_span, encode, encode_call, make_resource


def _call(**kw) -> otlp.CallSpan:
    base = dict(name="chat gpt-4o", trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
                start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_500_000_000,
                attributes={"gen_ai.operation.name": "chat", "gen_ai.response.finish_reasons": ["stop"],
                            "gen_ai.usage.input_tokens": 12},
                events=[("railcar.content", {"ref": "abcd", "text": "hi"}, 1_700_000_000_100_000_000)])
    base.update(kw)
    return otlp.CallSpan(**base)


def test_roundtrip_and_collector_wire_format() -> None:
    res = otlp.make_resource("railcar", "agent-1", "team-a", environ={})
    value = otlp.encode([otlp.build_span(_call(parent_span_id=0x1122334455667788, error="boom"), res)])
    # kafkaexporter's otlp_proto: TracesData and ExportTraceServiceRequest share the wire format.
    assert ExportTraceServiceRequest.FromString(value).resource_spans[0].scope_spans[0].scope.name == "railcar"
    (r, sp), = list(otlp.iter_spans(otlp.decode(value)))
    assert r == {"service.name": "railcar", "gen_ai.agent.id": "agent-1", "k8s.namespace.name": "team-a"}
    assert sp.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c" and sp.parent_span_id.hex() == "1122334455667788"
    assert sp.kind == sp.SPAN_KIND_CLIENT and sp.status.code == sp.status.STATUS_CODE_ERROR
    assert sp.status.message == "boom" and sp.end_time_unix_nano - sp.start_time_unix_nano == 500_000_000
    attrs = otlp.attributes_of(sp.attributes)
    assert attrs == {"gen_ai.operation.name": "chat", "gen_ai.response.finish_reasons": ["stop"],
                     "gen_ai.usage.input_tokens": 12}
    assert [(e.name, otlp.attributes_of(e.attributes)) for e in sp.events] == [
        ("railcar.content", {"ref": "abcd", "text": "hi"})]


def test_agent_identity_from_pod_environment() -> None:
    res = otlp.make_resource(environ={"POD_NAME": "agent-7d9f", "POD_NAMESPACE": "prod", "HOSTNAME": "h"})
    assert res.attributes["gen_ai.agent.id"] == "agent-7d9f" and res.attributes["k8s.namespace.name"] == "prod"
    assert otlp.make_resource(environ={"HOSTNAME": "h"}).attributes["gen_ai.agent.id"] == "h"


@pytest.mark.parametrize("garbage", [b"", b"\xff\xfe\x00garbage", b"\n\x02\x08\x01", "text"])
def test_decode_rejects_what_is_not_traces(garbage) -> None:
    with pytest.raises(otlp.OTLPDecodeError):
        otlp.decode(garbage)


def test_traceparent() -> None:
    assert otlp.parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    for bad in (None, "", "00-xyz-abc-01", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        assert otlp.parse_traceparent(bad) is None


def test_direct_encoder_is_byte_identical_to_the_sdk_path() -> None:
    rng = random.Random(7)
    res = make_resource("railcar", "agent-é", "ns", environ={"POD_NAME": "p-1"})
    values = ["", "plain", "ünïcødé ✓ 🚀", "x" * 300, True, False, 0, 1, -1, 2**62, -(2**63), 0.0, 0.25, -1e300,
              ["a", ""], [1, 2, 3], [True], [0.5, 1.5], []]
    for i in range(200):
        attrs = {f"k{j}.{rng.random():.3f}": rng.choice(values) for j in range(rng.randrange(0, 8))}
        events = [(rng.choice(["railcar.content", "railcar.redaction", ""]),
                   {f"e{j}": rng.choice(values) for j in range(rng.randrange(0, 4))},
                   rng.choice([0, 1, 1_700_000_000_123_456_789])) for _ in range(rng.randrange(0, 5))]
        call = CallSpan(name=rng.choice(["chat gpt-x", "", "chat ü"]), trace_id=rng.getrandbits(128) or 1,
                        span_id=rng.getrandbits(64) or 1, start_ns=rng.choice([0, 1_700_000_000_000_000_000]),
                        end_ns=rng.choice([0, 1_700_000_000_500_000_000]), attributes=attrs, events=events,
                        parent_span_id=rng.choice([None, rng.getrandbits(64) or 1]),
                        error=rng.choice([None, "", "timeout: upstream"]))
        assert encode_call(call, res) == encode([build_span(call, res)]), i


def test_attribute_values_of_every_kind_decode() -> None:
    """``attributes_of`` (strings on a fast path since issue 14) decodes every ``AnyValue`` kind."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

    kvs = [KeyValue(key="s", value=AnyValue(string_value="x")), KeyValue(key="e", value=AnyValue(string_value="")),
           KeyValue(key="b", value=AnyValue(bool_value=True)), KeyValue(key="i", value=AnyValue(int_value=-3)),
           KeyValue(key="d", value=AnyValue(double_value=0.5)), KeyValue(key="y", value=AnyValue(bytes_value=b"\0")),
           KeyValue(key="a", value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="p"),
                                                                           AnyValue(int_value=1)]))),
           KeyValue(key="k", value=AnyValue(kvlist_value=KeyValueList(values=[
               KeyValue(key="n", value=AnyValue(string_value="q"))]))),
           KeyValue(key="none", value=AnyValue())]
    assert otlp.attributes_of(kvs) == {"s": "x", "e": "", "b": True, "i": -3, "d": 0.5, "y": b"\0",
                                       "a": ["p", 1], "k": {"n": "q"}, "none": None}
    assert [otlp.any_value(kv.value) for kv in kvs[:2]] == ["x", ""]
