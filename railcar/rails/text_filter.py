"""The inline text-filter seam of the stream guards (issue 8): what a hold-back over one streamed value offers, and
what a stream guard needs from the rails guard that opened it.

:class:`TextFilter` (one per streamed value: :class:`railcar.rails.inline.InlineFilter` is the real one,
:class:`IdentityFilter` the no-op), the :class:`FilterMatch` it reports, :class:`StreamRails` (implemented by
:class:`railcar.rails.guard.RailsGuard`) and :func:`match_rail`. Shared by chat's
:class:`railcar.rails.stream_guard.RailsStreamGuard` and the codec-generic
:class:`railcar.rails.codec_stream.CodecStreamGuard` (kept apart from both so neither imports the other's module
for these types).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from railcar.core.exchange import Exchange, RedactionNote
from railcar.core.guard import StreamSink
from railcar.rails.engine_local import CheckResult
from railcar.rails.redaction import note_from_match
from railcar.rails.scanner import Match

__all__ = ["TextFilter", "FilterMatch", "IdentityFilter", "StreamRails", "SENSITIVE_DATA", "match_rail", "end_stream",
           "withheld_note"]

_log = logging.getLogger("railcar.rails")


class FilterMatch(Protocol):
    """What a :class:`TextFilter` reports when it ends the stream: ``rail``, the rail name of the blocked-content
    error chunk (``"sensitive data"`` for the inline hold-back), and ``match``, the scanner's
    :class:`railcar.rails.scanner.Match` (fingerprint and masked preview: the trace's note of what was withheld)."""

    @property
    def rail(self) -> str: ...

    @property
    def match(self) -> Match: ...


def withheld_note(match: FilterMatch) -> RedactionNote:
    """The redaction note of a value a block withheld from the client (issue 13 item 5: the trace notes it, so the
    consumer makes a finding of it even when the value never reached a recorded string)."""
    return note_from_match(match.match)


class TextFilter(Protocol):
    """Inline hold-back over one text stream (issue 8); every member is required.

    ``feed(text)`` returns the text safe to release now and a :class:`FilterMatch` (or ``None``); ``flush()``
    releases what is left at the end. ``pass_through(deltas)`` is the batch fast path: how many leading deltas
    ``feed`` would release whole and unchanged (they are consumed as such). ``held``: the text held back now
    (``""`` when none; always a suffix of the text fed). ``notes``: one :class:`RedactionNote` per placeholder
    written (paths ``"$"``, relative to the filtered text)."""

    @property
    def held(self) -> str: ...

    @property
    def notes(self) -> list[RedactionNote]: ...

    def feed(self, text: str) -> tuple[str, FilterMatch | None]: ...

    def flush(self) -> tuple[str, FilterMatch | None]: ...

    def pass_through(self, deltas: list[str]) -> int: ...


class IdentityFilter:
    """The :class:`TextFilter` of a guard without an inline hold-back: releases everything at once."""

    __slots__ = ()
    held = ""

    @property
    def notes(self) -> list[RedactionNote]:
        """Always empty: nothing is redacted."""
        return []

    def feed(self, text: str) -> tuple[str, FilterMatch | None]:
        """``(text, None)``."""
        return text, None

    def flush(self) -> tuple[str, FilterMatch | None]:
        """``("", None)``: nothing is held."""
        return "", None

    def pass_through(self, deltas: list[str]) -> int:
        """``len(deltas)``: every delta is released whole."""
        return len(deltas)


class StreamRails(Protocol):
    """What a stream guard needs from its guard (:class:`railcar.rails.guard.RailsGuard` is one): the streaming
    settings (``chunk_size`` / ``context_size`` in content deltas, ``stream_first``), the inline filter factory
    (``None``: :class:`IdentityFilter`), whether rails of a kind run, one check, and the ``guardrails_data`` the
    request asked for."""

    chunk_size: int
    context_size: int
    stream_first: bool
    filter_factory: Callable[[], TextFilter] | None

    def enabled(self, kind: str) -> bool: ...

    async def run_check(self, exchange: Exchange, kind: str, messages: list[dict[str, Any]]) -> CheckResult: ...

    def guardrails_data(self, exchange: Exchange) -> dict[str, Any] | None: ...


SENSITIVE_DATA = "sensitive data"  # the rail name of the inline hold-back's blocks


def match_rail(match: FilterMatch) -> str:
    """The rail name a filter ``match`` reports (``match.rail``), else :data:`SENSITIVE_DATA`."""
    return match.rail or SENSITIVE_DATA


async def end_stream(sink: StreamSink, lock: asyncio.Lock, frames: bytes, stop_event: asyncio.Event,
                     abort: Callable[[], Any]) -> None:
    """The last step of a stopped stream guard (a block or a fail-closed stop), shared by the chat and codec stream
    guards: ``frames`` (the API's blocked or error frames) go to ``sink`` under ``lock``, then ``stop_event`` is set
    and ``abort()`` (sync or async) stops the upstream. A client already gone, or an abort that fails, does not undo
    the stop: both are logged at DEBUG and swallowed."""
    async with lock:
        try:
            await sink.send(frames)
        except Exception as exc:  # client already gone: the stop still stands
            _log.debug("could not send the final frames: %s", exc)
    stop_event.set()
    try:
        res = abort()
        if asyncio.iscoroutine(res):
            await res
    except Exception as exc:
        _log.debug("abort callback failed: %s", exc)
