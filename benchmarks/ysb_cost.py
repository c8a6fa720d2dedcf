"""What the YSB query costs per event, in CPU instructions: a measure that does not move with the machine.

    python benchmarks/ysb_cost.py [--events 200000] [--schemaless]

This machine's speed moves by up to 1.7x from one minute to the next, so a change of a few percent in
the reader cannot be seen in seconds. Instructions can: each row runs under valgrind (cachegrind, no
cache simulation) twice, with and without the work, and prints the difference per event. Instructions
are not time (a copy of memory counts far more of them than it takes), but they show where the
work is and whether a change cut it.

Rows, each over the same N events:
- plain Python: the baseline loop of `ysb.py` (orjson.loads per line, dicts, the same watermark rule);
- decode only: the lines decoded as `ysb.py`'s pipeline decodes them (msgspec into the Struct, or orjson
  into dicts, one call per 2,048 lines, no check that each line is one value): the floor for any reader;
- log read: every stored batch read from the embedded log, checked and decoded (one value per line);
- the pipeline, step by step: reading, then `views` (filter), `event-time`, `campaign` (key_by), each
  row ending in a step that drops every record; then the whole query with its window and output.

Needs valgrind (`apt-get install valgrind`). The affluent rows are the reader only: the append of the
same lines runs once, before, in its own process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import orjson
import ysb
from compiled import side_env

if TYPE_CHECKING:
    from affluent import Pipeline

ROWS = {
    "plain": "plain Python (orjson + dicts, same watermark rule)",
    "decode": "decode only (one call per 2,048 lines, no check)",
    "read": "log read: stored batches checked and decoded",
    "drop": "pipeline: read, every record dropped",
    "views": "pipeline: + filter views",
    "event-time": "pipeline: + with_timestamp",
    "campaign": "pipeline: + key_by campaign (lookup)",
    "query": "pipeline: the whole query (+ window, output)",
}


def pipeline(row: str, ads: dict[str, str], typed: bool, name: str) -> Pipeline:
    from affluent import Pipeline, col

    if row == "query":
        return ysb.ysb_pipeline(ads, typed=typed, name=name)
    p = Pipeline(name, commit_interval_ms=200, max_poll_records=50_000)
    s = p.topic("ad-events", schema=ysb.AdEvent if typed else None)
    steps = ["views", "event-time", "campaign"]
    for step in steps[: steps.index(row) + 1] if row in steps else []:
        if step == "views":
            s = s.filter(col("event_type") == "view", name=step)
        elif step == "event-time":
            s = s.with_timestamp(col("event_time"), name=step)
        else:
            s = s.key_by(col("ad_id").lookup(ads), name=step)
    s.filter(lambda v: False, name="drop").to_topic(f"{name}.out")
    return p


def work(row: str, folder: Path, typed: bool, once: bool) -> None:
    """Make ready for the row's work, the same either way, then do it once if `once` (run under valgrind)."""
    from affluent import Runtime, SQLiteLog
    from affluent.core.records import ValueDecoder
    from affluent.core.runtime import tune_process

    tune_process()
    ads = orjson.loads((folder / "ads.json").read_bytes())
    path = folder / "events.jsonl"
    if row == "plain":
        if once:
            with path.open("rb") as f:
                ysb.plain_python(f, ads)
        return
    if row == "decode":
        decode = msgspec.json.Decoder(list[ysb.AdEvent]).decode if typed else orjson.loads
        with path.open("rb") as f:
            arrays = [b"[" + b"".join(lines).replace(b"\n", b",")[:-1] + b"]" for lines in iter(lambda: f.readlines(2048 * 245), [])]
        for array in arrays if once else []:
            decode(array)
        return
    log = SQLiteLog(folder / "log.db")
    if row == "read":
        decoder = ValueDecoder(ysb.AdEvent) if typed else None
        for _ in log.iter_batches("ad-events", 0, 0, max_records=2**62, decoder=decoder) if once else []:
            pass
    else:
        rt = Runtime(log).add(pipeline(row, ads, typed, f"cost-{row}-{os.getpid()}"))
        if once:
            rt.run_to_end()
    log.close()


def instructions(row: str, folder: Path, typed: bool, env: dict[str, str], once: bool) -> int:
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null"]
    cmd += [sys.executable, __file__, "--folder", str(folder), "--row", row]
    cmd += ([] if typed else ["--schemaless"]) + (["--once"] if once else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**env, "PYTHONHASHSEED": "0"})  # the same dict layouts each run
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--schemaless", action="store_true", help="the pipeline decodes into dicts, not a msgspec Struct")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    typed = not args.schemaless
    if args.row:
        work(args.row, Path(args.folder), typed, args.once)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    from affluent import JsonLinesSource, Pipeline, Runtime, SQLiteLog

    folder = Path(tempfile.mkdtemp(prefix="affluent-ysb-cost-"))
    try:
        env = side_env()
        ads = ysb.make_campaigns(args.seed)
        (folder / "ads.json").write_bytes(orjson.dumps(ads))
        ysb.write_events(folder / "events.jsonl", args.events, ads, args.seed)
        log = SQLiteLog(folder / "log.db")
        p = Pipeline("append")
        p.source(JsonLinesSource(folder / "events.jsonl"), topic="ad-events")
        Runtime(log).add(p).run_to_end()
        log.close()
        # once unmeasured, so that the modules it imports are compiled and cached before the first row
        subprocess.run([sys.executable, __file__, "--folder", str(folder), "--row", "plain"], env=env, check=True)
        print(f"{args.events:,} events, {'typed (msgspec Struct)' if typed else 'schemaless (dicts)'}; instructions per event, under valgrind")
        plain = 0.0
        for row, label in ROWS.items():
            per_event = (instructions(row, folder, typed, env, True) - instructions(row, folder, typed, env, False)) / args.events
            plain = plain or per_event
            print(f"{label:<52} {per_event:>8,.0f} {per_event / plain:6.2f}x plain", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
