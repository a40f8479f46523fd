"""Masked previews and keyed fingerprints of detected values: what may be logged or persisted instead of them.

* :func:`fingerprint`: ``HMAC-SHA256(key, normalize(value))`` as hex, truncated to 16 chars (64 bits). Keyed with a
  deployment secret so a low-entropy value (an SSN has < 30 bits) cannot be recovered by hashing guesses without
  the key; normalized so the same card/phone/SSN written with other separators, or a PEM key with JSON-escaped
  newlines, gives the same fingerprint.
* :func:`mask`: a preview that reveals at most 8 characters of a secret (``AKIA…MPLE``) and only the parts of PII
  a human needs to triage it (``j***@example.com``, ``***-**-6789``, ``**** 1111``).
* :func:`load_key`: the deployment key from ``[detection] fingerprint_key_file`` or the variable named by
  ``fingerprint_key_env``.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path

FP_LEN = 16
_SEP = re.compile(r"[\s\-.()]")
_PEM_WS = re.compile(r"\s+|\\+[nrt]")


def normalize(detector_id: str, value: str) -> str:
    """Canonical form used for fingerprints: digits-only for numeric PII, lowercase email, PEM without spacing."""
    if detector_id in ("payment_card", "us_ssn", "phone_number"):
        return ("+" if value.startswith("+") else "") + _SEP.sub("", value)
    if detector_id == "iban":
        return value.replace(" ", "").upper()
    if detector_id == "email_address":
        return value.lower()
    if detector_id == "private_key":
        return _PEM_WS.sub("", value)
    return value


def fingerprint(key: bytes, detector_id: str, value: str) -> str:
    """16 hex chars of ``HMAC-SHA256(key, normalize(detector_id, value))``."""
    # hmac.digest: the one-shot C path (no HMAC object per match); same bytes as hmac.new(...).digest()
    return hmac.digest(key, normalize(detector_id, value).encode("utf-8", "surrogatepass"), "sha256").hex()[:FP_LEN]


def mask(detector_id: str, value: str) -> str:
    """A preview of ``value`` (a ``detector_id`` capture) safe to log: never more than 8 revealed characters of a
    secret; of PII only the last 4 digits (2 of a phone number), the email domain and first letter, or the IBAN's
    country and last 3 characters."""
    if detector_id == "email_address":
        local, _, domain = value.rpartition("@")
        return f"{local[:1]}***@{domain}"
    if detector_id in ("payment_card", "us_ssn", "phone_number"):
        digits = re.sub(r"\D", "", value)
        if detector_id == "us_ssn":
            return f"***-**-{digits[-4:]}"
        if detector_id == "payment_card":
            return f"**** {digits[-4:]}"
        return f"{'+' if value.startswith('+') else ''}***{digits[-2:]}"
    if detector_id == "iban":
        compact = value.replace(" ", "")
        return f"{compact[:2]}**…{compact[-3:]}"
    if detector_id == "private_key":
        label = re.search(r"BEGIN ([A-Z0-9 ]*PRIVATE KEY)", value)
        return f"-----BEGIN {label.group(1) if label else 'PRIVATE KEY'}-----…({len(value)} chars)"
    if len(value) >= 20:
        return f"{value[:4]}…{value[-4:]}"
    if len(value) >= 12:
        return f"{value[:4]}…{value[-2:]}"
    return f"{value[:2]}…"


def load_key(key_file: str = "", key_env: str = "RAILCAR_FINGERPRINT_KEY",
             environ: Mapping[str, str] | None = None) -> bytes | None:
    """The fingerprint key: ``key_file``'s bytes (stripped) win over the ``key_env`` variable; None when unset.

    Raises ``ValueError`` naming ``detection.fingerprint_key_file`` when the file cannot be read or is empty.
    """
    environ = os.environ if environ is None else environ
    if key_file:
        try:
            data = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"detection.fingerprint_key_file: cannot read the file: {exc.strerror}") from None
        if not data:
            raise ValueError("detection.fingerprint_key_file: the file is empty")
        return data
    value = environ.get(key_env, "") if key_env else ""
    return value.encode() if value else None
