"""Reliability fixes of `affluent analyze`: no time counted after now, two autumn 02:00 hours kept apart, and a
damaged lake file named in one error, never an engine traceback. Lakes here are written by the real ParquetLakeSink."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest

from affluent.analytics.base import DuckDBEngine
from affluent.analytics.bikes import STATION_STATUS, station_days, station_flags
from affluent.analytics.stock import DATASET as STOCK_READINGS
from affluent.analytics.stock import analyze_stock
from affluent.apps.bikes.pipeline import LAKE_SCHEMA as BIKES_SCHEMA
from affluent.apps.stock.readings import LAKE_SCHEMA as STOCK_SCHEMA
from affluent.core.clock import now_ms
from affluent.core.records import Record
from affluent.sinks.lake import LakeError, ParquetLakeSink

MINUTE = 60_000
PARIS = ZoneInfo("Europe/Paris")


def write_lake(root: Path, dataset: str, schema: pa.Schema, flushes: Iterable[list[tuple[int, dict[str, Any]]]]) -> None:
    """Each flush's (event time, row) pairs through a real lake sink, one commit per flush."""
    sink = ParquetLakeSink(root, dataset, schema=schema, tz="UTC")
    sink.open()
    offset = 0
    for rows in flushes:
        records = []
        for t, row in rows:
            records.append(Record(value={f.name: row.get(f.name) for f in schema}, timestamp_ms=t, topic="in", partition=0, offset=offset))
            offset += 1
        sink.write(records)
        sink.flush()
    sink.close()


def snapshot(t: int, bikes: int, docks: int, station: str = "s1", tz: str = "Europe/Paris") -> tuple[int, dict[str, Any]]:
    empty, full, saturated = station_flags(bikes, docks)
    row = {
        "system_id": "testbikes",
        "station_id": station,
        "name": f"Station {station}",
        "num_bikes_available": bikes,
        "num_docks_available": docks,
        "is_empty": empty,
        "is_full": full,
        "is_saturated": saturated,
        "last_reported_ms": t,
        "snapshot_ms": t,
        "timezone": tz,
    }
    return t, row


def local_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=PARIS).timestamp() * 1000)  # type: ignore[misc]


# -- 1. a station's last snapshot is not counted past now ------------------------------------------------------
def test_right_after_start_a_station_seen_for_1_2_minutes_has_1_2_minutes_observed(tmp_path: Path) -> None:
    started = now_ms()
    first, last = started - 72_000, started  # 1.2 minutes of data, as right after `affluent up`
    write_lake(tmp_path, STATION_STATUS, BIKES_SCHEMA, [[snapshot(first, 5, 7)], [snapshot(last, 0, 12)]])
    day = datetime.fromtimestamp(last / 1000, UTC).date()
    engine = DuckDBEngine(tmp_path)
    try:
        before = now_ms()
        [row] = station_days(engine, day, tz="UTC")
        after = now_ms()
    finally:
        engine.close()
    day_start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    seen_from = max(first, day_start)
    # from the first snapshot until the analysis, not 10 minutes past the last snapshot (11.2 minutes)
    assert (before - seen_from) / MINUTE <= row.minutes_observed <= (after - seen_from) / MINUTE
    assert row.minutes_observed < 2
    assert sum(h["minutes_observed"] for h in row.hours) == pytest.approx(row.minutes_observed)
    assert row.minutes_empty <= (after - last) / MINUTE  # empty only since the last snapshot


def test_no_time_after_the_analysis_time_or_the_end_of_the_day(tmp_path: Path) -> None:
    t0 = local_ms(2026, 11, 23, 8, 0)
    late = local_ms(2026, 11, 23, 23, 58)
    write_lake(
        tmp_path,
        STATION_STATUS,
        BIKES_SCHEMA,
        [[snapshot(t0, 4, 8)], [snapshot(t0 + 72_000, 0, 12)], [snapshot(late, 3, 9, station="s2")]],
    )
    engine = DuckDBEngine(tmp_path)
    try:
        # analysed 8 s after the last snapshot: 1.2 + 8/60 minutes seen, 8 s of them empty
        rows = {r.station_id: r for r in station_days(engine, date(2026, 11, 23), now=t0 + 80_000)}
        assert list(rows) == ["s1"]  # s2 is not seen yet at that time
        s1 = rows["s1"]
        assert s1.minutes_observed == pytest.approx(80 / 60)
        assert s1.minutes_empty == pytest.approx(8 / 60)
        assert s1.mean_bikes == pytest.approx(4 * 72 / 80)
        assert [(h["hour"], h["minutes_observed"]) for h in s1.hours] == [("08:00+0100", pytest.approx(80 / 60))]
        # a day long gone: the last state lasts its 10 minutes at most, and never past midnight
        rows = {r.station_id: r for r in station_days(engine, date(2026, 11, 23))}
        assert rows["s1"].minutes_observed == pytest.approx(11.2)
        assert rows["s2"].minutes_observed == pytest.approx(2.0)
        # a day that has not started: nothing observed
        assert station_days(engine, date(2026, 11, 23), now=t0 - 3_600_000) == []
    finally:
        engine.close()


