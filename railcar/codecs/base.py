"""The codec contract: what the policy path needs to know about one wire API, and nothing else.

A codec is a small stateless object (one per wire API: :mod:`.openai_chat`, :mod:`.openai_responses`,
:mod:`.anthropic_messages`, :mod:`.openai_completions`, :mod:`.embeddings`) that maps

- a **request** body (parsed JSON ``dict``) to the turns the input and tool_output rails see
  (:meth:`Codec.request_messages` -> :class:`Turn`) and to every string that goes to the model
  (:meth:`Codec.request_strings` -> :class:`Piece`), after :meth:`Codec.validate` found its required fields;
- a **response** (one parsed SSE ``data:`` payload, or the whole non-streamed body) to every string value it carries
  with its JSON path (:meth:`Codec.stream_strings` / :meth:`Codec.body_strings` -> :class:`Piece`), the key of the
  output stream a delta belongs to (so a value split across deltas is reassembled), the tool calls complete after an
  event (:meth:`Codec.tool_calls_done`, with a per-stream :class:`StreamState`) and whether the event ends the stream
  (:meth:`Codec.is_terminal`);
- a **decision** to that API's own wire form: an error body or in-stream error frame
  (:meth:`Codec.error_body`, :meth:`Codec.error_frame`), the frames a blocked stream ends with
  (:meth:`Codec.blocked_frames`), and a normal answer whose text is a refusal (:meth:`Codec.refusal_body`,
  :meth:`Codec.refusal_frames`);
- a finished call to OpenTelemetry GenAI semantic-convention span attributes (:meth:`Codec.span_attributes`;
  https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/ and the OpenAI / Anthropic pages beside it).

Strings are found by a plain recursive walk (:func:`walk_strings`; :func:`walk_typed` carries each string's keys and
enclosing ``type`` values along, so :func:`kind_at` classifies it from a memo instead of re-walking), never by a
list of fields: a field a provider adds tomorrow is still seen. A codec only *classifies* each string (stream key
and kind). Per-event cost matters (one walk per streamed delta), so a codec may answer the shapes it streams most
from a fast path, which must return exactly what the generic walk (:meth:`Codec.walk_stream_strings`) returns
(tests/codecs/test_fast_paths.py checks it over recorded traffic and generated events).

Paths: a path is a tuple of keys and list indexes (``("messages", 3, "content", 0, "text")``, the ``parts`` of a
:class:`Turn` / :class:`Piece`), rendered as a JSONPath string by :func:`json_path`
(``$.messages[3].content[0].text``; a key that is not an identifier is quoted: ``$["a b"]``).
:func:`set_at` writes a replacement string back at a path (request-side redaction).

Pure code: no I/O, imports :mod:`railcar.core` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import orjson

from railcar.core import semconv, wire
from railcar.core.jsonpath import Parts, json_path, walk_strings

__all__ = ["Path", "Turn", "Piece", "ToolCall", "RequestProblem", "StreamState", "Codec",
           "walk_strings", "walk_typed", "Typed", "json_path", "set_at", "sse_event", "kind_of", "kind_at",
           "kinds_under", "TurnKind", "PieceKind", "mapping", "text", "number", "stop_list", "text_turns",
           "string_turns", "with_rail", "require", "get_at", "TextDelta", "flat_strings"]

Path = Parts
TurnKind = Literal["input", "tool_output"]
PieceKind = Literal["text", "reasoning", "refusal", "tool_arguments", "tool_output", "input", "other"]

def get_at(obj: Any, parts: Path) -> Any:
    """The value at ``parts`` under ``obj``; raises ``KeyError`` / ``IndexError`` / ``TypeError`` if absent."""
    for p in parts:
        obj = obj[p]
    return obj


def set_at(obj: Any, parts: Path, value: Any) -> None:
    """Replace the value at ``parts`` (non-empty) under ``obj`` in place; raises like :func:`get_at`."""
    get_at(obj, parts[:-1])[parts[-1]] = value


def sse_event(name: str, payload: Any) -> bytes:
    """One named SSE event, ``event: <name>\\ndata: <compact JSON>\\n\\n`` (the Responses and Anthropic framing:
    every recorded event line equals its payload's ``type``)."""
    return b"event: " + name.encode() + b"\n" + wire.sse_frame(payload)


_TOOL_TYPES = frozenset({"function_call", "custom_tool_call", "mcp_call", "tool_use", "server_tool_use",
                         "mcp_tool_use", "function", "computer_call", "local_shell_call", "shell_call",
                         "apply_patch_call", "code_interpreter_call"})
_TOOL_KEYS = frozenset({"arguments", "input", "code", "action", "operation"})
_REASONING_TYPES = frozenset({"reasoning", "reasoning_text", "summary_text", "thinking", "redacted_thinking"})
_REASONING_KEYS = frozenset({"reasoning", "reasoning_content", "reasoning_details", "thinking", "summary"})
_TEXT_KEYS = frozenset({"text", "content", "transcript", "output_text"})


def _types_along(root: Any, parts: Path) -> tuple[str, ...]:
    """The ``type`` values of the dicts passed on the way from ``root`` down ``parts``, outermost first."""
    types: list[str] = []
    obj = root
    for p in parts:
        if isinstance(obj, dict) and isinstance(obj.get("type"), str):
            types.append(obj["type"])
        try:
            obj = obj[p]
        except (KeyError, IndexError, TypeError):
            break
    return tuple(types)


def kind_of(root: Any, parts: Path) -> PieceKind:
    """Classify a whole string value of an answer by where it sits (shared by every codec):

    ``refusal`` under a ``refusal`` key; ``tool_arguments`` under ``arguments`` / ``input`` / ``code`` of a tool call
    (Chat ``tool_calls[].function``, Responses ``function_call`` / ``custom_tool_call`` / ``mcp_call`` items,
    Anthropic ``tool_use`` blocks); ``reasoning`` inside a reasoning / thinking item or under a reasoning key;
    ``text`` for the answer text (``text`` / ``content`` / ``transcript``); ``other`` for the rest (ids, model, ...).
    The kind depends only on the dict keys along ``parts`` and the ``type`` values of the dicts passed on the way
    (:func:`kind_at`, which a walk that carries both calls without re-walking).
    """
    return kind_at(tuple(p for p in parts if isinstance(p, str)), _types_along(root, parts))


def _classify(keys: tuple[str, ...], types: tuple[str, ...]) -> PieceKind:
    """:func:`kind_of`'s rules over the keys and enclosing ``type`` values of a path."""
    if not keys:
        return "other"
    if "refusal" in keys:
        return "refusal"
    if (_TOOL_KEYS.intersection(keys) and (_TOOL_TYPES.intersection(types) or "function_call" in keys
                                           or "function" in keys)):
        return "tool_arguments"
    if _REASONING_TYPES.intersection(types) or _REASONING_KEYS.intersection(keys):
        return "reasoning"
    if keys[-1] in _TEXT_KEYS or (keys[-1] == "delta" and types and types[-1].endswith("text.delta")):
        return "text"
    return "other"


# (keys, types) -> kind: an event shape repeats for every delta of a stream, so its classification is computed once.
# Bounded (cleared when full) because the keys come from the upstream; entries are small tuples of interned keys.
_KINDS: dict[tuple[tuple[str, ...], tuple[str, ...]], PieceKind] = {}
_KINDS_MAX = 4096


def kind_at(keys: tuple[str, ...], types: tuple[str, ...]) -> PieceKind:
    """The :func:`kind_of` of a string whose path has the dict keys ``keys`` (list indexes left out) and passes
    dicts whose ``type`` values are ``types`` (outermost first), memoized by that signature."""
    sig = (keys, types)
    kind = _KINDS.get(sig)
    if kind is None:
        kind = _classify(keys, types)
        if len(_KINDS) >= _KINDS_MAX:
            _KINDS.clear()
        _KINDS[sig] = kind
    return kind


class _KindsUnder(dict[str, PieceKind]):
    """``key -> kind_at(prefix + (key,), types)``, filled on first use: the kinds of the strings directly under one
    object, for a codec's fast path (one dict lookup per string)."""

    def __init__(self, prefix: tuple[str, ...], types: tuple[str, ...]) -> None:
        super().__init__()
        self.prefix, self.types = prefix, types

    def __missing__(self, key: str) -> PieceKind:
        if len(self) >= _KINDS_MAX:
            self.clear()
        kind = self[key] = _classify(self.prefix + (key,), self.types)
        return kind


_UNDER: dict[tuple[tuple[str, ...], tuple[str, ...]], _KindsUnder] = {}


def kinds_under(prefix: tuple[str, ...], types: tuple[str, ...]) -> dict[str, PieceKind]:
    """The kinds of the strings directly under an object reached by the dict keys ``prefix`` whose enclosing
    ``type`` values (its own included) are ``types``: ``kinds_under(p, t)[k] == kind_at(p + (k,), t)`` for every
    string key ``k`` (memoized, bounded like :func:`kind_at`)."""
    sig = (prefix, types)
    kinds = _UNDER.get(sig)
    if kinds is None:
        if len(_UNDER) >= _KINDS_MAX:
            _UNDER.clear()
        kinds = _UNDER[sig] = _KindsUnder(prefix, types)
    return kinds


# One string of a typed walk: (parts, text, keys, types) — its path, its value, the dict keys along the path (list
# indexes left out) and the ``type`` values of the dicts enclosing it, outermost first (what :func:`kind_at` reads).
Typed = tuple[Path, str, tuple[str, ...], tuple[str, ...]]


def walk_typed(obj: Any, parts: Path = (), keys: tuple[str, ...] = (), types: tuple[str, ...] = ()) -> list[Typed]:
    """Every string value under ``obj`` in :func:`walk_strings` order (the same ``(parts, text)``), each with the
    keys and enclosing types of its path (:data:`Typed`), carried down the walk so classifying a string never
    re-walks the document. ``parts`` / ``keys`` / ``types``: those of ``obj`` itself when it sits inside a larger
    document (``types`` without ``obj``'s own ``type``, which the walk adds)."""
    out: list[Typed] = []
    if isinstance(obj, str):
        out.append((parts, obj, keys, types))
    elif isinstance(obj, (dict, list)):
        _walk_typed(obj, parts, keys, types, out)
    return out


def _walk_typed(obj: dict[str, Any] | list[Any], parts: Path, keys: tuple[str, ...], types: tuple[str, ...],
                out: list[Typed]) -> None:
    if isinstance(obj, dict):
        t = obj.get("type")
        if isinstance(t, str):
            types = types + (t,)
        for k, v in obj.items():
            if isinstance(v, str):
                out.append((parts + (k,), v, keys + (k,) if isinstance(k, str) else keys, types))
            elif isinstance(v, (dict, list)) and v:
                _walk_typed(v, parts + (k,), keys + (k,) if isinstance(k, str) else keys, types, out)
        return
    for i, v in enumerate(obj):
        if isinstance(v, str):
            out.append((parts + (i,), v, keys, types))
        elif isinstance(v, (dict, list)) and v:
            _walk_typed(v, parts + (i,), keys, types, out)


class _AtPath:
    """The ``path`` of a string located by ``parts`` (of a :class:`Turn`; :class:`Piece` has its own)."""

    parts: Path

    @property
    def path(self) -> str:
        """JSONPath of the string: ``$.messages[3].content[0].text``."""
        return json_path(self.parts)


@dataclass(frozen=True)
class Turn(_AtPath):
    """One text-bearing part of a request as the input / tool_output rails see it.

    ``role``: ``system`` | ``developer`` | ``user`` | ``assistant`` | ``tool`` (as the request names it);
    ``text``: the part's text; ``kind``: ``input`` (what the agent or its history says) or ``tool_output`` (a tool's
    result handed to the model); ``parts``: the path of the string in the request (``path`` renders it).
    """

    role: str
    text: str
    kind: TurnKind
    parts: Path


class Piece(NamedTuple):
    """One string value of a request, an event or a body (immutable; a named tuple because one is built per string
    of every streamed event).

    ``parts``: its path (``path`` renders it); ``text``: the value; ``stream_key``: a hashable tuple naming the
    output stream a *delta* belongs to (equal keys concatenate to one value: ``("choices", 0, "delta", "content")``),
    ``None`` for a string that is a whole value; ``kind``: ``text`` | ``reasoning`` | ``refusal`` |
    ``tool_arguments`` | ``other`` for answers, ``input`` | ``tool_output`` | ``other`` for requests.
    """

    parts: Path
    text: str
    stream_key: tuple[Any, ...] | None
    kind: PieceKind

    @property
    def path(self) -> str:
        """JSONPath of the string: ``$.messages[3].content[0].text``."""
        return json_path(self.parts)


# A plain text delta event for the stream guard's fast path (:meth:`Codec.text_delta`): (stream key, the delta's text,
# its kind, its path, the event's other string values, each a whole value).
TextDelta = tuple[tuple[Any, ...], str, PieceKind, Parts, list[str]]
_CONTAINERS = (dict, list)


def flat_strings(obj: dict[str, Any], skip: str) -> list[str] | None:
    """The string values of ``obj`` beside the one under ``skip``, in order, when every other value is a scalar or
    an empty container (what :func:`walk_typed` finds at depth 1); ``None`` when one is a non-empty container."""
    out: list[str] = []
    for k, v in obj.items():
        t = type(v)
        if t is str:
            if k != skip:
                out.append(v)
        elif t is int or v is None or t is bool or t is float:
            continue
        elif isinstance(v, str) or (v and k != skip and isinstance(v, _CONTAINERS)):
            return None  # (a str subclass: left to the generic walk)
    return out


# ``tuple.__new__(Piece, (parts, text, stream_key, kind))`` builds a Piece without the keyword constructor: the
# codecs build one per string of every streamed event
_new_tuple = tuple.__new__


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked the client to run, complete: ``key`` the stream key of its arguments (so the
    caller can match pieces), ``id`` the call id (Chat ``id``, Responses ``call_id``, Anthropic ``id``), ``name``,
    ``arguments`` the full JSON text of the arguments (as the API sends it)."""

    key: tuple[Any, ...]
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class RequestProblem:
    """Why a request is refused before it goes upstream: ``message`` (never request content), ``param`` the
    field's name (``None`` when the body as a whole is wrong), ``code`` (``missing_required_parameter`` |
    ``invalid_type`` | ``invalid_json``), ``status`` (400)."""

    message: str
    param: str | None
    code: str = "missing_required_parameter"
    status: int = 400


@dataclass
class StreamState:
    """Per-stream memory of a codec (one per streamed answer, from :meth:`Codec.new_stream_state`).

    ``calls``: tool calls being assembled, by stream key -> ``{"id", "name", "arguments"}`` (arguments so far);
    ``done``: keys of the calls already reported; ``sequence_number``: the last Responses ``sequence_number`` seen
    (so a synthetic error event continues the sequence); ``extra``: codec-specific scratch (e.g. block types).
    """

    calls: dict[tuple[Any, ...], dict[str, str]] = field(default_factory=dict)
    done: set[tuple[Any, ...]] = field(default_factory=set)
    sequence_number: int = -1
    extra: dict[Any, Any] = field(default_factory=dict)

    def finish(self, key: tuple[Any, ...]) -> ToolCall | None:
        """Report the call under ``key`` once: a :class:`ToolCall`, or ``None`` if unknown or already reported."""
        call = self.calls.get(key)
        if call is None or key in self.done:
            return None
        self.done.add(key)
        return ToolCall(key, call.get("id", ""), call.get("name", ""), call.get("arguments", ""))


class Codec:
    """Base of every codec: class attributes name the route, methods map bodies and events.

    Attributes: ``name`` (``openai_chat``...), ``path`` (canonical route, ``/v1/chat/completions``), ``method``
    (``POST``), ``operation`` (``gen_ai.operation.name``), ``provider`` (default ``gen_ai.provider.name``),
    ``api_type`` (``openai.api.type`` when the provider is OpenAI, else ``None``), ``streams`` (the API can stream),
    ``terminal_data`` (the non-JSON ``data:`` payload that ends a stream, ``"[DONE]"``, or ``None``),
    ``refusal_status`` (HTTP status of :meth:`refusal_body`: 200 for an answer, 400 where the API has no text
    answer to refuse with), ``required`` (the request fields :meth:`validate` requires, with their JSON types).

    Subclasses implement the abstract methods; the defaults here serve every API whose error body is OpenAI's.
    """

    name: ClassVar[str] = ""
    path: ClassVar[str] = ""
    method: ClassVar[str] = "POST"
    operation: ClassVar[str] = "chat"
    provider: ClassVar[str] = "openai"
    api_type: ClassVar[str | None] = None
    streams: ClassVar[bool] = True
    terminal_data: ClassVar[str | None] = None
    refusal_status: ClassVar[int] = 200
    required: ClassVar[dict[str, tuple[type, ...]]] = {}
    # The top-level integer field of a :meth:`text_delta` event that :meth:`tool_calls_done` records (into
    # ``StreamState.sequence_number``) and that changes from event to event, or ``None``: the stream guard's frame
    # template leaves a hole for it.
    counter_field: ClassVar[str | None] = None

    # -- request ---------------------------------------------------------------------------------------------
    def validate(self, body: Any) -> RequestProblem | None:
        """The first problem that makes ``body`` unanswerable (not a JSON object, a :attr:`required` field missing
        or of the wrong type), or ``None``."""
        return require(body, self.required)

    def request_messages(self, body: dict[str, Any]) -> list[Turn]:
        """Every text-bearing turn of the request, in request order (see :class:`Turn`)."""
        raise NotImplementedError

    def request_strings(self, body: dict[str, Any]) -> list[Piece]:
        """Every string value of the request with its path (all of it goes to the provider), ``stream_key`` None;
        ``kind`` is the :class:`Turn` kind for the strings :meth:`request_messages` returns, else ``other``."""
        kinds = {t.parts: t.kind for t in self.request_messages(body)}
        return [_new_tuple(Piece, (p, s, None, kinds.get(p, "other"))) for p, s in walk_strings(body)]

    # -- response --------------------------------------------------------------------------------------------
    def stream_strings(self, obj: dict[str, Any]) -> list[Piece]:
        """Every string value of one parsed SSE ``data:`` payload, classified (see :class:`Piece`), in
        :func:`walk_strings` order. Codecs may answer the shapes they stream most from a fast path; whatever the
        shape, the result equals :meth:`walk_stream_strings` (the generic walk)."""
        return self.walk_stream_strings(obj)

    def walk_stream_strings(self, obj: dict[str, Any]) -> list[Piece]:
        """:meth:`stream_strings` by the generic walk (:func:`walk_typed`), each string classified by
        :meth:`_piece`: the reference every fast path must equal."""
        piece_of = self._piece
        return [piece_of(obj, p, s, kind_at(k, t)) for p, s, k, t in walk_typed(obj)]

    def text_delta(self, obj: dict[str, Any]) -> TextDelta | None:
        """The stream guard's fast path (:class:`railcar.rails.codec_stream.CodecStreamGuard`): for the API's plain
        text delta event, ``(stream key, text, kind, parts, others)``, else ``None`` (the default: no fast path).

        Contract (tests/codecs/test_fast_paths.py): when not ``None``, :meth:`stream_strings` of ``obj`` is exactly
        ``Piece(parts, text, key, kind)`` plus one whole value (``stream_key`` None) per string of ``others``;
        :meth:`is_terminal` is false; :meth:`tool_calls_done` returns ``[]`` for it and records nothing but the
        :attr:`counter_field` (if any) as ``state.sequence_number`` (the caller still runs it, or records that).
        Pure: no state is touched here."""
        return None

    def body_strings(self, obj: Any) -> list[Piece]:
        """Every string value of a non-streamed answer (or error body), each a whole value (``stream_key`` None)."""
        return [_new_tuple(Piece, (p, s, None, kind_at(k, t))) for p, s, k, t in walk_typed(obj)]

    def _piece(self, obj: dict[str, Any], parts: Path, text: str, kind: PieceKind) -> Piece:
        """Classify one string of a stream event whose :func:`kind_of` is ``kind``: the codec's stream key for
        deltas, else a whole value."""
        return _new_tuple(Piece, (parts, text, None, kind))

    def new_stream_state(self) -> StreamState:
        """A fresh :class:`StreamState` for one streamed answer."""
        return StreamState()

    def tool_calls_done(self, obj: dict[str, Any], state: StreamState) -> list[ToolCall]:
        """Feed one parsed event (in order); the tool calls complete after it, each reported once."""
        return []

    def flush_tool_calls(self, state: StreamState) -> list[ToolCall]:
        """At the end of a stream: the calls still open (a stream that ended without closing them)."""
        out = [state.finish(k) for k in list(state.calls)]
        return [c for c in out if c is not None]

    def body_tool_calls(self, obj: Any) -> list[ToolCall]:
        """The tool calls of a non-streamed answer, complete."""
        return []

    def is_terminal(self, obj: dict[str, Any]) -> bool:
        """The parsed event ends the answer (``[DONE]`` is not JSON: compare the raw data with
        :attr:`terminal_data`)."""
        return False

    # -- decisions -------------------------------------------------------------------------------------------
    def error_payload(self, status: int, message: str, type: str = "invalid_request_error",
                      param: str | None = None, code: str | None = None) -> dict[str, Any]:
        """The API's error object (default OpenAI's ``{"error": {message, type, param, code}}``)."""
        return wire.error_payload(message, type, param, code)

    def error_body(self, status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> bytes:
        """:meth:`error_payload` as JSON bytes, sent with HTTP ``status``."""
        return orjson.dumps(self.error_payload(status, message, type, param, code))

    def problem_body(self, problem: RequestProblem) -> bytes:
        """The error body for a :class:`RequestProblem` (sent with ``problem.status``)."""
        return self.error_body(problem.status, problem.message, "invalid_request_error", problem.param,
                               problem.code)

    def error_frame(self, message: str, type: str = "upstream_error", param: str | None = None,
                    code: str | None = None, state: StreamState | None = None) -> bytes:
        """How a stream that already sent its 200 reports a failure (default: ``data: {"error": {...}}``, which
        the ``openai`` client raises as ``APIError``)."""
        return wire.sse_frame(wire.error_payload(message, type, param, code))

    def blocked_frames(self, rail: str, state: StreamState | None = None) -> bytes:
        """The exact bytes a stream blocked by ``rail`` ends with (default: OpenAI's blocked-content error chunk +
        ``data: [DONE]``, :func:`railcar.core.wire.blocked_frames`)."""
        return wire.blocked_frames(rail)

    def blocked_body(self, rail: str) -> bytes:
        """A non-streamed block by ``rail`` as the API's error body (status 400, ``guardrails_violation`` /
        ``content_blocked``, the fields of :func:`railcar.core.wire.blocked_error`), for APIs or modes that answer
        a block with an error rather than a refusal."""
        return self.error_body(400, **wire.blocked_error(rail)["error"])

    def refusal_body(self, model: str, message: str, rail: str | None = None) -> dict[str, Any]:
        """A normal non-streamed answer whose text is ``message`` (sent with :attr:`refusal_status`)."""
        raise NotImplementedError

    def refusal_frames(self, model: str, message: str) -> list[bytes]:
        """The streamed equivalent of :meth:`refusal_body`: complete SSE frames, in order, terminator included."""
        raise NotImplementedError

    # -- telemetry -------------------------------------------------------------------------------------------
    def span_attributes(self, body: dict[str, Any], response: Any = None) -> dict[str, Any]:
        """GenAI semconv attributes of the call: request side from ``body``, response side from ``response`` (the
        non-streamed body, or the final response object of a stream; ``None`` when there is none)."""
        attrs: dict[str, Any] = {semconv.PROVIDER_NAME: self.provider, semconv.OPERATION_NAME: self.operation}
        if self.api_type is not None:
            attrs[semconv.OPENAI_API_TYPE] = self.api_type
        attrs.update(self._request_attributes(body))
        if isinstance(response, dict):  # the response side adds to the request side, never erases it
            attrs.update({k: v for k, v in self._response_attributes(response).items() if v is not None})
        return {k: v for k, v in attrs.items() if v is not None}

    def _request_attributes(self, body: dict[str, Any]) -> dict[str, Any]:
        return {semconv.REQUEST_MODEL: text(body.get("model"))}

    def _response_attributes(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {}


def mapping(v: Any) -> dict[str, Any]:
    """``v`` when it is a JSON object, else ``{}`` (so optional sub-objects read without checks)."""
    return v if isinstance(v, dict) else {}


def text(v: Any) -> str | None:
    """``v`` when it is a string, else ``None``."""
    return v if isinstance(v, str) else None


def number(v: Any) -> int | float | None:
    """``v`` when it is a JSON number (not a bool), else ``None`` (span attributes take no other types)."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def stop_list(v: Any) -> list[str] | None:
    """A ``stop`` / ``stop_sequences`` value as a list of strings (``"x"`` -> ``["x"]``), or ``None``."""
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return list(v)
    return None


