"""affluent's one wall clock: UTC epoch milliseconds."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The wall clock, in UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000
