"""railcar.streams.lru: the bounded LRU of per-trace state."""

import pytest

from railcar.streams.lru import LRU


def test_get_makes_a_value_once_and_returns_the_same_object() -> None:
    made = []
    lru: LRU[str, list] = LRU(4, lambda: made.append(1) or [])
    a = lru.get("a")
    a.append("x")
    assert lru.get("a") is a and a == ["x"] and len(made) == 1


def test_least_recently_used_is_evicted_first() -> None:
    lru: LRU[int, dict] = LRU(2, dict)
    one, _ = lru.get(1), lru.get(2)
    assert lru.get(1) is one  # 1 is now the most recent: 2 goes when 3 arrives
    lru.get(3)
    assert 1 in lru and 3 in lru and 2 not in lru and len(lru) == 2
    assert lru.get(2) == {} and 1 not in lru  # 2 comes back fresh; 1 was the oldest


def test_max_items_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_items"):
        LRU(0, dict)
