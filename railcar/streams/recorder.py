"""The trace recorder: an ``ExchangeObserver`` that turns finished exchanges into redacted OTLP records.

``exchange_finished`` only appends to a bounded deque (O(1), never blocks the request path); a background task
takes exchanges off it, reassembles the answer (:func:`railcar.streams.answer.reassemble`), redacts every string
the span carries (contents, and the roles, names, ids, models and error around them) with the detector catalog,
builds one span (:mod:`railcar.streams.otlp`) in the layout of :mod:`railcar.streams.schema` and hands
``(trace id, TracesData bytes)`` to the publisher. Each value redacted is noted once in the span; the guard's
inline notes of the same answer text are not repeated.

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
serves as ``gen_ai.conversation.id``). The trace id is the caller's W3C ``traceparent`` trace id when sent, else
derived from the agent id and the conversation's opening messages (its system prompt and first message), so one
conversation is one trace and all its spans share one Kafka key and partition (the consumer needs earlier spans of
the trace to resolve refs). Dedup state is an LRU over traces.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
from opentelemetry.sdk.resources import Resource

from railcar.core.exchange import Exchange, Outcome, RedactionNote
from railcar.rails.redaction import redact_text
from railcar.rails.scanner import Scanner
from railcar.streams import otlp
from railcar.streams import schema as S
from railcar.streams.answer import reassemble
from railcar.streams.background import QueueWorker
from railcar.streams.lru import LRU

__all__ = ["TraceRecorder", "MAX_CONTENT_BYTES", "MAX_SPAN_CONTENT_BYTES"]

log = logging.getLogger("railcar.recorder")

MAX_CONTENT_BYTES = 64 * 1024
MAX_SPAN_CONTENT_BYTES = 512 * 1024

# request field -> span attribute, for the sampling parameters that are numbers
_REQUEST_PARAMS = (("temperature", S.REQUEST_TEMPERATURE), ("top_p", S.REQUEST_TOP_P),
                   ("max_tokens", S.REQUEST_MAX_TOKENS), ("max_completion_tokens", S.REQUEST_MAX_TOKENS))
_USAGE = (("prompt_tokens", S.USAGE_INPUT_TOKENS), ("completion_tokens", S.USAGE_OUTPUT_TOKENS))


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


def _text_of(content: Any) -> str:
    """Message content as text: strings as is, content-part lists as compact JSON (so every part is scanned)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return orjson.dumps(content).decode()


