"""The Yahoo Streaming Benchmark query end to end: a JSON-lines file in, the final windows out.

    python benchmarks/ysb.py --events 1000000 [--repeat 3] [--bytewax-python PATH] [--scale]

Writes N YSB events to a JSON-lines file (user_id, page_id, ad_id, ad_type, event_type, event_time,
ip_address; 100 campaigns x 10 ads; event times up to 2 s out of order), streamed, never all in
memory. Then each side runs in a process of its own, from that same file, and is timed from its
start to its last window written; its peak RSS is its own:

- plain Python: reads the lines, orjson.loads each, keeps views, maps ad to campaign, counts per
  campaign in 10 s event-time windows with the same watermark rule as affluent (a window closes once
  the largest event time seen passes its end plus 2.5 s of grace), in dicts;
- affluent: `JsonLinesSource` appends the lines to the durable embedded log (in a process of its own,
  so on the second core: the peak RSS shown adds that process's), and the pipeline reads them, filters
  views, maps ad to campaign and counts in a 10 s tumbling window, committing outputs, window state
  and input offsets in one transaction per checkpoint (exactly-once). One
  `Runtime.run_to_end()` call: append, query, checkpoints and the final windows all included.
  Typed: the events decode into a msgspec Struct of the three fields read. Schemaless: into dicts.
- affluent append only: the same file into the log, with no pipeline reading it;
- affluent append of Python objects: the events parsed into dicts (not timed), then appended 4,096
  at a time (serialising and the durable append timed);
- Bytewax (a peer), when `--bytewax-python` names a Python with bytewax installed: the same query,
  reading the same file, windows closed by its event clock.

Every side runs with Python's bytecode cache on, affluent compiled first, as after an install
(`compiled.py`). Every side's windows must equal the plain loop's. `--scale` runs plain and affluent (typed) at 100K,
1M and 10M events and prints the cost per event and the peak RSS of each.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from compiled import side_env

if TYPE_CHECKING:
    from affluent import JsonLinesSource, Pipeline
    from affluent.core.log import Log

WINDOW_MS = 10_000
GRACE_MS = 2_500
AD_TYPES = ("banner", "modal", "sponsored-search", "mail", "mobile")
EVENT_TYPES = ("view", "click", "purchase")
START_MS = 1_773_136_800_000

Counts = dict[tuple[str, int], int]


def make_campaigns(seed: int) -> dict[str, str]:
    rnd = random.Random(seed)
    ads: dict[str, str] = {}
    for _ in range(100):
        campaign = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        for _ in range(10):
            ads[str(uuid.UUID(int=rnd.getrandbits(128), version=4))] = campaign
    return ads


def iter_events(n: int, ads: dict[str, str], seed: int, rate_per_s: int = 10_000, chunk: int = 100_000) -> Iterator[list[bytes]]:
    """YSB events as JSON lines (bytes), `chunk` at a time; event_time advances at `rate_per_s` with up to 2 s of jitter."""
    rnd = random.Random(seed)
    ad_ids = list(ads)
    users = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(1000)]
    pages = [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(1000)]
    ips = [f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}" for _ in range(4096)]
    step = 1000 / rate_per_s
    template = '{"user_id":"%s","page_id":"%s","ad_id":"%s","ad_type":"%s","event_type":"%s","event_time":%d,"ip_address":"%s"}'
    for lo in range(0, n, chunk):
        k = min(chunk, n - lo)
        cols = zip(
            rnd.choices(users, k=k),
            rnd.choices(pages, k=k),
            rnd.choices(ad_ids, k=k),
            rnd.choices(AD_TYPES, k=k),
            rnd.choices(EVENT_TYPES, k=k),
            [int(START_MS + (lo + i) * step) - rnd.randrange(2000) for i in range(k)],
            rnd.choices(ips, k=k),
            strict=True,
        )
        yield [(template % c).encode() for c in cols]


def make_events(n: int, ads: dict[str, str], seed: int, rate_per_s: int = 10_000) -> list[bytes]:
    """The same events, in memory (for the benchmarks that append them themselves)."""
    return [e for part in iter_events(n, ads, seed, rate_per_s) for e in part]


def write_events(path: Path, n: int, ads: dict[str, str], seed: int) -> None:
    with path.open("wb") as f:
        for part in iter_events(n, ads, seed):
            f.write(b"\n".join(part) + b"\n")


def plain_python(lines: Iterable[bytes], ads: dict[str, str]) -> Counts:
    """The query as a plain loop, with affluent's watermark rule: the windows it closed, as it closed them."""
    loads = orjson.loads
    open_: dict[int, dict[str, int]] = {}
    closed: Counts = {}
    wm = -(2**63)
    next_close = 2**63  # when the earliest open window closes
    for raw in lines:
        e = loads(raw)
        if e["event_type"] != "view":
            continue
        t = e["event_time"]
        if t > wm:
            wm = t
            if wm >= next_close:
                for start in sorted(s for s in open_ if s + WINDOW_MS + GRACE_MS <= wm):
                    for campaign, n in open_.pop(start).items():
                        closed[(campaign, start)] = n
                next_close = min(open_, default=2**63 - WINDOW_MS - GRACE_MS) + WINDOW_MS + GRACE_MS
        start = t - t % WINDOW_MS
        if start + WINDOW_MS + GRACE_MS <= wm:
            continue  # late: affluent sends it to the late topic
        window = open_.get(start)
        if window is None:
            window = open_[start] = {}
            next_close = min(next_close, start + WINDOW_MS + GRACE_MS)
        campaign = ads[e["ad_id"]]
        window[campaign] = window.get(campaign, 0) + 1
    for start, window in open_.items():  # the end of the input closes the rest
        for campaign, n in window.items():
            closed[(campaign, start)] = n
    return closed


