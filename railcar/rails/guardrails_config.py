"""Loading a NeMo Guardrails configuration for Railcar: from a directory, a YAML file or inline YAML.

Sources (``[guardrails]`` in ``railcar.toml``, see :mod:`railcar.rails.settings`):

- ``config_path = "default"`` or unset: the model-free config bundled in ``rails/default_config/config.yml``
  (fail closed: forgetting the setting never means no rails; ``config_path = "none"`` turns them off and
  :attr:`railcar.rails.settings.GuardrailsConfig.loaded` is then false, so nothing is loaded);
- ``config_path = "<dir>"``: a NeMo Guardrails config directory (``config.yml`` + Colang + ``actions.py``), loaded
  with ``RailsConfig.from_path``;
- ``config_path = "<file>.yml|.yaml"``: one YAML file;
- ``config_inline = "<yaml text>"``: inline YAML (NeMo Platform "Inline Configuration", ``../shared/SEEDS.md``).

Catalog markers: in a YAML file, the default config or inline YAML, a ``regex_detection`` pattern
``"@catalog:<detector id>"`` is replaced at load time by that detector's patterns from :mod:`railcar.rails.detectors`
(:func:`railcar.rails.detectors.rail_patterns`), so a rail and the catalog cannot disagree; the default config's
output rail is written this way. A directory source may not use them (NeMo reads its files itself).

Each loaded config is cached by the SHA-256 of its content (every file's relative path and bytes, or the inline
text), so the same content loads and compiles once per process. :func:`validate_against_policy` checks the raw YAML
against ``RailsConfig``'s schema (NeMo silently ignores unknown keys; Railcar warns or refuses, as
``[guardrails.policy] unknown_field`` says) and the values Railcar cannot honour (``unsupported_value``).

Errors: :class:`railcar.core.config.ConfigError` naming ``guardrails.config_path`` / ``guardrails.config_inline`` or the
offending guardrail-config field (``rails.output.streaming.chunk_size``).
"""

from __future__ import annotations

import hashlib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from railcar.core.config import ConfigError
from railcar.rails import detectors
from railcar.rails.settings import NO_RAILS, GuardrailsConfig, PolicyConfig

log = logging.getLogger("railcar.rails")

__all__ = ["DEFAULT_CONFIG_DIR", "CATALOG_MARKER", "LoadedRails", "StreamingSettings", "load_guardrails_config",
           "expand_catalog_markers", "describe_config_error", "validate_against_policy", "clear_cache"]

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "default_config"
CATALOG_MARKER = "@catalog:"

_CACHE: dict[str, LoadedRails] = {}


@dataclass(frozen=True)
class StreamingSettings:
    """``rails.output.streaming`` of the guardrail config: ``enabled``, ``chunk_size`` and ``context_size`` (in
    upstream content deltas), ``stream_first``. Defaults as NeMo Guardrails documents them."""

    enabled: bool = False
    chunk_size: int = 200
    context_size: int = 50
    stream_first: bool = True


@dataclass
class LoadedRails:
    """A loaded guardrail config: the compiled ``RailsConfig`` (``None`` in remote mode without a local copy), its
    content hash, a label for logs, the flow names per rail type and the streaming settings."""

    rails_config: Any
    content_hash: str
    source: str
    input_flows: list[str] = field(default_factory=list)
    output_flows: list[str] = field(default_factory=list)
    streaming: StreamingSettings = field(default_factory=StreamingSettings)
    warnings: list[str] = field(default_factory=list)

    @property
    def has_input(self) -> bool:
        """The config has input flows."""
        return bool(self.input_flows)

    @property
    def has_output(self) -> bool:
        """The config has output flows."""
        return bool(self.output_flows)


def clear_cache() -> None:
    """Forget every cached config (tests)."""
    _CACHE.clear()


