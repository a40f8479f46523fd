"""The deep detection tier: MongoDB's Kingfisher rules library (``kingfisher-secret-scanner``, imported as
``kingfisher_sdk``; Apache-2.0; 488 built-in rules carrying gitleaks' (``betterleaks.*``), OSV-SCALIBR's
(``veles.secrets/*``) and its own (``kingfisher.*``) formats) run in-process over what reached Kafka.

The fast tier (:class:`railcar.rails.scanner.Scanner`, Railcar's own catalog) runs on the hot path: the sidecar's
inline hold-back and the redaction before publishing. This tier runs where throughput matters less, in the
consumer (:class:`railcar.streams.processor.SecurityProcessor`, ``detection.deep = true``) and ``railcar scan
--deep``, and only over what the fast tier did not claim: a deep finding that overlaps a catalog match of the same
string is dropped. It never sees what the sidecar redacted (the events hold ``[REDACTED:...]`` placeholders) and
never calls the network: Kingfisher's scanning is offline by design (its ``Validator``, which contacts providers, is
never built here); ``tests/streams/test_deep.py`` runs a scan in a process with no network namespace.

Each finding becomes a :class:`railcar.rails.scanner.Match` with ``source="deep"``, ``rule`` = the Kingfisher rule
id, ``confidence`` from its confidence level (:data:`CONFIDENCE`), and a fingerprint and masked preview made with
the catalog's functions and key (:mod:`railcar.rails.masking`), so both tiers' findings share ids, masking and
fingerprints. A rule that is a catalog format (:data:`CATALOG_EQUIVALENT`) reports under the catalog's detector id:
the same key then has the same finding id whichever tier found it. ``validation`` is ``"valid"`` / ``"invalid"``
where the format carries an offline checksum (GitHub's and npm's CRC32 token checksum,
:func:`railcar.rails.detectors.github_checksum_ok`); Kingfisher's own validations all call the provider, so
``None`` otherwise.

Cost: compiling the rules takes seconds the first time (Kingfisher caches the compiled database in the user's cache
directory); build one :class:`DeepScanner` per process. Strings of one span are joined and scanned in one call.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from railcar.rails import detectors as _det
from railcar.rails.masking import fingerprint as _fingerprint
from railcar.rails.masking import mask
from railcar.rails.scanner import Match

__all__ = ["CATALOG_EQUIVALENT", "CONFIDENCE", "DeepScanner", "LIBRARY"]

LIBRARY = "Kingfisher"

# Kingfisher's per-rule confidence level -> Match.confidence.
CONFIDENCE = {"high": 0.9, "medium": 0.7, "low": 0.5}

# Kingfisher rules that are formats of the fast catalog: reported under the catalog's detector id (and severity).
CATALOG_EQUIVALENT = {
    "betterleaks.aws-access-token": "aws_access_key_id",
    "betterleaks.aws-amazon-bedrock-api-key-long-lived": "aws_bedrock_api_key",
    "betterleaks.aws-amazon-bedrock-api-key-short-lived": "aws_bedrock_api_key",
    "betterleaks.private-key": "private_key",
    "betterleaks.jwt": "jwt", "betterleaks.jwt-base64": "jwt",
    "betterleaks.github-pat": "github_token", "betterleaks.github-oauth": "github_token",
    "betterleaks.github-app-token": "github_token", "betterleaks.github-refresh-token": "github_token",
    "betterleaks.github-fine-grained-pat": "github_fine_grained_pat",
    "betterleaks.gitlab-session-cookie": "gitlab_session_cookie",
    "betterleaks.slack-bot-token": "slack_token", "betterleaks.slack-user-token": "slack_token",
    "betterleaks.slack-app-token": "slack_token", "betterleaks.slack-config-access-token": "slack_token",
    "betterleaks.slack-config-refresh-token": "slack_token",
    "betterleaks.slack-legacy-bot-token": "slack_legacy_token", "betterleaks.slack-legacy-token": "slack_legacy_token",
    "betterleaks.slack-legacy-workspace-token": "slack_legacy_token",
    "betterleaks.slack-webhook-url": "slack_webhook_url",
    "betterleaks.stripe-access-token": "stripe_key", "betterleaks.npm-access-token": "npm_token",
    "betterleaks.gcp-api-key": "google_api_key", "betterleaks.sendgrid-api-token": "sendgrid_api_key",
    "betterleaks.openai-api-key": "openai_api_key", "betterleaks.anthropic-api-key": "anthropic_api_key",
    "betterleaks.anthropic-admin-api-key": "anthropic_admin_key",
    "betterleaks.huggingface-access-token": "huggingface_token",
    "betterleaks.huggingface-organization-api-token": "huggingface_token",
    "betterleaks.perplexity-api-key": "perplexity_api_key", "betterleaks.cohere-api-token": "cohere_api_key",
}
for _rule, _id in CATALOG_EQUIVALENT.items():  # a typo here would silently report under an unknown id
    _det.get(_id)
del _rule, _id


def _crc_checksum(value: str) -> str | None:
    if value.startswith(("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "npm_")):
        return "valid" if _det.github_checksum_ok(value) else "invalid"
    return None


# Offline validations by rule id prefix: (value) -> "valid" | "invalid" | None.
_OFFLINE_CHECKS: dict[str, Callable[[str], str | None]] = {
    "betterleaks.github-": _crc_checksum, "betterleaks.npm-": _crc_checksum,
}

# Characters of a token run: used to widen a finding whose reported secret is only a marker capture (Kingfisher's
# ``jwt-base64`` rule reports its named header-type group, e.g. ``aGJHY2lPaU``, not the encoded token).
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=_-.\\")
_SEP = "\n\n"  # between joined strings; a finding that spans it is dropped
_SEP_B = _SEP.encode()


class DeepScanner:
    """Kingfisher's built-in rules, compiled once per process (:func:`_engine`); ``scan_*`` may run in threads.

    ``key``: the fingerprint key (bytes; pass the catalog scanner's ``key`` so fingerprints match);
    ``confidence``: the lowest Kingfisher rule confidence loaded (``"low"``: all 488 rules, ``"medium"``,
    ``"high"``); ``base64``: also decode base64 blobs and scan inside them (offsets are the encoded region's).
    Raises ``ImportError`` when the library is not installed, ``ValueError`` for an unknown ``confidence``.
    """

    def __init__(self, key: bytes, *, confidence: str = "low", base64: bool = True) -> None:
        if confidence not in CONFIDENCE:
            raise ValueError(f"deep tier confidence must be one of {sorted(CONFIDENCE)}, got {confidence!r}")
        self.key = key
        self._scanner, self.version, self.rule_count = _engine(confidence, base64)
        self._scan_bytes = self._scanner._native.scan_bytes

    @property
    def name(self) -> str:
        """``"Kingfisher <sdk version> (<n> rules)"``: what the deep tier ran, for reports and suggestions."""
        return f"{LIBRARY} {self.version} ({self.rule_count} rules)"

    def scan_text(self, text: str, path: str = "$", claimed: Iterable[tuple[int, int]] = ()) -> list[Match]:
        """Deep matches in ``text`` (at JSON path ``path``) that overlap none of the ``claimed`` ``(start, end)``
        character spans (the catalog's matches), ordered by ``start``."""
        return self.scan_strings([(path, text, tuple(claimed))])

    def scan_strings(self, items: Sequence[tuple[str, str, Sequence[tuple[int, int]]]]) -> list[Match]:
        """Deep matches in several strings at once, one native scan: ``items`` are ``(path, text, claimed spans)``;
        each :class:`Match` has its string's ``path`` and character offsets within that string; ordered by string,
        then ``start``. Findings that span two strings, or overlap a claimed span, are dropped; overlapping deep
        findings in one string keep the more confident, then the longer one."""
        if not items:
            return []
        joined = _SEP.join(t for _, t, _ in items)
        if joined.isascii():  # the common case: one encoding, and byte lengths are character lengths
            data, blobs = joined.encode("ascii"), None
            lengths = [len(t) for _, t, _ in items]
        else:
            blobs = [t.encode("utf-8", "surrogatepass") for _, t, _ in items]
            data, lengths = _SEP_B.join(blobs), [len(b) for b in blobs]
        starts, pos = [], 0
        for n in lengths:
            starts.append(pos)
            pos += n + len(_SEP_B)
        # The native call without the SDK's per-finding wrapper objects (same attributes).
        found = self._scan_bytes(data)
        if not found:
            return []
        if blobs is None:
            blobs = [t.encode("ascii") for _, t, _ in items]
        out: list[tuple[int, Match]] = []
        for f in found:
            hit = self._match(f, items, blobs, starts)
            if hit is not None:
                out.append(hit)
        return _resolve(out)

    def _match(self, f: Any, items: Sequence[tuple[str, str, Sequence[tuple[int, int]]]], blobs: list[bytes],
               starts: list[int]) -> tuple[int, Match] | None:
        """``(index of the string, Match)`` for a Kingfisher finding, or None when it is not reported."""
        if not f.visible:  # helper findings of multi-part rules; never reported by Kingfisher either
            return None
        loc = f.location
        i = bisect.bisect_right(starts, loc["start_offset"]) - 1  # starts[0] == 0: i >= 0
        b0, b1 = loc["start_offset"] - starts[i], loc["end_offset"] - starts[i]
        if b1 > len(blobs[i]):
            return None  # spans the separator: not one string's value
        path, text, claimed = items[i]
        start = len(blobs[i][:b0].decode("utf-8", "ignore"))
        end = start + len(blobs[i][b0:b1].decode("utf-8", "ignore"))
        value = f.secret
        if f.captures and value in f.captures.values() and not f.is_base64_encoded:
            start, end = _widen(text, start, end)
            value = text[start:end]
        if not value or any(s < end and start < e for s, e in claimed):
            return None
        rule = f.rule_id
        det_id = CATALOG_EQUIVALENT.get(rule, rule)
        det = _det.get(det_id) if det_id != rule else None
        conf = CONFIDENCE.get(f.confidence, 0.5)
        severity = det.severity if det is not None else ("high" if conf >= 0.9 else "medium")
        check = next((c for p, c in _OFFLINE_CHECKS.items() if rule.startswith(p)), None)
        return i, Match(det_id, "secret", conf, severity, path, start, end, _fingerprint(self.key, det_id, value),
                        mask(det_id, value), source="deep", rule=rule,
                        validation=check(value) if check is not None else None)


@functools.lru_cache(maxsize=4)
def _engine(confidence: str, base64: bool) -> tuple[Any, str, int]:
    """``(Kingfisher scanner, SDK version, rule count)``, built once per process and setting: loading the rules
    costs seconds, and a scanner holds no per-key state (fingerprints are Railcar's)."""
    import kingfisher_sdk as kf  # noqa: PLC0415  (a 36 MB native module: loaded only when the tier is on)

    rules = kf.Rules(confidence=confidence)  # type: ignore[arg-type]
    return kf.Scanner(rules, base64=base64), kf.__version__, len(rules.metadata())


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """The run of token characters around ``text[start:end]``."""
    while start > 0 and text[start - 1] in _TOKEN_CHARS:
        start -= 1
    while end < len(text) and text[end] in _TOKEN_CHARS:
        end += 1
    return start, end


def _resolve(found: list[tuple[int, Match]]) -> list[Match]:
    """Per string (index; several strings may share a path), non-overlapping matches: more confident first, then
    longer; ordered by (string index, start)."""
    found.sort(key=lambda im: (-im[1].confidence, -(im[1].end - im[1].start), im[0], im[1].start))
    kept: dict[int, list[Match]] = {}
    for i, m in found:
        same = kept.setdefault(i, [])
        if all(m.end <= k.start or m.start >= k.end for k in same):
            same.append(m)
    return [m for i in sorted(kept) for m in sorted(kept[i], key=lambda m: m.start)]
