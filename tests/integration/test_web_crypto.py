"""The crypto page's JSON API and live channels over a serving store filled by hand with known data.

The store is written through ServingSink with the crypto app's own tables (`affluent.apps.crypto.tables`):
ten coins with signed changes (falls are negative), two of which left the top 8; 1-minute candles of four
symbols from a seeded random walk, rolled up to 5m and 1h with the moving averages of their closes as the
app computes them; anomalies (in their table and on the `crypto.anomalies` topic); two forecast runs per
coin, the newer replacing the hours they share. "Now" is a fixed instant here (2026-03-10 14:30:20 UTC);
the e2e test builds the same data at the real now.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.dashboard import sse_events

from affluent.apps.crypto.tables import (
    ANOMALIES,
    ANOMALY_COLUMNS,
    ANOMALY_KEY,
    CANDLE_COLUMNS,
    CANDLE_KEY,
    CANDLES,
    FORECAST_COLUMNS,
    FORECAST_KEY,
    FORECASTS,
    INTERVALS,
    MARKET_COLUMNS,
    MARKET_KEY,
    MARKETS,
    MOVING_AVERAGES,
    T_ANOMALIES,
)
from affluent.config import Settings
from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import ServingSink, serving_rows

NOW = int(datetime(2026, 3, 10, 14, 30, 20, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000
HOUR = 3_600_000
XSS = '<img src=x onerror="alert(1)">'
MODEL = "holt-damped-log-v1"
# coin id, symbol, name, rank, price, 1h %, 24h %, 7d %, market cap, volume 24h, in the top 8
COINS: list[tuple[str, str, str, int, float, float | None, float | None, float | None, float, float, int]] = [
    ("bitcoin", "btc", "Bitcoin", 1, 71234.56, -0.12, 1.15, -4.8, 1.411e12, 2.876e10, 1),
    ("ethereum", "eth", "Ethereum", 2, 3456.78, 0.34, -2.41, 5.02, 4.153e11, 1.52e10, 1),
    ("tether", "usdt", "Tether", 3, 1.0002, 0.0, -0.01, 0.02, 1.1e11, 4.5e10, 1),
    ("solana", "sol", "Solana", 4, 142.5, -1.05, -6.7, -12.3, 6.5e10, 3.1e9, 1),
    ("usd-coin", "usdc", "USDC", 5, 0.9998, 0.01, 0.0, -0.01, 3.3e10, 5.2e9, 1),
    ("ripple", "xrp", "XRP", 6, 0.6123, 2.2, 9.87, None, 3.3e10, 1.9e9, 1),
    ("dogecoin", "doge", "Dogecoin", 7, 0.1623, -0.5, 3.3, 18.25, 2.3e10, 1.1e9, 1),
    ("xss-token", "xss", XSS, 8, 0.00001234, 12.5, -45.5, -80.2, 1.2e9, 3.4e8, 1),
    ("cardano", "ada", "Cardano", 9, 0.45, -0.2, -3.1, -7.7, 1.6e10, 4.0e8, 0),
    ("shiba-inu", "shib", "Shiba Inu", 10, 0.0000231, 0.8, -1.2, 2.4, 1.3e10, 3.0e8, 0),
]
# symbol, last close, seed; PEPEUSDT is no coin of the markets
SYMBOLS = [("BTCUSDT", 71234.56, 1), ("ETHUSDT", 3456.78, 2), ("SOLUSDT", 142.5, 3), ("PEPEUSDT", 0.0000089, 4)]
#: hours of 1-minute candles, up to the minute still building
HOURS = 52
# symbol, minutes before the building one, return %, z
ANOMALY_SPEC = [("BTCUSDT", 30, -2.41, -5.2), ("ETHUSDT", 90, 3.3, 6.1), ("BTCUSDT", 400, 1.87, 4.4), ("SOLUSDT", 10, -4.02, -7.5)]
SCHEMAS = {
    MARKETS: (MARKET_KEY, MARKET_COLUMNS),
    CANDLES: (CANDLE_KEY, CANDLE_COLUMNS),
    ANOMALIES: (ANOMALY_KEY, ANOMALY_COLUMNS),
    FORECASTS: (FORECAST_KEY, FORECAST_COLUMNS),
}


def make_markets(now: int) -> list[dict[str, Any]]:
    out = []
    for coin, sym, name, rank, price, h1, h24, d7, cap, vol, top in COINS:
        change = None if h24 is None else price - price / (1 + h24 / 100)
        out.append(
            {
                "coin_id": coin,
                "symbol": sym,
                "name": name,
                "vs_currency": "usd",
                "rank": rank,
                "price": price,
                "market_cap": cap,
                "volume_24h": vol,
                "high_24h": price * 1.02,
                "low_24h": price * 0.97,
                "price_change_24h": change,
                "change_1h_pct": h1,
                "change_24h_pct": h24,
                "change_7d_pct": d7,
                "circulating_supply": cap / price,
                # the coins that left the top kept their last values, of two hours ago
                "last_updated_ms": now - 40_000 if top else now - 2 * HOUR,
                "snapshot_ms": now - 20_000,
                "in_top": top,
            }
        )
    return out


def with_averages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ma_<n> on each candle of one series (oldest first): the mean close of the n candles up to it, None while fewer exist."""
    closes: list[float] = []
    for r in rows:
        closes.append(r["close"])
        for n in MOVING_AVERAGES:
            r[f"ma_{n}"] = math.fsum(closes[-n:]) / n if len(closes) >= n else None
    return rows


