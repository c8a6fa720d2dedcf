"""A pipeline process for the exactly-once test: a deterministic source feeding a windowed pipeline.

Run as `python eo_worker.py LOG [CHUNK]`, LOG a SQLite file or a log URL (kafka://…). It appends N generated events through a source (position
saved with the appends), processes them (dedupe, bad records to the DLQ, tumbling windows, late
records), and exits 0 once everything is processed and the last windows are closed. The test
kills it with SIGKILL at random moments and starts it again.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from affluent.core.aggregates import Count, Max, Sum
from affluent.core.log import TopicConfig, open_log
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask, SourceTask
from affluent.core.sources import Source, SourcePoll
from affluent.core.windows import TumblingWindow

N_EVENTS = 12_000
KEYS = 12


def event(i: int) -> dict[str, Any]:
    """Event i: mostly in order, some jitter, a few very late ones, duplicates and bad records."""
    rnd = random.Random(i)
    if i % 997 == 13:
        return {"id": f"e{i}", "key": f"k{i % KEYS}", "amount": "not-a-number", "t": 1_000 + i * 10}
    j = i - 1 if i % 101 == 50 else i  # a re-sent event: same id, same content
    r = random.Random(j)
    t = 1_000 + j * 10 - r.randrange(300)
    if j % 211 == 7:
        t -= 5_000  # far behind: its window has closed, it goes to the late output
    return {"id": f"e{j}", "key": f"k{r.randrange(KEYS)}", "amount": r.randrange(1, 100), "t": t} if rnd else {}


class EventSource(Source):
    name = "events"
    mode = "simulator"

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.pos = 0

    def open(self, position: Any | None) -> None:
        self.pos = int(position or 0)

    def poll(self) -> SourcePoll:
        end = min(self.pos + self.chunk, N_EVENTS)
        recs = [Record(value=event(i), key=None, timestamp_ms=event(i)["t"]) for i in range(self.pos, end)]
        self.pos = end
        return SourcePoll(records=recs, position=end, done=end >= N_EVENTS)


def build(chunk: int) -> Pipeline:
    p = Pipeline("eo", commit_interval_ms=0, max_poll_records=300)
    (
        p.source(EventSource(chunk), topic="eo.events", config=TopicConfig(retention_ms=None))
        .dedupe(name="dedupe", key=lambda v: v["id"], ttl_ms=60_000)
        .key_by(lambda v: v["key"], name="by-key")
        .map(lambda v: {**v, "amount": int(v["amount"])}, name="parse-amount")
        .window(TumblingWindow(size_ms=1_000, grace_ms=500, idle_ms=None), {"n": Count(), "total": Sum("amount"), "top": Max("amount")}, name="per-second")
        .to_topic("eo.windows", config=TopicConfig(retention_ms=None))
    )
    return p


def main() -> int:
    where = sys.argv[1]
    log = open_log(where if "://" in where else f"sqlite:///{where}")
    chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 97
    p = build(chunk)
    metrics = Metrics()
    task = PipelineTask(p, log, metrics=metrics)
    task.open()
    # the source appends under the pipeline's lease: with its position, in one transaction
    source = SourceTask(p.sources[0], log, metrics=metrics, lease=(p.name, task.owner))
    source.open()
    done = False
    loops = 0
    while True:
        if not done:
            _, done = source.poll_once()
        n = task.poll_once()
        task.commit()
        if done and n == 0:
            break
        loops += 1
        print(loops, flush=True)  # progress, so that the test can kill at any stage of a run
        time.sleep(0.002)
    task.finish()
    task.close()
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
