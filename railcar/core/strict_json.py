"""JSON parsed the way every reader of the same bytes would parse it: :func:`loads` refuses a duplicate key.

The guard judges what ``orjson.loads`` gives, and the last of two equal keys wins there; the bytes it judged are then
relayed or forwarded as they are, and a reader that keeps the *first* duplicate (RFC 8259 section 4 leaves it to the
implementation) would get a value no rail saw: ``{"content": "<secret>", "content": "ok"}``. Every payload whose
raw bytes go on after a check is parsed here.

The check costs one regex pass and one walk of the parsed object: the number of keys the bytes spell (string tokens
followed by ``:``; the token pattern reads escapes, so a quote inside a string never starts one that is counted)
must equal the number of keys the object holds. Equal counts prove there is no duplicate: a duplicate is a key the
object lost.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["loads"]

_KEY = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"[ \t\r\n]*:', re.S)  # a string token, then a colon


def _keys(o: Any) -> int:
    """The keys of every object in ``o``, at any depth."""
    n, todo = 0, [o]
    while todo:
        x = todo.pop()
        if type(x) is dict:
            n += len(x)
            x = x.values()
        for v in x:
            if type(v) is dict or type(v) is list:
                todo.append(v)
    return n


def loads(data: bytes) -> Any:
    """``orjson.loads(data)`` (``data``: UTF-8 JSON bytes), or ``orjson.JSONDecodeError`` when it is not JSON or
    an object in it spells a key twice.

    Fast path (a stream event without a colon in its text: two byte counts and a walk of the object): when every
    colon in the bytes follows a quote, every key ends in ``":`` and every other ``":`` is an escaped quote inside
    a string, so that count is at least the keys the bytes spell, and equal to the object's keys only when none was
    lost. Otherwise (a colon in a string, whitespace before a key's colon) the exact count decides."""
    obj = orjson.loads(data)
    if type(obj) is dict or type(obj) is list:
        n = _keys(obj)
        quoted = data.count(b'":')
        if (quoted != n or data.count(b":") != quoted) and len(_KEY.findall(data)) != n:
            raise orjson.JSONDecodeError("an object spells a key twice", data.decode("utf-8", "replace"), 0)
    return obj
