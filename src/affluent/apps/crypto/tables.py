"""What the crypto pipelines write: topics, serving tables (keys and columns) and the lake's schema.

Every serving row is an idempotent upsert of a computed value, keyed by what it is (a coin, a
symbol's candle, an alert, a forecast hour): a replay rewrites the same rows with the same values.
Numbers are floats (IEEE 754 doubles); times are UTC epoch milliseconds; percentages are signed
(a fall is negative). A candle's volume is summed exactly, in units of 1e-8 (the exchange's
quantity step), and shown as a float.
"""

from __future__ import annotations

import pyarrow as pa

#: topics
T_MARKETS_RAW = "crypto.markets.raw"
T_MARKETS = "crypto.markets"
T_TRADES = "crypto.trades"
T_CANDLES = "crypto.candles"
T_ANOMALIES = "crypto.anomalies"
T_FORECASTS = "crypto.forecasts"

#: candle intervals: the 1-minute candles are built from trades, the others rolled up from them
INTERVALS = {"1m": 60_000, "5m": 300_000, "1h": 3_600_000}
#: moving averages of closes kept on each candle, in candles of its own interval
MOVING_AVERAGES = (7, 25, 99)

#: the latest snapshot of each coin of the top N (in_top 0: it left the top N; its last values stay)
MARKETS = "crypto_markets"
MARKET_KEY = ("coin_id",)
MARKET_COLUMNS = {
    "coin_id": "VARCHAR",
    "symbol": "VARCHAR",
    "name": "VARCHAR",
    "vs_currency": "VARCHAR",
    "rank": "INTEGER",
    "price": "DOUBLE",
    "market_cap": "DOUBLE",
    "volume_24h": "DOUBLE",
    "high_24h": "DOUBLE",
    "low_24h": "DOUBLE",
    "price_change_24h": "DOUBLE",
    "change_1h_pct": "DOUBLE",
    "change_24h_pct": "DOUBLE",
    "change_7d_pct": "DOUBLE",
    "circulating_supply": "DOUBLE",
    "last_updated_ms": "BIGINT",
    "snapshot_ms": "BIGINT",
    "in_top": "INTEGER",
}

#: OHLCV candles per symbol and interval, with the moving averages of their closes
CANDLES = "crypto_candles"
CANDLE_KEY = ("symbol", "interval", "open_time")
CANDLE_COLUMNS = {
    "symbol": "VARCHAR",
    "interval": "VARCHAR",
    "open_time": "BIGINT",
    "close_time": "BIGINT",
    "open": "DOUBLE",
    "high": "DOUBLE",
    "low": "DOUBLE",
    "close": "DOUBLE",
    "volume": "DOUBLE",
    "trades": "BIGINT",
    "first_trade_id": "BIGINT",
    "last_trade_id": "BIGINT",
    **{f"ma_{n}": "DOUBLE" for n in MOVING_AVERAGES},
}

#: a sudden move for that symbol's recent volatility, with a reason a person can read
ANOMALIES = "crypto_anomalies"
ANOMALY_KEY = ("symbol", "open_time")
ANOMALY_COLUMNS = {
    "symbol": "VARCHAR",
    "open_time": "BIGINT",
    "close": "DOUBLE",
    "return_pct": "DOUBLE",
    "z": "DOUBLE",
    "direction": "VARCHAR",
    "reason": "VARCHAR",
}

#: the next 24 hours of each coin's price, with a band
FORECASTS = "crypto_forecasts"
FORECAST_KEY = ("coin_id", "at_ms")
FORECAST_COLUMNS = {
    "coin_id": "VARCHAR",
    "at_ms": "BIGINT",
    "made_ms": "BIGINT",
    "price": "DOUBLE",
    "low": "DOUBLE",
    "high": "DOUBLE",
    "model": "VARCHAR",
}

#: the lake dataset of market snapshots (each coin each time its last_updated changed), by date/hour of last_updated, UTC
LAKE_MARKETS = "crypto_markets"
LAKE_SCHEMA = pa.schema(
    [(c, {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "INTEGER": pa.int32()}[t]) for c, t in MARKET_COLUMNS.items() if c != "in_top"]
)
