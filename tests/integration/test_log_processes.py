"""Several processes on one embedded log: a pipeline killed with SIGKILL, a second claimant, writers beside a reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from affluent.core.errors import PipelineAlreadyRunningError
from affluent.core.log import Log
from affluent.core.metrics import Metrics
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import read_topic

BUILD = """
import time
from affluent.core.aggregates import Count
from affluent.core.pipeline import Pipeline
from affluent.core.windows import TumblingWindow


def slow(v):
    time.sleep(0.002)
    return {**v, "seen": True}


def build():
    p = Pipeline("proc", max_poll_records=10, commit_interval_ms=0)
    s = p.topic("in")
    s.map(slow, name="slow").to_topic("out")
    s.window(TumblingWindow(100, idle_ms=None), Count(), name="w").to_topic("counts")
    return p
"""

RUN = (
    BUILD
    + """
import sys
from affluent.core.log import open_log
from affluent.core.metrics import Metrics
from affluent.core.runtime import PipelineTask

log = open_log(sys.argv[1])
task = PipelineTask(build(), log, metrics=Metrics())
task.open()
print("open", flush=True)
if sys.argv[2] == "hold":
    sys.stdin.readline()
else:
    while task.poll_once():
        task.commit()
task.close()
print("done", flush=True)
"""
)


@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _count(log: Log, topic: str) -> int:
    return log.describe_topic(topic).records if log.topic_exists(topic) else 0


def test_a_pipeline_killed_with_sigkill_resumes_exactly_once(tmp_path: Path, spawn: object) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in")
    n = 400
    for b in range(n // 10):  # small stored batches: one checkpoint every 10 records
        log.append("in", [Record(value={"i": i}, timestamp_ms=i * 10) for i in range(b * 10, b * 10 + 10)])

    first = spawn(RUN, url, "run")  # type: ignore[operator]
    assert first.stdout.readline().strip() == "open", first.stderr.read()
    deadline = time.monotonic() + 30
    while _count(log, "out") < 60 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    done_before = _count(log, "out")
    assert 60 <= done_before < n, "the kill should land mid-way"

    second = spawn(RUN, url, "run")  # type: ignore[operator]
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert out.split() == ["open", "done"]

    assert [r.value for r in read_topic(log, "out")] == [{"i": i, "seen": True} for i in range(n)]
    assert log.committed("proc", "in") == {0: n}
    counts = [(r.value["start_ms"], r.value["count"]) for r in read_topic(log, "counts")]
    assert sorted(counts) == [(s, 10) for s in range(0, (n - 10) * 10, 100)]  # every closed window once, complete
    assert read_topic(log, "proc.dlq") == []


def test_a_second_process_cannot_run_a_live_pipeline(tmp_path: Path, spawn: object) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    holder = spawn(RUN, url, "hold")  # type: ignore[operator]
    assert holder.stdout.readline().strip() == "open", holder.stderr.read()
    namespace: dict[str, object] = {}
    exec(BUILD, namespace)
    log = SQLiteLog(tmp_path / "log.db")
    task = PipelineTask(namespace["build"](), log, metrics=Metrics())  # type: ignore[operator]
    with pytest.raises(PipelineAlreadyRunningError) as err:
        task.open()
    assert f"pipeline 'proc' is already running (pid {holder.pid} on " in str(err.value)
    out, _ = holder.communicate("\n", timeout=30)
    assert out.strip() == "done"
    task.open()  # released: this process takes it
    task.close()


WRITER = """
import sys
from affluent.core.log import open_log
from affluent.core.records import Record

log = open_log(sys.argv[1])
w = int(sys.argv[2])
for b in range(40):
    log.append("in", [Record(value={"w": w, "i": b * 5 + j}, key=f"w{w}-{j}", timestamp_ms=b) for j in range(5)])
"""


def test_a_pipeline_reads_while_other_processes_write(tmp_path: Path, spawn: object) -> None:
    from affluent.core.log import TopicConfig
    from affluent.core.pipeline import Pipeline

    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = SQLiteLog(tmp_path / "log.db")
    log.create_topic("in", TopicConfig(partitions=3))
    p = Pipeline("reader")
    p.topic("in").map(lambda v: [v["w"], v["i"]]).to_topic("out")
    task = PipelineTask(p, log, metrics=Metrics())
    task.open()
    writers = [spawn(WRITER, url, str(w)) for w in range(3)]  # type: ignore[operator]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task.poll_once()
        task.commit()
        if all(w.poll() is not None for w in writers) and _count(log, "out") == 600:
            break
    task.close()
    for w in writers:
        _, err = w.communicate(timeout=30)
        assert w.returncode == 0, err
    got = [tuple(r.value) for r in read_topic(log, "out")]
    assert len(got) == 600 and set(got) == {(w, i) for w in range(3) for i in range(200)}
    assert log.committed("reader", "in") == {p.partition: p.end_offset for p in log.describe_topic("in").partitions}
