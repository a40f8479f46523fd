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

_KEY = re.compile(rb'"(?:[^"\\]|\\.)*"[ \t\r\n]*:', re.S)


def _keys(o: Any) -> int:
    if type(o) is dict:
        return len(o) + sum(_keys(v) for v in o.values() if type(v) is dict or type(v) is list)
    if type(o) is list:
        return sum(_keys(v) for v in o if type(v) is dict or type(v) is list)
    return 0


def loads(data: bytes) -> Any:
    """``orjson.loads(data)`` (``data``: UTF-8 JSON bytes), or ``orjson.JSONDecodeError`` when it is not JSON or
    an object in it spells a key twice."""
    obj = orjson.loads(data)
    if (type(obj) is dict or type(obj) is list) and len(_KEY.findall(data)) != _keys(obj):
        raise orjson.JSONDecodeError("an object spells a key twice", data.decode("utf-8", "replace"), 0)
    return obj
