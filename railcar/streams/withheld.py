"""What the catalog cannot match but must not be published either: a value cut short, from its opening to the end.

The catalog matches whole values only. A stream that was blocked part-way (or that the client left) ends inside a
value: a PEM private key streamed in block mode is cut before its ``-----END`` line, so no catalog pattern matches
and its 64-character body lines would reach Kafka and the spool raw. :class:`Withheld` finds such a tail in an
already redacted text and replaces it, from its opening to the end of the text, with the detector's placeholder
(:func:`railcar.rails.redaction.placeholder`, keyed fingerprint of the tail), one
:class:`railcar.core.exchange.RedactionNote` per text:

- always: a detector's ``opening`` (:attr:`railcar.rails.detectors.Detector.opening`, the PEM ``BEGIN`` line) that
  no catalog pattern completes from there and that is followed by a run of at least 32 base64 characters (a key
  body line: the detector's own minimum body, :func:`railcar.rails.detectors.pem_ok`). A header followed by prose
  is not a key and stays (issue 13 item 7).
- when the text was cut (``cut=True``: the answer of a blocked, failed or abandoned stream): also a bare opening,
  and the earliest position from which the text's tail is still an open prefix of a catalog value, as the inline
  hold-back computes it (:meth:`railcar.rails.inline.HoldBack.hold_start`): what the hold-back held back from the
  client. The tail is attributed to a detector whose literal (``AKIA``, ``ghp_``, ``@``...; in the tail or the
  64 characters before it, where a keyword detector's name sits) is there, secrets first: any word is an open
  prefix of an e-mail address, so a tail without such evidence is kept (a note for it would be a false finding),
  and so are the literal-less PII formats (card, SSN, IBAN, phone digits). Tails shorter than
  :attr:`Withheld.MIN_TAIL` characters are kept: at most a fixed token prefix and a few characters (``AKIA`` + 4).

The note's masked preview never shows more of a cut value than its first 4 characters (a PEM key: its BEGIN label
and length; PII: only its length): :func:`railcar.rails.masking.mask` assumes whole values.

Thread-safety: use one per thread (the hold-back it builds is thread-safe, the lazy build is not).
"""

from __future__ import annotations

from railcar.core.exchange import RedactionNote
from railcar.rails.detectors import Detector
from railcar.rails.inline import HoldBack, KeyOpening, cut_key, key_openings
from railcar.rails.masking import fingerprint, mask
from railcar.rails.redaction import placeholder
from railcar.rails.scanner import Scanner

__all__ = ["Withheld"]


class Withheld:
    """``redact(text, path, cut) -> (text, note | None)`` over ``scanner``'s detectors (see the module doc)."""

    MIN_TAIL = 8

    def __init__(self, scanner: Scanner) -> None:
        self.scanner = scanner
        self._openings: list[KeyOpening] = key_openings(scanner.detectors)
        self._holdback: HoldBack | None = None

    def _hold(self) -> HoldBack:
        if self._holdback is None:  # compiled on the first cut text: most processes never need it
            self._holdback = HoldBack(self.scanner, "block", 0)
        return self._holdback

    def _opening(self, text: str, cut: bool) -> tuple[int, Detector | None]:
        """The first opening no catalog pattern completes (with a key body after it unless ``cut``):
        :func:`railcar.rails.inline.cut_key`, the hold-back's own test."""
        found = cut_key(self._openings, text, 0, body=not cut)
        return found if found is not None else (len(text), None)

    def _held(self, text: str) -> tuple[int, Detector | None]:
        """The earliest open value prefix at the end of ``text`` with a detector's literal as evidence."""
        hb = self._hold()
        off = 0
        for _ in range(4):  # bounded: the candidates after an unevidenced one
            start, found = hb.hold_start(text, off)
            if found is None or len(text) - start < self.MIN_TAIL:
                break
            ctx, tail = text[max(0, start - 64):], text[start:]
            cands = [d for d in self.scanner.detectors if d.literals and _has_literal(d, ctx) and hb.still_open(d, tail)]
            if cands:
                return start, min(cands, key=lambda d: (d.kind != "secret", -d.confidence))
            off = start + 1
        return len(text), None

    def redact(self, text: str, path: str, cut: bool = False) -> tuple[str, RedactionNote | None]:
        """``text`` with its cut-short tail replaced by a placeholder, and that tail's note (``None``: nothing)."""
        if not text:
            return text, None
        pos, det = self._opening(text, cut) if self._openings else (len(text), None)
        if cut:
            start, d = self._held(text)
            if d is not None and start < pos:
                pos, det = start, d
        if det is None:
            return text, None
        tail = text[pos:]
        fp = fingerprint(self.scanner.key, det.id, tail)
        return text[:pos] + placeholder(det.id, fp), _note(det, path, fp, tail)


def _has_literal(det: Detector, text: str) -> bool:
    hay = text.lower() if det.literals_nocase else text
    return any((lit.lower() if det.literals_nocase else lit) in hay for lit in det.literals)


def _preview(det: Detector, value: str) -> str:
    if det.id == "private_key":
        return mask(det.id, value)
    return f"{value[:4] if det.kind == 'secret' else ''}…({len(value)} chars)"


def _note(det: Detector, path: str, fp: str, value: str) -> RedactionNote:
    return RedactionNote(det.id, det.kind, path, fp, _preview(det, value), det.confidence, det.severity)
