"""The shelf-sensor simulator: StockNow's ten products, with sales that follow the clock and the calendar.

Every tick (period, 2 s by default) each shelf sensor of each store reports the quantity of its
product, as StockNow's simulator did (`alert = quantity < threshold`). Unlike StockNow's uniform
random quantities, stock here is a level that sales lower and staff refill, so that the batch
questions have real answers:

- daily cycle: stores open 09:00-20:00 local time (Sunday 09:00-13:00); sales peak at noon and 18:00;
- weekly cycle: Saturday sells most; shelves are refilled at 13:00 and 20:30, Monday to Saturday only,
  so what Sunday morning sells stays sold until Monday afternoon;
- seasons: skis and down jackets sell in winter, swimsuits and sun cream in summer, and so on;
- stores differ in size and taste (skis in Grenoble, umbrellas in Brest), and rain sells umbrellas;
- now and then the back room is short and a refill is partial.

Randomness is drawn from generators seeded by (seed, tick sequence number) or (seed, day), never
from a generator whose state would have to be saved: a run resumed from a snapshot goes on exactly
as an uninterrupted run would.

>>> sim = StockSimulator(seed=7, stores=2, period_s=60)
>>> sim.reset(1_741_000_000_000)
>>> first = sim.tick(0, 1_741_000_000_000)
>>> len(first), first[0]["product_id"], first[0]["location"]["store"], first[0]["timestamp"]
(20, 'ski', 'paris-12', '2025-03-03T11:06:40.000Z')
>>> all(r["alert"] == (r["quantity"] < r["threshold"]) for r in first)
True
"""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from affluent.apps.stock.catalogue import (
    PRODUCTS,
    SEASON_MONTHS,
    SEASONAL_PRODUCTS,
    SHELVES,
    THRESHOLDS,
    season_of_month,
    slug,
)
from affluent.apps.stock.catalogue import stores as pick_stores
from affluent.core.records import Record

#: shelf capacity: what a refill fills up to
CAPACITY: dict[str, int] = {p: min(7 * t, 28) for p, t in THRESHOLDS.items()}
#: units sold per day by an average store, in season, on an average day
BASE_DAILY_SALES: dict[str, float] = {
    "ski": 20.0,
    "doudoune": 30.0,
    "pull": 27.0,
    "maillot de bain": 30.0,
    "t-shirt": 34.0,
    "crème solaire": 30.0,
    "parapluie": 16.0,
    "GTA6": 13.0,
    "coca": 36.0,
    "papier toilette": 30.0,
}
#: share of a day's sales made in each opening hour (local time); the store is closed at other hours
HOUR_SHARE: dict[int, float] = {9: 0.06, 10: 0.08, 11: 0.10, 12: 0.12, 13: 0.08, 14: 0.07, 15: 0.07, 16: 0.08, 17: 0.11, 18: 0.13, 19: 0.10}
SUNDAY_HOURS = frozenset({9, 10, 11, 12})
#: Monday..Sunday
DAY_FACTOR: tuple[float, ...] = (0.8, 0.85, 1.0, 0.9, 1.15, 1.6, 1.3)
#: refills, local (hour, minute), Monday to Saturday
REFILL_TIMES: tuple[tuple[int, int], ...] = ((13, 0), (20, 30))
PARTIAL_REFILL_P = 0.12
RAIN_P: dict[str, float] = {"brest-1": 0.45, "lille-1": 0.4}
DEFAULT_RAIN_P = 0.25

_OPPOSITE = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}
_NON_SEASONAL = {"coca": {"summer": 1.4, "winter": 0.8}}


def season_factor(product: str, month: int) -> float:
    """How much better (or worse) a product sells in `month` than on average."""
    season = season_of_month(month)
    if product in SEASONAL_PRODUCTS[season]:
        return 1.8
    if product in SEASONAL_PRODUCTS[_OPPOSITE[season]]:
        return 0.15
    if any(product in SEASONAL_PRODUCTS[s] for s in SEASON_MONTHS):
        return 0.6
    return _NON_SEASONAL.get(product, {}).get(season, 1.0)


