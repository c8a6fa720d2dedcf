"""The crypto pipelines, as a diagram::

CoinGeckoSource | replay --> crypto.markets.raw (envelopes, key: coin id)
crypto-markets:  market/left --normalize (bad rows: dead letters)--> per coin: the latest row, in_top 1,
                 or, for a coin that left the top N, its last row with in_top 0
                 --> crypto.markets --> serving crypto_markets (and Elasticsearch, when set)
crypto-forecast: sparkline --forecast (24 h, with a band)--> crypto.forecasts --> serving crypto_forecasts
BinanceTradeSource | replay --> crypto.trades (stream messages, key: symbol)
crypto-trades:   --normalize (unknown messages, bad prices: dead letters)--> 1-minute candles on trade
                 time (emitted as they change; a trade later than the grace: crypto-trades.late)
                 +--> anomalies (an online model of 1-minute returns) --> crypto.anomalies, serving
                 +--> 1m, 5m and 1h candles --moving averages--> crypto.candles --> serving crypto_candles
crypto-lake:     crypto.markets (coins in the top N) --> lake crypto_markets (date=/hour= of last_updated, UTC)
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from affluent.apps.crypto import tables
from affluent.apps.crypto.candles import Candle, anomaly_step_for, candle_row, ma_step, rollup_inputs, rollup_key, rollup_step, series_key
from affluent.core.clock import DEFAULT_MAX_EVENT_AHEAD_MS
from affluent.core.log import DAY_MS, TopicConfig
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.sinks import Sink
from affluent.core.sources import Source
from affluent.core.windows import TumblingWindow
from affluent.sinks.lake import ParquetLakeSink
from affluent.sinks.serving import ServingSink
from affluent.sources.crypto import normalize_market, normalize_trade

HOUR_MS = 3_600_000


def market_event(env: dict[str, Any]) -> dict[str, Any]:
    """A market envelope normalised, or {"left": coin id}."""
    kind = env.get("kind")
    if kind == "market":
        return normalize_market(env)
    if kind == "left":
        return {"left": str(env["coin_id"]), "snapshot_ms": int(env["snapshot_ms"])}
    raise ValueError(f"unknown market envelope kind {kind!r}")


def _coin(e: dict[str, Any]) -> str:
    return e.get("left") or e["coin_id"]


def market_step(state: Any, e: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    """State: the coin's latest row. A coin that left the top N keeps its last values, with in_top 0."""
    if "left" in e:
        if state is None:
            return None, []
        row = {**state, "in_top": 0, "snapshot_ms": e["snapshot_ms"]}
        return row, [row]
    row = {**e, "in_top": 1}
    return row, [row]


