"""The crypto forecast (apps/crypto/forecast.py) against the naive "last value" forecast, by rolling origin.

    python benchmarks/forecast.py                                   # two seeded simulated series
    python benchmarks/forecast.py --csv prices.csv --column close   # and a CSV of real hourly prices

At each origin (every `--step` hours) every model is fitted on the `--window` hours before it (168: a
week, what CoinGecko's sparkline gives the app) and forecasts the next `--hours` hours (24), which are
compared with the actual values: MAE (price units), MAPE (%), at every horizon and at 1 h and 24 h,
and the share of actual values inside the model's `--level` band (coverage) and the band's mean
width (% of the price). Models:

- naive: the last value; its band is the random walk's, exp(log y_n ± z σ √h), σ the RMS of the
  window's hourly log returns;
- drift: the last value plus the window's mean log return per hour (random walk with drift), same band;
- model: `forecast()`, damped-trend Holt on log prices (its MODEL string is printed).

"better/worse" are the shares of origins where a model's MAPE over the 24 hours is lower/higher than
naive's (the rest are ties: the local level with α = 1 is the naive forecast), and "Δ MAPE" the mean
per-origin difference model - naive with ±2 standard errors (origins 24 h apart
do not overlap, but neighbouring ones are not independent either: read it as a rough guide).

Simulated series (seeded, `--seed`): hourly log returns with volatility clustering (GARCH(1,1):
σ²_t = ω + a r²_{t-1} + b σ²_{t-1}, a = 0.08, b = 0.90, long-run σ 0.7 % an hour), without drift and with
a drift of +0.03 % an hour (+0.7 % a day). A CSV's rows are taken in file order, or sorted by
`--time-column` (ISO times, epoch seconds or ms, or `--time-format` for strptime); lines before the
header (a banner) are skipped.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

from affluent.apps.crypto.forecast import MODEL, forecast

Forecaster = Callable[[Sequence[float], int, float], list[dict[str, Any]]]


def random_walk_forecast(prices: Sequence[float], hours: int, level: float, *, drift: bool) -> list[dict[str, Any]]:
    logs = [math.log(p) for p in prices]
    steps = [b - a for a, b in itertools.pairwise(logs)]
    mu = statistics.fmean(steps) if drift else 0.0
    sigma = math.sqrt(statistics.fmean([(s - mu) ** 2 for s in steps]))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = []
    for h in range(1, hours + 1):
        mid = logs[-1] + mu * h
        half = z * sigma * math.sqrt(h)
        out.append({"price": math.exp(mid), "low": math.exp(mid - half), "high": math.exp(mid + half)})
    return out


MODELS: dict[str, Forecaster] = {
    "naive": lambda p, h, lv: random_walk_forecast(p, h, lv, drift=False),
    "drift": lambda p, h, lv: random_walk_forecast(p, h, lv, drift=True),
    "model": lambda p, h, lv: forecast(p, 0, hours=h, level=lv),
}


def garch_series(rng: random.Random, n: int, *, drift: float = 0.0, start: float = 30_000.0) -> list[float]:
    a, b, sigma = 0.08, 0.90, 0.007
    omega = sigma**2 * (1 - a - b)
    var, r, log_p = sigma**2, 0.0, math.log(start)
    out = []
    for _ in range(n):
        var = omega + a * r * r + b * var
        r = rng.gauss(0.0, math.sqrt(var))
        log_p += drift + r
        out.append(math.exp(log_p))
    return out


def _time_key(text: str, fmt: str | None) -> float:
    if fmt:
        return datetime.strptime(text, fmt).timestamp()
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def read_csv(path: Path, column: str, time_column: str | None, time_format: str | None) -> list[float]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if column in next(csv.reader([line]), [])), None)
    if start is None:
        raise SystemExit(f"no header with column {column!r} in {path}")
    rows = list(csv.DictReader(lines[start:]))
    if time_column:
        rows.sort(key=lambda r: _time_key(r[time_column], time_format))
        times = [_time_key(r[time_column], time_format) for r in rows]
        steps = [b - a for a, b in itertools.pairwise(times)]
        off = sum(1 for s in steps if s != 3600)
        print(f"{path.name}: {len(rows):,} rows, {rows[0][time_column]} .. {rows[-1][time_column]}, {off} steps of other than 1 h", file=sys.stderr)
    return [float(r[column]) for r in rows if r[column] not in ("", "NaN", "nan")]


def evaluate(prices: Sequence[float], *, window: int, hours: int, step: int, level: float) -> dict[str, dict[str, Any]]:
    acc: dict[str, dict[str, Any]] = {
        name: {"ae": [], "ape": [], "ape1": [], "apeH": [], "inside": 0, "insideH": 0, "width": [], "origin_mape": [], "s": 0.0} for name in MODELS
    }
    origins = range(window, len(prices) - hours + 1, step)
    for o in origins:
        fit_on, actual = prices[o - window : o], prices[o : o + hours]
        for name, model in MODELS.items():
            t0 = time.perf_counter()
            fc = model(fit_on, hours, level)
            a = acc[name]
            a["s"] += time.perf_counter() - t0
            apes = []
            for h, (f, y) in enumerate(zip(fc, actual, strict=True), start=1):
                err = abs(f["price"] - y)
                a["ae"].append(err)
                apes.append(100 * err / y)
                a["width"].append(100 * (f["high"] - f["low"]) / f["price"])
                inside = f["low"] <= y <= f["high"]
                a["inside"] += inside
                if h == 1:
                    a["ape1"].append(apes[-1])
                if h == hours:
                    a["apeH"].append(apes[-1])
                    a["insideH"] += inside
            a["ape"] += apes
            a["origin_mape"].append(statistics.fmean(apes))
    n = len(origins)
    out = {}
    for name, a in acc.items():
        out[name] = {
            "origins": n,
            "mae": statistics.fmean(a["ae"]),
            "mape": statistics.fmean(a["ape"]),
            "mape1": statistics.fmean(a["ape1"]),
            "mapeH": statistics.fmean(a["apeH"]),
            "coverage": a["inside"] / len(a["ae"]),
            "coverageH": a["insideH"] / n,
            "width": statistics.fmean(a["width"]),
            "ms": 1000 * a["s"] / n,
            "origin_mape": a["origin_mape"],
        }
    base = out["naive"]["origin_mape"]
    for r in out.values():
        diffs = [m - b for m, b in zip(r["origin_mape"], base, strict=True)]
        r["better"] = sum(d < -1e-9 for d in diffs) / n
        r["worse"] = sum(d > 1e-9 for d in diffs) / n
        r["dmape"] = statistics.fmean(diffs)
        r["dmape_2se"] = 2 * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
    return out


def print_table(title: str, res: dict[str, dict[str, Any]], hours: int, level: float) -> None:
    naive = res["naive"]
    print(f"\n{title}: {naive['origins']} origins, {hours} h ahead, band {level:.0%}")
    head = f"{'model':<6} {'MAE':>11} {'MAPE %':>7} {'@1h':>6} {f'@{hours}h':>6} {'MAE/naive':>9} {'MAPE/naive':>10}"
    head += f" {'coverage':>8} {f'cov@{hours}h':>8} {'width %':>7} {'better/worse':>12} {'Δ MAPE ± 2se':>16} {'ms/fc':>6}"
    print(head)
    for name, r in res.items():
        ratios = f"{r['mae'] / naive['mae']:>9.3f} {r['mape'] / naive['mape']:>10.3f}"
        versus = f"{r['better']:.0%}/{r['worse']:.0%}"
        print(
            f"{name:<6} {r['mae']:>11.4g} {r['mape']:>7.3f} {r['mape1']:>6.3f} {r['mapeH']:>6.3f} {ratios}"
            f" {r['coverage']:>8.3f} {r['coverageH']:>8.3f} {r['width']:>7.2f} {versus:>12} {r['dmape']:>+8.3f} ± {r['dmape_2se']:<5.3f} {r['ms']:>6.2f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=168, help="hours each fit sees (default 168)")
    ap.add_argument("--hours", type=int, default=24, help="hours forecast (default 24)")
    ap.add_argument("--step", type=int, default=24, help="hours between origins (default 24)")
    ap.add_argument("--level", type=float, default=0.9, help="band level (default 0.9)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--length", type=int, default=24 * 365, help="hours of each simulated series (default a year)")
    ap.add_argument("--csv", type=Path, help="a CSV of real prices, one row an hour")
    ap.add_argument("--column", default="close", help="its price column (default close)")
    ap.add_argument("--time-column", help="sort the rows by this column")
    ap.add_argument("--time-format", help="strptime format of the time column (default: ISO or epoch)")
    ap.add_argument("--no-sim", action="store_true", help="only the CSV")
    args = ap.parse_args()
    print(f"model: {MODEL}; window {args.window} h, forecast {args.hours} h, origins every {args.step} h")
    series: list[tuple[str, list[float]]] = []
    if not args.no_sim:
        series.append((f"simulated GARCH walk, no drift, seed {args.seed}", garch_series(random.Random(args.seed), args.length)))
        series.append((f"simulated GARCH walk, drift +0.03 %/h, seed {args.seed}", garch_series(random.Random(args.seed + 1), args.length, drift=0.0003)))
    if args.csv:
        series.append((f"{args.csv.name} column {args.column}", read_csv(args.csv, args.column, args.time_column, args.time_format)))
    for title, prices in series:
        print_table(title, evaluate(prices, window=args.window, hours=args.hours, step=args.step, level=args.level), args.hours, args.level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
