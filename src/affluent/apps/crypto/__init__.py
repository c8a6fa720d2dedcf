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

import importlib
from typing import Any

# loaded when first used: a process that only runs the pipelines (a worker, a benchmark) never imports the CLI
_WHERE = {
    "pipelines": "affluent.apps.crypto.app",
    "run_command": "affluent.apps.crypto.cli",
    "analyze_command": "affluent.apps.crypto.cli",
    "commands": "affluent.apps.crypto.cli",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
