"""rails/guardrails_config.py: sources, content-hash cache, policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from railcar.rails.guardrails_config import load_guardrails_config
from railcar.rails.settings import GuardrailsConfig, PolicyConfig
from railcar.core.config import ConfigError

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
