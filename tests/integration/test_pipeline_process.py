"""A pipeline in a process of its own (`Pipeline(own_process=True)`): the same results as in a thread,
exactly once when its process is killed, and a clear error when it fails or cannot be loaded there."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pyarrow.parquet as pq
import pytest

from affluent import Count, JsonLinesSource, Pipeline, Runtime, SQLiteLog, TumblingWindow, col
from affluent.core.errors import ConfigError, FencedError, TaskProcessError
from affluent.core.metrics import Metrics
from affluent.core.runtime import PipelineTask
from affluent.core.sinks import Sink
from affluent.core.task_process import ProcessPipelineTask, can_run_apart
from affluent.sinks.lake import ParquetLakeSink
from affluent.testing import read_topic

BAD_EVERY = 97


def checked(v: dict[str, Any]) -> dict[str, Any]:
    if v["t"] % BAD_EVERY == 0:
        print(f"refusing {v['t']}")  # a step that prints: never mixed with the child's reports
        raise ValueError(f"t {v['t']} is a multiple of {BAD_EVERY}")
    return v


class BrokenSink(Sink):
    name = "broken"

    def open(self) -> None:
        raise ConfigError("this sink has nowhere to write")

    def write(self, records: list[Any]) -> None:
        raise AssertionError("never opened")


def write_events(path: Path, n: int) -> None:
    path.write_bytes(b"".join(orjson.dumps({"k": f"k{i % 7}", "t": i}) + b"\n" for i in range(n)))


def build(path: Path, lake: Path | None = None, *, own_process: bool = True, commit_ms: int = 100) -> Pipeline:
    """Events from a file (read in this process) into a pipeline that checks them, counts them in
    windows and writes them to a lake."""
    p = Pipeline("p", own_process=own_process, commit_interval_ms=commit_ms)
    s = p.source(JsonLinesSource(path), topic="events").map(checked, name="check")
    s.with_timestamp(col("t"), name="time").key_by(col("k"), name="k").window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("counts")
    if lake is not None:
        s.to_sink(ParquetLakeSink(lake, "events"))
    return p


def counts(log: SQLiteLog) -> dict[tuple[str, int], int]:
    return {(r.value["key"], r.value["start_ms"]): r.value["count"] for r in read_topic(log, "counts")}


def expected_counts(n: int) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for i in range(n):
        if i % BAD_EVERY:
            k = (f"k{i % 7}", i - i % 10)
            out[k] = out.get(k, 0) + 1
    return out


def lake_times(root: Path) -> list[int]:
    return sorted(t for f in root.glob("events/date=*/hour=*/*.parquet") for t in pq.read_table(f).column("t").to_pylist())


def test_a_pipeline_in_a_process_of_its_own_ends_as_it_would_in_a_thread(tmp_path: Path) -> None:
    n = 5_000
    write_events(tmp_path / "events.jsonl", n)
    log = SQLiteLog(tmp_path / "log.db")
    metrics = Metrics()
    rt = Runtime(log, metrics=metrics).add(build(tmp_path / "events.jsonl", tmp_path / "lake"))
    rt.run_to_end(timeout_s=60)
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask) and task.status == "stopped" and task.ended
    assert task.records_in == n
    assert counts(log) == expected_counts(n)  # the last windows closed at the end of the input
    assert lake_times(tmp_path / "lake") == [i for i in range(n) if i % BAD_EVERY]
    dead = [orjson.loads(r.value) if isinstance(r.value, bytes) else r.value for r in read_topic(log, "p.dlq")]
    assert sorted(d["offset"] for d in dead) == list(range(0, n, BAD_EVERY))
    assert all(f"is a multiple of {BAD_EVERY}" in d["error"] for d in dead)
    # the child's counters add up in this process's metrics, where the dashboard and /metrics read them
    assert metrics.get("affluent_dead_letters_total", pipeline="p") == len(dead)
    assert metrics.get("affluent_records_in_total", pipeline="p") == n
    # the lease was the parent's, and is let go at the end: another run takes the pipeline at once
    Runtime(log, metrics=Metrics()).add(build(tmp_path / "events.jsonl", tmp_path / "lake")).run_to_end(timeout_s=60)
    assert counts(log) == expected_counts(n)


def test_a_pipeline_whose_process_is_killed_starts_again_and_ends_exactly_once(tmp_path: Path) -> None:
    """SIGKILLed three times as it reads, the pipeline's process is started again from its last
    checkpoint each time: every window counts each event once and the lake holds each event once."""
    n = 40_000
    write_events(tmp_path / "events.jsonl", n)
    log = SQLiteLog(tmp_path / "log.db")
    metrics = Metrics()
    rt = Runtime(log, metrics=metrics).add(build(tmp_path / "events.jsonl", tmp_path / "lake", commit_ms=50))
    rt.start()
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask)
    killed: list[int] = []
    deadline = time.monotonic() + 60
    for share in (0.2, 0.45, 0.7):
        # a child that has read past this share of the input, not the one just killed
        while not (task.status == "running" and task.pid not in killed and sum(task.positions.values()) >= share * n):
            assert time.monotonic() < deadline, (task.status, task.positions)
            time.sleep(0.005)
        assert task.pid is not None
        os.kill(task.pid, signal.SIGKILL)
        killed.append(task.pid)
    rt.run_to_end(timeout_s=90)
    assert task.restarts == 3
    assert metrics.get("affluent_task_errors_total", pipeline="p", error="ProcessEnded") == 3
    assert counts(log) == expected_counts(n)
    assert lake_times(tmp_path / "lake") == [i for i in range(n) if i % BAD_EVERY]
    assert sorted(orjson.loads(r.value)["offset"] if isinstance(r.value, bytes) else r.value["offset"] for r in read_topic(log, "p.dlq")) == list(
        range(0, n, BAD_EVERY)
    )


class Event(msgspec.Struct):
    k: str
    t: int


def test_a_typed_pipeline_runs_in_a_process_of_its_own(tmp_path: Path) -> None:
    """Its topic's decoder (of a msgspec Struct) goes along, and is made again there."""
    write_events(tmp_path / "events.jsonl", 1_000)
    log = SQLiteLog(tmp_path / "log.db")
    p = Pipeline("p", own_process=True)
    p.source(JsonLinesSource(tmp_path / "events.jsonl"), topic="events", schema=Event).key_by(col("k"), name="k").to_topic("keyed")
    rt = Runtime(log, metrics=Metrics()).add(p)
    rt.start()
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask)
    deadline = time.monotonic() + 30
    while task.status != "running":
        assert time.monotonic() < deadline, task.status
        time.sleep(0.01)
    assert task.pid is not None
    os.kill(task.pid, signal.SIGINT)  # a Ctrl+C reaches the terminal's processes: the parent, not the child, decides
    rt.run_to_end(timeout_s=60)
    assert task.restarts == 0 and task.status == "stopped"
    assert [(r.key, r.value["t"]) for r in read_topic(log, "keyed")] == [(f"k{i % 7}", i) for i in range(1_000)]