class _Redactor:
    """``redact(text, path) -> (redacted, notes)``: :func:`railcar.rails.redaction.redact_text` over the catalog's
    :class:`railcar.rails.scanner.Scanner`, with a bounded cache of texts found clean."""

    # Texts known clean (nothing matched), so a system prompt or tool list resent by every conversation is scanned
    # once per process, not once per call. Bounded: entries, and only texts up to CLEAN_MAX_CHARS characters.
    CLEAN_ENTRIES = 1024
    CLEAN_MAX_CHARS = 8192

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self._clean: dict[str, None] = {}

    def __call__(self, text: str, path: str) -> tuple[str, list[RedactionNote]]:
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
    the answer's texts, published here or not (what the guard's inline notes may repeat)."""

    def __init__(self, recorder: TraceRecorder, trace: _TraceState, now_ns: int) -> None:
        self.redact, self.trace, self.now = recorder.redact, trace, now_ns
        self.max_content_bytes = recorder.max_content_bytes
        self.budget = recorder.max_span_content_bytes
        self.stats = recorder.stats
        self.events: list[tuple[str, dict[str, Any], int]] = []
        self.notes: list[RedactionNote] = []
        self.answer_found: set[tuple[str, str]] = set()

    def _publish(self, text: str, path: str) -> tuple[str, list[RedactionNote]]:
        """``(ref of text redacted, what was found in it)``; publishes the text (and its notes) when this trace has
        not seen it yet."""
        red, found = self.redact(text, path)  # the whole text: notes cover what a cut drops
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

    def entry(self, m: dict[str, Any], path: str) -> tuple[dict[str, Any], list[RedactionNote]]:
        """The message entry of request message ``m`` (at JSON path ``path``), its texts published, and the notes
        of its redacted fields (the caller keeps them only when the span lists the entry)."""
        notes: list[RedactionNote] = []
        entry: dict[str, Any] = {"role": self.plain(m.get("role", ""), f"{path}.role", notes),
                                 S.REF: self.ref_of(_text_of(m.get("content")), f"{path}.content")}
        for k in ("name", "tool_call_id"):
            if isinstance(m.get(k), str):
                entry[k] = self.plain(m[k], f"{path}.{k}", notes)
        if m.get("tool_calls"):
            entry["tool_calls"] = [
                self._call_entry(tc.get("id", ""), (tc.get("function") or {}).get("name", ""),
                                 _text_of((tc.get("function") or {}).get("arguments")), f"{path}.tool_calls[{j}]",
                                 notes)
                for j, tc in enumerate(m["tool_calls"]) if isinstance(tc, dict)]
        return entry, notes

    def answer_entry(self, ans: dict[str, Any]) -> dict[str, Any]:
        """The message entry of the reassembled answer (:func:`railcar.streams.answer.reassemble`)."""
        ref, found = self._publish(ans["content"], "$.output.content")
        self.answer_found.update((n.detector, n.fingerprint) for n in found)
        out: dict[str, Any] = {"role": "assistant", S.REF: ref}
        if ans["tool_calls"]:
            out["tool_calls"] = [self._call_entry(tc["id"], tc["name"], tc["arguments"], f"$.output.tool_calls[{j}]",
                                                  self.notes, answer=True)
                                 for j, tc in enumerate(ans["tool_calls"])]
        return out

    def _call_entry(self, call_id: Any, name: Any, arguments: str, path: str, notes: list[RedactionNote],
                    answer: bool = False) -> dict[str, Any]:
        ref, found = self._publish(arguments, f"{path}.function.arguments")
        if answer:
            self.answer_found.update((n.detector, n.fingerprint) for n in found)
        return {"id": self.plain(call_id, f"{path}.id", notes),
                "name": self.plain(name, f"{path}.function.name", notes), S.ARGS_REF: ref}


def _opening(msgs: list[Any]) -> list[dict[str, Any]]:
    """The messages that open a conversation, the same in every turn: the leading system (or developer) messages
    and the first message after them (a fixed count would take in the first answer once there is one)."""
    out: list[dict[str, Any]] = []
    for m in msgs:
        if isinstance(m, dict):
            out.append(m)
            if m.get("role") not in ("system", "developer"):
                break
    return out


def _request_attrs(exchange: Exchange) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if exchange.stream:
        attrs[S.REQUEST_STREAM] = True
    for src, dst in _REQUEST_PARAMS:
        v = exchange.body.get(src)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            attrs[dst] = v
    return attrs


def _answer_attrs(ans: dict[str, Any], status: int | None, content: _SpanContent) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if ans["model"]:
        attrs[S.RESPONSE_MODEL] = content.plain(ans["model"], "$.output.model")
    if ans["id"]:
        attrs[S.RESPONSE_ID] = content.plain(ans["id"], "$.output.id")
    if ans["finish_reasons"]:
        attrs[S.RESPONSE_FINISH_REASONS] = [content.plain(x, f"$.output.finish_reasons[{i}]")
                                            for i, x in enumerate(ans["finish_reasons"])]
    usage = ans["usage"] or {}
    for src, dst in _USAGE:
        if isinstance(usage.get(src), int):
            attrs[dst] = usage[src]
    if status is not None:
        attrs[S.HTTP_STATUS_CODE] = int(status)
    return attrs


def _outcome_attrs(outcome: Outcome) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if outcome.activated_rails:
        attrs[S.RAILS_ACTIVATED] = [str(r) for r in outcome.activated_rails]
    if outcome.blocked:
        attrs[S.RAILS_BLOCKED] = True
    if outcome.blocked_rail:
        attrs[S.RAILS_BLOCKED_RAIL] = str(outcome.blocked_rail)
    return attrs


class TraceRecorder(QueueWorker[Exchange]):
    """Builds and publishes one redacted span per finished exchange.

    ``scanner``: a :class:`railcar.rails.scanner.Scanner` (one per process). ``publish(key, value)``: non-blocking
    sink (e.g. :meth:`railcar.streams.producer.Publisher.publish` or the embedded consumer). ``resource``: from
    :func:`railcar.streams.otlp.make_resource`. ``max_pending`` bounds exchanges waiting to be recorded (beyond:
    dropped and counted in ``stats["dropped"]``); ``max_traces`` bounds the dedup state (LRU).
    ``max_content_bytes`` / ``max_span_content_bytes``: the size bound of published texts (module docstring); cut
    texts are counted in ``stats["truncated"]``.
    """

    task_name = "railcar-recorder"

    def __init__(self, scanner: Scanner, publish: Callable[[bytes, bytes], Any], resource: Resource | None = None,
                 *, agent_id: str = "", max_pending: int = 10000, max_traces: int = 10000,
                 max_content_bytes: int = MAX_CONTENT_BYTES,
                 max_span_content_bytes: int = MAX_SPAN_CONTENT_BYTES) -> None:
        self.max_content_bytes, self.max_span_content_bytes = max_content_bytes, max_span_content_bytes
        self.redact = _Redactor(scanner)
        self.publish = publish
        self.resource = resource if resource is not None else otlp.make_resource(agent_id=agent_id)
        self.agent_id = agent_id or str(self.resource.attributes.get(S.AGENT_ID, ""))
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
            # Redacted so the hash input never depends on a raw secret being kept around.
            conv = "|".join(self.redact(_text_of(m.get("content")), "$")[0]
                            for m in _opening(msgs)) or exchange.request_id
        digest = hashlib.sha256(f"{self.agent_id}\x00{conv}".encode("utf-8", "surrogatepass")).digest()
        return int.from_bytes(digest[:16], "big") or 1, None

    def build(self, exchange: Exchange) -> tuple[bytes, bytes]:
        """``(key, value)`` for one exchange: key the 32-hex trace id, value ``TracesData`` bytes. Updates the
        per-trace dedup state (so call it once per exchange, in order)."""
        trace_id, parent = self._trace_ids(exchange)
        now = time.time_ns()
        content = _SpanContent(self, self._traces.get(trace_id), now)
        ans = reassemble(exchange)
        model = content.plain(exchange.model, "$.model")
        attrs: dict[str, Any] = {S.OPERATION_NAME: "chat", S.REQUEST_MODEL: model,
                                 **self._conversation_attrs(exchange, ans, content), **_request_attrs(exchange)}
        if exchange.body.get("tools"):
            attrs[S.REQUEST_TOOLS_REF] = content.ref_of(orjson.dumps(exchange.body["tools"]).decode(), "$.tools")
        attrs.update(_answer_attrs(ans, exchange.status, content))
        attrs.update(_outcome_attrs(exchange.outcome))
        error = self._error(exchange, attrs, content)
        # The guard's inline notes name values of the upstream answer; those in the recorded answer (choice 0) are
        # already noted above, from the same text: keep the others (another choice, a kind only the guard runs).
        notes = content.notes + [n for n in exchange.outcome.redactions
                                 if (n.detector, n.fingerprint) not in content.answer_found]
        events = content.events + [(S.REDACTION_EVENT, S.redaction_attributes(n.as_dict()), now) for n in notes]
        span = otlp.CallSpan(
            name=f"chat {model}".strip(), trace_id=trace_id, span_id=random.getrandbits(64) or 1,
            parent_span_id=parent, start_ns=exchange.started_ns, end_ns=exchange.finished_ns or now,
            attributes=attrs, events=events, error=error)
        value = otlp.encode_call(span, self.resource)  # same bytes as encode([build_span(...)]), ~5x cheaper
        return f"{trace_id:032x}".encode(), value

    @staticmethod
    def _conversation_attrs(exchange: Exchange, ans: dict[str, Any], content: _SpanContent) -> dict[str, Any]:
        """``railcar.input.messages`` (only the messages no earlier span of the trace described),
        ``railcar.output.message`` and ``railcar.input.prefix``; registers the chains in the trace state."""
        msgs = [m for m in (exchange.body.get("messages") or []) if isinstance(m, dict)]
        built = [content.entry(m, f"$.messages[{i}]") for i, m in enumerate(msgs)]
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
    def _error(exchange: Exchange, attrs: dict[str, Any], content: _SpanContent) -> str | None:
        """The span's (redacted, bounded) error description; sets ``error.type`` in ``attrs``."""
        if exchange.error:
            error = _utf8_prefix(content.plain(exchange.error, "$.error"), 4096)
            attrs[S.ERROR_TYPE] = error.split(":")[0][:64]
            return error
        if exchange.status and exchange.status >= 400:
            attrs[S.ERROR_TYPE] = str(exchange.status)
        return None
