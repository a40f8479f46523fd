"""A bounded least-recently-used map of per-trace state (the recorder's dedup state, the consumer's contents)."""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``max_items`` values, made on first use by ``factory()``; the least recently used one is evicted
    first, and ``on_evict(key, value)`` (optional) is told. ``max_items`` < 1 raises ``ValueError``. Not
    thread-safe."""

    def __init__(self, max_items: int, factory: Callable[[], V],
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self._factory = factory
        self._on_evict = on_evict
        self._items: collections.OrderedDict[K, V] = collections.OrderedDict()

    def evict_oldest(self) -> None:
        """Drop the least recently used value (``KeyError`` when empty)."""
        key, value = self._items.popitem(last=False)
        if self._on_evict is not None:
            self._on_evict(key, value)

    def get(self, key: K) -> V:
        """The value of ``key`` (made now when absent, evicting the oldest beyond ``max_items``), marked as the
        most recently used."""
        value = self._items.get(key)
        if value is None:
            value = self._items[key] = self._factory()
            while len(self._items) > self.max_items:
                self.evict_oldest()
        else:
            self._items.move_to_end(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