def _writing(lake: Path) -> bool:
    """A lake file or commit marker is being written (its temporary file exists)."""
    return any(f.startswith(".tmp-") for _, _, files in os.walk(lake) for f in files)


def test_a_pipeline_process_killed_inside_lake_flushes_ends_exactly_once(tmp_path: Path) -> None:
    """SIGKILLed while its lake writes a Parquet file or a commit marker (a temporary file seen on
    disk), twice: the lake still holds each event once, and every window counts each event once."""
    n = 40_000
    write_events(tmp_path / "events.jsonl", n)
    log = SQLiteLog(tmp_path / "log.db")
    lake = tmp_path / "lake"
    rt = Runtime(log, metrics=Metrics()).add(build(tmp_path / "events.jsonl", lake, commit_ms=20))
    rt.start()
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask)
    killed: list[int] = []
    deadline = time.monotonic() + 60
    while len(killed) < 2:
        assert time.monotonic() < deadline, f"no lake write seen to kill in ({len(killed)} kills)"
        pid = task.pid
        if task.status == "running" and pid not in killed and _writing(lake):
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    rt.run_to_end(timeout_s=90)
    assert task.restarts == 2
    assert counts(log) == expected_counts(n)
    assert lake_times(lake) == [i for i in range(n) if i % BAD_EVERY]


