"""Exactly-once under SIGKILL, on the real apps: `stock`, `bikes` and `crypto` killed at random points, restarted, compared.

Each test runs an app's real pipelines (`kill_app_worker.py`) over a bounded input once without
interruption, then again in another folder, killing the process with SIGKILL at seeded random
points (during startup, after some progress, just after a lake or serving-store flush began or ended)
and restarting it, until a last run finishes. The killed run must then equal the uninterrupted one:

- every topic: per partition, the same records (offset, key, value, timestamp, headers) in the same order;
  except two kinds, where two uninterrupted runs differ too (UPDATE_STREAMS, MERGED_STREAMS):
  - window topics that emit on update (the per-minute topics of bikes, the candles of crypto): how many
    updates a window gets depends on how its input was cut into batches. For these, each window's last
    update must be the same, and within a window updates must never go back to an older state (for
    crypto's candles, never stay where they were either: each has more trades than the one before);
  - crypto.anomalies, one partition written from the four of crypto.trades: how the partitions' records
    interleave depends on how much of each a poll found. For it, each key's records must be the same, in
    the same order;
- the lake: the rows of every Parquet file a reader would see (with their date=/hour= folders), as
  multisets: none missing, none twice;
- the serving store (bikes, crypto): every SQLite table, row for row. stock has none, and must not make one.

No field is left out (but crypto.anomalies' offsets): nothing these runs store depends on the wall clock.
Their inputs make no dead letters, whose `failed_at_ms` would (the crypto test checks it); crypto's times
all come from the recordings (a market row's `snapshot_ms`, a forecast's `made_ms`), its trades come in
order, none late, and its forecasts are a deterministic fit. A last test kills stock at one precise point:
the lake's commit marker created but still empty.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import serving_connection

WORKER = Path(__file__).with_name("kill_app_worker.py")
#: topics of windows with emit="update": the fields that, with the record's key, name a window; those that order its
#: updates; and whether each update must be strictly after the one before (not merely never go back).
#: bikes: a later snapshot, then more counted. crypto: more trades, strictly: a 1m candle is emitted again only when
#: a trade joins it, and its 5m and 1h roll-ups with it; the moving averages re-emit a candle unchanged only after a
#: late trade, and the recording's trades come in order (the test checks that none is late). So an update repeated
#: by a restart shows.
UPDATE_STREAMS = {
    "bikes.system_minute": (("window_start_ms",), ("snapshot_ms", "stations"), False),
    "bikes.vehicle_minute": (("window_start_ms",), ("snapshot_ms", "vehicles"), False),
    "crypto.candles": (("symbol", "interval", "open_time"), ("trades",), True),
}
#: topics of one partition that a pipeline writes as it reads several: how the records of its input partitions
#: interleave there depends on how much of each partition a poll found (a poll reads one partition's backlog, then
#: the next one's), so the same input at another pace, or a restart catching up, orders them otherwise. For these,
#: each key's records must be the same, in the same order (keys of one input partition stay in order), and the
#: offsets are left out: they are the interleaving. crypto.anomalies: one partition, written from the four of
#: crypto.trades; an uninterrupted run of the trades at full speed put ETHUSDT's alert (partition 0) before
#: AVAXUSDT's (partition 1), and so did a killed run whose restarts caught up late in the input.
MERGED_STREAMS = {"crypto.anomalies"}
KILLS_PER_APP = 30
WAIT_S = 60.0
#: the share of an uninterrupted run's time that the killed runs get, over all kills
LIVE_SHARE = 0.3
#: how long a kill meant for a flush waits for one
FLUSH_WAIT_S = 0.6

pytestmark = [pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"), pytest.mark.slow]


# -- running and killing the worker ------------------------------------------------------------------------------------
class Worker:
    """One worker process; its output lines are read by a thread, so that waiting for one never blocks forever.

    recording: the worker's input, for the apps that replay one: bikes' recording, or the folder where
    crypto's two are unpacked.
    """

    def __init__(self, app: str, folder: Path, recording: Path | None, env: dict[str, str] | None = None) -> None:
        args = [sys.executable, str(WORKER), app, str(folder)] + ([str(recording)] if recording else [])
        self.stderr_path = folder.with_name(f"{folder.name}.stderr")
        with self.stderr_path.open("wb") as err:  # a file, not a pipe: a chatty worker must not block on it
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **(env or {})})
        self.lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self.progress = 0
        self.ready_at: float | None = None
        self.base: int | None = None
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put((time.monotonic(), raw.decode().strip()))
        self.lines.put(None)

    def _take(self, item: tuple[float, str] | None) -> str | None:
        if item is None:
            self.lines.put(None)  # stays the last item
            return None
        at, line = item
        self.seen.append(line)
        if line.startswith("p "):
            self.progress = int(line.split()[1])
        elif line.startswith("ready "):
            self.ready_at, self.base = at, int(line.split()[1])
            self.progress = self.base
        return line

    def next_line(self) -> str | None:
        """The next line, or None at the end of the output."""
        return self._take(self.lines.get(timeout=WAIT_S))

    def read_available(self) -> None:
        while not self.lines.empty():
            if self._take(self.lines.get_nowait()) is None:
                return

    def wait_for(self, sign: str, *, beyond: int = -1, within_s: float = WAIT_S) -> bool:
        """Read until a line starting with `sign` comes once progress is beyond `beyond`.

        False if the output ended first, or nothing of the kind came within `within_s`.
        """
        deadline = time.monotonic() + within_s
        while True:
            try:
                item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            line = self._take(item)
            if line is None:
                return False
            if line.startswith(sign) and self.progress > beyond:
                return True

    def kill(self) -> bool:
        """SIGKILL it; False when it had already ended."""
        if self.proc.poll() is not None:
            return False
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT_S)
        self.read_available()
        return True

    def finish(self) -> int:
        """Wait for its end; the work it says it has done (`done` count)."""
        while self.next_line() is not None:
            pass
        code = self.proc.wait(timeout=WAIT_S)
        assert code == 0, f"worker failed ({code}): {self.stderr()}"
        done = [s for s in self.seen if s.startswith("done ")]
        assert done, "the worker did not say done"
        return int(done[0].split()[1])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class KillLog:
    kills: Counter[str] = field(default_factory=Counter)
    ended_before_kill: int = 0
    runs: int = 0
    #: kills of a run that had not done all the work yet
    kills_with_work_left: int = 0
    #: per run: how it was meant to die, the work done when it started, the work it reached, killed or not
    details: list[str] = field(default_factory=list)


def run_clean(app: str, folder: Path, recording: Path | None) -> tuple[int, float]:
    """One run to the end: the work it did (its `done` count) and how long it ran after `ready`."""
    w = Worker(app, folder, recording)
    try:
        work = w.finish()
        assert w.ready_at is not None
        return work, time.monotonic() - w.ready_at
    finally:
        w.close()


def run_with_kills(
    app: str, folder: Path, recording: Path | None, *, work: int, live_s: float, kills: int, seed: int, env: dict[str, str] | None = None
) -> KillLog:
    """Start the worker again and again and SIGKILL it at seeded random points until `kills` kills; then a last run ends.

    Each kill is one of:
    - startup: at a random moment after the start (imports, opening the log, the lake's recovery, the serving store);
    - running: once this run has done some work, at a random moment (mid-poll, mid-batch, mid-commit);
    - flush: once this run has done some work and run a random while, just after a lake or serving-store flush
      began (in the Parquet or SQLite write);
    - flushed: the same, just after such a flush ended (between it and the log commit that follows, or just after).
    work, live_s: the work an uninterrupted run does (its `done` count), and how long it runs. The random
    whiles add up to about LIVE_SHARE of `live_s` over all kills (a restart also catches up with what the
    killed run had not committed), so that kills fall all along the input, not only at its start. Once a
    run has ended by itself (the input is done), the remaining kills are startup kills: the others would
    wait for work that never comes.
    """
    rnd = random.Random(seed)
    flushes = ["lake"] if app == "stock" else ["lake", "serving"]
    mean_live_s = LIVE_SHARE * live_s / (0.8 * kills)
    out = KillLog()
    done_so_far = 0  # the most work a run found done when it started
    while sum(out.kills.values()) < kills:
        assert out.runs < 2 * kills, f"only {sum(out.kills.values())} kills in {out.runs} runs:\n" + "\n".join(out.details)
        out.runs += 1
        how = rnd.choices(["startup", "running", "flush", "flushed"], weights=[2, 4, 2, 2])[0] if not out.ended_before_kill else "startup"
        w = Worker(app, folder, recording, env)
        try:
            if how == "startup":
                time.sleep(rnd.uniform(0.0, 0.8))
                alive = True
            else:
                alive = w.wait_for("ready ") and w.wait_for("p ", beyond=w.base or 0)
                if alive:
                    assert w.ready_at is not None
                    time.sleep(max(0.0, w.ready_at + rnd.uniform(0.1, 1.9) * mean_live_s - time.monotonic()))
                if alive and how in ("flush", "flushed"):
                    how = f"{how} {rnd.choice(flushes)}"
                    w.read_available()
                    alive = w.wait_for(how, within_s=FLUSH_WAIT_S)
                    if alive:
                        time.sleep(rnd.uniform(0.0, 0.015 if how.startswith("flush ") else 0.004))
                    else:  # no flush came soon: the input may be done; kill it anyway, wherever it is
                        how = "running"
                        alive = w.proc.poll() is None
            killed = alive and w.kill()
            w.read_available()
            done_so_far = max(done_so_far, w.base or 0)
            out.details.append(f"{how}: work {w.base} -> {w.progress}, {'killed' if killed else 'ended'}")
            if killed:
                out.kills[how] += 1
                out.kills_with_work_left += max(w.progress, done_so_far) < work
            else:
                assert w.proc.wait(timeout=WAIT_S) == 0, f"worker failed ({w.proc.returncode}): {w.stderr()}"
                out.ended_before_kill += 1
        finally:
            w.close()
    out.runs += 1
    run_clean(app, folder, recording)
    return out


# -- what a run leaves ---------------------------------------------------------------------------------------------------
def _canon(x: Any) -> str:
    return orjson.dumps(x, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def topics(folder: Path) -> dict[str, dict[int, list[tuple[Any, ...]]]]:
    """Every topic: per partition, (offset, key, value, timestamp_ms, headers) in offset order."""
    log = SQLiteLog(folder / "affluent.db")
    try:
        out: dict[str, dict[int, list[tuple[Any, ...]]]] = {}
        for info in log.list_topics():
            parts = out[info.name] = {}
            for p in info.partitions:
                parts[p.partition] = [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for r in log.iter_records(info.name, p.partition, p.start_offset)]
        return out
    finally:
        log.close()


def lake(folder: Path) -> dict[str, Counter[str]]:
    """Per dataset, the rows of every Parquet file in it (hidden or not), with the date and hour of its folder."""
    root = folder / "lake"
    out: dict[str, Counter[str]] = {}
    if not root.exists():
        return out
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        rows = out[ds.name] = Counter()
        for f in sorted(ds.rglob("*.parquet")):
            where = {kv.split("=", 1)[0]: kv.split("=", 1)[1] for kv in f.relative_to(ds).parts[:-1] if "=" in kv}
            for row in pq.read_table(f, partitioning=None).to_pylist():
                rows[_canon({**row, **{f"_{k}": v for k, v in where.items()}})] += 1
    return out


def lake_leftovers(folder: Path) -> list[str]:
    """Files in the lake that are neither data files nor commit markers (half-written files of a killed flush)."""
    root = folder / "lake"
    bad = []
    for f in root.rglob("*") if root.exists() else ():
        rel = f.relative_to(root)
        if f.is_file() and not (f.name.startswith("part-") and f.suffix == ".parquet") and rel.parent.name != "_commits":
            bad.append(str(rel))
    return sorted(bad)


def serving(folder: Path) -> dict[str, list[tuple[Any, ...]]] | None:
    """Every table of the serving store, its rows sorted; None when there is no serving store."""
    path = folder / "serving.db"
    if not path.exists():
        return None
    con = serving_connection(path, read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=_canon) for n in names}
    finally:
        con.close()


# -- comparing -----------------------------------------------------------------------------------------------------------
def _shown(rows: Any, n: int = 3) -> str:
    return "; ".join(str(r)[:400] for r in list(rows)[:n])


def diff_topics(want: dict[str, dict[int, list[tuple[Any, ...]]]], got: dict[str, dict[int, list[tuple[Any, ...]]]]) -> list[str]:
    problems = []
    if sorted(want) != sorted(got):
        problems.append(f"topics differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}")
    for name in sorted(set(want) & set(got)):
        if sorted(want[name]) != sorted(got[name]):
            problems.append(f"{name}: partitions {sorted(want[name])} != {sorted(got[name])}")
            continue
        if name in UPDATE_STREAMS:
            problems += diff_updates(name, want[name], got[name])
            continue
        if name in MERGED_STREAMS:
            problems += diff_merged(name, want[name], got[name])
            continue
        for part, w in want[name].items():
            g = got[name][part]
            if w == g:
                continue
            first = next((i for i, (a, b) in enumerate(zip(w, g, strict=False)) if a != b), min(len(w), len(g)))
            problems.append(
                f"{name}[{part}]: {len(g)} records instead of {len(w)}, first difference at index {first}: "
                f"want {_shown(w[first : first + 1])} got {_shown(g[first : first + 1])}"
            )
    return problems


def _last_updates(name: str, parts: dict[int, list[tuple[Any, ...]]], problems: list[str]) -> dict[tuple[Any, ...], Any]:
    """The last update of each window (key, fields), checking on the way that no update goes back in time
    (nor stays where it was, for a strict stream)."""
    fields, order, strict = UPDATE_STREAMS[name]
    last: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for part, recs in parts.items():
        for rec in recs:
            window = (rec[1], *(rec[2][f] for f in fields))
            before = last.get(window)
            if before is not None:
                was, now = [before[2][f] for f in order], [rec[2][f] for f in order]
                if was > now or (strict and was == now):
                    problems.append(f"{name}[{part}]: window {window} went {'back' if was > now else 'nowhere'} from {_shown([before])} to {_shown([rec])}")
            last[window] = rec
    return {w: (r[1], r[2], r[3], r[4]) for w, r in last.items()}


def diff_updates(name: str, want: dict[int, list[tuple[Any, ...]]], got: dict[int, list[tuple[Any, ...]]]) -> list[str]:
    problems: list[str] = []
    w, g = _last_updates(name, want, problems), _last_updates(name, got, problems)
    differ = sorted(k for k in set(w) | set(g) if w.get(k) != g.get(k))
    if differ:
        problems.append(
            f"{name}: the last update of {len(differ)} of {len(w)} windows differs, e.g. {differ[0]}: want {w.get(differ[0])} got {g.get(differ[0])}"
        )
    return problems


def _by_key(recs: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    """Each key's records (key, value, timestamp_ms, headers), in offset order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for rec in recs:
        out.setdefault(_canon(rec[1]), []).append(rec[1:])
    return out


def diff_merged(name: str, want: dict[int, list[tuple[Any, ...]]], got: dict[int, list[tuple[Any, ...]]]) -> list[str]:
    problems = []
    for part, w in want.items():
        wk, gk = _by_key(w), _by_key(got[part])
        differ = sorted(k for k in set(wk) | set(gk) if wk.get(k) != gk.get(k))
        if differ:
            k = differ[0]
            problems.append(
                f"{name}[{part}]: the records of {len(differ)} of {len(wk)} keys differ, e.g. {k}: "
                f"want {len(wk.get(k, []))} records ({_shown(wk.get(k, []))}) got {len(gk.get(k, []))} ({_shown(gk.get(k, []))})"
            )
    return problems


def diff_multisets(what: str, want: Counter[str], got: Counter[str]) -> list[str]:
    missing, extra = want - got, got - want
    if not missing and not extra:
        return []
    return [
        f"{what}: {sum(got.values())} rows instead of {sum(want.values())}; {sum(missing.values())} missing "
        f"(e.g. {_shown(missing.elements())}), {sum(extra.values())} extra or repeated (e.g. {_shown(extra.elements())})"
    ]


def diff_lake(want: dict[str, Counter[str]], got: dict[str, Counter[str]]) -> list[str]:
    problems = [] if sorted(want) == sorted(got) else [f"lake datasets {sorted(want)} != {sorted(got)}"]
    for ds in sorted(set(want) & set(got)):
        problems += diff_multisets(f"lake {ds}", want[ds], got[ds])
    return problems


def diff_serving(want: dict[str, list[tuple[Any, ...]]] | None, got: dict[str, list[tuple[Any, ...]]] | None) -> list[str]:
    if want is None or got is None:
        return [] if want is got else [f"serving store: {'none' if want is None else sorted(want)} != {'none' if got is None else sorted(got)}"]
    problems = [] if sorted(want) == sorted(got) else [f"serving tables {sorted(want)} != {sorted(got)}"]
    for t in sorted(set(want) & set(got)):
        problems += diff_multisets(f"serving {t}", Counter(map(_canon, want[t])), Counter(map(_canon, got[t])))
    return problems


def compare(reference: Path, killed: Path) -> list[str]:
    problems = diff_topics(topics(reference), topics(killed))
    problems += diff_lake(lake(reference), lake(killed))
    problems += diff_serving(serving(reference), serving(killed))
    problems += [f"lake file left behind: {f}" for f in lake_leftovers(killed)]
    return problems


# -- the tests -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """An uninterrupted run: its folder, the work it did, how long it ran."""

    folder: Path
    work: int
    live_s: float


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from affluent.apps.bikes.app import recording_path

    return recording_path(tmp_path_factory.mktemp("bikes-recording"))


@pytest.fixture(scope="module")
def stock_reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    folder = tmp_path_factory.mktemp("stock") / "reference"
    return Reference(folder, *run_clean("stock", folder, None))


@pytest.fixture(scope="module")
def crypto_recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where the crypto recordings are unpacked, once, for every worker to find."""
    from affluent.apps.crypto.app import MARKETS_RECORDING, TRADES_RECORDING, recording_path

    folder = tmp_path_factory.mktemp("crypto-recordings")
    for name in (MARKETS_RECORDING, TRADES_RECORDING):
        recording_path(folder, name)
    return folder


def _check_killed_run_matches(app: str, ref: Reference, killed: Path, recording: Path | None, seed: int, env: dict[str, str] | None = None) -> None:
    kills = run_with_kills(app, killed, recording, work=ref.work, live_s=ref.live_s, kills=KILLS_PER_APP, seed=seed, env=env)
    print(
        f"{app}: {dict(kills.kills)} kills ({kills.kills_with_work_left} with work left), {kills.ended_before_kill} runs ended by themselves, {kills.runs} runs"
    )
    print("\n".join(kills.details))
    assert sum(kills.kills.values()) >= KILLS_PER_APP
    assert kills.kills_with_work_left >= KILLS_PER_APP // 3, "\n".join(kills.details)
    problems = compare(ref.folder, killed)
    assert not problems, f"{app} after {sum(kills.kills.values())} SIGKILLs differs from an uninterrupted run:\n" + "\n".join(problems)


def test_stock_killed_at_random_points_ends_as_an_uninterrupted_run(tmp_path: Path, stock_reference: Reference) -> None:
    _check_killed_run_matches("stock", stock_reference, tmp_path / "killed", None, seed=20261129)
    # the reference itself is the whole simulated day, every reading in the lake once, and no serving store
    t = topics(stock_reference.folder)
    readings = t["stock.readings"][0]
    assert len(readings) == 3 * 10 * 24 * 60
    assert len(t["stock.alerts"][0]) > 100 and len(t["stock.restock"][0]) > 10
    rows = lake(stock_reference.folder)["stock_readings"]
    assert sum(rows.values()) == len(readings) and max(rows.values()) == 1
    assert serving(stock_reference.folder) is None


def test_stock_with_its_lake_in_a_process_of_its_own_killed_at_random_points_ends_as_an_uninterrupted_run(tmp_path: Path, stock_reference: Reference) -> None:
    """As shipped, stock's lake runs in a process of its own. SIGKILLed, the app leaves that process
    behind; it stops by itself (or is fenced out), and the restarted app's lake takes over: each
    reading in the lake once, as in the uninterrupted run (made with the lake in a thread)."""
    _check_killed_run_matches("stock", stock_reference, tmp_path / "killed", None, seed=20261201, env={"KILL_APP_OWN_PROCESS": "1"})


def test_bikes_killed_at_random_points_ends_as_an_uninterrupted_run(tmp_path: Path, recording: Path) -> None:
    ref = Reference(tmp_path / "reference", *run_clean("bikes", tmp_path / "reference", recording))
    _check_killed_run_matches("bikes", ref, tmp_path / "killed", recording, seed=20261130)
    # the reference went through every pipeline: station states in the lake, every serving table filled
    t = topics(ref.folder)
    states = t["bikes.station_state"][0]
    assert len(states) == len(t["bikes.station_status"][0]) > 1000
    assert sum(lake(ref.folder)["bikes_station_status"].values()) == len(states)
    tables = serving(ref.folder)
    assert tables is not None
    assert sorted(tables) == ["bikes_stations", "bikes_system_minute", "bikes_systems", "bikes_vehicle_minute", "bikes_vehicles"]
    assert all(tables.values()), {k: len(v) for k, v in tables.items()}


def test_crypto_killed_at_random_points_ends_as_an_uninterrupted_run(tmp_path: Path, crypto_recordings: Path) -> None:
    from affluent.apps.crypto.app import MARKETS_RECORDING, TRADES_RECORDING, recording_path
    from affluent.sources.replay import ReplaySource

    started = time.monotonic()
    ref = Reference(tmp_path / "reference", *run_clean("crypto", tmp_path / "reference", crypto_recordings))
    print(f"crypto: the uninterrupted run took {time.monotonic() - started:.1f} s ({ref.live_s:.1f} s after ready)")
    _check_killed_run_matches("crypto", ref, tmp_path / "killed", crypto_recordings, seed=20261201)
    # the reference went through every pipeline: every recorded trade in exactly one 1m, one 5m and one 1h candle,
    # every market row in the lake once, every serving table filled
    recorded = {name: sum(len(rs) for _, rs in ReplaySource(recording_path(crypto_recordings, name)).polls) for name in (MARKETS_RECORDING, TRADES_RECORDING)}
    t = topics(ref.folder)
    trades = sum(len(recs) for recs in t["crypto.trades"].values())
    assert trades == recorded[TRADES_RECORDING] > 10_000
    assert len(t["crypto.markets.raw"][0]) == recorded[MARKETS_RECORDING]
    # no dead letter (whose failed_at_ms is the wall clock) and no late trade
    assert not {name: parts for name, parts in t.items() if name.endswith((".dlq", ".late")) and any(parts.values())}
    candles: dict[tuple[str, str, int], dict[str, Any]] = {}
    for recs in t["crypto.candles"].values():
        for _, _, v, _, _ in recs:
            candles[v["symbol"], v["interval"], v["open_time"]] = v  # the last update of each candle
    assert {iv: sum(c["trades"] for k, c in candles.items() if k[1] == iv) for iv in ("1m", "5m", "1h")} == dict.fromkeys(("1m", "5m", "1h"), trades)
    markets = [v for _, _, v, _, _ in t["crypto.markets"][0]]
    assert len(markets) == sum(1 for _, _, v, _, _ in t["crypto.markets.raw"][0] if v["kind"] == "market")
    rows = lake(ref.folder)["crypto_markets"]
    assert sum(rows.values()) == sum(1 for m in markets if m["in_top"] == 1) and max(rows.values()) == 1
    tables = serving(ref.folder)
    assert tables is not None
    assert sorted(tables) == ["crypto_anomalies", "crypto_candles", "crypto_forecasts", "crypto_markets"]
    assert all(tables.values()), {k: len(v) for k, v in tables.items()}
    assert len(tables["crypto_candles"]) == len(candles)


def test_stock_killed_as_the_lake_creates_a_commit_marker_restarts_and_ends_as_an_uninterrupted_run(tmp_path: Path, stock_reference: Reference) -> None:
    """A kill in the narrowest window of a lake flush: its commit marker's temporary file exists, still empty.

    The worker kills itself there (KILL_APP_DIE_IN_MARKER), at the second flush; then a run must start
    again and end as an uninterrupted run would. (A glob of `_commits/*.json` once read that empty file as
    a damaged marker: the lake pipeline then failed at every start, for good.)
    """
    killed = tmp_path / "killed"
    w = Worker("stock", killed, None, env={"KILL_APP_DIE_IN_MARKER": "2"})
    try:
        while w.next_line() is not None:
            pass
        assert w.proc.wait(timeout=WAIT_S) == -signal.SIGKILL, f"the worker did not die in the lake's commit marker: {w.stderr()}"
    finally:
        w.close()
    commits = killed / "lake" / "stock_readings" / "_commits"
    left = sorted(f.name for f in commits.iterdir() if f.name != ".lock")
    assert len(left) == 2 and left[0].startswith(".tmp-") and (commits / left[0]).stat().st_size == 0, left  # marker 1, and marker 2 begun
    run_clean("stock", killed, None)
    problems = compare(stock_reference.folder, killed)
    assert not problems, "\n".join(problems)
