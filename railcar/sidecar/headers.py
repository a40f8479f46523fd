"""Which headers go upstream and which come back to the agent.

Request rule (NeMo inference gateway, main model; ``../shared/SEEDS.md`` "header forwarding"): forward ``x-*``,
``traceparent``, ``tracestate``, ``baggage`` and the API version headers (``anthropic-version``,
``anthropic-beta``, ``openai-beta``); drop the agent's credentials (``Authorization``, ``x-api-key``, ``api-key``,
``x-goog-api-key``, ``Cookie``: :data:`CREDENTIAL_NAMES`) and send the configured upstream credential instead
(``Authorization: Bearer <key>`` for OpenAI-style APIs, ``x-api-key: <key>`` for Anthropic Messages, per
https://docs.anthropic.com/en/api/overview "Authentication") unless passing the agent's own is enabled;
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
FORWARDED_NAMES = frozenset({"traceparent", "tracestate", "baggage", "content-type", "accept", "anthropic-version",
                             "anthropic-beta", "openai-beta"})
# Never copied from the agent to the upstream or into a trace: the configured credential replaces them.
CREDENTIAL_NAMES = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                              "cookie"})
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}

__all__ = ["HOP_BY_HOP", "CREDENTIAL_NAMES", "forwarded_headers", "upstream_headers", "response_headers"]


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
    value). Returns a new dict with lower-case names. Never contains a credential (:data:`CREDENTIAL_NAMES`) or a
    hop-by-hop header, so it is also what the trace recorder may see.
    """
    named = _connection_tokens(client)
    out: dict[str, str] = {}
    for k, v in client.items():
        lk = k.lower()
        if ((lk.startswith("x-") or lk in FORWARDED_NAMES) and lk not in HOP_BY_HOP and lk not in named
                and lk not in CREDENTIAL_NAMES):
            out[lk] = v
    return out


def upstream_headers(client: Mapping[str, str], *, api_key: str | None, pass_client_authorization: bool = False,
                     default_headers: Mapping[str, str] | None = None,
                     credential_header: str = "authorization") -> dict[str, str]:
    """Headers for the upstream request (lower-case names).

    ``api_key``: the configured credential (``UpstreamConfig.api_key()``), sent in ``credential_header``
    (``authorization`` as ``Bearer <key>``, or ``x-api-key`` as the bare key); ``None`` sends none.
    ``pass_client_authorization``: forward the agent's own ``Authorization`` and ``x-api-key`` as they are (and
    ignore ``api_key``). ``default_headers``: static headers, overridden by any request header of the same name
    (a default credential is overridden by the credential rule above).
    """
    out = {str(k).lower(): str(v) for k, v in (default_headers or {}).items()}
    for k in [k for k in out if k in HOP_BY_HOP]:
        del out[k]
    out.update(forwarded_headers(client))
    if pass_client_authorization:
        for k, v in client.items():
            if k.lower() in ("authorization", "x-api-key"):
                out[k.lower()] = v
    elif api_key:
        out[credential_header] = f"Bearer {api_key}" if credential_header == "authorization" else api_key
    return out


def response_headers(upstream: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers to relay to the agent, as ``(name, value)`` pairs (repeats kept, e.g. two
    ``Set-Cookie``), minus hop-by-hop ones and those recomputed for the relayed body."""
    items = list(upstream.items()) if hasattr(upstream, "items") else list(upstream)
    named = _connection_tokens(items)
    return [(k, v) for k, v in items if k.lower() not in _RESPONSE_DROP and k.lower() not in named]
