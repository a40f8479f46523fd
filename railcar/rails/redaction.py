"""Redaction: replace every detected value with a typed placeholder and say what was there.

A value becomes ``[REDACTED:<detector>:<fp8>]`` where ``fp8`` is the first 8 hex chars of the keyed fingerprint
(:func:`railcar.rails.masking.fingerprint`), so a redacted trace still lets the consumer recognise the same secret across
traces without holding it. Each replacement yields a :class:`RedactionNote` (detector, kind, path, fingerprint,
masked preview) that travels with the event. Placeholders match no detector, so redacting twice changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from railcar.core.exchange import RedactionNote
from railcar.core.jsonpath import key_path
from railcar.rails.json_escape import through_escapes
from railcar.rails.scanner import Match, Scanner

PLACEHOLDER_RE = re.compile(r"\[REDACTED:([a-z0-9_]+):([0-9a-f]{8})\]")


def note_from_match(m: Match) -> RedactionNote:
    """The :class:`railcar.core.exchange.RedactionNote` for a scanner :class:`Match` (its fingerprint and masked
    preview, never the value)."""
    return RedactionNote(m.detector, m.kind, m.path, m.fingerprint, m.preview, m.confidence, m.severity)


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
    return replace_matches(text, matches), [note_from_match(m) for m in matches]


def redact_escaped(scanner: Scanner, text: str, path: str = "$") -> tuple[str, list[RedactionNote]]:
    """``text`` with the values its JSON escapes hide redacted (tool-call arguments or a structured answer writing
    ``{"k": "\\u0041KIA…"}``: a key that a scan of the raw text cannot see, but the agent's ``json.loads`` gives
    back; JSON text in JSON text too, :data:`railcar.rails.json_escape.DEPTH` levels), whether ``text`` parses as
    JSON or not (arguments cut short, prose around JSON). Each decoded level is scanned
    (:func:`railcar.rails.json_escape.through_escapes`; ``text`` itself is not: :func:`redact_text` does that) and a
    placeholder is written where the value was spelled, the escapes around it kept. Returns ``(text, notes)``, the
    notes with ``path``; ``text`` unchanged (no notes) when it has no backslash or hides nothing."""
    if "\\" not in text:
        return text, []
    notes: list[RedactionNote] = []

    def change(level: str) -> str:
        new, found = redact_text(scanner, level, path)
        notes.extend(found)
        return new

    out = through_escapes(text, change, top=False)
    return (out, notes) if notes and out is not None else (text, [])


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
            out = {k: walk(v, key_path(p, k) if isinstance(k, str) else p) for k, v in o.items()}
            return o if all(out[k] is o[k] for k in o) else out
        if isinstance(o, (list, tuple)):
            items = [walk(v, f"{p}[{i}]") for i, v in enumerate(o)]
            return o if all(a is b for a, b in zip(items, o)) else type(o)(items)
        return o

    return walk(obj, path), notes
