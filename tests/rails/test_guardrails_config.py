"""rails/guardrails_config.py: sources, content-hash cache, policy."""

from __future__ import annotations

import base64
import json
import random
import re
import string
from pathlib import Path

import pytest
import yaml

from railcar.core.config import ConfigError
from railcar.rails import detectors as det
from railcar.rails.guardrails_config import CATALOG_MARKER, DEFAULT_CONFIG_DIR, load_guardrails_config
from railcar.rails.inline import holdback_from_config
from railcar.rails.settings import DetectionConfig, GuardrailsConfig, PolicyConfig

YAML = "rails:\n  output:\n    flows: [regex check output]\n    streaming:\n      enabled: true\n      chunk_size: 7\n"


def test_default_directory_and_streaming_settings() -> None:
    loaded = load_guardrails_config(GuardrailsConfig(config_path="default"))
    assert loaded.input_flows == ["regex check input"] and loaded.output_flows == ["regex check output"]
    assert (loaded.streaming.enabled, loaded.streaming.chunk_size, loaded.streaming.context_size) == (True, 200, 50)
    assert loaded.warnings == []


def test_same_content_is_loaded_once(tmp_path: Path) -> None:
    f = tmp_path / "a.yml"
    f.write_text(YAML + "# unique 1\n")
    a = load_guardrails_config(GuardrailsConfig(config_path=str(f)))
    b = load_guardrails_config(GuardrailsConfig(config_path=str(f)))
    c = load_guardrails_config(GuardrailsConfig(config_inline=YAML + "# unique 2\n"))
    assert a is b and a.content_hash == b.content_hash and c.content_hash != a.content_hash
    assert c.streaming.chunk_size == 7 and c.streaming.context_size == 50


def test_unknown_field_warns_or_errors() -> None:
    text = YAML + "    bogus_key: 1\nmystery: true\n"
    loaded = load_guardrails_config(GuardrailsConfig(config_inline=text))
    assert any("'rails.output.bogus_key'" in w for w in loaded.warnings)
    assert any("'mystery'" in w for w in loaded.warnings)
    with pytest.raises(ConfigError, match="rails.output.bogus_key"):
        load_guardrails_config(GuardrailsConfig(config_inline=text, policy=PolicyConfig(unknown_field="error")))


def test_unsupported_value_policy() -> None:
    text = "rails:\n  output:\n    flows: [regex check output]\n    streaming:\n      chunk_size: 0\n"
    assert any("chunk_size=0" in w for w in load_guardrails_config(GuardrailsConfig(config_inline=text)).warnings)
    with pytest.raises(ConfigError, match="chunk_size"):
        load_guardrails_config(GuardrailsConfig(config_inline=text, policy=PolicyConfig(unsupported_value="error")))


def test_bad_sources_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="guardrails.config_path"):
        load_guardrails_config(GuardrailsConfig(config_path=str(tmp_path / "missing")))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="neither a directory"):
        load_guardrails_config(GuardrailsConfig(config_path=str(tmp_path / "x.txt")))
    with pytest.raises(ConfigError, match="guardrails.config_inline"):
        load_guardrails_config(GuardrailsConfig(config_inline="- just\n- a list\n"))
    with pytest.raises(ConfigError, match="guardrails.config_inline: invalid guardrail config"):
        load_guardrails_config(GuardrailsConfig(config_inline="rails:\n  output:\n    flows: 3\n"))


# ------------------------------------------------------------------ the default output rail and the catalog

