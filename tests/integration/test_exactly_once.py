"""Exactly-once under SIGKILL: kill the pipeline process at random moments, restart it, compare."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from affluent.core.log import open_log
from affluent.testing import read_topic

WORKER = Path(__file__).with_name("eo_worker.py")
sys.path.insert(0, str(WORKER.parent))
import eo_worker  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def _start(log: Path | str, chunk: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(WORKER), str(log), str(chunk)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _outputs(where: Path | str) -> dict[str, Any]:
    log = open_log(where if isinstance(where, str) else f"sqlite:///{where}")
    try:
        events = read_topic(log, "eo.events")
        # positions in the input, not offsets: Kafka's transaction markers take offsets too
        index = {r.offset: i for i, r in enumerate(events)}
        windows = sorted((r.key, r.value["start_ms"], r.value["n"], r.value["total"], r.value["top"]) for r in read_topic(log, "eo.windows"))
        late = sorted((r.value["value"]["id"], index[r.value["offset"]]) for r in read_topic(log, "eo.late"))
        dlq = sorted((r.value["value"]["id"], r.value["step"], r.value["error_type"], index[r.value["offset"]]) for r in read_topic(log, "eo.dlq"))
        inputs = [r.value["id"] for r in events]
    finally:
        log.close()
    return {"windows": windows, "late": late, "dlq": dlq, "inputs": inputs}


def _reference() -> dict[str, Any]:
    """The same computation in plain Python, record by record."""
    events = [eo_worker.event(i) for i in range(eo_worker.N_EVENTS)]
    seen: set[str] = set()
    wm = -(1 << 62)
    wins: dict[tuple[str, int], list[int]] = {}
    late, dlq = [], []
    for offset, e in enumerate(events):
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        try:
            amount = int(e["amount"])
        except ValueError:
            dlq.append((e["id"], "parse-amount", "ValueError", offset))
            continue
        t = e["t"]
        start = t - t % 1000
        if t <= wm and start + 1000 + 500 <= wm:
            late.append((e["id"], offset))
            continue
        wm = max(wm, t)
        acc = wins.setdefault((e["key"], start), [0, 0, 0])
        acc[0] += 1
        acc[1] += amount
        acc[2] = max(acc[2], amount)
    windows = sorted((k, s, n, total, top) for (k, s), (n, total, top) in wins.items())
    return {"windows": windows, "late": sorted(late), "dlq": sorted(dlq), "inputs": [e["id"] for e in events]}


def test_uninterrupted_run_matches_plain_python(tmp_path: Path) -> None:
    db = tmp_path / "clean.db"
    proc = _start(db, 97)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    got, want = _outputs(db), _reference()
    assert got == want
    assert len(want["late"]) > 10 and len(want["dlq"]) > 5 and len(want["windows"]) > 1000


def test_sigkill_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    _kill_and_compare(tmp_path / "killed.db", kills_wanted=25, chunks=[61, 97, 150])


def test_sigkill_on_kafka_loses_and_repeats_nothing(kafka_broker: Any) -> None:
    """The same on a Kafka-protocol broker: each checkpoint is one Kafka transaction."""
    _kill_and_compare(kafka_broker.url, kills_wanted=6, chunks=[400, 600])


def _kill_and_compare(where: Path | str, *, kills_wanted: int, chunks: list[int]) -> None:
    rnd = random.Random(20261123)
    kills = 0
    finished = False
    started = time.monotonic()
    while not finished:
        assert time.monotonic() - started < 400, f"did not finish after {kills} kills"
        proc = _start(where, rnd.choice(chunks))
        if kills < kills_wanted:
            # kill after a random number of committed rounds, then a random bit more: mid-batch or mid-commit
            assert proc.stdout is not None
            for _ in range(rnd.randrange(0, 8)):
                if not proc.stdout.readline():
                    break
            time.sleep(rnd.uniform(0, 0.02))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        proc.stdout.read() if proc.stdout else None
        code = proc.wait(timeout=120)
        assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
        finished = True
    assert kills >= kills_wanted * 4 // 5
    got, want = _outputs(where), _reference()
    assert Counter(got["inputs"]) == Counter(want["inputs"]), "the source appended a record twice or lost one"
    assert got["windows"] == want["windows"]
    assert got["late"] == want["late"]
    assert got["dlq"] == want["dlq"]
