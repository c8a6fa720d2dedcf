"""The crypto page: the top coins' markets, a symbol's candles with their moving averages, anomalies, and
each coin's forecast for the next 24 hours.

Everything comes from the crypto app's serving tables (`affluent.apps.crypto.tables`), read by key: a
symbol's candles are a range of `crypto_candles`' key (symbol, interval, open_time), the newest candle of
each symbol and interval a lookup at the end of that range, a coin's forecast a range of
`crypto_forecasts`' key. The distinct symbols and coins are read with a skip scan (a recursive query that
jumps from one key to the next), so that a live channel costs a few index lookups per commit of the
store, never a scan of a table that grows by a candle a minute per symbol. The home page's alert feed
reads the `crypto.anomalies` topic.

Candles come from an exchange's trades (`BTCUSDT`), markets from a listing of coins (`bitcoin`, symbol
`btc`, in `usd`): a symbol is the coin's when it is the coin's symbol followed by a quote in the market's
currency (USDT, USDC, ... for usd).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query

from affluent.apps.crypto.tables import ANOMALIES, ANOMALY_COLUMNS, CANDLE_COLUMNS, CANDLES, FORECASTS, INTERVALS, MARKET_COLUMNS, MARKETS, T_ANOMALIES
from affluent.core.records import Record
from affluent.web.board import AlertFeed, Board, queries
from affluent.web.live import Channel, KeyedRows
from affluent.web.queries import Queries

#: an exchange symbol (BTCUSDT), a candle interval, a coin id of the market listing (bitcoin, usd-coin)
SYMBOL = r"^[A-Z0-9]{2,20}$"
INTERVAL = "^(" + "|".join(INTERVALS) + ")$"
COIN = r"^[a-z0-9-]{1,64}$"
#: 9999-12-31T23:59:59.999Z: the last instant a time parameter may name
MAX_MS = 253_402_300_799_999
HOUR_MS = INTERVALS["1h"]
#: how far before its forecast a coin's hourly prices go
RECENT_MS = 48 * HOUR_MS
#: the quotes that price a coin in a market currency (an exchange's dollars are stablecoins), by preference
QUOTES = {"usd": ("USDT", "USD", "USDC", "FDUSD", "BUSD", "TUSD"), "eur": ("EUR", "EURI")}
#: the anomalies the page keeps live
LIVE_ANOMALIES = 100

router = APIRouter(prefix="/api/crypto", tags=["crypto"])
Q = Annotated[Queries, Depends(queries)]
Symbol = Annotated[str, Query(pattern=SYMBOL, description="an exchange symbol, e.g. BTCUSDT (see /api/crypto/symbols)")]
Interval = Annotated[str, Query(pattern=INTERVAL, description="the candles' interval: " + ", ".join(INTERVALS))]
Since = Annotated[int | None, Query(ge=0, le=MAX_MS, description="from this open time, included (UTC epoch ms)")]
Until = Annotated[int | None, Query(ge=0, le=MAX_MS, description="to this open time, included (UTC epoch ms)")]

_MARKET = ", ".join(MARKET_COLUMNS)
_CANDLE = ", ".join(CANDLE_COLUMNS)
_ANOMALY = ", ".join(ANOMALY_COLUMNS)


def _distinct(table: str, column: str) -> str:
    """A recursive CTE `keys(v)`: the distinct values of a table's first key column, one index lookup each."""
    return (
        f"keys(v) AS (SELECT (SELECT MIN({column}) FROM {table}) UNION ALL "
        f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > keys.v) FROM keys WHERE keys.v IS NOT NULL)"
    )


_INTERVALS = "i(interval) AS (VALUES " + ", ".join("(?)" for _ in INTERVALS) + ")"


def markets(q: Queries) -> list[dict[str, Any]]:
    """Every coin's latest snapshot: the top N by rank, then those that left it (in_top 0, their last values)."""
    return q.serving(f"SELECT {_MARKET} FROM {MARKETS} ORDER BY in_top DESC, rank IS NULL, rank, coin_id")


def latest_candles(q: Queries) -> list[dict[str, Any]]:
    """The newest candle of each symbol and interval (the one still building, most often)."""
    return q.serving(
        f"WITH RECURSIVE {_distinct(CANDLES, 'symbol')}, {_INTERVALS} "
        f"SELECT {', '.join('c.' + c for c in CANDLE_COLUMNS)} FROM keys CROSS JOIN i CROSS JOIN {CANDLES} c "
        "WHERE keys.v IS NOT NULL AND c.symbol = keys.v AND c.interval = i.interval "
        f"AND c.open_time = (SELECT MAX(open_time) FROM {CANDLES} m WHERE m.symbol = keys.v AND m.interval = i.interval)",
        list(INTERVALS),
    )


