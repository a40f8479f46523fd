"""The one way tests reach ``../shared`` (beside the checkout, as in CI): recorded traffic and secret test cases.

``shared_path("fixtures", "recorded", "responses.jsonl")`` is ``<checkout>/../shared/fixtures/recorded/...``.
Shipped code never builds these paths; only tests and benchmarks read them.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """``../shared/<parts...>`` relative to the checkout (the file need not exist)."""
    return SHARED.joinpath(*parts)


RECORDED_CHAT = shared_path("fixtures", "recorded", "chat_completions.jsonl")
RECORDED_RESPONSES = shared_path("fixtures", "recorded", "responses.jsonl")
RECORDED_ANTHROPIC = shared_path("fixtures", "recorded", "anthropic_messages.jsonl")
GITLEAKS_CASES = shared_path("fixtures", "secrets", "gitleaks_cases.jsonl")
