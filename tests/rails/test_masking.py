"""Fingerprints are HMAC-SHA256 (RFC 2104) of the normalized value, cut to 16 hex characters."""

from __future__ import annotations

import hashlib

from railcar.rails.masking import FP_LEN, fingerprint, normalize


def _rfc2104(key: bytes, msg: bytes) -> str:
    """HMAC-SHA256 written out from RFC 2104 section 2 (block size 64), independent of the hmac module."""
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + msg).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).hexdigest()


def test_fingerprint_is_hmac_sha256_of_the_normalized_value() -> None:
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    for det, value in (("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"), ("email_address", "Jane.Doe@Example.COM"),
                       ("payment_card", "4111-1111 1111.1111"), ("phone_number", "+1 (415) 555-0100")):
        fp = fingerprint(key, det, value)
        assert len(fp) == FP_LEN and fp == _rfc2104(key, normalize(det, value).encode())[:FP_LEN]
    assert fingerprint(key, "email_address", "a@B.com") == fingerprint(key, "email_address", "A@b.COM")
    assert fingerprint(key, "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE") != fingerprint(
        b"another key 16by", "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE")