def _poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw; a single uniform draw when the rate is small, as it is for a 2 s tick."""
    if lam <= 0.0:
        return 0
    if lam > 30.0:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit = math.exp(-lam)
    rand = rng.random
    k = 0
    p = rand()
    while p > limit:
        k += 1
        p *= rand()
    return k


def iso_utc(ts_ms: int) -> str:
    """'2025-03-03T11:06:40.000Z': ISO-8601 UTC with milliseconds."""
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts_ms // 1000))}.{ts_ms % 1000:03d}Z"


class StockSimulator:
    """Stock levels of every (store, product) shelf, advanced tick by tick.

    `reset(start_ms)` sets the first levels; `tick(seq, ts_ms)` applies the sales and refills up to
    `ts_ms` and returns one reading per shelf product; `snapshot()`/`restore()` save and reload the
    levels (JSON) so that a source can resume. A reading's id is its device and its time, unique even
    across separate runs; `seq` numbers the ticks, so that a consumer can see gaps.
    """

    def __init__(self, *, seed: int, stores: int = 3, period_s: float = 2.0, tz: str = "Europe/Paris") -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, not {period_s}")
        self.seed = seed
        self.stores = _stores = pick_stores(stores)
        self.period_ms = max(1, round(period_s * 1000))
        self.tz = ZoneInfo(tz)
        self.readings_per_tick = len(_stores) * len(PRODUCTS)
        self.levels: list[list[int]] = []
        self.refill_slot = -1
        self._day = -1
        self._daily: list[list[float]] = []
        # per (store, product): the constant parts of a reading
        self._static = [
            [(p, SHELVES[p], THRESHOLDS[p], s.location(), s.store_id, f"{s.store_id}-{slug(p)}", f"{s.store_id}/{p}") for p in PRODUCTS] for s in _stores
        ]

    @property
    def period_s(self) -> float:
        return self.period_ms / 1000

    # -- state ---------------------------------------------------------------------------------------
    def reset(self, start_ms: int) -> None:
        rng = random.Random(f"{self.seed}:levels")
        self.levels = [[rng.randint(THRESHOLDS[p] + 1, CAPACITY[p]) for p in PRODUCTS] for _ in self.stores]
        self.refill_slot = self._slot(self._local(start_ms))
        self._day = -1

    def snapshot(self) -> dict[str, Any]:
        return {"levels": [list(x) for x in self.levels], "refill_slot": self.refill_slot}

    def restore(self, snap: dict[str, Any]) -> None:
        levels = snap["levels"]
        if len(levels) != len(self.stores) or any(len(x) != len(PRODUCTS) for x in levels):
            raise ValueError("the snapshot is of a different set of stores")
        self.levels = [[int(q) for q in x] for x in levels]
        self.refill_slot = int(snap["refill_slot"])
        self._day = -1

    # -- time ----------------------------------------------------------------------------------------
    def _local(self, ts_ms: int) -> datetime:
        return datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(self.tz)

    @staticmethod
    def _slot(local: datetime) -> int:
        """Index of the last refill time at or before `local` (4 per day, Sundays have none due)."""
        passed = 0
        if local.weekday() != 6:
            hm = (local.hour, local.minute)
            passed = sum(1 for t in REFILL_TIMES if t <= hm)
        return local.toordinal() * 4 + passed

    def _daily_rates(self, local: datetime) -> list[list[float]]:
        """Expected units sold per (store, product) over the whole `local` day."""
        day = local.toordinal()
        out = []
        for si, s in enumerate(self.stores):
            rng = random.Random(f"{self.seed}:{day}:{si}")
            rain = rng.random() < RAIN_P.get(s.store_id, DEFAULT_RAIN_P)
            row = []
            for p in PRODUCTS:
                rate = BASE_DAILY_SALES[p] * season_factor(p, local.month) * s.size * s.affinity.get(p, 1.0)
                rate *= DAY_FACTOR[local.weekday()] * (0.7 + 0.6 * rng.random())
                if rain and p == "parapluie":
                    rate *= 3.0
                elif rain and p == "crème solaire":
                    rate *= 0.5
                row.append(rate)
            out.append(row)
        return out

    # -- ticks ---------------------------------------------------------------------------------------
    def tick(self, seq: int, ts_ms: int) -> list[dict[str, Any]]:
        """Advance to `ts_ms` and return this tick's readings (one per store and product)."""
        local = self._local(ts_ms)
        day = local.toordinal()
        if day != self._day:
            self._daily = self._daily_rates(local)
            self._day = day
        rng = random.Random((self.seed << 40) ^ seq)
        rand = rng.random
        slot = self._slot(local)
        refill = slot > self.refill_slot and slot % 4 != 0
        self.refill_slot = max(self.refill_slot, slot)
        open_now = local.hour in HOUR_SHARE and (local.weekday() != 6 or local.hour in SUNDAY_HOURS)
        share = HOUR_SHARE.get(local.hour, 0.0) * self.period_ms / 3_600_000 if open_now else 0.0
        stamp = iso_utc(ts_ms)
        out: list[dict[str, Any]] = []
        for levels, daily, static in zip(self.levels, self._daily, self._static, strict=True):
            for i, (product, shelf, threshold, location, store_id, device_id, _key) in enumerate(static):
                q = levels[i]
                if refill:
                    cap = CAPACITY[product]
                    q = max(q, round(cap * (0.3 + 0.5 * rand()))) if rand() < PARTIAL_REFILL_P else cap
                if share:
                    q = max(0, q - _poisson(rng, daily[i] * share))
                levels[i] = q
                out.append(
                    {
                        "sensor_id": shelf,
                        "timestamp": stamp,
                        "product_id": product,
                        "quantity": q,
                        "threshold": threshold,
                        "location": location,
                        "alert": q < threshold,
                        "store_id": store_id,
                        "device_id": device_id,
                        "reading_id": f"{device_id}-{ts_ms}",
                        "seq": seq,
                    }
                )
        return out

    def records(self, seq: int, ts_ms: int) -> list[Record]:
        """This tick's readings as records keyed by 'store/product', with event time = the reading's time."""
        values = self.tick(seq, ts_ms)
        keys = [k for row in self._static for *_, k in row]
        return [Record(value=v, key=k, timestamp_ms=ts_ms) for v, k in zip(values, keys, strict=True)]
