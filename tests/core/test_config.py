"""railcar.core.config: TOML + RAILCAR_* loading, errors that name the key, credentials, --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from railcar.cli import build_parser, main as cli_main
from railcar.core.config import ConfigError, _sections, describe_options, load_config


def write(tmp_path, text: str):
    p = tmp_path / "railcar.toml"
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config(None, environ={})
    assert (cfg.server.host, cfg.server.port, cfg.upstream.base_url) == ("127.0.0.1", 8787, "")


def test_env_overrides_file(tmp_path):
    p = write(tmp_path, '[server]\nport = 9001\nmax_body_bytes = 10\n[upstream]\nbase_url = "http://a:1/v1"\n')
    cfg = load_config(p, environ={"RAILCAR_SERVER_PORT": "9002", "RAILCAR_UPSTREAM_DEFAULT_HEADERS": '{"x-a": "1"}',
                                  "RAILCAR_UPSTREAM_PASS_CLIENT_AUTHORIZATION": "yes"})
    assert cfg.server.port == 9002 and cfg.server.max_body_bytes == 10
    assert cfg.upstream.base_url == "http://a:1/v1" and cfg.upstream.default_headers == {"x-a": "1"}
    assert cfg.upstream.pass_client_authorization is True


def test_nested_section_env_name():
    cfg = load_config(None, environ={"RAILCAR_GUARDRAILS_INLINE_ACTION": "redact"})
    assert cfg.guardrails.inline.action == "redact"


@pytest.mark.parametrize("text, environ, named", [
    ("[server]\nprot = 1\n", {}, "server.prot"),
    ("[sever]\nport = 1\n", {}, "sever"),
    ("[server]\nport = \"x\"\n", {}, "server.port"),
    ("[server]\nport = 70000\n", {}, "server.port"),
    ("[upstream]\nbase_url = \"ftp://x\"\n", {}, "upstream.base_url"),
    ("", {"RAILCAR_SERVER_PROT": "1"}, "RAILCAR_SERVER_PROT"),
    ("", {"RAILCAR_SERVER_PORT": "eighty"}, "RAILCAR_SERVER_PORT"),
    ("", {"RAILCAR_SERVER_LOG_LEVEL": "loud"}, "RAILCAR_SERVER_LOG_LEVEL"),
    ("[server\n", {}, "invalid TOML"),
])
def test_bad_or_unknown_key_is_named(tmp_path, text, environ, named):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), environ=environ)
    assert named in str(e.value)


def test_api_key_env_file_and_error(tmp_path):
    cfg = load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY": "sk-env"})  # a credential, not an unknown key
    assert cfg.upstream.api_key({"RAILCAR_UPSTREAM_API_KEY": "sk-env"}) == "sk-env"
    key = tmp_path / "key"
    key.write_text("  sk-file\n")
    cfg = load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_FILE": str(key)})
    assert cfg.upstream.api_key({"RAILCAR_UPSTREAM_API_KEY": "sk-env"}) == "sk-file"  # the file wins
    cfg = load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="upstream.api_key_file"):
        cfg.upstream.api_key({})
    cfg = load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_ENV": "MY_KEY", "MY_KEY": "sk-custom"})
    assert cfg.upstream.api_key({"MY_KEY": "sk-custom"}) == "sk-custom"


def _all_keys() -> list[str]:
    keys = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}.{f.name}")
            else:
                keys.append(f"{prefix}.{f.name}")

    for name, cls in _sections().items():
        walk(cls, name)
    return keys


def test_help_lists_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    keys = _all_keys()
    assert len(keys) > 20
    for key in keys:
        assert f"  {key} = " in text, key
        assert "RAILCAR_" + key.replace(".", "_").upper() in text
    assert describe_options().count("\n      ") == len(keys)  # one help line per option


def test_cli_reports_config_error_with_exit_2(tmp_path, capsys):
    p = write(tmp_path, "[server]\nprot = 1\n")
    assert cli_main(["serve", "--config", str(p)]) == 2
    assert "server.prot" in capsys.readouterr().err


def test_serve_help_subprocess_exits_0():
    out = subprocess.run([sys.executable, "-m", "railcar", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "upstream.api_key_file" in out.stdout


@pytest.mark.parametrize("text, environ, named", [
    ("", {"RAILCAR_UPSTREAM_DEFAULT_HEADERS": '{"authorization": "Bearer sk-live-0123456789abcdef'},
     "RAILCAR_UPSTREAM_DEFAULT_HEADERS"),
    ('[upstream]\ndefault_headers = "Bearer sk-live-0123456789abcdef"\n', {}, "upstream.default_headers"),
])
def test_bad_table_value_is_named_but_not_echoed(tmp_path, text, environ, named):
    # Header tables carry credentials: the error names the setting and never quotes the value.
    path = tmp_path / "railcar.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=environ)
    assert str(err.value).startswith(named + ": invalid value")
    assert "sk-live" not in str(err.value)
