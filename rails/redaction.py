"""Redaction: replace every detected value with a typed placeholder and say what was there.

A value becomes ``[REDACTED:<detector>:<fp8>]`` where ``fp8`` is the first 8 hex chars of the keyed fingerprint
(:func:`rails.masking.fingerprint`), so a redacted trace still lets the consumer recognise the same secret across
traces without holding it. Each replacement yields a :class:`RedactionNote` (detector, kind, path, fingerprint,
masked preview) that travels with the event. Placeholders match no detector, so redacting twice changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from rails.scanner import Match, Scanner, _key_path

PLACEHOLDER_RE = re.compile(r"\[REDACTED:([a-z0-9_]+):([0-9a-f]{8})\]")


@dataclass(frozen=True)
class RedactionNote:
    """What one placeholder replaced. ``path``: JSON path of the string; ``fingerprint``: 16 hex chars."""

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
    def from_dict(cls, d: Mapping[str, Any]) -> "RedactionNote":
        """Rebuild from :meth:`as_dict` output; raises ``ValueError`` naming a missing field."""
        try:
            return cls(str(d["detector"]), str(d["kind"]), str(d["path"]), str(d["fingerprint"]),
                       str(d["masked_preview"]), float(d.get("confidence", 0.0)), str(d.get("severity", "high")))
        except KeyError as exc:
            raise ValueError(f"redaction note: missing field {exc.args[0]!r}") from None

    @classmethod
    def from_match(cls, m: Match) -> "RedactionNote":
        """The note for a scanner :class:`Match` (its fingerprint and masked preview, never the value)."""
        return cls(m.detector, m.kind, m.path, m.fingerprint, m.preview, m.confidence, m.severity)


def placeholder(detector_id: str, fingerprint: str) -> str:
    """``[REDACTED:<detector_id>:<first 8 hex of fingerprint>]``."""
    return f"[REDACTED:{detector_id}:{fingerprint[:8]}]"


def replace_matches(text: str, matches: list[Match]) -> str:
    """``text`` with each match's ``start:end`` span replaced by its :func:`placeholder`. ``matches`` must be
    sorted by ``start`` and non-overlapping, as :meth:`Scanner.scan_text` returns them."""
    parts: list[str] = []
    pos = 0
    for m in matches:
        parts.append(text[pos:m.start])
        parts.append(placeholder(m.detector, m.fingerprint))
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts)


def redact_text(scanner: Scanner, text: str, path: str = "$") -> tuple[str, list[RedactionNote]]:
    """``text`` with every match replaced, and the notes (in text order). Unchanged text is returned as is."""
    matches = scanner.scan_text(text, path)
    if not matches:
        return text, []
    return replace_matches(text, matches), [RedactionNote.from_match(m) for m in matches]


def redact_json(scanner: Scanner, obj: Any, path: str = "$") -> tuple[Any, list[RedactionNote]]:
    """A copy of ``obj`` (dict/list/str/scalars) with every string redacted; untouched subtrees are shared, not
    copied. Dict keys are kept as they are. Returns ``(new_obj, notes)``."""
    notes: list[RedactionNote] = []

    def walk(o: Any, p: str) -> Any:
        if isinstance(o, str):
            new, n = redact_text(scanner, o, p)  # scan_text gates first: clean strings cost one Set pass
            notes.extend(n)
            return new
        if isinstance(o, dict):
            out = {k: walk(v, _key_path(p, k) if isinstance(k, str) else p) for k, v in o.items()}
            return o if all(out[k] is o[k] for k in o) else out
        if isinstance(o, (list, tuple)):
            items = [walk(v, f"{p}[{i}]") for i, v in enumerate(o)]
            return o if all(a is b for a, b in zip(items, o)) else type(o)(items)
        return o

    return walk(obj, path), notes