def _body(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _jwt(rng: random.Random) -> str:
    def seg(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg({'sub': _body(rng, 12)})}.{_body(rng, 43)}"


def catalog_secret_samples() -> dict[str, str]:
    """One real-shaped (random-bodied, not a placeholder) value per catalog secret format."""
    rng = random.Random(11)
    b = lambda n, **kw: _body(rng, n, **kw)  # noqa: E731
    return {
        "private_key": f"-----BEGIN RSA PRIVATE KEY-----\nMIIE{b(60)}\n-----END RSA PRIVATE KEY-----",
        "jwt": _jwt(rng),
        "aws_access_key_id": "AKIA" + b(16, alphabet=string.ascii_uppercase + "234567"),
        "github_token": "ghp_" + b(36),
        "github_fine_grained_pat": "github_pat_" + b(82),
        "gitlab_token": "glpat-" + b(20),
        "slack_token": f"xoxb-{b(11, alphabet=string.digits)}-{b(12, alphabet=string.digits)}-{b(24)}",
        "slack_webhook_url": "https://hooks.slack.com/services/" + b(44),
        "stripe_key": "sk_live_" + b(24),
        "npm_token": "npm_" + b(36),
        "google_api_key": "AIza" + b(35),
        "sendgrid_api_key": "SG." + b(22) + "." + b(43),
        "openai_api_key": "sk-proj-" + b(48),
        "anthropic_api_key": "sk-ant-api03-" + b(93) + "AA",
        "anthropic_admin_key": "sk-ant-admin01-" + b(93) + "AA",
        "nvidia_api_key": "nvapi-" + b(64),
        "huggingface_token": "hf_" + b(34, alphabet=string.ascii_letters),
        "groq_api_key": "gsk_" + b(52),
        "perplexity_api_key": "pplx-" + b(48),
        "xai_api_key": "xai-" + b(80),
        "cohere_api_key": "cohere_api_key = " + b(40),
        "mistral_api_key": "mistral_key = " + b(32),
        "aws_bedrock_api_key": "ABSK" + b(132),
        "slack_legacy_token": f"xoxs-{b(12, alphabet=string.digits)}-{b(9, alphabet=string.digits)}-"
                              f"{b(10, alphabet=string.digits)}-{b(10, alphabet='0123456789abcdef')}",
        "gitlab_session_cookie": "_gitlab_session=" + b(32, alphabet=string.digits + string.ascii_lowercase),
    }


def test_default_output_rail_is_derived_from_the_catalog_and_lists_nothing_twice() -> None:
    raw = yaml.safe_load((DEFAULT_CONFIG_DIR / "config.yml").read_text())
    listed = raw["rails"]["config"]["regex_detection"]["output"]["patterns"]
    assert all(p.startswith(CATALOG_MARKER) for p in listed)  # no pattern written by hand
    ids = [p[len(CATALOG_MARKER):] for p in listed]
    assert len(set(ids)) == len(ids)
    expected = [p for i in ids for p in det.rail_patterns(i)]
    rc = load_guardrails_config(GuardrailsConfig(config_path="default")).rails_config
    patterns = rc.rails.config.regex_detection.output.patterns
    assert patterns == expected and len(set(patterns)) == len(patterns)
    assert all(det.get(i).kind == "secret" for i in ids)


def test_every_catalog_secret_is_caught_by_the_default_output_rail_or_the_holdback() -> None:
    samples = catalog_secret_samples()
    secrets = [d for d in det.CATALOG if d.kind == "secret"]
    assert sorted(samples) == sorted(d.id for d in secrets)  # a new secret format needs a sample here
    gs = GuardrailsConfig(config_path="default")
    rc = load_guardrails_config(gs).rails_config
    rail = [re.compile(p) for p in rc.rails.config.regex_detection.output.patterns]
    hold = holdback_from_config(gs, DetectionConfig(), environ={})
    assert hold is not None
    listed = {p[len(CATALOG_MARKER):] for p in yaml.safe_load((DEFAULT_CONFIG_DIR / "config.yml").read_text())[
        "rails"]["config"]["regex_detection"]["output"]["patterns"]}
    for d in secrets:
        text = f"here it is: {samples[d.id]} (keep it safe)"
        held = {m.detector for m in hold.scanner.scan_text(text)}
        assert d.id in held, d.id  # the hold-back (on by default) catches every catalog secret
        if d.id in listed:
            assert any(r.search(text) for r in rail), d.id  # and the rail the ones it lists


def test_catalog_markers_expand_in_yaml_and_fail_loudly_elsewhere(tmp_path: Path) -> None:
    text = ("rails:\n  config:\n    regex_detection:\n      output:\n        patterns: ['@catalog:groq_api_key', 'x+']\n"
            "  output:\n    flows: [regex check output]\n")
    rc = load_guardrails_config(GuardrailsConfig(config_inline=text)).rails_config
    assert rc.rails.config.regex_detection.output.patterns == [*det.rail_patterns("groq_api_key"), "x+"]
    with pytest.raises(ConfigError, match=r"regex_detection.output.patterns\[0\]: unknown detector 'nope'"):
        load_guardrails_config(GuardrailsConfig(config_inline=text.replace("groq_api_key", "nope")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.yml").write_text(text)
    with pytest.raises(ConfigError, match="guardrails.config_path: @catalog"):
        load_guardrails_config(GuardrailsConfig(config_path=str(tmp_path / "d")))


@pytest.mark.parametrize("yaml_text", [
    # pydantic: a models entry without `model` (its message echoes the whole entry, api key included)
    "models:\n  - type: main\n    engine: openai\n    parameters:\n      api_key: sk-live-SECRETSECRETSECRET\n",
    # YAML: a syntax error on the line that holds the key (PyYAML quotes the line)
    "models:\n  - type: main\n    api_key: \"sk-live-SECRETSECRETSECRET\n  bad: [\n",
])
def test_an_invalid_config_is_named_without_quoting_its_content(yaml_text: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_guardrails_config(GuardrailsConfig(config_inline=yaml_text))
    assert "guardrails.config_inline" in str(err.value) and "SECRET" not in str(err.value)
