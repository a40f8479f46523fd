"""The rails' policy over any codec for a request and a whole (non-streamed) answer: one ordering for every API.

:class:`railcar.rails.guard.RailsGuard` hands each call here with its codec
(:data:`railcar.codecs.registry.CODECS` ``[exchange.api]``); the codec says where the turns and strings are, this
module decides. Issue 12 (one policy path over the codecs) and issue 13 items 2 and 3:

Request (:func:`guard_request`), in this order:

1. catalog secrets in **every string** the agent sends, object keys included (:meth:`Codec.request_strings`, JSON-escaped text decoded
   too: :func:`treat_value`) per ``[guardrails.inline] request_action``: ``redact`` replaces each value by the
   hold-back's placeholder (:meth:`railcar.rails.inline.HoldBack.redact_or_block`) before anything goes upstream or to a rail, with a
   :class:`RedactionNote` per value (path: the request string's JSON path); ``block`` refuses; ``off`` leaves them.
   A string found clean is kept in the same :class:`~railcar.rails.turn_cache.TurnCache` by content hash
   (kind :data:`CLEAN_REQUEST_STRING`), so re-sent history is not scanned again;
2. input rails on **every input turn** and tool_output rails on every tool_output turn
   (:meth:`Codec.request_messages`, in request order), each distinct turn judged once: its verdict is kept in the
   guard's :class:`railcar.rails.turn_cache.TurnCache` by content hash, so re-sent history costs a hash.

Whole answer (:func:`guard_body`), in this order:

1. the inline hold-back over **every string** of the body (:meth:`Codec.body_strings`; JSON-escaped text decoded,
   :func:`treat_value`; ``logprobs`` token runs joined, since a non-streamed body splits the answer there only);
2. output rails on the answer text (strings of kind ``text`` / ``reasoning`` / ``refusal``), after redaction;
3. tool_input rails on each tool call's complete arguments (:meth:`Codec.body_tool_calls`).

A Chat Completions body is judged choice by choice (a blocked choice becomes the refusal with ``finish_reason:
content_filter``, the others go on); any other body, and a chat string outside every choice, is judged whole: a
block answers :meth:`Codec.refusal_body` (sent with :attr:`Codec.refusal_status`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from railcar.codecs.base import Codec, Path, Piece, json_path, set_at
from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import Refusal
from railcar.rails import metrics
from railcar.rails.engine_local import CheckResult
from railcar.rails.inline import HoldBack
from railcar.rails.json_escape import DEPTH, through_escapes
from railcar.rails.settings import GuardrailsConfig
from railcar.rails.text_filter import SENSITIVE_DATA, FilterMatch, TextFilter, match_rail, withheld_note
from railcar.rails.turn_cache import TurnCache

__all__ = ["DEFAULT_REFUSAL", "CodecRails", "Treatment", "treat_value", "request_treatment", "body_treatment",
           "guard_request", "guard_body", "attach_guardrails_data"]

DEFAULT_REFUSAL = "I'm sorry, I can't respond to that."

# (text, JSON path) -> (text out, blocking match or None, notes of what was replaced)
Treatment = Callable[[str, str], tuple[str, FilterMatch | None, list[RedactionNote]]]

_ANSWER_KINDS = frozenset({"text", "reasoning", "refusal"})
# strings that label or carry opaque payloads inside answer items (ids, signatures, encrypted reasoning): watched by
# the hold-back, never part of the text the output rails judge
_LABEL_KEYS = frozenset({"type", "id", "signature", "encrypted_content", "status", "role", "call_id", "name",
                         "model", "format", "data", "item_id", "object"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHOLE: Path = ()


class CodecRails(Protocol):
    """What the codec policy needs from its guard (:class:`railcar.rails.guard.RailsGuard` is one): the
    ``[guardrails]`` settings, the inline filter factory (a :class:`HoldBack`, another :class:`TextFilter` factory,
    or ``None``), the turn cache, whether a rail kind runs, one accounted check returning ``(result, failed)``
    (``failed``: ``fail_mode`` decided it), and the ``guardrails_data`` the request asked for."""

    settings: GuardrailsConfig
    filter_factory: Callable[[], TextFilter] | None
    turn_cache: TurnCache

    def enabled(self, kind: str) -> bool: ...

    async def check_once(self, exchange: Exchange, kind: str,
                         messages: list[dict[str, Any]]) -> tuple[CheckResult, bool]: ...

    def guardrails_data(self, exchange: Exchange) -> dict[str, Any] | None: ...


# ------------------------------------------------------------------------------------------ string treatment

def _scannable(text: str) -> str:
    """``text`` with lone surrogates (which ``\\ud800`` escapes decode to, and RE2 cannot encode) replaced by
    U+FFFD one for one, so match offsets stay those of ``text``."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def treat_value(treat: Treatment, text: str, path: str, depth: int = DEPTH) -> tuple[
        str, FilterMatch | None, list[RedactionNote]]:
    """``treat`` one string value at JSON ``path``, and what its JSON escapes spell (tool-call arguments or a
    structured answer writing ``\\u0041KIA...``; JSON text in JSON text, ``depth`` levels: what the agent's
    ``json.loads`` gives back), whether the text parses or not (a truncated answer, prose around JSON): every level
    of :func:`railcar.rails.json_escape.through_escapes`, lone surrogates made scannable. Returns ``(text_out,
    match, notes)``: a match blocks (``text`` returned unchanged); a redaction in a decoded level is mapped back
    onto the text as spelled (:func:`railcar.rails.json_escape.rewrite`: the escapes around it kept); ``text``
    itself (the same object) when nothing changed. Every note carries ``path``."""
    notes: list[RedactionNote] = []
    found: list[FilterMatch] = []

    def change(s: str) -> str | None:
        scan = _scannable(s)
        new, match, more = treat(scan, path)
        if match is not None:
            found.append(match)
            return None
        if new is scan:
            return s
        notes.extend(more)
        return new

    out = through_escapes(text, change, depth)
    if out is None:
        return text, found[0], []
    if out == text:
        return text, None, []
    return out, None, notes


