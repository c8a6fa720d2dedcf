"""Which sources feed the crypto pipelines: CoinGecko and Binance, or the bundled recordings when they cannot be reached."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx

from affluent.apps.crypto.pipeline import build_pipelines
from affluent.config import Settings, lake_path, serving_path
from affluent.core.log import DAY_MS
from affluent.core.pipeline import Pipeline
from affluent.core.sinks import Sink
from affluent.core.sources import Source
from affluent.sources.crypto import BinanceTradeSource, CoinGeckoSource
from affluent.sources.crypto.replay import CryptoReplaySource
from affluent.sources.replay import unpack_recording

log = logging.getLogger("affluent.apps.crypto")

#: forty recorded minutes of generated markets and trades in the APIs' shapes, made by tests/fixtures/crypto/make_recording.py
MARKETS_RECORDING = "coingecko.recording.jsonl"
TRADES_RECORDING = "binance-trades.recording.jsonl"


@dataclass
class Endpoints:
    """Where the APIs are, overriding the settings (CLI flags)."""

    coingecko_url: str | None = None
    binance_ws_url: str | None = None
    binance_rest_url: str | None = None


def recording_path(data_dir: Path, name: str) -> Path:
    return unpack_recording(resources.files("affluent.apps.crypto") / "data" / f"{name}.gz", data_dir)


def replay(settings: Settings, name: str, note: str) -> CryptoReplaySource:
    """A bundled recording, looped, its times moved to now: a replay that looks live, and says it is not."""
    src = CryptoReplaySource(recording_path(settings.data_dir, name), speed=settings.crypto.replay_speed, loop=True, shift_to_now=True)
    src.note = note
    return src


def reachable(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> str | None:
    """None when `url` answers 2xx; else why not."""
    try:
        resp = httpx.get(url, timeout=timeout_s, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if resp.status_code in (401, 403):
        return f"HTTP {resp.status_code}: the API refused the key (COINGECKO_API_KEY / BINANCE_API_KEY)"
    return None if resp.is_success else f"HTTP {resp.status_code}"


def choose_sources(settings: Settings, *, offline: bool, endpoints: Endpoints | None = None, fallback: bool | None = None) -> tuple[Source, Source]:
    """(markets, trades): the live APIs, or for each one that cannot be reached at start, its recording (and why).

    An API whose endpoint was named (in `endpoints`) is what the user asked for: it is retried, never swapped for the recording.
    """
    c, ep = settings.crypto, endpoints or Endpoints()
    fall = c.fallback_to_recording if fallback is None else fallback
    gecko_url = ep.coingecko_url or c.coingecko_url
    ws_url, rest_url = ep.binance_ws_url or c.binance_ws_url, ep.binance_rest_url or c.binance_rest_url
    if offline:
        return (
            replay(settings, MARKETS_RECORDING, "offline: replays the bundled recording of CoinGecko markets"),
            replay(settings, TRADES_RECORDING, "offline: replays the bundled recording of Binance trades"),
        )
    gecko = CoinGeckoSource(
        gecko_url,
        vs_currency=c.vs_currency,
        top=c.top,
        interval_s=c.interval_s,
        sparkline_every_s=c.sparkline_every_s,
        api_key=settings.coingecko_api_key,
        timeout_s=c.timeout_s,
    )
    binance = BinanceTradeSource(c.symbols, ws_url=ws_url, rest_url=rest_url, api_key=settings.binance_api_key, timeout_s=c.timeout_s)
    markets: Source = gecko
    trades: Source = binance
    if fall and ep.coingecko_url is None:
        why = reachable(f"{gecko.url}/ping", c.probe_timeout_s, gecko.headers())
        if why is not None:
            note = f"CoinGecko ({gecko_url}) could not be used at start ({why}): replays the bundled recording"
            log.warning("crypto: %s", note)
            markets = replay(settings, MARKETS_RECORDING, note)
    if fall and ep.binance_ws_url is None and ep.binance_rest_url is None:
        why = reachable(f"{binance.rest_url}/api/v3/ping", c.probe_timeout_s, binance.headers())
        if why is not None:
            note = f"Binance ({rest_url}) could not be used at start ({why}): replays the bundled recording"
            log.warning("crypto: %s", note)
            trades = replay(settings, TRADES_RECORDING, note)
    return markets, trades


def market_sinks(settings: Settings) -> tuple[Sink, ...]:
    """The Elasticsearch sink of the market rows, when a URL is set."""
    c = settings.crypto
    if c.elasticsearch_url is None or not c.elasticsearch_url.get_secret_value():
        return ()
    from affluent.sinks.elasticsearch import MARKETS_TEMPLATE, ElasticsearchSink, market_doc_id, market_document

    # the sink takes the credentials out of the URL and never shows them
    return (
        ElasticsearchSink(
            c.elasticsearch_url.get_secret_value(), c.elasticsearch_index, template=MARKETS_TEMPLATE, doc_id=market_doc_id, document=market_document
        ),
    )


def pipelines(settings: Settings, *, offline: bool, endpoints: Endpoints | None = None, fallback: bool | None = None) -> list[Pipeline]:
    """The crypto pipelines, fed by CoinGecko and Binance or, offline, by the bundled recordings."""
    markets, trades = choose_sources(settings, offline=offline, endpoints=endpoints, fallback=fallback)
    c = settings.crypto
    return build_pipelines(
        markets,
        trades,
        serving_db=serving_path(settings),
        lake_root=lake_path(settings),
        lake_commit_ms=int(c.lake_commit_s * 1000),
        grace_ms=int(c.grace_s * 1000),
        anomaly_z=c.anomaly_z,
        anomaly_warmup=c.anomaly_warmup,
        anomaly_span=c.anomaly_span,
        serving_retain_ms=int(c.serving_days * DAY_MS),
        max_event_ahead_ms=settings.max_event_ahead_ms,
        market_sinks=market_sinks(settings),
    )
