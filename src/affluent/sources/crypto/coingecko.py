"""CoinGecko `/coins/markets`: snapshots of the top N coins, politely, with signed 1h/24h/7d changes.

Every poll asks for the top N by market cap (pages of up to 250) with `price_change_percentage=1h,24h,7d`.
A coin whose `last_updated` did not change since it was last appended is not appended again. Once an
hour (`sparkline_every_s`) the poll also asks for the 7-day hourly sparkline, which feeds the forecasts.

The source appends envelopes, the API's row untouched inside, keyed by coin id::

    {"kind": "market", "snapshot_ms", "vs_currency", "row": {...the API's row, without its sparkline...}}
    {"kind": "sparkline", "snapshot_ms", "vs_currency", "coin_id", "last_updated_ms", "prices": [hourly prices]}
    {"kind": "left", "snapshot_ms", "vs_currency", "coin_id"}      a coin that left the top N

Faults: a 429 is waited out as its `Retry-After` says (60 s when it says nothing), 5xx and timeouts
are retried with backoff by the runtime, an HTML page or a body that is not the expected array is an
error that names what came instead. A body with NaN (not JSON) is read as Python's json reads it;
the NaN then makes its row a dead letter, not the whole snapshot.

>>> normalize_market({"kind": "market", "snapshot_ms": 1, "vs_currency": "usd", "row": {
...     "id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": 71234.0, "market_cap_rank": 1,
...     "price_change_percentage_1h_in_currency": -0.12, "last_updated": "2026-03-10T10:59:12.331Z"}})["change_1h_pct"]
-0.12
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll
from affluent.sources.gbfs import parse_timestamp_ms
from affluent.sources.http import excerpt, json_body, parse_retry_after

log = logging.getLogger("affluent.sources.crypto")

COINGECKO_URL = "https://api.coingecko.com/api/v3"
PER_PAGE_MAX = 250
#: waited after a 429 that gives no Retry-After (the keyless limit is per minute)
DEFAULT_RETRY_AFTER_S = 60.0


class CoinGeckoError(SourceUnavailableError):
    """CoinGecko answered, but not with the markets array: retried later."""


# -- normalisation ------------------------------------------------------------------------------------------
def number(value: Any, what: str, *, required: bool = False) -> float | None:
    """A finite float from a JSON number or a numeric string; None when absent. NaN, infinities and
    text that is not a number are errors when required, None otherwise."""
    if value is None:
        if required:
            raise ValueError(f"{what} is null")
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} is a boolean ({value!r}), not a number")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(x):
        if required:
            raise ValueError(f"{what} is {value!r}, not a finite number")
        return None
    return x


def normalize_market(env: dict[str, Any]) -> dict[str, Any]:
    """A market envelope -> one row of `crypto_markets` (raises ValueError saying what is wrong)."""
    row = env["row"]
    if not isinstance(row, dict):
        raise ValueError(f"a market row is a JSON object, not {type(row).__name__}")
    coin = row.get("id")
    if not isinstance(coin, str) or not coin:
        raise ValueError(f"a market row without a coin id: {str(row)[:120]}")
    updated = parse_timestamp_ms(row.get("last_updated"))
    if updated is None:
        raise ValueError(f"{coin}: last_updated is missing or not a time: {row.get('last_updated')!r}")
    rank = number(row.get("market_cap_rank"), f"{coin}: market_cap_rank")
    price = number(row.get("current_price"), f"{coin}: current_price", required=True)
    if price is None or price <= 0:
        raise ValueError(f"{coin}: current_price {price} is not a price")

    def pct(name: str) -> float | None:
        return number(row.get(f"price_change_percentage_{name}_in_currency", row.get(f"price_change_percentage_{name}")), f"{coin}: {name} change")

    return {
        "coin_id": coin,
        "symbol": str(row.get("symbol") or "").upper(),
        "name": str(row.get("name") or coin),
        "vs_currency": env.get("vs_currency") or "usd",
        "rank": None if rank is None else int(rank),
        "price": price,
        "market_cap": number(row.get("market_cap"), f"{coin}: market_cap"),
        "volume_24h": number(row.get("total_volume"), f"{coin}: total_volume"),
        "high_24h": number(row.get("high_24h"), f"{coin}: high_24h"),
        "low_24h": number(row.get("low_24h"), f"{coin}: low_24h"),
        "price_change_24h": number(row.get("price_change_24h"), f"{coin}: price_change_24h"),
        "change_1h_pct": pct("1h"),
        "change_24h_pct": pct("24h"),
        "change_7d_pct": pct("7d"),
        "circulating_supply": number(row.get("circulating_supply"), f"{coin}: circulating_supply"),
        "last_updated_ms": updated,
        "snapshot_ms": int(env["snapshot_ms"]),
    }


# -- the source ------------------------------------------------------------------------------------------------
def _loads(body: bytes) -> Any:
    """JSON, or Python's json for a body with NaN/Infinity (not JSON, but some mirrors send it)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


