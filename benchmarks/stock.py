"""One simulated day of the stock app, end to end: `affluent stock simulate` against a plain-Python loop.

    .venv/bin/python benchmarks/stock.py [--start 2025-03-03] [--end 2025-03-03] [--stores 3] [--period-s 2] [--repeat 1]

Both sides make the same readings (the app's shelf simulator, seed 42, 3 stores x 10 products every
2 s: 1,296,000 readings a day) and end with every alert, restock request and lake row made:
- plain: the simulator's ticks in a loop; each reading's alert counted, the app's `RestockRule` run
  per shelf, the latest reading of each shelf kept in a dict, and the readings written to Parquet, one
  file per UTC hour (columns built from the readings), in memory until then: no log, no checkpoint;
- affluent: what `affluent stock simulate --start S --end E` runs (the same function, in a fresh data
  folder): the simulator appends to the durable log (SQLite), the "stock" pipeline checks the readings
  and writes alerts, restock requests and the serving tables, the "stock-lake" pipeline writes the
  lake, checkpoints included, until everything is read and committed.
Each side runs in a process of its own and is timed from its start to its end (the affluent side's
imports of its pipelines included, not the interpreter's start). Peak RSS is the peak of the summed
resident memory of the side's process and its children (affluent's simulator and lake run in processes
of their own), sampled every 50 ms. The sides' alert and restock counts and lake rows are
compared: they must be equal.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
HOUR_MS = 3_600_000


def settings(a: argparse.Namespace) -> Any:
    from affluent.config import Settings, StockSettings

    stock = StockSettings(seed=a.seed, stores=a.stores, period_s=a.period_s, start=a.start, end=a.end, speed=float("inf"))
    return Settings().model_copy(update={"stock": stock})


# -- the two sides --------------------------------------------------------------------------------------------------
def plain(a: argparse.Namespace, folder: Path) -> dict[str, int]:
    """The readings, alerts and restock requests in a plain loop; the lake as one Parquet file per hour."""
    from affluent.apps.stock.pipeline import simulator_source, store_tz
    from affluent.apps.stock.readings import LAKE_SCHEMA
    from affluent.apps.stock.restock import RestockRule

    cfg = settings(a).stock
    src = simulator_source(cfg)
    assert src.start_ms is not None and src.end_ms is not None
    model = src.model
    model.reset(src.start_ms)
    step = RestockRule(store_tz(cfg)).step
    states: dict[str, Any] = {}
    latest: dict[str, dict[str, Any]] = {}
    readings = alerts = restock = 0
    hour: list[dict[str, Any]] = []
    hour_start = src.start_ms - src.start_ms % HOUR_MS
    (folder / "lake").mkdir(parents=True)

    def write_hour() -> None:
        cols = {f.name: [v.get(f.name) for v in hour] for f in LAKE_SCHEMA}
        cols["lat"] = [v["location"]["lat"] for v in hour]
        cols["lon"] = [v["location"]["lon"] for v in hour]
        cols["ts_ms"] = times
        pq.write_table(pa.Table.from_pydict(cols, schema=LAKE_SCHEMA), folder / "lake" / f"{hour_start}.parquet", compression="zstd")

    times: list[int] = []
    seq, ts = 0, src.start_ms
    while ts < src.end_ms:
        if ts >= hour_start + HOUR_MS:
            write_hour()
            hour, times, hour_start = [], [], ts - ts % HOUR_MS
        for v in model.tick(seq, ts):
            readings += 1
            alerts += v["alert"]
            key = f"{v['store_id']}/{v['product_id']}"
            states[key], out = step(states.get(key), v, ts)
            restock += len(out)
            latest[key] = v
            hour.append(v)
            times.append(ts)
        seq, ts = seq + 1, ts + model.period_ms
    write_hour()
    return {"readings": readings, "alerts": alerts, "restock": restock}


def affluent(a: argparse.Namespace, folder: Path) -> dict[str, int]:
    """`affluent stock simulate` in a fresh data folder; its counts as it prints them."""
    os.chdir(folder)  # the data folder is .affluent/ under the working directory
    from affluent.apps.stock.cli import simulate_command

    simulate_command(start=a.start, end=a.end, seed=a.seed, period_s=a.period_s, stores=a.stores)
    from affluent.apps.stock.pipeline import ALERTS, READINGS, RESTOCK
    from affluent.cli.common import open_configured_log

    log = open_configured_log()
    counts = {name: log.describe_topic(topic).records for name, topic in (("readings", READINGS), ("alerts", ALERTS), ("restock", RESTOCK))}
    log.close()
    return counts


def tree_rss_kb(pid: int) -> int:
    """The resident memory of `pid` and of all its descendants, KiB (0 for a process gone meanwhile)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            own = next((int(line.split()[1]) for line in f if line.startswith("VmRSS")), 0)
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return own + sum(map(tree_rss_kb, children))


