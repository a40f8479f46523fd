"""railcar.sidecar.headers rules, and the same rules end to end through a running sidecar."""

from __future__ import annotations

import aiohttp
from multidict import CIMultiDict

from railcar.sidecar.headers import forwarded_headers, response_headers, upstream_headers


def client_headers() -> CIMultiDict:
    return CIMultiDict([
        ("Authorization", "Bearer sk-agent-own-key"), ("X-Request-Id", "r1"), ("traceparent", "00-aa-bb-01"),
        ("tracestate", "v=1"), ("baggage", "user=u1"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "drop me"),
        ("Keep-Alive", "timeout=5"), ("Cookie", "c=1"), ("User-Agent", "agent/1"), ("Content-Type", "application/json"),
        ("Transfer-Encoding", "chunked"), ("X-Tenant", "t1"),
    ])


def test_forwarded_allowlist_and_hop_by_hop():
    out = forwarded_headers(client_headers())
    assert out == {"x-request-id": "r1", "traceparent": "00-aa-bb-01", "tracestate": "v=1", "baggage": "user=u1",
                   "content-type": "application/json", "x-tenant": "t1"}


def test_credential_replaces_client_authorization_and_defaults_lose_to_request():
    out = upstream_headers(client_headers(), api_key="sk-upstream",
                           default_headers={"X-Tenant": "default", "X-Org": "org1", "Connection": "close"})
    assert out["authorization"] == "Bearer sk-upstream"
    assert out["x-tenant"] == "t1" and out["x-org"] == "org1"
    assert "connection" not in out and "cookie" not in out and "user-agent" not in out


def test_pass_client_authorization_and_no_key():
    assert upstream_headers(client_headers(), api_key="k", pass_client_authorization=True)["authorization"] == \
        "Bearer sk-agent-own-key"
    assert "authorization" not in upstream_headers(client_headers(), api_key=None)


def test_response_headers_drop_recomputed_and_keep_repeats():
    out = response_headers(CIMultiDict([("Content-Type", "application/json"), ("Content-Length", "3"),
                                        ("Content-Encoding", "gzip"), ("Transfer-Encoding", "chunked"),
                                        ("x-ratelimit-remaining", "9"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]))
    assert out == [("Content-Type", "application/json"), ("x-ratelimit-remaining", "9"), ("Set-Cookie", "a=1"),
                   ("Set-Cookie", "b=2")]


async def test_headers_end_to_end(replay_upstream, make_config, start_sidecar, records, tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    cfg = make_config(upstream={"base_url": replay_upstream.base_url, "api_key_file": str(key_file),
                                "default_headers": {"x-team": "red", "x-request-id": "default"}},
                      server={"passthrough_paths": ["/v1/embeddings-probe"]})
    sc = await start_sidecar(cfg)
    rec = records[0]
    async with aiohttp.ClientSession() as s:
        async with s.post(sc.base_url + "/chat/completions", json=rec["request"],
                          headers={"Authorization": "Bearer agent", "x-request-id": "abc",
                                   "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                   "baggage": "k=v", "Cookie": "secret=1"}) as r:
            assert r.status == rec["status"]
        async with s.get(sc.base_url + "/embeddings-probe?q=1", headers={"x-request-id": "e"}) as r:
            echo = await r.json()
    seen = replay_upstream.requests[0].headers
    assert seen["authorization"] == "Bearer sk-from-file"
    assert seen["x-request-id"] == "abc" and seen["x-team"] == "red"
    assert seen["traceparent"].startswith("00-0af7") and seen["baggage"] == "k=v"
    assert "cookie" not in seen
    assert echo["path"] == "/v1/embeddings-probe" and echo["query"] == "q=1"
    assert echo["headers"]["authorization"] == "Bearer sk-from-file" and echo["headers"]["x-request-id"] == "e"


def test_credentials_never_forwarded_or_traced():
    client = {"Authorization": "Bearer agent", "x-api-key": "sk-ant-agent", "api-key": "azure-agent",
              "Cookie": "s=1", "anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024", "x-trace": "t"}
    traced = forwarded_headers(client)
    assert traced == {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024", "x-trace": "t"}
    # Anthropic: the configured key goes as x-api-key; the agent's Authorization is dropped with it
    ant = upstream_headers(client, api_key="sk-ant-conf", credential_header="x-api-key")
    assert ant["x-api-key"] == "sk-ant-conf" and "authorization" not in ant and "api-key" not in ant
    # OpenAI-style: Bearer, and the agent's x-api-key does not ride along
    oai = upstream_headers(client, api_key="sk-conf")
    assert oai["authorization"] == "Bearer sk-conf" and "x-api-key" not in oai
    # passing the agent's own credential is explicit
    own = upstream_headers(client, api_key="sk-conf", pass_client_authorization=True, credential_header="x-api-key")
    assert own["x-api-key"] == "sk-ant-agent" and own["authorization"] == "Bearer agent"