# the keys whose string values are text the model reads (at any depth, a list's items included); everything else
# (ids, types, urls, media types, signatures, encrypted or base64 payloads, tool-call arguments) is not a turn
_TURN_KEYS = frozenset({"text", "content", "output", "thinking", "reasoning", "reasoning_content", "refusal",
                        "summary", "transcript", "stdout", "stderr", "logs", "title", "context"})


def text_turns(role: str, kind: TurnKind, obj: Any, prefix: Path) -> list[Turn]:
    """Turns of every text-bearing string under ``obj`` (a message, an item, a block or its ``content``), in
    document order, at ``prefix + <path under obj>``: a string ``obj`` (or a string item of a list ``obj``) is a
    turn; below it, strings under a text key (:data:`_TURN_KEYS`: OpenAI ``text`` / ``input_text`` parts,
    Anthropic ``text`` / ``thinking`` blocks, ``tool_result`` contents nested at any depth, shell ``stdout`` /
    ``stderr``...), a list's items taking the list's key, and the ``data`` of a ``{"type": "text"}`` source
    (Anthropic text documents; base64 sources are not text). The walk is generic so a container a provider nests
    tomorrow is still read."""
    out: list[Turn] = []

    def walk(o: Any, parts: Path, key: str | None, parent: dict[str, Any]) -> None:
        if isinstance(o, str):
            if key is None or key in _TURN_KEYS or (key == "data" and parent.get("type") == "text"):
                out.append(Turn(role, o, kind, parts))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, parts + (k,), k, o)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, parts + (i,), key, parent)

    walk(obj, prefix, None, {})
    return out


