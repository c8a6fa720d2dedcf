"""The crypto app against loopback CoinGecko and Binance look-alikes: exact candles, no trade lost, signs kept, 429s survived."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.crypto.market import COINS, Markets, trade_tape
from tests.fixtures.crypto.servers import MarketServer, TradeStreamServer

from affluent.apps.crypto import tables
from affluent.apps.crypto.pipeline import build_pipelines
from affluent.core.metrics import Metrics
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import read_serving
from affluent.sources.crypto import BinanceTradeSource, CoinGeckoSource
from affluent.testing import read_topic, run_runtime_until

T0 = 1_773_129_600_000  # 2026-03-10T08:00:00Z
MINUTE = 60_000
GRACE_MS = 10_000
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


class CryptoRun:
    """The crypto pipelines over given sources, in a runtime of this process."""

    def __init__(self, folder: Path, markets: Any, trades: Any) -> None:
        self.serving = folder / "serving.db"
        self.log = SQLiteLog(folder / "log.db")
        self.pipelines = build_pipelines(markets, trades, serving_db=self.serving, lake_root=folder / "lake", lake_commit_ms=200, grace_ms=GRACE_MS)
        self.metrics = Metrics()

    def run(self, until: Callable[[], bool], timeout_s: float = 60.0) -> None:
        rt = Runtime(self.log, metrics=self.metrics)
        for p in self.pipelines:
            rt.add(p)
        run_runtime_until(rt, lambda: until() and self._caught_up(rt), timeout_s=timeout_s, poll_s=0.1)

    def _caught_up(self, rt: Runtime) -> bool:
        """Every pipeline has read all of its input (the live sources never say they are done)."""
        ends = {t: self.log.end_offsets(t) for t in (tables.T_TRADES, tables.T_MARKETS_RAW, tables.T_MARKETS) if self.log.topic_exists(t)}
        return all(t.caught_up() for t in rt.tasks) and ends == {t: self.log.end_offsets(t) for t in ends}

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return read_serving(self.serving, sql, params)

    def dead_letters(self, pipeline: str) -> list[dict[str, Any]]:
        return [r.value for r in read_topic(self.log, f"{pipeline}.dlq")] if self.log.topic_exists(f"{pipeline}.dlq") else []


# -- an independent computation of the candles --------------------------------------------------------------------
def reference_candles(log: SQLiteLog) -> tuple[dict[tuple[str, str, int], dict[str, Any]], int]:
    """Candles from the trades topic as logged, with the same lateness rule (per partition, in log
    order: a trade whose minute ended more than the grace before the newest trade time seen is late),
    and every aggregate done from scratch: Decimal volumes, open/close by (time, id)."""
    trades: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    late = 0
    for p in log.describe_topic(tables.T_TRADES).partitions:
        newest = None
        for r in log.iter_records(tables.T_TRADES, p.partition, p.start_offset):
            m = r.value
            if not isinstance(m, dict) or m.get("e") != "trade" or not math.isfinite(float(m["p"])):
                continue  # a dead letter before the window: it moves no watermark
            t = m["T"]
            end = t - t % MINUTE + MINUTE
            if newest is not None and end + GRACE_MS <= newest:
                late += 1
                continue
            newest = t if newest is None else max(newest, t)
            trades[(m["s"], t - t % MINUTE)].append(m)
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for iv, size in tables.INTERVALS.items():
        groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for (sym, minute), ms in trades.items():
            groups[(sym, minute - minute % size)].extend(ms)
        for (sym, start), ms in groups.items():
            by_time = sorted(ms, key=lambda m: (m["T"], m["t"]))
            out[(sym, iv, start)] = {
                "open": float(by_time[0]["p"]),
                "close": float(by_time[-1]["p"]),
                "high": max(float(m["p"]) for m in ms),
                "low": min(float(m["p"]) for m in ms),
                "volume": float(sum(Decimal(m["q"]) for m in ms)),
                "trades": len(ms),
            }
    return out, late


def test_candles_are_exact_and_no_trade_is_lost_across_drops(tmp_path: Path) -> None:
    tape = trade_tape(SYMBOLS, start_ms=T0, minutes=8, per_second=4, seed=3, shuffle_ms=4_000, late=6)
    n = len(tape)
    drops = {n // 4: ("abort", 60), n // 2: ("mid-message", 90)}
    extra = {
        n // 8: [{"e": "24hrMiniTicker", "s": "BTCUSDT", "c": "1"}, "not json {", {"result": None, "id": 1}],
        n // 3: [{"e": "serverShutdown", "E": T0}],
        n // 5: [{"e": "trade", "s": "ADAUSDT", "t": 9, "p": "NaN", "q": "1", "T": T0}],
    }
    with TradeStreamServer(tape, drops=drops, extra=extra) as stream, MarketServer(lambda q: [], stream) as server:
        trades = BinanceTradeSource(SYMBOLS, ws_url=stream.url, rest_url=server.rest_url, timeout_s=5)
        markets = CoinGeckoSource(server.coingecko_url, top=10, interval_s=3600)
        run = CryptoRun(tmp_path, markets, trades)
        last = {s: max(m["t"] for m in tape if m["s"] == s) for s in SYMBOLS}
        run.run(until=lambda: stream.done and all(trades.last_id.get(s) == v for s, v in last.items()))
        assert stream.connections >= 4  # the first, and one after each drop and the shutdown
        assert trades.filled > 0 and trades.drops == 2

    # every trade once: deduplicated by (symbol, trade id), the gaps filled over REST
    logged = [r.value for r in read_topic(run.log, tables.T_TRADES) if isinstance(r.value, dict) and r.value.get("e") == "trade"]
    ids = [(m["s"], m["t"]) for m in logged if m["p"] != "NaN"]
    assert sorted(ids) == sorted((m["s"], m["t"]) for m in tape)
    assert any(m.get("gap_fill") for m in logged)

    ref, late = reference_candles(run.log)
    assert late >= 6  # the tape's late trades, at least
    got = {(r["symbol"], r["interval"], r["open_time"]): r for r in run.rows(f"SELECT * FROM {tables.CANDLES}")}
    assert set(got) == set(ref)
    for k, want in ref.items():
        row = got[k]
        assert {f: row[f] for f in want} == want, k
    late_topic = [r.value for r in read_topic(run.log, "crypto-trades.late")]
    assert len(late_topic) == late
    reasons = " | ".join(d["error"] for d in run.dead_letters("crypto-trades"))
    assert "unknown message type '24hrMiniTicker'" in reasons
    assert "unknown message type None" in reasons  # the text that was not JSON
    assert "price is 'NaN'" in reasons

    # moving averages: the mean of the last 7 closes, checked on the last 1m candle of each symbol
    for sym in SYMBOLS:
        rows = run.rows(f"SELECT open_time, close, ma_7 FROM {tables.CANDLES} WHERE symbol = ? AND interval = '1m' ORDER BY open_time", [sym])
        assert rows[-1]["ma_7"] == pytest.approx(sum(r["close"] for r in rows[-7:]) / 7, rel=1e-12)


def markets_of(gen: Markets, clock: list[int], *, drop: str, bad: dict[str, Any], polls: int) -> Callable[[dict[str, str]], list[dict[str, Any]]]:
    """Answers of /coins/markets: the market moves for `polls` answers, then stands still (each coin unchanged)."""
    last: list[dict[str, Any]] = []

    def rows(q: dict[str, str]) -> list[dict[str, Any]]:
        nonlocal last
        if clock[0] >= T0 + polls * 30_000:
            return [dict(r) for r in last]
        clock[0] += 30_000
        out = gen.at(clock[0], sparkline=q.get("sparkline") == "true")
        if clock[0] > T0 + 90_000:
            out = [r for r in out if r["id"] != drop]
        for r in out:
            if r["id"] in bad:
                r["current_price"] = bad[r["id"]]
        last = [{k: v for k, v in r.items() if k != "sparkline_in_7d"} for r in out]
        return out

    return rows


def test_markets_keep_signs_survive_429_storms_and_skip_unchanged(tmp_path: Path) -> None:
    gen, clock = Markets(T0, seed=5), [T0]
    bad = {"tether": "abc", "usd-coin": None, "dai": "1.0001"}  # text, null, a number as a string
    with MarketServer(markets_of(gen, clock, drop="dash", bad=bad, polls=12)) as server:
        storm = [(429, {"retry-after": "1", "content-type": "application/json"}, b'{"status":{"error_code":429}}')] * 3
        server.queued = [
            (200, {"content-type": "text/html"}, b"<html><body>Maintenance</body></html>"),
            (503, {"content-type": "application/json"}, b"{}"),
            (200, {"content-type": "application/json"}, b'[{"id": "bitcoin", "current_price": NaN, "last_updated": "2026-03-10T08:00:00Z"}]'),
            *storm,
        ]
        source = CoinGeckoSource(server.coingecko_url, top=len(COINS), interval_s=0.05, sparkline_every_s=3600)
        with TradeStreamServer([]) as stream:
            trades = BinanceTradeSource(["BTCUSDT"], ws_url=stream.url, rest_url=server.rest_url, timeout_s=5)
            run = CryptoRun(tmp_path, source, trades)
            started = time.monotonic()
            run.run(until=lambda: len(server.market_requests()) >= 20)
        times = [r for r in server.requests if r[0] == "/cg/coins/markets"]
        assert source.rate_limited == 3
        # each 429's Retry-After (1 s) was waited before the next request
        storm_at = [i for i, (_p, q) in enumerate(times) if i >= 3][:4]
        assert len(storm_at) == 4 and time.monotonic() - started >= 3

    raw = [r.value for r in read_topic(run.log, tables.T_MARKETS_RAW)]
    markets = [v for v in raw if v["kind"] == "market"]
    # an unchanged snapshot is not appended again: each (coin, last_updated) once
    seen = [(v["row"].get("id"), v["row"].get("last_updated")) for v in markets]
    assert len(seen) == len(set(seen))
    assert len(times) >= 20
    # the NaN body was read: its row is a dead letter with its reason, not a lost snapshot
    reasons = [d["error"] for d in run.dead_letters("crypto-markets")]
    assert any("current_price is 'abc'" in r or "not a number: 'abc'" in r for r in reasons)
    assert any("current_price is null" in r for r in reasons)
    assert any("bitcoin: current_price is null" in r for r in reasons)  # NaN (not JSON) is stored as null

    rows = {r["coin_id"]: r for r in run.rows(f"SELECT * FROM {tables.MARKETS}")}
    negative = 0
    for cid, r in rows.items():
        if cid == "dash":
            continue
        src = next(v["row"] for v in reversed(markets) if v["row"].get("id") == cid and v["row"].get("current_price") not in (None, "abc"))
        for col, field in (
            ("change_1h_pct", "price_change_percentage_1h_in_currency"),
            ("change_24h_pct", "price_change_percentage_24h_in_currency"),
            ("change_7d_pct", "price_change_percentage_7d_in_currency"),
        ):
            assert r[col] == src[field], (cid, col)
            negative += r[col] < 0
        assert r["in_top"] == 1
    assert negative > 0  # some changes are falls, and they stayed negative
    assert rows["dai"]["price"] == 1.0001
    # a coin that left the top N keeps its last values, marked
    assert rows["dash"]["in_top"] == 0 and rows["dash"]["price"] > 0
    # forecasts from the sparkline: 24 hours ahead per coin, the band around the price
    fc = run.rows(f"SELECT * FROM {tables.FORECASTS} WHERE coin_id = 'bitcoin' ORDER BY at_ms")
    assert len(fc) == 24
    assert all(f["low"] <= f["price"] <= f["high"] for f in fc)


def test_the_connection_is_renewed_before_its_limit_and_no_trade_is_lost(tmp_path: Path) -> None:
    """Binance closes a connection after 24 h: the source renews it first (here after 0.3 s), and fills what it missed."""
    tape = trade_tape(("BTCUSDT", "ETHUSDT"), start_ms=T0, minutes=2, per_second=5, seed=9)
    with TradeStreamServer(tape, pace_s=0.002) as stream, MarketServer(lambda q: [], stream) as server:
        src = BinanceTradeSource(["BTCUSDT", "ETHUSDT"], ws_url=stream.url, rest_url=server.rest_url, max_connection_s=0.3, batch_s=0.05)
        src.open(None)
        got: list[tuple[str, int]] = []
        deadline = time.monotonic() + 30
        while not (stream.done and len(got) >= len(tape)) and time.monotonic() < deadline:
            got += [(r.value["s"], r.value["t"]) for r in src.poll().records]
        src.close()
    assert src.connects >= 3 and src.drops == 0
    assert sorted(got) == sorted((m["s"], m["t"]) for m in tape)  # each once, in spite of the overlaps
    assert all("streams=btcusdt@trade/ethusdt@trade" in p for p in stream.paths)  # resubscribed each time
