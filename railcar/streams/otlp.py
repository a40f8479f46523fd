"""OpenTelemetry spans for model calls (GenAI semantic conventions) and their OTLP protobuf encoding.

One model call is one span of kind CLIENT named ``chat {model}``, built as an opentelemetry-sdk ``ReadableSpan``
and encoded with ``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans``: the record value is an
OTLP ``TracesData`` protobuf (byte-identical to ``ExportTraceServiceRequest``), the encoding the OpenTelemetry
Collector's ``kafkaexporter``/``kafkareceiver`` call ``otlp_proto`` (``../shared/KAFKA.md``). The recorder's hot
path uses :func:`encode_call`, which writes the very same bytes directly from a :class:`CallSpan` (3x cheaper than
building the SDK span and its protobuf objects; equality is tested against the SDK path).

Attribute names follow the OpenTelemetry GenAI semantic conventions
(https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ and the ``gen_ai`` attribute registry):
``gen_ai.operation.name`` (``chat``), ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons`` (string array),
``gen_ai.request.temperature`` / ``max_tokens`` / ``top_p``, ``gen_ai.agent.id`` / ``gen_ai.agent.name``,
``gen_ai.conversation.id``, ``http.response.status_code``, ``error.type``. Railcar's own attributes live under
``railcar.*``; every name and the content and redaction layout are in :mod:`railcar.streams.schema`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace.status import Status, StatusCode

from railcar.streams import schema as S

__all__ = [
    "CallSpan", "OTLPDecodeError", "build_span", "encode", "encode_call", "decode", "make_resource", "any_value",
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
    attrs: dict[str, Any] = {S.SERVICE_NAME: service_name}
    if agent:
        attrs[S.AGENT_ID] = agent
    if env.get("POD_NAME"):
        attrs[S.K8S_POD_NAME] = env["POD_NAME"]
    if ns:
        attrs[S.K8S_NAMESPACE_NAME] = ns
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
    n = 0
    for rs in td.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                if len(sp.trace_id) != 16 or len(sp.span_id) != 8:
                    raise OTLPDecodeError("span with invalid trace_id/span_id length")
                n += 1
    if n == 0:
        raise OTLPDecodeError("TracesData holds no span")
    return td


def any_value(v: AnyValue) -> Any:
    """A Python value from an OTLP ``AnyValue`` (arrays become lists, kvlists dicts, bytes stay bytes)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    return _any_other(v, kind)


def _any_other(v: AnyValue, kind: str | None) -> Any:
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attributes_of(items: Iterable[Any]) -> dict[str, Any]:
    """A dict from repeated OTLP ``KeyValue`` (span, event or resource attributes)."""
    out: dict[str, Any] = {}
    for kv in items:  # the consumer's hottest decoding loop: strings without a call per value
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = v.string_value if kind == "string_value" else _any_other(v, kind)
    return out


def iter_spans(td: TracesData) -> Iterable[tuple[dict[str, Any], PbSpan]]:
    """``(resource_attributes, span)`` for every span in ``td``."""
    for rs in td.resource_spans:
        res = attributes_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for sp in ss.spans:
                yield res, sp


# ---------------------------------------------------------------------------------------------- direct encoder
# The SDK's encoder builds one protobuf object per attribute, value, event and span, then serializes them: ~75 µs
# for a typical Railcar span, a third of the recorder's work per call. ``encode_call`` writes the same
# ``TracesData`` wire bytes directly (protobuf encoding, https://protobuf.dev/programming-guides/encoding/; field
# numbers from opentelemetry-proto ``trace.proto`` / ``common.proto`` / ``resource.proto``), in the order and
# with the presence rules the SDK path produces, so the bytes are identical (``tests/test_otlp.py`` checks it).

_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack


def _varint_slow(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint_slow(n) for n in range(1 << 14)]  # 1- and 2-byte varints: every tag and most lengths


