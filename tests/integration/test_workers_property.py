"""Property: a keyed window's results depend neither on the number of workers nor on how the keys
spread over partitions. Workers here are runtimes in threads of this process, on one embedded log."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affluent.core.aggregates import Count, Sum
from affluent.core.log import TopicConfig, open_log
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sources import Source, SourcePoll
from affluent.core.windows import TumblingWindow
from affluent.testing import read_topic

WINDOW_MS = 1_000
GRACE_MS = 300


class Replay(Source):
    name = "replay"
    mode = "simulator"

    def __init__(self, records: list[Record], chunk: int) -> None:
        self.records, self.chunk, self.pos = records, chunk, 0

    def open(self, position: Any | None) -> None:
        self.pos = int(position or 0)

    def poll(self) -> SourcePoll:
        end = min(self.pos + self.chunk, len(self.records))
        out = self.records[self.pos : end]
        self.pos = end
        return SourcePoll(records=out, position=end, done=end >= len(self.records), wait_s=0.005)


def build(records: list[Record], partitions: int, chunk: int) -> Pipeline:
    p = Pipeline("prop", commit_interval_ms=20, max_poll_records=50)
    (
        p.source(Replay(records, chunk), topic="prop.in", config=TopicConfig(partitions=partitions, retention_ms=None))
        .window(TumblingWindow(size_ms=WINDOW_MS, grace_ms=GRACE_MS, idle_ms=None), {"n": Count(), "total": Sum("x")}, name="w")
        .to_topic("prop.out", config=TopicConfig(retention_ms=None))
    )
    return p


def reference(records: list[Record]) -> dict[tuple[str, int], tuple[int, int]]:
    """Per key: records in order, a window closes when the key's partition watermark passes its end + grace.
    The events below never come later than the grace, so every window but the sentinels' holds them all."""
    out: dict[tuple[str, int], list[int]] = {}
    for r in records:
        if r.value["x"] < 0:
            continue  # a sentinel: its window stays open
        acc = out.setdefault((r.key or "", r.timestamp_ms - r.timestamp_ms % WINDOW_MS), [0, 0])
        acc[0] += 1
        acc[1] += r.value["x"]
    return {k: (n, total) for k, (n, total) in out.items()}


events = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8_000), st.integers(0, 9)), min_size=1, max_size=120)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events, partitions=st.integers(1, 4), workers=st.integers(1, 3), chunk=st.integers(5, 40), prefix=st.sampled_from(["k", "shelf-", "é"]))
def test_window_results_do_not_depend_on_workers_or_partitions(
    tmp_path: Path, events: list[tuple[int, int, int]], partitions: int, workers: int, chunk: int, prefix: str
) -> None:
    # in order per key, up to the grace late across keys: the per-partition watermark never makes one late
    records = [Record(value={"x": x}, key=f"{prefix}{k}", timestamp_ms=10_000 + t) for k, t, x in sorted(events, key=lambda e: e[1])]
    keys = sorted({r.key for r in records if r.key})
    records += [Record(value={"x": -1}, key=k, timestamp_ms=10_000 + 8_000 + 60_000) for k in keys]  # close every window
    want = reference(records)
    url = f"sqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"  # a log of its own for each example
    runtimes = [Runtime(open_log(url), worker=f"w{i}").add(build(records, partitions, chunk)) for i in range(workers)]
    for rt in runtimes:
        rt.start()
    log = open_log(url)
    try:
        deadline = time.monotonic() + 60
        got: dict[tuple[str, int], tuple[int, int]] = {}
        while time.monotonic() < deadline:
            assert not any(rt.errors for rt in runtimes), [rt.errors for rt in runtimes]
            if log.topic_exists("prop.out"):
                got = {(r.key or "", r.value["start_ms"]): (r.value["n"], r.value["total"]) for r in read_topic(log, "prop.out") if r.value["total"] >= 0}
                if len(got) >= len(want):
                    break
            time.sleep(0.05)
    finally:
        for rt in runtimes:
            rt.stop()
        log.close()
    assert got == want