def make_candles(now: int) -> list[dict[str, Any]]:
    """HOURS of 1-minute candles per symbol (the last one building), the anomalies' moves in them; rolled up to 5m and 1h."""
    end = now // MIN * MIN
    n = HOURS * 60
    out: list[dict[str, Any]] = []
    for symbol, last, seed in SYMBOLS:
        rng = random.Random(seed)
        moves = {n - 1 - m: math.log1p(pct / 100) for s, m, pct, _ in ANOMALY_SPEC if s == symbol}
        logs = [0.0]
        for k in range(1, n + 1):
            logs.append(logs[-1] + moves.get(k - 1, rng.gauss(0, 0.0012)))
        scale = last / math.exp(logs[-1])
        minutes: list[dict[str, Any]] = []
        trade_id = 1_000_000 * seed
        for k in range(n):
            o, c = math.exp(logs[k]) * scale, math.exp(logs[k + 1]) * scale
            trades = rng.randrange(5, 400)
            t = end - (n - 1 - k) * MIN
            minutes.append(
                {
                    "symbol": symbol,
                    "interval": "1m",
                    "open_time": t,
                    "close_time": t + MIN - 1,
                    "open": o,
                    "high": max(o, c) * (1 + abs(rng.gauss(0, 0.0005))),
                    "low": min(o, c) * (1 - abs(rng.gauss(0, 0.0005))),
                    "close": c,
                    "qty_e8": rng.randrange(10**6, 10**10),
                    "trades": trades,
                    "first_trade_id": trade_id,
                    "last_trade_id": trade_id + trades - 1,
                }
            )
            trade_id += trades
        for interval, ms in INTERVALS.items():
            series: dict[int, list[dict[str, Any]]] = {}
            for m in minutes:
                series.setdefault(m["open_time"] // ms * ms, []).append(m)
            rolled = [
                {
                    "symbol": symbol,
                    "interval": interval,
                    "open_time": t,
                    "close_time": t + ms - 1,
                    "open": group[0]["open"],
                    "high": max(m["high"] for m in group),
                    "low": min(m["low"] for m in group),
                    "close": group[-1]["close"],
                    "volume": sum(m["qty_e8"] for m in group) / 1e8,  # summed exactly, in units of 1e-8
                    "trades": sum(m["trades"] for m in group),
                    "first_trade_id": group[0]["first_trade_id"],
                    "last_trade_id": group[-1]["last_trade_id"],
                }
                for t, group in sorted(series.items())
            ]
            out.extend(with_averages(rolled))
    return out


def make_anomalies(now: int) -> list[dict[str, Any]]:
    end = now // MIN * MIN
    out = []
    for symbol, minutes, pct, z in ANOMALY_SPEC:
        t = end - minutes * MIN
        at = datetime.fromtimestamp((t + MIN) / 1000, UTC).strftime("%H:%M UTC")
        reason = f"{symbol} {'rose' if pct > 0 else 'fell'} {abs(pct):.2f}% in the minute to {at}, {abs(z):.1f} times its recent volatility"
        if symbol == "SOLUSDT":
            reason += " " + XSS  # markup from elsewhere is text to the page
        out.append({"symbol": symbol, "open_time": t, "close": None, "return_pct": pct, "z": z, "direction": "up" if pct > 0 else "down", "reason": reason})
    return out


def make_forecasts(now: int) -> list[dict[str, Any]]:
    """Two hourly runs per coin, the older first: the newer replaces the 23 hours they share, the older keeps its first."""
    hour = now // HOUR * HOUR
    out = []
    for coin, price in (("bitcoin", 71234.56), ("ethereum", 3456.78), ("tether", 1.0002)):
        for made in (hour - HOUR, hour):
            slope = 0.0004 if made == hour else -0.001
            for h in range(1, 25):
                mid = price * (1 + slope * h)
                half = 0.004 * math.sqrt(h)
                out.append(
                    {
                        "coin_id": coin,
                        "at_ms": made + h * HOUR,
                        "made_ms": made,
                        "price": mid,
                        "low": mid * (1 - half),
                        "high": mid * (1 + half),
                        "model": MODEL,
                    }
                )
    return out


def write(serving: Path, table: str, rows: list[dict[str, Any]]) -> None:
    """Upsert rows into one of the app's serving tables, as its pipelines do."""
    key, columns = SCHEMAS[table]
    sink = ServingSink(serving, table, key_columns=key, columns=columns)
    sink.open()
    try:
        sink.write([Record(value={c: r.get(c) for c in columns}) for r in rows])
        sink.flush()
    finally:
        sink.close()


def publish_anomalies(log: SQLiteLog, rows: list[dict[str, Any]]) -> None:
    log.create_topic(T_ANOMALIES)
    log.append(T_ANOMALIES, [Record(value=a, key=a["symbol"], timestamp_ms=a["open_time"] + MIN) for a in sorted(rows, key=lambda a: a["open_time"])])


@dataclass
class Data:
    """What a store holds, at `now`."""

    now: int

    def __post_init__(self) -> None:
        self.markets = make_markets(self.now)
        self.candles = make_candles(self.now)
        self.anomalies = make_anomalies(self.now)
        self.forecasts = make_forecasts(self.now)
        closes = {(c["symbol"], c["open_time"]): c["close"] for c in self.candles if c["interval"] == "1m"}
        for a in self.anomalies:  # the close of the minute that moved
            a["close"] = closes[(a["symbol"], a["open_time"])]

    def fill(self, serving: Path, log: SQLiteLog) -> None:
        for table, rows in ((MARKETS, self.markets), (CANDLES, self.candles), (ANOMALIES, self.anomalies), (FORECASTS, self.forecasts)):
            write(serving, table, rows)
        publish_anomalies(log, self.anomalies)

    def series(self, symbol: str, interval: str) -> list[dict[str, Any]]:
        """One series' candles as the store holds them (the columns of the table), oldest first."""
        return [{c: r.get(c) for c in CANDLE_COLUMNS} for r in self.candles if r["symbol"] == symbol and r["interval"] == interval]


# -- the server -----------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def dashboard(folder: Path, now: int = NOW) -> Iterator[tuple[str, Path, SQLiteLog, Data]]:
    """The dashboard, in this process, over a store and a log filled with the Data at `now`."""
    from affluent.web import server

    serving = folder / "serving.db"
    log = SQLiteLog(folder / "log.db")
    data = Data(now)
    data.fill(serving, log)
    settings = Settings(serving={"url": f"sqlite:///{serving}"}, lake={"url": f"parquet://{folder / 'lake'}"}, web={"live_interval_s": 0.05})
    with pytest.MonkeyPatch.context() as mp:
        have = server.available_apps()
        if "crypto" not in have:  # the page reads only the app's tables: it is served even before the app's package is there
            mp.setattr(server, "available_apps", lambda: {**have, "crypto": None})
        app = server.create_app(settings, log, offline=True)
        srv = server.DashboardServer(app, "127.0.0.1", 0).start()
        try:
            deadline = time.monotonic() + 10
            while not app.state.hub.channels["crypto.markets"].rows:  # the live channels' first poll is done
                assert time.monotonic() < deadline, "the live updates never polled"
                time.sleep(0.02)
            yield srv.url, serving, log, data
        finally:
            srv.stop()
            log.close()


@pytest.fixture(scope="module")
def crypto_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, SQLiteLog, Data]]:
    with dashboard(tmp_path_factory.mktemp("crypto")) as got:
        yield got


