"""The trace recorder: an ``ExchangeObserver`` that turns finished exchanges of any wire API into redacted OTLP
records, off the proxy's event loop.

``exchange_finished`` (on the loop) only appends to a bounded queue (O(1), never blocks the request path; when
``max_pending`` exchanges wait, the exchange is dropped and counted in ``stats["dropped"]`` and
``railcar_recorder_dropped_total``). One worker thread (:class:`railcar.streams.background.ThreadQueueWorker`,
named ``railcar-recorder``) takes exchanges off it and does all the work: it reassembles the answer with the
exchange's codec (:func:`railcar.streams.answer.reassemble`, ``CODECS[exchange.api]``), lists the request's messages
(:func:`railcar.streams.conversation.request_messages`), redacts every string the span carries (contents, and the
roles, names, ids, models, attributes and error around them) with the detector catalog, builds one span
(:mod:`railcar.streams.otlp`) in the layout of :mod:`railcar.streams.schema` and encodes it. The encoded
``(trace id, TracesData bytes)`` goes back to the loop (one ``call_soon_threadsafe`` per batch of finished
records) where ``publish`` is called as before, so the publisher's interface and thread model are unchanged.
:attr:`TraceRecorder.threads` counts the exchanges built per thread name (how a test sees where the work ran).

Redaction: each value redacted is noted once in the span; the guard's inline notes of the same answer text are not
repeated. What a block withheld from the client is redacted too: in the answer of a stream that was blocked,
failed or abandoned, a value cut short (a PEM key without its END line, an open value prefix the hold-back held)
is redacted from its opening to the end of the text, and an unterminated key opening is redacted in any text
(:mod:`railcar.streams.withheld`).

Attributes (OpenTelemetry GenAI conventions, https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/):
the codec's :meth:`~railcar.codecs.base.Codec.span_attributes` (``gen_ai.provider.name``, ``gen_ai.operation.name``,
``gen_ai.request.*``, ``gen_ai.response.*``, ``gen_ai.usage.*``, ``openai.*``), ``server.address`` /
``server.port`` from ``exchange.upstream_url`` (the port the URL names, else the scheme's default),
``http.response.status_code``, and ``gen_ai.conversation.id``: the Responses ``conversation`` the request names,
else a conversation header the agent sent (``x-conversation-id``, ``x-session-id``, ``x-thread-id``,
``conversation-id``), else the trace id (the trace is the conversation). ``previous_response_id`` is not used as
the id (it changes every turn): it joins the trace of the response it continues. Span name
``"{gen_ai.operation.name} {gen_ai.request.model}"``. Status ERROR (and ``error.type``) when the call failed: a
transport failure or disconnect (``exchange.error``), the provider's error (an error body or event: its type or
code), or HTTP status >= 400 (the status); a guardrail block is a decision, not a failure
(``railcar.rails.blocked``), so a blocked call has no error status unless its transport failed.

Size bound: a span must stay well under the producer's ``[kafka] max_request_size`` (1 MiB by default; Kafka
refuses larger records), yet agents send inline base64 images (one recorded request is 2.78 MB). Every text is
scanned and redacted whole first (notes cover all of it), then a published ``railcar.content`` text longer than
``max_content_bytes`` (64 KiB of UTF-8) keeps only that prefix, and once a span's content texts reach
``max_span_content_bytes`` later texts are published empty; a cut text's event also carries
``truncated: true`` and ``original_length`` (characters of the whole redacted text). Its ``ref`` is the hash of
the whole redacted text, so dedup is unchanged.

Cost per call (the sidecar's CPU, in the worker thread): the answer is parsed with one ``orjson.loads`` over all
chunks, a text found clean once is not scanned again in this process (bounded cache of clean texts, never of texts
with a match), and the span is encoded by :func:`railcar.streams.otlp.encode_call`.

Trace ids: the caller's W3C ``traceparent`` trace id when sent, else derived from the agent id and the
conversation id above, else from the conversation's opening messages (its system prompt and first message), so one
conversation is one trace and all its spans share one Kafka key and partition (the consumer needs earlier spans of
the trace to resolve refs). Dedup state is an LRU over traces.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, CollectorRegistry

from railcar.core import semconv
from railcar.core.exchange import Exchange, Outcome, RedactionNote
from railcar.core.jsonpath import key_path
from railcar.rails.redaction import redact_escaped, redact_text
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams import schema as S
from railcar.streams.answer import codec_of, reassemble
from railcar.streams.background import ThreadQueueWorker, drop_counter
from railcar.streams.conversation import RequestCall, RequestMessage, request_messages
from railcar.streams.lru import LRU
from railcar.streams.withheld import Withheld

__all__ = ["TraceRecorder", "MAX_CONTENT_BYTES", "MAX_SPAN_CONTENT_BYTES", "recorder_metrics"]

log = logging.getLogger("railcar.recorder")

MAX_CONTENT_BYTES = 64 * 1024
MAX_SPAN_CONTENT_BYTES = 512 * 1024

# headers an agent framework names its conversation with (lowercase, as the proxy stores them)
CONVERSATION_HEADERS = ("x-conversation-id", "x-session-id", "x-thread-id", "conversation-id")
# attribute -> the JSON path its redaction notes name (the request or answer field it comes from)
_ATTR_PATHS = {S.REQUEST_MODEL: "$.model", S.RESPONSE_MODEL: "$.output.model", S.RESPONSE_ID: "$.output.id",
               S.RESPONSE_FINISH_REASONS: "$.output.finish_reasons", semconv.CONVERSATION_ID: "$.conversation"}
_DEFAULT_PORTS = {"http": 80, "https": 443}

def recorder_metrics(registry: CollectorRegistry = REGISTRY) -> dict[str, Any]:
    """The recorder's Prometheus metrics in ``registry``: ``dropped`` (``railcar_recorder_dropped_total``, exchanges
    not recorded because the queue was full)."""
    return {"dropped": drop_counter("railcar_recorder_dropped", "Finished exchanges not recorded because the "
                                    "recorder's queue was full.", registry)}


def _utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding is at most ``limit`` bytes (never splits a character)."""
    if limit <= 0:
        return ""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _Redactor:
    """``redact(text, path, cut=False) -> (redacted, notes)``: :func:`railcar.rails.redaction.redact_text` over the
    catalog's :class:`railcar.rails.scanner.Scanner`, then :class:`railcar.streams.withheld.Withheld` (``cut``: the
    text is the answer of a stream that did not end normally), with a bounded cache of texts found clean."""

    # Texts known clean (nothing matched), so a system prompt or tool list resent by every conversation is scanned
    # once per process, not once per call. Bounded: entries, and only texts up to CLEAN_MAX_CHARS characters.
    CLEAN_ENTRIES = 1024
    CLEAN_MAX_CHARS = 8192

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self.withheld = Withheld(scanner)
        self._clean: dict[str, None] = {}

    def __call__(self, text: str, path: str, cut: bool = False) -> tuple[str, list[RedactionNote]]:
        if not text:
            return text, []
        clean = self._clean
        if text in clean and not cut:
            return text, []
        # No separate gate() call: scan_text starts with the same literal prefilter and returns at once on a miss.
        red, notes = redact_text(self.scanner, text, path)
        red, hidden = redact_escaped(self.scanner, red, path)  # what JSON escapes spell (tool arguments)
        notes += hidden
        red, tail = self.withheld.redact(red, path, cut)
        if tail is not None:
            notes = [*notes, tail]
        elif not notes and not cut and len(text) <= self.CLEAN_MAX_CHARS:
            if len(clean) >= self.CLEAN_ENTRIES:
                del clean[next(iter(clean))]  # oldest first
            clean[text] = None
        return red, notes


