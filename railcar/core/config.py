"""The generic config machinery: one TOML file plus ``RAILCAR_<SECTION>_<KEY>`` environment variables, loaded into a
root dataclass whose fields are the sections.

No section lives here: each room owns its sections' dataclasses (``railcar.sidecar.settings``,
``railcar.rails.settings``, ``railcar.streams.settings``) and the composition root ``railcar.settings`` names the
root type. A section is a dataclass whose fields are declared with :func:`opt` (help text, allowed values); a field
whose type is itself a dataclass is a nested table (``[guardrails.inline]``). Precedence: defaults < TOML file <
environment. Nested tables map to longer variable names: ``[guardrails.inline] action`` is
``RAILCAR_GUARDRAILS_INLINE_ACTION``.

Checks: every dataclass of the tree may define ``validate() -> list[Problem]`` (full key + why). :func:`load` runs
them all at load time, after coercion, and raises one :class:`ConfigError` listing every problem found (unknown
sections and keys, ``RAILCAR_*`` variables that are no setting, wrongly typed values, failed checks), each naming
the key and its environment variable, so a typo never silently falls back to a default and a fix-rerun loop sees
everything at once; values that may be credentials (tables, arrays, URLs, ``*_env`` values) are never quoted.
(Pattern from the OpenTelemetry Collector: each component config has a ``validate()`` naming the bad field.)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

ENV_PREFIX = "RAILCAR_"
CONFIG_ENV = "RAILCAR_CONFIG"  # names the TOML file (see :func:`load`): the one variable that is not a setting

T = TypeVar("T")


def env_name(key: str) -> str:
    """The environment variable of a full key: ``kafka.sasl_mechanism`` -> ``RAILCAR_KAFKA_SASL_MECHANISM``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


class ConfigError(ValueError):
    """One or more configuration values are missing, unknown or invalid.

    ``errors``: one message per problem, each naming the key (``upstream.read_timeout_s``) or variable; ``str()``
    is the messages joined by newlines.
    """

    def __init__(self, *errors: str) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Problem:
    """What a section's ``validate()`` reports: the full ``key`` (``kafka.sasl_mechanism``) and why it is bad."""

    key: str
    message: str

    def text(self, from_env: bool = False) -> str:
        """One line naming the key and its variable; the name the value came from first."""
        env = env_name(self.key)
        if from_env:
            return f"{env}: {self.message} ({self.key})"
        return f"{self.key}: {self.message} ({env})"


def http_url_problems(key: str, url: str) -> list[Problem]:
    """A problem of ``key`` when ``url`` is set but not ``http(s)://``. Only a scheme is quoted, never the URL: its
    user info, path or query can carry a credential (``https://user:token@gateway/v1``, ``?key=...``)."""
    if not url or url.startswith(("http://", "https://")):
        return []
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    got = f" (not {scheme.group()})" if scheme else ""
    return [Problem(key, f"must start with http:// or https://{got}")]


