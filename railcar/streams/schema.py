"""The span layout: every name and shape the trace recorder writes and the security consumer reads.

One model call is one OTLP span (:mod:`railcar.streams.otlp`); its attributes follow the OpenTelemetry GenAI
semantic conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-spans/) plus Railcar's own
``railcar.*`` names below. Every string is already redacted; ``ref`` = :func:`content_ref` of the text.

- event ``railcar.content`` ``{ref, text}`` (:data:`CONTENT_EVENT`): a text not yet published in this trace
  (message content, tool-call arguments, the request's tool definitions as JSON). Each text is published once per
  trace; later spans reference it by ``ref``. A text cut to the size bound also carries ``truncated: true`` and
  ``original_length`` (characters of the whole redacted text); its ``ref`` is the hash of the whole text.
- ``railcar.input.prefix`` (:data:`INPUT_PREFIX`, a chain hash): the first request messages are the ones already
  described by an earlier span of the trace (agents resend the whole conversation every turn), so only the
  messages after them are listed in ``railcar.input.messages`` (:data:`INPUT_MESSAGES`, JSON list of message
  entries ``{"role", "ref", "name"?, "tool_call_id"?, "tool_calls"?: [{"id", "name", "args_ref"}]}``). The chain
  hash of a message list is :func:`chain_ref` applied per message, so a consumer rebuilds the list by walking it.
- ``railcar.output.message`` (:data:`OUTPUT_MESSAGE`): the answer as one such entry (``role`` ``assistant``,
  ``ref`` of its text, ``reasoning_ref`` / ``refusal_ref`` (:data:`REASONING_REF`, :data:`REFUSAL_REF`) of its
  reasoning and refusal texts when it has them, ``tool_calls``), plus
  ``railcar.request.tools_ref`` (:data:`REQUEST_TOOLS_REF`) and ``railcar.request.stream``.
- ``railcar.rails.activated`` (string array, when any) and ``railcar.rails.blocked`` /
  ``railcar.rails.blocked_rail`` (only when a rail blocked).
- event ``railcar.redaction`` (:data:`REDACTION_EVENT`) per redaction note, attributes ``railcar.redaction.<field>``
  for detector, kind, path, fingerprint, masked_preview, confidence, severity (never the value):
  :func:`redaction_attributes` / :func:`redaction_note`.

Every wire API (``exchange.api``: Chat Completions, Responses, Anthropic Messages, Completions, embeddings) uses
this one layout; its request turns become the message entries (:mod:`railcar.streams.conversation`). The trace is
the conversation; ``gen_ai.conversation.id`` is the id the request or the agent named, else the trace id. The agent
is the resource's ``gen_ai.agent.id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import orjson

from railcar.core.semconv import (
    AGENT_ID,
    ERROR_TYPE,
    HTTP_STATUS_CODE,
    K8S_NAMESPACE_NAME,
    K8S_POD_NAME,
    OPERATION_NAME,
    REQUEST_MAX_TOKENS,
    REQUEST_MODEL,
    REQUEST_TEMPERATURE,
    REQUEST_TOP_P,
    RESPONSE_FINISH_REASONS,
    RESPONSE_ID,
    RESPONSE_MODEL,
    SERVICE_NAME,
    USAGE_INPUT_TOKENS,
    USAGE_OUTPUT_TOKENS,
)

E = TypeVar("E", bound=Mapping[str, Any])

__all__ = [
    "AGENT_ID", "ARGS_REF", "CONTENT_EVENT", "ENTRY_ATTRS", "ERROR_TYPE", "HTTP_STATUS_CODE", "INPUT_MESSAGES",
    "INPUT_PREFIX", "K8S_NAMESPACE_NAME", "K8S_POD_NAME", "OPERATION_NAME", "ORIGINAL_LENGTH", "OUTPUT_MESSAGE",
    "OWN_ATTRS", "OWN_CONTENT_KEYS", "RAILS_ACTIVATED", "REASONING_REF", "REFUSAL_REF", "RAILS_BLOCKED", "RAILS_BLOCKED_RAIL", "REDACTION_EVENT",
    "REDACTION_PREFIX", "REF", "REQUEST_MAX_TOKENS", "REQUEST_MODEL", "REQUEST_STREAM", "REQUEST_TEMPERATURE",
    "REQUEST_TOOLS_REF", "REQUEST_TOP_P", "RESPONSE_FINISH_REASONS", "RESPONSE_ID", "RESPONSE_MODEL",
    "SERVICE_NAME", "TEXT", "TRUNCATED", "USAGE_INPUT_TOKENS", "USAGE_OUTPUT_TOKENS", "chain_ref", "chain_walk",
    "content_ref", "redaction_attributes", "redaction_note",
]

# OpenTelemetry semantic conventions: spelled once, in railcar.core.semconv (imported above).

# ------------------------------------------------------------------ Railcar's span attributes
INPUT_MESSAGES = "railcar.input.messages"
INPUT_PREFIX = "railcar.input.prefix"
OUTPUT_MESSAGE = "railcar.output.message"
REQUEST_TOOLS_REF = "railcar.request.tools_ref"
REQUEST_STREAM = "railcar.request.stream"
RAILS_ACTIVATED = "railcar.rails.activated"
RAILS_BLOCKED = "railcar.rails.blocked"
RAILS_BLOCKED_RAIL = "railcar.rails.blocked_rail"

# ------------------------------------------------------------------ events and their keys
CONTENT_EVENT = "railcar.content"
REF = "ref"                          # content event: the text's content_ref
TEXT = "text"                        # content event: the (redacted, maybe cut) text
TRUNCATED = "truncated"              # content event: True when the text was cut
ORIGINAL_LENGTH = "original_length"  # content event: characters of the whole redacted text
ARGS_REF = "args_ref"                # message entry tool call: content_ref of its arguments
REASONING_REF = "reasoning_ref"      # output entry: content_ref of the answer's reasoning text
REFUSAL_REF = "refusal_ref"          # output entry: content_ref of the answer's refusal text

REDACTION_EVENT = "railcar.redaction"
REDACTION_PREFIX = REDACTION_EVENT + "."

# Values Railcar derives itself (hashes, counters), never scanned as content: a 16-hex ref made only of digits can
# pass a card's Luhn check.
OWN_CONTENT_KEYS = frozenset({REF, ARGS_REF, REASONING_REF, REFUSAL_REF, TRUNCATED, ORIGINAL_LENGTH})
OWN_ATTRS = frozenset({INPUT_PREFIX, REQUEST_TOOLS_REF})
# Attributes holding JSON message entries (a list, or one entry).
ENTRY_ATTRS = frozenset({INPUT_MESSAGES, OUTPUT_MESSAGE})


def content_ref(text: str) -> str:
    """The reference of a (redacted) text: 16 hex chars of SHA-256 over its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def chain_ref(parent: str, entry: Mapping[str, Any]) -> str:
    """The chain hash of a message list after appending ``entry`` (16 hex; ``parent`` is ``""`` at the start)."""
    return hashlib.sha256(parent.encode() + orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def chain_walk(parent: str, entries: Iterable[E]) -> Iterator[tuple[str, str, E]]:
    """``(parent chain, chain after the entry, entry)`` for each of ``entries`` appended in turn to ``parent``."""
    for entry in entries:
        nxt = chain_ref(parent, entry)
        yield parent, nxt, entry
        parent = nxt


def redaction_attributes(note: Mapping[str, Any]) -> dict[str, Any]:
    """The ``railcar.redaction`` event attributes of a note dict (``{"detector": ...}`` ->
    ``{"railcar.redaction.detector": ...}``)."""
    return {REDACTION_PREFIX + k: v for k, v in note.items()}


def redaction_note(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The note dict of a ``railcar.redaction`` event's attributes (inverse of :func:`redaction_attributes`)."""
    return {k.removeprefix(REDACTION_PREFIX): v for k, v in attributes.items()}
