"""The request's conversation as the span lists it: one :class:`RequestMessage` per message (or item, or block) of
a request of any wire API, read through its codec (:mod:`railcar.codecs`).

- ``openai_chat``: one per ``messages[i]`` (today's layout, unchanged): ``role``, ``content`` (a string as is, a
  list of parts as compact JSON so every part is published and scanned), ``name``, ``tool_call_id`` and
  ``tool_calls[k] = {"id", "function": {"name", "arguments"}}``.
- every other API: the turns the rails see (:meth:`railcar.codecs.base.Codec.request_messages`), grouped by the
  element of the request they sit in: Responses ``instructions`` / ``input`` (a string) / ``input[i]`` / stored
  ``prompt`` variables; Anthropic ``system`` / ``messages[i].content`` (a string) / ``messages[i].content[j]`` (one
  entry per block, so each ``tool_result`` keeps its ``tool_use_id``); Completions ``prompt`` / ``suffix``;
  embeddings ``input``. The text is the group's turn texts joined by ``"\\n"``. The tool calls the model made
  earlier, handed back as history (Responses ``function_call`` / ``custom_tool_call`` items, Anthropic
  ``tool_use`` blocks), come from the codec's :meth:`~railcar.codecs.base.Codec.body_tool_calls` over that history.
  ``tool_call_id``: the element's ``call_id`` (Responses ``*_output`` items) or ``tool_use_id`` (Anthropic
  ``tool_result``); ``name``: an element's own ``name`` string.

What a message does not carry as text or call (ids, URLs, media, signatures, encrypted payloads) is not listed: a
string the span does not publish is not at rest. Pure code, never raises on an odd request (what does not fit is
left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from railcar.codecs.base import Codec, Path, get_at, json_path

__all__ = ["RequestCall", "RequestMessage", "request_messages"]


@dataclass(frozen=True)
class RequestCall:
    """One tool call of the history: ``id`` / ``name`` / ``arguments`` (JSON text) and the JSON path of each (for
    redaction notes)."""

    id: str
    name: str
    arguments: str
    id_path: str
    name_path: str
    args_path: str


@dataclass
class RequestMessage:
    """One entry of ``railcar.input.messages`` before redaction: ``role``; ``text`` and ``text_path`` (its JSON
    path); ``path`` (of the element); ``name`` / ``tool_call_id`` (``None`` when absent); ``tool_calls``."""

    role: str
    text: str
    path: str
    text_path: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[RequestCall] = field(default_factory=list)


def _text_of(content: Any) -> str:
    """Chat message content as text: strings as is, content-part lists as compact JSON (so every part is seen)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return orjson.dumps(content).decode()


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _chat(body: dict[str, Any]) -> list[RequestMessage]:
    out: list[RequestMessage] = []
    for i, m in enumerate(body.get("messages") or []):
        if not isinstance(m, dict):
            continue
        p = f"$.messages[{i}]"
        calls = []
        for j, tc in enumerate(m.get("tool_calls") or ()):
            if isinstance(tc, dict):
                fn = tc.get("function")
                fn = fn if isinstance(fn, dict) else {}
                q = f"{p}.tool_calls[{j}]"
                calls.append(RequestCall(str(tc.get("id", "")), str(fn.get("name", "")), _text_of(fn.get("arguments")),
                                         f"{q}.id", f"{q}.function.name", f"{q}.function.arguments"))
        out.append(RequestMessage(str(m.get("role", "")), _text_of(m.get("content")), p, f"{p}.content",
                                  _str(m.get("name")), _str(m.get("tool_call_id")), calls))
    return out


def _group(parts: Path) -> Path:
    """The request element a turn at ``parts`` belongs to (see the module doc)."""
    if len(parts) >= 2 and parts[0] == "input" and isinstance(parts[1], int):
        return parts[:2]
    if len(parts) >= 4 and parts[0] == "messages" and parts[2] == "content" and isinstance(parts[3], int):
        return parts[:4]
    if len(parts) >= 2 and parts[0] == "messages":
        return parts[:3] if len(parts) >= 3 else parts[:2]
    return parts[:1]


def _history_calls(codec: Codec, body: dict[str, Any]) -> dict[Path, list[RequestCall]]:
    """Tool calls handed back in the history, by the element they sit in."""
    out: dict[Path, list[RequestCall]] = {}
    lists: list[tuple[Path, list[Any], str]] = []
    if codec.name == "openai_responses" and isinstance(body.get("input"), list):
        lists.append((("input",), body["input"], "output"))
    elif codec.name == "anthropic_messages":
        for i, m in enumerate(body.get("messages") or ()):
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                lists.append((("messages", i, "content"), m["content"], "content"))
    for prefix, items, key in lists:
        for call in codec.body_tool_calls({key: items}):
            pos = call.key[0]
            if not isinstance(pos, int) or not isinstance(items[pos], dict):
                continue
            item = items[pos]
            p = json_path(prefix + (pos,))
            id_field = "call_id" if "call_id" in item else "id"
            args_field = next((f for f in ("arguments", "input") if f in item), "arguments")
            out.setdefault(prefix + (pos,), []).append(RequestCall(
                call.id, call.name, call.arguments, f"{p}.{id_field}", f"{p}.name", f"{p}.{args_field}"))
    return out


def _element(body: dict[str, Any], parts: Path) -> dict[str, Any]:
    try:
        el = get_at(body, parts)
    except (KeyError, IndexError, TypeError):
        return {}
    return el if isinstance(el, dict) else {}


def request_messages(codec: Codec, body: dict[str, Any]) -> list[RequestMessage]:
    """The request ``body`` of ``codec``'s API as message entries, in request order (see the module doc)."""
    if codec.name == "openai_chat":
        return _chat(body)
    groups: dict[Path, list[Any]] = {}
    for t in codec.request_messages(body):
        groups.setdefault(_group(t.parts), []).append(t)
    calls = _history_calls(codec, body)
    out: list[RequestMessage] = []
    for g in sorted(set(groups) | set(calls), key=_order):
        turns = groups.get(g, [])
        el = _element(body, g)
        is_call = g in calls
        role = turns[0].role if turns else ("assistant" if is_call else str(el.get("role", "user")))
        p = json_path(g)
        text_path = turns[0].path if len(turns) == 1 else p
        call_id = _str(el.get("call_id")) or _str(el.get("tool_use_id")) or _str(el.get("tool_call_id"))
        out.append(RequestMessage(role, "\n".join(t.text for t in turns), p, text_path,
                                  None if is_call else _str(el.get("name")),
                                  None if is_call else call_id, calls.get(g, [])))
    return out


_TOP_ORDER = ("instructions", "system", "prompt", "input", "messages", "suffix")


def _order(g: Path) -> tuple[int, ...]:
    """Request order: the top-level fields in their API's reading order, then positions inside them."""
    top = _TOP_ORDER.index(g[0]) if g and g[0] in _TOP_ORDER else len(_TOP_ORDER)
    return (top, *[(p if isinstance(p, int) else -1) for p in g[1:]])
