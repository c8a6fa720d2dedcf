"""A pipeline for the multi-worker tests: keyed events in 4 partitions, a running count per key
(a keyed step) and per-key tumbling windows. Its state follows the input key, so workers share it.

Run as `python workers_app.py LOG WORKER` (a worker until SIGTERM) or `python workers_app.py LOG`
(alone, to the end of the input: the reference).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from affluent.core.aggregates import Count, Sum
from affluent.core.log import TopicConfig, open_log
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sources import Source, SourcePoll
from affluent.core.windows import TumblingWindow
from affluent.testing.broker import end_transactions

N_EVENTS = 12_000
KEYS = 20
PARTITIONS = 4
#: each key's last event, a day later, closes every window of its partition, whatever the partitioner
SENTINELS = [f"k{i}" for i in range(KEYS)]
SENTINEL_MS = 1_000 + N_EVENTS * 10 + 86_400_000


def event(i: int) -> Record:
    k = f"k{(i * 7) % KEYS}"
    return Record(value={"id": i, "key": k, "amount": i % 13}, key=k, timestamp_ms=1_000 + i * 10)


def sentinels() -> list[Record]:
    return [Record(value={"id": -1, "key": k, "amount": 0}, key=k, timestamp_ms=SENTINEL_MS) for k in SENTINELS]


class Events(Source):
    """`n` events made by `event(i)`, 100 a poll, then the records `last()` makes (which close every window)."""

    name = "events"
    mode = "simulator"

    def __init__(self, n: int, event: Callable[[int], Record], last: Callable[[], list[Record]]) -> None:
        self.n, self.event, self.last = n, event, last
        self.pos = 0

    def open(self, position: Any | None) -> None:
        self.pos = int(position or 0)

    def poll(self) -> SourcePoll:
        end = min(self.pos + 100, self.n)
        recs = [self.event(i) for i in range(self.pos, end)]
        if end == self.n and self.pos < self.n:
            recs += self.last()
        self.pos = end
        return SourcePoll(records=recs, position=end, done=end >= self.n, wait_s=0.05)


def count(state: Any, value: Any, ts: int) -> tuple[Any, list[Any]]:
    n = (state or 0) + 1
    return n, [{"key": value["key"], "n": n, "id": value["id"]}]


def build() -> Pipeline:
    p = Pipeline("ww", commit_interval_ms=50, max_poll_records=200)
    events = p.source(Events(N_EVENTS, event, sentinels), topic="ww.events", config=TopicConfig(partitions=PARTITIONS, retention_ms=None))
    events.stateful(count, key=lambda v: v["key"], name="count").to_topic("ww.counts", config=TopicConfig(retention_ms=None))
    events.window(TumblingWindow(size_ms=1_000, idle_ms=None), {"n": Count(), "total": Sum("amount")}, name="per-second").to_topic(
        "ww.windows", config=TopicConfig(retention_ms=None)
    )
    return p


def serve(pipeline: Pipeline) -> int:
    """`LOG WORKER`: run `pipeline` as that worker until SIGTERM; `LOG` alone: run it to the end of its input."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    url = sys.argv[1]
    worker = sys.argv[2] if len(sys.argv) > 2 else None
    if url.startswith("kafka://"):
        # fewer, so that fewer kills land inside a checkpoint's transaction, which the test broker shows half-done (docs/kafka.md)
        pipeline.commit_interval_ms = max(pipeline.commit_interval_ms, 250)
    log = open_log(url)
    rt = Runtime(log, worker=worker)
    rt.add(pipeline)
    if worker is None:
        rt.run_to_end(timeout_s=120)
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1)  # every thread's stack, for a worker that will not stop
    rt.start()
    print("started", flush=True)
    while not stop.wait(0.1):
        if rt.errors:
            raise rt.errors[0]
    rt.stop()
    return 0


def start_worker(app: Path, url: str, name: str) -> subprocess.Popen[str]:
    """Start `app` as worker `name`, once it says it has started."""
    proc = subprocess.Popen([sys.executable, str(app), url, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started", proc.stderr.read() if proc.stderr else ""
    return proc


def kill_worker(workers: dict[str, subprocess.Popen[str]], name: str, url: str, pipeline: str) -> str:
    """SIGKILL worker `name` and forget it; returns what it logged."""
    os.kill(workers[name].pid, signal.SIGKILL)
    logged = workers.pop(name).communicate(timeout=30)[1]
    if url.startswith("kafka://"):  # the test broker never times out a checkpoint the worker had begun
        end_transactions(urlsplit(url).netloc, f"affluent.{pipeline}.{name}")
    return logged


def stop_workers(workers: dict[str, subprocess.Popen[str]]) -> list[str]:
    """SIGTERM every worker and wait for each to exit cleanly; returns what they logged."""
    for proc in workers.values():
        proc.send_signal(signal.SIGTERM)
    logs = []
    try:
        for name, proc in workers.items():
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(1)  # for the stacks to be written
                proc.kill()
                raise AssertionError(f"worker {name} did not stop within 60 s; its log and threads:\n{proc.communicate()[1]}") from None
            logs.append(err)
            assert proc.returncode == 0, err
    finally:  # a worker that would not stop must not outlive the test (nor be taken for another test's child)
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return logs


if __name__ == "__main__":
    sys.exit(serve(build()))
