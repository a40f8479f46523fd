"""The trace recorder: an ``ExchangeObserver`` that turns finished exchanges into redacted OTLP records.

``exchange_finished`` only appends to a bounded deque (O(1), never blocks the request path); a background task
takes exchanges off it, reassembles the answer (streamed ``stream_data`` chunks or the non-streaming body: content,
tool calls, usage, finish reason, response model and id), redacts every content string with the detector catalog,
builds one span (:mod:`railcar.streams.otlp`) and hands ``(trace id, TracesData bytes)`` to the publisher.

Content layout on the span (all content already redacted; ``ref`` = first 16 hex of SHA-256 of the text):

- event ``railcar.content`` ``{ref, text}``: a text not yet published in this
  trace (message content, tool-call arguments, the request's tool definitions as JSON). Each text is published
  once per trace; later spans reference it by ``ref``.
- ``railcar.input.prefix`` (chain hash): the first request messages are the ones already described by an
  earlier span of the trace (agents resend the whole conversation every turn), so
  only the messages after them are listed in ``railcar.input.messages`` (JSON list of
  ``{"role", "ref", "name"?, "tool_call_id"?, "tool_calls"?: [{"id", "name", "args_ref"}]}``). The chain hash of a
  message list is ``h(parent_chain + json(entry))`` per message, so a consumer rebuilds the list by walking it.
- ``railcar.output.message``: the answer as one such entry, plus ``railcar.request.tools_ref``.
- ``railcar.rails.activated`` (string array, when any) and ``railcar.rails.blocked`` / ``railcar.rails.blocked_rail``
  (only when a rail blocked).
- event ``railcar.redaction`` per redaction note: detector, kind, path, fingerprint, masked_preview (never the value).

Size bound: a span must stay well under the producer's ``[kafka] max_request_size`` (1 MiB by default; Kafka
refuses larger records), yet agents send inline base64 images (one recorded request is 2.78 MB). Every text is
scanned and redacted whole first (notes cover all of it), then a published ``railcar.content`` text longer than
``max_content_bytes`` (64 KiB of UTF-8) keeps only that prefix, and once a span's content texts reach
``max_span_content_bytes`` later texts are published empty; a cut text's event also carries
``truncated: true`` and ``original_length`` (characters of the whole redacted text). Its ``ref`` is the hash of
the whole redacted text, so dedup is unchanged.

Cost per call (the sidecar's CPU): the answer is parsed with one ``orjson.loads`` over all chunks, a text found
clean once is not scanned again in this process (bounded cache of clean texts, never of texts with a match), and
the span is encoded by :func:`railcar.streams.otlp.encode_call`.

The agent identity (``gen_ai.agent.id``) is a resource attribute; the conversation is the trace (the trace id
serves as ``gen_ai.conversation.id``). The trace id is the caller's W3C ``traceparent`` trace id when sent, else derived from the agent id and the
conversation's first message, so one conversation is one trace and all its spans share one Kafka key and
partition (the consumer needs earlier spans of the trace to resolve refs). Dedup state is an LRU over traces.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from typing import Any, Awaitable, Callable

import orjson

from railcar.rails.redaction import redact_text
from railcar.rails.toolcalls import ToolCallAssembler
from railcar.core.exchange import Exchange
from railcar.streams import otlp
from railcar.streams.background import QueueWorker
from railcar.streams.lru import LRU

__all__ = ["TraceRecorder", "reassemble", "start_recording", "content_ref", "chain_ref"]

log = logging.getLogger("railcar.recorder")


def content_ref(text: str) -> str:
    """The reference of a (redacted) text: 16 hex chars of SHA-256 over its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def chain_ref(parent: str, entry: dict[str, Any]) -> str:
    """The chain hash of a message list after appending ``entry`` (16 hex; ``parent`` is ``""`` at the start)."""
    return hashlib.sha256(parent.encode() + orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def reassemble(exchange: Exchange) -> dict[str, Any]:
    """The answer of ``exchange`` as ``{"content": str, "tool_calls": [{"id","name","arguments"}],
    "finish_reasons": [str], "usage": dict | None, "model": str | None, "id": str | None}``.

    Streaming: from the SSE ``data:`` payloads (OpenAI chat.completion.chunk: ``choices[].delta.content``,
    ``delta.tool_calls[]`` merged by ``index``, ``finish_reason``, a final ``usage``); non-JSON payloads and
    ``[DONE]`` are skipped. Non-streaming: ``choices[0].message`` of the body. Never raises on bad upstream data.
    """
    out: dict[str, Any] = {"content": "", "tool_calls": [], "finish_reasons": [], "usage": None, "model": None,
                           "id": None}
    if exchange.stream_data:
        parts: list[str] = []
        append = parts.append
        calls = ToolCallAssembler()
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        usage = None
        finish: list[str] = []
        # [DONE], comments, anything that is not a JSON object is skipped.
        datas = [d for d in exchange.stream_data if d[:1] == b"{" or d.lstrip()[:1] == b"{"]
        try:  # one parse for the whole stream instead of one call per chunk (the well-formed case)
            chunks = loads(b"[" + b",".join(datas) + b"]")
        except JSONDecodeError:  # a bad chunk: parse one by one and skip it
            chunks = []
            for data in datas:
                try:
                    chunks.append(loads(data))
                except JSONDecodeError:
                    continue
        for chunk in chunks:
            if chunk.__class__ is not dict:
                continue
            choices = chunk.get("choices")
            if choices:
                for choice in choices:
                    if choice.__class__ is not dict or choice.get("index", 0) != 0:
                        continue
                    delta = choice.get("delta")
                    if delta:
                        content = delta.get("content")
                        if content.__class__ is str:
                            append(content)
                        tcs = delta.get("tool_calls")
                        if tcs.__class__ is list:
                            try:  # the same assembly the tool rails use (index-less entries included)
                                calls.feed(tcs)
                            except ValueError:
                                pass  # a malformed entry: what came before it is kept
                    fr = choice.get("finish_reason")
                    if fr:
                        finish = [fr]
            u = chunk.get("usage")
            if u.__class__ is dict:
                usage = u
        model = rid = None  # the last non-empty values: read from the end
        for chunk in reversed(chunks):
            if chunk.__class__ is dict:
                model = model or chunk.get("model") or None
                rid = rid or chunk.get("id") or None
                if model and rid:
                    break
        tool_calls = [{"id": c.id or "", "name": c.name, "arguments": c.arguments}
                      for _, c in sorted(calls.calls.items())]
        out.update(content="".join(parts), tool_calls=tool_calls, finish_reasons=finish, usage=usage, model=model,
                   id=rid)
        return out
    if exchange.response_body:
        try:
            body = orjson.loads(exchange.response_body)
        except orjson.JSONDecodeError:
            return out
        if not isinstance(body, dict):
            return out
        out["model"], out["id"] = body.get("model"), body.get("id")
        out["usage"] = body.get("usage") if isinstance(body.get("usage"), dict) else None
        choices = body.get("choices") or []
        if choices and isinstance(choices[0], dict):
            msg = choices[0].get("message") or {}
            out["content"] = msg.get("content") if isinstance(msg.get("content"), str) else ""
            out["tool_calls"] = [{"id": tc.get("id", ""), "name": (tc.get("function") or {}).get("name", ""),
                                  "arguments": (tc.get("function") or {}).get("arguments", "")}
                                 for tc in msg.get("tool_calls") or () if isinstance(tc, dict)]
            if choices[0].get("finish_reason"):
                out["finish_reasons"] = [choices[0]["finish_reason"]]
    return out


MAX_CONTENT_BYTES = 64 * 1024
MAX_SPAN_CONTENT_BYTES = 512 * 1024


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding is at most ``limit`` bytes (never splits a character)."""
    if limit <= 0:
        return ""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _text_of(content: Any) -> str:
    """Message content as text: strings as is, content-part lists as compact JSON (so every part is scanned)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return orjson.dumps(content).decode()


class _Redactor:
    """``redact(text, path) -> (redacted, [note dicts])``: :func:`railcar.rails.redaction.redact_text` over the catalog's
    :class:`railcar.rails.scanner.Scanner`, with a bounded cache of texts found clean."""

    # Texts known clean (nothing matched), so a system prompt or tool list resent by every conversation is scanned
    # once per process, not once per call. Bounded: entries, and only texts up to CLEAN_MAX_CHARS characters.
    CLEAN_ENTRIES = 1024
    CLEAN_MAX_CHARS = 8192

    def __init__(self, scanner: Any) -> None:
        self.scanner = scanner
        self._clean: dict[str, None] = {}

    def __call__(self, text: str, path: str) -> tuple[str, list[dict[str, Any]]]:
        if not text:
            return text, []
        clean = self._clean
        if text in clean:
            return text, []
        # No separate gate() call: scan_text starts with the same literal prefilter and returns at once on a miss.
        red, notes = redact_text(self.scanner, text, path)
        if not notes and len(text) <= self.CLEAN_MAX_CHARS:
            if len(clean) >= self.CLEAN_ENTRIES:
                del clean[next(iter(clean))]  # oldest first
            clean[text] = None
        return red, [_note_dict(n) for n in notes]


def _note_dict(n: Any) -> dict[str, Any]:
    d = n if isinstance(n, dict) else n.as_dict()
    return {"detector": str(d.get("detector", "")), "kind": str(d.get("kind", "")), "path": str(d.get("path", "")),
            "fingerprint": str(d.get("fingerprint", "")),
            "masked_preview": str(d.get("masked_preview", d.get("preview", ""))),
            "confidence": float(d.get("confidence", 0.0) or 0.0), "severity": str(d.get("severity", ""))}


class _TraceState:
    __slots__ = ("refs", "chains")

    def __init__(self) -> None:
        self.refs: set[str] = set()
        self.chains: set[str] = set()


class TraceRecorder(QueueWorker[Exchange]):
    """Builds and publishes one redacted span per finished exchange.

    ``scanner``: a :class:`railcar.rails.scanner.Scanner` (one per process). ``publish(key, value)``: non-blocking sink
    (e.g. :meth:`railcar.streams.producer.Publisher.publish` or the embedded consumer). ``resource``: from
    :func:`railcar.streams.otlp.make_resource`. ``max_pending`` bounds exchanges waiting to be recorded (beyond: dropped
    and counted in ``stats["dropped"]``); ``max_traces`` bounds the dedup state (LRU). ``max_content_bytes`` /
    ``max_span_content_bytes``: the size bound of published texts (module docstring); cut texts are counted in
    ``stats["truncated"]``.
    """

    task_name = "railcar-recorder"

    def __init__(self, scanner: Any, publish: Callable[[bytes, bytes], Any], resource: Any = None, *,
                 agent_id: str = "", max_pending: int = 10000, max_traces: int = 10000,
                 max_content_bytes: int = MAX_CONTENT_BYTES,
                 max_span_content_bytes: int = MAX_SPAN_CONTENT_BYTES) -> None:
        self.max_content_bytes, self.max_span_content_bytes = max_content_bytes, max_span_content_bytes
        self.redact = _Redactor(scanner)
        self.publish = publish
        self.resource = resource if resource is not None else otlp.make_resource(agent_id=agent_id)
        self.agent_id = agent_id or str(self.resource.attributes.get("gen_ai.agent.id", ""))
        super().__init__(max_pending, {"recorded": 0, "errors": 0, "bytes": 0, "truncated": 0})
        self._traces: LRU[int, _TraceState] = LRU(max_traces, _TraceState)

    # ------------------------------------------------------------ ExchangeObserver
    def exchange_finished(self, exchange: Exchange) -> None:
        """Queue ``exchange`` for recording (O(1)); drops and counts when ``max_pending`` are waiting.
        :meth:`close` records what is pending, then stops."""
        self.offer(exchange)

    # ------------------------------------------------------------ lifecycle
    async def drain(self) -> None:
        """Wait until every queued exchange has been recorded (tests, shutdown)."""
        while self._pending:
            await asyncio.sleep(0.005)

    async def _handle(self, exchange: Exchange) -> None:
        try:
            key, value = self.build(exchange)
            self.publish(key, value)
            self.stats["recorded"] += 1
            self.stats["bytes"] += len(value)
        except Exception:  # a bad exchange must not stop recording; never log content
            self.stats["errors"] += 1
            log.exception("trace recording failed for request %s", exchange.request_id)
        await asyncio.sleep(0)  # let requests run between records

    # ------------------------------------------------------------ building
    def _trace_ids(self, exchange: Exchange) -> tuple[int, int | None]:
        tp = otlp.parse_traceparent(exchange.headers.get("traceparent"))
        if tp:
            return tp
        msgs = exchange.body.get("messages") or []
        conv = exchange.headers.get("x-conversation-id") or exchange.headers.get("x-session-id")
        if not conv:
            first = [m for m in msgs[:2] if isinstance(m, dict)]
            # Redacted so the hash input never depends on a raw secret being kept around.
            conv = "|".join(self.redact(_text_of(m.get("content")), "$")[0] for m in first) or exchange.request_id
        digest = hashlib.sha256(f"{self.agent_id}\x00{conv}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:16], "big") or 1, None

    def build(self, exchange: Exchange) -> tuple[bytes, bytes]:
        """``(key, value)`` for one exchange: key the 32-hex trace id, value ``TracesData`` bytes. Updates the
        per-trace dedup state (so call it once per exchange, in order)."""
        trace_id, parent = self._trace_ids(exchange)
        st = self._traces.get(trace_id)
        now = time.time_ns()
        events: list[tuple[str, dict[str, Any], int]] = []
        notes: list[dict[str, Any]] = []

        budget = [self.max_span_content_bytes]

        def ref_of(text: str, path: str) -> str:
            red, found = self.redact(text, path)  # the whole text: notes cover what a cut drops
            r = content_ref(red)
            if r not in st.refs:  # notes travel with the content's first publication only
                st.refs.add(r)
                notes.extend(found)
                ev: dict[str, Any] = {"ref": r, "text": red}
                if len(red) * 4 > self.max_content_bytes or len(red) * 4 > budget[0]:  # maybe over: measure
                    kept = _utf8_prefix(red, min(self.max_content_bytes, budget[0]))
                    if len(kept) < len(red):
                        ev.update(text=kept, truncated=True, original_length=len(red))
                        self.stats["truncated"] += 1
                    budget[0] -= len(kept.encode("utf-8", "surrogatepass"))
                else:
                    budget[0] -= len(red) if red.isascii() else len(red.encode("utf-8", "surrogatepass"))
                events.append(("railcar.content", ev, now))
            return r

        body = exchange.body
        msgs = [m for m in (body.get("messages") or []) if isinstance(m, dict)]
        # Which leading messages an earlier span already described: walk the chain without publishing.
        entries: list[dict[str, Any]] = []
        chain, prefix_chain, prefix_n = "", "", 0
        for i, m in enumerate(msgs):
            entry = self._entry(m, f"$.messages[{i}]", ref_of)
            chain = chain_ref(chain, entry)
            entries.append(entry)
            if chain in st.chains:  # an earlier span described messages[0..i]
                prefix_chain, prefix_n = chain, i + 1
        st.chains.add(chain)
        ans = reassemble(exchange)
        out_entry: dict[str, Any] = {"role": "assistant", "ref": ref_of(ans["content"], "$.output.content")}
        if ans["tool_calls"]:
            out_entry["tool_calls"] = [
                {"id": tc["id"], "name": tc["name"],
                 "args_ref": ref_of(tc["arguments"], f"$.output.tool_calls[{j}].function.arguments")}
                for j, tc in enumerate(ans["tool_calls"])]
        st.chains.add(chain_ref(chain, out_entry))

        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": exchange.model,
            "railcar.input.messages": orjson.dumps(entries[prefix_n:]).decode(),
            "railcar.output.message": orjson.dumps(out_entry).decode(),
        }
        if prefix_n:  # messages[0:prefix_n] are the list whose chain hash is prefix_chain
            attrs["railcar.input.prefix"] = prefix_chain
        if exchange.stream:
            attrs["railcar.request.stream"] = True
        for src, dst in (("temperature", "gen_ai.request.temperature"), ("top_p", "gen_ai.request.top_p"),
                         ("max_tokens", "gen_ai.request.max_tokens"),
                         ("max_completion_tokens", "gen_ai.request.max_tokens")):
            v = body.get(src)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs[dst] = v
        if body.get("tools"):
            attrs["railcar.request.tools_ref"] = ref_of(orjson.dumps(body["tools"]).decode(), "$.tools")
        if ans["model"]:
            attrs["gen_ai.response.model"] = str(ans["model"])
        if ans["id"]:
            attrs["gen_ai.response.id"] = str(ans["id"])
        if ans["finish_reasons"]:
            attrs["gen_ai.response.finish_reasons"] = [str(x) for x in ans["finish_reasons"]]
        usage = ans["usage"] or {}
        for src, dst in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                         ("completion_tokens", "gen_ai.usage.output_tokens")):
            if isinstance(usage.get(src), int):
                attrs[dst] = usage[src]
        if exchange.status is not None:
            attrs["http.response.status_code"] = int(exchange.status)
        outcome = exchange.outcome
        if outcome.activated_rails:
            attrs["railcar.rails.activated"] = [str(r) for r in outcome.activated_rails]
        if outcome.blocked:
            attrs["railcar.rails.blocked"] = True
        if outcome.blocked_rail:
            attrs["railcar.rails.blocked_rail"] = str(outcome.blocked_rail)
        error = None
        if exchange.error:
            error, _ = self.redact(str(exchange.error), "$.error")
            error = _utf8_prefix(error, 4096)
            attrs["error.type"] = error.split(":")[0][:64]
        elif exchange.status and exchange.status >= 400:
            attrs["error.type"] = str(exchange.status)
        # Inline redactions made by the guard on the live stream are findings too.
        notes.extend(n.as_dict() for n in outcome.redactions)
        for n in notes:
            events.append(("railcar.redaction", {f"railcar.redaction.{k}": v for k, v in n.items()}, now))
        span = otlp.CallSpan(
            name=f"chat {exchange.model}".strip(), trace_id=trace_id, span_id=random.getrandbits(64) or 1,
            parent_span_id=parent, start_ns=exchange.started_ns, end_ns=exchange.finished_ns or now,
            attributes=attrs, events=events, error=error)
        value = otlp.encode_call(span, self.resource)  # same bytes as encode([build_span(...)]), ~5x cheaper
        return f"{trace_id:032x}".encode(), value

    def _entry(self, m: dict[str, Any], path: str, ref_of: Callable[[str, str], str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"role": str(m.get("role", "")), "ref": ref_of(_text_of(m.get("content")),
                                                                             f"{path}.content")}
        for k in ("name", "tool_call_id"):
            if isinstance(m.get(k), str):
                entry[k] = m[k]
        if m.get("tool_calls"):
            entry["tool_calls"] = [
                {"id": str(tc.get("id", "")), "name": str((tc.get("function") or {}).get("name", "")),
                 "args_ref": ref_of(_text_of((tc.get("function") or {}).get("arguments")),
                                    f"{path}.tool_calls[{j}].function.arguments")}
                for j, tc in enumerate(m["tool_calls"]) if isinstance(tc, dict)]
        return entry


def start_recording(config: Any, scanner: Any = None) -> tuple[TraceRecorder | None, Callable[[], Awaitable[None]]]:
    """Wire trace recording for ``railcar serve``: returns ``(observer, close)`` to be called inside the running
    event loop's startup (``close`` on shutdown). ``observer`` is None when ``[telemetry] enabled`` is false.

    With ``[kafka] bootstrap_servers`` set, records go to a :class:`railcar.streams.producer.Publisher`; otherwise to the
    embedded in-process consumer (:mod:`railcar.streams.embedded`) that writes the fileset locally. Must be called with
    a running loop (it starts background tasks).
    """
    tel = config.telemetry
    if not tel.enabled:
        async def _noop() -> None:
            return None
        return None, _noop
    if scanner is None:
        from railcar.rails.scanner import scanner_from_config
        scanner = scanner_from_config(config.detection)
    resource = otlp.make_resource(tel.service_name, tel.agent_id, tel.agent_namespace)
    if config.kafka.bootstrap_servers:
        from railcar.streams.producer import Publisher
        sink: Any = Publisher(config.kafka, tel)
    else:
        from railcar.streams.embedded import EmbeddedPipeline
        sink = EmbeddedPipeline(config, scanner=scanner)
    # Keep a span's texts to half the largest record Kafka takes: attributes, notes and framing need the rest.
    span_budget = min(MAX_SPAN_CONTENT_BYTES, config.kafka.max_request_size // 2)
    recorder = TraceRecorder(scanner, sink.publish, resource, max_pending=tel.queue_size,
                             max_content_bytes=min(MAX_CONTENT_BYTES, span_budget),
                             max_span_content_bytes=span_budget)
    loop = asyncio.get_running_loop()
    starting = loop.create_task(sink.start())
    loop.create_task(recorder.start())

    async def close() -> None:
        await starting
        await recorder.close()
        await sink.close()

    return recorder, close
