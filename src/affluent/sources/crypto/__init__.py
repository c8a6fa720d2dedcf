"""Crypto markets: CoinGecko snapshots of the top coins, Binance live trades."""

from __future__ import annotations

from affluent.sources.crypto.binance import BINANCE_REST_URL, BINANCE_WS_URL, BinanceTradeSource, normalize_trade
from affluent.sources.crypto.coingecko import COINGECKO_URL, CoinGeckoSource, normalize_market

__all__ = [
    "BINANCE_REST_URL",
    "BINANCE_WS_URL",
    "COINGECKO_URL",
    "BinanceTradeSource",
    "CoinGeckoSource",
    "normalize_market",
    "normalize_trade",
]
