"""Soak test: does `affluent up` keep its memory flat?

    python benchmarks/soak.py --minutes 30 --sample-s 10 --window-start-min 5

Runs `affluent up --offline --quiet` in a fresh temporary folder, with the stock simulator's clock
and the bikes recording's replay `--speed` times faster than real (10 by default: ten times the
records per second). Every `--sample-s` seconds it prints the RSS of the process tree (VmRSS of the
`up` process and its children, split into anonymous memory and file-backed pages such as the
SQLite log's mmap) and the records appended to the log so far. At the end it prints the RSS at
`--window-start-min` and at the end, the least-squares line over that window (its slope, and the
growth from its start to its end), and whether the goal (< 5% growth on that line) is met. Stops `up` with SIGINT (then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_PCT = 5.0


def up_command() -> list[str]:
    script = Path(sys.executable).parent / "affluent"  # the console script of this venv
    if script.exists():
        return [str(script), "up", "--offline", "--quiet"]
    return [sys.executable, "-c", "from affluent.cli.main import main; main()", "up", "--offline", "--quiet"]


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mb(pid: int) -> tuple[float, float, float]:
    """(VmRSS, RssAnon, RssFile) of the process tree, in MB."""
    total = [0, 0, 0]
    for p in tree(pid):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        for i, name in enumerate(("VmRSS", "RssAnon", "RssFile")):
            total[i] += int(fields.get(name, "0 kB").split()[0])
    return total[0] / 1024, total[1] / 1024, total[2] / 1024


def records_so_far(db: Path) -> int | None:
    """Records ever appended to the log's topics (sum of partition end offsets); None before the log exists."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            return int(conn.execute("SELECT coalesce(sum(end_offset), 0) FROM partitions").fetchone()[0])
    except sqlite3.Error:
        return None


def topic_counts(db: Path) -> dict[str, int]:
    """Records ever appended per topic."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        sql = "SELECT t.name, sum(p.end_offset) FROM topics t JOIN partitions p ON p.topic_id = t.id GROUP BY t.name ORDER BY t.name"
        return {name: int(n) for name, n in conn.execute(sql)}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line of y over x: (intercept, slope)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("up did not stop within 30 s of SIGINT: killing it")
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--window-start-min", type=float, default=5.0)
    ap.add_argument("--speed", type=float, default=10.0, help="simulated sources' pace, × real (default 10)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its .affluent/) afterwards")
    args = ap.parse_args()
    # started in the background, SIGINT may be ignored, and `up` would inherit that; a handler resets on exec
    signal.signal(signal.SIGINT, signal.default_int_handler)

    workdir = Path(tempfile.mkdtemp(prefix="affluent-soak-"))
    settings = {
        "AFFLUENT__STOCK__SPEED": f"{args.speed:g}",  # starts 7 days back, so never ahead of the wall clock
        "AFFLUENT__BIKES__REPLAY_SPEED": f"{args.speed:g}",  # a replay with a clock of its own: not bounded by now
    }
    cmd = up_command()
    print(f"cd {workdir} && {' '.join(f'{k}={v}' for k, v in settings.items())} {shlex.join(cmd)}")
    out = (workdir / "up.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=workdir, env={**os.environ, **settings}, stdout=out, stderr=subprocess.STDOUT)
    samples: list[tuple[float, float, float, float]] = []  # (minute, RSS, anonymous, file-backed MB)
    print(f"{'minute':>7} {'RSS MB':>8} {'anon MB':>8} {'file MB':>8} {'records':>10} {'rec/s':>7}")
    started = time.monotonic()
    prev: tuple[float, int | None] = (0.0, None)  # (time, records) of the previous sample
    try:
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            time.sleep(min(args.sample_s, max(0.0, args.minutes * 60 - elapsed)))
            if proc.poll() is not None:
                print(f"up exited early with code {proc.returncode}:\n{(workdir / 'up.log').read_text(errors='replace')[-3000:]}")
                return 1
            t = time.monotonic() - started
            rss, anon, file = rss_mb(proc.pid)
            n = records_so_far(workdir / ".affluent" / "affluent.db")
            rate = f"{(n - prev[1]) / (t - prev[0]):7.0f}" if n is not None and prev[1] is not None else f"{'':>7}"
            prev = (t, n)
            samples.append((t / 60, rss, anon, file))
            print(f"{t / 60:7.2f} {rss:8.1f} {anon:8.1f} {file:8.1f} {'' if n is None else f'{n:,}':>10} {rate}", flush=True)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        stop(proc)
        out.close()
        if (db := workdir / ".affluent" / "affluent.db").exists():
            print("records per topic:", ", ".join(f"{t} {n:,}" for t, n in topic_counts(db).items() if n))
        print(f"up stopped (exit code {proc.returncode})" + (f"; its folder and output (up.log) are kept in {workdir}" if args.keep else ""))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    window = [x for x in samples if x[0] >= args.window_start_min]
    if len(window) < 2:
        print(f"not enough samples after minute {args.window_start_min:g} for a result")
        return 1
    w0, w1 = window[0], window[-1]
    print(f"RSS at minute {w0[0]:.2f}: {w0[1]:.1f} MB (anonymous {w0[2]:.1f}, file-backed {w0[3]:.1f})")
    print(f"RSS at minute {w1[0]:.2f}: {w1[1]:.1f} MB (anonymous {w1[2]:.1f}, file-backed {w1[3]:.1f})")
    print(f"sample to sample: {(w1[1] - w0[1]) / w0[1] * 100:+.1f}% (single samples swing by several MB as the allocator works)")
    (a, b), (_, b_anon), (_, b_file) = (fit([(x[0], x[i]) for x in window]) for i in (1, 2, 3))
    start, end = a + b * w0[0], a + b * w1[0]
    growth = (end - start) / start * 100
    print(f"growth on the least-squares line over {len(window)} samples: {start:.1f} -> {end:.1f} MB, {growth:+.1f}%  slope {b:+.2f} MB/min")
    print(f"        anonymous {b_anon:+.2f} MB/min, file-backed (libraries, mapped files) {b_file:+.2f} MB/min")
    print(f"goal (< {GOAL_PCT:g}% growth on the line): {'met' if growth < GOAL_PCT else 'NOT met'}")
    return 0 if growth < GOAL_PCT else 2


if __name__ == "__main__":
    sys.exit(main())
