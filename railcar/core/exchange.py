"""One model call as every room sees it: the :class:`Exchange`, its typed :class:`Outcome` and the
:class:`RedactionNote` s that say what a placeholder replaced.

The proxy creates the exchange, the guard fills :attr:`Exchange.outcome`, the trace recorder reads both once the
exchange is finished. Nothing here imports another Railcar module.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Exchange", "Outcome", "RedactionNote"]


@dataclass(frozen=True)
class RedactionNote:
    """What one placeholder replaced (never the value). ``path``: JSON path of the string (``$.choices[0]...``);
    ``fingerprint``: 16 hex chars of the keyed HMAC; ``masked_preview``: e.g. ``AKIA************MPLE``;
    ``confidence`` in [0, 1]; ``severity``: ``high`` | ``medium`` | ``low``."""

    detector: str
    kind: str
    path: str
    fingerprint: str
    masked_preview: str
    confidence: float
    severity: str

    def as_dict(self) -> dict[str, Any]:
        """The note as a JSON-ready dict with the field names above (what events carry)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RedactionNote:
        """Rebuild from :meth:`as_dict` output; raises ``ValueError`` naming a missing field."""
        try:
            return cls(str(d["detector"]), str(d["kind"]), str(d["path"]), str(d["fingerprint"]),
                       str(d["masked_preview"]), float(d.get("confidence", 0.0)), str(d.get("severity", "high")))
        except KeyError as exc:
            raise ValueError(f"redaction note: missing field {exc.args[0]!r}") from None


@dataclass
class Outcome:
    """What the guard decided about one exchange, for the response and the trace.

    ``activated_rails``: names of the rails that ran, in order; ``blocked`` / ``blocked_rail``: whether and by which
    rail the call was stopped (a refusal or a blocked stream; ``blocked_rail`` may stay ``None`` when the guard did
    not name one); ``redactions``: one note per value the inline hold-back replaced in what the client received;
    ``rail_log``: one dict per check (``type``, ``name``, ``decisions``, ``stop``, ``duration`` in seconds, ``error``) for the
    response's ``guardrails_data.log``; ``rail_errors``: ``{"kind", "error"}`` per check that failed (fail_mode
    decided it); ``client_gone``: the agent closed its connection before the answer ended.
    """

    activated_rails: list[str] = field(default_factory=list)
    blocked: bool = False
    blocked_rail: str | None = None
    redactions: list[RedactionNote] = field(default_factory=list)
    rail_log: list[dict[str, Any]] = field(default_factory=list)
    rail_errors: list[dict[str, str]] = field(default_factory=list)
    client_gone: bool = False

    def block(self, rail: str | None = None) -> None:
        """Mark the exchange blocked, by ``rail`` when named (a report that names no rail keeps the known one)."""
        self.blocked = True
        if rail is not None:
            self.blocked_rail = rail


@dataclass
class Exchange:
    """One model call as the guard and the trace recorder see it.

    ``body`` is the parsed request with the ``guardrails`` field removed (that field, if any, is in
    ``guardrails_options``). ``outcome`` (an :class:`Outcome`) is filled by the guard for traces and responses.
    """

    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    # The wire API of the call: the name of its codec in ``railcar.codecs.registry.CODECS`` (``openai_chat``,
    # ``openai_responses``, ``anthropic_messages``, ``openai_completions``, ``embeddings``).
    api: str = "openai_chat"
    # The upstream URL the call went to (scheme://host:port/path), for ``server.address`` / ``server.port``.
    upstream_url: str = ""
    guardrails_options: dict[str, Any] | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_ns: int = field(default_factory=time.time_ns)
    outcome: Outcome = field(default_factory=Outcome)
    # A guard that edits ``body`` in place sets this so the proxy re-serializes it (replacing ``exchange.body``
    # with a new dict is detected without it); otherwise the client's original bytes go upstream untouched.
    body_changed: bool = False
    # Filled by the proxy as the call completes, for ExchangeObserver (trace recording) off the hot path:
    status: int | None = None            # HTTP status sent to the client
    response_body: bytes | None = None   # non-streaming upstream body, as received
    # upstream SSE `data:` payloads, in order (the first ~8 MiB of them: the proxy bounds what it keeps)
    stream_data: list[bytes] = field(default_factory=list)
    error: str | None = None             # transport failure or client disconnect, if any
    finished_ns: int | None = None

    @property
    def stream(self) -> bool:
        """The request asked for a streamed answer (``"stream": true``)."""
        return bool(self.body.get("stream"))

    @property
    def model(self) -> str:
        """The request's ``model`` (``""`` when absent)."""
        return str(self.body.get("model", ""))