def get(url: str, **params: Any) -> Any:
    resp = httpx.get(url, params={k: v for k, v in params.items() if v is not None}, timeout=10)
    assert resp.status_code == 200, (url, params, resp.status_code, resp.text)
    return resp.json()


def test_markets_are_what_was_written_top_first_with_their_signs(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, data = crypto_web
    got = get(url + "api/crypto/markets")
    assert got == sorted(data.markets, key=lambda m: (-m["in_top"], m["rank"]))
    assert [m["coin_id"] for m in got if not m["in_top"]] == ["cardano", "shiba-inu"]
    by = {m["coin_id"]: m for m in got}
    # a fall stays negative, a rise positive, nothing missing is made up
    assert (by["bitcoin"]["change_1h_pct"], by["bitcoin"]["change_7d_pct"], by["ethereum"]["change_24h_pct"]) == (-0.12, -4.8, -2.41)
    assert by["xss-token"]["change_24h_pct"] == -45.5 and by["xss-token"]["change_1h_pct"] == 12.5 and by["xss-token"]["name"] == XSS
    assert by["ripple"]["change_7d_pct"] is None and by["tether"]["change_1h_pct"] == 0.0
    assert by["ethereum"]["price_change_24h"] < 0 < by["bitcoin"]["price_change_24h"]


def test_symbols_name_their_coins_and_intervals(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, data = crypto_web
    got = get(url + "api/crypto/symbols")
    # the top coins' symbols by rank, then the symbols of no coin
    assert [(s["symbol"], s["coin_id"], s["name"]) for s in got] == [
        ("BTCUSDT", "bitcoin", "Bitcoin"),
        ("ETHUSDT", "ethereum", "Ethereum"),
        ("SOLUSDT", "solana", "Solana"),
        ("PEPEUSDT", None, None),
    ]
    for s in got:
        assert set(s["intervals"]) == set(INTERVALS)
        for interval, span in s["intervals"].items():
            series = data.series(s["symbol"], interval)
            assert span == {"first_ms": series[0]["open_time"], "last_ms": series[-1]["open_time"]}


@pytest.mark.parametrize("interval", list(INTERVALS))
def test_candles_are_the_series_as_written(crypto_web: tuple[str, Path, SQLiteLog, Data], interval: str) -> None:
    url, _, _, data = crypto_web
    series = data.series("BTCUSDT", interval)
    got = get(url + "api/crypto/candles", symbol="BTCUSDT", interval=interval, limit=2000)
    assert got == series[-2000:]  # every column, oldest first; the moving averages None while too few candles exist
    assert set(got[0]) >= {"symbol", "open_time", "open", "high", "low", "close", "volume", "trades", "ma_7", "ma_25", "ma_99"}
    assert got[-1]["open_time"] == NOW // INTERVALS[interval] * INTERVALS[interval]  # the one still building
    assert get(url + "api/crypto/candles", symbol="BTCUSDT", interval=interval) == series[-300:]  # the latest 300 by default
    # a period: open times from since to until, both included; the latest `limit` of them
    since, until = series[-40]["open_time"], series[-11]["open_time"]
    assert get(url + "api/crypto/candles", symbol="BTCUSDT", interval=interval, since=since, until=until) == series[-40:-10]
    assert get(url + "api/crypto/candles", symbol="BTCUSDT", interval=interval, since=since, until=until, limit=5) == series[-15:-10]
    assert get(url + "api/crypto/candles", symbol="BTCUSDT", interval=interval, since=series[-1]["open_time"] + 1) == []


def test_the_moving_averages_are_the_mean_closes(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, _ = crypto_web
    got = get(url + "api/crypto/candles", symbol="ETHUSDT", interval="5m", limit=2000)
    closes = [c["close"] for c in got]
    for i in (0, 6, 24, 98, len(got) - 1):
        for n in MOVING_AVERAGES:
            want = math.fsum(closes[i + 1 - n : i + 1]) / n if i + 1 >= n else None
            assert got[i][f"ma_{n}"] == want, (i, n)
    hours = get(url + "api/crypto/candles", symbol="ETHUSDT", interval="1h")
    assert len(hours) == HOURS + 1 and all(h["ma_99"] is None for h in hours) and hours[-1]["ma_25"] is not None


def test_anomalies_newest_first_with_their_reason(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, data = crypto_web
    got = get(url + "api/crypto/anomalies")
    assert got == sorted(data.anomalies, key=lambda a: -a["open_time"])
    assert [(a["symbol"], a["return_pct"], a["direction"]) for a in got] == [
        ("SOLUSDT", -4.02, "down"),
        ("BTCUSDT", -2.41, "down"),
        ("ETHUSDT", 3.3, "up"),
        ("BTCUSDT", 1.87, "up"),
    ]
    assert got[0]["reason"].endswith(XSS)
    assert [a["open_time"] for a in get(url + "api/crypto/anomalies", symbol="BTCUSDT")] == [NOW // MIN * MIN - 30 * MIN, NOW // MIN * MIN - 400 * MIN]
    assert len(get(url + "api/crypto/anomalies", limit=2)) == 2
    assert [a["symbol"] for a in get(url + "api/crypto/anomalies", since=NOW // MIN * MIN - 90 * MIN)] == ["SOLUSDT", "BTCUSDT", "ETHUSDT"]
    assert get(url + "api/crypto/anomalies", symbol="DOGEUSDT") == []  # a filter: nothing, rather than an error


def test_a_forecast_is_the_latest_run_after_the_coins_recent_prices(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, data = crypto_web
    hour = NOW // HOUR * HOUR
    f = get(url + "api/crypto/forecast/bitcoin")
    newer = [r for r in data.forecasts if r["coin_id"] == "bitcoin" and r["made_ms"] == hour]
    assert (f["coin_id"], f["name"], f["symbol"], f["vs_currency"], f["made_ms"], f["model"]) == ("bitcoin", "Bitcoin", "BTCUSDT", "usd", hour, MODEL)
    # the store also holds the older run's first hour: it is history, not part of this forecast
    assert f["points"] == [{k: r[k] for k in ("at_ms", "price", "low", "high")} for r in newer] and len(f["points"]) == 24
    assert all(p["low"] < p["price"] < p["high"] for p in f["points"])
    # the hourly closes of the 48 hours before it (at each candle's end; the building one left out), then the market's price
    hours = [c for c in data.series("BTCUSDT", "1h") if c["open_time"] >= hour - 48 * HOUR][:-1]
    want = [{"time_ms": c["open_time"] + HOUR, "price": c["close"]} for c in hours] + [{"time_ms": NOW - 40_000, "price": 71234.56}]
    assert f["recent"] == want and len(want) == 49
    # a coin whose symbol has no candles: the market's price only
    tether = get(url + "api/crypto/forecast/tether")
    assert (tether["symbol"], tether["recent"], len(tether["points"])) == (None, [{"time_ms": NOW - 40_000, "price": 1.0002}], 24)
    # a coin with no forecast yet
    cardano = get(url + "api/crypto/forecast/cardano")
    assert (cardano["made_ms"], cardano["points"], cardano["recent"]) == (None, [], [{"time_ms": NOW - 2 * HOUR, "price": 0.45}])


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("api/crypto/candles", {"symbol": "btcusdt"}, 422, "string should match pattern"),
        ("api/crypto/candles", {"symbol": "B"}, 422, "string should match pattern"),
        ("api/crypto/candles", {"symbol": "BTC" * 8}, 422, "string should match pattern"),
        ("api/crypto/candles", {"symbol": "<script>"}, 422, "string should match pattern"),
        ("api/crypto/candles", {}, 422, "field required"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "interval": "2m"}, 422, "string should match pattern"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "interval": "1M"}, 422, "string should match pattern"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "since": "yesterday"}, 422, "valid integer"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "since": "-1"}, 422, "greater than or equal to 0"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "until": str(10**16)}, 422, "less than or equal to"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "since": "2000", "until": "1000"}, 422, "since (2000) is after until (1000)"),
        ("api/crypto/candles", {"symbol": "BTCUSDT", "limit": "0"}, 422, "greater than or equal to 1"),
        ("api/crypto/candles", {"symbol": "DOGEUSDT"}, 404, "no symbol 'DOGEUSDT'"),
        ("api/crypto/anomalies", {"symbol": "btc"}, 422, "string should match pattern"),
        ("api/crypto/anomalies", {"limit": "501"}, 422, "less than or equal to 500"),
        ("api/crypto/forecast/Bitcoin", {}, 422, "string should match pattern"),
        ("api/crypto/forecast/bit_coin", {}, 422, "string should match pattern"),
        ("api/crypto/forecast/" + "a" * 65, {}, 422, "string should match pattern"),
        ("api/crypto/forecast/nope-coin", {}, 404, "no coin 'nope-coin'"),
    ],
)
def test_bad_input_is_a_clear_4xx(crypto_web: tuple[str, Path, SQLiteLog, Data], path: str, params: dict[str, str], status: int, says: str) -> None:
    url, _, _, _ = crypto_web
    resp = httpx.get(url + path, params=params, timeout=10)
    assert resp.status_code == status, resp.text
    assert says.lower() in resp.text.lower()


