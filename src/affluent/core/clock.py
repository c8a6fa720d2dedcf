"""affluent's one wall clock: UTC epoch milliseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    """The wall clock, in UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000


#: event times a record may carry: far beyond any date, but safe for int64 arithmetic
MIN_EVENT_MS, MAX_EVENT_MS = -(1 << 62), 1 << 62
#: how far ahead of the wall clock a live record's event time may be (publishers' clocks drift a little)
DEFAULT_MAX_EVENT_AHEAD_MS = 5 * 60_000


def event_time_error(t: object, now: int, max_ahead_ms: int | None) -> str | None:
    """Why `t` is not a usable event time (int epoch ms, not implausibly far ahead of `now`), or None.

    >>> event_time_error(1_000, 2_000, 60_000) is None
    True
    >>> event_time_error(2_000 + 86_400_000, 2_000, 300_000)
    'event time 1970-01-02T00:00:02Z is 86400 s ahead of the wall clock (limit 300 s)'
    """
    if type(t) is not int:
        return f"event time must be int epoch ms, got {t!r}"
    if not MIN_EVENT_MS <= t <= MAX_EVENT_MS:
        return f"event time {t} ms is out of range"
    if max_ahead_ms is not None and t - now > max_ahead_ms:
        when = datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t < 253402300800000 else f"{t} ms"
        return f"event time {when} is {(t - now) // 1000} s ahead of the wall clock (limit {max_ahead_ms // 1000} s)"
    return None