def _hash_dir(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."):
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _raw_yaml_of_dir(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for p in sorted(path.glob("*.y*ml")):
        doc = yaml.safe_load(p.read_text()) or {}
        if isinstance(doc, dict):
            raw.update(doc)
    return raw


def load_guardrails_config(settings: GuardrailsConfig) -> LoadedRails:
    """Load and compile the guardrail config named by ``settings`` (the ``[guardrails]`` section).

    Returns the cached :class:`LoadedRails` when the same content was loaded before. Local mode without
    ``config_path``/``config_inline`` loads the bundled default config; remote mode without them yields a
    ``LoadedRails`` with no ``RailsConfig`` (the server owns the policy) and streaming on with the NeMo defaults.
    Raises :class:`ConfigError` when the source is missing or invalid, or for ``config_path = "none"`` (no rails:
    the caller checks :attr:`GuardrailsConfig.loaded` first).
    """
    if settings.config_path == NO_RAILS:
        raise ConfigError("guardrails.config_path: 'none' means no rails; there is no guardrail config to load")
    if not settings.config_path and not settings.config_inline and settings.mode == "remote":
        label = "remote:" + ",".join(settings.remote.config_ids or [settings.remote.config_id])
        return LoadedRails(None, hashlib.sha256(label.encode()).hexdigest(), label,
                           input_flows=["remote"], output_flows=["remote"],
                           streaming=StreamingSettings(enabled=True))
    where, source, path, raw_text = _source(settings)
    digest = hashlib.sha256(raw_text.encode()).hexdigest() if raw_text is not None else _hash_dir(path)
    cached = _CACHE.get(digest)
    if cached is not None:
        validate_against_policy(cached, settings.policy)
        return cached
    rc, raw = _compile(where, source, path, raw_text)
    st = rc.rails.output.streaming
    loaded = LoadedRails(
        rails_config=rc, content_hash=digest, source=source,
        input_flows=list(rc.rails.input.flows), output_flows=list(rc.rails.output.flows),
        streaming=StreamingSettings(bool(st.enabled), st.chunk_size, st.context_size, bool(st.stream_first)),
    )
    loaded.warnings = _unknown_fields(raw, type(rc), "") + _unsupported_values(loaded)
    validate_against_policy(loaded, settings.policy)
    _CACHE[digest] = loaded
    log.info("guardrail config %s loaded (sha256 %s): input %s, output %s", source, digest[:12],
             loaded.input_flows, loaded.output_flows)
    return loaded


def _source(settings: GuardrailsConfig) -> tuple[str, str, Path, str | None]:
    """``(config key, label, path, YAML text)`` of the configured source; the text is ``None`` for a directory
    (the path is unused for inline YAML). Raises :class:`ConfigError` for a missing or unusable path."""
    if settings.config_inline:
        return "guardrails.config_inline", "<inline>", DEFAULT_CONFIG_DIR, settings.config_inline
    where, path_s = "guardrails.config_path", settings.config_path
    if path_s in ("", "default"):
        path = DEFAULT_CONFIG_DIR / "config.yml"
        return where, "default", path, path.read_text()
    path = Path(path_s).expanduser()
    if not path.exists():
        raise ConfigError(f"{where}: {path_s!r} does not exist")
    if path.is_dir():
        return where, str(path), path, None
    if path.suffix in (".yml", ".yaml"):
        return where, str(path), path, path.read_text()
    raise ConfigError(f"{where}: {path_s!r} is neither a directory nor a .yml/.yaml file")


def _compile(where: str, source: str, path: Path, raw_text: str | None) -> tuple[Any, dict[str, Any]]:
    """The compiled ``RailsConfig`` and the raw YAML mapping (markers not expanded) of one source. Raises
    :class:`ConfigError` naming ``where`` for invalid content."""
    from nemoguardrails import RailsConfig  # heavy: imported on first load, not with the package

    try:
        if raw_text is None:
            raw = _raw_yaml_of_dir(path)
            if expand_catalog_markers(raw, where) is not raw:
                raise ConfigError(f"{where}: {CATALOG_MARKER}<id> patterns are expanded in a YAML file or inline "
                                  f"config only; point config_path at the .yml file")
            return RailsConfig.from_path(str(path)), raw
        raw = yaml.safe_load(raw_text) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: the YAML must be a mapping at the top level")
        expanded = expand_catalog_markers(raw, where)
        if expanded is raw:
            return RailsConfig.from_content(yaml_content=raw_text), raw
        return RailsConfig.from_content(config=expanded), raw
    except ConfigError:
        raise
    except Exception as exc:  # pydantic / YAML / Colang errors: say which source failed and why
        raise ConfigError(f"{where}: invalid guardrail config {source}: {describe_config_error(exc)}") from None


def describe_config_error(exc: Exception) -> str:
    """Why a guardrail config did not load, without quoting its content: a ``models:`` entry carries API keys, and
    pydantic's and PyYAML's messages echo the offending input (``input_value={... 'api_key': ...}``, the source
    line). Pydantic: each error's location and message; YAML: the problem and its line/column; anything else: its
    first line, capped."""
    if isinstance(exc, pydantic.ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                         for e in exc.errors(include_input=False, include_url=False))
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"invalid YAML: {exc.problem}{where}"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return first[:200]


def expand_catalog_markers(raw: dict[str, Any], where: str = "guardrails.config_inline") -> dict[str, Any]:
    """``raw`` (a guardrail config mapping) with each ``"@catalog:<detector id>"`` entry of a
    ``rails.config.regex_detection.<source>.patterns`` list replaced by that detector's
    :func:`railcar.rails.detectors.rail_patterns`; ``raw`` itself (the same object) when it has no marker.

    Raises :class:`ConfigError` naming ``where`` and the list entry for an unknown detector id."""
    regex = ((raw.get("rails") or {}).get("config") or {}).get("regex_detection")
    if not isinstance(regex, dict):
        return raw
    sources: dict[str, Any] = {}
    for name, opts in regex.items():
        pats = opts.get("patterns") if isinstance(opts, dict) else None
        if isinstance(pats, list) and any(isinstance(p, str) and p.startswith(CATALOG_MARKER) for p in pats):
            sources[name] = {**opts, "patterns": _expand(pats, f"{where}: rails.config.regex_detection.{name}")}
    if not sources:
        return raw
    rails = raw["rails"]
    return {**raw, "rails": {**rails, "config": {**rails["config"], "regex_detection": {**regex, **sources}}}}


def _expand(patterns: list[Any], key: str) -> list[Any]:
    out: list[Any] = []
    for i, p in enumerate(patterns):
        if not (isinstance(p, str) and p.startswith(CATALOG_MARKER)):
            out.append(p)
            continue
        try:
            out.extend(detectors.rail_patterns(p[len(CATALOG_MARKER):].strip()))
        except KeyError as exc:
            raise ConfigError(f"{key}.patterns[{i}]: {exc.args[0]}") from None
    return out


def validate_against_policy(loaded: LoadedRails, policy: PolicyConfig) -> None:
    """Apply ``[guardrails.policy]`` to the findings of the load: log each as a warning, or raise
    :class:`ConfigError` listing them when the policy for that kind is ``error``."""
    errors = []
    for w in loaded.warnings:
        kind = "unknown_field" if w.startswith("unknown field") else "unsupported_value"
        if getattr(policy, kind) == "error":
            errors.append(w)
        else:
            log.warning("guardrail config %s: %s", loaded.source, w)
    if errors:
        raise ConfigError(f"guardrails.policy: guardrail config {loaded.source}: " + "; ".join(errors))


def _model_of(annotation: Any) -> Any:
    from pydantic import BaseModel

    for cand in (annotation, *typing.get_args(annotation)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _unknown_fields(raw: Any, model: Any, prefix: str) -> list[str]:
    """Keys of ``raw`` that ``model`` (a pydantic model class) does not declare, recursively, as dotted paths."""
    if not isinstance(raw, dict) or model is None:
        return []
    if (model.model_config or {}).get("extra") == "allow":
        return []
    fields = model.model_fields
    names = set(fields) | {f.alias for f in fields.values() if f.alias}
    out = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            out.append(f"unknown field {dotted!r} (NeMo Guardrails ignores it)")
            continue
        name = key if key in fields else next(n for n, f in fields.items() if f.alias == key)
        out += _unknown_fields(value, _model_of(fields[name].annotation), dotted + ".")
    return out


def _unsupported_values(loaded: LoadedRails) -> list[str]:
    rc, out = loaded.rails_config, []
    st = loaded.streaming
    if st.chunk_size < 1:
        out.append(f"unsupported value rails.output.streaming.chunk_size={st.chunk_size} (must be >= 1)")
    if st.context_size < 0:
        out.append(f"unsupported value rails.output.streaming.context_size={st.context_size} (must be >= 0)")
    if rc.colang_version != "1.0":
        out.append(f"unsupported value colang_version={rc.colang_version!r}: rail checks need Colang 1.0")
    return out
