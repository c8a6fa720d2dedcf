"""Candles from recorded trades, end to end: affluent's crypto-trades pipeline against a plain-Python candle loop.

    .venv/bin/python benchmarks/crypto.py [--trades 500000] [--symbols 20] [--repeat 2]

Both sides start from the same recording file of generated trades (Binance's stream shape, 20 USDT
pairs, in the affluent recording format) and end with every 1-minute candle written:
- plain: read the file, parse each line, build each symbol's 1-minute OHLCV candles in dicts (open and
  close by trade time then id, volume as Decimal-exact integers), upsert them into a SQLite table;
- affluent: `ReplaySource` at full speed appends the trades to the durable log (SQLite), from a process
  of its own as it does for any recording of 64 MiB or more, and the app's
  own `crypto-trades` pipeline reads them and builds the 1m candles on trade time, the 5m and 1h
  roll-ups, the moving averages and the anomaly model, into topics and the serving store, checkpoints
  included; `run_to_end` closes the last windows.
Each side runs in a process of its own; the time is from its start to its last candle written; peak RSS
is VmHWM, the replay's process included. The 1m candles of both sides are compared: they must be equal.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.crypto.market import COINS, trade_tape  # noqa: E402

START_MS = 1_773_129_600_000
MINUTE_MS = 60_000
QTY = 100_000_000
POLL = 5_000


def symbols(n: int) -> tuple[str, ...]:
    return tuple(f"{c[1].upper()}USDT" for c in COINS if c[1] not in ("usdt",))[:n]


def write_recording(path: Path, n_trades: int, n_symbols: int) -> int:
    """A recording of about n_trades trades of n_symbols pairs, POLL trades a poll."""
    syms = symbols(n_symbols)
    minutes = max(1, round(n_trades / (len(syms) * 1.1 * 60 * 10)))
    tape = trade_tape(syms, start_ms=START_MS, minutes=minutes, per_second=10.0, seed=5, jumps=4)[:n_trades]
    with path.open("wb") as f:
        f.write(orjson.dumps({"affluent_recording": 1, "source": "binance-trades", "started_ms": START_MS}) + b"\n")
        for i in range(0, len(tape), POLL):
            chunk = tape[i : i + POLL]
            f.write(orjson.dumps({"wall_ms": chunk[-1]["T"], "records": [{"k": m["s"], "t": m["T"], "v": m} for m in chunk]}) + b"\n")
    return len(tape)


# -- the two sides --------------------------------------------------------------------------------------------------
def plain(recording: Path, out: Path) -> int:
    """Candles in a plain loop: parse, accumulate per (symbol, minute), upsert into SQLite."""
    candles: dict[tuple[str, int], list[Any]] = {}
    with recording.open("rb") as f:
        next(f)
        for line in f:
            for r in orjson.loads(line)["records"]:
                m = r["v"]
                t, tid, p, q = m["T"], m["t"], float(m["p"]), round(float(m["q"]) * QTY)
                k = (m["s"], t - t % MINUTE_MS)
                c = candles.get(k)
                if c is None:
                    candles[k] = [t, tid, p, t, tid, p, p, p, q, 1]
                    continue
                if (t, tid) < (c[0], c[1]):
                    c[0], c[1], c[2] = t, tid, p
                if (t, tid) > (c[3], c[4]):
                    c[3], c[4], c[5] = t, tid, p
                c[6] = max(c[6], p)
                c[7] = min(c[7], p)
                c[8] += q
                c[9] += 1
    con = sqlite3.connect(out)
    cols = "symbol TEXT, open_time INTEGER, open REAL, high REAL, low REAL, close REAL, volume REAL, trades INTEGER"
    con.execute(f"CREATE TABLE candles ({cols}, PRIMARY KEY (symbol, open_time))")
    with con:
        con.executemany(
            "INSERT OR REPLACE INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(s, t, c[2], c[6], c[7], c[5], c[8] / QTY, c[9]) for (s, t), c in candles.items()],
        )
    con.close()
    return len(candles)


def affluent(recording: Path, folder: Path) -> float:
    """Runs the app's trades pipeline over the recording to its end; returns the replay process's peak RSS (MB)."""
    from affluent.apps.crypto.pipeline import trades_pipeline
    from affluent.core.runtime import Runtime, tune_process
    from affluent.core.sqlite_log import SQLiteLog
    from affluent.sources.replay import ReplaySource

    tune_process()
    log = SQLiteLog(folder / "affluent.db")
    p = trades_pipeline(ReplaySource(recording, speed=0), serving_db=folder / "serving.db", max_event_ahead_ms=None)
    rt = Runtime(log).add(p)
    rt.run_to_end()
    log.close()
    return sum(getattr(st, "peak_rss_mb", 0.0) for st in rt.source_tasks)  # a big recording is replayed in a process of its own


def candles_of(db: Path, table: str, where: str = "") -> dict[tuple[str, int], tuple[Any, ...]]:
    con = sqlite3.connect(db)
    rows = con.execute(f"SELECT symbol, open_time, open, high, low, close, volume, trades FROM {table} {where}").fetchall()
    con.close()
    return {(r[0], r[1]): r[2:] for r in rows}


def side(name: str, recording: Path, folder: Path) -> None:
    gc.collect()
    t0 = time.perf_counter()
    child_mb = 0.0
    if name == "plain":
        plain(recording, folder / "plain.db")
    else:
        child_mb = affluent(recording, folder)
    elapsed = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024 + child_mb
    print(orjson.dumps({"seconds": elapsed, "rss_mb": rss}).decode())


def run_side(name: str, recording: Path, folder: Path) -> dict[str, float]:
    folder.mkdir(parents=True, exist_ok=True)
    os.sync()
    out = subprocess.run([sys.executable, __file__, "--side", name, "--recording", str(recording), "--folder", str(folder)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    res: dict[str, float] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trades", type=int, default=500_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--side", choices=("plain", "affluent"))
    ap.add_argument("--recording", type=Path)
    ap.add_argument("--folder", type=Path)
    a = ap.parse_args()
    if a.side:
        side(a.side, a.recording, a.folder)
        return
    with tempfile.TemporaryDirectory(prefix="affluent-crypto-bench-") as tmp:
        root = Path(tmp)
        recording = root / "trades.recording.jsonl"
        n = write_recording(recording, a.trades, a.symbols)
        print(f"{n:,} trades of {a.symbols} pairs, {recording.stat().st_size / 1e6:.0f} MB recording; best of {a.repeat} runs each side")
        best: dict[str, dict[str, float]] = {}
        for i in range(a.repeat):
            for name in ("plain", "affluent"):
                res = run_side(name, recording, root / f"{name}-{i}")
                if name not in best or res["seconds"] < best[name]["seconds"]:
                    best[name] = res
        got = candles_of(root / "affluent-0" / "serving.db", "crypto_candles", "WHERE interval = '1m'")
        want = candles_of(root / "plain-0" / "plain.db", "candles")
        same = got == want
        base = n / best["plain"]["seconds"]
        print(f"{'side':<10} {'trades/s':>12} {'ratio':>7} {'peak RSS':>9}")
        for name in ("plain", "affluent"):
            rate = n / best[name]["seconds"]
            print(f"{name:<10} {rate:>12,.0f} {rate / base:>6.2f}x {best[name]['rss_mb']:>7.0f} MB")
        print(f"1m candles: {len(want):,}; affluent's equal the plain loop's: {same}")
        if not same:
            raise SystemExit("the two sides' candles differ")


if __name__ == "__main__":
    main()