# -- 2. the autumn DST day has two 02:00 hours ---------------------------------------------------------------------
def reading(t: int, quantity: int, product: str = "ski") -> tuple[int, dict[str, Any]]:
    stamp = datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    row = {
        "reading_id": f"r-{t}-{product}",
        "ts_ms": t,
        "timestamp": stamp,
        "store_id": "paris-12",
        "sensor_id": f"sensor-{product}",
        "product_id": product,
        "quantity": quantity,
        "threshold": 5,
        "alert": quantity < 5,
        "lat": 48.84,
        "lon": 2.39,
        "seq": 1,
    }
    return t, row


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


def test_the_hourly_trend_keeps_the_two_autumn_0200_hours_apart(tmp_path: Path) -> None:
    # Paris, Sunday 26 October 2025: 03:00+02:00 becomes 02:00+01:00, so 02:00..02:59 happens twice
    write_lake(
        tmp_path,
        STOCK_READINGS,
        STOCK_SCHEMA,
        [
            [reading(utc_ms(2025, 10, 25, 23, 30), 20)],  # 01:30+02:00
            [reading(utc_ms(2025, 10, 26, 0, 10), 10), reading(utc_ms(2025, 10, 26, 0, 50), 12, "coca")],  # 02:10 and 02:50+02:00
            [reading(utc_ms(2025, 10, 26, 1, 10), 2), reading(utc_ms(2025, 10, 26, 1, 40), 4)],  # 02:10 and 02:40+01:00
            [reading(utc_ms(2025, 10, 26, 2, 30), 7)],  # 03:30+01:00
        ],
    )
    engine = DuckDBEngine(tmp_path)
    try:
        got = analyze_stock(engine.run, tz="Europe/Paris")
        kolkata = analyze_stock(engine.run, tz="Asia/Kolkata")  # a zone half an hour off UTC
    finally:
        engine.close()
    assert got["hourly_trend"] == [
        {"hour": "2025-10-26 01:00+0200", "mean_quantity": 20.0, "products": 1, "readings": 1},
        {"hour": "2025-10-26 02:00+0200", "mean_quantity": 11.0, "products": 2, "readings": 2},
        {"hour": "2025-10-26 02:00+0100", "mean_quantity": 3.0, "products": 1, "readings": 2},
        {"hour": "2025-10-26 03:00+0100", "mean_quantity": 7.0, "products": 1, "readings": 1},
    ]
    # hours start at local :00 even where the offset is not whole hours
    assert [(h["hour"], h["readings"]) for h in kolkata["hourly_trend"]] == [
        ("2025-10-26 05:00+0530", 2),
        ("2025-10-26 06:00+0530", 2),
        ("2025-10-26 07:00+0530", 1),
        ("2025-10-26 08:00+0530", 1),
    ]


# -- 4. a damaged file: one error that names it -----------------------------------------------------------------
def damage(path: Path) -> None:
    """Cut a Parquet file in half: no footer any more."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_lake_file_is_named_in_one_error(tmp_path: Path) -> None:
    t = utc_ms(2025, 3, 24, 9, 0)
    write_lake(tmp_path, STOCK_READINGS, STOCK_SCHEMA, [[reading(t + i * MINUTE, 10 + i) for i in range(50)], [reading(t + 3_600_000, 3)]])
    files = sorted((tmp_path / STOCK_READINGS).glob("date=*/hour=*/*.parquet"))
    assert len(files) == 2
    damage(files[1])
    engine = DuckDBEngine(tmp_path)
    try:
        with pytest.raises(LakeError) as err:
            analyze_stock(engine.run, tz="Europe/Paris")
    finally:
        engine.close()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"damaged lake file {files[1]}: not a readable Parquet file: ")
    assert "affluent lake check" in message
