"""Assembling streamed Chat Completions tool calls: ``choices[i].delta.tool_calls`` deltas, per index. One
assembler for the chat codec, the stream guard (``rails``) and the recorder (``streams``).

Shape (OpenAI streaming chat completions): each delta entry carries ``index`` (which call), the first one for an
index also ``id``, ``type`` and ``function.name``; ``function.arguments`` arrives as string fragments to be
concatenated. A call's arguments are *complete* when the concatenation parses as a JSON object or array (a valid
JSON value cannot be extended into another valid one), or when the stream moves on: a delta for a higher index,
``finish_reason``, or the end of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["AssembledCall", "ToolCallAssembler"]


@dataclass
class AssembledCall:
    """One assembled tool call: ``index`` in the choice, ``id``, ``name``, ``arguments`` (the JSON text so far),
    ``complete`` (no more fragments are taken)."""

    index: int
    id: str | None = None
    name: str = ""
    arguments: str = ""
    complete: bool = False


class ToolCallAssembler:
    """Feed each delta's ``tool_calls`` list; learn which calls just became complete.

    :meth:`feed` returns the indices completed by this delta (in index order) and leaves in :attr:`indices` the
    call index each entry was applied to; :meth:`finish` completes the rest. An entry without ``index`` (some
    OpenAI-compatible providers send each call whole and omit it) starts the next call when it names one (``id`` or
    ``function.name``) and continues the last call otherwise. Malformed entries (not a dict, a non-integer
    ``index``) raise :class:`ValueError` naming the field; :attr:`indices` then covers the entries before it.
    """

    def __init__(self) -> None:
        self.calls: dict[int, AssembledCall] = {}
        self.indices: list[int] = []

    def _index_of(self, entry: dict[str, Any]) -> int:
        idx = entry.get("index")
        if idx is None:
            fn = entry.get("function")
            starts = entry.get("id") or (isinstance(fn, dict) and fn.get("name"))
            last = max(self.calls, default=-1)
            return last + 1 if starts or last < 0 else last
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise ValueError("delta.tool_calls[].index: not an integer")
        return idx

    def feed(self, tool_calls: list[Any]) -> list[int]:
        """Apply one delta's ``tool_calls`` entries; return indices whose arguments just became complete."""
        done: list[int] = []
        self.indices = []
        for entry in tool_calls:
            if not isinstance(entry, dict):
                raise ValueError("delta.tool_calls[]: not an object")
            idx = self._index_of(entry)
            self.indices.append(idx)
            call = self.calls.get(idx)
            if call is None:
                # A new call starts: calls with a lower index will get no more fragments.
                for other in self.calls.values():
                    if other.index < idx and not other.complete:
                        other.complete = True
                        done.append(other.index)
                call = self.calls[idx] = AssembledCall(idx)
            if entry.get("id"):
                call.id = entry["id"]
            fn = entry.get("function") or {}
            if fn.get("name"):
                call.name += fn["name"]
            frag = fn.get("arguments")
            if frag and not call.complete:
                call.arguments += frag
                if _is_complete_json(call.arguments):
                    call.complete = True
                    done.append(idx)
        return sorted(set(done))

    def finish(self) -> list[int]:
        """The stream moved on (``finish_reason`` or end): complete every open call; return their indices."""
        done = [c.index for c in self.calls.values() if not c.complete]
        for i in done:
            self.calls[i].complete = True
        return sorted(done)

    @property
    def open(self) -> bool:
        """Some call is still receiving argument fragments."""
        return any(not c.complete for c in self.calls.values())


def _is_complete_json(text: str) -> bool:
    """``text`` parses as a JSON object or array (RFC 8259)."""
    tail = text.rstrip()
    if not tail or tail[-1] not in "}]":
        return False  # cheap gate: only try to parse when it could be a finished object/array
    try:
        return isinstance(orjson.loads(tail), (dict, list))
    except orjson.JSONDecodeError:
        return False
