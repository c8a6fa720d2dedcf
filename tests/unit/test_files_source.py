"""JsonLinesSource: a JSON-lines file appended as it is, bad lines dead-lettered when read, resumed after a restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson

from affluent import Count, JsonLinesSource, Pipeline, Runtime, SQLiteLog, TumblingWindow, col
from affluent.core.metrics import Metrics
from affluent.core.task_process import ProcessSourceTask
from affluent.testing import read_topic


def build(path: Path, *, chunk_bytes: int = 1 << 20, key: bool = False, own_process: bool = False) -> Pipeline:
    p = Pipeline("f")
    src = JsonLinesSource(path, chunk_bytes=chunk_bytes)
    if own_process:
        src.PROCESS_BYTES = 0  # a small file, read in a process of its own all the same
    s = p.source(src, topic="events", key=(lambda v: v["k"]) if key else None)
    s.with_timestamp(col("t"), name="time").key_by(col("k"), name="k").window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("counts")
    return p


def counts(log: SQLiteLog) -> dict[tuple[str, int], int]:
    return {(r.value["key"], r.value["start_ms"]): r.value["count"] for r in read_topic(log, "counts")}


def run(log: SQLiteLog, p: Pipeline) -> None:
    Runtime(log, metrics=Metrics()).add(p).run_to_end(timeout_s=30)


def test_every_line_is_read_and_bad_lines_are_dead_letters_with_their_reason(tmp_path: Path) -> None:
    lines = [orjson.dumps({"k": "a" if i % 3 else "b", "t": i}) for i in range(100)]
    lines[10] = b'{"k": "a", "t": '  # cut short
    lines[20] = b"1,2"  # two values on one line
    lines[30] = b'{"k":"b","t":30}\r'  # a CRLF line: its value is good
    lines[40] = orjson.dumps({"k": "a", "t": 40, "pad": "x" * 300})  # longer than a chunk
    path = tmp_path / "events.jsonl"
    # chunks of 64 bytes: lines cross chunk ends, and the last line has no newline
    path.write_bytes(b"\n".join(lines[:50]) + b"\n\n" + b"\n".join(lines[50:]))
    log = SQLiteLog(tmp_path / "log.db")
    run(log, build(path, chunk_bytes=64))
    expected: dict[tuple[str, int], int] = {}
    for i in range(100):
        if i not in (10, 20):
            key = "a" if i % 3 else "b"
            expected[(key, i - i % 10)] = expected.get((key, i - i % 10), 0) + 1
    assert counts(log) == expected
    dead = [r.value for r in read_topic(log, "f.dlq")]
    assert sorted(d["offset"] for d in dead) == [10, 20]
    assert all("invalid JSON" in d["error"] for d in dead)
    assert log.describe_topic("events").records == 100  # the empty line is skipped


def test_a_restart_resumes_after_the_last_line_appended(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"k": "a", "t": i}) + b"\n" for i in range(10)))
    log = SQLiteLog(tmp_path / "log.db")
    run(log, build(path, key=True))
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps({"k": "a", "t": i}) + b"\n" for i in range(10, 15)))
    run(log, build(path, key=True))
    assert [r.value["t"] for r in read_topic(log, "events")] == list(range(15))
    assert {r.key for r in read_topic(log, "events")} == {"a"}
    assert counts(log) == {("a", 0): 10, ("a", 10): 5}


def test_a_killed_source_process_is_started_again_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    """The file source runs in a process of its own; SIGKILLed mid-file, it is started again and
    resumes from its last committed position: every line lands once."""
    n = 200_000  # thousands of small polls: the child is still at it when the first counts reach this process
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"k": f"k{i % 7}", "t": i}) + b"\n" for i in range(n)))
    log = SQLiteLog(tmp_path / "log.db")
    rt = Runtime(log, metrics=Metrics()).add(build(path, chunk_bytes=1024, own_process=True))
    rt.start()
    st = rt.source_tasks[0]
    assert isinstance(st, ProcessSourceTask)
    deadline = time.monotonic() + 30
    while st.records_out < 1000:
        assert time.monotonic() < deadline, st.status
        time.sleep(0.01)
    assert st.pid is not None
    os.kill(st.pid, signal.SIGKILL)
    rt.run_to_end(timeout_s=60)
    assert st.restarts == 1
    assert [r.value["t"] for r in read_topic(log, "events")] == list(range(n))
    expected: dict[tuple[str, int], int] = {}
    for i in range(n):
        k = (f"k{i % 7}", i - i % 10)
        expected[k] = expected.get(k, 0) + 1
    assert counts(log) == expected
