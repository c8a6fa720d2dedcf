"""A re-keying pipeline for the multi-worker tests: events keyed by id, `key_by` a group, per-group
tumbling windows. As workers, the window reads a repartition topic.

Run as `python rekey_app.py LOG WORKER` (a worker until SIGTERM) or `python rekey_app.py LOG` (alone).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from affluent.core.aggregates import Count, Sum
from affluent.core.log import TopicConfig
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.windows import TumblingWindow

sys.path.insert(0, str(Path(__file__).parent))  # workers_app, beside this file, when collected as a module
from workers_app import Events, serve

N_EVENTS = 12_000
GROUPS = 12
PARTITIONS = 4
END_MS = 1_000 + N_EVENTS * 10 + 86_400_000


def event(i: int) -> Record:
    # in order, up to 200 ms early: never later than the 500 ms grace, whatever partition it is read from
    return Record(value={"id": i, "group": f"g{(i * 5) % GROUPS}", "x": i % 17}, key=f"e{i}", timestamp_ms=1_000 + i * 10 - (i * 37) % 200)


def sentinels() -> list[Record]:
    """Far-future records of every group from every input partition (with Kafka's partitioner too): every window closes."""
    return [Record(value={"id": -1, "group": f"g{g}", "x": 0}, key=f"end-{g}-{i}", timestamp_ms=END_MS) for g in range(GROUPS) for i in range(40)]


def count(state: Any, value: Any, ts: int) -> tuple[Any, list[Any]]:
    n = (state or 0) + 1
    return n, [{"group": value["group"], "n": n}]


def build() -> Pipeline:
    p = Pipeline("rk", commit_interval_ms=50, max_poll_records=300)
    grouped = p.source(Events(N_EVENTS, event, sentinels), topic="rk.events", config=TopicConfig(partitions=PARTITIONS, retention_ms=None)).key_by(
        lambda v: v["group"], name="by-group"
    )
    # a keyed step after the key_by: a running count per group
    grouped.stateful(count, key=lambda v: v["group"], name="count").to_topic("rk.counts", config=TopicConfig(retention_ms=None))
    (
        grouped.window(TumblingWindow(size_ms=1_000, grace_ms=500, idle_ms=None), {"n": Count(), "total": Sum("x")}, name="per-second").to_topic(
            "rk.windows", config=TopicConfig(retention_ms=None)
        )
    )
    return p


if __name__ == "__main__":
    sys.exit(serve(build()))