class CoinGeckoSource(Source):
    """Snapshots of the top `top` coins every `interval_s`, each coin appended when its last_updated changes."""

    name = "coingecko"

    def __init__(
        self,
        url: str = COINGECKO_URL,
        *,
        vs_currency: str = "usd",
        top: int = 100,
        interval_s: float = 30.0,
        sparkline_every_s: float = 3600.0,
        api_key: SecretStr | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.vs_currency = vs_currency
        self.top = top
        self.interval_s = interval_s
        self.sparkline_every_s = sparkline_every_s
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._client: httpx.Client | None = None
        #: coin id -> the last_updated (ms) last appended
        self.seen: dict[str, int] = {}
        self.sparkline_ms = 0
        #: no request before this wall time (monotonic): a 429's Retry-After
        self.not_before = 0.0
        self.requests = 0
        self.rate_limited = 0
        self.unchanged = 0

    def open(self, position: Any | None) -> None:
        pos = position or {}
        self.seen = {str(k): int(v) for k, v in (pos.get("seen") or {}).items()}
        self.sparkline_ms = int(pos.get("sparkline_ms", 0))
        self._client = httpx.Client(timeout=self.timeout_s, headers=self.headers(), follow_redirects=True)

    def headers(self) -> dict[str, str]:
        """The request headers, the key included when one is set (never logged)."""
        headers = {"accept": "application/json", "user-agent": "affluent"}
        key = self._api_key.get_secret_value() if self._api_key is not None else ""
        if key:
            # a Pro key goes to the Pro root; a Demo key to the public one
            headers["x-cg-pro-api-key" if "pro-api" in self.url else "x-cg-demo-api-key"] = key
        return headers

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _page(self, page: int, per_page: int, sparkline: bool) -> list[Any]:
        assert self._client is not None
        params: dict[str, str | int] = {
            "vs_currency": self.vs_currency,
            "order": "market_cap_desc",
            "per_page": per_page,
            "page": page,
            "sparkline": "true" if sparkline else "false",
            "price_change_percentage": "1h,24h,7d",
        }
        what = f"CoinGecko /coins/markets page {page}"
        self.requests += 1
        try:
            resp = self._client.get(f"{self.url}/coins/markets", params=params)
        except httpx.HTTPError as exc:
            raise CoinGeckoError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 429:
            wait = parse_retry_after(resp.headers.get("retry-after"))
            wait = DEFAULT_RETRY_AFTER_S if wait is None else max(wait, 1.0)
            self.rate_limited += 1
            self.not_before = time.monotonic() + wait
            raise CoinGeckoError(f"{what}: rate limited (HTTP 429); waiting {wait:g} s as asked", retry_after_s=wait)
        doc = json_body(resp, what, CoinGeckoError, loads=_loads)
        if not isinstance(doc, list):
            raise CoinGeckoError(f"{what} returned {type(doc).__name__}, not the markets array: {excerpt(resp)}")
        return doc

    def poll(self) -> SourcePoll:
        wait = self.not_before - time.monotonic()
        if wait > 0:
            return SourcePoll(wait_s=wait)
        now = now_ms()
        sparkline = self.sparkline_every_s > 0 and now - self.sparkline_ms >= self.sparkline_every_s * 1000
        per_page = min(self.top, PER_PAGE_MAX)
        rows: list[Any] = []
        for page in range(1, -(-self.top // per_page) + 1):
            got = self._page(page, per_page, sparkline)
            rows += got
            if len(got) < per_page:
                break
        rows = rows[: self.top]
        base = {"snapshot_ms": now, "vs_currency": self.vs_currency}
        records: list[Record] = []
        present: set[str] = set()
        for row in rows:
            coin = row.get("id") if isinstance(row, dict) else None
            if not isinstance(coin, str):
                records.append(Record(value={"kind": "market", **base, "row": row}, timestamp_ms=now))  # a dead letter, downstream
                continue
            present.add(coin)
            spark = row.pop("sparkline_in_7d", None)
            updated = parse_timestamp_ms(row.get("last_updated"))
            if sparkline and isinstance(spark, dict) and isinstance(spark.get("price"), list):
                doc = {"kind": "sparkline", **base, "coin_id": coin, "last_updated_ms": updated or now, "prices": spark["price"]}
                records.append(Record(value=doc, key=coin, timestamp_ms=updated or now))
            if updated is not None and self.seen.get(coin) == updated:
                self.unchanged += 1
                continue
            records.append(Record(value={"kind": "market", **base, "row": row}, key=coin, timestamp_ms=updated or now))
            if updated is not None:
                self.seen[coin] = updated
        for coin in sorted(set(self.seen) - present):
            records.append(Record(value={"kind": "left", **base, "coin_id": coin}, key=coin, timestamp_ms=now))
            del self.seen[coin]
        if any(r.value["kind"] == "sparkline" for r in records):
            self.sparkline_ms = now  # an answer without them (a mirror's, a short page) asks again next time
        return SourcePoll(records=records, wait_s=self.interval_s, position={"seen": self.seen, "sparkline_ms": self.sparkline_ms})

    def describe(self) -> str:
        return f"CoinGecko top {self.top} in {self.vs_currency} every {self.interval_s:g} s ({self.url})"
