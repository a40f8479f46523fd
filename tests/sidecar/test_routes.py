"""One canonical route per API (issue 13 item 1): every spelling of a guarded path reaches the guard, and the upstream
receives exactly the path that was routed; what has no single meaning is refused."""

from __future__ import annotations

import aiohttp
import pytest

from railcar.sidecar.routes import PassthroughPaths, Refused, Route, normalise, resolve
from railcar.tools.replay_upstream import ReplayUpstream

DEFAULT = PassthroughPaths(["/v1/models", "/v1/models/*"])


@pytest.mark.parametrize("raw, canonical", [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1/chat%2Fcompletions", "/v1/chat/completions"),
    ("/v1/chat%2fcompletions", "/v1/chat/completions"),
    ("/v1/./chat/completions", "/v1/chat/completions"),
    ("/v1/x/../chat/completions", "/v1/chat/completions"),
    ("/v1/x/%2E%2E/chat/completions", "/v1/chat/completions"),
    ("/v1//chat/completions", "/v1/chat/completions"),
    ("//v1/chat/completions/", "/v1/chat/completions"),
    ("/V1/chat/completions", "/v1/chat/completions"),
    ("/v1/models/GPT-4o", "/v1/models/GPT-4o"),  # the tail keeps its case: model ids are case-sensitive
    ("/v1/..%2Fadmin%2Fkeys", "/admin/keys"),
])
def test_normalise(raw, canonical):
    assert normalise(raw) == canonical


@pytest.mark.parametrize("raw", ["/v1/chat%252Fcompletions", "/v1/chat/completions%3Fx=1", "/v1/a%23b",
                                 "/v1/a%5Cb", "/v1/a%00b", "/v1/a%20b", "/v1/%C3%A9", "/v1/%ff", "/v1/%zz",
                                 "/../v1/chat/completions", "/v1/../../admin"])
def test_normalise_refuses_ambiguous_paths(raw):
    out = normalise(raw)
    assert isinstance(out, Refused) and out.status == 400 and out.code == "invalid_path"


@pytest.mark.parametrize("method, raw, want", [
    ("POST", "/v1/Chat/Completions", ("openai_chat", "/v1/chat/completions")),
    ("POST", "/v1/responses/", ("openai_responses", "/v1/responses")),
    ("POST", "/v1/messages", ("anthropic_messages", "/v1/messages")),
    ("POST", "/v1/completions", ("openai_completions", "/v1/completions")),
    ("POST", "/v1/embeddings", ("embeddings", "/v1/embeddings")),
    ("GET", "/v1/models", (None, "/v1/models")),
    ("GET", "/v1/models/gpt-4o", (None, "/v1/models/gpt-4o")),
    ("PUT", "/v1/chat/completions", 405),
    ("GET", "/v1/messages", 405),
    ("GET", "/v1/models2", 404),
    ("POST", "/v1/assistants", 404),
    ("GET", "/admin/keys", 404),
    ("GET", "/v1/..%2Fadmin%2Fkeys", 404),
])
def test_resolve(method, raw, want):
    out = resolve(method, raw, DEFAULT)
    if isinstance(want, int):
        assert isinstance(out, Refused) and out.status == want
        if want == 404 and raw.startswith("/v1/") and "admin" not in raw:
            assert "server.passthrough_paths" in out.message
        return
    assert isinstance(out, Route) and ((out.codec.name if out.codec else None), out.path) == want


def test_passthrough_entries():
    p = PassthroughPaths(["/v1/files/*", "/v1/batches/"])
    assert p.match("/v1/files/a/content") == "/v1/files/*" and p.match("/v1/files") is None
    assert p.match("/v1/batches") == "/v1/batches/" and p.match("/v1/batches/x") is None


# Spellings an attacker tried (issue 13 "Paths"): each either reaches the guarded route (so its guard sees the call
# and the upstream gets exactly /v1/chat/completions) or is refused before anything goes upstream.
ATTACKS = [
    ("POST", "/v1/chat%2Fcompletions", 200), ("POST", "/v1/./chat/completions", 200),
    ("POST", "/v1/x/../chat/completions", 200), ("POST", "/v1/chat/completions/", 200),
    ("POST", "/v1//chat/completions", 200), ("POST", "/V1/CHAT/COMPLETIONS", 200),
    ("PUT", "/v1/chat/completions", 405), ("POST", "/v1/chat%252Fcompletions", 400),
    ("GET", "/v1/..%2Fadmin%2Fkeys", 404), ("POST", "/v1/x%2F..%2Fchat%2Fcompletions", 200),
]


async def test_every_spelling_is_guarded_or_refused(make_config, start_sidecar):
    class Counting:
        """A PassThrough that counts the requests it saw."""
        inspects = True

        def __init__(self):
            self.seen = 0

        async def check_request(self, ex):
            self.seen += 1

        async def check_response(self, ex, body):
            return None

        def open_stream(self, ex, sink, abort):  # pragma: no cover - the calls below do not stream
            raise AssertionError

    guard = Counting()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    async with ReplayUpstream(synthetic=True) as up:
        sc = await start_sidecar(make_config(upstream={"base_url": up.base_url}), guard=guard)
        async with aiohttp.ClientSession() as s:
            for method, path, status in ATTACKS:
                before, n_up = guard.seen, len(up.requests)
                url = aiohttp.client.URL(f"http://127.0.0.1:{sc.port}{path}", encoded=True)
                async with s.request(method, url, json=body) as r:
                    got = (r.status, await r.json())
                assert got[0] == status, (path, got)
                if status == 200:
                    assert guard.seen == before + 1, path
                    assert up.requests[-1].path == "/v1/chat/completions", path
                else:
                    assert len(up.requests) == n_up, path  # refused: nothing left the pod
                    assert set(got[1]) == {"error"} and got[1]["error"]["code"], path
