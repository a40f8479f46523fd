"""Which headers go upstream and which come back to the agent.

Request rule (NeMo inference gateway, main model; ``../shared/SEEDS.md`` "header forwarding"): forward ``x-*``,
``traceparent``, ``tracestate`` and ``baggage``; drop the agent's ``Authorization`` and send the configured
upstream credential instead (``Authorization: Bearer <key>``) unless ``upstream.pass_client_authorization``;
drop hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it names, ``Keep-Alive``,
``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade``); add ``upstream.default_headers`` where the
request has no header of that name (request headers win). ``Content-Type`` and ``Accept`` are kept so the
upstream sees the same media types. Names are compared case-insensitively.

Response rule: every upstream header except hop-by-hop ones and those aiohttp recomputes for the relayed body
(``Content-Length``, ``Content-Encoding`` — the client session already decoded it —, ``Date``, ``Server``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
FORWARDED_NAMES = frozenset({"traceparent", "tracestate", "baggage", "content-type", "accept"})
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}

__all__ = ["HOP_BY_HOP", "forwarded_headers", "upstream_headers", "response_headers"]


def _connection_tokens(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> set[str]:
    items = headers.items() if hasattr(headers, "items") else headers
    names: set[str] = set()
    for k, v in items:
        if k.lower() == "connection":
            names.update(t.strip().lower() for t in v.split(",") if t.strip())
    return names


def forwarded_headers(client: Mapping[str, str]) -> dict[str, str]:
    """The agent's headers that may reach the main model: ``x-*``, trace context, ``baggage``, content type.

    ``client`` is any str→str mapping (aiohttp's ``CIMultiDictProxy`` included; repeated names keep the last
    value). Returns a new dict with lower-case names. Never contains ``Authorization`` or hop-by-hop headers, so
    it is also what the trace recorder may see.
    """
    named = _connection_tokens(client)
    out: dict[str, str] = {}
    for k, v in client.items():
        lk = k.lower()
        if (lk.startswith("x-") or lk in FORWARDED_NAMES) and lk not in HOP_BY_HOP and lk not in named:
            out[lk] = v
    return out


def upstream_headers(client: Mapping[str, str], *, api_key: str | None, pass_client_authorization: bool = False,
                     default_headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers for the upstream request (lower-case names).

    ``api_key``: the configured credential (``UpstreamConfig.api_key()``), sent as ``Bearer``; ``None`` sends no
    ``Authorization``. ``pass_client_authorization``: forward the agent's ``Authorization`` as is (and ignore
    ``api_key``). ``default_headers``: static headers, overridden by any request header of the same name
    (a default ``Authorization`` is overridden by the credential rule above).
    """
    out = {str(k).lower(): str(v) for k, v in (default_headers or {}).items()}
    for k in [k for k in out if k in HOP_BY_HOP]:
        del out[k]
    out.update(forwarded_headers(client))
    if pass_client_authorization:
        auth = client.get("Authorization") if hasattr(client, "get") else None
        if auth is None:
            auth = next((v for k, v in client.items() if k.lower() == "authorization"), None)
        if auth is not None:
            out["authorization"] = auth
    elif api_key:
        out["authorization"] = f"Bearer {api_key}"
    return out


def response_headers(upstream: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers to relay to the agent, as ``(name, value)`` pairs (repeats kept, e.g. two
    ``Set-Cookie``), minus hop-by-hop ones and those recomputed for the relayed body."""
    items = list(upstream.items()) if hasattr(upstream, "items") else list(upstream)
    named = _connection_tokens(items)
    return [(k, v) for k, v in items if k.lower() not in _RESPONSE_DROP and k.lower() not in named]
