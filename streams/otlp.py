"""OpenTelemetry spans for model calls (GenAI semantic conventions) and their OTLP protobuf encoding.

One model call is one span of kind CLIENT named ``chat {model}``, built as an opentelemetry-sdk ``ReadableSpan``
and encoded with ``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans``: the record value is an
OTLP ``TracesData`` protobuf (byte-identical to ``ExportTraceServiceRequest``), the encoding the OpenTelemetry
Collector's ``kafkaexporter``/``kafkareceiver`` call ``otlp_proto`` (``../shared/KAFKA.md``).

Attribute names follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ and the ``gen_ai`` attribute registry):
``gen_ai.operation.name`` (``chat``), ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons`` (string array),
``gen_ai.request.temperature`` / ``max_tokens`` / ``top_p``, ``gen_ai.agent.id`` / ``gen_ai.agent.name``,
``gen_ai.conversation.id``, ``http.response.status_code``, ``error.type``. Railcar's own attributes live under
``railcar.*`` (see :mod:`streams.recorder` for the content and redaction layout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.status import Status, StatusCode

__all__ = [
    "CallSpan", "OTLPDecodeError", "build_span", "encode", "decode", "make_resource", "any_value",
    "attributes_of", "parse_traceparent", "SCOPE",
]

SCOPE = InstrumentationScope("railcar", "0.1.0")


class OTLPDecodeError(ValueError):
    """A record value is not an OTLP ``TracesData`` protobuf (message says why)."""


@dataclass
class CallSpan:
    """What one span carries, already redacted. Times are Unix epoch nanoseconds; ids are ints
    (``trace_id`` 128-bit, ``span_id``/``parent_span_id`` 64-bit, non-zero). ``events`` is a list of
    ``(name, attributes, time_ns)``. Attribute values: str, bool, int, float or homogeneous sequences of those."""

    name: str
    trace_id: int
    span_id: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    parent_span_id: int | None = None
    error: str | None = None


def make_resource(service_name: str = "railcar", agent_id: str = "", agent_namespace: str = "",
                  environ: Mapping[str, str] | None = None) -> Resource:
    """The sidecar's OpenTelemetry ``Resource``: ``service.name``, the agent identity (``gen_ai.agent.id``;
    default ``POD_NAME`` then ``HOSTNAME``), ``k8s.pod.name`` / ``k8s.namespace.name`` (default
    ``POD_NAMESPACE``) when known. Built without the SDK's environment detectors so it is cheap and stable."""
    env = os.environ if environ is None else environ
    agent = agent_id or env.get("POD_NAME", "") or env.get("HOSTNAME", "")
    ns = agent_namespace or env.get("POD_NAMESPACE", "")
    attrs: dict[str, Any] = {"service.name": service_name}
    if agent:
        attrs["gen_ai.agent.id"] = agent
    if env.get("POD_NAME"):
        attrs["k8s.pod.name"] = env["POD_NAME"]
    if ns:
        attrs["k8s.namespace.name"] = ns
    return Resource(attrs)


def parse_traceparent(value: str | None) -> tuple[int, int] | None:
    """``(trace_id, parent_span_id)`` from a W3C ``traceparent`` header (https://www.w3.org/TR/trace-context/),
    or None when absent or malformed (all-zero ids are invalid per the spec)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        tid, sid = int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None
    return (tid, sid) if tid and sid else None


def build_span(call: CallSpan, resource: Resource) -> ReadableSpan:
    """An SDK ``ReadableSpan`` (kind CLIENT, scope ``railcar``) for ``call``; status ERROR with the description
    ``call.error`` when set."""
    ctx = trace_api.SpanContext(call.trace_id, call.span_id, is_remote=False,
                                trace_flags=trace_api.TraceFlags(trace_api.TraceFlags.SAMPLED))
    parent = (trace_api.SpanContext(call.trace_id, call.parent_span_id, is_remote=True)
              if call.parent_span_id else None)
    events = [Event(name, attrs, ts) for name, attrs, ts in call.events]
    status = Status(StatusCode.ERROR, call.error) if call.error else Status(StatusCode.UNSET)
    return ReadableSpan(name=call.name, context=ctx, parent=parent, resource=resource,
                        attributes=call.attributes, events=events, kind=trace_api.SpanKind.CLIENT,
                        status=status, start_time=call.start_ns, end_time=call.end_ns,
                        instrumentation_scope=SCOPE)


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    """OTLP ``TracesData`` bytes for ``spans`` (``ExportTraceServiceRequest`` has the same wire format)."""
    return encode_spans(spans).SerializeToString()


def decode(data: bytes) -> TracesData:
    """Parse a record value as ``TracesData``. Raises :class:`OTLPDecodeError` when it does not parse or holds
    no span (protobuf accepts many random byte strings, so an empty result is treated as undecodable too)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise OTLPDecodeError(f"value is {type(data).__name__}, not bytes")
    try:
        td = TracesData.FromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError (and sometimes RuntimeError) on garbage
        raise OTLPDecodeError(f"not an OTLP TracesData protobuf: {exc}") from None
    n = sum(len(ss.spans) for rs in td.resource_spans for ss in rs.scope_spans)
    if n == 0:
        raise OTLPDecodeError("TracesData holds no span")
    for rs in td.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if len(sp.trace_id) != 16 or len(sp.span_id) != 8:
                    raise OTLPDecodeError("span with invalid trace_id/span_id length")
    return td


def any_value(v: AnyValue) -> Any:
    """A Python value from an OTLP ``AnyValue`` (arrays become lists, kvlists dicts, bytes stay bytes)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes_of(items: Iterable[Any]) -> dict[str, Any]:
    """A dict from repeated OTLP ``KeyValue`` (span, event or resource attributes)."""
    return {kv.key: any_value(kv.value) for kv in items}


def iter_spans(td: TracesData) -> Iterable[tuple[dict[str, Any], PbSpan]]:
    """``(resource_attributes, span)`` for every span in ``td``."""
    for rs in td.resource_spans:
        res = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                yield res, sp