def test_a_known_symbol_with_no_candles_in_an_interval_or_period_is_empty(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, _ = crypto_web
    assert get(url + "api/crypto/candles", symbol="PEPEUSDT", interval="1h", since=0, until=1) == []
    assert get(url + "api/crypto/candles", symbol="PEPEUSDT", since=0, until=253_402_300_799_999)[-1]["symbol"] == "PEPEUSDT"


def test_the_page_its_api_document_and_the_home_alert_feed(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    url, _, _, _ = crypto_web
    page = httpx.get(url + "crypto", timeout=10)
    assert page.status_code == 200 and '<script src="/static/crypto.js">' in page.text and 'data-page="crypto"' in page.text
    assert httpx.get(url + "static/crypto.js", timeout=10).status_code == 200
    config = get(url + "api/config")
    assert "crypto" in [a["app"] for a in config["apps"]]
    assert {"crypto.markets", "crypto.candles", "crypto.anomalies", "crypto.forecasts"} <= set(config["channels"])
    spec = get(url + "openapi.json")
    for path in ("/api/crypto/markets", "/api/crypto/symbols", "/api/crypto/candles", "/api/crypto/anomalies", "/api/crypto/forecast/{coin_id}"):
        assert spec["paths"][path]["get"]["summary"], path
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/crypto/candles"]["get"]["parameters"]}
    assert params["symbol"]["pattern"] == "^[A-Z0-9]{2,20}$" and params["interval"]["pattern"] == "^(1m|5m|1h)$"
    coin = spec["paths"]["/api/crypto/forecast/{coin_id}"]["get"]["parameters"][0]["schema"]
    assert coin["pattern"] == "^[a-z0-9-]{1,64}$"
    # the home page's alert feed: the anomalies of the topic, as plain text
    alerts = [a for a in get(url + "api/alerts", limit=10) if a["app"] == "crypto"]
    assert [(a["title"], a["level"]) for a in alerts] == [
        ("SOLUSDT down -4.02 %", "warning"),
        ("BTCUSDT down -2.41 %", "warning"),
        ("ETHUSDT up +3.30 %", "warning"),
        ("BTCUSDT up +1.87 %", "warning"),
    ]
    assert alerts[0]["detail"].startswith("SOLUSDT fell 4.02% in the minute to ") and alerts[0]["detail"].endswith(XSS)


def test_the_live_queries_read_by_key(crypto_web: tuple[str, Path, SQLiteLog, Data]) -> None:
    """Each live channel runs at every commit of the store: index lookups only, never a scan of a growing table."""
    from affluent.web import crypto

    _, serving, _, _ = crypto_web
    con = sqlite3.connect(serving)
    plans: dict[str, str] = {}

    class Plans:
        def serving(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
            plans[sql] = " / ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql, params))
            return serving_rows(con, sql, params)

    try:
        q: Any = Plans()
        assert len(crypto.latest_candles(q)) == len(SYMBOLS) * len(INTERVALS)
        assert {r["coin_id"] for r in crypto.forecast_runs(q)} == {"bitcoin", "ethereum", "tether"}
        assert len(crypto.symbols(q)) == len(SYMBOLS)
        assert len(crypto.candles(q, "BTCUSDT", "1m", since_ms=0, until_ms=NOW)) == 300
    finally:
        con.close()
    growing = {sql: plan for sql, plan in plans.items() if CANDLES in sql or FORECASTS in sql}
    assert len(growing) == 4
    for plan in growing.values():  # scans of the recursive CTE and the intervals' three rows only
        assert set(re.findall(r"SCAN (\w+)", plan)) <= {"keys", "i", "CONSTANT", "3"}, plan
    assert any("SEARCH c USING PRIMARY KEY (symbol=? AND interval=? AND open_time=?)" in p for p in growing.values())
    assert "SEARCH crypto_candles USING PRIMARY KEY (symbol=? AND interval=? AND open_time>? AND open_time<?)" in growing.values()


# -- live updates ---------------------------------------------------------------------------------------------------------
def test_live_channels_send_a_snapshot_then_what_changed(tmp_path: Path) -> None:
    with dashboard(tmp_path) as (url, serving, log, data):
        end = NOW // MIN * MIN
        last = data.series("BTCUSDT", "1m")[-1]
        candle = {**last, "open_time": end + MIN, "close_time": end + 2 * MIN - 1, "open": last["close"], "close": last["close"] * 0.999, "trades": 3}
        bitcoin = {**data.markets[0], "price": 71100.0, "change_1h_pct": -0.31, "snapshot_ms": NOW + 30_000}
        anomaly = {"symbol": "ETHUSDT", "open_time": end, "close": 3400.0, "return_pct": -1.6, "z": -4.3, "direction": "down", "reason": "ETHUSDT fell 1.60%"}
        run = [
            {**r, "made_ms": r["made_ms"] + HOUR, "at_ms": r["at_ms"] + HOUR}
            for r in data.forecasts
            if r["coin_id"] == "ethereum" and r["made_ms"] == NOW // HOUR * HOUR
        ]
        wrote = threading.Event()
        channels = ("crypto.markets", "crypto.candles", "crypto.anomalies", "crypto.forecasts")

        def later(events: list[tuple[str, dict[str, Any]]]) -> None:
            if not wrote.is_set() and len(events) >= len(channels):  # the snapshots are in
                wrote.set()
                write(serving, CANDLES, [candle])
                write(serving, MARKETS, [bitcoin])
                write(serving, ANOMALIES, [anomaly])
                publish_anomalies(log, [anomaly])
                write(serving, FORECASTS, run)

        def done(events: list[tuple[str, dict[str, Any]]]) -> bool:
            return set(channels) <= {n for n, e in events if e["kind"] == "delta"}

        events = sse_events(url + "api/events?channels=" + ",".join(channels), until=done, on=later)
        snap = {n: e["data"] for n, e in events if e["kind"] == "snapshot"}
        assert snap["crypto.markets"]["key"] == ["coin_id"] and len(snap["crypto.markets"]["rows"]) == len(COINS)
        newest = {(r["symbol"], r["interval"]): r for r in snap["crypto.candles"]["rows"]}
        assert newest == {(s, i): data.series(s, i)[-1] for s, _, _ in SYMBOLS for i in INTERVALS}
        assert len(snap["crypto.anomalies"]["rows"]) == len(ANOMALY_SPEC)
        assert {r["coin_id"]: r["made_ms"] for r in snap["crypto.forecasts"]["rows"]} == dict.fromkeys(("bitcoin", "ethereum", "tether"), NOW // HOUR * HOUR)
        delta = {n: e["data"] for n, e in events if e["kind"] == "delta"}
        # only what changed: the new newest candle of BTCUSDT 1m, bitcoin's snapshot, the new anomaly, ethereum's new run
        assert delta["crypto.candles"] == {"key": ["symbol", "interval"], "upsert": [{c: candle.get(c) for c in CANDLE_COLUMNS}], "delete": []}
        assert delta["crypto.markets"]["upsert"] == [bitcoin] and delta["crypto.markets"]["upsert"][0]["change_1h_pct"] == -0.31
        assert delta["crypto.anomalies"]["upsert"] == [anomaly]
        assert delta["crypto.forecasts"]["upsert"] == [{"coin_id": "ethereum", "made_ms": NOW // HOUR * HOUR + HOUR, "until_ms": run[-1]["at_ms"]}]
        # and the API reads them
        assert get(url + "api/crypto/candles", symbol="BTCUSDT", limit=1)[0]["open_time"] == end + MIN
        assert get(url + "api/crypto/forecast/ethereum")["made_ms"] == NOW // HOUR * HOUR + HOUR
