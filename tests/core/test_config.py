"""railcar.core.config (the generic loader) through railcar.settings (the typed root): TOML + RAILCAR_* loading,
errors that name the key and its variable, every check at load time with all errors collected, credentials,
--help; and the table of bad configs under testdata/invalid_configs/, run as real ``railcar serve`` and
``railcar consume`` processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from railcar.cli import build_parser
from railcar.cli import main as cli_main
from railcar.core.config import ConfigError, coerce, env_name
from railcar.settings import RailcarConfig, describe_options, load_config
from railcar.sidecar.settings import UpstreamConfig


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
    with pytest.raises(ConfigError, match="upstream.api_key_file"):  # checked at load time now
        load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="upstream.api_key_file"):  # and still at use, for a section built by hand
        UpstreamConfig(api_key_file=str(tmp_path / "missing")).api_key({})
    cfg = load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_ENV": "MY_KEY", "MY_KEY": "sk-custom"})
    assert cfg.upstream.api_key({"MY_KEY": "sk-custom"}) == "sk-custom"


def _all_keys() -> list[str]:
    keys = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}.{f.name}".lstrip("."))
            else:
                keys.append(f"{prefix}.{f.name}".lstrip("."))

    walk(RailcarConfig, "")
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


# ---------------------------------------------------------------------------------------------------- invalid configs
# OpenTelemetry Collector style: one file per bad setting, the expected key in the first line (``# expect: KEY``).

INVALID_CONFIGS = sorted((Path(__file__).parent / "testdata" / "invalid_configs").glob("*.toml"))


def _expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <key>'"
    return first.removeprefix("# expect: ").strip()


def _railcar(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAILCAR_")}
    return subprocess.run([sys.executable, "-m", "railcar", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_invalid_config_table_is_there():
    assert len(INVALID_CONFIGS) >= 14


@pytest.mark.parametrize("path", INVALID_CONFIGS, ids=lambda p: p.stem)
def test_invalid_config_has_exactly_its_one_problem(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the files resolve against an empty directory
    key = _expected_key(path)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert isinstance(err.value, ValueError)
    assert len(err.value.errors) == 1, err.value.errors
    assert err.value.errors[0].startswith(key + ":") and env_name(key) in err.value.errors[0]


@pytest.mark.parametrize("command", ["serve", "consume"])
@pytest.mark.parametrize("path", INVALID_CONFIGS, ids=lambda p: p.stem)
def test_invalid_config_exits_2_naming_the_setting(path, command, tmp_path):
    key = _expected_key(path)
    out = _railcar(command, "--config", str(path), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert key in out.stderr and env_name(key) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["serve", "consume"])
def test_every_bad_setting_is_reported_at_once(tmp_path, command):
    p = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\n'
                        '[detection]\ndisabled_detectors = ["no_such_detector"]\n[server]\nport = 0\n')
    out = _railcar(command, "--config", str(p), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 3, out.stderr
    for key in ("kafka.sasl_mechanism", "detection.disabled_detectors", "server.port"):
        assert sum(key in line and env_name(key) in line for line in lines) == 1, (key, out.stderr)


def test_loader_collects_coercion_unknown_and_validation_errors(tmp_path):
    p = write(tmp_path, '[server]\nport = "x"\nprot = 1\n[sever]\n[fileset]\nroot = ""\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={"RAILCAR_KAFKA_NO_SUCH": "1"})
    errors = err.value.errors
    assert str(err.value) == "\n".join(errors)
    assert [e.split(":")[0] for e in errors] == ["sever", "server.prot", "server.port", "RAILCAR_KAFKA_NO_SUCH",
                                                 "fileset.root"]


# ---------------------------------------------------------------------------------------------------- env variables


def test_problem_of_a_value_from_the_environment_names_the_variable_first():
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RAILCAR_TELEMETRY_SPOOL_MAX_BYTES": "0"})
    assert err.value.errors == ["RAILCAR_TELEMETRY_SPOOL_MAX_BYTES: must be > 0 (telemetry.spool_max_bytes)"]


def test_cross_field_problem_from_the_environment_names_key_and_variable():
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"RAILCAR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"})
    (error,) = err.value.errors
    assert error.startswith("kafka.sasl_mechanism:") and "RAILCAR_KAFKA_SASL_MECHANISM" in error
    cfg = load_config(None, environ={"RAILCAR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                                     "RAILCAR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                     "RAILCAR_KAFKA_SASL_PASSWORD": "pw"})  # a credential variable, allowed
    assert cfg.kafka.client_options({"RAILCAR_KAFKA_SASL_PASSWORD": "pw"})["sasl_plain_password"] == "pw"


def test_environment_fixes_a_bad_file_value(tmp_path):
    p = write(tmp_path, "[server]\nport = 70000\n[telemetry]\nspool_max_bytes = 0\n")
    cfg = load_config(p, environ={"RAILCAR_SERVER_PORT": "9000", "RAILCAR_TELEMETRY_SPOOL_MAX_BYTES": "1048576",
                                  "RAILCAR_TELEMETRY_SPOOL_SEGMENT_BYTES": "65536"})
    assert (cfg.server.port, cfg.telemetry.spool_max_bytes, cfg.telemetry.spool_segment_bytes) == (9000, 1 << 20, 65536)


def test_environment_list_and_file_paths(tmp_path):
    with pytest.raises(ConfigError, match="RAILCAR_DETECTION_DISABLED_DETECTORS: unknown detector id.*'nope'"):
        load_config(None, environ={"RAILCAR_DETECTION_DISABLED_DETECTORS": "github_token, nope"})
    cfg = load_config(None, environ={"RAILCAR_DETECTION_DISABLED_DETECTORS": '["github_token"]'})
    assert cfg.detection.disabled_detectors == ["github_token"]
    key = tmp_path / "fp.key"
    key.write_text("\n")
    with pytest.raises(ConfigError, match="RAILCAR_DETECTION_FINGERPRINT_KEY_FILE: .* is empty"):
        load_config(None, environ={"RAILCAR_DETECTION_FINGERPRINT_KEY_FILE": str(key)})
    key.write_text("k" * 32)
    assert load_config(None, environ={"RAILCAR_DETECTION_FINGERPRINT_KEY_FILE": str(key)}).detection.fingerprint_key_file
    with pytest.raises(ConfigError, match="RAILCAR_GUARDRAILS_CONFIG_PATH: .* does not exist"):
        load_config(None, environ={"RAILCAR_GUARDRAILS_CONFIG_PATH": str(tmp_path / "none")})
    assert load_config(None, environ={"RAILCAR_GUARDRAILS_CONFIG_PATH": "default"}).guardrails.config_path == "default"


def test_railcar_config_variable_names_the_file(tmp_path):
    p = write(tmp_path, "[server]\nport = 9100\n")
    assert load_config(None, environ={"RAILCAR_CONFIG": str(p)}).server.port == 9100
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(None, environ={"RAILCAR_CONFIG": str(tmp_path / "missing.toml")})


def test_validate_after_a_change_reports_every_problem():
    cfg = RailcarConfig()
    cfg.validate()
    cfg.server.port, cfg.fileset.root = 0, ""
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert [e.split(":")[0] for e in err.value.errors] == ["server.port", "fileset.root"]


@pytest.mark.parametrize("value, tp, from_env, expected", [
    ("yes", bool, True, True), ("off", bool, True, False), (True, bool, False, True),
    ("8080", int, True, 8080), (8080, int, False, 8080), ("1.5", float, True, 1.5), (2, float, False, 2.0),
    ("a, b,", list, True, ["a", "b"]), ('["a,b"]', list, True, ["a,b"]), ('{"x": "1"}', dict, True, {"x": "1"}),
    ("", dict, True, {}), ("", bool | None, True, None), ("on", bool | None, True, True),
])
def test_coerce_per_type(value, tp, from_env, expected):
    assert coerce(value, tp, from_env) == expected


@pytest.mark.parametrize("value, tp", [("yes", bool), (True, int), ("8080", int), (True, float), (1, str),
                                        ("a", list), ("{}", dict)])
def test_coerce_from_toml_wants_the_type(value, tp):
    with pytest.raises(TypeError):
        coerce(value, tp, from_env=False)


# ---------------------------------------------------------------------------------------------------- issue 13: no
# RAILCAR_* variable is silently ignored; nothing that may be a credential is echoed


@pytest.mark.parametrize("var, nearest", [
    ("RAILCAR_GUARDRAIL_CONFIG_PATH", "RAILCAR_GUARDRAILS_CONFIG_PATH"),  # a misspelt section
    ("RAILCAR_SERVR_PORT", "RAILCAR_SERVER_PORT"),  # ends like a service link, but its value is not tcp://
    ("RAILCAR_KAFKA_BOOTSTRAP_SERVER", "RAILCAR_KAFKA_BOOTSTRAP_SERVERS"),  # a known section, a misspelt key
])
def test_unknown_railcar_variable_is_refused_with_the_nearest_setting(var, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={var: "8080"})
    (error,) = err.value.errors
    assert error.startswith(f"{var}: unknown setting") and f"did you mean {nearest}?" in error


def test_variables_that_are_not_settings_but_allowed():
    environ = {
        "RAILCAR_FINGERPRINT_KEY": "k" * 32, "RAILCAR_KAFKA_SASL_PASSWORD": "pw",  # credentials (*_env defaults)
        "RAILCAR_UPSTREAM_API_KEY_ENV": "MY_KEY", "MY_KEY": "sk-2",  # a credential variable named by a setting
        # Kubernetes service links of a `railcar` release's Services in the same namespace
        "RAILCAR_CONSUMER_SERVICE_HOST": "10.0.0.11", "RAILCAR_CONSUMER_SERVICE_PORT": "9100",
        "RAILCAR_CONSUMER_SERVICE_PORT_METRICS": "9100", "RAILCAR_CONSUMER_PORT": "tcp://10.0.0.11:9100",
        "RAILCAR_CONSUMER_PORT_9100_TCP": "tcp://10.0.0.11:9100", "RAILCAR_CONSUMER_PORT_9100_TCP_PROTO": "tcp",
        "RAILCAR_CONSUMER_PORT_9100_TCP_PORT": "9100", "RAILCAR_CONSUMER_PORT_9100_TCP_ADDR": "10.0.0.11",
        "RAILCAR_SERVER_SERVICE_HOST": "10.0.0.12",  # a Service named railcar-server: inside a section's prefix
    }
    assert load_config(None, environ=environ).upstream.api_key(environ) == "sk-2"
    # RAILCAR_UPSTREAM_API_KEY is no credential any more once api_key_env names MY_KEY
    with pytest.raises(ConfigError, match="RAILCAR_UPSTREAM_API_KEY: unknown setting"):
        load_config(None, environ={"RAILCAR_UPSTREAM_API_KEY_ENV": "MY_KEY", "RAILCAR_UPSTREAM_API_KEY": "sk-1"})


def test_env_field_holding_a_credential_is_refused_and_not_echoed(tmp_path):
    p = write(tmp_path, '[upstream]\napi_key_env = "sk-live-0123456789abcdef"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    (error,) = err.value.errors
    assert error.startswith("upstream.api_key_env: must name an environment variable") and "sk-live" not in error


@pytest.mark.parametrize("text", [
    # a table where config_inline's YAML text belongs: the model's api_key is in it
    '[guardrails.config_inline]\nmodels = [{ engine = "openai", parameters = { api_key = "sk-live-0123456789abcdef" } }]\n',
    '[upstream]\napi_key_file = ["sk-live-0123456789abcdef"]\n',
])
def test_bad_table_or_array_value_is_not_echoed_whatever_the_field(tmp_path, text):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert "invalid value: expected a string" in str(err.value) and "sk-live" not in str(err.value)


@pytest.mark.parametrize("key, url", [
    ("upstream.base_url", "ftp://user:sk-live-0123456789abcdef@gateway/v1"),
    ("upstream.base_url", "gateway/v1?key=sk-live-0123456789abcdef"),
    ("guardrails.remote.endpoint", "grpc://guardrails:8000/?token=sk-live-0123456789abcdef"),
])
def test_bad_url_names_its_scheme_never_the_url(key, url):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={env_name(key): url})
    (error,) = err.value.errors
    assert "must start with http:// or https://" in error and "sk-live" not in error
    assert ("(not " + url.split("//")[0] + "//)" in error) == ("://" in url)


@pytest.mark.parametrize("key", ["upstream.api_key_file", "detection.fingerprint_key_file"])
def test_key_pasted_in_place_of_its_file_is_not_echoed(key):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={env_name(key): "sk-live-0123456789abcdef"})
    (error,) = err.value.errors
    assert error.startswith(f"{env_name(key)}: cannot read the file: ") and "sk-live" not in error
    if key == "upstream.api_key_file":  # and at use, for a section built by hand
        with pytest.raises(ConfigError) as err:
            UpstreamConfig(api_key_file="sk-live-0123456789abcdef").api_key({})
        assert "upstream.api_key_file" in str(err.value) and "sk-live" not in str(err.value)


def _bounded_fields(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out += _bounded_fields(hints[f.name], key)
        elif f.metadata.get("bound"):
            out.append((key, f.metadata["bound"]))
    return out


BOUNDED = _bounded_fields(RailcarConfig)


def test_the_bounded_fields_are_the_sizes_and_timeouts() -> None:
    keys = {k for k, _ in BOUNDED}
    assert {"server.max_body_bytes", "upstream.read_timeout_s", "telemetry.spool_max_bytes", "kafka.linger_ms",
            "guardrails.remote.timeout_millis", "guardrails.inline.max_holdback_chars"} <= keys


@pytest.mark.parametrize(("key", "bound"), BOUNDED)
def test_every_bound_is_checked_at_load(key: str, bound: str) -> None:
    bad = "0" if bound == ">0" else "-1"
    with pytest.raises(ConfigError) as err:
        load_config(None, {env_name(key): bad})
    assert err.value.errors == [f"{env_name(key)}: must be {'> 0' if bound == '>0' else '>= 0'} ({key})"]
