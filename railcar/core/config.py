"""Railcar configuration: one TOML file plus ``RAILCAR_<SECTION>_<KEY>`` environment variables.

Shape (every section and key optional; defaults shown by ``railcar serve --help``)::

    [server]            host, port, max_body_bytes, grace_period_s, log_level, log_content
    [upstream]          base_url, api_key_env, api_key_file, timeouts, default_headers, ...
    [guardrails]        config_path, mode, input/output/tool_input/tool_output switches, ...
    [guardrails.remote] endpoint, config_id(s), timeout_millis  ([guardrails.policy], [guardrails.inline] too)
    [detection]         fingerprint key, kinds, disabled_detectors
    [telemetry]         enabled, agent identity, queue and spool sizes
    [kafka]             bootstrap_servers, trace_topic, findings_topic, ...
    [fileset]           root, ...

Each section is a dataclass whose fields carry ``metadata={"help": ..., "choices": ...}``; the loader below is
generic over them, so a room (``rails/``, ``streams/``) owns its section's dataclass and this module only lists
them. Precedence: defaults < TOML file < environment. Nested sections map to longer variable names:
``[guardrails.inline] action`` is ``RAILCAR_GUARDRAILS_INLINE_ACTION``.

Errors: :class:`ConfigError` names the offending key (``upstream.read_timeout_s``) or variable and says why; an
unknown key in the file or an unknown ``RAILCAR_<SECTION>_*`` variable for a known section is an error, so a typo
never silently falls back to a default. (Pattern from the OpenTelemetry Collector: each component config has a
``validate()`` that names the bad field.)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import orjson

ENV_PREFIX = "RAILCAR_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid; the message names the key or variable."""


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    """Declare a config field with its help text (shown by ``--help``) and, for enums, the allowed values."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ServerConfig:
    """``[server]``: where the sidecar listens and how it stops."""

    host: str = opt("127.0.0.1", "Address to bind. Loopback by default: only the agent in the same pod can call it.")
    port: int = opt(8787, "TCP port of the OpenAI-compatible endpoint (agents use http://127.0.0.1:<port>/v1).")
    max_body_bytes: int = opt(8 * 1024 * 1024, "Largest accepted request body in bytes; larger gets HTTP 413.")
    grace_period_s: float = opt(30.0, "On SIGTERM: seconds in-flight streams may take to finish before exit.")
    log_level: str = opt("info", "Log level.", choices=("debug", "info", "warning", "error"))
    log_content: bool = opt(False, "Let NeMo Guardrails log at INFO (its records can quote content); off: no content in logs.")

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming ``server.port``, ``server.max_body_bytes`` or ``server.grace_period_s``."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"server.port: {self.port} is not a TCP port (1-65535)")
        if self.max_body_bytes <= 0:
            raise ConfigError("server.max_body_bytes: must be > 0")
        if self.grace_period_s < 0:
            raise ConfigError("server.grace_period_s: must be >= 0")


@dataclass
class UpstreamConfig:
    """``[upstream]``: the real model endpoint. The credential is never written in the config file."""

    base_url: str = opt("", "Base URL of the real OpenAI-compatible endpoint, e.g. https://api.openai.com/v1.")
    api_key_env: str = opt(
        "RAILCAR_UPSTREAM_API_KEY", "Name of the environment variable holding the upstream API key."
    )
    api_key_file: str = opt("", "File holding the upstream API key (e.g. a mounted Kubernetes Secret).")
    pass_client_authorization: bool = opt(
        False, "Forward the agent's own Authorization header instead of the configured credential."
    )
    connect_timeout_s: float = opt(10.0, "Seconds to establish the upstream connection (then HTTP 502).")
    read_timeout_s: float = opt(300.0, "Seconds of upstream silence tolerated (then HTTP 504 or a closed stream).")
    max_connections: int = opt(1024, "Pooled upstream connections (one ClientSession per process).")
    default_headers: dict = opt({}, "Static headers added to every upstream request (request headers win).")

    def validate(self) -> None:
        """Raises :class:`ConfigError` naming the bad ``upstream.*`` field."""
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"upstream.base_url: {self.base_url!r} must start with http:// or https://")
        for name in ("connect_timeout_s", "read_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"upstream.{name}: must be > 0")
        if self.max_connections <= 0:
            raise ConfigError("upstream.max_connections: must be > 0")

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The upstream credential from ``api_key_file`` (stripped) or the ``api_key_env`` variable; None if unset.

        Raises :class:`ConfigError` naming ``upstream.api_key_file`` when the file cannot be read.
        """
        environ = os.environ if environ is None else environ
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(f"upstream.api_key_file: cannot read {self.api_key_file!r}: {exc.strerror}") from None
        return environ.get(self.api_key_env) or None


def _sections() -> dict[str, type]:
    """Top-level sections, imported lazily so each room owns its dataclass."""
    from railcar.rails.settings import GuardrailsConfig, DetectionConfig
    from railcar.streams.settings import FilesetConfig, KafkaConfig, TelemetryConfig

    return {
        "server": ServerConfig,
        "upstream": UpstreamConfig,
        "guardrails": GuardrailsConfig,
        "detection": DetectionConfig,
        "telemetry": TelemetryConfig,
        "kafka": KafkaConfig,
        "fileset": FilesetConfig,
    }


