"""Latency from a source's append to the serving store, embedded, at a steady rate.

    python benchmarks/latency.py --rate 10000 --seconds 20

A producer thread appends sensor readings to the durable log every 10 ms (rate/100 per append),
stamping each with its append time. The runtime runs a pipeline that filters them, keys them by
sensor and upserts the latest reading per sensor into the SQLite serving store, committing
exactly-once checkpoints. Each record's latency is the time from its append to the end of the
serving-store transaction that made it visible (the sink's flush, just before the checkpoint).
Prints p50, p99 and max, after a 2 s warm-up, and the rate actually sustained.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from affluent.core.expr import col
from affluent.core.log import OutgoingBatch, TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import ServingSink


def now_ms() -> float:
    return time.time_ns() / 1e6


class TimedServingSink(ServingSink):
    """The serving sink, noting when each record became visible."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[float] = []
        self.latencies: list[tuple[float, float]] = []  # (append time, latency ms)

    def write(self, records: list[Record]) -> None:
        self.sent.extend(r.value["sent_ms"] for r in records)
        super().write(records)

    def flush(self) -> None:
        super().flush()
        done = now_ms()
        self.latencies.extend((s, done - s) for s in self.sent)
        self.sent.clear()


def produce(log: SQLiteLog, rate: int, seconds: float, stop: threading.Event) -> int:
    per_tick = max(1, rate // 100)
    sent = 0
    start = time.monotonic()
    tick = 0
    while not stop.is_set() and time.monotonic() - start < seconds:
        t = now_ms()
        values = [{"sensor": f"s{(sent + i) % 500}", "value": (sent + i) % 97, "sent_ms": t} for i in range(per_tick)]
        log.append("readings", OutgoingBatch([None] * per_tick, values, [int(t)] * per_tick))
        sent += per_tick
        tick += 1
        delay = start + tick * 0.01 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--commit-interval-ms", type=int, default=50)
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="affluent-latency-"))
    try:
        log = SQLiteLog(folder / "log.db")
        log.create_topic("readings", TopicConfig(retention_ms=None))
        sink = TimedServingSink(folder / "serving.db", "latest", key_columns=["sensor"], columns={"sensor": "VARCHAR", "value": "BIGINT", "sent_ms": "DOUBLE"})
        p = Pipeline("latency", commit_interval_ms=args.commit_interval_ms, poll_interval_ms=5)
        p.topic("readings").filter(col("value") >= 0, name="valid").key_by(col("sensor"), name="by-sensor").to_sink(sink)
        rt = Runtime(log, metrics=Metrics())
        rt.add(p).start()
        stop = threading.Event()
        t0 = time.monotonic()
        sent = produce(log, args.rate, args.seconds, stop)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        rt.stop()
        if rt.errors:
            raise rt.errors[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    warm = min(s for s, _ in sink.latencies) + 2_000 if sink.latencies else 0
    lat = sorted(lt for s, lt in sink.latencies if s >= warm)
    if not lat:
        print("no records reached the serving store", file=sys.stderr)
        return 1

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    print(f"sent {sent:,} events in {elapsed:.1f} s ({sent / elapsed:,.0f}/s); {len(sink.latencies):,} reached the serving store")
    print(f"append -> visible in the serving store (after 2 s warm-up, {len(lat):,} events):")
    print(f"  p50 {pct(0.50):7.1f} ms   p90 {pct(0.90):7.1f} ms   p99 {pct(0.99):7.1f} ms   max {lat[-1]:7.1f} ms")
    return 0 if len(sink.latencies) == sent else 1


if __name__ == "__main__":
    sys.exit(main())