class AdEvent(msgspec.Struct):
    """The fields of a YSB event that the query reads; the others are skipped while decoding."""

    ad_id: str
    event_type: str
    event_time: int


def ysb_pipeline(ads: dict[str, str], *, typed: bool = True, name: str = "ysb", source: JsonLinesSource | None = None) -> Pipeline:
    from affluent import Count, Pipeline, TumblingWindow, col

    p = Pipeline(name, commit_interval_ms=200, max_poll_records=50_000)
    events = p.source(source, topic="ad-events", schema=AdEvent if typed else None) if source else p.topic("ad-events", schema=AdEvent if typed else None)
    (
        events.filter(col("event_type") == "view", name="views")
        .with_timestamp(col("event_time"), name="event-time")
        .key_by(col("ad_id").lookup(ads), name="campaign")
        .window(TumblingWindow(size_ms=WINDOW_MS, grace_ms=GRACE_MS), Count(), name="per-campaign")
        .to_topic(f"{name}.campaign-counts")
    )
    return p


def window_counts(log: Log, name: str) -> Counts:
    from affluent.testing import read_topic

    return {(r.value["key"], r.value["start_ms"]): r.value["count"] for r in read_topic(log, f"{name}.campaign-counts")}


def run_query(log: Log, ads: dict[str, str], *, typed: bool, name: str) -> tuple[float, Counts, int]:
    """The query alone over events already in topic `ad-events`: (seconds, windows, checkpoints)."""
    from affluent import Runtime
    from affluent.core.metrics import Metrics

    metrics = Metrics()
    t0 = time.perf_counter()
    Runtime(log, metrics=metrics).add(ysb_pipeline(ads, typed=typed, name=name)).run_to_end()
    return time.perf_counter() - t0, window_counts(log, name), int(metrics.get("affluent_checkpoints_total"))


# -- one side, in a process of its own ------------------------------------------------------------------------
def side(kind: str, path: Path, ads: dict[str, str], out: Path, timeline: bool = False) -> None:
    """Run one side and write its time, peak RSS and windows to `out` (affluent is imported only here: Bytewax's Python has none)."""
    counts: Counts = {}
    child_rss_mb = 0.0
    folder = Path(tempfile.mkdtemp(prefix="affluent-ysb-"))
    try:
        t0 = time.perf_counter()
        if kind == "plain":
            with path.open("rb") as f:
                counts = plain_python(f, ads)
            elapsed = time.perf_counter() - t0
        elif kind == "objects":
            elapsed = append_objects(path, folder)
        elif kind == "bytewax":
            counts = run_bytewax(path, ads)
            elapsed = time.perf_counter() - t0
        else:
            from affluent import JsonLinesSource, Pipeline, Runtime, SQLiteLog
            from affluent.core.metrics import Metrics

            log = SQLiteLog(folder / "ysb.db")
            if kind == "append":
                p = Pipeline("ysb-append")
                p.source(JsonLinesSource(path), topic="ad-events")
            else:
                p = ysb_pipeline(ads, typed=kind == "typed", source=JsonLinesSource(path))
            rt = Runtime(log, metrics=Metrics()).add(p)
            marks = Marks(rt, t0) if timeline else None
            rt.run_to_end()
            elapsed = time.perf_counter() - t0
            if marks is not None:
                marks.report(kind, elapsed)
            child_rss_mb = sum(getattr(st, "peak_rss_mb", 0.0) for st in rt.source_tasks)  # the file source's own process
            if kind != "append":
                counts = window_counts(log, "ysb")
            log.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rss_mb = peak_rss_mb() + child_rss_mb
    out.write_bytes(orjson.dumps({"seconds": elapsed, "rss_mb": rss_mb, "counts": [[k[0], k[1], n] for k, n in sorted(counts.items())]}))


