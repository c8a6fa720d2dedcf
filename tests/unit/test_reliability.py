"""One owner, sinks that write nothing after losing it, tasks that die loudly, bad input that is refused."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import typer

from affluent.apps.bikes.pipeline import StationCounts
from affluent.core.aggregates import Count
from affluent.core.errors import ConfigError, FencedError, PipelineAlreadyRunningError
from affluent.core.log import TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.operators import Batch
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sources import Source, SourcePoll
from affluent.core.sqlite_log import SQLiteLog
from affluent.core.windows import TumblingWindow
from affluent.sinks.lake import ParquetLakeSink
from affluent.testing import ListSource, read_topic


def lake_rows(root: Path, dataset: str) -> list[dict[str, Any]]:
    return [r for f in sorted((root / dataset).glob("date=*/hour=*/*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_a_pipeline_that_commits_seldom_keeps_its_lease(log: SQLiteLog) -> None:
    """The lake pipeline commits every 30 s; a lease counts as stale after 10 s: the heartbeat must renew it."""
    p = Pipeline("lake-like", commit_interval_ms=600_000)
    p.topic("in").to_topic("out")
    rt = Runtime(log, metrics=Metrics())
    rt.add(p)
    rt.start()
    try:
        time.sleep(3.5)
        other = SQLiteLog(log.path)
        with pytest.raises(PipelineAlreadyRunningError):
            other.acquire_lease("lake-like", "intruder", takeover_after_s=2.5)  # 2.5 s > the 2 s heartbeat
    finally:
        rt.stop()
    assert not rt.errors


def test_a_fenced_task_discards_its_lake_rows(log: SQLiteLog, tmp_path: Path) -> None:
    """After losing its lease a task writes nothing more anywhere: its sinks are discarded, not flushed at close."""
    log.create_topic("in")
    log.append("in", [Record(value={"i": i}, timestamp_ms=1_773_136_800_000) for i in range(10)])
    p = Pipeline("to-lake", commit_interval_ms=600_000)
    p.topic("in").to_sink(ParquetLakeSink(tmp_path / "lake", "rows"))
    rt = Runtime(log, metrics=Metrics())
    rt.add(p)
    rt.start()
    while not rt.tasks or rt.tasks[0].records_in < 10:
        time.sleep(0.01)
    SQLiteLog(log.path).acquire_lease("to-lake", "new-owner", takeover_after_s=0)  # what a stale lease allows
    deadline = time.monotonic() + 10
    while rt.tasks[0].status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    rt.stop()
    assert rt.tasks[0].status == "fenced" and "taken over" in (rt.tasks[0].error or "")
    assert any(isinstance(e, FencedError) for e in rt.errors)
    assert lake_rows(tmp_path / "lake", "rows") == []


@pytest.mark.parametrize("by", ["records", "batches"])
def test_a_lake_flush_never_writes_rows_already_committed_by_another_writer(tmp_path: Path, by: str) -> None:
    columns = {"columns_of": lambda vs, ts: {"i": [v["i"] for v in vs]}} if by == "batches" else {}
    old, new = ParquetLakeSink(tmp_path, "d", **columns), ParquetLakeSink(tmp_path, "d", **columns)  # type: ignore[arg-type]
    old.open()
    new.open()
    records = [Record(value={"i": i}, timestamp_ms=1_773_136_800_000, topic="t", partition=0, offset=i) for i in range(10)]

    def write(sink: ParquetLakeSink, rs: list[Record]) -> None:
        if by == "records":
            sink.write(rs)
        else:
            sink.write_batch(Batch([None] * len(rs), [r.value for r in rs], [r.timestamp_ms for r in rs], [r.offset for r in rs]), "t", 0)

    write(old, records[:6])  # buffered by a process that is about to lose its lease
    write(new, records[:8])
    new.flush()
    write(old, records[6:])
    old.flush()
    assert sorted(r["i"] for r in lake_rows(tmp_path, "d")) == list(range(10))
    write(new, records[8:])  # what the other writer committed since is read before a flush
    new.flush()
    assert sorted(r["i"] for r in lake_rows(tmp_path, "d")) == list(range(10))
    assert old.offsets == new.offsets == {"t:0": 9}


def test_a_lake_takes_whole_batches_as_columns_as_it_takes_records(tmp_path: Path) -> None:
    hour = 3_600_000
    times = [1_773_136_800_000 + i * hour // 4 for i in range(10)]  # across three hours
    times += [times[-1] + hour + i for i in range(4)]  # then a batch within one hour
    values = [{"i": i, "name": f"n{i}"} for i in range(14)]

    def columns_of(vs: list[dict[str, Any]], ts: list[int]) -> dict[str, list[Any]]:
        return {"i": [v["i"] for v in vs], "name": [v["name"] for v in vs], "ts_ms": ts}

    by_rows = ParquetLakeSink(tmp_path, "rows", row=lambda r: {**r.value, "ts_ms": r.timestamp_ms})
    by_columns = ParquetLakeSink(tmp_path, "columns", columns_of=columns_of)
    for sink in (by_rows, by_columns):
        sink.open()
        sink.write_batch(Batch([None] * 6, values[:6], times[:6], range(6)), "t", 0)
        sink.flush()
        sink.write_batch(Batch([None] * 10, values[:10], times[:10], range(10)), "t", 0)  # replayed after a crash: 0-5 are in the lake
        sink.flush()
        for _ in range(2):  # one hour's batch, and its replay
            sink.write_batch(Batch([None] * 4, values[10:], times[10:], range(10, 14)), "t", 0)
            sink.flush()
    assert lake_rows(tmp_path, "columns") == lake_rows(tmp_path, "rows")
    assert [r["i"] for r in lake_rows(tmp_path, "columns")] == list(range(14))
    assert len(list((tmp_path / "columns").glob("date=*/hour=*"))) == 4


class BrokenSource(Source):
    name = "broken"

    def poll(self) -> SourcePoll:
        raise ConfigError("the feed URL is not a GBFS feed")


def test_a_dead_source_makes_the_command_exit_1_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from affluent.cli.main import run_pipelines

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFFLUENT__LOG__URL", f"sqlite:///{tmp_path / 'log.db'}")
    p = Pipeline("app")
    p.source(BrokenSource(), topic="in").to_topic("out")
    started = time.monotonic()
    with pytest.raises(typer.Exit) as exit_:
        run_pipelines([p], duration_s=30, quiet=True)
    assert exit_.value.exit_code == 1
    assert time.monotonic() - started < 10  # it did not wait for the duration with a dead source
    assert "the feed URL is not a GBFS feed" in capsys.readouterr().out


def test_a_second_runtime_of_the_same_pipelines_runs_nothing(log: SQLiteLog) -> None:
    def pipelines() -> list[Pipeline]:
        a, b = Pipeline("a"), Pipeline("b")
        a.source(ListSource([Record(value=i) for i in range(5)], name="numbers", wait_s=0.05), topic="n").to_topic("a-out")
        b.topic("n").to_topic("b-out")
        return [a, b]

    first = Runtime(log, metrics=Metrics())
    for p in pipelines():
        first.add(p)
    first.start()
    second = Runtime(SQLiteLog(log.path), metrics=Metrics())
    for p in pipelines()[1:]:  # only "b": it is refused as a whole, nothing of it runs
        second.add(p)
    second.run(timeout_s=1)
    deadline = time.monotonic() + 30
    while not first.drained() and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop()
    assert [type(e) for e in second.errors] == [PipelineAlreadyRunningError] and second.tasks == []
    assert [r.value for r in read_topic(log, "b-out")] == [0, 1, 2, 3, 4]


def test_late_records_are_counted_in_the_status_and_logged(log: SQLiteLog, caplog: pytest.LogCaptureFixture) -> None:
    t0 = 1_773_136_800_000
    times = [t0, t0 + 120_000, t0 + 1000, t0 + 2000]  # the last two arrive after their window closed
    p = Pipeline("w")
    p.source(ListSource([Record(value=1, key="k", timestamp_ms=t) for t in times]), topic="in").window(
        TumblingWindow(60_000), Count(), name="per-minute"
    ).to_topic("out")
    rt = Runtime(log, metrics=Metrics())
    rt.add(p)
    with caplog.at_level(logging.WARNING, logger="affluent.runtime"):
        rt.run_to_end(timeout_s=30)
    status = next(s for s in rt.status() if s["kind"] == "pipeline")
    assert status["late"] == 2 and status["dead_letters"] == 0
    assert any("late record(s)" in m for m in caplog.messages)
    assert len(read_topic(log, "w.late")) == 2


def test_a_bad_station_does_not_change_the_running_counts() -> None:
    agg = StationCounts()
    good = {"num_bikes_available": 3, "num_docks_available": 7}
    acc = agg.add(agg.create(), good, 1000)
    before = list(acc)
    for bad in ({"num_bikes_available": 2, "num_docks_available": "7"}, {"num_bikes_available": "2", "num_docks_available": 7}):
        with pytest.raises(TypeError):
            agg.add(acc, bad, 1000)
        assert acc == before


@pytest.mark.parametrize("partitions", [0, 1025, 100_000])
def test_absurd_partition_counts_are_refused(partitions: int) -> None:
    with pytest.raises(ConfigError, match="1 to 1024 partitions"):
        TopicConfig(partitions=partitions)


def test_lease_heartbeat_stops_with_the_runtime(log: SQLiteLog) -> None:
    p = Pipeline("idle")
    p.topic("in").to_topic("out")
    rt = Runtime(log, metrics=Metrics())
    rt.add(p)
    rt.start()
    time.sleep(0.2)
    rt.stop()
    assert rt._heartbeat is not None and not rt._heartbeat.is_alive()
    assert not any(t.is_alive() for t in threading.enumerate() if t.name == "lease-heartbeat" and t is rt._heartbeat)
    SQLiteLog(log.path).acquire_lease("idle", "next", takeover_after_s=60)  # released at stop: free at once
