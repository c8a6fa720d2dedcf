"""Event-time windows: tumbling, hopping and session.

Time is UTC epoch milliseconds. A window is [start_ms, end_ms). Each input partition keeps its own
watermark: the largest event time seen so far, which also advances with the wall clock once the
partition has been idle for `idle_ms`. A window closes when the watermark reaches
`end_ms + grace_ms`; a record whose every window is already closed is late and goes to the late
side output. The watermark advances record by record in log order, so that which records are late
does not depend on how the log happened to be split into batches: a restarted pipeline produces
exactly the results of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from affluent.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TumblingWindow:
    size_ms: int
    grace_ms: int = 0
    idle_ms: int | None = 5_000

    #: windows of one key do not merge: each record falls in windows fixed by its time alone
    merging: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check(self.size_ms, self.grace_ms)

    @property
    def hop_ms(self) -> int:
        return self.size_ms

    def starts(self, ts: int) -> range:
        s = ts - ts % self.size_ms
        return range(s, s + 1)

    def last_end(self, ts: int) -> int:
        """The end of the last window that holds a record at `ts`."""
        return ts - ts % self.size_ms + self.size_ms


@dataclass(frozen=True, slots=True)
class HoppingWindow:
    size_ms: int
    hop_ms: int
    grace_ms: int = 0
    idle_ms: int | None = 5_000

    merging: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check(self.size_ms, self.grace_ms)
        if not 0 < self.hop_ms <= self.size_ms:
            raise ConfigError(f"hop_ms must be in (0, size_ms], not {self.hop_ms}")

    def starts(self, ts: int) -> range:
        # windows whose start lies on the hop grid in (ts - size, ts]
        last = ts - ts % self.hop_ms
        lo = ts - self.size_ms + 1
        first = lo + (-lo) % self.hop_ms
        return range(first, last + 1, self.hop_ms)

    def last_end(self, ts: int) -> int:
        return ts - ts % self.hop_ms + self.size_ms


@dataclass(frozen=True, slots=True)
class SessionWindow:
    """Records of a key closer than `gap_ms` to each other fall in one session."""

    gap_ms: int
    grace_ms: int = 0
    idle_ms: int | None = 5_000
    #: sessions of one key grow and merge as records come
    merging: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check(self.gap_ms, self.grace_ms)

    def last_end(self, ts: int) -> int:
        """The earliest a session holding a record at `ts` can end."""
        return ts + self.gap_ms


Window = TumblingWindow | HoppingWindow | SessionWindow


def _check(size: int, grace: int) -> None:
    if size <= 0:
        raise ConfigError(f"a window needs a positive length, not {size} ms")
    if grace < 0:
        raise ConfigError(f"grace_ms cannot be negative ({grace})")