class PeakRss:
    """The peak of the summed resident memory of this process and its children (the simulator's and
    the lake's own processes), sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, tree_rss_kb(os.getpid()))

    def stop_mb(self) -> float:
        self._stop.set()
        self._thread.join()
        with open("/proc/self/status") as f:  # this process's own peak, should it fall between two samples
            own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        return max(self.peak_kb, own) / 1024


def side(name: str, a: argparse.Namespace, folder: Path) -> None:
    gc.collect()
    rss = PeakRss()
    t0 = time.perf_counter()
    counts = plain(a, folder) if name == "plain" else affluent(a, folder)
    elapsed = time.perf_counter() - t0
    (folder / "result.json").write_bytes(orjson.dumps({"seconds": elapsed, "rss_mb": rss.stop_mb(), "counts": counts}))


def run_side(name: str, a: argparse.Namespace, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    os.sync()
    args = ["--start", a.start, "--end", a.end, "--seed", str(a.seed), "--stores", str(a.stores), "--period-s", str(a.period_s)]
    out = subprocess.run([sys.executable, __file__, "--side", name, "--folder", str(folder), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    res: dict[str, Any] = orjson.loads((folder / "result.json").read_bytes())
    return res


def lake_rows(folder: Path) -> pa.Table:
    files = sorted(folder.glob("**/*.parquet"))
    return pa.concat_tables([pq.read_table(f, schema=pq.read_schema(f)) for f in files]).sort_by("reading_id")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--start", default="2025-03-03")
    ap.add_argument("--end", default="2025-03-03", help="the last simulated day (included)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--stores", type=int, default=3)
    ap.add_argument("--period-s", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--side", choices=("plain", "affluent"))
    ap.add_argument("--folder", type=Path)
    a = ap.parse_args()
    if a.side:
        side(a.side, a, a.folder)
        return
    with tempfile.TemporaryDirectory(prefix="affluent-stock-bench-") as tmp:
        root = Path(tmp)
        best: dict[str, dict[str, Any]] = {}
        for i in range(a.repeat):
            for name in ("plain", "affluent"):
                res = run_side(name, a, root / f"{name}-{i}")
                print(f"run {i + 1} {name:<9} {res['seconds']:7.1f} s", flush=True)
                if name not in best or res["seconds"] < best[name]["seconds"]:
                    best[name] = res
        n = best["plain"]["counts"]["readings"]
        print(f"{a.start} .. {a.end}: {n:,} readings of {a.stores} stores every {a.period_s:g} s; best of {a.repeat} run(s) each side")
        base = n / best["plain"]["seconds"]
        print(f"{'side':<10} {'readings/s':>12} {'ratio':>7} {'peak RSS':>9}")
        for name in ("plain", "affluent"):
            rate = best[name]["counts"]["readings"] / best[name]["seconds"]
            print(f"{name:<10} {rate:>12,.0f} {rate / base:>6.2f}x {best[name]['rss_mb']:>7.0f} MB")
        same_counts = best["plain"]["counts"] == best["affluent"]["counts"]
        want = lake_rows(root / "plain-0")
        same_lake = lake_rows(root / "affluent-0" / ".affluent" / "lake").select(want.column_names).equals(want)
        print(f"counts {best['affluent']['counts']}; equal to the plain loop's: {same_counts}; lake rows equal: {same_lake}")
        if not (same_counts and same_lake):
            raise SystemExit("the two sides differ")


if __name__ == "__main__":
    main()
