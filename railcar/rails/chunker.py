"""The rolling buffer of streaming output rails: which upstream content deltas each chunk check sees.

Semantics follow ``nemoguardrails/rails/llm/buffer.py`` ``RollingBuffer`` (NeMo Guardrails 0.24.1), counted in
upstream content deltas (one delta = one non-empty ``choices[i].delta.content`` string):

- deltas accumulate in a buffer; when it holds ``chunk_size`` deltas a batch is emitted whose *window* (the text
  the rails check) is the last ``chunk_size + context_size`` buffered deltas and whose *new* part is the deltas not
  covered by an earlier batch; the buffer then keeps its last ``context_size`` deltas as carried-over context;
- so the first check comes after ``chunk_size`` deltas and later ones every ``max(chunk_size - context_size, 1)``
  deltas, each window overlapping the previous one by ``context_size`` deltas;
- at the end of the stream the remaining buffer (context plus uncovered deltas) is checked once more.

Example, ``chunk_size=4, context_size=2``, deltas ``a b c d e f g``: batch 1 window ``abcd`` new ``abcd``;
batch 2 window ``cdef`` new ``ef``; end: window ``efg`` new ``g``.

Two deliberate differences from ``RollingBuffer``: ``context_size = 0`` carries nothing over (``RollingBuffer``
slices ``buffer[-0:]``, which keeps the whole buffer), and the end-of-stream check is skipped when no delta arrived
since the last batch (its window would be text already checked).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChunkBatch", "RollingChunker"]


@dataclass(frozen=True, slots=True)
class ChunkBatch:
    """One chunk check: ``window`` the deltas the rails see (context + new), ``new`` the deltas not seen before,
    ``final`` true for the end-of-stream check. ``end`` is the count of deltas fed when the batch was cut."""

    window: tuple[str, ...]
    new: tuple[str, ...]
    final: bool
    end: int

    @property
    def text(self) -> str:
        """The window joined as one string (what a chunk check checks)."""
        return "".join(self.window)


class RollingChunker:
    """Incremental rolling buffer: :meth:`feed` one delta at a time, :meth:`finish` at end of stream.

    ``chunk_size`` >= 1 and ``context_size`` >= 0, both in deltas; raises :class:`ValueError` naming the field
    otherwise. Memory is bounded by ``chunk_size + context_size`` deltas.
    """

    __slots__ = ("chunk_size", "context_size", "_buf", "_total", "_covered")

    def __init__(self, chunk_size: int = 200, context_size: int = 50) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"rails.output.streaming.chunk_size: must be an integer >= 1, got {chunk_size!r}")
        if not isinstance(context_size, int) or context_size < 0:
            raise ValueError(f"rails.output.streaming.context_size: must be an integer >= 0, got {context_size!r}")
        self.chunk_size = chunk_size
        self.context_size = context_size
        self._buf: list[str] = []
        self._total = 0      # deltas fed so far
        self._covered = 0    # deltas already inside some batch's `new`

    @property
    def fed(self) -> int:
        """Number of deltas fed so far."""
        return self._total

    def feed(self, delta: str) -> ChunkBatch | None:
        """Add one delta; returns the batch to check when this delta completes a chunk, else ``None``."""
        self._buf.append(delta)
        self._total += 1
        if len(self._buf) < self.chunk_size:
            return None
        n_new = min(self.chunk_size, self._total - self._covered)
        window = self._buf[-(self.chunk_size + self.context_size):]
        batch = ChunkBatch(tuple(window), tuple(self._buf[-n_new:]), False, self._total)
        self._covered += n_new
        self._buf = self._buf[-self.context_size:] if self.context_size else []
        return batch

    def finish(self) -> ChunkBatch | None:
        """End of stream: the last batch (remaining context + uncovered deltas), or ``None`` if nothing is new."""
        remaining = self._total - self._covered
        if remaining <= 0 or not self._buf:
            return None
        batch = ChunkBatch(tuple(self._buf), tuple(self._buf[-remaining:]), True, self._total)
        self._covered = self._total
        self._buf = []
        return batch
