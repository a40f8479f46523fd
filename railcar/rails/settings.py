"""Config sections owned by ``rails/``: ``[guardrails]`` (with ``[guardrails.remote]``, ``[guardrails.policy]``,
``[guardrails.inline]``) and ``[detection]``.

Field names follow the NeMo Relay ``nemo_guardrails`` component (``../shared/seeds/003_*.txt``): ``mode``,
``input``/``output``/``tool_input``/``tool_output`` switches, ``remote.endpoint``, ``remote.config_id`` /
``config_ids``, ``remote.timeout_millis``, ``request_defaults``, ``policy``; plus Railcar's ``fail_mode`` and the
inline hold-back of issue 8. The loader is :func:`railcar.settings.load_config`; every check below runs at load
time (each ``validate()`` returns its :class:`~railcar.core.config.Problem` list), so a bad setting stops every
command before anything starts. The guardrail config's content is compiled later, by
:func:`railcar.rails.guard.build_guard`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from railcar.core.config import Problem, http_url_problems, opt
from railcar.rails.detectors import CATALOG

# ``guardrails.config_path`` value that turns the rails off; the only way to run without them.
NO_RAILS = "none"


@dataclass
class RemoteGuardrailsConfig:
    """``[guardrails.remote]``: a Guardrails server's ``POST /v1/checks``."""

    endpoint: str = opt("", "Base URL of the Guardrails server, e.g. http://127.0.0.1:8000.")
    config_id: str = opt("", "Guardrail config id on the server.")
    config_ids: list = opt([], "Several config ids, checked together (instead of config_id).")
    timeout_millis: int = opt(2000, "Per-check timeout in milliseconds; past it, fail_mode decides.", bound=">0")

    def validate(self) -> list[Problem]:
        """Problems: ``endpoint`` set but not http(s)://, both config id fields set (bounds: the fields' ``bound``)."""
        out = http_url_problems("guardrails.remote.endpoint", self.endpoint)
        if self.config_id and self.config_ids:
            out.append(Problem("guardrails.remote.config_ids", "set config_id or config_ids, not both"))
        return out


@dataclass
class PolicyConfig:
    """``[guardrails.policy]``: what to do with config fields Railcar does not know or support."""

    unknown_field: str = opt("warn", "Unknown field in the guardrail config.", choices=("warn", "error"))
    unsupported_value: str = opt("warn", "Value Railcar cannot honour.", choices=("warn", "error"))


@dataclass
class InlineConfig:
    """``[guardrails.inline]``: the model-free hold-back that keeps catalog secrets out of streams (issue 8)."""

    enabled: bool | None = opt(None, "Inline hold-back on; default: on whenever a guardrail config is loaded.")
    action: str = opt("block", "On a match: end the stream with the error chunk, or redact in place.",
                      choices=("block", "redact"))
    kinds: list = opt(["secret"], "Detector kinds applied inline.", choices=("secret", "pii"))
    max_holdback_chars: int = opt(512, "Cap on characters held back while a possible match is open.", bound=">=0")
    request_action: str = opt("redact", "Catalog secrets in what the agent sends: redact them before the request goes "
                                        "upstream, refuse the request, or leave them.",
                              choices=("redact", "block", "off"))


