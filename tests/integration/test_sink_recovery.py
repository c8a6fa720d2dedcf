"""Sinks outside the log stay exactly-once through transient errors, bad rows and fenced zombies."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from affluent.core.errors import FencedError, TransientError
from affluent.core.log import TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask, SourceTask
from affluent.core.sinks import Sink
from affluent.core.sources import Source, SourcePoll
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.lake import ParquetLakeSink
from affluent.testing import read_topic


def lake_rows(root: Path, dataset: str = "ds") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in sorted((root / dataset).glob("date=*/hour=*/*.parquet")):
        out += pq.read_table(f).to_pylist()
    return out


class FailsOnce(Sink):
    name = "fails-once"

    def __init__(self) -> None:
        self.failed = False

    def write(self, records: list[Record]) -> None:
        if not self.failed:
            self.failed = True
            raise TransientError("the serving store timed out")


def test_a_transient_error_does_not_duplicate_lake_rows(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in")
    log.append("in", [Record({"n": i}) for i in range(3)])
    p = Pipeline("p")
    s = p.topic("in")
    s.to_sink(ParquetLakeSink(tmp_path / "lake", "ds"))
    s.to_sink(FailsOnce())
    PipelineTask(p, log, metrics=Metrics()).run(threading.Event(), until=lambda t: t.records_in >= 3)
    assert sorted(r["n"] for r in lake_rows(tmp_path / "lake")) == [0, 1, 2]


def test_a_lake_row_of_the_wrong_type_is_a_dead_letter_not_a_crash_loop(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in")
    log.append("in", [Record({"a": 1}), Record({"a": 2}), Record({"a": "x"}), Record({"a": 3})])
    p = Pipeline("p")
    p.topic("in").to_sink(ParquetLakeSink(tmp_path / "lake", "ds"))
    task = PipelineTask(p, log, metrics=Metrics())
    task.open()
    task.drain()
    task.close()
    assert sorted(r["a"] for r in lake_rows(tmp_path / "lake")) == [1, 2, 3]  # once each: no partial write twice
    (dead,) = read_topic(log, "p.dlq")
    assert dead.value["offset"] == 2 and "schema" in dead.value["error"]
    assert log.committed("p", "in") == {0: 4}


def test_a_fenced_process_writes_nothing_outside_the_log(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in")

    def build() -> Pipeline:
        p = Pipeline("f")
        p.topic("in").to_sink(ParquetLakeSink(tmp_path / "lake", "ds"))
        return p

    a = PipelineTask(build(), log, metrics=Metrics())
    a.open()
    log.append("in", [Record({"n": i}) for i in range(3)])
    a.poll_once()  # A holds 3 rows, then stalls; B takes the pipeline over
    log.acquire_lease("f", "B", takeover_after_s=0)
    b = PipelineTask(build(), log, metrics=Metrics(), owner="B")
    b.open()
    with pytest.raises(FencedError):
        a.commit()
    b.drain()
    assert sorted(r["n"] for r in lake_rows(tmp_path / "lake")) == [0, 1, 2]


class Timed(Source):
    name = "timed"

    def poll(self) -> SourcePoll:
        return SourcePoll(
            [
                Record({"a": 1}, timestamp_ms=1.7e12 + 0.5),
                Record({"a": 2}, timestamp_ms=2**63),  # type: ignore[arg-type]
                Record({"a": 3}, timestamp_ms=5),
            ],
            done=True,
        )


def test_source_event_times_are_checked_record_by_record(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    p = Pipeline("s")
    p.source(Timed(), topic="t")
    task = SourceTask(p.sources[0], log, metrics=Metrics(), dlq_topic="s.dlq")
    task.open()
    assert task.poll_once() == (0.0, True)
    assert [(r.value["a"], r.timestamp_ms) for r in read_topic(log, "t")] == [(1, 1_700_000_000_000), (3, 5)]
    assert [d.value["value"] for d in read_topic(log, "s.dlq")] == [{"a": 2}]


def test_a_gap_in_the_log_is_skipped(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in", TopicConfig(retention_ms=60_000))
    for i in range(3):
        log.append("in", [Record({"n": i})])
    now = time.time_ns() // 1_000_000
    # the clock stepped back while batch 1 was appended: retention drops it alone
    log._conn().execute("UPDATE batches SET append_ms=? WHERE base_offset=1", (now - 120_000,))
    assert log.enforce_retention(now) == 1
    assert [r.value for b in log.iter_batches("in", 0, 1) for r in b.records()] == [{"n": 2}]


def test_dedupe_does_not_depend_on_batching(tmp_path: Path) -> None:
    def outputs(batches: list[list[tuple[str, int]]]) -> list[int]:
        log = SQLiteLog(tmp_path / f"d{len(batches)}.db")
        log.create_topic("in")
        for b in batches:
            log.append("in", [Record({"id": k}, timestamp_ms=t) for k, t in b])
        p = Pipeline("d")
        p.topic("in").dedupe(name="once", key=lambda v: v["id"], ttl_ms=1000).to_topic("out")
        task = PipelineTask(p, log, metrics=Metrics())
        task.open()
        task.drain()
        task.close()
        return [r.timestamp_ms for r in read_topic(log, "out")]

    rows = [("a", 0), ("b", 2000), ("a", 500)]
    assert outputs([rows]) == outputs([[r] for r in rows]) == [0, 2000, 500]


def test_bad_table_rows_are_dead_lettered_once_across_restarts(tmp_path: Path) -> None:
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("stations", TopicConfig(retention_ms=None))
    log.append("stations", [Record({"id": "1", "name": "Gare"}), Record({"name": "no id"})])
    log.create_topic("status")
    for _ in range(3):
        p = Pipeline("p")
        t = p.table("stations", "stations", key=lambda v: v["id"])
        p.topic("status").enrich(t, key=lambda v: v["id"], join=lambda v, row: row and row["name"]).to_topic("out")
        task = PipelineTask(p, log, metrics=Metrics())
        task.open()
        task.drain()
        task.close()
    assert [d.value["offset"] for d in read_topic(log, "p.dlq")] == [1]


class DownAtStart(Sink):
    """A store that refuses connections for its first `down` opens, then takes records."""

    name = "down-at-start"

    def __init__(self, down: int) -> None:
        self.down = down
        self.opens = 0
        self.open_now = False
        self.values: list[Any] = []

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.down:
            raise TransientError("connection refused")
        self.open_now = True

    def write(self, records: list[Record]) -> None:
        assert self.open_now, "written before it was open"
        self.values += [r.value for r in records]

    def close(self) -> None:
        self.open_now = False


def test_a_sink_down_at_start_is_opened_again_and_the_other_pipelines_go_on(tmp_path: Path) -> None:
    from affluent.core.runtime import Runtime

    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in")
    log.append("in", [Record({"n": i}) for i in range(5)])
    down, lake = DownAtStart(down=3), ParquetLakeSink(tmp_path / "lake", "ds")
    waits = Pipeline("waits")
    waits.topic("in").to_sink(down)
    goes_on = Pipeline("goes-on")
    goes_on.topic("in").to_sink(lake)
    rt = Runtime(log, metrics=Metrics()).add(waits).add(goes_on)
    rt.run_to_end(timeout_s=60)
    assert down.opens == 4 and sorted(v["n"] for v in down.values) == [0, 1, 2, 3, 4]  # once open, it took everything, once
    assert sorted(r["n"] for r in lake_rows(tmp_path / "lake")) == [0, 1, 2, 3, 4]
    log.close()