def request_treatment(holdback: HoldBack, action: str) -> Treatment:
    """The treatment of what the agent sends: :meth:`HoldBack.redact_or_block` with ``action`` (``redact`` |
    ``block``, ``[guardrails.inline] request_action``) instead of the stream's."""
    def treat(text: str, path: str) -> tuple[str, FilterMatch | None, list[RedactionNote]]:
        return holdback.redact_or_block(text, path, action)
    return treat


def body_treatment(factory: Callable[[], TextFilter] | None) -> Treatment | None:
    """The treatment of a whole answer's strings: :meth:`HoldBack.redact_or_block` (``[guardrails.inline]
    action``) for the hold-back, a fresh filter fed the whole text then flushed for any other :class:`TextFilter`
    factory, ``None`` without one."""
    if factory is None:
        return None
    if isinstance(factory, HoldBack):
        return factory.redact_or_block

    def treat(text: str, path: str) -> tuple[str, FilterMatch | None, list[RedactionNote]]:
        f = factory()
        released, match = f.feed(text)
        if match is None:
            rest, match = f.flush()
            released += rest
        if match is not None:
            return text, match, []
        if released == text:
            return text, None, []
        return released, None, [replace(n, path=path) for n in f.notes]
    return treat


# ------------------------------------------------------------------------------------------------- requests

async def guard_request(rails: CodecRails, exchange: Exchange, codec: Codec) -> Refusal | None:
    """Steps 1 and 2 of the request policy (module doc) for ``exchange.body`` under ``codec``: ``None`` to send
    it upstream (``exchange.body`` redacted in place, ``exchange.body_changed`` set, notes in
    ``exchange.outcome.redactions``), or the :class:`Refusal` (the exchange's outcome marked blocked)."""
    holdback = rails.filter_factory if isinstance(rails.filter_factory, HoldBack) else None
    action = rails.settings.inline.request_action
    if holdback is not None and action != "off":
        rail = _request_secrets(exchange, request_treatment(holdback, action), rails.turn_cache)
        if rail is not None:
            return _refuse(exchange, rail, DEFAULT_REFUSAL)
    res = await _check_turns(rails, exchange, codec)
    if res is not None:
        return _refuse(exchange, res.rail or "input", res.content or DEFAULT_REFUSAL)
    return None