class Marks:
    """When, from the side's start, the source's first records were appended, its last, and the
    pipeline's last read: which of the two processes the end-to-end time waits for."""

    def __init__(self, rt: Any, t0: float) -> None:
        self.t0 = t0
        self.first_append: float | None = None
        self.last_append: float | None = None
        self.all_read: float | None = None
        self.total = 0
        threading.Thread(target=self._watch, args=(rt,), daemon=True).start()

    def _watch(self, rt: Any) -> None:
        while True:
            now = time.perf_counter() - self.t0
            appended = sum(st.records_out for st in rt.source_tasks)
            if appended and self.first_append is None:
                self.first_append = now
            if rt.source_tasks and all(st.status == "done" for st in rt.source_tasks) and self.last_append is None:
                self.last_append, self.total = now, appended
            if self.total and all(t.records_in >= self.total for t in rt.tasks) and self.all_read is None:
                self.all_read = now
            time.sleep(0.005)

    def report(self, kind: str, elapsed: float) -> None:
        def at(t: float | None) -> str:
            return "-" if t is None else f"{t:.2f} s"

        print(
            f"  {kind}: first records appended at {at(self.first_append)}, last at {at(self.last_append)}; "
            f"all read by the pipeline at {at(self.all_read)}; end (final windows) at {elapsed:.2f} s",
            file=sys.stderr,
        )


def append_objects(path: Path, folder: Path) -> float:
    """Seconds to append the events as Python objects (dicts, 4,096 per append, as a source's poll):
    the parsing of the lines into dicts is not timed, the serialising and the durable append are."""
    from affluent import SQLiteLog
    from affluent.core.log import OutgoingBatch, TopicConfig
    from affluent.core.runtime import tune_process

    tune_process()
    log = SQLiteLog(folder / "objects.db")
    log.create_topic("ad-events", TopicConfig(retention_ms=None))
    timed = 0.0
    with path.open("rb") as f:
        while lines := f.readlines(1 << 20):
            values = [orjson.loads(line) for line in lines]
            for i in range(0, len(values), 4096):
                part = values[i : i + 4096]
                t0 = time.perf_counter()
                log.append("ad-events", OutgoingBatch([None] * len(part), part, [START_MS] * len(part)))
                timed += time.perf_counter() - t0
    log.close()
    return timed


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would count the parent's, inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_bytewax(path: Path, ads: dict[str, str]) -> Counts:
    from datetime import UTC, datetime, timedelta

    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.connectors.files import FileSource
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower
    from bytewax.testing import TestingSink, run_main

    out: list[tuple[str, tuple[int, int]]] = []
    flow = Dataflow("ysb")
    parsed = op.map("parse", op.input("in", flow, FileSource(path, batch_size=1000)), orjson.loads)
    views = op.filter("views", parsed, lambda e: e["event_type"] == "view")
    clock = EventClock(lambda e: datetime.fromtimestamp(e["event_time"] / 1000, UTC), wait_for_system_duration=timedelta(milliseconds=GRACE_MS))
    align = datetime(2020, 1, 1, tzinfo=UTC)
    counts = win.count_window("count", views, clock, TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=align), key=lambda e: ads[e["ad_id"]])
    op.output("out", op.map("flat", counts.down, lambda kv: (kv[0], kv[1])), TestingSink(out))
    run_main(flow)
    base = int(align.timestamp() * 1000)
    result: Counts = {}
    for campaign, (window_id, n) in out:
        k = (campaign, base + window_id * WINDOW_MS)
        result[k] = result.get(k, 0) + n
    return result


