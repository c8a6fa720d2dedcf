"""Crypto markets, live: the top coins from CoinGecko, trades from Binance, exact candles, anomalies and forecasts.

- `affluent run crypto [--top 100] [--symbols BTCUSDT,...] [--offline]`: market snapshots every 30 s, trades
  into 1m candles on trade time, rolled up to 5m and 1h, with moving averages; anomaly alerts; a 24 h
  forecast per coin with a band; all in topics and the serving store, the snapshots in the lake;
- `affluent crypto candles --symbol BTCUSDT [--interval 1m|5m|1h] [--since --until] [--json]`;
- `affluent analyze crypto [--since --until] [--json]`: returns, volatility, movers, correlations.

Offline, or when an API cannot be reached at start, the pipelines replay bundled recordings of
generated markets and trades, and say so.
"""

from __future__ import annotations

from affluent.apps.crypto.app import pipelines
from affluent.apps.crypto.cli import analyze_command, commands, run_command

__all__ = ["analyze_command", "commands", "pipelines", "run_command"]
