"""The runtime's tasks and leases, and the public helpers of `affluent.testing`."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from affluent.core import runtime as runtime_mod
from affluent.core import sqlite_log as sqlite_mod
from affluent.core.errors import FencedError, PipelineAlreadyRunningError, PipelineError, SourceUnavailableError
from affluent.core.log import TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline, SourceBinding
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask, Runtime, SourceTask
from affluent.core.sources import Source, SourcePoll
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import ListSink, ListSource, read_topic, run_for, run_until, temp_log

# -- affluent.testing ------------------------------------------------------------------------------------------------------------


def test_temp_log(tmp_path: Path) -> None:
    lg = temp_log(tmp_path)
    assert isinstance(lg, SQLiteLog)
    assert lg.path.parent == tmp_path
    lg.create_topic("t")
    assert SQLiteLog(lg.path).topic_exists("t")


def test_list_source_polls_in_batches_and_resumes() -> None:
    src = ListSource([1, 2, Record(value=3, key="k", timestamp_ms=9), 4, 5], name="nums", batch_size=2, wait_s=0.5)
    assert (src.name, src.offline) == ("nums", True)
    src.open(None)
    polls = [src.poll() for _ in range(3)]
    assert [[r.value for r in p.records] for p in polls] == [[1, 2], [3, 4], [5]]
    assert [(p.position, p.done, p.wait_s) for p in polls] == [(2, False, 0.5), (4, False, 0.5), (5, True, 0.5)]
    assert (polls[1].records[0].key, polls[1].records[0].timestamp_ms) == ("k", 9)
    again = ListSource([1, 2, 3, 4, 5], batch_size=2)
    again.open(polls[0].position)
    assert [r.value for r in again.poll().records] == [3, 4]


def test_list_sink_keeps_records_in_order() -> None:
    sink = ListSink()
    sink.write([Record(value=1), Record(value=2)])
    sink.write([Record(value=3)])
    sink.flush()
    assert sink.values == [1, 2, 3]
    assert sink.flushes == 1
    assert sink.name == "list-sink"


def test_read_topic_reads_every_partition_in_offset_order(log: SQLiteLog) -> None:
    log.create_topic("t", TopicConfig(partitions=3))
    log.append("t", [Record(value=i) for i in range(4)], partition=2)
    log.append("t", [Record(value=10 + i) for i in range(2)], partition=0)
    got = read_topic(log, "t")
    assert [(r.partition, r.offset, r.value) for r in got] == [(0, 0, 10), (0, 1, 11), (2, 0, 0), (2, 1, 1), (2, 2, 2), (2, 3, 3)]


def test_run_until_runs_sources_and_pipelines(log: SQLiteLog) -> None:
    p = Pipeline("double")
    src = ListSource([Record(value={"x": i}, key=f"k{i}", timestamp_ms=100 + i) for i in range(25)], name="numbers", batch_size=10)
    sink = ListSink()
    doubled = p.source(src, topic="numbers").map(lambda v: v["x"] * 2, name="x2")
    doubled.to_topic("doubled")
    doubled.to_sink(sink)
    metrics = Metrics()
    got = run_until([p], log, topic="doubled", count=25, metrics=metrics)
    assert [(r.key, r.value, r.timestamp_ms) for r in got] == [(f"k{i}", 2 * i, 100 + i) for i in range(25)]
    assert sink.values == [2 * i for i in range(25)]
    assert metrics.get("affluent_source_records_total", source="numbers") == 25
    assert metrics.get("affluent_records_in_total", pipeline="double") == 25
    assert log.committed("double", "numbers") == {0: 25}


def test_run_until_times_out_naming_what_it_saw(log: SQLiteLog) -> None:
    p = Pipeline("p")
    p.source(ListSource([1, 2, 3], name="three"), topic="in").to_topic("out")
    with pytest.raises(TimeoutError, match=r"after 0.5 s, 'out' holds 3 records, expected 10; status: .*'three'"):
        run_until(p, log, topic="out", count=10, timeout_s=0.5)


def test_run_until_raises_the_pipelines_error(log: SQLiteLog) -> None:
    p = Pipeline("p")
    p.source(ListSource([1, 2, 3], name="three"), topic="in").batch_map(lambda vs: [], name="broken").to_topic("out")
    with pytest.raises(PipelineError, match="'broken' returned 0 values for 3"):
        run_until(p, log, topic="out", count=3, timeout_s=10)


def test_run_for_and_runtime_status(log: SQLiteLog) -> None:
    p = Pipeline("p")
    p.source(ListSource(range(7), name="seven", batch_size=3), topic="in").filter(lambda v: v % 2 == 0).to_topic("even")
    rt = run_for(p, log, 0.4)
    assert [r.value for r in read_topic(log, "even")] == [0, 2, 4, 6]
    assert sorted((s["kind"], s["name"], s["status"], s["records"]) for s in rt.status()) == [("pipeline", "p", "stopped", 7), ("source", "seven", "done", 7)]
    assert not rt.alive()


class FlakySource(Source):
    """Unavailable twice (asking for a 10 ms wait), then gives its records."""

    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def poll(self) -> SourcePoll:
        self.calls += 1
        if self.calls <= 2:
            raise SourceUnavailableError("HTTP 503 from the feed", retry_after_s=0.01)
        return SourcePoll(records=[Record(value=self.calls)], done=True)


def test_a_transient_source_error_is_retried(log: SQLiteLog) -> None:
    p = Pipeline("p")
    src = FlakySource()
    p.source(src, topic="in").to_topic("out")
    metrics = Metrics()
    got = run_until(p, log, topic="out", count=1, metrics=metrics, timeout_s=10)
    assert [r.value for r in got] == [3]
    assert metrics.get("affluent_source_errors_total", source="flaky", kind="transient") == 2


# -- leases through the runtime ------------------------------------------------------------------------------------------------------


def _copy_pipeline(on_record: Any = None) -> Pipeline:
    p = Pipeline("copy")
    s = p.topic("in")
    if on_record is not None:
        s = s.inspect(on_record, name="hook")
    s.to_topic("out")
    return p


def test_a_second_task_for_a_running_pipeline_is_refused(log: SQLiteLog) -> None:
    first = PipelineTask(_copy_pipeline(), log, metrics=Metrics())
    first.open()
    second = PipelineTask(_copy_pipeline(), SQLiteLog(log.path), metrics=Metrics())
    with pytest.raises(PipelineAlreadyRunningError, match=r"pipeline 'copy' is already running \(pid \d+"):
        second.open()
    first.close()
    second.open()  # the first one released its lease on close
    second.close()


def test_a_task_that_lost_its_lease_is_fenced_and_commits_nothing(log: SQLiteLog) -> None:
    log.create_topic("in")
    log.append("in", [Record(value=i) for i in range(5)])
    other = SQLiteLog(log.path)

    def taken_over(k: Any, v: Any, t: int) -> None:
        if v == 0:
            time.sleep(0.02)
            other.acquire_lease("copy", "the-new-owner", takeover_after_s=0.01)

    task = PipelineTask(_copy_pipeline(taken_over), log, metrics=Metrics())
    with pytest.raises(FencedError, match="'copy' was taken over by pid"):
        task.run(threading.Event())
    assert task.status == "fenced"
    assert "taken over" in (task.error or "")
    assert read_topic(log, "out") == []
    assert log.committed("copy", "in") == {}


class Clock:
    def __init__(self) -> None:
        self.ms = time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_an_idle_running_pipeline_keeps_its_lease(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(runtime_mod, "now_ms", clock)
    monkeypatch.setattr(sqlite_mod, "now_ms", clock)
    running = PipelineTask(_copy_pipeline(), log, metrics=Metrics())
    running.open()
    for _ in range(12):  # twelve seconds of an idle, healthy loop
        clock.ms += 1_000
        running.poll_once()
        running.commit()
    newcomer = PipelineTask(_copy_pipeline(), SQLiteLog(log.path), metrics=Metrics())
    try:
        with pytest.raises(PipelineAlreadyRunningError):
            newcomer.open()
    finally:
        running.close()


def test_runtime_with_a_url_and_status(tmp_path: Path) -> None:
    rt = Runtime(f"sqlite:///{tmp_path / 'rt.db'}", metrics=Metrics())
    assert isinstance(rt.log, SQLiteLog)
    assert rt.status() == []
    p = Pipeline("p")
    p.source(ListSource([1, 2], name="two"), topic="in").to_topic("out")
    rt.add(p).start()
    deadline = time.monotonic() + 10
    while not (rt.log.topic_exists("out") and rt.log.describe_topic("out").records >= 2) and time.monotonic() < deadline:
        time.sleep(0.02)
    rt.stop()
    assert [r.value for r in read_topic(rt.log, "out")] == [1, 2]
    assert {s["name"]: s["status"] for s in rt.status()} == {"two": "done", "p": "stopped"}
    assert rt.errors == []


# -- sources through the runtime: what a poll returns must reach the log -------------------------------------------------------


def _source_task(log: SQLiteLog, src: Source, topic: str = "t", **binding: Any) -> SourceTask:
    task = SourceTask(SourceBinding(src, topic, binding.pop("config", None), **binding), log, metrics=Metrics())
    task.open()
    return task


def test_a_source_task_appends_and_saves_its_position_together(log: SQLiteLog) -> None:
    src = ListSource([Record(value={"id": i}, timestamp_ms=0 if i == 2 else 100 + i) for i in range(5)], name="five", batch_size=2)
    task = _source_task(log, src, key=lambda v: f"s{v['id']}")
    before = time.time_ns() // 1_000_000
    assert task.poll_once() == (0.0, False)
    assert log.load_state("source.five", 0) == {b"position": b"2"}
    while not task.poll_once()[1]:
        pass
    got = read_topic(log, "t")
    assert [(r.key, r.value) for r in got] == [(f"s{i}", {"id": i}) for i in range(5)]
    assert [r.timestamp_ms for r in got][:2] == [100, 101] and got[2].timestamp_ms >= before  # 0 = "now"
    again = _source_task(log, ListSource([Record(value={"id": i}) for i in range(5)], name="five", batch_size=2))
    assert again.poll_once() == (0.0, True)  # resumed at its saved position: nothing twice
    assert len(read_topic(log, "t")) == 5


def test_source_record_headers_reach_the_topic(log: SQLiteLog) -> None:
    task = _source_task(log, ListSource([Record(value=1, headers={"etag": "abc"}, timestamp_ms=5)], name="h"))
    task.poll_once()
    assert [(r.value, r.headers) for r in read_topic(log, "t")] == [(1, {"etag": "abc"})]


def test_records_of_a_poll_whose_commit_failed_are_not_lost(tmp_path: Path) -> None:
    import sqlite3

    from affluent.core.errors import LogBusyError

    log = SQLiteLog(tmp_path / "busy.db", busy_timeout_s=0.05)
    task = _source_task(log, ListSource(range(5), name="five"))
    lock = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(LogBusyError):
        task.poll_once()
    lock.execute("ROLLBACK")
    lock.close()
    while not task.poll_once()[1]:  # what SourceTask.run does after a transient error
        pass
    assert [r.value for r in read_topic(log, "t")] == [0, 1, 2, 3, 4]


def test_a_source_key_function_may_return_non_strings(log: SQLiteLog) -> None:
    task = _source_task(log, ListSource([{"id": i} for i in range(4)], name="ints"), config=TopicConfig(partitions=2), key=lambda v: v["id"])
    with contextlib.suppress(Exception):
        task.poll_once()
    while not task.poll_once()[1]:
        pass
    assert sorted((r.key, r.value["id"]) for r in read_topic(log, "t")) == [("0", 0), ("1", 1), ("2", 2), ("3", 3)]


def test_a_source_key_error_dead_letters_only_that_record(log: SQLiteLog) -> None:
    p = Pipeline("offers")
    p.source(ListSource([{"id": "a"}, {}, {"id": "c"}, {"id": "d"}], name="poison", batch_size=2), topic="t", key=lambda v: v["id"])
    metrics = Metrics()
    got = run_until(p, log, topic="t", count=3, metrics=metrics, timeout_s=10)
    assert [r.key for r in got] == ["a", "c", "d"]
    (dead,) = read_topic(log, "offers.dlq")
    assert dead.value["value"] == {}
    assert dead.value["error"] == "KeyError: 'id'"
    assert dead.value["topic"] == "t"
    assert metrics.get("affluent_dead_letters_total") == 1


class GatedSource(ListSource):
    """A ListSource whose `open` waits (up to 1 s) until its twin has opened too."""

    def __init__(self, gate: threading.Barrier) -> None:
        super().__init__(range(10), name="ticks", batch_size=1, wait_s=0.01)
        self.gate = gate

    def open(self, position: Any | None) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            self.gate.wait(timeout=1.0)
        super().open(position)


def test_a_refused_second_runtime_does_not_run_the_pipelines_sources(tmp_path: Path) -> None:
    gate = threading.Barrier(2)

    def build() -> Pipeline:
        p = Pipeline("p")
        p.source(GatedSource(gate), topic="t").to_topic("out")
        return p

    first = Runtime(SQLiteLog(tmp_path / "log.db"), metrics=Metrics()).add(build()).start()
    second = Runtime(SQLiteLog(tmp_path / "log.db"), metrics=Metrics()).add(build()).start()
    deadline = time.monotonic() + 10

    def settled() -> bool:
        lg = first.log
        return bool(first.errors + second.errors) and lg.topic_exists("t") and lg.describe_topic("t").records >= 10

    while time.monotonic() < deadline and not settled():
        time.sleep(0.02)
    time.sleep(0.2)  # time for a second copy to land
    first.stop()
    second.stop()
    errors = first.errors + second.errors
    assert [type(e) for e in errors] == [PipelineAlreadyRunningError]
    assert sorted(r.value for r in read_topic(first.log, "t")) == list(range(10))


def test_run_to_end_ends_with_one_line_counting_the_dead_letters(log: SQLiteLog, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in the user's step dead-letters every record: the run says so in its last line, not only in a scroll of warnings."""
    p = Pipeline("bug")
    p.source(ListSource(list(range(10)), batch_size=4), topic="nums").map(lambda v: v // (v % 3), name="divide").to_topic("out")
    with caplog.at_level("WARNING", logger="affluent.runtime"):
        Runtime(log, metrics=Metrics()).add(p).run_to_end(timeout_s=30)
    assert caplog.records[-1].getMessage() == "pipeline bug: 4 record(s) dead-lettered in this run, each with its error in topic bug.dlq"
    assert len(read_topic(log, "bug.dlq")) == 4 and sorted(r.value for r in read_topic(log, "out")) == [1, 1, 2, 4, 4, 7]
    caplog.clear()
    with caplog.at_level("WARNING", logger="affluent.runtime"):
        Runtime(log, metrics=Metrics()).add(p).run_to_end(timeout_s=30)  # nothing new: nothing to say
    assert not [r for r in caplog.records if "dead-lettered" in r.getMessage()]
