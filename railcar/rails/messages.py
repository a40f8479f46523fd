"""OpenAI chat messages as the rails see them: text of a message's content, the conversation, the last user turn.

Content is a string or a list of content parts (OpenAI Chat Completions ``messages[].content``); only ``text`` parts
are text to judge (images, audio etc. are skipped).
"""

from __future__ import annotations

from typing import Any

__all__ = ["text_of", "conversation", "last_user"]


def text_of(content: Any) -> str:
    """Message content as text: a string, or the ``text`` parts of a content-part list (images etc. skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def conversation(messages: list[Any]) -> list[dict[str, str]]:
    """The ``system`` / ``user`` / ``assistant`` turns of ``messages`` as ``{"role", "content": text}`` dicts, in
    order; assistant and system turns without text are left out (tool calls, refusals), user turns never."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant"):
            text = text_of(m.get("content"))
            if text or m["role"] == "user":
                out.append({"role": m["role"], "content": text})
    return out


def last_user(messages: list[Any]) -> str:
    """The text of the last ``user`` message, or ``""``."""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return text_of(m.get("content"))
    return ""
