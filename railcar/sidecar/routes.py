"""One canonical route per API: the request path normalised once, then routed to a codec or a listed pass-through.

Why: routing on one spelling while the upstream resolves another is a bypass (``/v1/chat%2Fcompletions``,
``/v1/./chat/completions``, ``/v1/x/../chat/completions`` all reach the upstream's ``/v1/chat/completions``;
``/v1/..%2Fadmin`` reaches ``/admin``). So :func:`normalise` turns the raw request path into the one path that is
both routed and sent upstream, and refuses what has no single meaning:

1. percent-decoding, once (RFC 3986 §2.1); a ``%`` still present after it (double encoding) is refused, and so is
   any character outside RFC 3986's ``pchar`` set minus ``%`` (``?``, ``#``, ``\\``, whitespace, controls, non-ASCII
   decoded from an escape), so the decoded path sent upstream means exactly what was routed;
2. duplicate slashes collapsed, dot segments removed (RFC 3986 §5.2.4); a path that climbs above the root is refused;
3. a trailing slash removed;
4. the API prefix's case folded (``/V1/`` -> ``/v1/``; a codec route matches case-insensitively, the way a lenient
   upstream router would; a pass-through path keeps the case of its tail, e.g. a model id).

A path that does not normalise under ``/v1/`` is refused. :func:`resolve` then picks the codec of the canonical
route (:func:`railcar.codecs.registry.route_codec`; the route accepts only its method: 405 otherwise), or a
``server.passthrough_paths`` entry (exact, or ending in ``/*``: one or more further segments), or refuses.

Pure code: no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from railcar.codecs.base import Codec
from railcar.codecs.registry import route_codec

__all__ = ["Route", "Refused", "normalise", "resolve", "PassthroughPaths"]

# RFC 3986 pchar without "%" (escapes are decoded first), plus "/" between segments.
_SAFE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


@dataclass(frozen=True)
class Route:
    """Where a request goes: ``path`` the canonical path (routed and sent upstream), ``codec`` the wire API's codec
    (``None`` for a listed pass-through), ``label`` the metrics label (``chat_completions``, ``responses``... for a
    codec, the matching ``server.passthrough_paths`` entry for a pass-through)."""

    path: str
    codec: Codec | None
    label: str


@dataclass(frozen=True)
class Refused:
    """A request that is not forwarded: ``status`` (400, 404, 405), ``message`` (names the path's problem and the
    setting that would allow it; never request content beyond the path), ``code``; ``allow`` the method a 405 names."""

    status: int
    message: str
    code: str
    allow: str | None = None


def normalise(raw_path: str) -> str | Refused:
    """The canonical spelling of ``raw_path`` (the request target's path, still percent-encoded, no query), or
    :class:`Refused` (400 ``invalid_path``) when it has none (see the module docstring for the rules)."""
    try:
        decoded = unquote(raw_path, errors="strict") if "%" in raw_path else raw_path
    except UnicodeDecodeError:
        decoded = "%"  # an escape that is not UTF-8: refused below like any other undecodable path
    if "%" in decoded or not _SAFE.fullmatch(decoded):
        return Refused(400, "the request path has an encoded or reserved character Railcar does not forward "
                            "(double percent-encoding, '?', '#', '\\', whitespace or a control character)",
                       "invalid_path")
    out: list[str] = []
    for seg in decoded.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if not out:
                return Refused(400, "the request path climbs above the root ('..')", "invalid_path")
            out.pop()
            continue
        out.append(seg)
    if out and out[0].lower() == "v1":
        out[0] = "v1"
    return "/" + "/".join(out)


class PassthroughPaths:
    """``server.passthrough_paths`` compiled: exact canonical paths, and prefixes for entries ending in ``/*``
    (``/v1/models/*`` matches ``/v1/models/gpt-4o`` and deeper, not ``/v1/models`` itself)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.exact: dict[str, str] = {}
        self.prefixes: list[tuple[str, str]] = []
        for e in entries:
            if e.endswith("/*"):
                self.prefixes.append((e[:-1], e))
            else:
                self.exact[e.rstrip("/") or "/"] = e

    def match(self, path: str) -> str | None:
        """The entry that allows canonical ``path``, or ``None``."""
        hit = self.exact.get(path)
        if hit is not None:
            return hit
        return next((e for prefix, e in self.prefixes if path.startswith(prefix) and len(path) > len(prefix)), None)


def resolve(method: str, raw_path: str, passthrough: PassthroughPaths) -> Route | Refused:
    """Route one request: the codec of its canonical path (405 :class:`Refused` for another method), else a listed
    pass-through (any method), else a 404 :class:`Refused` naming the path and ``server.passthrough_paths``."""
    path = normalise(raw_path)
    if isinstance(path, Refused):
        return path
    if not path.startswith("/v1/"):
        return Refused(404, f"Railcar serves the model APIs under /v1/ only, not {path}", "unknown_path")
    codec = route_codec(path.lower())
    if codec is not None:
        if method.upper() != codec.method:
            return Refused(405, f"{codec.path} accepts {codec.method} only", "method_not_allowed", allow=codec.method)
        return Route(codec.path, codec, codec.path.removeprefix("/v1/").replace("/", "_"))
    entry = passthrough.match(path)
    if entry is not None:
        return Route(path, None, entry)
    return Refused(404, f"Railcar has no guard for {path}, so it is not forwarded; to forward it unguarded, add it "
                        f"to server.passthrough_paths", "unguarded_path")
