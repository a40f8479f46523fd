"""rails/chunker.py: the rolling buffer, checked against NeMo Guardrails' own ``RollingBuffer``."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nemoguardrails.rails.llm.buffer import RollingBuffer

from railcar.rails.chunker import RollingChunker


async def _nemo(deltas: list[str], chunk: int, context: int) -> list[tuple[tuple, tuple]]:
    async def gen():
        for d in deltas:
            yield d

    out = []
    async for b in RollingBuffer(buffer_context_size=context, buffer_chunk_size=chunk).process_stream(gen()):
        out.append((tuple(b.processing_context), tuple(b.user_output_chunks)))
    return out


def _ours(deltas: list[str], chunk: int, context: int) -> list[tuple[tuple, tuple]]:
    c = RollingChunker(chunk, context)
    out = [(b.window, b.new) for b in map(c.feed, deltas) if b is not None]
    last = c.finish()
    if last is not None:
        out.append((last.window, last.new))
    return out


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 60), chunk=st.integers(1, 12), context=st.integers(1, 12))
def test_matches_nemo_rolling_buffer(n: int, chunk: int, context: int) -> None:
    deltas = [f"d{i} " for i in range(n)]
    nemo = asyncio.run(_nemo(deltas, chunk, context))
    # NeMo re-checks the carried-over context alone at the end even when nothing is new; Railcar skips that.
    nemo = [b for b in nemo if b[1]] if nemo and not nemo[-1][1] else nemo
    assert _ours(deltas, chunk, context) == nemo


def test_every_delta_released_once_and_windows_bounded() -> None:
    deltas = [str(i) for i in range(23)]
    batches = _ours(deltas, 5, 2)
    assert [d for _, new in batches for d in new] == deltas
    assert all(len(w) <= 5 + 2 for w, _ in batches)
    assert batches[1][0][:2] == ("3", "4")  # the second window starts with the carried-over context


def test_context_zero_carries_nothing() -> None:
    """Unlike RollingBuffer's ``buffer[-0:]`` (which keeps everything), context 0 means disjoint windows."""
    batches = _ours(list("abcdefg"), 3, 0)
    assert [w for w, _ in batches] == [tuple("abc"), tuple("def"), tuple("g")]


@pytest.mark.parametrize("chunk,context", [(0, 1), (3, -1), ("2", 1)])
def test_bad_sizes_name_the_field(chunk, context) -> None:
    with pytest.raises(ValueError, match="rails.output.streaming"):
        RollingChunker(chunk, context)