def _varint(n: int) -> bytes:
    return _SMALL[n] if 0 <= n < 16384 else _varint_slow(n)


_LD_TAG = [_SMALL[f << 3 | 2] for f in range(16)]  # length-delimited tags of fields 0..15


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    n = len(payload)
    return _LD_TAG[field] + (_SMALL[n] if n < 16384 else _varint_slow(n)) + payload


def _str(field: int, s: str) -> bytes:
    return _ld(field, s.encode("utf-8", "surrogatepass"))


def _any(v: Any) -> bytes:
    """An ``AnyValue`` payload (oneof: the member is always written, even at its default)."""
    if v.__class__ is str:
        return _str(1, v)
    if v.__class__ is bool:
        return b"\x10" + (b"\x01" if v else b"\x00")
    if v.__class__ is int:
        return b"\x18" + _varint(v)
    if v.__class__ is float:
        return b"\x21" + _pack_double(v)
    if isinstance(v, bytes):
        return _ld(7, v)
    if isinstance(v, (list, tuple)):
        return _ld(5, b"".join(_ld(1, _any(x)) for x in v))
    if v is None:
        return b""
    raise TypeError(f"attribute value of type {type(v).__name__} is not encodable")


def _attrs(field: int, attrs: Mapping[str, Any]) -> bytes:
    return b"".join(_ld(field, _str(1, k) + _ld(2, _any(v))) for k, v in attrs.items())


_RESOURCE_CACHE: dict[int, tuple[Resource, bytes]] = {}


def _resource_field(resource: Resource) -> bytes:
    hit = _RESOURCE_CACHE.get(id(resource))
    if hit is None or hit[0] is not resource:
        body = _ld(1, _attrs(1, resource.attributes))
        if resource.schema_url:
            body += _str(3, resource.schema_url)
        hit = _RESOURCE_CACHE[id(resource)] = (resource, body)
        if len(_RESOURCE_CACHE) > 64:
            _RESOURCE_CACHE.pop(next(iter(_RESOURCE_CACHE)))
    return hit[1]


_SCOPE_FIELD = _ld(1, _str(1, SCOPE.name) + _str(2, SCOPE.version or ""))


def encode_call(call: CallSpan, resource: Resource) -> bytes:
    """OTLP ``TracesData`` bytes for one :class:`CallSpan`, identical to ``encode([build_span(call, resource)])``
    (kind CLIENT, scope ``railcar``, status ERROR with ``call.error`` when set) without building SDK objects.
    Raises ``TypeError`` for an attribute value that is not str, bool, int, float, bytes or a list of those."""
    span = [_ld(1, call.trace_id.to_bytes(16, "big")), _ld(2, call.span_id.to_bytes(8, "big"))]
    if call.parent_span_id:
        span.append(_ld(4, call.parent_span_id.to_bytes(8, "big")))
    if call.name:
        span.append(_str(5, call.name))
    span.append(b"\x30\x03")  # kind = SPAN_KIND_CLIENT
    if call.start_ns:
        span.append(b"\x39" + _pack_fixed64(call.start_ns))
    if call.end_ns:
        span.append(b"\x41" + _pack_fixed64(call.end_ns))
    span.append(_attrs(9, call.attributes))
    for name, attrs, ts in call.events:
        ev = (b"\x09" + _pack_fixed64(ts) if ts else b"") + (_str(2, name) if name else b"") + _attrs(3, attrs)
        span.append(_ld(11, ev))
    span.append(_ld(15, _str(2, call.error) + b"\x18\x02" if call.error else b""))  # status is always set
    # flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, plus IS_REMOTE for a remote (traceparent) parent
    span.append(b"\x85\x01" + _pack_fixed32(0x300 if call.parent_span_id else 0x100))
    scope_spans = _SCOPE_FIELD + _ld(2, b"".join(span))
    return _ld(1, _resource_field(resource) + _ld(2, scope_spans))