def coins_of(market_rows: list[dict[str, Any]], symbols: set[str]) -> dict[str, dict[str, Any]]:
    """symbol -> the market row of its coin; a coin in the top N wins a symbol over one that left it."""
    out: dict[str, dict[str, Any]] = {}
    for m in market_rows:  # in_top first, by rank
        base, currency = (m["symbol"] or "").upper(), (m["vs_currency"] or "").lower()
        for quote in (*QUOTES.get(currency, ()), currency.upper(), ""):
            s = base + quote
            if s in symbols and s not in out:
                out[s] = m
    return out


def candle_symbols(q: Queries) -> set[str]:
    return {r["v"] for r in q.serving(f"WITH RECURSIVE {_distinct(CANDLES, 'symbol')} SELECT v FROM keys WHERE v IS NOT NULL")}


def symbols(q: Queries) -> list[dict[str, Any]]:
    """The symbols with candles, with their coin and each interval's first and last open time; the top coins' first."""
    spans = q.serving(
        f"WITH RECURSIVE {_distinct(CANDLES, 'symbol')}, {_INTERVALS} "
        "SELECT keys.v AS symbol, i.interval AS interval, "
        f"(SELECT MIN(open_time) FROM {CANDLES} c WHERE c.symbol = keys.v AND c.interval = i.interval) AS first_ms, "
        f"(SELECT MAX(open_time) FROM {CANDLES} c WHERE c.symbol = keys.v AND c.interval = i.interval) AS last_ms "
        "FROM keys CROSS JOIN i WHERE keys.v IS NOT NULL",
        list(INTERVALS),
    )
    by: dict[str, dict[str, dict[str, int]]] = {}
    for s in spans:
        if s["last_ms"] is not None:
            by.setdefault(s["symbol"], {})[s["interval"]] = {"first_ms": s["first_ms"], "last_ms": s["last_ms"]}
    listed = markets(q)
    coins = coins_of(listed, set(by))
    place = {m["coin_id"]: i for i, m in enumerate(listed)}
    out = [
        {"symbol": s, "coin_id": coins[s]["coin_id"] if s in coins else None, "name": coins[s]["name"] if s in coins else None, "intervals": iv}
        for s, iv in by.items()
    ]
    return sorted(out, key=lambda x: (place.get(x["coin_id"], math.inf), x["symbol"]))


def candles(q: Queries, symbol: str, interval: str, since_ms: int | None = None, until_ms: int | None = None, limit: int = 300) -> list[dict[str, Any]]:
    """The latest `limit` candles of a symbol and interval in the period, oldest first (a range of the key, read backwards)."""
    where = "symbol = ? AND interval = ?"
    params: list[Any] = [symbol, interval]
    for sql, v in (("open_time >= ?", since_ms), ("open_time <= ?", until_ms)):
        if v is not None:
            where += f" AND {sql}"
            params.append(v)
    rows = q.serving(f"SELECT {_CANDLE} FROM {CANDLES} WHERE {where} ORDER BY open_time DESC LIMIT ?", [*params, limit])
    rows.reverse()
    return rows


def anomalies(q: Queries, symbol: str | None = None, since_ms: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Anomalies newest first, with their reason."""
    conds: list[str] = []
    params: list[Any] = []
    for sql, v in (("symbol = ?", symbol), ("open_time >= ?", since_ms)):
        if v is not None:
            conds.append(sql)
            params.append(v)
    where = " WHERE " + " AND ".join(conds) if conds else ""
    return q.serving(f"SELECT {_ANOMALY} FROM {ANOMALIES}{where} ORDER BY open_time DESC, symbol LIMIT ?", [*params, limit])


def forecast_runs(q: Queries) -> list[dict[str, Any]]:
    """Each coin's latest forecast: when it was made (the made_ms of the coin's furthest hour) and that hour."""
    return q.serving(
        f"WITH RECURSIVE {_distinct(FORECASTS, 'coin_id')} "
        f"SELECT keys.v AS coin_id, (SELECT made_ms FROM {FORECASTS} f WHERE f.coin_id = keys.v ORDER BY at_ms DESC LIMIT 1) AS made_ms, "
        f"(SELECT MAX(at_ms) FROM {FORECASTS} f WHERE f.coin_id = keys.v) AS until_ms FROM keys WHERE keys.v IS NOT NULL"
    )


def forecast(q: Queries, coin_id: str) -> dict[str, Any]:
    """A coin's latest forecast (the points of one run: the older runs' hours are history), and its prices from 48 hours
    before it: the hourly closes of its exchange symbol, then the market's price."""
    market = q.serving(f"SELECT {_MARKET} FROM {MARKETS} WHERE coin_id = ?", [coin_id])
    run = q.serving(f"SELECT made_ms, model FROM {FORECASTS} WHERE coin_id = ? ORDER BY at_ms DESC LIMIT 1", [coin_id])
    if not market and not run:
        raise HTTPException(404, f"no coin {coin_id!r}: neither in the markets nor in the forecasts")
    m = market[0] if market else None
    made = run[0]["made_ms"] if run else None
    points = q.serving(f"SELECT at_ms, price, low, high FROM {FORECASTS} WHERE coin_id = ? AND made_ms = ? ORDER BY at_ms", [coin_id, made]) if run else []
    symbol = None
    recent: list[dict[str, Any]] = []
    if m is not None:
        symbol = next(iter(coins_of(market, candle_symbols(q))), None)  # in the quotes' order of preference
        if symbol is not None:
            start = max(0, (made if made is not None else m["snapshot_ms"] or 0) - RECENT_MS)
            # a candle's close is the price at its end; the newest one is still building: the market's price stands for it
            recent = [{"time_ms": c["open_time"] + HOUR_MS, "price": c["close"]} for c in candles(q, symbol, "1h", since_ms=start, limit=24 * 14)[:-1]]
        at = m["last_updated_ms"] or m["snapshot_ms"]
        if m["price"] is not None and at:
            recent = [r for r in recent if r["time_ms"] < at] + [{"time_ms": at, "price": m["price"]}]
    return {
        "coin_id": coin_id,
        "name": m["name"] if m else None,
        "symbol": symbol,
        "vs_currency": m["vs_currency"] if m else None,
        "made_ms": made,
        "model": run[0]["model"] if run else None,
        "points": points,
        "recent": recent,
    }