def test_a_pipeline_that_fails_in_its_process_ends_the_run_with_its_error(tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", 100)
    p = build(tmp_path / "events.jsonl")
    p.topic("events").to_sink(BrokenSink())
    rt = Runtime(SQLiteLog(tmp_path / "log.db"), metrics=Metrics()).add(p)
    with pytest.raises(TaskProcessError, match="pipeline p: this sink has nowhere to write"):
        rt.run_to_end(timeout_s=60)
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask) and task.status == "failed" and task.restarts == 0


def test_a_pipeline_its_process_cannot_load_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    """A step from a module this process imported, then lost: no restarts, the reason."""
    (tmp_path / "gone_steps.py").write_text("def double(v):\n    return {**v, 't': 2 * v['t']}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        steps = importlib.import_module("gone_steps")
        sys.path.remove(str(tmp_path))
        (tmp_path / "gone_steps.py").unlink()
        write_events(tmp_path / "events.jsonl", 100)
        p = Pipeline("p", own_process=True)
        p.source(JsonLinesSource(tmp_path / "events.jsonl"), topic="events").map(steps.double, name="double").to_topic("out")
        rt = Runtime(SQLiteLog(tmp_path / "log.db"), metrics=Metrics()).add(p)
        with pytest.raises(TaskProcessError, match="pipeline p: its process cannot load it: ModuleNotFoundError: No module named 'gone_steps'"):
            rt.run_to_end(timeout_s=60)
    finally:
        sys.modules.pop("gone_steps", None)
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask) and task.restarts == 0


def test_a_pipeline_that_cannot_be_sent_to_a_process_runs_in_a_thread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_events(tmp_path / "events.jsonl", 100)
    p = Pipeline("p", own_process=True)
    p.source(JsonLinesSource(tmp_path / "events.jsonl"), topic="events").map(lambda v: {**v, "t": 2 * v["t"]}, name="double").to_topic("out")
    log = SQLiteLog(tmp_path / "log.db")
    with caplog.at_level("INFO", logger="affluent.runtime"):
        rt = Runtime(log, metrics=Metrics()).add(p)
        rt.run_to_end(timeout_s=60)
    assert isinstance(rt.tasks[0], PipelineTask)
    assert "pipeline p runs in a thread, not a process of its own: it cannot be pickled" in caplog.text
    assert [r.value["t"] for r in read_topic(log, "out")] == [2 * i for i in range(100)]


def test_a_pipeline_that_loses_its_lease_stops_its_process_and_writes_nothing_more(tmp_path: Path) -> None:
    """Taken over (a stale lease), the pipeline's process is stopped: the run ends fenced, and the
    rows its lake held since its last commit are never written."""
    n = 5_000
    write_events(tmp_path / "events.jsonl", n)
    log = SQLiteLog(tmp_path / "log.db")
    rt = Runtime(log, metrics=Metrics()).add(build(tmp_path / "events.jsonl", tmp_path / "lake", commit_ms=600_000))
    rt.start()
    (task,) = rt.tasks
    assert isinstance(task, ProcessPipelineTask)
    deadline = time.monotonic() + 30
    while task.records_in < n:
        assert time.monotonic() < deadline, (task.status, task.records_in)
        time.sleep(0.01)
    SQLiteLog(log.path).acquire_lease("p", "new-owner", takeover_after_s=0)
    while task.status == "running":
        assert time.monotonic() < deadline, task.status
        time.sleep(0.05)
    rt.stop()
    assert task.status == "fenced" and any(isinstance(e, FencedError) for e in rt.errors), (task.status, task.error, rt.errors)
    assert lake_times(tmp_path / "lake") == []
    assert log.committed("p", "events") == {}


def test_a_log_that_keeps_its_leases_in_its_process_runs_the_pipeline_in_a_thread() -> None:
    from affluent.core.kafka_log import KafkaLog

    kafka = KafkaLog("127.0.0.1:1")  # no broker needed: nothing is sent
    try:
        assert can_run_apart(Pipeline("p", own_process=True), kafka) == "the log kafka://127.0.0.1:1 keeps its leases in this process"
    finally:
        kafka.close()
