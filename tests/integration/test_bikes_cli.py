"""The bikes commands as users type them: offline fallback, a live feed on loopback, the daily answers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
from tests.integration.gbfs_server import GBFSServer

from affluent.sinks.serving import read_serving

HTTP = Path(__file__).resolve().parents[1] / "fixtures" / "bikes" / "http"
AFFLUENT = str(Path(sys.executable).parent / "affluent")


def affluent(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **env}
    return subprocess.run([AFFLUENT, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)


def test_offline_fallback_then_analyze(tmp_path: Path) -> None:
    # no network here: the configured feed cannot be reached, so the recording is replayed, and said so
    run = affluent(
        tmp_path,
        "run",
        "bikes",
        "--duration",
        "4",
        "--quiet",
        AFFLUENT__BIKES__FEED="http://127.0.0.1:9/gbfs.json",
        AFFLUENT__BIKES__PROBE_TIMEOUT_S="1",
        AFFLUENT__BIKES__REPLAY_SPEED="240",
        AFFLUENT__BIKES__LAKE_COMMIT_S="1",
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "cannot be reached" in out and "replaying the bundled VéloZef recording" in out
    assert "OFFLINE replay of the recording velozef-brest.recording.jsonl" in out
    stations = read_serving(tmp_path / ".affluent" / "serving.db", "SELECT name, num_bikes_available FROM bikes_stations")
    assert len(stations) >= 28 and all(s["name"] for s in stations)
    minutes = read_serving(tmp_path / ".affluent" / "serving.db", "SELECT COUNT(*) AS n FROM bikes_system_minute")
    assert minutes[0]["n"] >= 2  # 240x: about four recorded minutes a second
    today = datetime.now(ZoneInfo("Europe/Paris")).date().isoformat()
    analyze = affluent(tmp_path, "analyze", "bikes", "--day", today, "--json")
    assert analyze.returncode == 0, analyze.stderr
    rows = [orjson.loads(line) for line in analyze.stdout.splitlines()]
    assert len(rows) >= 28
    assert {r["timezone"] for r in rows} == {"Europe/Paris"} and all(r["minutes_observed"] > 0 for r in rows)
    assert "Place de la Liberté" in {r["name"] for r in rows}
    table = affluent(tmp_path, "analyze", "bikes", "--day", today)
    assert table.returncode == 0 and "Place de la Liberté" in table.stdout and "min empty" in table.stdout
    missing = affluent(tmp_path, "analyze", "bikes", "--day", "2001-01-01")
    assert missing.returncode == 1 and "no station snapshots" in missing.stderr


def test_run_a_live_feed_given_on_the_command_line(tmp_path: Path) -> None:
    with GBFSServer() as server:
        server.load_folder(HTTP / "lyon_3.0", "/lyon_3.0/")
        run = affluent(tmp_path, "run", "bikes", "--feed", server.url("/lyon_3.0/gbfs.json"), "--duration", "3", "--quiet")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "(live)" in out and "offline" not in out.lower()
    rows = read_serving(tmp_path / ".affluent" / "serving.db", "SELECT system_id, station_id, name, is_full FROM bikes_stations ORDER BY 2")
    assert rows == [
        {"system_id": "lyon", "station_id": "lyon-10063", "name": "Place Bellecour", "is_full": False},
        {"system_id": "lyon", "station_id": "lyon-2010", "name": "Part-Dieu", "is_full": True},
    ]
