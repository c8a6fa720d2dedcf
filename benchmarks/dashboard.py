"""The dashboard under 50 browser-like SSE clients, with bikes and stock running in `affluent up`.

    python benchmarks/dashboard.py --clients 50 --latency-s 60 --throughput-s 60 --soak-min 3

Each phase starts `affluent up --offline --quiet --port 0` in a fresh folder (the stock simulator
and the bikes recording), as a user does; the clients run in this process, each holding one
`/api/events` stream with the channels of one page (home, bikes or stock, in turn), as a browser tab
does, reading every event.

1. latency: apps at their real pace; every 0.2 s this process appends a low-stock reading to
   `stock.readings` (the log, as a sensor would), stamped with the wall clock; each client that
   shows alerts notes when that reading's alert reaches it. Goal: p99 < 500 ms.
2. throughput: the stock simulator as fast as it goes; the "stock" pipeline's records/s over the
   window, measured with no client, then with the clients connected. Goal: >= 0.9x.
3. memory: an hour of live updates simulated fast: the dashboard polls 20x as often as by default
   (every 10 ms) and the apps run 20x faster, so 3 minutes hold an hour of updates. RSS of `up`
   sampled every 10 s, with no client then with the clients; the slopes of the least-squares lines
   differ by what the clients cost. Goal: flat (they add < 5% of RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from soak import fit, rss_mb, stop, up_command

from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog

PAGES = ["apps,alerts", "apps,bikes.systems,bikes.stations,bikes.minutes,bikes.fleet,bikes.problems", "apps,alerts,stock.restock,stock.stores"]
PROBE = re.compile(r"probe-(\d+)-")


class Up:
    """`affluent up --offline` in a fresh folder, serving on a free port."""

    def __init__(self, env: dict[str, str]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="affluent-dash-"))
        self.out = (self.folder / "up.log").open("wb")
        cmd = [*up_command(), "--port", "0"]
        self.proc = subprocess.Popen(cmd, cwd=self.folder, env={**os.environ, "COLUMNS": "200", **env}, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(rb"dashboard: (http://\S+/)", (self.folder / "up.log").read_bytes())
            if m:
                self.url = m.group(1).decode()
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"up exited: {(self.folder / 'up.log').read_text(errors='replace')}")
            time.sleep(0.1)
        else:
            raise SystemExit("up printed no dashboard URL in 60 s")
        self.db = self.folder / ".affluent" / "affluent.db"

    def stock_records(self) -> tuple[float, int]:
        """(monotonic time, records read by the "stock" pipeline), from the status it publishes every 2 s."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as conn:
            row = conn.execute("SELECT status FROM statuses WHERE name = 'stock'").fetchone()
        return time.monotonic(), (orjson.loads(row[0])["records"] if row else 0)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                apps = httpx.get(self.url + "api/apps", timeout=5).json()
                if all(a["state"] in ("replaying", "simulating") and a["records"] > 0 for a in apps):
                    return
            time.sleep(0.2)
        raise SystemExit("the apps did not start in 60 s")

    def close(self) -> None:
        stop(self.proc)  # type: ignore[arg-type]
        self.out.close()


async def client(url: str, channels: str, lat: list[float], stats: dict[str, int], stop_at: float) -> None:
    """One browser tab: an EventSource on `channels`, reading every event until `stop_at`."""
    async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", f"{url}api/events", params={"channels": channels}) as resp:
        event = None
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                stats["events"] += 1
                stats["bytes"] += len(line)
                if event == "alerts":
                    received = time.time()
                    for item in orjson.loads(line[6:])["data"]["items"]:
                        m = PROBE.search(item["title"])
                        if m:
                            lat.append(received * 1000 - int(m.group(1)) / 1000)
            if time.monotonic() > stop_at:
                return


def probe_reading(sent_ns: int) -> dict[str, Any]:
    store = f"probe-{sent_ns // 1000}-{uuid.uuid4().hex[:4]}"
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return {
        "sensor_id": "shelf-probe",
        "timestamp": stamp,
        "product_id": "parapluie",
        "quantity": 0,
        "threshold": 3,
        "location": {"store": store, "lat": 47.2, "lon": -1.55},
        "alert": True,
        "store_id": store,
        "reading_id": f"probe-{uuid.uuid4().hex}",
    }


