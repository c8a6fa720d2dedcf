"""The crypto app end to end over its bundled recordings: candles, alerts, forecasts, the lake, and its commands."""

from __future__ import annotations

import math
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from affluent.apps.crypto import tables
from affluent.apps.crypto.app import MARKETS_RECORDING, TRADES_RECORDING, recording_path
from affluent.apps.crypto.cli import analyze_command, commands
from affluent.apps.crypto.pipeline import build_pipelines, trades_pipeline
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import read_serving
from affluent.sources.replay import ReplaySource
from affluent.testing import read_topic


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder after both recordings were replayed at once, to their end."""
    folder = tmp_path_factory.mktemp("crypto")
    markets = ReplaySource(recording_path(folder, MARKETS_RECORDING), speed=0)
    trades = ReplaySource(recording_path(folder, TRADES_RECORDING), speed=0)
    log = SQLiteLog(folder / "affluent.db")
    rt = Runtime(log)
    for p in build_pipelines(markets, trades, serving_db=folder / "serving.db", lake_root=folder / "lake", lake_commit_ms=500, max_event_ahead_ms=None):
        rt.add(p)
    rt.run_to_end(timeout_s=300)
    log.close()
    return folder


def rows(folder: Path, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    return read_serving(folder / "serving.db", sql, params)


def test_the_recording_gives_exact_candles_alerts_and_forecasts(replayed: Path) -> None:
    log = SQLiteLog(replayed / "affluent.db")
    trades = [r.value for r in read_topic(log, tables.T_TRADES)]
    log.close()
    per_minute: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for m in trades:
        per_minute[(m["s"], m["T"] - m["T"] % 60_000)].append(m)
    got = {(r["symbol"], r["open_time"]): r for r in rows(replayed, f"SELECT * FROM {tables.CANDLES} WHERE interval = '1m'")}
    assert set(got) == set(per_minute)  # the recording is in order: no trade is late
    for k, ms in per_minute.items():
        ms.sort(key=lambda m: (m["T"], m["t"]))
        c = got[k]
        assert (c["open"], c["close"], c["trades"]) == (float(ms[0]["p"]), float(ms[-1]["p"]), len(ms))
        assert c["volume"] == float(sum(Decimal(m["q"]) for m in ms))
    assert {r["interval"] for r in rows(replayed, f"SELECT DISTINCT interval FROM {tables.CANDLES}")} == {"1m", "5m", "1h"}

    # the three jumps of the recording (3% in a minute, after the model's warm-up) are found, each with a reason
    alerts = rows(replayed, f"SELECT * FROM {tables.ANOMALIES} ORDER BY open_time")
    big = [a for a in alerts if abs(a["return_pct"]) > 2]
    assert len(big) >= 3
    for a in alerts:
        assert math.copysign(1, a["return_pct"]) == (1 if a["direction"] == "up" else -1)
        assert a["symbol"] in a["reason"] and ("rose" in a["reason"] or "fell" in a["reason"])

    fc = rows(replayed, f"SELECT coin_id, COUNT(*) AS hours, MIN(high - low) AS band FROM {tables.FORECASTS} GROUP BY coin_id")
    assert len(fc) == 50 and all(f["hours"] == 24 and f["band"] > 0 for f in fc)
    markets = rows(replayed, f"SELECT * FROM {tables.MARKETS} ORDER BY rank")
    assert len(markets) == 50 and markets[0]["coin_id"] == "bitcoin"
    assert any(m["change_24h_pct"] < 0 for m in markets) and any(m["change_24h_pct"] > 0 for m in markets)
    assert list((replayed / "lake" / tables.LAKE_MARKETS).rglob("*.parquet"))


def env_for(folder: Path) -> dict[str, str]:
    return {
        "AFFLUENT__DATA_DIR": str(folder),
        "AFFLUENT__LOG__URL": f"sqlite:///{folder / 'affluent.db'}",
        "AFFLUENT__SERVING__URL": f"sqlite:///{folder / 'serving.db'}",
        "AFFLUENT__LAKE__URL": f"parquet://{folder / 'lake'}",
    }


def test_candles_command_prints_json_candles(replayed: Path) -> None:
    result = CliRunner().invoke(commands, ["candles", "--symbol", "btcusdt", "--interval", "5m", "--json"], env=env_for(replayed))
    assert result.exit_code == 0, result.output
    candles = orjson.loads(result.stdout)
    assert candles and set(candles[0]) == {"symbol", "open_time", "open", "high", "low", "close", "volume", "trades"}
    assert [c["open_time"] for c in candles] == sorted(c["open_time"] for c in candles)
    assert all(c["open_time"] % 300_000 == 0 and c["low"] <= min(c["open"], c["close"]) <= max(c["open"], c["close"]) <= c["high"] for c in candles)
    assert sum(c["trades"] for c in candles) == sum(
        r["trades"] for r in rows(replayed, f"SELECT trades FROM {tables.CANDLES} WHERE symbol = 'BTCUSDT' AND interval = '1m'")
    )
    bad = CliRunner().invoke(commands, ["candles", "--symbol", "BTCUSDT", "--interval", "2m"], env=env_for(replayed))
    assert bad.exit_code != 0 and "1m, 5m, 1h" in bad.output


def test_analyze_command_answers_over_the_lake(replayed: Path) -> None:
    analyze = typer.Typer()
    analyze.command()(analyze_command)
    result = CliRunner().invoke(analyze, ["--json"], env=env_for(replayed))
    assert result.exit_code == 0, result.output
    answer = orjson.loads(result.stdout)
    assert answer["coins"] == 50 and answer["rows"] >= 50
    assert len(answer["correlation"]["coins"]) == 10
    assert {m["coin_id"] for m in answer["movers"]["up"]}.isdisjoint(m["coin_id"] for m in answer["movers"]["down"])


def test_the_offline_replay_moves_times_to_now_and_loops_without_a_seam(tmp_path: Path) -> None:
    """The app's offline replay: times inside the values move with the replay, each loop gives new snapshots, and the
    loop's seam is not a sudden move (no alert there)."""
    from affluent.core.clock import now_ms
    from affluent.sources.crypto.replay import CryptoReplaySource
    from affluent.testing import ListSource

    markets = CryptoReplaySource(recording_path(tmp_path, MARKETS_RECORDING), speed=0, loop=True, shift_to_now=True)
    markets.open(None)
    rows = [r.value for _ in range(len(markets.polls) * 2) for r in markets.poll().records if r.value["kind"] == "market"]
    updated = [(v["row"]["id"], v["row"]["last_updated"]) for v in rows]
    assert len(updated) == len(set(updated))  # the second loop's snapshots are new ones
    assert abs(max(v["snapshot_ms"] for v in rows[: len(rows) // 2]) - now_ms()) < 3_600_000  # moved to now

    trades = CryptoReplaySource(recording_path(tmp_path, TRADES_RECORDING), speed=0, loop=True, shift_to_now=True)
    trades.open(None)
    taped = [r for _ in range(len(trades.polls) * 2) for r in trades.poll().records]
    assert all(r.value["T"] == r.timestamp_ms for r in taped)
    seam = taped[len(taped) // 2].timestamp_ms
    log = SQLiteLog(tmp_path / "affluent.db")
    p = trades_pipeline(ListSource(taped, name="two-loops"), serving_db=tmp_path / "serving.db", max_event_ahead_ms=None)
    Runtime(log).add(p).run_to_end(timeout_s=300)
    log.close()
    alerts = rows_of(tmp_path, f"SELECT symbol, open_time FROM {tables.ANOMALIES}")
    first = [(a["symbol"], a["open_time"]) for a in alerts if a["open_time"] < seam]
    second = [(a["symbol"], a["open_time"]) for a in alerts if a["open_time"] >= seam]
    assert len(first) >= 3 and len(second) >= 3  # the recording's three jumps, in each loop
    # no alert at the seam: the minute it falls in and the next are not sudden moves (prices end where they started)
    assert not [a for a in first + second if seam - 60_000 < a[1] <= seam + 60_000], (seam, first, second)


def rows_of(folder: Path, sql: str) -> list[dict[str, Any]]:
    return read_serving(folder / "serving.db", sql)
