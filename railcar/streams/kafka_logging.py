"""Keep aiokafka's own log repeats out of Railcar's logs while a broker is down.

While a broker is unreachable aiokafka logs the same ERROR about 20 times a second ("Unable connect to node with
id 1", "Unable to update metadata from [1]", ...). Railcar reports an outage itself (one warning when the
publisher starts spooling, one info with counts when it recovers: :mod:`railcar.streams.producer`), so
:class:`RepeatFilter` lets the first record of each message template through and then at most one per
``interval_s`` per (logger, level, template), adding how many were suppressed in between. Records are never
altered otherwise, and nothing is buffered.

:func:`quiet_aiokafka` installs one filter on every ``aiokafka`` logger (a filter on a logger applies only to
records created on that very logger, not to its children, so each module logger gets it). aiokafka creates its
module loggers at import time; call it after importing aiokafka (the publisher and the consumer do, at start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RepeatFilter", "quiet_aiokafka"]


class RepeatFilter(logging.Filter):
    """Pass the first record of each ``(logger name, level, msg template)`` and then one per ``interval_s``
    seconds; a passed record after suppressed ones gets `` [N similar suppressed in the last S s]`` appended to
    its message. ``clock`` returns seconds (monotonic); thread-safe (aiokafka logs from the loop thread only,
    but handlers may be shared)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024) -> None:
        super().__init__()
        self.interval_s, self.clock, self.max_keys = interval_s, clock, max_keys
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [last passed at, suppressed since]
        self._lock = threading.Lock()
        self.suppressed = 0  # total records held back by this filter

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        with self._lock:
            st = self._seen.get(key)
            if st is None:
                if len(self._seen) >= self.max_keys:  # bounded: forget the oldest template
                    self._seen.pop(next(iter(self._seen)))
                self._seen[key] = [now, 0]
                return True
            if now - st[0] < self.interval_s:
                st[1] += 1
                self.suppressed += 1
                return False
            held, st[0], st[1] = int(st[1]), now, 0
        if held:
            record.msg = f"{record.msg} [{held} similar suppressed in the last {self.interval_s:g} s]"
        return True


_INSTALLED: RepeatFilter | None = None


def quiet_aiokafka(interval_s: float = 60.0) -> RepeatFilter:
    """Install (once per process) a :class:`RepeatFilter` on the ``aiokafka`` logger and every ``aiokafka.*``
    logger that exists now; returns it. Idempotent: later calls return the installed filter."""
    global _INSTALLED
    import aiokafka  # noqa: F401  (creates the module loggers)
    import aiokafka.conn  # noqa: F401
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    if _INSTALLED is None:
        _INSTALLED = RepeatFilter(interval_s)
    names = [n for n in logging.root.manager.loggerDict if n == "aiokafka" or n.startswith("aiokafka.")]
    for name in ["aiokafka", *names]:
        lg = logging.getLogger(name)
        if _INSTALLED not in lg.filters:
            lg.addFilter(_INSTALLED)
    return _INSTALLED
