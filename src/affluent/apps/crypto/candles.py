"""Exact candles from trades, their roll-ups, moving averages and anomalies: the steps of the crypto pipelines.

A 1-minute candle's open and close are the trades with the earliest and latest trade time in the
minute, ties broken by trade id; high and low are the extreme prices; the volume is summed exactly
in units of 1e-8. So a candle does not depend on the order its trades arrived in.

5-minute and 1-hour candles are rolled up from the latest version of each of their 1-minute candles,
so a late trade that updates a minute updates its 5-minute and 1-hour candles too.

>>> c = Candle()
>>> acc = None
>>> for t in ({"trade_id": 2, "price": 10.0, "qty_e8": 5, "time_ms": 1000}, {"trade_id": 1, "price": 9.0, "qty_e8": 5, "time_ms": 1000}):
...     acc = c.add(acc, t, t["time_ms"])
>>> r = c.result(acc); (r["open"], r["close"], r["volume_e8"], r["trades"])
(9.0, 10.0, 10, 2)
"""

from __future__ import annotations

import math
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from affluent.apps.crypto.tables import INTERVALS, MOVING_AVERAGES
from affluent.core.aggregates import Aggregate
from affluent.sources.crypto.binance import QTY_SCALE

MINUTE_MS = INTERVALS["1m"]
#: closes kept per symbol and interval, for the longest moving average
KEEP_CLOSES = max(MOVING_AVERAGES)

# a candle accumulator: [open_time_ms, open_id, open, close_time_ms, close_id, close, high, low, volume_e8, trades]
_OT, _OI, _O, _CT, _CI, _C, _H, _L, _V, _N = range(10)


class Candle(Aggregate):
    """OHLCV of trades {trade_id, price, qty_e8, time_ms}, independent of their arrival order."""

    name = "candle"

    def create(self) -> Any:
        return None

    def add(self, acc: Any, t: dict[str, Any], timestamp_ms: int) -> Any:
        at, tid, p = t["time_ms"], t["trade_id"], t["price"]
        if acc is None:
            return [at, tid, p, at, tid, p, p, p, t["qty_e8"], 1]
        if (at, tid) < (acc[_OT], acc[_OI]):
            acc[_OT], acc[_OI], acc[_O] = at, tid, p
        if (at, tid) > (acc[_CT], acc[_CI]):
            acc[_CT], acc[_CI], acc[_C] = at, tid, p
        if p > acc[_H]:
            acc[_H] = p
        if p < acc[_L]:
            acc[_L] = p
        acc[_V] += t["qty_e8"]
        acc[_N] += 1
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return b if a is None else a
        first = a if (a[_OT], a[_OI]) <= (b[_OT], b[_OI]) else b
        last = a if (a[_CT], a[_CI]) >= (b[_CT], b[_CI]) else b
        return [*first[_OT : _O + 1], *last[_CT : _C + 1], max(a[_H], b[_H]), min(a[_L], b[_L]), a[_V] + b[_V], a[_N] + b[_N]]

    def result(self, acc: Any) -> dict[str, Any]:
        return {
            "open": acc[_O],
            "high": acc[_H],
            "low": acc[_L],
            "close": acc[_C],
            "volume_e8": acc[_V],
            "trades": acc[_N],
            "first_trade_id": acc[_OI],
            "last_trade_id": acc[_CI],
        }


def candle_row(w: dict[str, Any], interval: str = "1m") -> dict[str, Any]:
    """A window result -> a candle row of `crypto_candles` (first/last_trade_id: the opening and closing trades)."""
    c = w["candle"]
    return {
        "symbol": w["key"],
        "interval": interval,
        "open_time": w["start_ms"],
        "close_time": w["end_ms"] - 1,
        **c,
        "volume": c["volume_e8"] / QTY_SCALE,
    }


# -- roll-ups: 5m and 1h candles from the 1m ones -----------------------------------------------------------------
def rollup_inputs(c: dict[str, Any]) -> list[dict[str, Any]]:
    """A 1-minute candle, once for each interval it belongs to (itself included)."""
    t = c["open_time"]
    return [{"interval": iv, "bucket": t - t % size, "candle": c} for iv, size in INTERVALS.items()]


def rollup_key(r: dict[str, Any]) -> tuple[str, str, int]:
    return (r["candle"]["symbol"], r["interval"], r["bucket"])


_FIELDS = ("open", "high", "low", "close", "volume_e8", "trades", "first_trade_id", "last_trade_id")


