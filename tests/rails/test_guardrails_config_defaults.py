"""Fail closed by default (issue 13, item 4): an unset ``guardrails.config_path`` is the bundled default config, never
no rails; only ``config_path = "none"`` turns them off, and then nothing loads and nothing holds back."""

from __future__ import annotations

import pytest

from railcar.core.config import ConfigError
from railcar.rails.guard import RailsGuard, build_guard
from railcar.rails.guardrails_config import load_guardrails_config
from railcar.rails.inline import holdback_from_config
from railcar.rails.settings import NO_RAILS, DetectionConfig, GuardrailsConfig
from railcar.settings import describe_options, load_config


@pytest.mark.parametrize("config_path, loaded, inline", [
    ("", True, True),  # unset: the default config, with the inline hold-back
    ("default", True, True),
    (NO_RAILS, False, False),  # the one explicit way to run without rails
])
def test_loaded_and_inline_follow_config_path(config_path, loaded, inline) -> None:
    gs = load_config(None, environ={"RAILCAR_GUARDRAILS_CONFIG_PATH": config_path} if config_path else {}).guardrails
    assert (gs.loaded, gs.inline_enabled) == (loaded, inline)
    assert (holdback_from_config(gs, DetectionConfig(), environ={}) is not None) == inline


def test_unset_config_path_loads_the_bundled_default_config() -> None:
    unset = load_guardrails_config(GuardrailsConfig())
    default = load_guardrails_config(GuardrailsConfig(config_path="default"))
    assert unset is default  # the same content, so the same cached load
    assert unset.source == "default" and unset.has_input and unset.has_output


async def test_build_guard_fails_closed_unless_none() -> None:
    cfg = load_config(None, environ={})
    guard = await build_guard(cfg)
    assert isinstance(guard, RailsGuard) and guard.loaded.source == "default" and guard.filter_factory is not None
    await guard.close()
    assert await build_guard(load_config(None, environ={"RAILCAR_GUARDRAILS_CONFIG_PATH": NO_RAILS})) is None


def test_none_has_nothing_to_load_and_contradicts_remote_mode() -> None:
    with pytest.raises(ConfigError, match="guardrails.config_path: 'none' means no rails"):
        load_guardrails_config(GuardrailsConfig(config_path=NO_RAILS))
    with pytest.raises(ConfigError, match=r"'none' \(no rails\) contradicts guardrails.mode = 'remote' \(guardrails.config_path\)"):
        load_config(None, environ={"RAILCAR_GUARDRAILS_CONFIG_PATH": NO_RAILS, "RAILCAR_GUARDRAILS_MODE": "remote",
                                   "RAILCAR_GUARDRAILS_REMOTE_ENDPOINT": "http://127.0.0.1:9"})


def test_help_says_unset_is_the_default_config_and_none_is_no_rails() -> None:
    text = describe_options().split("guardrails.config_path = ", 1)[1].split("\n  guardrails.", 1)[0]
    assert "empty or 'default': the bundled model-free config" in text and "'none': no rails" in text, text
