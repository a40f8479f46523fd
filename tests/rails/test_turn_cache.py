"""rails/turn_cache.py: the bounded verdict cache of judged turns (content hash -> verdict, never the text)."""

from __future__ import annotations

import pytest

from railcar.rails.engine_local import CheckResult
from railcar.rails.turn_cache import TurnCache


def test_lru_keeps_the_most_recent_verdicts_within_the_bound() -> None:
    cache = TurnCache(max_entries=2)
    a, b, c = (TurnCache.key("input", t) for t in ("a", "b", "c"))
    cache.put(a, CheckResult("passed"))
    cache.put(b, CheckResult("blocked", "regex check input", "no"))
    assert cache.get(a) == CheckResult("passed")  # a is now the most recent
    cache.put(c, CheckResult("passed"))
    assert len(cache) == 2 and cache.get(b) is None
    assert cache.get(a) is not None and cache.get(c) is not None
    assert (cache.hits, cache.misses) == (3, 1)


def test_keys_hash_the_text_per_kind_and_store_no_text() -> None:
    text = "tool said: " + "x" * 40 + " \ud800"  # a lone surrogate (a JSON escape can carry one) hashes too
    k_in, k_tool = TurnCache.key("input", text), TurnCache.key("tool_output", text)
    assert k_in != k_tool and k_in[0] == "input" and len(k_in[1]) == 32 and text.encode("utf-8", "surrogatepass") \
        not in k_in[1]
    cache = TurnCache()
    cache.put(k_in, CheckResult("modified", None, text))  # a rewritten text is not kept
    assert cache.get(k_in) == CheckResult("modified", None, "") and cache.get(k_tool) is None
    cache.put(k_tool, CheckResult("blocked", "regex check input", "I'm sorry."))
    assert cache.get(k_tool).content == "I'm sorry."


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        TurnCache(0)
