"""The codec registry: by name and by canonical route."""

from __future__ import annotations

from railcar.codecs.registry import CODECS, codec_for, route_codec


def test_every_codec_by_name_and_route() -> None:
    assert set(CODECS) == {"openai_chat", "openai_responses", "anthropic_messages", "openai_completions",
                           "embeddings"}
    routes = {"/v1/chat/completions": "openai_chat", "/v1/responses": "openai_responses",
              "/v1/messages": "anthropic_messages", "/v1/completions": "openai_completions",
              "/v1/embeddings": "embeddings"}
    for path, name in routes.items():
        codec = codec_for("post", path)
        assert codec is not None and codec.name == name and codec.path == path
    ops = {c.name: (c.operation, c.provider) for c in CODECS.values()}
    assert ops["openai_completions"] == ("text_completion", "openai")
    assert ops["embeddings"] == ("embeddings", "openai")
    assert ops["anthropic_messages"] == ("chat", "anthropic")


def test_non_canonical_or_wrong_method_is_no_codec() -> None:
    assert codec_for("GET", "/v1/chat/completions") is None
    assert route_codec("/v1/chat/completions") is CODECS["openai_chat"]
    for path in ("/v1/chat/completions/", "/v1/chat%2Fcompletions", "/V1/responses", "/v1/models"):
        assert codec_for("POST", path) is None
