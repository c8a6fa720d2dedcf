"""Scale-out on one machine: the YSB query alone and with 2 worker processes, embedded log.

    python benchmarks/workers.py --events 1000000 --partitions 4

The events (benchmarks/ysb.py's generator) are appended once, keyed by ad, to a topic of N
partitions, followed by far-future events that close every window. Then, in the same run, the YSB
query (filter views, key_by campaign, 10 s tumbling event-time window, count) runs to the end of
its input in one process alone (`--workers 1`: no repartition topic) and in 2 worker processes
(`--workers 2`: they share the partitions, and the window reads a repartition topic keyed by
campaign), each checkpointing exactly once. The time is from starting the processes to the
window's last input committed, start-up included; counts are checked against plain Python.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))

import ysb

from affluent.core.aggregates import Count
from affluent.core.expr import col
from affluent.core.log import Checkpoint, OutgoingBatch, TopicConfig, open_log
from affluent.core.pipeline import Pipeline
from affluent.core.runtime import Runtime
from affluent.core.windows import TumblingWindow
from affluent.testing import read_topic

END_MS = 1_773_136_800_000 + 86_400_000 * 30


def pipeline(name: str, ads: dict[str, str]) -> Pipeline:
    p = Pipeline(name, commit_interval_ms=200, max_poll_records=50_000)
    (
        p.topic("ad-events", schema=ysb.AdEvent)
        .filter(col("event_type") == "view", name="views")
        .with_timestamp(col("event_time"), name="event-time")
        .key_by(col("ad_id").lookup(ads), name="campaign")
        .window(TumblingWindow(size_ms=ysb.WINDOW_MS, grace_ms=2_500, idle_ms=None), Count(), name="per-campaign")
        .to_topic(f"{name}.counts")
    )
    return p


def worker(url: str, name: str, member: str | None, ads: dict[str, str], stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    rt = Runtime(open_log(url), worker=member).add(pipeline(name, ads))
    rt.start()
    stop.wait()
    rt.stop()


def run(url: str, name: str, workers: int, ads: dict[str, str]) -> float:
    log = open_log(url)
    ends = log.end_offsets("ad-events")
    stop = mp.Event()
    t0 = time.perf_counter()
    members = [None] if workers == 1 else [f"{name}-w{i}" for i in range(workers)]
    procs = [mp.Process(target=worker, args=(url, name, m, ads, stop)) for m in members]
    for p in procs:
        p.start()
    repartition = f"{name}.per-campaign.repartition"
    while True:  # every input read, and (as workers) every repartitioned record read by the window
        if log.committed(name, "ad-events") == ends and (workers == 1 or log.committed(name, repartition) == log.end_offsets(repartition)):
            break
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    stop.set()
    for p in procs:
        p.join(60)
    log.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ads = ysb.make_campaigns(args.seed)
    events = ysb.make_events(args.events, ads, args.seed, 10_000)
    n = len(events)
    reference = ysb.plain_python(events, ads)
    folder = Path(tempfile.mkdtemp(prefix="affluent-workers-"))
    try:
        url = f"sqlite:///{folder / 'log.db'}"
        log = open_log(url)
        log.create_topic("ad-events", TopicConfig(partitions=args.partitions, retention_ms=None))
        keys = [orjson.loads(e)["ad_id"] for e in events]
        t0 = time.perf_counter()
        for i in range(0, n, 20_000):
            part = events[i : i + 20_000]
            log.append("ad-events", OutgoingBatch(keys[i : i + 20_000], part, [1] * len(part), raw=True))
        ingest_s = time.perf_counter() - t0
        # a far-future view of every ad: every input partition moves every campaign's windows past their end
        ends = [orjson.dumps({"ad_id": ad, "event_type": "view", "event_time": END_MS}) for ad in ads]
        log.commit_checkpoint(Checkpoint(appends={"ad-events": OutgoingBatch(list(ads), ends, [1] * len(ends), raw=True)}))
        log.close()
        times = {w: run(url, f"ysb-{w}w", w, ads) for w in (1, 2)}
        log = open_log(url)
        for w in times:
            counts = {(r.key, r.value["start_ms"]): r.value["count"] for r in read_topic(log, f"ysb-{w}w.counts")}
            if counts != reference:
                print(f"MISMATCH with {w} worker(s): {len(set(reference) - set(counts))} windows missing", file=sys.stderr)
                return 1
        log.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{n:,} events in {args.partitions} partitions, keyed by ad; results equal: {len(reference):,} windows, {sum(reference.values()):,} views")
    for w, s in times.items():
        print(f"--workers {w}: query {n / s:10,.0f} events/s ({s:.2f} s), end to end with the append {n / (ingest_s + s):10,.0f} events/s")
    print(f"2 workers against 1: {times[1] / times[2]:.2f}x (query), {(ingest_s + times[1]) / (ingest_s + times[2]):.2f}x (end to end)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
