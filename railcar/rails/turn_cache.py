"""The verdicts of turns already judged: a bounded LRU keyed by content hash, so a conversation's history is judged once.

An agent re-sends its whole conversation on every call (Chat ``messages``, Responses ``input`` items, Anthropic
``messages``); the input and tool_output rails judge every turn of it (issue 13 item 3), and a turn judged in the
previous call gets the same verdict again. :class:`TurnCache` keeps that verdict under ``(rail kind, SHA-256 of
the turn's text)``: never the text itself (a turn can carry a secret), only the :class:`CheckResult` status, the
blocking rail's name and its refusal message. The cache belongs to one guard (one guardrail config), so a verdict
never outlives the rails that gave it; verdicts that came from a failing rail (``fail_mode``) are not stored, so a
timeout is retried on the next call. The request policy also keeps here, under kind ``"inline"``, the request
strings in which the hold-back found no catalog value (:data:`railcar.rails.codec_guard.CLEAN_REQUEST_STRING`), so
the history is not scanned again either.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from railcar.rails.engine_local import CheckResult

__all__ = ["TurnCache", "DEFAULT_MAX_ENTRIES"]

DEFAULT_MAX_ENTRIES = 50_000  # ~100 bytes an entry: a few MB, a few hundred long conversations


class TurnCache:
    """LRU of rail verdicts by ``(kind, sha256(text))``. ``max_entries`` (>= 1) bounds it; the least recently used
    entry goes first. ``hits`` / ``misses`` count :meth:`get` calls. Not thread-safe: one event loop uses it.

    Raises ``ValueError`` for ``max_entries < 1``."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("TurnCache: max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, bytes], CheckResult] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(kind: str, text: str) -> tuple[str, bytes]:
        """The cache key of ``text`` judged by ``kind`` rails: ``(kind, 32-byte SHA-256 of its UTF-8)`` (lone
        surrogates, which JSON escapes can carry, are hashed as their code points)."""
        return kind, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def get(self, key: tuple[str, bytes]) -> CheckResult | None:
        """The verdict stored under ``key`` (now the most recently used), or ``None``."""
        res = self._entries.get(key)
        if res is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return res

    def put(self, key: tuple[str, bytes], res: CheckResult) -> None:
        """Store ``res`` under ``key``: its status and rail, and its message only for a block (a ``modified``
        result's content is the judged text rewritten, which is not kept). Evicts the oldest entry when full."""
        self._entries[key] = CheckResult(res.status, res.rail, res.content if res.blocked else "")
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
