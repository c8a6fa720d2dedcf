"""The crypto questions over a real Parquet lake, checked against a plain-Python computation of the same numbers."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from affluent.analytics.base import DuckDBEngine, EmptyLakeError
from affluent.analytics.crypto import DATASET, analyze_crypto
from affluent.apps.crypto.tables import LAKE_SCHEMA
from affluent.core.records import Record
from affluent.sinks.lake import ParquetLakeSink

DAY = 86_400_000
HOUR = 3_600_000
T0 = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000)
#: coin -> (symbol, start price, market cap per unit of price, daily drift)
COINS = {
    "bitcoin": ("btc", 84_000.0, 19.8e6, 0.01),
    "ethereum": ("eth", 2_200.0, 120e6, -0.03),
    "solana": ("sol", 140.0, 500e6, 0.0),
    "dogecoin": ("doge", 0.2, 1e6, 0.02),
}
#: hours of each day with a snapshot: 23 then 0 make hourly returns across midnight; 5-6-7 consecutive hours
HOURS = (0, 5, 6, 7, 13, 23)
DAYS = 6


def snapshot(coin: str, ms: int, price: float | None, snapshot_ms: int | None = None) -> dict[str, Any]:
    symbol, _, supply, _ = COINS[coin]
    return {
        "coin_id": coin,
        "symbol": symbol,
        "name": coin.title(),
        "vs_currency": "usd",
        "rank": 1,
        "price": price,
        "market_cap": None if price is None else price * supply,
        "change_24h_pct": 0.0,
        "last_updated_ms": ms,
        "snapshot_ms": snapshot_ms if snapshot_ms is not None else ms + 30_000,
    }


def make_rows() -> list[dict[str, Any]]:
    rng = random.Random(42)
    rows = []
    for coin, (_, start, _, drift) in COINS.items():
        price = start
        for day in range(DAYS):
            if coin == "ethereum" and day == 3:
                continue  # a day without data: day 4 has no return
            for hour in HOURS:
                price *= math.exp(drift / len(HOURS) + rng.gauss(0, 0.01))
                ms = T0 + day * DAY + hour * HOUR + rng.randrange(0, 50) * 60_000
                rows.append(snapshot(coin, ms, price))
    # what the analysis must skip or settle: no price, a zero price, two updates in one hour (the later wins)
    rows.append(snapshot("bitcoin", T0 + 2 * DAY + 23 * HOUR + 59 * 60_000 + 59_000, None))
    rows.append(snapshot("solana", T0 + 4 * DAY + 23 * HOUR + 59 * 60_000 + 59_000, 0.0))
    rows.append(snapshot("dogecoin", T0 + 1 * DAY + 13 * HOUR + 55 * 60_000, 0.25))
    return rows


def write_lake(root: Path, flushes: Iterable[list[dict[str, Any]]]) -> None:
    """Rows through the real lake sink (date=/hour= of last_updated, UTC), one commit per flush."""
    sink = ParquetLakeSink(root, DATASET, schema=LAKE_SCHEMA, tz="UTC")
    sink.open()
    offset = 0
    for rows in flushes:
        records = []
        for row in rows:
            records.append(
                Record(value={f.name: row.get(f.name) for f in LAKE_SCHEMA}, timestamp_ms=row["last_updated_ms"], topic="in", partition=0, offset=offset)
            )
            offset += 1
        sink.write(records)
        sink.flush()
    sink.close()


# -- the same answers, computed plainly ------------------------------------------------------------------------
def closes(rows: list[dict[str, Any]], bucket_ms: int) -> dict[str, dict[int, float]]:
    """coin -> bucket start -> the price of the coin's last update in that bucket."""
    last: dict[tuple[str, int], tuple[int, float]] = {}
    for r in rows:
        key = (r["coin_id"], r["last_updated_ms"] // bucket_ms * bucket_ms)
        if key not in last or r["last_updated_ms"] > last[key][0]:
            last[key] = (r["last_updated_ms"], r["price"])
    out: dict[str, dict[int, float]] = {}
    for (coin, start), (_, price) in last.items():
        out.setdefault(coin, {})[start] = price
    return out


def daily_returns(rows: list[dict[str, Any]], first_day: int = 0) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for coin, by_day in closes(rows, DAY).items():
        for day, close in by_day.items():
            if day - DAY in by_day and day >= first_day:
                out.setdefault(coin, {})[day] = 100 * (close / by_day[day - DAY] - 1)
    return out


def hourly_log_returns(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for coin, by_hour in closes(rows, HOUR).items():
        out[coin] = [math.log(c / by_hour[h - HOUR]) for h, c in sorted(by_hour.items()) if h - HOUR in by_hour]
    return out


def changes(rows: list[dict[str, Any]]) -> dict[str, float]:
    by_coin: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_coin.setdefault(r["coin_id"], []).append(r)
    out = {}
    for coin, rs in by_coin.items():
        rs.sort(key=lambda r: r["last_updated_ms"])
        out[coin] = 100 * (rs[-1]["price"] / rs[0]["price"] - 1)
    return out


def priced(rows: list[dict[str, Any]], since: int = 0, until: int = 2**62) -> list[dict[str, Any]]:
    return [r for r in rows if r["price"] is not None and r["price"] > 0 and since <= r["last_updated_ms"] < until]


def analyze(root: Path, **kw: Any) -> dict[str, Any]:
    engine = DuckDBEngine(root)
    try:
        return analyze_crypto(engine.run, **kw)
    finally:
        engine.close()


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = make_rows()
    random.Random(1).shuffle(rows)  # arrival order is not time order
    write_lake(tmp_path, [rows[i : i + 25] for i in range(0, len(rows), 25)])
    return tmp_path, rows


def test_every_answer_matches_a_plain_computation(lake: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = lake
    got = analyze(root, top=3)
    good = priced(rows)

    assert (got["rows"], got["coins"]) == (len(rows), 4)
    assert (got["first_ms"], got["last_ms"]) == (min(r["last_updated_ms"] for r in rows), max(r["last_updated_ms"] for r in rows))

    # daily returns, signed, with no return for ethereum's day after its missing day
    want = daily_returns(good)
    got_returns = {c["coin_id"]: {r["day"]: r["return_pct"] for r in c["returns"]} for c in got["daily_returns"]}
    day = {d: datetime.fromtimestamp(d / 1000, UTC).strftime("%Y-%m-%d") for d in range(T0, T0 + DAYS * DAY, DAY)}
    assert got_returns == {coin: {day[d]: pytest.approx(v, rel=1e-12) for d, v in by_day.items()} for coin, by_day in want.items()}
    assert sorted(got_returns["ethereum"]) == ["2025-03-02", "2025-03-03", "2025-03-06"]
    assert len(got_returns["bitcoin"]) == DAYS - 1
    assert any(v < 0 for v in got_returns["ethereum"].values()) and any(v > 0 for c in got_returns.values() for v in c.values())

    # volatility: sample standard deviations
    hourly = hourly_log_returns(good)
    vol = {v["coin_id"]: v for v in got["volatility"]}
    for coin in COINS:
        assert vol[coin]["days"] == len(want[coin])
        assert vol[coin]["daily_std_pct"] == pytest.approx(statistics.stdev(want[coin].values()), rel=1e-9)
        assert vol[coin]["hours"] == len(hourly[coin])
        assert vol[coin]["hourly_log_std"] == pytest.approx(statistics.stdev(hourly[coin]), rel=1e-9)
    assert vol["bitcoin"]["hours"] == DAYS * 3 - 1  # 5-6, 6-7, 23-0 each day, but no 23-0 after the last day

    # movers: first vs last price, signed, up only up and down only down
    moves = changes(good)
    up = sorted(((c, m) for c, m in moves.items() if m > 0), key=lambda x: -x[1])[:5]
    down = sorted(((c, m) for c, m in moves.items() if m < 0), key=lambda x: x[1])[:5]
    assert up and down
    assert [(m["coin_id"], m["change_pct"]) for m in got["movers"]["up"]] == [(c, pytest.approx(m, rel=1e-12)) for c, m in up]
    assert [(m["coin_id"], m["change_pct"]) for m in got["movers"]["down"]] == [(c, pytest.approx(m, rel=1e-12)) for c, m in down]
    assert all(m["change_pct"] < 0 for m in got["movers"]["down"])

    # correlation of the 3 largest by latest market cap (dogecoin is the smallest), Pearson over common days
    latest = {r["coin_id"]: r for r in sorted(good, key=lambda r: r["last_updated_ms"])}
    top = sorted(latest, key=lambda c: -latest[c]["market_cap"])[:3]
    assert "dogecoin" not in top
    assert [c["coin_id"] for c in got["correlation"]["coins"]] == top
    pairs = []
    for a, b in [("bitcoin", "ethereum"), ("bitcoin", "solana"), ("ethereum", "solana")]:
        days = sorted(set(want[a]) & set(want[b]))
        pairs.append(
            {"a": a, "b": b, "corr": pytest.approx(statistics.correlation([want[a][d] for d in days], [want[b][d] for d in days]), abs=1e-9), "days": len(days)}
        )
    assert got["correlation"]["pairs"] == pairs
    assert pairs[0]["days"] == 3  # ethereum has 3 returns


def test_a_period_compares_its_first_day_with_the_day_before(lake: tuple[Path, list[dict[str, Any]]]) -> None:
    root, rows = lake
    since, until = T0 + 2 * DAY + 6 * HOUR, T0 + 5 * DAY
    got = analyze(root, since_ms=since, until_ms=until)
    want = daily_returns(priced(rows, T0 + DAY, until), first_day=T0 + 2 * DAY)
    got_returns = {c["coin_id"]: [r["return_pct"] for r in c["returns"]] for c in got["daily_returns"]}
    assert got_returns == {coin: [pytest.approx(v, rel=1e-12) for _, v in sorted(by_day.items())] for coin, by_day in want.items()}
    assert len(got_returns["bitcoin"]) == 3  # 03-03 (against 03-02), 03-04, 03-05
    in_period = priced(rows, since, until)
    assert got["rows"] == sum(1 for r in rows if since <= r["last_updated_ms"] < until)
    moves = changes(in_period)
    assert {m["coin_id"]: m["change_pct"] for m in got["movers"]["up"] + got["movers"]["down"]} == {
        c: pytest.approx(m, rel=1e-12) for c, m in moves.items() if m != 0
    }
    hourly = hourly_log_returns(in_period)
    assert {v["coin_id"]: v["hours"] for v in got["volatility"]} == {c: len(h) for c, h in hourly.items()}


def test_an_empty_lake_says_so(tmp_path: Path) -> None:
    with pytest.raises(EmptyLakeError, match="crypto_markets"):
        analyze(tmp_path)


def test_the_report_shows_signed_numbers_and_names_as_text(lake: tuple[Path, list[dict[str, Any]]]) -> None:
    from rich.console import Console

    from affluent.apps.crypto.report import render

    root, _ = lake
    got = analyze(root, top=3)
    got["volatility"][0]["name"] = "[bold]Not markup[/]"  # a name from the feed is shown as it is
    console = Console(record=True, width=200)
    render(got, console)
    out = console.export_text()
    assert "[bold]Not markup[/]" in out
    down = got["movers"]["down"][0]
    assert f"{down['change_pct']:+.2f}%" in out and f"{down['change_pct']:+.2f}%".startswith("-")
    pair = got["correlation"]["pairs"][0]
    assert f"{pair['corr']:+.2f}" in out
    assert "Daily returns" in out and "2025-03-06" in out
