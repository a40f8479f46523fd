"""Config sections owned by ``sidecar/``: ``[server]`` (where the proxy listens, how it stops) and ``[upstream]``
(the real model endpoint and its credential).

The loader is :func:`railcar.settings.load_config`; :class:`SidecarSettings` is what this room reads of the root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from railcar.core.config import ConfigError, Problem, http_url_problems, opt


@dataclass
class ServerConfig:
    """``[server]``: where the sidecar listens and how it stops."""

    host: str = opt("127.0.0.1", "Address to bind. Loopback by default: only the agent in the same pod can call it.")
    port: int = opt(8787, "TCP port of the OpenAI-compatible endpoint (agents use http://127.0.0.1:<port>/v1).")
    max_body_bytes: int = opt(8 * 1024 * 1024, "Largest accepted request body in bytes; larger gets HTTP 413.", bound=">0")
    grace_period_s: float = opt(30.0, "On SIGTERM: seconds in-flight streams may take to finish before exit.", bound=">=0")
    log_level: str = opt("info", "Log level.", choices=("debug", "info", "warning", "error"))
    log_content: bool = opt(False, "Let NeMo Guardrails log at INFO (its records can quote content); off: no content in logs.")
    passthrough_paths: list = opt(["/v1/models", "/v1/models/*"],
                                  "Unguarded /v1/* paths forwarded as is (a trailing /* matches one or more segments); "
                                  "any other path without a codec is refused.")
    max_event_bytes: int = opt(4 * 1024 * 1024, "Largest SSE event in bytes of a stream the sidecar reads (rails "
                                                "or trace recording on); larger ends the stream with the API's error.", bound=">0")
    read_timeout_s: float = opt(30.0, "Seconds a client may take to send its request headers and body (then the "
                                      "connection is closed).", bound=">0")
    max_idle_connections: int = opt(1024, "Idle keep-alive client connections kept open; the oldest idle ones are "
                                         "closed past it.", bound=">0")

    def validate(self) -> list[Problem]:
        """Problems of ``server.port`` (not 1-65535); the other bounds are the fields' ``bound``."""
        out = []
        if not 0 < self.port < 65536:
            out.append(Problem("server.port", f"{self.port} is not a TCP port (1-65535)"))
        return out


@dataclass
class AnthropicUpstreamConfig:
    """``[upstream.anthropic]``: where ``POST /v1/messages`` (the Anthropic codec) goes, so one sidecar serves an agent
    that uses both providers. Empty ``base_url``: the main ``upstream.base_url``."""

    base_url: str = opt("", "Base URL of the Anthropic endpoint, e.g. https://api.anthropic.com (empty: upstream.base_url).")
    api_key_env: str = opt("RAILCAR_ANTHROPIC_API_KEY", "Environment variable holding the Anthropic API key "
                                                        "(sent as x-api-key).")
    api_key_file: str = opt("", "File holding the Anthropic API key (e.g. a mounted Kubernetes Secret).")
    pass_client_key: bool = opt(False, "Forward the agent's own x-api-key instead of the configured credential.")

    def validate(self) -> list[Problem]:
        """Problems of ``upstream.anthropic.base_url`` (set but not http(s)://) and ``api_key_file`` (unreadable)."""
        out = http_url_problems("upstream.anthropic.base_url", self.base_url) if self.base_url else []
        if self.api_key_file:
            try:
                with open(self.api_key_file, "rb"):
                    pass
            except OSError as exc:
                out.append(Problem("upstream.anthropic.api_key_file", _unreadable(exc)))
        return out

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The Anthropic credential from ``api_key_file`` (stripped) or ``api_key_env``; ``None`` if unset. Raises
        :class:`ConfigError` naming ``upstream.anthropic.api_key_file`` when the file cannot be read."""
        return _credential(self.api_key_file, self.api_key_env, "upstream.anthropic.api_key_file", environ)


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
    connect_timeout_s: float = opt(10.0, "Seconds to establish the upstream connection (then HTTP 502).", bound=">0")
    read_timeout_s: float = opt(300.0, "Seconds of upstream silence tolerated (then HTTP 504 or a closed stream).", bound=">0")
    max_connections: int = opt(1024, "Pooled upstream connections (one ClientSession per process).", bound=">0")
    default_headers: dict = opt({}, "Static headers added to every upstream request (request headers win).")
    anthropic: AnthropicUpstreamConfig = opt(AnthropicUpstreamConfig, "The Anthropic Messages upstream.")

    def validate(self) -> list[Problem]:
        """Problems of ``upstream.base_url`` (not http(s)://) and ``upstream.api_key_file`` (set but unreadable); the
        timeouts' and ``max_connections``' bounds are the fields' ``bound``."""
        out = http_url_problems("upstream.base_url", self.base_url)
        if self.api_key_file:
            try:
                with open(self.api_key_file, "rb"):  # readable; the key itself is read by api_key()
                    pass
            except OSError as exc:
                out.append(Problem("upstream.api_key_file", _unreadable(exc)))
        return out

    def api_key(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The upstream credential from ``api_key_file`` (stripped) or the ``api_key_env`` variable; None if unset.

        Raises :class:`ConfigError` naming ``upstream.api_key_file`` when the file cannot be read.
        """
        return _credential(self.api_key_file, self.api_key_env, "upstream.api_key_file", environ)


def _credential(key_file: str, key_env: str, setting: str, environ: Mapping[str, str] | None) -> str | None:
    """A credential from ``key_file`` (stripped; wins) or the ``key_env`` variable, ``None`` if unset; an unreadable
    file raises :class:`ConfigError` naming ``setting``."""
    environ = os.environ if environ is None else environ
    if key_file:
        try:
            return Path(key_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(Problem(setting, _unreadable(exc)).text()) from None
    return environ.get(key_env) or None


def _unreadable(exc: OSError) -> str:
    """Why a credential file cannot be read, without its path: the value of ``api_key_file`` is where a key gets
    pasted by mistake (``RAILCAR_UPSTREAM_API_KEY_FILE=sk-...``), and errors reach the logs."""
    return f"cannot read the file: {exc.strerror}"


class SidecarSettings(Protocol):
    """The sections ``sidecar`` reads from the root config (:class:`railcar.settings.RailcarConfig` has them), so
    this room types its entry points without importing the composition root."""

    server: ServerConfig
    upstream: UpstreamConfig
