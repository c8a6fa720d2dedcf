"""The Yahoo Streaming Benchmark query, through affluent's durable log, against plain Python.

    python benchmarks/ysb.py --events 1000000

Generates YSB events (JSON: user_id, page_id, ad_id, ad_type, event_type, event_time, ip_address;
100 campaigns x 10 ads; event times up to 2 s out of order), then in the same run:

1. plain Python: orjson.loads each event, keep views, map ad to campaign, count per campaign per
   10 s event-time window, in a dict;
2. affluent: the events are appended to a topic of the embedded SQLite log, and a pipeline reads
   them back, filters views, maps ad to campaign, counts per campaign in a 10 s tumbling
   event-time window, and commits outputs, window state and input offsets in one transaction
   per checkpoint (exactly-once).

It checks that both give the same counts and prints events/s for both and their ratio. The query
figure is log -> windows -> committed output; append (ingest) is timed and printed separately.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import msgspec
import orjson

from affluent.core.aggregates import Count
from affluent.core.expr import col
from affluent.core.log import Log, OutgoingBatch, TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.runtime import PipelineTask
from affluent.core.sqlite_log import SQLiteLog
from affluent.core.windows import TumblingWindow
from affluent.testing import read_topic

WINDOW_MS = 10_000
AD_TYPES = ("banner", "modal", "sponsored-search", "mail", "mobile")
EVENT_TYPES = ("view", "click", "purchase")


def make_campaigns(seed: int) -> dict[str, str]:
    rnd = random.Random(seed)
    ads: dict[str, str] = {}
    for _ in range(100):
        campaign = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        for _ in range(10):
            ads[str(uuid.UUID(int=rnd.getrandbits(128), version=4))] = campaign
    return ads


def make_events(n: int, ads: dict[str, str], seed: int, rate_per_s: int) -> list[bytes]:
    """YSB events as JSON bytes; event_time advances at `rate_per_s` with up to 2 s of jitter."""
    rnd = random.Random(seed)
    ad_ids = list(ads)
    users = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(1000)]
    pages = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(1000)]
    start = 1_773_136_800_000
    step = 1000 / rate_per_s
    dumps = orjson.dumps
    out = []
    for i in range(n):
        out.append(
            dumps(
                {
                    "user_id": rnd.choice(users),
                    "page_id": rnd.choice(pages),
                    "ad_id": rnd.choice(ad_ids),
                    "ad_type": rnd.choice(AD_TYPES),
                    "event_type": rnd.choice(EVENT_TYPES),
                    "event_time": int(start + i * step) - rnd.randrange(2000),
                    "ip_address": f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}",
                }
            )
        )
    return out


def plain_python(events: list[bytes], ads: dict[str, str]) -> dict[tuple[str, int], int]:
    loads = orjson.loads
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for raw in events:
        e = loads(raw)
        if e["event_type"] != "view":
            continue
        t = e["event_time"]
        counts[(ads[e["ad_id"]], t - t % WINDOW_MS)] += 1
    return dict(counts)


class AdEvent(msgspec.Struct):
    """The fields of a YSB event that the query reads; the others are skipped while decoding."""

    ad_id: str
    event_type: str
    event_time: int


def run_bytewax(events: list[bytes], ads: dict[str, str]) -> tuple[float, dict[tuple[str, int], int]] | None:
    """The same query in Bytewax (a peer), over the same events held in memory; None if not installed."""
    try:
        import bytewax.operators as op
        import bytewax.operators.windowing as win
        from bytewax.dataflow import Dataflow
        from bytewax.operators.windowing import EventClock, TumblingWindower
        from bytewax.testing import TestingSink, TestingSource, run_main
    except ImportError:
        return None
    from datetime import UTC, datetime, timedelta

    out: list[tuple[str, tuple[int, int]]] = []
    flow = Dataflow("ysb")
    parsed = op.map("parse", op.input("in", flow, TestingSource(events, batch_size=1000)), orjson.loads)
    views = op.filter("views", parsed, lambda e: e["event_type"] == "view")
    clock = EventClock(lambda e: datetime.fromtimestamp(e["event_time"] / 1000, UTC), wait_for_system_duration=timedelta(seconds=2.5))
    windower = TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=datetime(2020, 1, 1, tzinfo=UTC))
    counts = win.count_window("count", views, clock, windower, key=lambda e: ads[e["ad_id"]])
    op.output("out", op.map("flat", counts.down, lambda kv: (kv[0], kv[1])), TestingSink(out))
    t0 = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - t0
    align = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1000)
    result: dict[tuple[str, int], int] = {}
    for campaign, (window_id, n) in out:
        result[(campaign, align + window_id * WINDOW_MS)] = result.get((campaign, align + window_id * WINDOW_MS), 0) + n
    return elapsed, result


def ysb_pipeline(ads: dict[str, str], *, typed: bool = True, name: str = "ysb") -> Pipeline:
    p = Pipeline(name, commit_interval_ms=200, max_poll_records=50_000)
    (
        p.topic("ad-events", schema=AdEvent if typed else None)
        .filter(col("event_type") == "view", name="views")
        .with_timestamp(col("event_time"), name="event-time")
        .key_by(col("ad_id").lookup(ads), name="campaign")
        .window(TumblingWindow(size_ms=WINDOW_MS, grace_ms=2_500), Count(), name="per-campaign")
        .to_topic(f"{name}.campaign-counts")
    )
    return p


def ingest(events: list[bytes], log: SQLiteLog) -> float:
    log.create_topic("ad-events", TopicConfig(retention_ms=None))
    t0 = time.perf_counter()
    chunk = 8192
    for i in range(0, len(events), chunk):
        part = events[i : i + chunk]
        log.append("ad-events", OutgoingBatch([None] * len(part), part, [0] * len(part), raw=True))
    return time.perf_counter() - t0


def run_query(log: Log, ads: dict[str, str], *, typed: bool, name: str) -> tuple[float, dict[tuple[str, int], int], int]:
    task = PipelineTask(ysb_pipeline(ads, typed=typed, name=name), log, metrics=Metrics())
    task.open()
    gc.collect()
    t0 = time.perf_counter()
    task.drain()
    task.finish()
    query_s = time.perf_counter() - t0
    checkpoints = int(task.metrics.get("affluent_checkpoints_total"))
    task.close()
    counts = {(r.value["key"], r.value["start_ms"]): r.value["count"] for r in read_topic(log, f"{name}.campaign-counts")}
    return query_s, counts, checkpoints


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=10_000, help="event-time rate of the generated stream, events/s")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; the best is reported")
    args = ap.parse_args()

    ads = make_campaigns(args.seed)
    t0 = time.perf_counter()
    events = make_events(args.events, ads, args.seed, args.rate)
    print(f"generated {len(events):,} events in {time.perf_counter() - t0:.1f} s")

    results: dict[str, list[float]] = {"plain": [], "typed": [], "dicts": [], "ingest": []}
    checkpoints = 0
    for run in range(args.repeat):
        gc.collect()
        t0 = time.perf_counter()
        reference = plain_python(events, ads)
        results["plain"].append(time.perf_counter() - t0)
        folder = Path(tempfile.mkdtemp(prefix="affluent-ysb-"))
        try:
            log = SQLiteLog(folder / "ysb.db")
            results["ingest"].append(ingest(events, log))
            for mode in ("typed", "dicts"):
                query_s, counts, checkpoints = run_query(log, ads, typed=mode == "typed", name=f"ysb-{mode}-{run}")
                results[mode].append(query_s)
                if counts != reference:
                    missing = set(reference) - set(counts)
                    wrong = [k for k in reference if k in counts and counts[k] != reference[k]]
                    print(f"MISMATCH ({mode}): {len(missing)} windows missing, {len(wrong)} with other counts", file=sys.stderr)
                    return 1
            log.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    peer = run_bytewax(events, ads)
    n = len(events)
    eps = {k: n / min(v) for k, v in results.items()}
    print(f"results equal: {len(reference):,} campaign windows, {sum(reference.values()):,} views counted (best of {args.repeat})")
    print(f"plain Python (orjson + dict loop)               {eps['plain']:12,.0f} events/s")
    print(f"affluent query, typed events (msgspec Struct)   {eps['typed']:12,.0f} events/s   {eps['typed'] / eps['plain']:5.2f}x plain")
    print(f"affluent query, schemaless dicts (orjson)       {eps['dicts']:12,.0f} events/s   {eps['dicts'] / eps['plain']:5.2f}x plain")
    print(f"  (query = read the durable log -> filter -> campaign -> 10 s window -> committed output; {checkpoints} exactly-once checkpoints)")
    if peer is None:
        print("Bytewax (peer)                                  not installed: pip install bytewax")
    else:
        same = "same counts" if peer[1] == reference else "OTHER COUNTS"
        print(f"Bytewax 0.21 (peer, in-memory input, no log)    {n / peer[0]:12,.0f} events/s   {n / peer[0] / eps['plain']:5.2f}x plain, {same}")
    print(f"affluent ingest (append to the durable log)     {eps['ingest']:12,.0f} events/s")
    print(f"affluent end to end, typed (ingest + query)     {n / (min(results['ingest']) + min(results['typed'])):12,.0f} events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
