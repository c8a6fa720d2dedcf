"""Public helpers for testing pipelines: in-memory sources and sinks, run-until helpers.

>>> import tempfile, pathlib
>>> from affluent.core.pipeline import Pipeline
>>> from affluent.core.records import Record
>>> log = temp_log(pathlib.Path(tempfile.mkdtemp()))
>>> p = Pipeline("double")
>>> src = ListSource([Record(value={"x": i}) for i in range(5)], name="numbers")
>>> _ = p.source(src, topic="numbers").map(lambda v: v["x"] * 2, name="x2").to_topic("doubled")
>>> [r.value for r in run_until(p, log, topic="doubled", count=5)]
[0, 2, 4, 6, 8]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from affluent.core.errors import AffluentError
from affluent.core.log import Log
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sinks import Sink
from affluent.core.sources import Source, SourcePoll
from affluent.core.sqlite_log import SQLiteLog

__all__ = ["ListSink", "ListSource", "read_topic", "run_for", "run_runtime_until", "run_until", "temp_log"]


def temp_log(folder: Path) -> SQLiteLog:
    """An embedded log in `folder` (pytest's tmp_path)."""
    return SQLiteLog(Path(folder) / "affluent-test.db")


class ListSource(Source):
    """Emits given records, `batch_size` per poll, then says it is done. Resumes by position."""

    def __init__(self, records: Iterable[Record | Any], *, name: str = "list", batch_size: int = 1000, wait_s: float = 0.0) -> None:
        self.name = name
        self.items = [r if isinstance(r, Record) else Record(value=r) for r in records]
        self.batch_size = batch_size
        self.wait_s = wait_s
        self.pos = 0
        self.mode = "replay"

    def open(self, position: Any | None) -> None:
        self.pos = int(position or 0)

    def poll(self) -> SourcePoll:
        chunk = self.items[self.pos : self.pos + self.batch_size]
        self.pos += len(chunk)
        return SourcePoll(records=chunk, wait_s=self.wait_s, position=self.pos, done=self.pos >= len(self.items))


class ListSink(Sink):
    """Keeps every record written to it, in order."""

    def __init__(self, name: str = "list-sink") -> None:
        self.name = name
        self.records: list[Record] = []
        self.flushes = 0
        self._lock = threading.Lock()

    def write(self, records: list[Record]) -> None:
        with self._lock:
            self.records.extend(records)

    def flush(self) -> None:
        self.flushes += 1

    @property
    def values(self) -> list[Any]:
        return [r.value for r in self.records]


def read_topic(log: Log, topic: str) -> list[Record]:
    """Every record of a topic, partition by partition, in offset order."""
    out: list[Record] = []
    for p in log.describe_topic(topic).partitions:
        out.extend(log.iter_records(topic, p.partition, p.start_offset))
    return out


def _count(log: Log, topic: str) -> int:
    try:
        return log.describe_topic(topic).records
    except AffluentError:
        return 0


def run_until(
    pipeline: Pipeline | list[Pipeline],
    log: Log,
    *,
    topic: str,
    count: int,
    timeout_s: float = 30.0,
    metrics: Metrics | None = None,
) -> list[Record]:
    """Run pipelines (and their sources) until `topic` holds `count` records; returns them.

    Raises TimeoutError, naming what it saw, when the count is not reached in time.
    """
    rt = Runtime(log, metrics=metrics or Metrics())
    for p in pipeline if isinstance(pipeline, list) else [pipeline]:
        rt.add(p)
    run_runtime_until(
        rt, lambda: _count(log, topic) >= count, timeout_s=timeout_s, what=lambda: f"{topic!r} holds {_count(log, topic)} records, expected {count}"
    )
    return read_topic(log, topic)


def run_runtime_until(
    rt: Runtime,
    until: Callable[[], bool],
    *,
    timeout_s: float = 30.0,
    during: Callable[[], None] | None = None,
    what: Callable[[], str] = lambda: "the condition does not hold",
    poll_s: float = 0.02,
) -> Runtime:
    """Start `rt`, wait until `until()` holds (calling `during()` at each look, every `poll_s`), then stop it.

    The first error of a task is raised; after `timeout_s`, a TimeoutError says `what()` and the status.
    """
    rt.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not until():
            if rt.errors:
                raise rt.errors[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout_s} s, {what()}; status: {rt.status()}")
            if during is not None:
                during()
            time.sleep(poll_s)
    finally:
        rt.stop()
    if rt.errors:
        raise rt.errors[0]
    return rt


def run_for(pipeline: Pipeline | list[Pipeline], log: Log, seconds: float, *, metrics: Metrics | None = None) -> Runtime:
    """Run pipelines for `seconds` (or until every task ended), then stop them; returns the runtime."""
    rt = Runtime(log, metrics=metrics or Metrics())
    for p in pipeline if isinstance(pipeline, list) else [pipeline]:
        rt.add(p)
    rt.start()
    deadline = time.monotonic() + seconds
    while rt.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    rt.stop()
    if rt.errors:
        raise rt.errors[0]
    return rt