CLEAN_REQUEST_STRING = "inline"  # the TurnCache kind of a request string the hold-back found nothing in
_CLEAN = CheckResult("passed")


def _request_secrets(exchange: Exchange, treat: Treatment, cache: TurnCache) -> str | None:
    """Treat every string of the request, object keys included (they go to the provider too, and some are the
    agent's to choose: ``metadata`` keys, a tool schema's property names), in one walk; the blocking rail's name, or
    ``None`` after redacting in place. A redacted key is renamed in place (the object's order kept; its note names
    the renamed key); a rename onto a key already there refuses, as a block does. What the hold-back found
    nothing in is remembered in ``cache`` by hash; a redaction or a block is decided again on every call, so its
    note and its refusal are the same each time."""
    notes_out = exchange.outcome.redactions

    def treated(text: str) -> tuple[str, FilterMatch | None, list[RedactionNote]] | None:
        key = cache.key(CLEAN_REQUEST_STRING, text)
        if cache.get(key) is not None:
            return None
        new, match, notes = treat_value(treat, text, "$")  # the path is rendered only for a note
        if match is None and new is text:
            cache.put(key, _CLEAN)
            return None
        return new, match, notes

    def walk(o: Any, parts: Path) -> str | None:
        items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(o, list) else ()
        for k, v in list(items):
            if isinstance(k, str) and (t := treated(k)) is not None:
                new, match, notes = t
                if match is not None or new in o:
                    return match_rail(match) if match is not None else SENSITIVE_DATA
                renamed = [(new if key == k else key, val) for key, val in o.items()]
                o.clear()
                o.update(renamed)
                notes_out.extend(replace(n, path=json_path(parts + (new,))) for n in notes)
                exchange.body_changed = True
                k = new
            if isinstance(v, str):
                if (t := treated(v)) is not None:
                    new, match, notes = t
                    if match is not None:
                        return match_rail(match)
                    o[k] = new
                    notes_out.extend(replace(n, path=json_path(parts + (k,))) for n in notes)
                    exchange.body_changed = True
            elif (rail := walk(v, parts + (k,))) is not None:
                return rail
        return None

    return walk(exchange.body, ())


async def _check_turns(rails: CodecRails, exchange: Exchange, codec: Codec) -> CheckResult | None:
    """Input / tool_output rails on each turn not judged before (the verdict cache); the first block, or
    ``None``. A turn's text is judged alone, as the user message of the check."""
    cache = rails.turn_cache
    for turn in codec.request_messages(exchange.body):
        if not turn.text.strip() or not rails.enabled(turn.kind):
            continue
        key = cache.key(turn.kind, turn.text)
        res = cache.get(key)
        if res is None:
            res, failed = await rails.check_once(exchange, turn.kind, [{"role": "user", "content": turn.text}])
            if not failed:
                cache.put(key, res)
        if res.blocked:
            return res
    return None


def _refuse(exchange: Exchange, rail: str, message: str) -> Refusal:
    exchange.outcome.block(rail)
    if rail not in exchange.outcome.activated_rails:
        exchange.outcome.activated_rails.append(rail)
    metrics.BLOCKED_REQUESTS.labels(rail).inc()
    return Refusal(rail, message)


# --------------------------------------------------------------------------------------------- whole answers

@dataclass
class _Verdicts:
    """What the hold-back decided per scope (a chat choice's ``("choices", i)``, or :data:`_WHOLE`): the edits
    (path -> new value), the notes, the blocking rail of each blocked scope, and the notes of what was blocked."""

    scopes: list[Path]
    edits: dict[Path, list[tuple[Path, Any]]] = field(default_factory=dict)
    notes: dict[Path, list[RedactionNote]] = field(default_factory=dict)
    blocked: dict[Path, str] = field(default_factory=dict)
    withheld: list[RedactionNote] = field(default_factory=list)  # notes of the values blocks kept from the client

    def scope_of(self, parts: Path) -> Path:
        return next((s for s in self.scopes if s and parts[:len(s)] == s), _WHOLE)

    def take(self, parts: Path, new: Any, match: FilterMatch | None, notes: list[RedactionNote]) -> None:
        scope = self.scope_of(parts)
        if match is not None:
            self.blocked.setdefault(scope, match_rail(match))
            self.withheld.append(withheld_note(match))
        elif new is not None:
            self.edits.setdefault(scope, []).append((parts, new))
            self.notes.setdefault(scope, []).extend(notes)


