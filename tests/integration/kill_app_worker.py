"""A process running one real app's pipelines to the end of a bounded input, for the SIGKILL tests.

Run as `python kill_app_worker.py stock|bikes|crypto FOLDER [RECORDING]`. In FOLDER it keeps the SQLite
log (`affluent.db`), the Parquet lake (`lake/`) and, for bikes and crypto, the SQLite serving store
(`serving.db`).

- stock: the seeded shelf simulator over one simulated day (`affluent stock simulate`), the day in ~6 s;
- bikes: the bundled VéloZef recording (RECORDING, unpacked), not looped, not shifted, its 2 hours in ~6 s;
- crypto: the two bundled recordings, CoinGecko markets and Binance trades (unpacked in the folder
  RECORDING, by `affluent.apps.crypto.app.recording_path`), not looped, not shifted, their 40 minutes
  paced to ~6 s (a trades poll every ~0.7 ms, a markets poll every 75 ms). The trades' ~9,200 polls,
  each one append to the log, make a run last longer than that: ~20-25 s on 2 busy cores. Their event
  times are a recording's, in the wall clock's past or future: no check of event time against it.

The sources run fast but not at once: the pipelines then take their input in many small batches, and
commit and flush many times, as they do live, rather than in a few big steps that a kill would hit or miss
whole. What a source emits does not depend on its pace, only how it is cut into polls.

The lake pipelines commit every `LAKE_COMMIT_MS`, so that kills land between lake flushes and log
commits too. The worker runs the app's pipelines in the real runtime until drained, then exits 0.
Drained means: every source is done and every pipeline has *committed* all of its input, checked in
pipeline order on the log itself, so that a reference run is whole whatever the runtime's own test of
being drained says (an earlier `Runtime.drained` looked at what tasks had read, not committed, and could
stop bikes before its downstream pipelines had seen anything).

It prints, one per line: `ready <n>` before it starts the runtime, `p <n>` whenever n grows, `flush <sink>`
just before a lake or serving-store flush begins, `flushed <sink>` once it has ended (before the log
commit that follows it), and `done <n>` at the end. n counts the work done in
this folder so far: the records in the source topics and the input offsets committed by the pipelines
when the process started, plus the records appended by its sources and read by its pipelines since (an
uninterrupted run ends with the total). The test kills it with SIGKILL on these signs.

With KILL_APP_DIE_IN_MARKER=N in the environment it SIGKILLs itself just after the lake has created
(empty) the temporary file of its N-th commit marker: the one point of a flush too narrow for a kill from
outside to hit on purpose.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.lake import ParquetLakeSink
from affluent.sinks.serving import ServingSink

LAKE_COMMIT_MS = 200
#: a pause between a sink's flush and the log commit that follows it (see _announce_flushes)
FLUSH_PAUSE_S = 0.005
#: the simulated period of the stock run: one day, a reading per shelf per minute (3 stores x 10 shelves)
STOCK_SETTINGS = {"seed": 7, "stores": 3, "period_s": 60.0, "speed": 86_400 / 6, "start": "2025-03-08", "end": "2025-03-08"}
#: the bikes recording's pace: its two hours in about 6 s
BIKES_REPLAY_SPEED = 7_200 / 6
#: the crypto recordings' pace: their forty minutes in about 6 s (the run takes longer: see above)
CRYPTO_REPLAY_SPEED = 2_400 / 6
TIMEOUT_S = 120.0

_out = threading.Lock()


def say(line: str) -> None:
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _announce_flushes() -> None:
    """Say when a sink starts and ends a flush that writes something, so that the test can kill in it or just after.

    After a flush, the runtime commits the log checkpoint: the sink holds what the log does not yet. A
    pause of FLUSH_PAUSE_S there (a slow disk would make one) lets a kill from outside land in that window.
    """

    def wrap(cls: Any, label: str) -> None:
        original = cls.flush

        def flush(self: Any) -> None:
            if not self._buffer:
                original(self)
                return
            say(f"flush {label}")
            original(self)
            say(f"flushed {label}")
            time.sleep(FLUSH_PAUSE_S)

        cls.flush = flush

    wrap(ParquetLakeSink, "lake")
    wrap(ServingSink, "serving")


def _die_in_commit_marker(n: int) -> None:
    """SIGKILL this process right after the lake opens its n-th commit marker file for writing."""
    import builtins

    from affluent.sinks import lake

    real_open = builtins.open
    opened = 0

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        f = real_open(file, mode, *args, **kwargs)
        path = Path(file)
        if "w" in mode and path.parent.name == lake.COMMITS and path.suffix == ".json":
            opened += 1
            if opened == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return f

    lake.open = open_  # type: ignore[attr-defined]  # shadows the builtin in the lake module only


def stock_pipelines(folder: Path) -> list[Pipeline]:
    from affluent.apps.stock.pipeline import build_pipelines, simulator_source, store_tz
    from affluent.config import StockSettings

    cfg = StockSettings(**STOCK_SETTINGS)
    pipes = build_pipelines(simulator_source(cfg), lake_root=folder / "lake", tz=store_tz(cfg), lake_commit_ms=LAKE_COMMIT_MS)
    # the lake in a thread of this process, where its flushes are announced (and KILL_APP_DIE_IN_MARKER
    # dies); KILL_APP_OWN_PROCESS=1 runs it as shipped, in a process of its own
    for p in pipes:
        p.own_process = p.own_process and os.environ.get("KILL_APP_OWN_PROCESS") == "1"
    return pipes


def bikes_pipelines(folder: Path, recording: Path) -> list[Pipeline]:
    from affluent.apps.bikes.pipeline import build_pipelines
    from affluent.sources.gbfs import GBFSReplaySource

    source = GBFSReplaySource(recording, speed=BIKES_REPLAY_SPEED, loop=False, shift_to_now=False)
    return build_pipelines(source, serving_db=folder / "serving.db", lake_root=folder / "lake", lake_commit_ms=LAKE_COMMIT_MS)


def crypto_pipelines(folder: Path, recordings: Path) -> list[Pipeline]:
    from affluent.apps.crypto.app import MARKETS_RECORDING, TRADES_RECORDING, recording_path
    from affluent.apps.crypto.pipeline import build_pipelines
    from affluent.sources.replay import ReplaySource

    markets, trades = (
        ReplaySource(recording_path(recordings, name), speed=CRYPTO_REPLAY_SPEED, loop=False, shift_to_now=False)
        for name in (MARKETS_RECORDING, TRADES_RECORDING)
    )
    return build_pipelines(markets, trades, serving_db=folder / "serving.db", lake_root=folder / "lake", lake_commit_ms=LAKE_COMMIT_MS, max_event_ahead_ms=None)


def _done_before(log: SQLiteLog, pipes: list[Pipeline]) -> int:
    """Records in the source topics plus input offsets committed by the pipelines."""
    n = 0
    for p in pipes:
        for b in p.sources:
            n += sum(log.end_offsets(b.topic).values()) if log.topic_exists(b.topic) else 0
        for topic in p.inputs:
            n += sum(log.committed(p.name, topic).values()) if log.topic_exists(topic) else 0
    return n


def _handled(rt: Runtime) -> int:
    return sum(st.records_out for st in rt.source_tasks) + sum(t.records_in for t in rt.tasks)


def _report_progress(rt: Runtime, base: int, stop: threading.Event) -> None:
    last = -1
    while not stop.wait(0.005):
        n = base + _handled(rt)
        if n != last:
            say(f"p {n}")
            last = n


def main(argv: list[str]) -> int:
    app, folder = argv[1], Path(argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    _announce_flushes()
    if os.environ.get("KILL_APP_DIE_IN_MARKER"):
        _die_in_commit_marker(int(os.environ["KILL_APP_DIE_IN_MARKER"]))
    if app == "stock":
        pipes = stock_pipelines(folder)
    elif app == "bikes":
        pipes = bikes_pipelines(folder, Path(argv[3]))
    elif app == "crypto":
        pipes = crypto_pipelines(folder, Path(argv[3]))
    else:
        raise SystemExit(f"unknown app {app!r}: stock, bikes or crypto")
    log = SQLiteLog(folder / "affluent.db")
    rt = Runtime(log, metrics=Metrics())
    for p in pipes:
        rt.add(p)
    base = _done_before(log, pipes)
    stop = threading.Event()
    monitor = threading.Thread(target=_report_progress, args=(rt, base, stop), daemon=True)
    monitor.start()
    say(f"ready {base}")
    try:
        rt.run_to_end(timeout_s=TIMEOUT_S)
    finally:
        stop.set()
        monitor.join()
    say(f"done {base + _handled(rt)}")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
