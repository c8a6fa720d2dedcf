"""Binance live trades: a websocket client as a careful user writes one, with no trade lost across a reconnect.

The source reads `<ws_url>/stream?streams=<symbol>@trade/...` (combined streams: each message is
`{"stream", "data"}`). Pings are answered by the websocket library; a connection is renewed before
Binance's 24-hour limit, and at once on a `serverShutdown` event. A connection that fails or drops
(even mid-message) is opened again at the next poll, with backoff from the runtime.

Trade ids are consecutive per symbol. The source keeps the last id appended per symbol, saved with
the trades in one transaction, so that:
- a trade whose id it has already appended is dropped (deduplication by symbol and trade id);
- after a (re)connect, and whenever the stream skips ids, the missing trades are fetched from
  `<rest_url>/api/v3/historicalTrades?symbol=...&fromId=...` before the newer ones are appended: a
  dropped connection loses no trade.

Messages are appended as the stream gave them (REST trades in the stream's shape, marked
`"gap_fill": true`), keyed by symbol. What is not a trade (an unknown event type, text that is not
JSON) is appended too, keyless: the pipeline sends it to its dead-letter topic with the reason.

>>> normalize_trade({"e": "trade", "s": "BTCUSDT", "t": 7, "p": "71234.56000000", "q": "0.01250000", "T": 1773136800121, "m": True})
{'symbol': 'BTCUSDT', 'trade_id': 7, 'price': 71234.56, 'qty_e8': 1250000, 'time_ms': 1773136800121, 'buyer_maker': True}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from affluent.core.errors import ConfigError, SourceUnavailableError
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll
from affluent.sources.crypto.coingecko import number
from affluent.sources.http import excerpt, json_body, parse_retry_after

log = logging.getLogger("affluent.sources.crypto")

BINANCE_WS_URL = "wss://stream.binance.com:9443"
BINANCE_REST_URL = "https://api.binance.com"
#: historicalTrades gives at most this many trades a request
REST_LIMIT = 1000
#: a connection lives 24 h at Binance: renew it before
MAX_CONNECTION_S = 23 * 3600.0
#: quantities are summed exactly, in units of the exchange's quantity step
QTY_SCALE = 100_000_000
_INF = float("inf")
#: a trade's time (T) may follow its message's event time (E) by this much at most (clock rounding)
MAX_TRADE_AFTER_EVENT_MS = 1_000


class BinanceError(SourceUnavailableError):
    """The stream or the REST API failed in a way that may go away: retried with backoff."""


def normalize_trade(msg: Any) -> dict[str, Any]:
    """A trade event -> {symbol, trade_id, price, qty_e8, time_ms, buyer_maker}; ValueError saying what is wrong."""
    try:  # the common case, checked in one go; anything odd is explained below
        if msg["e"] == "trade":
            symbol, tid, at, price, qty = msg["s"], msg["t"], msg["T"], float(msg["p"]), float(msg["q"])
            if (
                type(symbol) is str
                and symbol
                and type(tid) is int
                and tid >= 0
                and type(at) is int
                and at > 0
                and 0 < price < _INF
                and 0 <= qty < _INF
                and type(msg["p"]) is str
                and at <= msg.get("E", at) + MAX_TRADE_AFTER_EVENT_MS
            ):
                return _trade(symbol, tid, price, qty, at, msg)
    except (KeyError, TypeError, ValueError):
        pass
    return _checked_trade(msg)


def _checked_trade(msg: Any) -> dict[str, Any]:
    """normalize_trade, field by field, with a reason for what is wrong."""
    if not isinstance(msg, dict):
        raise ValueError(f"not a trade event: {str(msg)[:120]}")
    kind = msg.get("e")
    if kind != "trade":
        raise ValueError(f"unknown message type {kind!r}: {str(msg)[:120]}")
    symbol, tid, at = msg.get("s"), msg.get("t"), msg.get("T")
    if not isinstance(symbol, str) or not symbol:
        raise ValueError(f"a trade without a symbol: {str(msg)[:120]}")
    if not isinstance(tid, int) or isinstance(tid, bool) or tid < 0:
        raise ValueError(f"{symbol}: trade id {tid!r} is not a non-negative integer")
    if not isinstance(at, int) or isinstance(at, bool) or at <= 0:
        raise ValueError(f"{symbol} trade {tid}: trade time {at!r} is not epoch milliseconds")
    event = msg.get("E")
    if isinstance(event, int) and at > event + MAX_TRADE_AFTER_EVENT_MS:
        # the exchange sends a trade after it happened: one timed later would hold its symbol's candles back
        raise ValueError(f"{symbol} trade {tid}: trade time {at} is after the message's event time {event}")
    price = number(msg.get("p"), f"{symbol} trade {tid}: price", required=True)
    qty = number(msg.get("q"), f"{symbol} trade {tid}: quantity", required=True)
    assert price is not None and qty is not None
    if price <= 0 or qty < 0:
        raise ValueError(f"{symbol} trade {tid}: price {price} or quantity {qty} out of range")
    return _trade(symbol, tid, price, qty, at, msg)


def _trade(symbol: str, tid: int, price: float, qty: float, at: int, msg: dict[str, Any]) -> dict[str, Any]:
    return {"symbol": symbol.upper(), "trade_id": tid, "price": price, "qty_e8": round(qty * QTY_SCALE), "time_ms": at, "buyer_maker": bool(msg.get("m"))}


def rest_trade(symbol: str, t: dict[str, Any]) -> dict[str, Any]:
    """A historicalTrades row in the stream's shape."""
    return {"e": "trade", "s": symbol, "t": t["id"], "p": t["price"], "q": t["qty"], "T": t["time"], "m": t.get("isBuyerMaker", False), "gap_fill": True}


