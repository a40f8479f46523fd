"""Where each API's calls go (:class:`railcar.sidecar.upstream.Upstream`)."""

from __future__ import annotations

from railcar.sidecar.settings import AnthropicUpstreamConfig, UpstreamConfig
from railcar.sidecar.upstream import Upstream


def test_anthropic_messages_go_to_their_own_upstream_with_their_own_key(monkeypatch):
    monkeypatch.setenv("RAILCAR_UPSTREAM_API_KEY", "sk-main")
    monkeypatch.setenv("RAILCAR_ANTHROPIC_API_KEY", "sk-ant")
    up = Upstream(UpstreamConfig(base_url="http://oai:9000/v1",
                                 anthropic=AnthropicUpstreamConfig(base_url="https://ant.example")))
    assert up.url_for("/v1/messages", base=up.base_for("anthropic_messages")) == "https://ant.example/v1/messages"
    assert up.url_for("/v1/responses", "a=1", base=up.base_for("openai_responses")) == "http://oai:9000/v1/responses?a=1"
    assert (up.api_key, up.anthropic_key) == ("sk-main", "sk-ant")


def test_one_gateway_for_both_apis(monkeypatch):
    monkeypatch.setenv("RAILCAR_UPSTREAM_API_KEY", "sk-main")
    monkeypatch.delenv("RAILCAR_ANTHROPIC_API_KEY", raising=False)
    up = Upstream(UpstreamConfig(base_url="http://gw/v1"))
    assert up.url_for("/v1/messages", base=up.base_for("anthropic_messages")) == "http://gw/v1/messages"
    assert up.anthropic_key == "sk-main" and up.configured
    only_anthropic = Upstream(UpstreamConfig(anthropic=AnthropicUpstreamConfig(base_url="https://ant/v1")))
    assert only_anthropic.configured and only_anthropic.base_for("openai_chat") == ""
    assert only_anthropic.base_for("anthropic_messages") == "https://ant/v1"