class _TraceState:
    """What earlier spans of one trace published: content refs and chain hashes."""

    __slots__ = ("refs", "chains")

    def __init__(self) -> None:
        self.refs: set[str] = set()
        self.chains: set[str] = set()


class _SpanContent:
    """The content of one span being built: ``railcar.content`` events (each text once per trace, cut to the size
    bound), the redaction notes of what the span publishes, and the span's remaining content budget in bytes.

    Every string of the span is redacted: texts by :meth:`ref_of` (their notes travel with the text's first
    publication in the trace), identifiers (roles, names, ids, models, finish reasons) by :meth:`plain` (their
    notes with each span that carries them). ``answer_found``: ``(detector, fingerprint)`` of every value found in
    the answer's texts, published here or not (what the guard's inline notes may repeat). ``cut``: the answer is
    of a stream that did not end normally (its texts get the withheld-tail treatment)."""

    def __init__(self, recorder: TraceRecorder, trace: _TraceState, now_ns: int, cut: bool = False) -> None:
        self.redact, self.trace, self.now, self.cut = recorder.redact, trace, now_ns, cut
        self.max_content_bytes = recorder.max_content_bytes
        self.budget = recorder.max_span_content_bytes
        self.stats = recorder.stats
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.notes: list[RedactionNote] = []
        self.answer_found: set[tuple[str, str]] = set()

    def _publish(self, text: str, path: str, cut: bool = False) -> tuple[str, list[RedactionNote]]:
        """``(ref of text redacted, what was found in it)``; publishes the text (and its notes) when this trace has
        not seen it yet."""
        red, found = self.redact(text, path, cut)  # the whole text: notes cover what a cut drops
        r = S.content_ref(red)
        if r not in self.trace.refs:  # notes travel with the content's first publication only
            self.trace.refs.add(r)
            self.notes.extend(found)
            self.events.append((S.CONTENT_EVENT, self._content_event(r, red), self.now))
        return r, found

    def ref_of(self, text: str, path: str) -> str:
        """The ref of ``text`` redacted; publishes it (and its notes) when this trace has not seen it yet."""
        return self._publish(text, path)[0]

    def plain(self, value: Any, path: str, notes: list[RedactionNote] | None = None) -> str:
        """``value`` as a redacted string, for an attribute or an entry field; its notes go to ``notes`` (default:
        the span's)."""
        red, found = self.redact(str(value), path)
        (self.notes if notes is None else notes).extend(found)
        return red

    def _content_event(self, ref: str, red: str) -> dict[str, Any]:
        ev: dict[str, Any] = {S.REF: ref, S.TEXT: red}
        limit = min(self.max_content_bytes, self.budget)
        if len(red) * 4 > limit:  # maybe over (a character is at most 4 bytes): measure
            kept = _utf8_prefix(red, limit)
            if len(kept) < len(red):
                ev.update({S.TEXT: kept, S.TRUNCATED: True, S.ORIGINAL_LENGTH: len(red)})
                self.stats["truncated"] += 1
            self.budget -= len(kept.encode("utf-8", "surrogatepass"))
        else:
            self.budget -= _utf8_len(red)
        return ev

    def entry(self, m: RequestMessage) -> tuple[dict[str, Any], list[RedactionNote]]:
        """The message entry of request message ``m``, its texts published, and the notes of its redacted fields
        (the caller keeps them only when the span lists the entry)."""
        notes: list[RedactionNote] = []
        entry: dict[str, Any] = {"role": self.plain(m.role, f"{m.path}.role", notes),
                                 S.REF: self.ref_of(m.text, m.text_path)}
        if m.name is not None:
            entry["name"] = self.plain(m.name, f"{m.path}.name", notes)
        if m.tool_call_id is not None:
            entry["tool_call_id"] = self.plain(m.tool_call_id, f"{m.path}.tool_call_id", notes)
        if m.tool_calls:
            entry["tool_calls"] = [self._call_entry(c, notes) for c in m.tool_calls]
        return entry, notes

    def answer_entry(self, ans: dict[str, Any]) -> dict[str, Any]:
        """The message entry of the reassembled answer (:func:`railcar.streams.answer.reassemble`): ``ref`` of its
        text, ``reasoning_ref`` / ``refusal_ref`` when it has those, ``tool_calls``."""
        out: dict[str, Any] = {"role": "assistant"}
        for kind, key, path in (("content", S.REF, "$.output.content"),
                                ("reasoning", S.REASONING_REF, "$.output.reasoning"),
                                ("refusal", S.REFUSAL_REF, "$.output.refusal")):
            if ans[kind] or key == S.REF:
                ref, found = self._publish(ans[kind], path, self.cut)
                self.answer_found.update((n.detector, n.fingerprint) for n in found)
                out[key] = ref
        if ans["tool_calls"]:
            out["tool_calls"] = [
                self._call_entry(RequestCall(tc["id"], tc["name"], tc["arguments"], f"$.output.tool_calls[{j}].id",
                                             f"$.output.tool_calls[{j}].function.name",
                                             f"$.output.tool_calls[{j}].function.arguments"), self.notes, answer=True)
                for j, tc in enumerate(ans["tool_calls"])]
        return out

    def _call_entry(self, call: RequestCall, notes: list[RedactionNote], answer: bool = False) -> dict[str, Any]:
        ref, found = self._publish(call.arguments, call.args_path, answer and self.cut)
        if answer:
            self.answer_found.update((n.detector, n.fingerprint) for n in found)
        return {"id": self.plain(call.id, call.id_path, notes), "name": self.plain(call.name, call.name_path, notes),
                S.ARGS_REF: ref}