# A number field's bound (``opt(..., bound=">0")``): the test and the problem's message. Checked by the loader for
# every section, so no section writes "must be > 0" by hand.
_BOUNDS: dict[str, tuple[Callable[[float], bool], str]] = {
    ">0": (lambda v: v > 0, "must be > 0"),
    ">=0": (lambda v: v >= 0, "must be >= 0"),
}


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, *, bound: str | None = None,
        **kw: Any) -> Any:
    """Declare a config field with its help text (shown by ``--help``), for enums the allowed values, and for numbers
    a ``bound`` (``">0"`` or ``">=0"``) that :func:`problems` checks.

    ``default``: the value; a list or dict is copied per instance, a dataclass type is instantiated (a nested table).
    Raises ``ValueError`` for an unknown ``bound``.
    """
    meta: dict[str, Any] = {"help": help}
    if choices:
        meta["choices"] = choices
    if bound is not None:
        if bound not in _BOUNDS:
            raise ValueError(f"opt(bound={bound!r}): one of {', '.join(_BOUNDS)}")
        meta["bound"] = bound
    if isinstance(default, (list, dict)):
        return field(default_factory=functools.partial(type(default), default), metadata=meta, **kw)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return field(default_factory=default, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _is_table(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------------- coercion
# One coercer per field type: (value, from_env) -> value, raising TypeError/ValueError. Values from the environment
# are strings and get the lenient parse (``yes``, ``8080``, ``a,b`` or JSON); TOML values must have the type.

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _to_bool(value: Any, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_env and str(value).lower() in _TRUE:
        return True
    if from_env and str(value).lower() in _FALSE:
        return False
    raise TypeError("expected true or false")


def _to_int(value: Any, from_env: bool) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or from_env):
        raise TypeError("expected an integer")
    return int(value)


def _to_float(value: Any, from_env: bool) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or from_env):
        raise TypeError("expected a number")
    return float(value)


def _to_str(value: Any, from_env: bool) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _to_list(value: Any, from_env: bool) -> list[Any]:
    if from_env and isinstance(value, str):
        value = orjson.loads(value) if value.lstrip().startswith("[") else [
            v.strip() for v in value.split(",") if v.strip()
        ]
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return list(value)


def _to_dict(value: Any, from_env: bool) -> dict[Any, Any]:
    if from_env and isinstance(value, str):
        value = orjson.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise TypeError("expected a table")
    return dict(value)


_COERCERS: dict[type, Callable[[Any, bool], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, list: _to_list, dict: _to_dict,
}


def coerce(value: Any, tp: Any, from_env: bool = False) -> Any:
    """``value`` as field type ``tp`` (``int``, ``list``, ``bool | None``, ...); other types pass unchanged.

    For ``X | None``, ``None`` (and ``""`` from the environment) is ``None``. Raises ``TypeError`` or ``ValueError``
    (``orjson.JSONDecodeError`` for bad JSON from the environment) saying what was expected.
    """
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None or (from_env and value == ""):
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(value, args[0], from_env)
    coercer = _COERCERS.get(typing.get_origin(tp) or tp)
    return value if coercer is None else coercer(value, from_env)


def _coerce_field(value: Any, tp: Any, name: str, choices: tuple[str, ...] | None, from_env: bool) -> Any:
    """Coerce and check ``choices``; raises :class:`ConfigError` whose message starts with ``name``."""
    try:
        out = coerce(value, tp, from_env)
    except (TypeError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        # Tables and arrays may carry credentials (upstream.default_headers, guardrails.request_defaults, a table
        # written where config_inline's YAML text belongs): never echo them, whatever the field's type.
        tabular = isinstance(value, (dict, list)) or (typing.get_origin(tp) or tp) is dict
        shown = "" if tabular else f" {value!r}"
        raise ConfigError(f"{name}: invalid value{shown}: {exc}") from None
    if choices:
        bad = [v for v in (out if isinstance(out, list) else [out]) if v not in choices]
        if bad:
            raise ConfigError(f"{name}: {bad[0]!r} is not one of {', '.join(choices)}")
    return out


# ---------------------------------------------------------------------------------------------------- loading


class _Loader:
    """One load: builds the tree from TOML ``data`` and ``env`` and collects every problem in ``errors``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.used_env: set[str] = set()
        self.errors: list[str] = []

    def build(self, cls: Any, data: Mapping[str, Any], prefix: str) -> Any:
        """Instantiate dataclass ``cls`` (the root when ``prefix`` is empty) from ``data`` overlaid with ``env``."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in data:
            if name not in fields:
                self._unknown(prefix, name, fields)
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            key = _join(prefix, name)
            if _is_table(hints[name]):
                kwargs[name] = self.build(hints[name], self._table(data.get(name, {}), key), key)
            else:
                self._scalar(kwargs, f, hints[name], key, data)
        return cls(**kwargs)

    def _unknown(self, prefix: str, name: str, fields: Mapping[str, Any]) -> None:
        known = ", ".join(fields if not prefix else sorted(fields))
        if prefix:
            self.errors.append(Problem(_join(prefix, name), f"unknown key (known: {known})").text())
        else:
            self.errors.append(f"{name}: unknown section (known: {known})")

    def _table(self, value: Any, key: str) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        self.errors.append(Problem(key, "expected a table").text())
        return {}

    def _scalar(self, kwargs: dict[str, Any], f: dataclasses.Field[Any], tp: Any, key: str,
                data: Mapping[str, Any]) -> None:
        """Set ``kwargs[f.name]`` from the variable or the file; a bad value is an error and keeps the default."""
        choices = f.metadata.get("choices")
        env = env_name(key)
        try:
            if env in self.env:
                self.used_env.add(env)
                kwargs[f.name] = _coerce_field(self.env[env], tp, env, choices, from_env=True)
            elif f.name in data:
                kwargs[f.name] = _coerce_field(data[f.name], tp, key, choices, from_env=False)
        except ConfigError as exc:
            suffix = key if env in self.env else env
            self.errors.extend(f"{e} ({suffix})" for e in exc.errors)

    def check_env(self, root: Any) -> None:
        """Every ``RAILCAR_*`` variable must be a setting, ``RAILCAR_CONFIG``, a credential named by a ``*_env``
        field or a Kubernetes service link (:func:`_is_service_link`); any other is refused with the nearest
        setting's name, so a misspelt section (``RAILCAR_GUARDRAIL_CONFIG_PATH``) never leaves a default in place."""
        allowed = self.used_env | self._credential_vars(root) | {CONFIG_ENV}
        unknown = [var for var, value in self.env.items()
                   if var.startswith(ENV_PREFIX) and var not in allowed and not _is_service_link(var, value)]
        settings = _setting_env_names(type(root), "") if unknown else []
        for var in unknown:
            near = difflib.get_close_matches(var, settings, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            self.errors.append(f"{var}: unknown setting ({hint}see `railcar serve --help`)")

    def _credential_vars(self, root: Any) -> set[str]:
        """The values of the ``*_env`` fields: variables that hold a credential, not a setting. A value that is no
        variable name (a key pasted in its place) is an error that does not quote it."""
        names: set[str] = set()
        for key, name in _secret_env_fields(root, ""):
            if _ENV_NAME.fullmatch(name):
                names.add(name)
            else:
                self.errors.append(Problem(key, "must name an environment variable (letters, digits, _), "
                                                "not hold the credential itself").text(env_name(key) in self.used_env))
        return names

    def check_values(self, root: Any) -> None:
        """Every ``validate()`` of the tree; each problem named by where its value came from."""
        for p in problems(root):
            self.errors.append(p.text(from_env=env_name(p.key) in self.used_env))


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {exc.strerror} ({CONFIG_ENV})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path}: invalid TOML: {exc}") from None


def load(root_type: type[T], path: str | os.PathLike[str] | None = None,
         environ: Mapping[str, str] | None = None) -> T:
    """Load ``path`` (TOML; optional) into ``root_type`` (a dataclass of sections), overlay ``RAILCAR_*`` variables
    from ``environ`` (default ``os.environ``), then run every ``validate()``.

    ``RAILCAR_CONFIG`` names the file when ``path`` is None. Raises :class:`ConfigError` for an unreadable or
    malformed file (at once), else with every problem found: unknown section, key or ``RAILCAR_*``
    variable (the nearest setting named), wrongly typed value, failed check.
    """
    env = dict(os.environ if environ is None else environ)
    path = path or env.get(CONFIG_ENV) or None
    data = _read_toml(path) if path else {}
    loader = _Loader(env)
    root = loader.build(root_type, data, "")
    loader.check_env(root)
    loader.check_values(root)
    if loader.errors:
        raise ConfigError(*loader.errors)
    return typing.cast(T, root)


def problems(root: Any, prefix: str = "") -> list[Problem]:
    """The problems of every table under dataclass ``root`` (``prefix``: its key): each number field outside its
    ``bound`` (:func:`opt`), then what the table's ``validate()`` reports (inner tables first).

    The root's own ``validate()`` is not called: it is the caller (see :func:`raise_problems`).
    """
    out: list[Problem] = []
    for f in dataclasses.fields(root):
        value = getattr(root, f.name)
        key = _join(prefix, f.name)
        if dataclasses.is_dataclass(value):
            out.extend(problems(value, key))
            validate = getattr(value, "validate", None)
            if callable(validate):
                out.extend(validate())
        elif (bound := f.metadata.get("bound")) and isinstance(value, (int, float)):
            ok, why = _BOUNDS[bound]
            if not ok(value):
                out.append(Problem(key, why))
    return out


def raise_problems(obj: Any) -> None:
    """Raise one :class:`ConfigError` listing :func:`problems` of ``obj`` (each as ``key: why (RAILCAR_KEY)``)."""
    found = problems(obj)
    if found:
        raise ConfigError(*(p.text() for p in found))


def _secret_env_fields(obj: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """``(full key, value)`` of every set ``*_env`` field: the names of variables that hold credentials
    (``upstream.api_key_env``)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _secret_env_fields(value, _join(prefix, f.name))
        elif f.name.endswith("_env") and value:
            yield _join(prefix, f.name), value


def _setting_env_names(cls: Any, prefix: str) -> list[str]:
    """The environment variable of every setting under dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        out.extend(_setting_env_names(hints[f.name], key) if _is_table(hints[f.name]) else [env_name(key)])
    return out


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What the kubelet sets for every Service of the pod's namespace (enableServiceLinks, on by default): a release's
# ``railcar-consumer`` Service gives ``RAILCAR_CONSUMER_SERVICE_HOST``, ``RAILCAR_CONSUMER_PORT=tcp://...``, ...
_SERVICE_LINK_NAME = re.compile(r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)"
                                r"(_(PROTO|PORT|ADDR))?)")
_SERVICE_LINK_URL = re.compile(r"(tcp|udp|sctp)://\S+")


def _is_service_link(var: str, value: str) -> bool:
    """Whether ``var`` is a Kubernetes service-link variable: one of the distinctive names, or ``<SERVICE>_PORT``
    whose value is ``tcp://host:port`` (so a misspelt ``RAILCAR_SERVR_PORT=8080`` is still refused)."""
    if _SERVICE_LINK_NAME.fullmatch(var):
        return True
    return var.endswith("_PORT") and bool(_SERVICE_LINK_URL.fullmatch(value))


def describe_options(root_type: type) -> str:
    """Every option of ``root_type`` as ``  section.key = default  [RAILCAR_SECTION_KEY; one of a|b]`` plus a help
    line, under a ``[section]`` header per table: the text ``--help`` prints."""
    lines: list[str] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            key = _join(prefix, f.name)
            if _is_table(hints[f.name]):
                lines.append(f"[{key}]")
                walk(hints[f.name], key)
                continue
            choices = f.metadata.get("choices")
            extra = f"; one of {'|'.join(choices)}" if choices else ""
            if f.metadata.get("bound"):
                extra += f"; {f.metadata['bound']}"
            lines.append(f"  {key} = {getattr(inst, f.name)!r}  [{env_name(key)}{extra}]")
            lines.append(f"      {f.metadata.get('help', '')}")

    walk(root_type, "")
    return "\n".join(lines)


__all__ = ["CONFIG_ENV", "ENV_PREFIX", "ConfigError", "Problem", "coerce", "describe_options", "env_name",
           "http_url_problems", "load", "opt", "problems", "raise_problems"]