def rollup_step(state: Any, r: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    """State: the latest version of each 1-minute candle of the bucket, [open_time, *_FIELDS], by time."""
    c = r["candle"]
    minutes: list[list[Any]] = list(state or [])  # a new state: the step never changes the one it is given
    entry = [c["open_time"], *(c[f] for f in _FIELDS)]
    i = bisect_left([m[0] for m in minutes], entry[0])
    if i < len(minutes) and minutes[i][0] == entry[0]:
        minutes[i] = entry
    else:
        minutes.insert(i, entry)
    first, last = minutes[0], minutes[-1]
    size = INTERVALS[r["interval"]]
    volume = sum(m[5] for m in minutes)
    row = {
        "symbol": c["symbol"],
        "interval": r["interval"],
        "open_time": r["bucket"],
        "close_time": r["bucket"] + size - 1,
        "open": first[1],
        "high": max(m[2] for m in minutes),
        "low": min(m[3] for m in minutes),
        "close": last[4],
        "volume_e8": volume,
        "volume": volume / QTY_SCALE,
        "trades": sum(m[6] for m in minutes),
        "first_trade_id": first[7],
        "last_trade_id": last[8],
    }
    return minutes, [row]


# -- moving averages of closes --------------------------------------------------------------------------------------
def _with_averages(row: dict[str, Any], closes: list[list[Any]]) -> dict[str, Any]:
    """The row with ma_<n>: the mean close of the n candles up to it (None while fewer exist)."""
    upto = [c for t, c in closes if t <= row["open_time"]]
    out = dict(row)
    for n in MOVING_AVERAGES:
        out[f"ma_{n}"] = math.fsum(upto[-n:]) / n if len(upto) >= n else None
    return out


def ma_step(state: Any, row: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    """State {closes: [[open_time, close]] of the last candles, tail: the newest candle as last emitted}.

    A late trade may change a candle that is no longer the newest: the newest one's averages are
    emitted again with it.
    """
    closes: list[list[Any]] = list(state["closes"]) if state else []
    tail: dict[str, Any] | None = state["tail"] if state else None
    t = row["open_time"]
    i = bisect_left([c[0] for c in closes], t)
    if i < len(closes) and closes[i][0] == t:
        closes[i] = [t, row["close"]]
    else:
        closes.insert(i, [t, row["close"]])
    del closes[: max(0, len(closes) - KEEP_CLOSES)]
    out = [_with_averages(row, closes)]
    if tail is not None and tail["open_time"] > t:
        out.append(_with_averages(tail, closes))
    else:
        tail = row
    return {"closes": closes, "tail": tail}, out


def series_key(row: dict[str, Any]) -> tuple[str, str]:
    return (row["symbol"], row["interval"])


# -- anomalies: a move sudden for the symbol's recent volatility ----------------------------------------------------
def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def anomaly_step_for(z_threshold: float = 4.0, warmup: int = 30, span: int = 60) -> Any:
    """An online model of each symbol's 1-minute log returns: an exponentially weighted mean and variance
    (span `span` minutes). A minute is final once a later one starts; its return, scaled to one minute
    when minutes without trades come between, is scored against the model before the model learns it.
    An alert when |z| >= z_threshold, once the model has seen `warmup` returns.

    State: [open_time, close] of the current minute, [open_time, close] of the last final one,
    then the model's n, mean and variance.
    """
    alpha = 2 / (span + 1)

    def step(state: Any, c: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
        t, close = c["open_time"], c["close"]
        if state is None:
            return [[t, close], None, 0, 0.0, 0.0], []
        cur, prev, n, mean, var = state
        if t == cur[0]:
            return [[t, close], prev, n, mean, var], []
        if t < cur[0]:
            return state, []  # a late update of a minute the model has already taken as final
        out = []
        if prev is not None and prev[1] > 0 and cur[1] > 0:
            minutes = max(1, (cur[0] - prev[0]) // MINUTE_MS)
            r = math.log(cur[1] / prev[1])
            r1 = r / math.sqrt(minutes)
            sd = math.sqrt(var)
            if n >= warmup and sd > 0:
                z = (r1 - mean) / sd
                if abs(z) >= z_threshold:
                    out.append(_alert(c["symbol"], cur, r, z, sd, minutes))
            # the model learns the return after scoring it, so an outlier widens the band for what follows
            d = r1 - mean
            mean += alpha * d
            var = (1 - alpha) * (var + alpha * d * d)
            n += 1
        return [[t, close], cur, n, mean, var], out

    return step


def _alert(symbol: str, cur: list[Any], r: float, z: float, sd: float, minutes: int) -> dict[str, Any]:
    pct = math.expm1(r) * 100
    direction = "up" if r > 0 else "down"
    span = "minute" if minutes == 1 else f"{minutes} minutes"
    reason = (
        f"{symbol} {'rose' if r > 0 else 'fell'} {abs(pct):.2f}% in the {span} to {_utc(cur[0] + MINUTE_MS)}, "
        f"{abs(z):.1f} times its recent volatility ({math.expm1(sd) * 100:.3f}% a minute)"
    )
    return {"symbol": symbol, "open_time": cur[0], "close": cur[1], "return_pct": pct, "z": z, "direction": direction, "reason": reason}
