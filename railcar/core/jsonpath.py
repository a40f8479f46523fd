"""JSON paths of string values: the one walk and the one rendering every room uses.

A path renders as in JSONPath's dot notation: ``$.messages[3].content[0].text``; a key that is not a Python
identifier is bracketed and JSON-quoted (``$["x-key"]``). Findings hash these strings, so the scanner, the
redaction, the hold-back and the codecs must render a location identically.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

__all__ = ["Parts", "key_path", "json_path", "walk_strings", "iter_strings"]

# A path as its steps: dict keys (str) and list indexes (int), from the root.
Parts = tuple[str | int, ...]


def key_path(path: str, key: str) -> str:
    """``path`` extended by dict key ``key``: ``.key``, or ``["key"]`` when ``key`` is not an identifier."""
    if key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def json_path(parts: Parts) -> str:
    """``("messages", 3, "content")`` -> ``"$.messages[3].content"``."""
    out = "$"
    for p in parts:
        out = f"{out}[{p}]" if isinstance(p, int) else key_path(out, p)
    return out


def walk_strings(obj: Any, prefix: Parts = ()) -> Iterator[tuple[Parts, str]]:
    """Every string value under ``obj`` (dict values and list items, depth first, in document order) as
    ``(parts, text)``. Dict keys are not values and are not yielded."""
    if isinstance(obj, str):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_strings(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk_strings(v, prefix + (i,))


def iter_strings(obj: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Yield ``(json_path, string)`` for every string value inside ``obj``, depth first, in document order: the
    rendered form of :func:`walk_strings`, with an explicit stack (no recursion limit on deep documents)."""
    stack: list[tuple[str, Any]] = [(path, obj)]
    while stack:
        p, o = stack.pop()
        if isinstance(o, str):
            yield p, o
        elif isinstance(o, dict):
            stack.extend((key_path(p, k), v) for k, v in reversed(list(o.items())) if not isinstance(k, int))
        elif isinstance(o, (list, tuple)):
            stack.extend((f"{p}[{i}]", v) for i, v in reversed(list(enumerate(o))))