def forecast_rows(forecaster: Callable[..., list[dict[str, Any]]], model: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    def rows(env: dict[str, Any]) -> list[dict[str, Any]]:
        last = int(env["last_updated_ms"])
        made = last - last % HOUR_MS  # hourly steps: a newer forecast replaces the same hours
        prices = [p for p in env["prices"] if isinstance(p, int | float)]
        return [{"coin_id": env["coin_id"], "made_ms": made, "model": model, **f} for f in forecaster(prices, made)]

    return rows


def _kind_is(*kinds: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and v.get("kind") in kinds


def build_pipelines(
    markets: Source,
    trades: Source,
    *,
    serving_db: str | Path,
    lake_root: str | Path,
    lake_commit_ms: int = 30_000,
    grace_ms: int = 10_000,
    anomaly_z: float = 4.0,
    anomaly_warmup: int = 30,
    anomaly_span: int = 60,
    serving_retain_ms: int = 7 * DAY_MS,
    max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
    market_sinks: tuple[Sink, ...] = (),
) -> list[Pipeline]:
    """The crypto pipelines over a markets source and a trades source (live or replayed).

    grace_ms: how long after a minute ends a late trade still updates its candle; later, it goes to
    `crypto-trades.late`, counted. market_sinks: more sinks of the market rows (Elasticsearch).
    """
    from affluent.apps.crypto.forecast import MODEL, forecast

    serving = partial(serving_sink, serving_db, serving_retain_ms)

    m = Pipeline("crypto-markets", poll_interval_ms=250, max_event_ahead_ms=max_event_ahead_ms)
    raw = m.source(markets, topic=tables.T_MARKETS_RAW, config=TopicConfig(retention_ms=DAY_MS))
    rows = raw.filter(_kind_is("market", "left"), name="markets").map(market_event, name="normalize").stateful(market_step, key=_coin, name="latest")
    rows.to_topic(tables.T_MARKETS)
    rows.to_sink(serving(tables.MARKETS, tables.MARKET_KEY, tables.MARKET_COLUMNS, "last_updated_ms"))
    for sink in market_sinks:
        rows.to_sink(sink)

    f = Pipeline("crypto-forecast", poll_interval_ms=1_000, max_event_ahead_ms=max_event_ahead_ms)
    fc = f.topic(tables.T_MARKETS_RAW).filter(_kind_is("sparkline"), name="sparklines").flat_map(forecast_rows(forecast, MODEL), name="forecast")
    fc.to_topic(tables.T_FORECASTS)
    fc.to_sink(serving(tables.FORECASTS, tables.FORECAST_KEY, tables.FORECAST_COLUMNS, "at_ms"))

    t = trades_pipeline(
        trades,
        serving_db=serving_db,
        serving_retain_ms=serving_retain_ms,
        grace_ms=grace_ms,
        anomaly_z=anomaly_z,
        anomaly_warmup=anomaly_warmup,
        anomaly_span=anomaly_span,
        max_event_ahead_ms=max_event_ahead_ms,
    )

    lake = Pipeline("crypto-lake", commit_interval_ms=lake_commit_ms, poll_interval_ms=min(lake_commit_ms, 1_000) or 50, max_event_ahead_ms=max_event_ahead_ms)
    lake.topic(tables.T_MARKETS).filter(lambda r: r["in_top"] == 1, name="in-top").to_sink(
        ParquetLakeSink(lake_root, tables.LAKE_MARKETS, time_ms=_lake_time, schema=tables.LAKE_SCHEMA, tz="UTC")
    )
    return [m, f, t, lake]


def _lake_time(r: Record) -> int:
    return int(r.value["last_updated_ms"])


def serving_sink(db: str | Path, retain_ms: int, table: str, keys: tuple[str, ...], columns: dict[str, str], time_column: str) -> ServingSink:
    return ServingSink(db, table, key_columns=keys, columns=columns, retain_ms=retain_ms, time_column=time_column)


def trades_pipeline(
    trades: Source,
    *,
    serving_db: str | Path,
    serving_retain_ms: int = 7 * DAY_MS,
    grace_ms: int = 10_000,
    anomaly_z: float = 4.0,
    anomaly_warmup: int = 30,
    anomaly_span: int = 60,
    max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
) -> Pipeline:
    """crypto-trades: trades into 1m candles on trade time, anomalies, 5m and 1h roll-ups and moving averages."""
    serving = partial(serving_sink, serving_db, serving_retain_ms)
    t = Pipeline("crypto-trades", poll_interval_ms=100, max_event_ahead_ms=max_event_ahead_ms)
    # idle partitions do not move the watermark: trades fetched after a reconnect still reach their candles
    window = TumblingWindow(size_ms=tables.INTERVALS["1m"], grace_ms=grace_ms, idle_ms=None)
    one = (
        t.source(trades, topic=tables.T_TRADES, config=TopicConfig(partitions=4, retention_ms=DAY_MS))
        .map(normalize_trade, name="normalize")
        .window(window, Candle(), name="candles-1m", emit="update")
        .map(candle_row, name="candle")
    )
    alerts = one.stateful(anomaly_step_for(anomaly_z, anomaly_warmup, anomaly_span), key=lambda c: c["symbol"], name="anomalies")
    alerts.to_topic(tables.T_ANOMALIES)
    alerts.to_sink(serving(tables.ANOMALIES, tables.ANOMALY_KEY, tables.ANOMALY_COLUMNS, "open_time"))
    candles = (
        one.flat_map(rollup_inputs, name="intervals")
        .stateful(rollup_step, key=rollup_key, name="rollups", ttl_ms=2 * HOUR_MS)
        .stateful(ma_step, key=series_key, name="moving-averages")
    )
    candles.to_topic(tables.T_CANDLES)
    candles.to_sink(serving(tables.CANDLES, tables.CANDLE_KEY, tables.CANDLE_COLUMNS, "open_time"))
    return t
