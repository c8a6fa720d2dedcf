"""Replays of the crypto sources' recordings, with the times inside each value moved along with its event time.

A market row's `last_updated` and the envelope's `snapshot_ms`, a trade's `T` and `E`: all move by the
replay's shift, so that a replay moved to now gives candles, snapshots, lake partitions and forecasts
of now, and each loop of it gives new snapshots rather than the same ones again.

>>> moved({"e": "trade", "T": 1000, "E": 1002, "p": "1"}, 60_000)["T"]
61000
>>> moved({"kind": "market", "snapshot_ms": 0, "row": {"id": "bitcoin", "last_updated": "2026-03-10T08:00:00.000Z"}}, 3_600_000)["row"]["last_updated"]
'2026-03-10T09:00:00.000Z'
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from affluent.core.records import Record
from affluent.sources.gbfs import parse_timestamp_ms
from affluent.sources.replay import ReplaySource


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moved(value: Any, shift_ms: int) -> Any:
    """A recorded trade message or market envelope, its times moved by shift_ms (anything else as it is)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for field in ("T", "E", "snapshot_ms", "last_updated_ms"):
        if isinstance(out.get(field), int):
            out[field] += shift_ms
    row = out.get("row")
    if isinstance(row, dict):
        at = parse_timestamp_ms(row.get("last_updated"))
        if at is not None:
            out["row"] = {**row, "last_updated": _iso(at + shift_ms)}
    return out


class CryptoReplaySource(ReplaySource):
    """Plays back a recording of CoinGeckoSource or BinanceTradeSource, moving the times inside each value too."""

    def _shifted(self, recs: list[Record]) -> list[Record]:
        d = self.shift_ms
        if not d:
            return recs
        return [Record(value=moved(r.value, d), key=r.key, timestamp_ms=r.timestamp_ms + d if r.timestamp_ms else 0, headers=r.headers) for r in recs]

    def describe(self) -> str:
        pace = "as fast as possible" if math.isinf(self.speed) else f"{self.speed:g}x"
        moved_ = ", times moved to now" if self.shift_to_now else ""
        return f"OFFLINE replay of the recording {self.path.name} ({pace}{moved_}), not live data"