@dataclass
class GuardrailsConfig:
    """``[guardrails]``: the NeMo Guardrails config that guards the model path, and how it runs."""

    config_path: str = opt("", "NeMo Guardrails config directory (config.yml + Colang) or YAML file; empty or "
                               "'default': the bundled model-free config; 'none': no rails at all (logged as a "
                               "WARNING and shown on /readyz).")
    config_inline: str = opt("", "Inline guardrail config (YAML text), instead of config_path.")
    mode: str = opt("local", "Run rails in-process (IORails) or on a Guardrails server.", choices=("local", "remote"))
    input: bool = opt(True, "Input rails on the request messages.")
    output: bool = opt(True, "Output rails on the answer (chunked when streaming).")
    tool_input: bool = opt(True, "Tool rails on tool-call arguments the model produces.")
    tool_output: bool = opt(True, "Tool rails on role=tool messages sent back to the model.")
    fail_mode: str = opt("closed", "A rail that errors or times out blocks (closed) or passes (open).",
                         choices=("closed", "open"))
    local_timeout_millis: int = opt(10000, "Per-check timeout of local-mode rails in milliseconds (LLM-judged rails "
                                           "call a model); past it, fail_mode decides.", bound=">0")
    request_defaults: dict = opt({}, "Passed through to the Guardrails backend (context, thread_id, rails, ...).")
    remote: RemoteGuardrailsConfig = opt(RemoteGuardrailsConfig, "Remote mode settings.")
    policy: PolicyConfig = opt(PolicyConfig, "Unknown-field and unsupported-value policy.")
    inline: InlineConfig = opt(InlineConfig, "Inline hold-back of catalog secrets in streams.")

    def validate(self) -> list[Problem]:
        """Problems: remote mode without ``remote.endpoint``, both ``config_path``
        and ``config_inline`` set, ``config_path = "none"`` with remote mode, ``config_path`` (other than
        ``default`` / ``none``) missing or neither a directory nor a .yml/.yaml file."""
        out = []
        if self.mode == "remote" and not self.remote.endpoint:
            out.append(Problem("guardrails.remote.endpoint", "required when guardrails.mode = 'remote'"))
        if self.config_path and self.config_inline:
            out.append(Problem("guardrails.config_inline", "set config_path or config_inline, not both"))
        if self.config_path == NO_RAILS and self.mode == "remote":
            out.append(Problem("guardrails.config_path", "'none' (no rails) contradicts guardrails.mode = 'remote'"))
        out.extend(_config_path_problems(self.config_path))
        return out

    @property
    def loaded(self) -> bool:
        """A guardrail configuration is in use: always, unless ``config_path = "none"`` (fail closed: an unset
        ``config_path`` means the bundled default config, see
        :func:`railcar.rails.guardrails_config.load_guardrails_config`)."""
        return self.config_path != NO_RAILS

    @property
    def inline_enabled(self) -> bool:
        """``inline.enabled`` when set, else whether a guardrail configuration is in use (:attr:`loaded`)."""
        return self.loaded if self.inline.enabled is None else self.inline.enabled


@dataclass
class DetectionConfig:
    """``[detection]``: the secret/PII detector catalog used for redaction and by the consumer."""

    fingerprint_key_env: str = opt("RAILCAR_FINGERPRINT_KEY",
                                   "Environment variable holding the deployment key for HMAC fingerprints.")
    fingerprint_key_file: str = opt("", "File holding the fingerprint key (wins over the variable).")
    kinds: list = opt(["secret", "pii"], "Detector kinds to run.", choices=("secret", "pii"))
    disabled_detectors: list = opt([], "Detector ids to switch off.")
    deep: bool = opt(True, "Consumer and `railcar scan --deep`: also run the deep rules library (kingfisher) over "
                           "what the fast catalog did not claim.")
    max_locations_per_finding: int = opt(100, "Locations kept per finding (the total count is always kept).",
                                         bound=">0")

    def validate(self) -> list[Problem]:
        """Problems: ``disabled_detectors`` naming an id not in :data:`railcar.rails.detectors.CATALOG`,
        ``fingerprint_key_file`` set but unreadable or empty."""
        out = []
        known = [d.id for d in CATALOG]
        unknown = sorted(set(self.disabled_detectors) - set(known))
        if unknown:
            out.append(Problem("detection.disabled_detectors",
                               f"unknown detector id(s) {unknown} (known: {', '.join(known)})"))
        if self.fingerprint_key_file:  # the path is not quoted: a key pasted in its place would reach the logs
            try:
                empty = not Path(self.fingerprint_key_file).read_bytes().strip()
            except OSError as exc:
                out.append(Problem("detection.fingerprint_key_file", f"cannot read the file: {exc.strerror}"))
            else:
                if empty:
                    out.append(Problem("detection.fingerprint_key_file", "the file is empty"))
        return out


def _config_path_problems(config_path: str) -> list[Problem]:
    """``guardrails.config_path`` as :func:`railcar.rails.guardrails_config.load_guardrails_config` will open it
    (relative to the working directory, ``~`` expanded): missing, or neither a directory nor a YAML file."""
    if config_path in ("", "default", NO_RAILS):
        return []
    path = Path(config_path).expanduser()
    if not path.exists():
        return [Problem("guardrails.config_path", f"{config_path!r} does not exist")]
    if not path.is_dir() and path.suffix not in (".yml", ".yaml"):
        return [Problem("guardrails.config_path", f"{config_path!r} is neither a directory nor a .yml/.yaml file")]
    return []


class RailsSettings(Protocol):
    """The sections ``rails`` reads from the root config (:class:`railcar.settings.RailcarConfig` has them), so
    this room types its entry points without importing the composition root."""

    guardrails: GuardrailsConfig
    detection: DetectionConfig