class RailcarConfig:
    """All sections, as attributes: ``cfg.server.port``, ``cfg.guardrails.inline.action``, ..."""

    def __init__(self, **sections: Any) -> None:
        for name, cls in _sections().items():
            setattr(self, name, sections.get(name) or cls())

    def validate(self) -> None:
        """Run every section's ``validate()`` (recursively); raises :class:`ConfigError` naming the field."""
        for name in _sections():
            _validate_tree(getattr(self, name))

    def as_dict(self) -> dict[str, Any]:
        """Every section as plain dicts (``dataclasses.asdict``), keyed by section name."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _sections()}


def _validate_tree(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value)
    if hasattr(obj, "validate"):
        obj.validate()


# ---------------------------------------------------------------------------------------------------- coercion


def _coerce(value: Any, tp: Any, key: str, choices: tuple[str, ...] | None, from_env: bool) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        return _coerce(value, args[0], key, choices, from_env)
    base = origin or tp
    try:
        if base is bool:
            if isinstance(value, bool):
                out = value
            elif from_env and str(value).lower() in ("1", "true", "yes", "on"):
                out = True
            elif from_env and str(value).lower() in ("0", "false", "no", "off", ""):
                out = False
            else:
                raise TypeError("expected true or false")
        elif base is int:
            if isinstance(value, bool) or not (isinstance(value, int) or from_env):
                raise TypeError("expected an integer")
            out = int(value)
        elif base is float:
            if isinstance(value, bool) or not (isinstance(value, (int, float)) or from_env):
                raise TypeError("expected a number")
            out = float(value)
        elif base is str:
            if not isinstance(value, str):
                raise TypeError("expected a string")
            out = value
        elif base is list:
            if from_env and isinstance(value, str):
                value = orjson.loads(value) if value.lstrip().startswith("[") else [
                    v.strip() for v in value.split(",") if v.strip()
                ]
            if not isinstance(value, list):
                raise TypeError("expected a list")
            out = list(value)
        elif base is dict:
            if from_env and isinstance(value, str):
                value = orjson.loads(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise TypeError("expected a table")
            out = dict(value)
        else:
            out = value
    except (TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        # Tables (upstream.default_headers, guardrails.request_defaults) may carry credentials: never echo them.
        shown = "" if base is dict else f" {value!r}"
        raise ConfigError(f"{key}: invalid value{shown}: {exc}") from None
    if choices:
        items = out if isinstance(out, list) else [out]
        bad = [v for v in items if v not in choices]
        if bad:
            raise ConfigError(f"{key}: {bad[0]!r} is not one of {', '.join(choices)}")
    return out


def _build(cls: type, data: Mapping[str, Any], env: dict[str, str], prefix: str, used_env: set[str]) -> Any:
    """Instantiate section ``cls`` from TOML ``data`` overlaid with matching environment variables."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for name, f in names.items():
        key = f"{prefix}.{name}"
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            sub = data.get(name, {})
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{key}: expected a table")
            kwargs[name] = _build(tp, sub, env, key, used_env)
            continue
        choices = f.metadata.get("choices")
        env_name = ENV_PREFIX + key.replace(".", "_").upper()
        if env_name in env:
            used_env.add(env_name)
            kwargs[name] = _coerce(env[env_name], tp, env_name, choices, from_env=True)
        elif name in data:
            kwargs[name] = _coerce(data[name], tp, key, choices, from_env=False)
    return cls(**kwargs)


def load_config(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> RailcarConfig:
    """Load ``path`` (TOML; optional) and overlay ``RAILCAR_*`` environment variables, then validate.

    Returns a :class:`RailcarConfig`. Raises :class:`ConfigError` for an unreadable or malformed file, an unknown
    section or key, an unknown ``RAILCAR_<SECTION>_*`` variable, a wrongly typed value or a failed ``validate()``.
    ``RAILCAR_CONFIG`` names the file when ``path`` is None.
    """
    env = dict(os.environ if environ is None else environ)
    path = path or env.get("RAILCAR_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {str(path)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path}: invalid TOML: {exc}") from None
    sections = _sections()
    for name in data:
        if name not in sections:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(sections)})")
    used: set[str] = set()
    built = {}
    for name, cls in sections.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{name}: expected a table")
        built[name] = _build(cls, table, env, name, used)
    known_prefixes = tuple(f"{ENV_PREFIX}{name.upper()}_" for name in sections)
    secret_vars = set(_secret_env_names(built.values()))  # variables that hold a credential, not a setting
    for var in env:
        if var.startswith(known_prefixes) and var not in used and var not in secret_vars:
            raise ConfigError(f"{var}: unknown setting (see `railcar serve --help`)")
    cfg = RailcarConfig(**built)
    cfg.validate()
    return cfg


def _secret_env_names(objs: Any) -> Any:
    """Values of every ``*_env`` field: names of variables that hold credentials (``upstream.api_key_env``)."""
    for obj in objs:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from _secret_env_names([value])
            elif f.name.endswith("_env") and value:
                yield value


def describe_options() -> str:
    """Every option as ``section.key  (RAILCAR_SECTION_KEY, default X)  help``: the text ``--help`` prints."""
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}"
            if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"[{key}]")
                walk(hints[f.name], key)
                continue
            env = ENV_PREFIX + key.replace(".", "_").upper()
            default = getattr(inst, f.name)
            choices = f.metadata.get("choices")
            extra = f"; one of {'|'.join(choices)}" if choices else ""
            lines.append(f"  {key} = {default!r}  [{env}{extra}]")
            lines.append(f"      {f.metadata.get('help', '')}")

    for name, cls in _sections().items():
        lines.append(f"[{name}]")
        walk(cls, name)
    return "\n".join(lines)