def run_side(kind: str, path: Path, ads_path: Path, python: str, folder: Path, env: dict[str, str], timeline: bool = False) -> tuple[float, float, Counts]:
    out = folder / f"{kind}.json"
    os.sync()  # no side waits for the disk to write back what the one before it wrote
    extra = ["--timeline"] if timeline and kind in ("typed", "dicts") else []
    subprocess.run([python, __file__, "--side", kind, "--file", str(path), "--ads", str(ads_path), "--out", str(out), *extra], check=True, env=env)
    r = orjson.loads(out.read_bytes())
    return r["seconds"], r["rss_mb"], {(c, s): n for c, s, n in r["counts"]}


def measure(n: int, args: argparse.Namespace, kinds: list[str]) -> dict[str, tuple[float, float, Counts]]:
    folder = Path(tempfile.mkdtemp(prefix="affluent-ysb-data-"))
    try:
        ads = make_campaigns(args.seed)
        ads_path = folder / "ads.json"
        ads_path.write_text(json.dumps(ads))
        path = folder / "events.jsonl"
        t0 = time.perf_counter()
        write_events(path, n, ads, args.seed)
        print(f"wrote {n:,} events ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
        env = side_env()
        best: dict[str, tuple[float, float, Counts]] = {}
        for _ in range(args.repeat):
            for kind in kinds:
                python = args.bytewax_python if kind == "bytewax" else sys.executable
                got = run_side(kind, path, ads_path, python, folder, env, args.timeline)
                if kind not in best or got[0] < best[kind][0]:
                    best[kind] = got
        return best
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check(best: dict[str, tuple[float, float, Counts]]) -> bool:
    reference = best["plain"][2]
    ok = True
    for kind, (_, _, counts) in best.items():
        if kind in ("plain", "append", "objects") or counts == reference:
            continue
        missing = len(set(reference) - set(counts))
        other = sum(1 for k in reference if k in counts and counts[k] != reference[k])
        print(f"MISMATCH ({kind}): {missing} windows missing, {other} with other counts", file=sys.stderr)
        ok = kind == "bytewax" and ok  # a peer's own window rule is reported, not fatal
    return ok


LABELS = {
    "plain": "plain Python (orjson + dicts, same watermark rule)",
    "typed": "affluent end to end, typed (msgspec Struct)",
    "dicts": "affluent end to end, schemaless (dicts)",
    "bytewax": "Bytewax (peer), same file, no durable log",
    "append": "affluent append only (file -> durable log)",
    "objects": "affluent append of Python dicts (append timed only)",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side; the best is reported")
    ap.add_argument("--bytewax-python", help="a Python with bytewax installed, to run the peer")
    ap.add_argument("--scale", action="store_true", help="plain and affluent (typed) at 100K, 1M and 10M events")
    ap.add_argument("--timeline", action="store_true", help="print when affluent's appends start and end, and when its pipeline has read all")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--ads", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args.side, Path(args.file), json.loads(Path(args.ads).read_text()), Path(args.out), args.timeline)
        return 0

    if args.scale:
        print(f"{'events':>12} {'side':<8} {'events/s':>12} {'us/event':>9} {'peak RSS':>9}")
        for n in (100_000, 1_000_000, 10_000_000):
            best = measure(n, args, ["plain", "typed"])
            if not check(best):
                return 1
            for kind, (secs, rss, _) in best.items():
                print(f"{n:>12,} {kind:<8} {n / secs:>12,.0f} {secs / n * 1e6:>9.2f} {rss:>7.0f} MB", flush=True)
        return 0

    kinds = ["plain", "typed", "dicts", "append", "objects"] + (["bytewax"] if args.bytewax_python else [])
    best = measure(args.events, args, kinds)
    ok = check(best)
    n = args.events
    reference = best["plain"][2]
    print(f"windows: {len(reference):,} campaign windows, {sum(reference.values()):,} views (best of {args.repeat}; each side from the same file)")
    plain_eps = n / best["plain"][0]
    for kind in kinds:
        secs, rss, _ = best[kind]
        eps = n / secs
        print(f"{LABELS[kind]:<52} {eps:>12,.0f} events/s {eps / plain_eps:6.2f}x plain   peak RSS {rss:5.0f} MB")
    if "bytewax" in best:
        print(f"affluent typed / Bytewax: {best['bytewax'][0] / best['typed'][0]:.2f}x   schemaless / Bytewax: {best['bytewax'][0] / best['dicts'][0]:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