def _scopes(codec: Codec, body: dict[str, Any]) -> list[Path]:
    """The parts judged apart: each chat choice with a ``message``; for every other API the body as a whole."""
    if codec.name != "openai_chat" or not isinstance(body.get("choices"), list):
        return [_WHOLE]
    return [("choices", i) for i, c in enumerate(body["choices"])
            if isinstance(c, dict) and isinstance(c.get("message"), dict)] + [_WHOLE]


def _token_runs(pieces: list[Piece]) -> dict[Path, list[str]]:
    """The ``logprobs`` token sequences of a body, by the path of their list (``choices[0].logprobs.content``,
    a Responses part's ``logprobs``, legacy ``logprobs.tokens``): the answer split token by token. Alternatives
    (``top_logprobs``) are not a sequence and are left out."""
    runs: dict[Path, list[str]] = {}
    for p in pieces:
        parts = p.parts
        if "logprobs" not in parts:
            continue
        li = len(parts) - 1 - parts[::-1].index("logprobs")
        rest = parts[li + 1:]
        ints = [i for i, x in enumerate(rest) if isinstance(x, int)]
        if "top_logprobs" in rest or len(ints) != 1 or rest[ints[0] + 1:] not in ((), ("token",)):
            continue
        runs.setdefault(parts[:li + 1 + ints[0]], []).append(p.text)
    return runs


def _hold_back(treat: Treatment, codec: Codec, body: dict[str, Any], v: _Verdicts) -> None:
    """Step 1: every string, then every token run (a run that would carry a value joined is emptied)."""
    pieces = codec.body_strings(body)
    for piece in pieces:
        new, match, notes = treat_value(treat, piece.text, "$")  # the path is rendered only for a note
        v.take(piece.parts, new if new is not piece.text else None, match,
               [replace(n, path=piece.path) for n in notes])
    for list_parts, tokens in _token_runs(pieces).items():
        scan = _scannable("".join(tokens))
        new, match, notes = treat(scan, json_path(list_parts))
        if match is not None or new is not scan:
            v.take(list_parts, [], match, notes)


def _answer_text(codec: Codec, body: dict[str, Any], scope: Path, v: _Verdicts) -> str:
    """The text the output rails judge in ``scope``: its text, reasoning and refusal strings, in order."""
    return "\n".join(p.text for p in codec.body_strings(body) if p.kind in _ANSWER_KINDS and p.text
                     and v.scope_of(p.parts) == scope
                     and not (isinstance(p.parts[-1], str) and p.parts[-1] in _LABEL_KEYS))


def _scope_calls(codec: Codec, body: dict[str, Any], scope: Path, v: _Verdicts) -> list[str]:
    """The complete arguments of the tool calls in ``scope`` (a chat choice: that choice's only; outside the
    choices there are none)."""
    if not scope and len(v.scopes) > 1:
        return []
    view = {"choices": [body["choices"][scope[1]]]} if scope else body
    return [c.arguments for c in codec.body_tool_calls(view) if c.arguments]


async def _judge_scope(rails: CodecRails, exchange: Exchange, codec: Codec, body: dict[str, Any], scope: Path,
                       user: str, v: _Verdicts) -> CheckResult | None:
    """Steps 2 and 3 on one scope: the first blocking result, or ``None``."""
    if rails.enabled("output"):
        answer = _answer_text(codec, body, scope, v)
        if answer.strip():
            res, _ = await rails.check_once(exchange, "output", [{"role": "user", "content": user},
                                                                  {"role": "assistant", "content": answer}])
            if res.blocked:
                return res
    if rails.enabled("tool_input"):
        for args in _scope_calls(codec, body, scope, v):
            res, _ = await rails.check_once(exchange, "tool_input", [{"role": "user", "content": user},
                                                                      {"role": "assistant", "content": args}])
            if res.blocked:
                return res
    return None