async def probes(db: Path, every_s: float, stop_at: float) -> int:
    log = SQLiteLog(db)
    sent = 0
    try:
        while time.monotonic() < stop_at:
            t = time.time_ns()
            v = probe_reading(t)
            await asyncio.to_thread(log.append, "stock.readings", [Record(value=v, key=f"{v['store_id']}/parapluie", timestamp_ms=t // 1_000_000)])
            sent += 1
            await asyncio.sleep(every_s)
    finally:
        log.close()
    return sent


async def run_clients(url: str, n: int, seconds: float, *, db: Path | None = None) -> tuple[list[float], dict[str, int], int]:
    lat: list[float] = []
    stats = {"events": 0, "bytes": 0}
    stop_at = time.monotonic() + seconds
    tasks = [asyncio.create_task(client(url, PAGES[i % len(PAGES)], lat, stats, stop_at)) for i in range(n)]
    await asyncio.sleep(2)  # every tab connected, its snapshots read
    sent = await probes(db, 0.2, stop_at) if db is not None else 0
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return lat, stats, sent


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def latency(args: argparse.Namespace) -> bool:
    up = Up({})
    try:
        up.wait_ready()
        lat, stats, sent = asyncio.run(run_clients(up.url, args.clients, args.latency_s, db=up.db))
    finally:
        up.close()
    alert_tabs = sum(1 for i in range(args.clients) if "alerts" in PAGES[i % len(PAGES)])
    print(f"latency, append -> event at the client: {sent} readings appended at 5/s, {len(lat):,} deliveries to {alert_tabs} alert tabs (of {args.clients})")
    print(f"  p50 {pct(lat, 0.5):.0f} ms, p90 {pct(lat, 0.9):.0f} ms, p99 {pct(lat, 0.99):.0f} ms, max {max(lat):.0f} ms, mean {statistics.mean(lat):.0f} ms")
    print(f"  {stats['events']:,} events, {stats['bytes'] / 1e6:.1f} MB sent to all clients in {args.latency_s:g} s")
    missing = sent * alert_tabs - len(lat)
    print(f"  deliveries missing: {missing} (readings appended in the last second may still be on their way)")
    ok = pct(lat, 0.99) < 500
    print(f"  goal p99 < 500 ms: {'met' if ok else 'NOT met'}")
    return ok


def throughput_once(args: argparse.Namespace, clients: int) -> float:
    # the same input in both runs: one seed, one start
    env = {"AFFLUENT__STOCK__SPEED": "inf", "AFFLUENT__STOCK__START": "2020-01-01", "AFFLUENT__STOCK__STORES": "20", "AFFLUENT__STOCK__SEED": "7"}
    up = Up(env)
    try:
        up.wait_ready()
        time.sleep(5)  # warm up
        t0, n0 = up.stock_records()
        if clients:
            asyncio.run(run_clients(up.url, clients, args.throughput_s))
        else:
            time.sleep(args.throughput_s)
        t1, n1 = up.stock_records()
    finally:
        up.close()
    return (n1 - n0) / (t1 - t0)


def throughput(args: argparse.Namespace) -> bool:
    alone = throughput_once(args, 0)
    watched = throughput_once(args, args.clients)
    ratio = watched / alone
    print(f"throughput of the stock app, simulator at full speed, {args.throughput_s:g} s windows (end to end: appends and checkpoints included):")
    print(f"  no client: {alone:,.0f} readings/s; {args.clients} clients: {watched:,.0f} readings/s; ratio {ratio:.2f}x")
    ok = ratio >= 0.9
    print(f"  goal >= 0.9x: {'met' if ok else 'NOT met'}")
    return ok


def soak(args: argparse.Namespace, clients: int) -> tuple[list[tuple[float, float]], float, float]:
    """RSS samples of `up` over `--soak-min` minutes at 20x, and the least-squares line's (start, slope) after warm-up."""
    env = {"AFFLUENT__WEB__LIVE_INTERVAL_S": "0.01", "AFFLUENT__STOCK__SPEED": "20", "AFFLUENT__BIKES__REPLAY_SPEED": "20"}
    up = Up(env)
    samples: list[tuple[float, float]] = []
    seconds = args.soak_min * 60

    async def sample(stop_at: float) -> None:
        started = time.monotonic()
        while time.monotonic() < stop_at:
            await asyncio.sleep(10)
            samples.append(((time.monotonic() - started) / 60, rss_mb(up.proc.pid)[0]))

    async def both() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(run_clients(up.url, clients, seconds, db=up.db), sample(stop_at))

    try:
        up.wait_ready()
        asyncio.run(both())
    finally:
        up.close()
    window = [x for x in samples if x[0] >= args.soak_min / 3]  # after warm-up
    a, b = fit(window)
    return samples, a + b * window[0][0], b


def memory(args: argparse.Namespace) -> bool:
    """The same soak without clients, then with them: what the clients add is the slope's difference."""
    print(f"memory of `up`, {args.soak_min:g} min at 20x (about {args.soak_min * 20 / 60:.1f} h of updates), polled every 10 ms:")
    slopes = {}
    for clients in (0, args.clients):
        samples, start, slope = soak(args, clients)
        slopes[clients] = slope
        print(f"  {clients} clients: RSS (min:MB) " + " ".join(f"{m:.1f}:{r:.0f}" for m, r in samples))
        print(f"  {clients} clients: least-squares line from {start:.1f} MB, slope {slope:+.2f} MB/min")
    extra = slopes[args.clients] - slopes[0]
    hour = extra * args.soak_min  # the clients' share of the growth over the simulated hour(s)
    print(f"  the clients add {extra:+.2f} MB/min, {hour:+.1f} MB over the run; the rest grows as much with no client (the apps at 20x, the polling)")
    ok = hour < 0.05 * 150
    print(f"  goal flat (the clients add < 5% of RSS): {'met' if ok else 'NOT met'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--latency-s", type=float, default=60)
    ap.add_argument("--throughput-s", type=float, default=60)
    ap.add_argument("--soak-min", type=float, default=3)
    ap.add_argument("--only", choices=["latency", "throughput", "memory"])
    args = ap.parse_args()
    phases = {"latency": latency, "throughput": throughput, "memory": memory}
    results = {name: fn(args) for name, fn in phases.items() if args.only in (None, name)}
    return 0 if all(results.values()) else 2


if __name__ == "__main__":
    sys.exit(main())