class BinanceTradeSource(Source):
    """Live trades of `symbols` (BTCUSDT, ...), with the gaps of the stream filled over REST."""

    name = "binance-trades"

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        ws_url: str = BINANCE_WS_URL,
        rest_url: str = BINANCE_REST_URL,
        api_key: SecretStr | None = None,
        max_connection_s: float = MAX_CONNECTION_S,
        batch_s: float = 0.2,
        batch_max: int = 5000,
        timeout_s: float = 10.0,
    ) -> None:
        if not symbols:
            raise ConfigError("name at least one symbol (crypto.symbols, or --symbols BTCUSDT,ETHUSDT)")
        self.symbols = [s.upper() for s in symbols]
        self.ws_url = ws_url.rstrip("/")
        self.rest_url = rest_url.rstrip("/")
        self._api_key = api_key
        self.max_connection_s = max_connection_s
        self.batch_s = batch_s
        self.batch_max = batch_max
        self.timeout_s = timeout_s
        self.last_id: dict[str, int] = {}
        self._ws: Any = None
        self._connected_at = 0.0
        self._to_fill: list[str] = []
        self._held: list[str | bytes] = []
        self._http: httpx.Client | None = None
        self.connects = 0
        self.drops = 0
        self.duplicates = 0
        self.filled = 0
        self.unknown = 0

    @property
    def stream_url(self) -> str:
        return f"{self.ws_url}/stream?streams=" + "/".join(f"{s.lower()}@trade" for s in self.symbols)

    def open(self, position: Any | None) -> None:
        self.last_id = {str(k): int(v) for k, v in ((position or {}).get("last_id") or {}).items()}
        self._http = httpx.Client(timeout=self.timeout_s, headers=self.headers())

    def headers(self) -> dict[str, str]:
        """The REST request headers, the key included when one is set (never logged)."""
        headers = {"user-agent": "affluent"}
        key = self._api_key.get_secret_value() if self._api_key is not None else ""
        if key:
            headers["X-MBX-APIKEY"] = key
        return headers

    def close(self) -> None:
        self._disconnect()
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- the connection ----------------------------------------------------------------------------------------
    def _connect(self) -> None:
        from websockets.sync.client import connect

        try:
            # entered as a context manager, the way the library wants it; left in _disconnect
            self._ws = connect(self.stream_url, open_timeout=self.timeout_s, close_timeout=1, max_size=2**22).__enter__()
        except (OSError, TimeoutError) as exc:
            raise BinanceError(f"cannot connect to {self.ws_url}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # the handshake refused (HTTP 451, 5xx): websockets' own errors
            raise BinanceError(f"{self.ws_url} refused the websocket: {type(exc).__name__}: {exc}") from exc
        self._connected_at = time.monotonic()
        self.connects += 1
        # what happened while we were away is fetched before anything newer is appended
        self._to_fill = [s for s in self.symbols if s in self.last_id]
        log.info("binance: connected to %s (%d symbols)", self.ws_url, len(self.symbols))

    def _disconnect(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # already gone
                pass
            self._ws = None

    # -- REST gap filling --------------------------------------------------------------------------------------
    def _historical(self, symbol: str, from_id: int) -> list[dict[str, Any]]:
        assert self._http is not None
        what = f"Binance historicalTrades {symbol} from {from_id}"
        try:
            resp = self._http.get(f"{self.rest_url}/api/v3/historicalTrades", params={"symbol": symbol, "fromId": from_id, "limit": REST_LIMIT})
        except httpx.HTTPError as exc:
            raise BinanceError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code in (418, 429):
            wait = parse_retry_after(resp.headers.get("retry-after"))
            wait = 60.0 if wait is None else wait
            raise BinanceError(f"{what}: rate limited (HTTP {resp.status_code}); waiting {wait:g} s as asked", retry_after_s=wait)
        rows = json_body(resp, what, BinanceError)
        if not isinstance(rows, list):
            raise BinanceError(f"{what}: not a list of trades: {excerpt(resp)}")
        return rows

    def _fill(self, symbol: str, out: list[Record], up_to: int | None = None) -> None:
        """Append the trades after the last one appended, up to `up_to` (included) or to the newest."""
        while True:
            start = self.last_id[symbol] + 1
            if up_to is not None and start > up_to:
                return
            rows = self._historical(symbol, start)
            for t in rows:
                tid = t.get("id") if isinstance(t, dict) else None
                if not isinstance(tid, int) or tid < start or (up_to is not None and tid > up_to):
                    continue
                self._append(symbol, rest_trade(symbol, t), tid, out)
                self.filled += 1
            if len(rows) < REST_LIMIT or self.last_id[symbol] < start:
                return  # caught up (or the API has nothing more to give)

    def _append(self, symbol: str, msg: dict[str, Any], tid: int, out: list[Record]) -> None:
        at = msg.get("T")
        out.append(Record(value=msg, key=symbol, timestamp_ms=at if isinstance(at, int) and not isinstance(at, bool) and at > 0 else 0))
        self.last_id[symbol] = tid

    # -- polling -----------------------------------------------------------------------------------------------
    def poll(self) -> SourcePoll:
        out: list[Record] = []
        try:
            self._poll(out)
        except BinanceError:
            if not out:
                raise
            # what was fetched before the failure is appended now; the rest is retried at the next poll
            log.warning("binance: a REST request failed while filling a gap; %d trades kept, retrying the rest", len(out))
        return SourcePoll(records=out, position=self._position())

    def _poll(self, out: list[Record]) -> None:
        if self._ws is not None and time.monotonic() - self._connected_at > self.max_connection_s:
            log.info("binance: renewing the connection before the exchange's 24-hour limit")
            self._disconnect()
        if self._ws is None:
            self._connect()
        while self._to_fill:
            self._fill(self._to_fill[0], out)
            self._to_fill.pop(0)
        while self._held:  # messages read before a failed gap fill, in their order
            self._message(self._held[0], out)
            self._held.pop(0)
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + self.batch_s
        try:
            while len(out) < self.batch_max and self._ws is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    text = self._ws.recv(timeout=left)
                except TimeoutError:
                    break
                self._held.append(text)
                self._message(text, out)
                self._held.pop()
        except ConnectionClosed as exc:
            self.drops += 1
            log.warning("binance: the connection dropped (%s); reconnecting, and filling the gap over REST", exc)
            self._disconnect()

    def _message(self, text: str | bytes, out: list[Record]) -> None:
        """Handle one message (a failed gap fill raises, and the caller keeps the message for later)."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.unknown += 1
            out.append(Record(value={"e": None, "text": text if isinstance(text, str) else text.decode("utf-8", "replace")}))
            return
        data = msg.get("data", msg) if isinstance(msg, dict) and "stream" in msg else msg
        if isinstance(data, dict) and "result" in data and "id" in data:
            return  # a (un)subscribe answer
        kind = data.get("e") if isinstance(data, dict) else None
        if kind == "trade" and isinstance(data.get("s"), str) and isinstance(data.get("t"), int):
            symbol, tid = data["s"].upper(), data["t"]
            last = self.last_id.get(symbol)
            if last is not None and tid <= last:
                self.duplicates += 1
                return
            if last is not None and tid > last + 1:
                self._fill(symbol, out, up_to=tid - 1)  # the stream skipped ids: fetch them first
            self._append(symbol, data, tid, out)
            return
        if kind == "serverShutdown":
            log.info("binance: the server announced a shutdown; reconnecting")
            self._disconnect()
            return
        self.unknown += 1
        out.append(Record(value=data))  # keyless: the pipeline dead-letters it with the reason

    def _position(self) -> dict[str, Any]:
        return {"last_id": dict(self.last_id)}

    def describe(self) -> str:
        return f"Binance trades of {', '.join(self.symbols)} ({self.ws_url})"
