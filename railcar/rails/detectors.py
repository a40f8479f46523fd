"""The detector catalog: high-confidence secret and PII formats, as data plus pure validators (no I/O).

Each :class:`Detector` carries

* ``id``: stable snake_case name used in placeholders (``[REDACTED:<id>:<fp8>]``), findings and config
  (``detection.disabled_detectors``);
* ``kind``: ``"secret"`` or ``"pii"``; ``confidence`` in [0, 1]; ``severity`` ``critical|high|medium|low``;
* ``patterns``: RE2 syntax, each with exactly ONE capturing group = the value. A pattern may consume one boundary
  character before the value (``(?:^|[^A-Za-z0-9_]|\\\\[nrt])``) so that a token right after a JSON escape
  (``\\nAKIA...`` in escaped text) is still found while ``xAKIA...`` is not;
* ``literals``: prefilter keywords; a text that contains none of them (case-insensitively when
  ``literals_nocase``) cannot match. Empty means "no literal prefilter" (digit-based PII);
* ``max_len``: longest value the patterns can match, in characters (the stream hold-back of issue 8 keeps this
  many characters of tail to catch a match split across chunks); ``None`` for unbounded (PEM keys: bounded by
  ``PEM_MAX_LEN`` in practice);
* ``validator``: ``(value) -> bool`` run after a regex match (checksums, Luhn, mod-97, JSON header, placeholder
  rejection); ``None`` accepts every match.

Sources of the formats: gitleaks rule definitions (MIT, ``gitleaks/gitleaks`` ``cmd/generate/config/rules``) for
token shapes; ISO 13616 (IBAN mod-97 via ``stdnum.iban``); ISO/IEC 7812 (Luhn via ``stdnum.luhn``, issuer
prefixes); SSA's SSN rules (area not 000/666/9xx, group not 00, serial not 0000); RFC 7519 (JWT header is
base64url JSON with ``alg``); RFC 7468 (PEM labels); libphonenumber (``phonenumbers.is_valid_number``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import phonenumbers
import re2
from stdnum import iban as _iban
from stdnum import luhn as _luhn

Kind = Literal["secret", "pii"]

# One boundary before a value: start of text, a non-token char, or a JSON escape (\n, \t, \u2019) so that raw
# JSON text is scanned like its decoded form.
LB = r"(?:^|[^A-Za-z0-9_]|\\[nrtbf]|\\u[0-9A-Fa-f]{4})"
# PEM bodies can be long; this is the hold-back bound used for them.
PEM_MAX_LEN = 16384
# Longest JWT header segment the catalog matches (base64url of ~300 bytes of JSON: alg, typ, kid, jku, x5t). A
# longer ``eyJ...`` run with no dot (a base64url JSON pagination cursor) is then released by the stream hold-back
# (whose default cap is 512 characters) instead of failing closed; headers carrying a whole ``x5c`` chain are left
# to the consumer's deep tier.
JWT_MAX_HEADER = 400


@dataclass(frozen=True)
class Detector:
    """One format. See the module docstring for the meaning of each field."""

    id: str
    kind: Kind
    confidence: float
    severity: str
    description: str
    patterns: tuple[str, ...]
    literals: tuple[str, ...] = ()
    literals_nocase: bool = False
    max_len: int | None = 64
    validator: Callable[[str], bool] | None = field(default=None, compare=False)
    follow_up: str = ""
    # A format's own integrity check (e.g. GitHub's token checksum): never rejects, but a value that passes it is
    # reported with ``confirmed_confidence`` instead of ``confidence``.
    confirm: Callable[[str], bool] | None = field(default=None, compare=False)
    confirmed_confidence: float = 1.0
    # For a value too long to wait for (PEM keys): a pattern for its opening, which a regex output rail blocks on
    # before the body has streamed (:func:`rail_patterns`). No capture group needed.
    opening: str = ""

    def validate(self, value: str) -> bool:
        """True when ``value`` (the regex capture) is a real finding for this detector."""
        return self.validator(value) if self.validator is not None else True

    def confidence_for(self, value: str) -> float:
        """The confidence of a validated ``value``: ``confirmed_confidence`` when ``confirm`` passes, else
        ``confidence`` (in [0, 1])."""
        return self.confirmed_confidence if self.confirm is not None and self.confirm(value) else self.confidence


# ------------------------------------------------------------------------------------------------ validators

_PLACEHOLDER_WORDS = ("example", "xxxx", "****", "your", "placeholder", "redacted", "dummy", "<", ">", "...",
                      "changeme", "insert", "token_here", "key_here")


def is_placeholder(value: str, prefix_len: int = 0, words: Iterable[str] = _PLACEHOLDER_WORDS) -> bool:
    """True for documentation placeholders: ``AKIAIOSFODNN7EXAMPLE``, ``sk-xxxx…``, ``<your key>``, ``AIzaaaaa…``.

    ``words``: lowercase placeholder markers searched anywhere in ``value`` (case-insensitive). ``prefix_len``
    characters (a fixed token prefix such as ``ghp_``) are ignored for the entropy checks: the random part must not
    be one character repeated 8+ times in a row, nor use fewer than 5 distinct characters.
    """
    low = value.lower()
    if _PLACEHOLDER_RX.search(low) if words is _PLACEHOLDER_WORDS else any(w in low for w in words):
        return True
    body = value[prefix_len:]
    if len(body) >= 8 and len(set(body)) < 5:
        return True
    return _has_run8(body)


_PLACEHOLDER_RX = re.compile("|".join(map(re.escape, _PLACEHOLDER_WORDS)))
# ``(.)\1{7,}`` (one character but a newline, 8+ times in a row), for ASCII text as an RE2 alternation of the 127
# runs: Python's engine spends ~0.1 us per character on the back reference, the largest cost of most validators.
_RUN8 = re.compile(r"(.)\1{7,}")
_RUN8_ASCII = re2.compile("|".join(re2.escape(chr(c)) + "{8}" for c in range(128) if c != 10))._regexp
_UNANCHORED = re2._Anchor.UNANCHORED


def _has_run8(body: str) -> bool:
    """True when ``body`` holds one character (not a newline) 8 or more times in a row."""
    if body.isascii():
        b = body.encode("ascii")
        return bool(_RUN8_ASCII.Match(_UNANCHORED, b, 0, len(b))[0][0] >= 0)
    return _RUN8.search(body) is not None


def _not_placeholder(prefix_len: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return not is_placeholder(value, prefix_len)

    return check


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def github_checksum_ok(token: str) -> bool:
    """GitHub's new-format token checksum: the last 6 chars are base62(CRC32(the 30-char random part)).

    Source: GitHub engineering blog "Behind GitHub's new authentication token formats" (2021). Never used to
    reject (test corpora such as gitleaks' use random, checksum-less bodies): a token that passes it is reported
    with a higher confidence (``Detector.confirm``).
    """
    _, _, rest = token.partition("_")
    if len(rest) != 36:
        return False
    crc = binascii.crc32(rest[:30].encode())
    out = ""
    while crc:
        crc, r = divmod(crc, 62)
        out = _B62[r] + out
    return out.rjust(6, "0") == rest[30:]


def _b64url_json(part: str) -> object:
    part = part.replace("\\", "")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def jwt_ok(value: str) -> bool:
    """RFC 7519/7515: the header segment is base64url JSON carrying ``alg``; the payload is base64url JSON too."""
    parts = value.split(".")
    if len(parts) != 3:
        return False
    header = _b64url_json(parts[0])
    return isinstance(header, dict) and "alg" in header and isinstance(_b64url_json(parts[1]), dict)


def ssn_ok(value: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000; not the advertised samples."""
    digits = re.sub(r"\D", "", value)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in ("078051120", "219099999", "123456789")


# ISO/IEC 7812 issuer prefixes with the lengths each network issues.
_CARD_RULES = (
    (re.compile(r"^4"), (16, 19)),                                            # Visa (13-digit PANs retired)
    (re.compile(r"^(5[1-5]|222[1-9]|22[3-9]\d|2[3-6]\d\d|27[01]\d|2720)"), (16,)),  # Mastercard
    (re.compile(r"^3[47]"), (15,)),                                           # American Express
    (re.compile(r"^(6011|65|64[4-9])"), (16, 19)),                            # Discover
    (re.compile(r"^35(2[89]|[3-8]\d)"), (16, 19)),                            # JCB
    (re.compile(r"^(36|38|30[0-5])"), (14, 16)),                              # Diners Club
    (re.compile(r"^62"), (16, 17, 18, 19)),                                   # UnionPay
)


def card_ok(value: str) -> bool:
    """Payment card: consistent separators, an issuer prefix with a length it issues, and a valid Luhn digit."""
    digits = re.sub(r"[ -]", "", value)
    if not digits.isdigit() or len(set(digits)) < 3:
        return False
    if not any(p.match(digits) and len(digits) in lengths for p, lengths in _CARD_RULES):
        return False
    return _luhn.is_valid(digits)


def iban_ok(value: str) -> bool:
    """ISO 13616: country-specific length and the mod-97 check (``stdnum.iban``)."""
    return _iban.is_valid(value.replace(" ", ""))


def phone_ok(value: str) -> bool:
    """libphonenumber validity; numbers without ``+`` are read as US/NANP (the catalog's home region)."""
    if len(set(re.sub(r"\D", "", value))) < 4:
        return False  # 555-555-5555 style fillers; checked first because parsing costs far more
    try:
        num = phonenumbers.parse(value, None if value.startswith("+") else "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(num)


_EMAIL_PLACEHOLDER_DOMAINS = ("example.com", "example.org", "example.net", "domain.com", "email.com", "test.com")


def email_ok(value: str) -> bool:
    """An address with a letters-only TLD; RFC 2606 example domains and ``you@…`` style placeholders excluded."""
    local, _, domain = value.rpartition("@")
    domain = domain.lower()
    if domain in _EMAIL_PLACEHOLDER_DOMAINS or domain.endswith(".example") or domain.endswith(".invalid"):
        return False
    if local.lower() in ("you", "your", "user", "username", "name", "someone", "your.name", "email"):
        return False
    tld = domain.rsplit(".", 1)[-1]
    return tld.isalpha() and not domain.endswith((".png", ".jpg", ".gif", ".svg", ".webp"))


def pem_ok(value: str) -> bool:
    """A PEM private key with a body of at least 32 base64 characters (an empty key block is not a secret)."""
    body = value.split("-----", 2)[-1].rsplit("-----END", 1)[0]
    body = body.replace("\\n", "").replace("\\r", "")
    return len(re.sub(r"[^A-Za-z0-9+/=]", "", body)) >= 32 and "xxxx" not in body.lower()


def aws_key_ok(value: str) -> bool:
    """An AWS access key id that is not a documentation placeholder, by gitleaks' ``aws-access-token`` rule: not
    ``…EXAMPLE`` at the end (its allowlist ``.+EXAMPLE$``, e.g. ``AKIAIOSFODNN7EXAMPLE``), and a random part that is
    not one character repeated 8+ times nor fewer than 5 distinct characters (:func:`is_placeholder`'s entropy rules).

    The placeholder words are not searched inside the key: its 16-character body is random over ``[A-Z2-7]``, so a
    real key holds ``XXXX`` or ``YOUR`` about once in 40,000 keys (bench/pipeline.py planted ``AKIA4VXXXXUJEAZB4O3Y``
    and lost it as a "placeholder").
    """
    return not value.endswith("EXAMPLE") and not is_placeholder(value, 4, words=())


# Published example keys (firebase/firebase-android-sdk), gitleaks' ``gcp-api-key`` allowlist: public by design.
_GOOGLE_PUBLIC_KEYS = frozenset((
    "AIzaSyabcdefghijklmnopqrstuvwxyz1234567", "AIzaSyAnLA7NfeLquW1tJFpx_eQCxoX-oo6YyIs",
    "AIzaSyCkEhVjf3pduRDt6d1yKOMitrUEke8agEM", "AIzaSyDMAScliyLx7F0NPDEJi1QmyCgHIAODrlU",
    "AIzaSyD3asb-2pEZVqMkmL6M9N6nHZRR_znhrh0", "AIzayDNSXIbFmlXbIE6mCzDLQAqITYefhixbX4A",
    "AIzaSyAdOS2zB6NCsk1pCdZ4-P6GBdi_UUPwX7c", "AIzaSyASWm6HmTMdYWpgMnjRBjxcQ9CKctWmLd4",
    "AIzaSyANUvH9H9BsUccjsu2pCmEkOPjjaXeDQgY", "AIzaSyA5_iVawFQ8ABuTZNUdcwERLJv_a_p4wtM",
    "AIzaSyA4UrcGxgwQFTfaI3no3t7Lt1sjmdnP5sQ", "AIzaSyDSb51JiIcB6OJpwwMicseKRhhrOq1cS7g",
    "AIzaSyBF2RrAIm4a0mO64EShQfqfd2AFnzAvvuU", "AIzaSyBcE-OOIbhjyR83gm4r2MFCu4MJmprNXsw",
    "AIzaSyB8qGxt4ec15vitgn44duC5ucxaOi4FmqE", "AIzaSyA8vmApnrHNFE0bApF4hoZ11srVL_n0nvY"))


def google_key_ok(value: str) -> bool:
    """A Google API key that is not a placeholder nor one of the example keys Google publishes in its SDKs
    (gitleaks' ``gcp-api-key`` allowlist)."""
    return value not in _GOOGLE_PUBLIC_KEYS and not is_placeholder(value, 4)


def slack_legacy_ok(value: str) -> bool:
    """A legacy Slack token whose last (secret) segment is not a placeholder; its leading numeric ids are team and
    user ids, not random, so they are not held to the entropy rules (``xoxa-2-511111111-...``)."""
    return not is_placeholder(value.rsplit("-", 1)[-1]) and not is_placeholder(value, len(value))


def github_ok(value: str) -> bool:
    """A GitHub token that is not a placeholder (:func:`is_placeholder` past the 4-char ``ghp_`` prefix)."""
    return not is_placeholder(value, 4)


def gitlab_ok(value: str) -> bool:
    """A GitLab token that is not a placeholder (:func:`is_placeholder` past its ``glpat-`` / ``GR1348941``
    prefix)."""
    prefix = 9 if value.startswith("GR1348941") else value.find("-") + 1
    return not is_placeholder(value, prefix)


# -------------------------------------------------------------------------------------------------- catalog

_ROTATE = "Rotate the credential now (revoke it at the issuer), then purge it from traces and logs."
_PII = "Redact or regenerate the affected traces before using them for evaluation or optimization."


def _secret(id: str, desc: str, patterns: Iterable[str], literals: Iterable[str], max_len: int | None,
            validator: Callable[[str], bool] | None, confidence: float = 0.95, severity: str = "critical",
            nocase: bool = False) -> Detector:
    return Detector(id=id, kind="secret", confidence=confidence, severity=severity, description=desc,
                    patterns=tuple(patterns), literals=tuple(literals), literals_nocase=nocase, max_len=max_len,
                    validator=validator, follow_up=_ROTATE)


def _pii(id: str, desc: str, patterns: Iterable[str], literals: Iterable[str], max_len: int,
         validator: Callable[[str], bool], confidence: float, severity: str) -> Detector:
    return Detector(id=id, kind="pii", confidence=confidence, severity=severity, description=desc,
                    patterns=tuple(patterns), literals=tuple(literals), max_len=max_len, validator=validator,
                    follow_up=_PII)


# A keyword-context assignment: `name ... = "VALUE"` / `name: VALUE` / `NAME=VALUE`.
def _assign(keyword: str, value: str) -> str:
    return (rf"(?i:{keyword})[A-Za-z0-9_.\-]{{0,25}}[\s'\"`\\]{{0,4}}(?:=|:|:=|=>|,|\?=)[\s'\"`\\]{{0,6}}"
            rf"({value})(?:[^A-Za-z0-9_\-]|$)")


# The BEGIN line of a PEM private key (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP): where a key's value opens.
_PEM_BEGIN = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
# A PEM body (RFC 7468 section 2; RFC 4880 section 6.2 for PGP armor): base64 lines ended by line breaks (raw, or
# JSON-escaped as ``\n``, ``\\n``), ``Name: value`` headers (``Proc-Type: 4,ENCRYPTED``, ``Version: ...``), and for
# a key flattened onto one line, spaces after runs of 16+ base64 characters. Nothing else: prose after a BEGIN line
# (a space after a short word) fails it at once, so the stream hold-back releases it instead of holding ~700
# characters and failing closed. (A simple shape: the hold-back's prefix pattern of it must fit a DFA.)
_PEM_BODY = (r"[ \t]?(?:[A-Za-z0-9+/=\-]|[ \t]*(?:\r|\n|\\+[nrt])|[A-Za-z0-9+/]{16}={0,2}[ \t]"
             r"|: [!-~][ -\[\]-~]{0,80}(?:\r|\n|\\+[nr]))+?")

CATALOG: tuple[Detector, ...] = (
    # ---- private keys, tokens with a structure
    dataclasses.replace(
        _secret("private_key", "PEM-encoded private key (RFC 7468)",
                ["(" + _PEM_BEGIN + _PEM_BODY + r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"],
                ["PRIVATE KEY"], PEM_MAX_LEN, pem_ok, 0.99),
        opening=_PEM_BEGIN),
    _secret("jwt", "JSON Web Token (RFC 7519)",
            [LB + r"(eyJ[A-Za-z0-9_-]{10," + str(JWT_MAX_HEADER) + r"}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*)"],
            ["eyJ"], 8192, jwt_ok, 0.9, "high"),
    # ---- cloud and code hosts
    # Glued on the left to anything but an uppercase letter or digit (``keyAKIA...``, ``KEY_AKIA...``, ``\nAKIA``):
    # the 20-character run of [A-Z0-9] must start at the prefix and end with the key, so a window inside a longer
    # uppercase run (base32, DNA sequences, ``TODAYINASIAASACK...``) is not a key. The end stays a word boundary.
    _secret("aws_access_key_id", "AWS access key id",
            [r"(?:^|[^A-Z0-9]|\\u[0-9A-Fa-f]{4})((?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b"],
            ["AKIA", "ASIA", "ABIA", "ACCA", "A3T"], 20, aws_key_ok, 0.95),
    # gitleaks aws-amazon-bedrock-api-key-long-lived / -short-lived: ``ABSK`` + base64 (long-term keys); the
    # short-term token is ``bedrock-api-key-`` + base64 of a presigned ``bedrock.amazonaws.com`` URL (AWS's
    # aws-bedrock-token-generator), whose first 28 base64 characters are fixed.
    _secret("aws_bedrock_api_key", "Amazon Bedrock API key (long-term ABSK... or short-term bedrock-api-key-...)",
            [LB + r"(ABSK[A-Za-z0-9+/]{109,269}={0,2})(?:[^A-Za-z0-9+/=]|$)",
             r"(bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t[A-Za-z0-9+/%]*={0,2})"],
            ["ABSK", "bedrock-api-key-"], 4096, _not_placeholder(4), 0.97),
    dataclasses.replace(
        _secret("github_token", "GitHub token (ghp_/gho_/ghu_/ghs_/ghr_)",
                [LB + r"(gh[pousr]_[A-Za-z0-9]{36})\b"],
                ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"], 40, github_ok, 0.95),
        confirm=github_checksum_ok, confirmed_confidence=0.99),
    _secret("github_fine_grained_pat", "GitHub fine-grained personal access token",
            [LB + r"(github_pat_[A-Za-z0-9_]{82})\b"], ["github_pat_"], 93, _not_placeholder(11), 0.98),
    _secret("gitlab_token", "GitLab token (personal, pipeline trigger, runner, deploy, feed, OAuth, ...)",
            [LB + r"((?:glpat|gldt|glft|glsoat|glrt|glcbt|glimt|glagent|gloas|glffct)-[A-Za-z0-9_\-]{20,64}"
                  r"(?:\.[0-9a-z]{2}[0-9a-z]{7})?)(?:[^A-Za-z0-9_\-.]|$)",
             LB + r"(glptt-[0-9a-f]{40})\b",
             LB + r"(GR1348941[A-Za-z0-9_\-]{20})\b"],
            ["glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-", "glimt-", "glagent-", "gloas-", "glffct-",
             "glptt-", "GR1348941"], 120, gitlab_ok, 0.95),
    # gitleaks gitlab-session-cookie: the Rails session id in the ``_gitlab_session`` cookie (32 of [0-9a-z]); the
    # value is the cookie's value, so a redaction keeps the cookie name.
    _secret("gitlab_session_cookie", "GitLab session cookie (_gitlab_session)",
            [r"_gitlab_session=([0-9a-z]{32})(?:[^0-9A-Za-z]|$)"], ["_gitlab_session="], 32, _not_placeholder(0),
            0.9, "high"),
    _secret("slack_token", "Slack bot/user/app/config token",
            [LB + r"(xoxb-[0-9]{10,13}-[0-9]{10,13}[A-Za-z0-9-]*)",
             LB + r"(xox[pe](?:-[0-9]{10,13}){3}-[A-Za-z0-9-]{28,34})",
             LB + r"(xapp-[0-9]-[A-Z0-9]+-[0-9]+-[a-z0-9]+)",
             LB + r"(xoxe\.xox[bp]-[0-9]-[A-Za-z0-9]{140,170})\b",
             LB + r"(xoxe-[0-9]-[A-Za-z0-9]{140,170})\b"],
            ["xoxb-", "xoxp-", "xoxe", "xapp-"], 200, _not_placeholder(5), 0.95),
    # gitleaks slack-legacy-bot-token / slack-legacy-token / slack-legacy-workspace-token: the pre-2016 formats
    # (``xoxb-<id>-<secret>``, ``xoxs-``/``xoxo-`` with three numeric ids, ``xoxa-``/``xoxr-`` workspace tokens).
    _secret("slack_legacy_token", "Slack legacy bot, user or workspace token",
            [LB + r"(xoxb-[0-9]{8,14}-[A-Za-z0-9]{18,26})\b",
             LB + r"(xox[os]-[0-9]{1,16}-[0-9]{1,16}-[0-9]{1,16}-[A-Fa-f0-9]{6,64})\b",
             LB + r"(xox[ar]-(?:[0-9]-)?[0-9A-Za-z]{8,48}(?:-[0-9A-Za-z]{1,48}){0,4})\b"],
            ["xoxb-", "xoxs-", "xoxo-", "xoxa-", "xoxr-"], 260, slack_legacy_ok, 0.9),
    _secret("slack_webhook_url", "Slack incoming webhook / workflow URL",
            [r"((?:https?://)?hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56})"],
            ["hooks.slack.com"], 90, _not_placeholder(30), 0.95, "high"),
    _secret("stripe_key", "Stripe secret or restricted key",
            [LB + r"((?:sk|rk)_(?:test|live|prod)_[A-Za-z0-9]{10,99})\b"],
            ["sk_test_", "sk_live_", "sk_prod_", "rk_test_", "rk_live_", "rk_prod_"], 108, _not_placeholder(8),
            0.95),
    _secret("npm_token", "npm access token", [LB + r"(npm_[A-Za-z0-9]{36})\b"], ["npm_"], 40,
            _not_placeholder(4), 0.95),
    _secret("google_api_key", "Google API key", [LB + r"(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)"],
            ["AIza"], 39, google_key_ok, 0.9, "high"),
    _secret("sendgrid_api_key", "SendGrid API key", [LB + r"(SG\.[A-Za-z0-9=_\-.]{66})(?:[^A-Za-z0-9=_\-.]|$)"],
            ["SG."], 69, _not_placeholder(3), 0.95),
    # ---- model providers
    _secret("openai_api_key", "OpenAI API key (legacy, project, service account, admin)",
            [LB + r"(sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})\b",
             LB + r"(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,200})(?:[^A-Za-z0-9_\-]|$)"],
            ["T3BlbkFJ", "sk-proj-", "sk-svcacct-", "sk-admin-"], 210, _not_placeholder(8), 0.97),
    _secret("anthropic_api_key", "Anthropic API key",
            [LB + r"(sk-ant-api03-[A-Za-z0-9_\-]{93}AA)(?:[^A-Za-z0-9_\-]|$)"],
            ["sk-ant-api03-"], 108, _not_placeholder(13), 0.99),
    _secret("anthropic_admin_key", "Anthropic admin API key",
            [LB + r"(sk-ant-admin01-[A-Za-z0-9_\-]{93}AA)(?:[^A-Za-z0-9_\-]|$)"],
            ["sk-ant-admin01-"], 110, _not_placeholder(15), 0.99),
    _secret("nvidia_api_key", "NVIDIA API key (build.nvidia.com / NGC)",
            [LB + r"(nvapi-[A-Za-z0-9_\-]{64})(?:[^A-Za-z0-9_\-]|$)"], ["nvapi-"], 70, _not_placeholder(6), 0.98),
    _secret("huggingface_token", "Hugging Face user or organization token",
            [LB + r"(hf_[A-Za-z]{34})\b", LB + r"(api_org_[A-Za-z]{34})\b"], ["hf_", "api_org_"], 42,
            _not_placeholder(3), 0.9, "high"),
    _secret("groq_api_key", "Groq API key", [LB + r"(gsk_[A-Za-z0-9]{52})\b"], ["gsk_"], 56, _not_placeholder(4),
            0.97),
    _secret("perplexity_api_key", "Perplexity API key", [LB + r"(pplx-[A-Za-z0-9]{48})\b"], ["pplx-"], 53,
            _not_placeholder(5), 0.97),
    _secret("xai_api_key", "xAI API key", [LB + r"(xai-[A-Za-z0-9]{80})\b"], ["xai-"], 84, _not_placeholder(4),
            0.97),
    _secret("cohere_api_key", "Cohere API key (keyword context: cohere / CO_API_KEY)",
            [_assign("cohere|co_api_key", r"[A-Za-z0-9]{40}")], ["cohere", "co_api_key"], 40,
            _not_placeholder(0), 0.85, "high", nocase=True),
    _secret("mistral_api_key", "Mistral API key (keyword context: mistral)",
            [_assign("mistral", r"[A-Za-z0-9]{32}")], ["mistral"], 32, _not_placeholder(0), 0.85, "high",
            nocase=True),
    # ---- PII
    _pii("email_address", "Email address",
         [r"(?:^|[^A-Za-z0-9._%+\-])([A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+"
          r"[A-Za-z]{2,24})\b"],
         ["@"], 160, email_ok, 0.95, "medium"),
    _pii("us_ssn", "US Social Security number",
         [r"(?:^|[^0-9\-.]|\\u[0-9A-Fa-f]{4})([0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})(?:[^0-9\-]|$)"],
         [], 11, ssn_ok, 0.85, "high"),
    _pii("payment_card", "Payment card number (PAN)",
         # Not glued to letters either side: a digit run inside a hex digest or an identifier (``a3f04539...``,
         # a SHA-256 with 16 digits in a row) is not a card. JSON escapes before the value still count as a boundary.
         [r"(?:^|[^0-9A-Za-z_\-.]|\\[nrtbf]|\\u[0-9A-Fa-f]{4})([2-6][0-9]{12,18}|[2-6][0-9]{3}(?:[ -][0-9]{4}){2}[ -][0-9]{1,7}|3[0-9]{3}[ -][0-9]{6}[ -][0-9]{5})"
          r"(?:[^0-9A-Za-z_\-]|$)"],
         [], 23, card_ok, 0.9, "high"),
    _pii("iban", "International Bank Account Number",
         [r"(?:^|[^A-Za-z0-9])([A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)\b"],
         [], 42, iban_ok, 0.9, "high"),
    _pii("phone_number", "Phone number (validated with libphonenumber)",
         [r"(?:^|[^0-9A-Za-z+\-.])(\+[1-9][0-9]{0,2}[ .\-]?(?:\(?[0-9]{1,4}\)?[ .\-]?){1,4}[0-9]{2,4}"
          r"|\(?[2-9][0-9]{2}\)?[ .\-][0-9]{3}[ .\-][0-9]{4})(?:[^0-9\-]|$)"],
         [], 24, phone_ok, 0.8, "medium"),
)

_BY_ID = {d.id: d for d in CATALOG}


def get(detector_id: str) -> Detector:
    """The detector named ``detector_id``; raises ``KeyError`` naming it when unknown."""
    try:
        return _BY_ID[detector_id]
    except KeyError:
        raise KeyError(f"unknown detector {detector_id!r} (known: {', '.join(_BY_ID)})") from None


def select(kinds: Iterable[str] = ("secret", "pii"), disabled: Iterable[str] = ()) -> tuple[Detector, ...]:
    """The catalog filtered by kind and minus ``disabled`` ids; raises ``ValueError`` naming an unknown id."""
    disabled = set(disabled)
    unknown = disabled - set(_BY_ID)
    if unknown:
        raise ValueError(f"detection.disabled_detectors: unknown detector id(s) {sorted(unknown)}")
    kinds = set(kinds)
    return tuple(d for d in CATALOG if d.kind in kinds and d.id not in disabled)


def rail_patterns(detector_id: str) -> tuple[str, ...]:
    """The patterns a NeMo ``regex`` output rail uses for ``detector_id`` (Python ``re`` syntax, which every
    catalog pattern also is): for a detector with an ``opening`` (a PEM key, too long to wait for its end), the
    opening followed by the start of a key body (optional ``Name: value`` header lines, then 32 base64 characters),
    so the rail blocks a key as soon as its body starts but releases a BEGIN line followed by prose (issue 13
    item 7); else its ``patterns``. The rail runs no validator, so it also blocks placeholders such as
    ``AKIAIOSFODNN7EXAMPLE``. Raises ``KeyError`` naming an unknown id."""
    d = get(detector_id)
    return (d.opening + _KEY_BODY_START,) if d.opening else d.patterns


# After a key's opening: header lines (RFC 7468 / RFC 1421 ``Proc-Type: 4,ENCRYPTED``), then base64 (raw or JSON-escaped
# line breaks between them).
_KEY_BODY_START = r"(?:\s|\\n)*(?:[A-Za-z][A-Za-z-]*:[^\n]*(?:\s|\\n)+)*[A-Za-z0-9+/=]{32}"