def symbol_known(q: Queries, symbol: str) -> bool:
    return bool(q.serving(f"SELECT 1 AS x FROM {CANDLES} WHERE symbol = ? LIMIT 1", [symbol]))


@router.get("/markets", summary="Every coin's latest market snapshot: the top N by rank, then those that left it (in_top 0)")
def get_markets(q: Q) -> list[dict[str, Any]]:
    return markets(q)


@router.get("/symbols", summary="The exchange symbols with candles: their coin, and each interval's first and last open time (UTC epoch ms)")
def get_symbols(q: Q) -> list[dict[str, Any]]:
    return symbols(q)


@router.get("/candles", summary="A symbol's candles (OHLCV, trades, moving averages of closes) for an interval, oldest first: the latest `limit` of the period")
def get_candles(
    q: Q, symbol: Symbol, interval: Interval = "1m", since: Since = None, until: Until = None, limit: Annotated[int, Query(ge=1, le=2000)] = 300
) -> list[dict[str, Any]]:
    if since is not None and until is not None and since > until:
        raise HTTPException(422, f"since ({since}) is after until ({until})")
    rows = candles(q, symbol, interval, since, until, limit)
    if not rows and not symbol_known(q, symbol):
        raise HTTPException(404, f"no symbol {symbol!r}: it has no candle (see /api/crypto/symbols)")
    return rows


@router.get("/anomalies", summary="Sudden moves for a symbol's recent volatility, newest first, with their reason")
def get_anomalies(
    q: Q,
    symbol: Annotated[str | None, Query(pattern=SYMBOL, description="only this symbol's, e.g. BTCUSDT")] = None,
    since: Since = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    return anomalies(q, symbol, since, limit)


@router.get("/forecast/{coin_id}", summary="A coin's latest forecast of the next 24 hours (price with a low-high band), after its recent prices")
def get_forecast(q: Q, coin_id: Annotated[str, Path(pattern=COIN, description="a coin id of the markets, e.g. bitcoin")]) -> dict[str, Any]:
    return forecast(q, coin_id)


def channels() -> list[Channel]:
    return [
        KeyedRows("crypto.markets", markets, ("coin_id",)),
        KeyedRows("crypto.candles", latest_candles, ("symbol", "interval")),
        KeyedRows("crypto.anomalies", lambda q: anomalies(q, limit=LIVE_ANOMALIES), ("symbol", "open_time")),
        KeyedRows("crypto.forecasts", forecast_runs, ("coin_id",)),
    ]


def _signed(v: Any, unit: str = " %") -> str:
    return f"{v:+.2f}{unit}" if isinstance(v, int | float) else "?"


def alert(r: Record) -> dict[str, Any]:
    v = r.value
    return {"title": f"{v['symbol']} {v.get('direction') or 'moved'} {_signed(v.get('return_pct'))}", "detail": str(v.get("reason") or ""), "level": "warning"}


BOARD = Board(
    app="crypto",
    title="Crypto markets",
    summary="top coins' prices, candles with moving averages, anomalies, forecasts",
    router=router,
    channels=channels,
    alerts=(AlertFeed(T_ANOMALIES, alert),),
    script="crypto.js",
)
