"""The shelf-sensor simulator: StockNow's catalogue, determinism, resumption, clock, and patterns that make answers mean something."""

from __future__ import annotations

import doctest
import importlib
import itertools
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from affluent.apps.stock.catalogue import PRODUCTS, SHELVES, STORES, THRESHOLDS
from affluent.apps.stock.pipeline import pipelines, simulator_source
from affluent.apps.stock.simulator import CAPACITY, StockSimulator
from affluent.config import Settings, StockSettings
from affluent.sources.iot import SimulatorSource

PARIS = ZoneInfo("Europe/Paris")
MONDAY = int(datetime(2025, 3, 3, tzinfo=PARIS).timestamp() * 1000)  # Monday 3 March 2025, 00:00 Paris
DAY_MS = 86_400_000


def week(seed: int = 1, *, stores: int = 3, period_s: float = 300, start_ms: int = MONDAY, days: int = 7) -> list[dict[str, Any]]:
    sim = StockSimulator(seed=seed, stores=stores, period_s=period_s)
    sim.reset(start_ms)
    out: list[dict[str, Any]] = []
    for seq in range(int(days * DAY_MS / sim.period_ms)):
        out.extend(sim.tick(seq, start_ms + seq * sim.period_ms))
    return out


def local(r: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(r["timestamp"]).astimezone(PARIS)


@pytest.mark.parametrize(
    "module",
    [
        "affluent.apps.stock.catalogue",
        "affluent.apps.stock.simulator",
        "affluent.apps.stock.readings",
        "affluent.apps.stock.restock",
        "affluent.apps.stock.keyed_state",
        "affluent.apps.stock.mqtt",
        "affluent.analytics.stock",
        "affluent.sources.iot",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def test_catalogue_is_stocknows() -> None:
    assert THRESHOLDS == {
        "ski": 3, "doudoune": 4, "pull": 4, "maillot de bain": 4, "t-shirt": 4,
        "crème solaire": 4, "parapluie": 3, "GTA6": 2, "coca": 4, "papier toilette": 4,
    }  # fmt: skip
    assert set(SHELVES.values()) == {"shelf-1", "shelf-2", "shelf-3", "shelf-4"}
    assert STORES[0].location() == {"store": "paris-12", "lat": 48.85, "lon": 2.34}


def test_readings_keep_stocknows_schema() -> None:
    rows = week(days=1, stores=3)
    assert len(rows) == 3 * 10 * 288
    first = rows[0]
    assert set(first) == {
        "sensor_id", "timestamp", "product_id", "quantity", "threshold", "location", "alert",
        "store_id", "device_id", "reading_id", "seq",
    }  # fmt: skip
    assert first["timestamp"] == "2025-03-02T23:00:00.000Z"  # Monday 00:00 in Paris, in UTC with a Z
    assert {r["store_id"] for r in rows} == {"paris-12", "lyon-2", "marseille-1"}
    assert len({r["reading_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["threshold"] == THRESHOLDS[r["product_id"]]
        assert r["sensor_id"] == SHELVES[r["product_id"]]
        assert r["alert"] is (r["quantity"] < r["threshold"])
        assert 0 <= r["quantity"] <= CAPACITY[r["product_id"]] <= 29
        assert r["location"]["store"] == r["store_id"]
        assert r["timestamp"].endswith("Z")


def test_same_seed_same_readings_other_seed_other_readings() -> None:
    a, b, c = week(7, days=2), week(7, days=2), week(8, days=2)
    assert a == b
    assert [r["quantity"] for r in a] != [r["quantity"] for r in c]


def test_snapshot_restore_goes_on_as_an_uninterrupted_run() -> None:
    whole = week(3, days=2)
    sim = StockSimulator(seed=3, stores=3, period_s=300)
    sim.reset(MONDAY)
    half = 288
    part = [r for seq in range(half) for r in sim.tick(seq, MONDAY + seq * sim.period_ms)]
    snap = sim.snapshot()
    again = StockSimulator(seed=3, stores=3, period_s=300)
    again.restore(snap)
    rest = [r for seq in range(half, 2 * half) for r in again.tick(seq, MONDAY + seq * again.period_ms)]
    assert part + rest == whole


def test_sales_follow_opening_hours_and_refills_come_at_13_and_20_30_except_sunday() -> None:
    rows = week(5, stores=3)
    series: dict[tuple[str, str], list[tuple[datetime, int]]] = defaultdict(list)
    for r in rows:
        series[(r["store_id"], r["product_id"])].append((local(r), r["quantity"]))
    rises: Counter[tuple[int, int, int]] = Counter()
    for points in series.values():
        for (_, q0), (t1, q1) in itertools.pairwise(points):
            if q1 < q0:  # a sale: only while the store is open
                assert 9 <= t1.hour <= 19 or (t1.hour == 20 and t1.minute == 0), t1
                if t1.weekday() == 6:
                    assert t1.hour <= 13
            elif q1 > q0:  # a refill
                rises[(t1.weekday(), t1.hour, t1.minute)] += 1
    assert rises
    assert {(h, m) for (_, h, m) in rises} <= {(13, 0), (20, 30)}
    assert all(day != 6 for (day, _, _) in rises)


def test_more_alerts_per_day_on_weekends_and_in_the_evening() -> None:
    rows = week(11, stores=3)
    alerts = [local(r) for r in rows if r["alert"]]
    weekend = sum(1 for t in alerts if t.weekday() >= 5)
    weekday = len(alerts) - weekend
    assert weekend / 2 > weekday / 5
    top_hours = [h for h, _ in Counter(t.hour for t in alerts).most_common(3)]
    assert set(top_hours) <= {17, 18, 19, 20}
    assert 0.02 < len(alerts) / len(rows) < 0.25


def test_seasonal_products_sell_in_their_season() -> None:
    def alerts_by_product(month: int) -> Counter[str]:
        start = int(datetime(2025, month, 6, tzinfo=PARIS).timestamp() * 1000)
        return Counter(r["product_id"] for r in week(2, start_ms=start, days=7) if r["alert"])

    january, july = alerts_by_product(1), alerts_by_product(7)
    assert january["ski"] + january["doudoune"] > 5 * (july["ski"] + july["doudoune"] + 1)
    assert july["maillot de bain"] + july["crème solaire"] > 5 * (january["maillot de bain"] + january["crème solaire"] + 1)


def test_stores_differ_grenoble_sells_skis() -> None:
    start = int(datetime(2025, 1, 6, tzinfo=PARIS).timestamp() * 1000)
    sold: Counter[str] = Counter()
    rows = week(4, stores=5, start_ms=start, days=7)
    prev: dict[str, int] = {}
    for r in rows:
        if r["product_id"] != "ski":
            continue
        q0 = prev.get(r["store_id"])
        if q0 is not None and r["quantity"] < q0:
            sold[r["store_id"]] += q0 - r["quantity"]
        prev[r["store_id"]] = r["quantity"]
    assert sold["grenoble-1"] > sold["marseille-1"]


# -- the source: clocks -------------------------------------------------------------------------------
class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_real_pace_emits_one_tick_per_period_at_wall_time() -> None:
    clock = FakeClock(MONDAY + 10 * 3_600_000 + 1_234)
    src = SimulatorSource(StockSimulator(seed=1, stores=3, period_s=2), clock=clock)
    src.open(None)
    first = src.poll()
    assert len(first.records) == 30
    assert {r.timestamp_ms for r in first.records} == {MONDAY + 10 * 3_600_000}
    assert 0.7 <= first.wait_s <= 0.8  # until the next 2 s tick
    assert src.poll().records == []
    clock.ms += 800
    second = src.poll()
    assert {r.timestamp_ms for r in second.records} == {MONDAY + 10 * 3_600_000 + 2_000}
    clock.ms += 60_000  # a slow poll: the 30 ticks due come at once
    assert len(src.poll().records) == 30 * 30


def test_default_settings_run_the_simulator_at_real_pace(tmp_path: Any) -> None:
    s = Settings(lake={"url": f"parquet://{tmp_path}/lake"})
    made = pipelines(s, offline=True)
    assert [p.name for p in made] == ["stock", "stock-lake"]
    (binding,) = made[0].sources
    src = binding.source
    assert isinstance(src, SimulatorSource) and src.offline and src.speed == 1.0 and src.model.period_ms == 2000
    src.open(None)
    polled = src.poll()
    assert len(polled.records) == 30
    assert 0 < polled.wait_s <= 2.0
    assert abs(polled.records[0].timestamp_ms - datetime.now(UTC).timestamp() * 1000) < 2_500


def test_as_fast_as_possible_generates_a_period_then_is_done() -> None:
    cfg = StockSettings(seed=9, stores=2, period_s=60, speed=math.inf, start="2025-03-03", end="2025-03-03T12:00:00")
    src = simulator_source(cfg)
    src.max_records_per_poll = 5_000
    src.open(None)
    got = []
    polls = 0
    while True:
        p = src.poll()
        polls += 1
        got.extend(p.records)
        if p.done:
            break
        assert p.wait_s == 0.0
    assert len(got) == 12 * 60 * 20  # 12 h of 1-minute ticks, 20 shelves
    assert polls == 3  # 250 ticks of 20 readings per poll, the last poll says done
    assert got[0].timestamp_ms == MONDAY and got[-1].timestamp_ms == MONDAY + 12 * 3_600_000 - 60_000


def test_accelerated_clock_runs_speed_times_faster_and_never_past_now() -> None:
    clock = FakeClock(MONDAY + 30 * DAY_MS)
    src = SimulatorSource(StockSimulator(seed=1, stores=1, period_s=60), speed=600, start_ms=MONDAY, clock=clock)
    src.open(None)
    assert len(src.poll().records) == 10  # tick at MONDAY
    clock.ms += 1_000  # one wall second = 10 simulated minutes
    assert len(src.poll().records) == 10 * 10
    live = SimulatorSource(StockSimulator(seed=1, stores=1, period_s=60), speed=math.inf, start_ms=clock.ms - 120_000, clock=clock)
    live.open(None)
    assert len(live.poll().records) == 3 * 10  # up to now, not beyond
    assert live.poll().records == []


def test_source_resumes_from_its_position_without_repeating_or_skipping() -> None:
    cfg = StockSettings(seed=5, stores=1, period_s=600, speed=math.inf, start="2025-03-03", end="2025-03-05")
    whole = simulator_source(cfg)
    whole.open(None)
    expected: list[Any] = []
    while True:
        p = whole.poll()
        expected.extend(r.value for r in p.records)
        if p.done:
            break
    first = simulator_source(cfg)
    first.max_records_per_poll = 100
    first.open(None)
    got = [r.value for r in first.poll().records]
    position = first.poll()
    got.extend(r.value for r in position.records)
    second = simulator_source(cfg)
    second.open(position.position)
    while True:
        p = second.poll()
        got.extend(r.value for r in p.records)
        if p.done:
            break
    assert got == expected
    assert len(expected) == 3 * 144 * 10  # "--end 2025-03-05" includes that day


def test_a_position_from_other_settings_is_not_resumed_but_sequence_numbers_go_on() -> None:
    a = simulator_source(StockSettings(seed=5, stores=1, period_s=600, speed=math.inf, start="2025-03-03", end="2025-03-04"))
    a.open(None)
    pa = a.poll()
    b = simulator_source(StockSettings(seed=6, stores=2, period_s=600, speed=math.inf, start="2025-03-03", end="2025-03-04"))
    b.open(pa.position)
    pb = b.poll()
    assert pb.records[0].timestamp_ms == MONDAY
    assert pb.records[0].value["seq"] == pa.records[-1].value["seq"] + 1
    assert len(pb.records) == 2 * 144 * 20  # 3 and 4 March


def test_many_stores_for_load_tests() -> None:
    sim = StockSimulator(seed=1, stores=200, period_s=2)
    sim.reset(MONDAY)
    rows = sim.records(0, MONDAY + 18 * 3_600_000)
    assert len(rows) == 2_000
    assert len({r.value["store_id"] for r in rows}) == 200
    assert all(r.key == f"{r.value['store_id']}/{r.value['product_id']}" for r in rows)
    assert set(PRODUCTS) == {r.value["product_id"] for r in rows}


def test_a_long_period_simulated_at_once_runs_in_a_process_of_its_own() -> None:
    """3 stores x 10 products every 2 s: a day is 1,296,000 readings, CPU work for another core; an hour
    (64,800), a real-pace run, or one at a finite speed stay in a thread."""
    model = StockSimulator(seed=1, stores=3, period_s=2)
    day = DAY_MS
    assert SimulatorSource(model, speed=math.inf, start_ms=MONDAY, end_ms=MONDAY + day).own_process
    assert not SimulatorSource(model, speed=math.inf, start_ms=MONDAY, end_ms=MONDAY + day // 24).own_process
    assert SimulatorSource(model, speed=math.inf, start_ms=MONDAY).own_process  # a backfill up to now, of unknown length
    assert not SimulatorSource(model, speed=1.0).own_process
    assert not SimulatorSource(model, speed=600, start_ms=MONDAY, end_ms=MONDAY + day).own_process


@pytest.mark.parametrize("stores", [0, -1])
def test_no_store_is_a_config_error_naming_the_setting(stores: int) -> None:
    from affluent.core.errors import ConfigError

    with pytest.raises(ConfigError, match=f"stock.stores must be at least 1, not {stores}"):
        simulator_source(StockSettings(seed=1, stores=stores))