def _last_user(codec: Codec, body: dict[str, Any]) -> str:
    """The last user turn of the request (the context of the output rails), or ``""``."""
    return next((t.text for t in reversed(codec.request_messages(body)) if t.role == "user"), "")


async def guard_body(rails: CodecRails, exchange: Exchange, codec: Codec, body: Any) -> dict[str, Any] | None:
    """The whole-answer policy (module doc) on the parsed upstream ``body``: the body to send instead (edited in
    place, or :meth:`Codec.refusal_body` after a whole block, ``exchange.outcome`` marked blocked), or ``None`` to
    relay the upstream bytes. Notes of what was redacted in what the client receives go to
    ``exchange.outcome.redactions``."""
    if not isinstance(body, dict):
        return None
    v = _Verdicts(_scopes(codec, body))
    treat = body_treatment(rails.filter_factory)
    if treat is not None:
        _hold_back(treat, codec, body, v)
    exchange.outcome.redactions.extend(v.withheld)  # what a block keeps from the client is noted for the trace
    if _WHOLE in v.blocked:
        return _block_whole(rails, exchange, codec, v.blocked[_WHOLE])
    changed = False
    for scope in v.scopes:
        if scope not in v.blocked and v.edits.get(scope):
            for parts, new in v.edits[scope]:
                set_at(body, parts, new)
            exchange.outcome.redactions.extend(v.notes.get(scope, ()))
            changed = True
    user = _last_user(codec, exchange.body)
    for scope in v.scopes:
        if scope in v.blocked:
            continue
        res = await _judge_scope(rails, exchange, codec, body, scope, user, v)
        if res is not None:
            if not scope:
                return _block_whole(rails, exchange, codec, res.rail or "output", res.content)
            v.blocked[scope] = res.rail or "output"
    for scope, rail in v.blocked.items():
        _block_choice(exchange, body["choices"][scope[1]], rail, DEFAULT_REFUSAL)
        changed = True
    if codec.refusal_status == 200 and attach_guardrails_data(rails, exchange, body, codec.name == "openai_chat"):
        changed = True
    return body if changed else None


def _block_whole(rails: CodecRails, exchange: Exchange, codec: Codec, rail: str,
                 message: str = "") -> dict[str, Any]:
    """The API's refusal answer for a block of the whole body by ``rail``."""
    exchange.outcome.block(rail)
    metrics.BLOCKED_STREAMS.labels(rail).inc()
    out = codec.refusal_body(exchange.model, message or DEFAULT_REFUSAL, rail)
    if codec.refusal_status == 200:
        attach_guardrails_data(rails, exchange, out, codec.name == "openai_chat")
    return out


def _block_choice(exchange: Exchange, choice: dict[str, Any], rail: str, message: str) -> None:
    """Replace a blocked chat choice's message by the refusal (every other field of the message, where the value
    may sit, dropped; token ``logprobs`` too), ``finish_reason: content_filter``."""
    choice["message"] = {"role": "assistant", "content": message}
    choice["finish_reason"] = "content_filter"
    if choice.get("logprobs") is not None:
        choice["logprobs"] = None
    exchange.outcome.block(rail)
    metrics.BLOCKED_STREAMS.labels(rail).inc()


def attach_guardrails_data(rails: CodecRails, exchange: Exchange, body: dict[str, Any], choices: bool) -> bool:
    """Put the requested ``guardrails_data`` in ``body``: as a field, or (``choices`` APIs with
    ``guardrails.return_choice``) as an extra ``guardrails_data`` choice. Returns whether there was any."""
    data = rails.guardrails_data(exchange)
    if data is None:
        return False
    if choices and (exchange.guardrails_options or {}).get("return_choice"):
        listed = body.setdefault("choices", [])
        listed.append({"index": len(listed), "message": {"role": "guardrails_data",
                                                         "content": orjson.dumps(data).decode()},
                       "finish_reason": "stop"})
    else:
        body["guardrails_data"] = data
    return True