def _opening(msgs: list[RequestMessage]) -> list[RequestMessage]:
    """The messages that open a conversation, the same in every turn: the leading system (or developer) messages
    and the first message after them (a fixed count would take in the first answer once there is one)."""
    out: list[RequestMessage] = []
    for m in msgs:
        out.append(m)
        if m.role not in ("system", "developer"):
            break
    return out


def _outcome_attrs(outcome: Outcome) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if outcome.activated_rails:
        attrs[S.RAILS_ACTIVATED] = [str(r) for r in outcome.activated_rails]
    if outcome.blocked:
        attrs[S.RAILS_BLOCKED] = True
    if outcome.blocked_rail:
        attrs[S.RAILS_BLOCKED_RAIL] = str(outcome.blocked_rail)
    return attrs


def server_attrs(upstream_url: str) -> dict[str, Any]:
    """``server.address`` / ``server.port`` of ``upstream_url`` (``scheme://host[:port]/path``): the port the URL
    names, else 80 / 443 by scheme; ``{}`` for an empty or unparsable URL."""
    try:
        parts = urlsplit(upstream_url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return {}
    if not parts.hostname:
        return {}
    return {semconv.SERVER_ADDRESS: parts.hostname, **({semconv.SERVER_PORT: port} if port else {})}


def _body_conversation(body: dict[str, Any]) -> str | None:
    """The Responses ``conversation`` the request names (``"conv_…"`` or ``{"id": "conv_…"}``)."""
    conv = body.get("conversation")
    conv = conv.get("id") if isinstance(conv, dict) else conv
    return conv if isinstance(conv, str) and conv else None


class TraceRecorder(ThreadQueueWorker[Exchange]):
    """Builds and publishes one redacted span per finished exchange, in a worker thread.

    ``scanner``: a :class:`railcar.rails.scanner.Scanner` (one per process). ``publish(key, value)``: non-blocking
    sink (e.g. :meth:`railcar.streams.producer.Publisher.publish` or the embedded consumer), always called on the
    event loop that ran :meth:`start`. ``resource``: from :func:`railcar.streams.otlp.make_resource`.
    ``max_pending`` bounds exchanges waiting to be recorded (beyond: dropped and counted in ``stats["dropped"]``
    and ``railcar_recorder_dropped_total`` in ``registry``); ``max_traces`` bounds the dedup state (LRU).
    ``max_content_bytes`` / ``max_span_content_bytes``: the size bound of published texts (module docstring); cut
    texts are counted in ``stats["truncated"]``. :meth:`build` is the whole work for one exchange (pure but for the
    dedup state; tests call it directly). :attr:`threads`: exchanges built per thread name.
    """

    thread_name = "railcar-recorder"

    def __init__(self, scanner: Scanner, publish: Callable[[bytes, bytes], Any], resource: Resource | None = None,
                 *, agent_id: str = "", max_pending: int = 10000, max_traces: int = 10000,
                 max_content_bytes: int = MAX_CONTENT_BYTES,
                 max_span_content_bytes: int = MAX_SPAN_CONTENT_BYTES, registry: CollectorRegistry = REGISTRY) -> None:
        self.max_content_bytes, self.max_span_content_bytes = max_content_bytes, max_span_content_bytes
        self.redact = _Redactor(scanner)
        self.publish = publish
        self.resource = resource if resource is not None else otlp.make_resource(agent_id=agent_id)
        self.agent_id = agent_id or str(self.resource.attributes.get(S.AGENT_ID, ""))
        super().__init__(max_pending, {"recorded": 0, "errors": 0, "bytes": 0, "truncated": 0})
        self._traces: LRU[int, _TraceState] = LRU(max_traces, _TraceState)
        self._responses: collections.OrderedDict[str, int] = collections.OrderedDict()  # response id -> trace id
        self._max_traces = max_traces
        self._m = recorder_metrics(registry)
        self.threads: collections.Counter[str] = collections.Counter()
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._out: list[tuple[bytes, bytes]] = []
        self._out_lock = threading.Lock()
        self._flush_scheduled = False
        self._accepted = 0
        self._done = 0

    # ------------------------------------------------------------ ExchangeObserver (the event loop)
    def exchange_finished(self, exchange: Exchange) -> None:
        """Queue ``exchange`` for recording (O(1)); drops and counts when ``max_pending`` are waiting.
        :meth:`close` records what is pending, then stops."""
        if self.offer(exchange):
            self._accepted += 1
        else:
            self._m["dropped"].inc()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the worker thread; records are handed to ``publish`` on the running loop."""
        self._event_loop = asyncio.get_running_loop()
        await super().start()

    async def drain(self) -> None:
        """Wait until every queued exchange has been recorded and published (tests, shutdown); returns at once when
        the worker thread is not running."""
        while (self._done < self._accepted or self._out) and self._thread is not None and self._thread.is_alive():
            await asyncio.sleep(0.005)
        self._flush_out()

    async def close(self) -> None:
        """Record what is queued, stop the worker thread, publish the last records."""
        await super().close()
        self._flush_out()

    # ------------------------------------------------------------ the worker thread
    def _process(self, exchange: Exchange) -> None:
        self.threads[threading.current_thread().name] += 1
        try:
            key, value = self.build(exchange)
            self.stats["recorded"] += 1
            self.stats["bytes"] += len(value)
            self._hand_back(key, value)
        except Exception:  # a bad exchange must not stop recording; never log content
            self.stats["errors"] += 1
            log.exception("trace recording failed for request %s", exchange.request_id)
        finally:
            self._done += 1

    def _hand_back(self, key: bytes, value: bytes) -> None:
        """Queue one encoded record for ``publish`` on the loop (one loop wake-up per batch)."""
        with self._out_lock:
            self._out.append((key, value))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        try:
            if self._event_loop is None:
                raise RuntimeError("not started")
            self._event_loop.call_soon_threadsafe(self._flush_out)
        except RuntimeError:  # the loop is closed: nothing can publish any more
            with self._out_lock:
                self.stats["dropped"] += len(self._out)
                self._out, self._flush_scheduled = [], False

    def _flush_out(self) -> None:
        with self._out_lock:
            out, self._out, self._flush_scheduled = self._out, [], False
        for key, value in out:
            self.publish(key, value)

    # ------------------------------------------------------------ building
    def _trace_ids(self, exchange: Exchange, msgs: list[RequestMessage], conv: str | None) -> tuple[int, int | None]:
        tp = otlp.parse_traceparent(exchange.headers.get("traceparent"))
        if tp:
            return tp
        if not conv:
            prev = exchange.body.get("previous_response_id")
            if isinstance(prev, str) and prev:
                known = self._responses.get(prev)
                if known is not None:
                    return known, None
                conv = prev  # continues a response this process did not record: a trace of its own chain
        if not conv:
            # Redacted so the hash input never depends on a raw secret being kept around.
            conv = "|".join(self.redact(m.text, "$")[0] for m in _opening(msgs)) or exchange.request_id
        digest = hashlib.sha256(f"{self.agent_id}\x00{conv}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:16], "big") or 1, None

    def _remember_response(self, response_id: Any, trace_id: int) -> None:
        if isinstance(response_id, str) and response_id:
            self._responses[response_id] = trace_id
            self._responses.move_to_end(response_id)
            while len(self._responses) > self._max_traces:
                self._responses.popitem(last=False)

    def build(self, exchange: Exchange) -> tuple[bytes, bytes]:
        """``(key, value)`` for one exchange: key the 32-hex trace id, value ``TracesData`` bytes. Updates the
        per-trace dedup state (so call it once per exchange, in order)."""
        codec = codec_of(exchange)
        msgs = request_messages(codec, exchange.body)
        conv = _body_conversation(exchange.body) or next(
            (exchange.headers[h] for h in CONVERSATION_HEADERS if exchange.headers.get(h)), None)
        trace_id, parent = self._trace_ids(exchange, msgs, conv)
        now = time.time_ns()
        out = exchange.outcome
        cut = bool(exchange.stream_data) and bool(out.blocked or exchange.error or out.client_gone)
        content = _SpanContent(self, self._traces.get(trace_id), now, cut)
        ans = reassemble(exchange, codec)
        attrs = self._semconv_attrs(ans["attributes"], content)
        attrs.update(server_attrs(exchange.upstream_url))
        attrs[semconv.CONVERSATION_ID] = content.plain(conv, _ATTR_PATHS[semconv.CONVERSATION_ID]) if conv \
            else f"{trace_id:032x}"
        if exchange.stream:
            attrs[S.REQUEST_STREAM] = True
        attrs.update(self._conversation_attrs(msgs, ans, content))
        if exchange.body.get("tools"):
            attrs[S.REQUEST_TOOLS_REF] = content.ref_of(orjson.dumps(exchange.body["tools"]).decode(), "$.tools")
        if exchange.status is not None:
            attrs[S.HTTP_STATUS_CODE] = int(exchange.status)
        attrs.update(_outcome_attrs(out))
        error = self._error(exchange, ans, attrs, content)
        # The guard's inline notes name values of the upstream answer; those in the recorded answer (choice 0) are
        # already noted above, from the same text: keep the others (another choice, a kind only the guard runs).
        notes = content.notes + [n for n in out.redactions
                                 if (n.detector, n.fingerprint) not in content.answer_found]
        events = content.events + [(S.REDACTION_EVENT, S.redaction_attributes(n.as_dict()), now) for n in notes]
        name = f"{attrs[S.OPERATION_NAME]} {attrs.get(S.REQUEST_MODEL, '')}".strip()
        span = otlp.CallSpan(
            name=name, trace_id=trace_id, span_id=random.getrandbits(64) or 1,
            parent_span_id=parent, start_ns=exchange.started_ns, end_ns=exchange.finished_ns or now,
            attributes=attrs, events=events, error=error)
        value = otlp.encode_call(span, self.resource)  # same bytes as encode([build_span(...)]), ~5x cheaper
        self._remember_response(ans["attributes"].get(S.RESPONSE_ID), trace_id)
        return f"{trace_id:032x}".encode(), value

    @staticmethod
    def _semconv_attrs(raw: dict[str, Any], content: _SpanContent) -> dict[str, Any]:
        """The codec's semantic-convention attributes with every string (and string list item) redacted; the
        conversation id is decided by :meth:`build`."""
        attrs: dict[str, Any] = {}
        for key, v in raw.items():
            if key == semconv.CONVERSATION_ID:
                continue
            path = _ATTR_PATHS.get(key) or key_path("$.attributes", key)
            if isinstance(v, str):
                attrs[key] = content.plain(v, path)
            elif isinstance(v, (list, tuple)):
                attrs[key] = [content.plain(x, f"{path}[{i}]") if isinstance(x, str) else x for i, x in enumerate(v)]
            else:
                attrs[key] = v
        return attrs

    @staticmethod
    def _conversation_attrs(msgs: list[RequestMessage], ans: dict[str, Any],
                            content: _SpanContent) -> dict[str, Any]:
        """``railcar.input.messages`` (only the messages no earlier span of the trace described),
        ``railcar.output.message`` and ``railcar.input.prefix``; registers the chains in the trace state."""
        built = [content.entry(m) for m in msgs]
        entries = [e for e, _ in built]
        chains = content.trace.chains
        # Which leading messages an earlier span already described: walk the chain without publishing.
        chain, prefix_chain, prefix_n = "", "", 0
        for i, (_, chain, _) in enumerate(S.chain_walk("", entries)):
            if chain in chains:  # an earlier span described messages[0..i]
                prefix_chain, prefix_n = chain, i + 1
        chains.add(chain)
        for _, notes in built[prefix_n:]:  # the entries this span lists: an earlier one published the others
            content.notes.extend(notes)
        out_entry = content.answer_entry(ans)
        chains.add(S.chain_ref(chain, out_entry))
        attrs = {S.INPUT_MESSAGES: orjson.dumps(entries[prefix_n:]).decode(),
                 S.OUTPUT_MESSAGE: orjson.dumps(out_entry).decode()}
        if prefix_n:  # messages[0:prefix_n] are the list whose chain hash is prefix_chain
            attrs[S.INPUT_PREFIX] = prefix_chain
        return attrs

    @staticmethod
    def _error(exchange: Exchange, ans: dict[str, Any], attrs: dict[str, Any], content: _SpanContent) -> str | None:
        """The span's (redacted, bounded) error description, ``None`` when the call did not fail; sets
        ``error.type`` in ``attrs`` (see the module doc)."""
        if exchange.error:
            error = _utf8_prefix(content.plain(exchange.error, "$.error"), 4096)
            attrs[S.ERROR_TYPE] = error.split(":")[0][:64]
            return error
        if exchange.outcome.blocked:
            return None
        if ans["error"] is not None:
            etype, message = ans["error"]
            attrs[S.ERROR_TYPE] = content.plain(etype, "$.error.type")[:64]
            return _utf8_prefix(content.plain(message, "$.error.message"), 4096) or attrs[S.ERROR_TYPE]
        if exchange.status and exchange.status >= 400:
            attrs[S.ERROR_TYPE] = str(exchange.status)
            return f"HTTP {exchange.status}"
        return None