def string_turns(body: dict[str, Any], name: str) -> list[Turn]:
    """User turns of a plain ``body[name]``: a string, or each string of a list (token arrays carry no text)."""
    value = body.get(name)
    if isinstance(value, str):
        return [Turn("user", value, "input", (name,))]
    if isinstance(value, list):
        return [Turn("user", v, "input", (name, i)) for i, v in enumerate(value) if isinstance(v, str)]
    return []


def with_rail(answer: dict[str, Any], rail: str | None) -> dict[str, Any]:
    """``answer`` with ``guardrails_data.blocked_rail`` naming ``rail`` (as
    :func:`railcar.core.wire.refusal_completion` does), unchanged when ``rail`` is ``None``."""
    if rail is not None:
        answer["guardrails_data"] = {"blocked_rail": rail}
    return answer


def require(body: Any, fields: dict[str, tuple[type, ...]]) -> RequestProblem | None:
    """Check ``body`` is an object with each ``field`` present and of one of its types; the first problem as a
    :class:`RequestProblem` in OpenAI's wording (``Missing required parameter: 'messages'.``)."""
    if not isinstance(body, dict):
        return RequestProblem("The request body must be a JSON object.", None, "invalid_json")
    for name, types in fields.items():
        if name not in body or body[name] is None:
            return RequestProblem(f"Missing required parameter: '{name}'.", name)
        if not isinstance(body[name], types) or isinstance(body[name], bool):
            want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            return RequestProblem(f"Invalid type for '{name}': expected {want}.", name, "invalid_type")
    return None


_TYPE_NAMES = {str: "a string", list: "an array", dict: "an object", int: "an integer"}
