"""Issue 3's acceptance test: a simulated week through the real log, lake and DuckDB, checked against plain Python.

The week runs Monday 24 to Sunday 30 March 2025, so it holds the switch to summer time (Sunday
02:00 -> 03:00 in Paris): local days and hours must be right for the answers to match.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from affluent.analytics.base import DuckDBEngine, parse_when
from affluent.analytics.stock import analyze_stock
from affluent.apps.stock.catalogue import SEASONAL_PRODUCTS, season_of_month
from affluent.apps.stock.pipeline import ALERTS, READINGS, RESTOCK, build_pipelines, run_to_end, simulator_source
from affluent.apps.stock.simulator import StockSimulator
from affluent.config import StockSettings
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import read_topic

TZ = "Europe/Paris"
PARIS = ZoneInfo(TZ)
SEED, STORES, PERIOD_S = 2025, 3, 300
START, END = "2025-03-24", "2025-03-30"  # Monday to Sunday, both included


# -- the reference: plain Python over readings generated again, independently of the pipeline ----------
def simulate_directly() -> list[dict[str, Any]]:
    start, end = parse_when(START, PARIS), parse_when(END, PARIS, end=True)
    sim = StockSimulator(seed=SEED, stores=STORES, period_s=PERIOD_S, tz=TZ)
    sim.reset(start)
    out: list[dict[str, Any]] = []
    seq, t = 0, start
    while t < end:
        out.extend(sim.tick(seq, t))
        seq, t = seq + 1, t + sim.period_ms
    return out


def local_time(r: dict[str, Any]) -> datetime:
    return datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).astimezone(PARIS)


def reference(readings: list[dict[str, Any]]) -> dict[str, Any]:
    days: dict[str, set[Any]] = {"weekday": set(), "weekend": set()}
    alerts_by_part: Counter[str] = Counter()
    readings_by_part: Counter[str] = Counter()
    by_product: Counter[str] = Counter()
    by_hour: Counter[int] = Counter()
    stock: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    trend: dict[str, list[Any]] = defaultdict(lambda: [0, 0, set()])
    for r in readings:
        t = local_time(r)
        part = "weekend" if t.weekday() >= 5 else "weekday"
        days[part].add(t.date())
        readings_by_part[part] += 1
        if r["alert"]:
            alerts_by_part[part] += 1
            by_product[r["product_id"]] += 1
            by_hour[t.hour] += 1
        s = stock[r["product_id"]]
        s[0] += r["quantity"]
        s[1] += r["threshold"]
        s[2] += 1
        h = trend[t.strftime("%Y-%m-%d %H:00%z")]  # local hours with their UTC offset
        h[0] += r["quantity"]
        h[1] += 1
        h[2].add(r["product_id"])
    parts = {
        p: {"days": len(days[p]), "alerts": alerts_by_part[p], "readings": readings_by_part[p], "alerts_per_day": alerts_by_part[p] / len(days[p])}
        for p in ("weekday", "weekend")
    }
    return {
        "weekend_vs_weekday": {
            **parts,
            "more_alerts_per_day_on": "weekend" if parts["weekend"]["alerts_per_day"] > parts["weekday"]["alerts_per_day"] else "weekday",
        },
        "top_products": [{"product_id": p, "alerts": n} for p, n in sorted(by_product.items(), key=lambda x: (-x[1], x[0]))[:5]],
        "top_hours": [{"hour": h, "alerts": n} for h, n in sorted(by_hour.items(), key=lambda x: (-x[1], x[0]))[:5]],
        "stock_per_product": [{"product_id": p, "mean_quantity": q / n, "mean_threshold": th / n, "readings": n} for p, (q, th, n) in sorted(stock.items())],
        "hourly_trend": [{"hour": k, "mean_quantity": q / n, "products": len(ps), "readings": n} for k, (q, n, ps) in sorted(trend.items())],
    }


def reference_restock(readings: list[dict[str, Any]]) -> list[tuple[str, str, str, int | None, bool | None]]:
    """(status, store, product, missing quantity, high priority) in the order the handler must publish them."""
    open_: set[tuple[str, str]] = set()
    out: list[tuple[str, str, str, int | None, bool | None]] = []
    for r in readings:
        shelf = (r["store_id"], r["product_id"])
        if r["quantity"] < r["threshold"] and shelf not in open_:
            open_.add(shelf)
            season = season_of_month(local_time(r).month)
            out.append(("open", *shelf, 3 * r["threshold"] - r["quantity"], r["product_id"] in SEASONAL_PRODUCTS[season]))
        elif r["quantity"] >= r["threshold"] and shelf in open_:
            open_.remove(shelf)
            out.append(("closed", *shelf, None, None))
    return out


def assert_same_answers(got: dict[str, Any], want: dict[str, Any]) -> None:
    gw, ww = got["weekend_vs_weekday"], want["weekend_vs_weekday"]
    assert gw["more_alerts_per_day_on"] == ww["more_alerts_per_day_on"]
    for part in ("weekday", "weekend"):
        assert gw[part] == pytest.approx(ww[part])
    assert got["top_products"] == want["top_products"]
    assert got["top_hours"] == want["top_hours"]
    assert got["stock_per_product"] == [pytest.approx(x) for x in want["stock_per_product"]]
    assert len(got["hourly_trend"]) == len(want["hourly_trend"])
    assert got["hourly_trend"] == [pytest.approx(x) for x in want["hourly_trend"]]


# -- the run ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def week(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("stock-week")
    cfg = StockSettings(seed=SEED, stores=STORES, period_s=PERIOD_S, speed=math.inf, start=START, end=END, timezone=TZ)
    log = SQLiteLog(root / "affluent.db")
    pipes = build_pipelines(simulator_source(cfg), lake_root=root / "lake", tz=PARIS, lake_commit_ms=500)
    counts = run_to_end(pipes, log, timeout_s=120)
    topics = {t: [r.value for r in read_topic(log, t)] for t in (READINGS, ALERTS, RESTOCK, "stock.dlq")}
    log.close()
    return {"root": root, "counts": counts, "topics": topics, "direct": simulate_directly()}


def test_the_log_holds_the_simulated_week(week: dict[str, Any]) -> None:
    direct = week["direct"]
    assert len(direct) == (7 * 24 - 1) * 12 * 30  # 7 days of 5-minute ticks, 30 shelves, minus the hour lost to summer time
    assert week["topics"][READINGS] == direct
    assert week["topics"][ALERTS] == [r for r in direct if r["alert"]]
    assert week["topics"]["stock.dlq"] == []


def test_the_five_answers_equal_plain_python(week: dict[str, Any]) -> None:
    engine = DuckDBEngine(week["root"] / "lake")
    try:
        got = analyze_stock(engine.run, tz=TZ)
    finally:
        engine.close()
    want = reference(week["direct"])
    assert got["readings"] == len(week["direct"]) and got["stores"] == STORES
    assert got["alerts"] == sum(r["alert"] for r in week["direct"])
    assert_same_answers(got, want)
    # the answers say something: weekends have more alerts per day, spring sells t-shirts, evenings empty shelves
    assert got["weekend_vs_weekday"]["weekday"]["days"] == 5 and got["weekend_vs_weekday"]["weekend"]["days"] == 2
    assert got["weekend_vs_weekday"]["more_alerts_per_day_on"] == "weekend"
    assert got["top_products"][0]["product_id"] == "t-shirt"
    assert got["top_hours"][0]["hour"] in (17, 18, 19, 20)
    assert len(got["hourly_trend"]) == 7 * 24 - 1
    assert not [h for h in got["hourly_trend"] if h["hour"].startswith("2025-03-30 02:00")]  # that hour does not exist in Paris
    assert [h["hour"] for h in got["hourly_trend"][:2]] == ["2025-03-24 00:00+0100", "2025-03-24 01:00+0100"]


def test_since_until_pick_the_time_range(week: dict[str, Any]) -> None:
    since, until = parse_when("2025-03-28T12:00:00", PARIS), parse_when("2025-03-29", PARIS, end=True)
    engine = DuckDBEngine(week["root"] / "lake")
    try:
        got = analyze_stock(engine.run, tz=TZ, since_ms=since, until_ms=until)
    finally:
        engine.close()
    part = [r for r in week["direct"] if since <= parse_when(r["timestamp"], PARIS) < until]
    assert got["readings"] == len(part) == 36 * 12 * 30
    assert_same_answers(got, reference(part))
    assert got["weekend_vs_weekday"]["weekday"]["days"] == 1 and got["weekend_vs_weekday"]["weekend"]["days"] == 1


def test_restock_requests_follow_the_readings(week: dict[str, Any]) -> None:
    published = week["topics"][RESTOCK]
    got = [(o["status"], o["store_id"], o["product_id"], o.get("missing_quantity"), o.get("high_priority")) for o in published]
    assert got == reference_restock(week["direct"])
    opened = [o for o in published if o["status"] == "open"]
    assert opened and all(o["season"] == "spring" for o in opened)
    assert {o["product_id"] for o in opened if o["high_priority"]} == {"t-shirt"}
    # every closed record closes the request opened just before it on the same shelf
    last_open: dict[tuple[str, str], str] = {}
    for o in published:
        shelf = (o["store_id"], o["product_id"])
        if o["status"] == "open":
            assert shelf not in last_open
            last_open[shelf] = o["request_id"]
        else:
            assert last_open.pop(shelf) == o["request_id"]


def cli(*args: str, cwd: Path, lake: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFFLUENT__LAKE__URL": f"parquet://{lake}", "COLUMNS": "120", "NO_COLOR": "1"}
    code = "from affluent.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_affluent_analyze_stock_prints_tables_and_json(week: dict[str, Any], tmp_path: Path) -> None:
    lake = week["root"] / "lake"
    out = cli("analyze", "stock", "--json", "--since", START, "--until", END, cwd=tmp_path, lake=lake)
    assert out.returncode == 0, out.stderr
    got = orjson.loads(out.stdout)
    assert got["since"] == "2025-03-24T00:00:00+01:00" and got["until"] == "2025-03-31T00:00:00+02:00"
    assert_same_answers(got, reference(week["direct"]))
    text = cli("analyze", "stock", cwd=tmp_path, lake=lake)
    assert text.returncode == 0, text.stderr
    for title in ("1. Alerts on weekends vs weekdays", "2. Top products", "3. Top hours", "4. Average stock", "5. Hourly stock trend"):
        assert title in text.stdout
    assert "More alerts per day on weekends." in text.stdout
    assert "t-shirt" in text.stdout


def test_analysis_of_an_empty_or_missing_lake_says_so(tmp_path: Path) -> None:
    out = cli("analyze", "stock", cwd=tmp_path, lake=tmp_path / "no-lake")
    assert out.returncode == 1
    assert "No stock readings in the lake yet" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
