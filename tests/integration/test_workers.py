"""Several worker processes share one pipeline's partitions, through SIGKILLs and new workers.

The final keyed counts and windows equal those of one process running alone, with nothing lost
and nothing doubled.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from affluent.core.log import open_log
from affluent.testing import read_topic

APP = Path(__file__).with_name("workers_app.py")
sys.path.insert(0, str(APP.parent))
import workers_app  # noqa: E402
from workers_app import kill_worker, start_worker, stop_workers  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _worker(url: str, name: str) -> subprocess.Popen[str]:
    return start_worker(APP, url, name)


def _results(url: str) -> dict[str, Any]:
    log = open_log(url)
    try:
        counts = Counter((r.value["key"], r.value["n"], r.value["id"]) for r in read_topic(log, "ww.counts"))
        # the end markers' windows close only when a bounded run ends (the reference): not compared
        windows = Counter(
            (r.key, r.value["start_ms"], r.value["n"], r.value["total"])
            for r in read_topic(log, "ww.windows")
            if r.value["start_ms"] < workers_app.SENTINEL_MS - 1_000
        )
        events = Counter(r.value["id"] for r in read_topic(log, "ww.events"))
    finally:
        log.close()
    return {"counts": counts, "windows": windows, "events": events}


def _appended(url: str) -> int:
    log = open_log(url)
    try:
        return sum(log.end_offsets("ww.events").values())
    finally:
        log.close()


def _complete(url: str, want: dict[str, Any]) -> bool:
    got = _results(url)
    return sum(got["counts"].values()) >= sum(want["counts"].values()) and sum(got["windows"].values()) >= sum(want["windows"].values())


def test_three_workers_killed_and_replaced_give_the_results_of_one_process(tmp_path: Path) -> None:
    _kill_and_compare(tmp_path, f"sqlite:///{tmp_path / 'workers.db'}", kills_wanted=5, limit_s=150)


def test_three_workers_on_kafka_killed_and_replaced_give_the_results_of_one_process(tmp_path: Path, kafka_broker: Any) -> None:
    """The same on a Kafka-protocol broker: the workers are members of one consumer group; a killed
    one's partitions move when its session times out, and each joining worker makes the group rebalance."""
    _kill_and_compare(tmp_path, kafka_broker.url, kills_wanted=2, limit_s=300)


def _kill_and_compare(tmp_path: Path, url: str, *, kills_wanted: int, limit_s: float) -> None:
    ref = f"sqlite:///{tmp_path / 'alone.db'}"
    r = subprocess.run([sys.executable, str(APP), ref], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    want = _results(ref)
    assert sum(want["counts"].values()) == workers_app.N_EVENTS + len(workers_app.SENTINELS)
    assert len(want["windows"]) > 500

    rnd = random.Random(20261130)
    workers = {f"w{i}": _worker(url, f"w{i}") for i in range(3)}
    kills = 0
    logs: list[str] = []
    started = time.monotonic()
    try:
        for kill in range(1, kills_wanted + 1):
            time.sleep(rnd.uniform(0.3, 1.0))
            name = rnd.choice(sorted(workers))
            logs.append(kill_worker(workers, name, url, "ww"))
            kills += 1
            workers[f"w{3 + kill}"] = _worker(url, f"w{3 + kill}")  # a new worker joins
        appended = _appended(url)
        assert appended < workers_app.N_EVENTS, f"the source had appended everything ({appended}) before the last kill"
        while not _complete(url, want):
            assert time.monotonic() - started < limit_s, f"not complete after {limit_s} s: {sum(_results(url)['counts'].values())} counts"
            time.sleep(0.5)
    finally:
        logs += stop_workers(workers)
    text = "\n".join(logs)
    # a joining worker makes the others give up partitions (after a checkpoint), and they move
    assert text.count("let go of") >= 1 and text.count("took") >= 3
    assert "runs the sources of pipeline ww" in text
    got = _results(url)
    assert got["events"] == want["events"], "the source appended a record twice or lost one"
    assert got["counts"] == want["counts"]
    assert got["windows"] == want["windows"]


def test_affluent_run_with_workers(tmp_path: Path) -> None:
    """`affluent run stock --workers 2`: two processes; the sources and the lake run in one of them."""
    affluent = Path(sys.executable).with_name("affluent")
    cmd = [str(affluent), "run", "stock", "--workers", "2", "--speed", "inf", "--start", "2026-11-01", "--end", "2026-11-01T01:00", "--duration", "15"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert out.count("worker started") == 2
    assert out.count("runs the sources of pipeline stock") == 1 and out.count("runs pipeline stock-lake") == 1
    log = open_log(f"sqlite:///{tmp_path / '.affluent' / 'affluent.db'}")
    try:
        end = log.end_offsets("stock.readings")[0]
        assert end > 10_000
        assert log.committed("stock", "stock.readings") == {0: end}
        assert log.committed("stock-lake", "stock.readings") == {0: end}
    finally:
        log.close()
