"""Generated trace-like JSONL with planted secrets/PII of every catalog detector plus hard negatives.

Used by ``tests/test_scanner.py``, ``tests/test_redaction.py`` and ``bench/detect.py``. Every planted value is
generated valid for its format (checksums, Luhn, mod-97, libphonenumber) and random, never a constant, so the
detector cannot pass by memorising. Values are embedded the way traces carry them: in message content, in tool
arguments that are themselves JSON strings (so the value is JSON-escaped twice: PEM newlines become ``\\n``,
quotes become ``\\"``), and in span attributes. Hard negatives: UUIDs, hex hashes, base64 blobs, Luhn-invalid card
numbers, token counts, dates and timestamps, invalid SSNs, placeholders (``AKIAIOSFODNN7EXAMPLE``, ``sk-xxxx…``,
``<your key>``).

``generate(n_records, seed, density)`` returns ``[(jsonl_line, [(detector_id, value), ...])]``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import random
import string
import uuid

import phonenumbers
from stdnum import luhn

ALNUM = string.ascii_letters + string.digits
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _r(rng: random.Random, chars: str, n: int) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


def _b64u(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _github(rng: random.Random) -> str:
    body = _r(rng, ALNUM, 30)
    crc = binascii.crc32(body.encode())
    out = ""
    while crc:
        crc, r = divmod(crc, 62)
        out = B62[r] + out
    return f"gh{rng.choice('pousr')}_{body}{out.rjust(6, '0')}"


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), ("3530", 16)])
    body = prefix + _r(rng, string.digits, length - len(prefix) - 1)
    num = body + luhn.calc_check_digit(body)
    style = rng.random()
    if style < 0.4 or length != 16:
        return num
    sep = " " if style < 0.7 else "-"
    return sep.join(num[i:i + 4] for i in range(0, 16, 4))


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice([("DE", lambda: _r(rng, string.digits, 18)),
                                ("GB", lambda: _r(rng, string.ascii_uppercase, 4) + _r(rng, string.digits, 14)),
                                ("FR", lambda: _r(rng, string.digits, 23))])
    b = bban()
    rearranged = b + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    check = 98 - num % 97
    iban = f"{country}{check:02d}{b}"
    if rng.random() < 0.5:
        return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))
    return iban


def _ssn(rng: random.Random) -> str:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _phone(rng: random.Random) -> str:
    while True:
        if rng.random() < 0.7:
            area = rng.choice(["212", "415", "650", "312", "617", "206", "303", "512", "404", "702"])
            ex = f"{rng.randint(2, 9)}{rng.randint(0, 9)}{rng.randint(0, 9)}"
            line = f"{rng.randint(0, 9999):04d}"
            text = rng.choice([f"+1 {area}-{ex}-{line}", f"({area}) {ex}-{line}", f"{area}-{ex}-{line}",
                               f"{area}.{ex}.{line}"])
            num = phonenumbers.parse(text, "US")
        else:
            text = rng.choice([f"+44 20 7{rng.randint(100, 999)} {rng.randint(1000, 9999)}",
                               f"+49 30 {rng.randint(1000000, 9999999)}",
                               f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} "
                               f"{rng.randint(10, 99)}"])
            num = phonenumbers.parse(text, None)
        digits = [c for c in text if c.isdigit()]
        if phonenumbers.is_valid_number(num) and len(set(digits)) >= 4 and "555" not in text:
            return text


def _pem(rng: random.Random) -> str:
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = base64.b64encode(rng.randbytes(rng.randint(120, 400))).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


GENERATORS = {
    "private_key": _pem,
    "jwt": lambda r: ".".join([_b64u({"alg": r.choice(["HS256", "RS256"]), "typ": "JWT"}),
                               _b64u({"sub": _r(r, ALNUM, 10), "iat": r.randint(1, 2 ** 31)}),
                               base64.urlsafe_b64encode(r.randbytes(32)).rstrip(b"=").decode()]),
    "aws_access_key_id": lambda r: r.choice(["AKIA", "ASIA"]) + _r(r, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16),
    "github_token": _github,
    "github_fine_grained_pat": lambda r: "github_pat_" + _r(r, ALNUM, 22) + "_" + _r(r, ALNUM, 59),
    "gitlab_token": lambda r: "glpat-" + _r(r, ALNUM + "_-", 19) + _r(r, ALNUM, 1),
    "slack_token": lambda r: f"xoxb-{_r(r, string.digits, 12)}-{_r(r, string.digits, 13)}-{_r(r, ALNUM, 24)}",
    "slack_legacy_token": lambda r: f"xoxs-{_r(r, string.digits, 12)}-{_r(r, string.digits, 9)}-"
                                    f"{_r(r, string.digits, 10)}-{_r(r, '0123456789abcdef', 10)}",
    "gitlab_session_cookie": lambda r: _r(r, string.digits + string.ascii_lowercase, 32),
    "aws_bedrock_api_key": lambda r: "ABSK" + _r(r, ALNUM + "+/", 132),
    "slack_webhook_url": lambda r: (f"https://hooks.slack.com/services/T{_r(r, string.ascii_uppercase, 8)}/"
                                    f"B{_r(r, string.ascii_uppercase, 8)}/{_r(r, ALNUM, 24)}"),
    "stripe_key": lambda r: r.choice(["sk_live_", "rk_live_", "sk_test_"]) + _r(r, ALNUM, 24),
    "npm_token": lambda r: "npm_" + _r(r, ALNUM, 36),
    "google_api_key": lambda r: "AIza" + _r(r, ALNUM + "_-", 34) + _r(r, ALNUM, 1),
    "sendgrid_api_key": lambda r: "SG." + _r(r, ALNUM, 22) + "." + _r(r, ALNUM, 43),
    "openai_api_key": lambda r: r.choice([
        "sk-" + _r(r, ALNUM, 20) + "T3BlbkFJ" + _r(r, ALNUM, 20),
        "sk-proj-" + _r(r, ALNUM + "_-", 74) + "T3BlbkFJ" + _r(r, ALNUM + "_-", 73) + _r(r, ALNUM, 1)]),
    "anthropic_api_key": lambda r: "sk-ant-api03-" + _r(r, ALNUM + "_-", 93) + "AA",
    "anthropic_admin_key": lambda r: "sk-ant-admin01-" + _r(r, ALNUM + "_-", 93) + "AA",
    "nvidia_api_key": lambda r: "nvapi-" + _r(r, ALNUM + "_-", 63) + _r(r, ALNUM, 1),
    "huggingface_token": lambda r: "hf_" + _r(r, string.ascii_letters, 34),
    "groq_api_key": lambda r: "gsk_" + _r(r, ALNUM, 52),
    "perplexity_api_key": lambda r: "pplx-" + _r(r, ALNUM, 48),
    "xai_api_key": lambda r: "xai-" + _r(r, ALNUM, 80),
    "cohere_api_key": lambda r: _r(r, ALNUM, 40),
    "mistral_api_key": lambda r: _r(r, ALNUM, 32),
    "email_address": lambda r: (f"{_r(r, string.ascii_lowercase, r.randint(3, 8))}.{_r(r, string.ascii_lowercase, 5)}"
                                f"@{_r(r, string.ascii_lowercase, 6)}.{r.choice(['com', 'io', 'de', 'co.uk'])}"),
    "us_ssn": _ssn,
    "payment_card": _card,
    "iban": _iban,
    "phone_number": _phone,
}

CONTEXT = {"gitlab_session_cookie": "Cookie: _gitlab_session={v}", "cohere_api_key": "COHERE_API_KEY={v}", "mistral_api_key": "export MISTRAL_API_KEY=\"{v}\""}


def hard_negative(rng: random.Random) -> str:
    """A string that looks sensitive but is not (see the module docstring)."""
    kind = rng.randrange(14)
    if kind == 0:
        return str(uuid.UUID(bytes=rng.randbytes(16)))
    if kind == 1:
        return hashlib.sha256(rng.randbytes(8)).hexdigest()
    if kind == 2:
        return base64.b64encode(rng.randbytes(rng.randint(40, 160))).decode()
    if kind == 3:  # Luhn-invalid Visa-looking number
        body = "4" + _r(rng, string.digits, 14)
        bad = (int(luhn.calc_check_digit(body)) + rng.randint(1, 9)) % 10
        return body + str(bad)
    if kind == 4:
        return f"used {rng.randint(10, 99999)} prompt tokens and {rng.randint(10, 9999)} completion tokens"
    if kind == 5:
        return f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:{rng.randint(0, 59):02d}:00Z"
    if kind == 6:
        return rng.choice(["AKIAIOSFODNN7EXAMPLE", "sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                           "<your key>", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "OPENAI_API_KEY=<your-api-key>",
                           "sk-ant-api03-...", "nvapi-XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
                           "user@example.com", "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"])
    if kind == 7:
        return f"{rng.choice(['000', '666', '912'])}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    if kind == 8:
        return str(rng.randint(1_600_000_000_000_000_000, 1_800_000_000_000_000_000))
    if kind == 9:
        return f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)} build {rng.randint(100000, 999999)}"
    if kind == 10:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}:{rng.randint(1024, 65535)}"
    if kind == 11:
        return _r(rng, ALNUM, 40)
    if kind == 12:
        return f"chatcmpl-{_r(rng, ALNUM, 29)}"
    return f"call_{_r(rng, ALNUM, 24)}"


FILLER = ("The capital of France is Paris. ", "Let me check the weather for you. ",
          "Here is the summary of the document you asked about. ", "I'll call the search tool now. ",
          "The function returned 3 results; the first one matches. ")


def _text(rng: random.Random, inner: str) -> str:
    return "".join(rng.choice(FILLER) for _ in range(rng.randint(1, 4))) + inner + " " + rng.choice(FILLER)


def generate(n_records: int, seed: int = 7, density: float = 0.5) -> list[tuple[str, list[tuple[str, str]]]]:
    """``n_records`` JSONL lines; each carries a planted value with probability ``density`` (round-robin over
    detectors) and always a hard negative. Returns ``[(line, [(detector_id, value)])]``."""
    rng = random.Random(seed)
    ids = list(GENERATORS)
    out = []
    k = 0
    for _ in range(n_records):
        planted: list[tuple[str, str]] = []
        content = _text(rng, hard_negative(rng))
        args = {"query": hard_negative(rng)}
        attrs = {"gen_ai.usage.input_tokens": rng.randint(10, 5000), "note": hard_negative(rng)}
        if rng.random() < density:
            det = ids[k % len(ids)]
            k += 1
            value = GENERATORS[det](rng)
            planted.append((det, value))
            shown = CONTEXT.get(det, "{v}").format(v=value)
            where = rng.randrange(3)
            if where == 0:
                content = _text(rng, shown)
            elif where == 1:  # inside tool arguments: JSON inside JSON, escaped twice in the line
                args = {"config": f"KEY={shown}\nOTHER=1", "value": shown}
            else:
                attrs["note"] = shown
        record = {
            "trace_id": uuid.UUID(bytes=rng.randbytes(16)).hex, "span_id": rng.randbytes(8).hex(),
            "name": "chat gpt-4o", "start_time_unix_nano": rng.randint(1_700_000_000_000_000_000, 1_800_000_000_000_000_000),
            "attributes": attrs,
            "messages": [{"role": "user", "content": content},
                         {"role": "assistant", "tool_calls": [{"id": f"call_{_r(rng, ALNUM, 24)}", "type": "function",
                          "function": {"name": "lookup", "arguments": json.dumps(args)}}]}],
        }
        out.append((json.dumps(record), planted))
    return out
