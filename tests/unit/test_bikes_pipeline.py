"""The bikes pipelines on the embedded log, fed by a scripted source: dedupe, late stations, per-minute counts, alerts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.integration.gbfs_server import pipelines_drained, wait_until

from affluent.analytics.bikes import station_flags
from affluent.apps.bikes.pipeline import (
    T_ALERTS,
    T_STATE,
    T_STATUS,
    T_SYSTEM_MINUTE,
    StationCounts,
    VehicleCounts,
    build_pipelines,
)
from affluent.core.metrics import Metrics
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sources import Source, SourcePoll
from affluent.sinks.serving import read_serving
from affluent.testing import read_topic, temp_log

T0 = 1_773_136_800_000  # 2026-03-10 10:00 UTC, a minute boundary


class ScriptedSource(Source):
    """Emits one list of records per poll, each poll only once the test allows it (see `run`)."""

    mode = "simulator"

    def __init__(self, polls: list[list[dict[str, Any]]]) -> None:
        self.name = "scripted-gbfs"
        self.polls = polls
        self.i = 0
        self.allowed = 0

    def open(self, position: Any | None) -> None:
        self.i = int(position or 0)

    def poll(self) -> SourcePoll:
        if self.i >= self.allowed:
            return SourcePoll(wait_s=0.01, position=self.i)
        values = self.polls[self.i]
        self.i += 1
        records = [Record(value=v, key=v.get("station_id") or v.get("vehicle_id"), timestamp_ms=v["snapshot_ms"]) for v in values]
        return SourcePoll(records=records, position=self.i, done=self.i >= len(self.polls))


def info(sid: str, name: str, t: int, capacity: int = 10) -> dict[str, Any]:
    return {
        "feed": "station_information",
        "system_id": "s",
        "station_id": sid,
        "name": name,
        "lat": 48.39,
        "lon": -4.49,
        "capacity": capacity,
        "removed": False,
        "snapshot_ms": t,
    }


def status(sid: str, bikes: int, docks: int | None, t: int, reported: int | None = None) -> dict[str, Any]:
    return {
        "feed": "station_status",
        "system_id": "s",
        "timezone": "Europe/Paris",
        "station_id": sid,
        "num_bikes_available": bikes,
        "num_bikes_disabled": 0,
        "num_docks_available": docks,
        "num_docks_disabled": 0,
        "is_installed": True,
        "is_renting": True,
        "is_returning": True,
        "bikes_by_type": None,
        "last_reported_ms": reported or t,
        "snapshot_ms": t,
    }


def bike(vid: str, station: str | None, t: int, rng: float | None = 20000.0, reserved: bool = False, disabled: bool = False) -> dict[str, Any]:
    return {
        "feed": "vehicle_status",
        "system_id": "s",
        "vehicle_id": vid,
        "station_id": station,
        "lat": 48.39,
        "lon": -4.49,
        "is_reserved": reserved,
        "is_disabled": disabled,
        "vehicle_type_id": "ebike",
        "current_range_meters": rng,
        "last_reported_ms": t,
        "snapshot_ms": t,
    }


def run(tmp_path: Path, polls: list[list[dict[str, Any]]]) -> Any:
    """Run the pipelines, handing them one poll at a time: each is fully processed before the next comes."""
    log = temp_log(tmp_path)
    source = ScriptedSource(polls)
    pipelines = build_pipelines(source, serving_db=tmp_path / "serving.db", lake_root=tmp_path / "lake", lake_commit_ms=0)
    rt = Runtime(log, metrics=Metrics())
    for p in pipelines:
        rt.add(p)
    rt.start()
    try:
        for i in range(len(polls)):
            source.allowed = i + 1
            wait_until(lambda i=i: source.i == i + 1 and pipelines_drained(log, pipelines), timeout_s=30, what=f"poll {i}", errors=rt.errors)
    finally:
        rt.stop()
    assert not rt.errors
    return log


def test_definitions_of_full_empty_saturated() -> None:
    assert station_flags(0, 10) == (True, False, False)
    assert station_flags(10, 0) == (False, True, True)  # full: no dock left, whatever the capacity says
    assert station_flags(7, 3) == (False, False, True)
    assert station_flags(7, 4) == (False, False, False)
    assert station_flags(3, None) == (False, False, False)  # no dock count: never full


def test_station_counts_keep_only_the_latest_snapshot_of_the_window() -> None:
    agg = StationCounts()
    acc = agg.create()
    for v, t in [(status("a", 0, 5, 1), 1), (status("b", 3, 0, 1), 1), (status("a", 2, 3, 2), 2), (status("z", 9, 9, 0), 0)]:
        acc = agg.add(acc, v, t)
    assert agg.result(acc) == {
        "snapshot_ms": 2,
        "stations": 1,
        "empty_count": 0,
        "full_count": 0,
        "saturated_count": 1,
        "total_bikes_available": 2,
        "total_docks_available": 3,
    }
    other = agg.add(agg.create(), status("b", 1, 1, 2), 2)
    merged = agg.result(agg.merge(acc, other))
    assert (merged["stations"], merged["saturated_count"], merged["total_bikes_available"]) == (2, 2, 3)
    assert agg.merge(acc, agg.add(agg.create(), status("b", 1, 1, 1), 1)) == acc


def test_vehicle_counts_top_by_range() -> None:
    agg = VehicleCounts()
    acc = agg.create()
    rows = [
        {
            "vehicle_id": "v1",
            "station_id": "a",
            "station_name": "A",
            "is_abandoned": False,
            "is_reserved": False,
            "is_disabled": False,
            "current_range_meters": 100.0,
        },
        {
            "vehicle_id": "v2",
            "station_id": None,
            "station_name": None,
            "is_abandoned": True,
            "is_reserved": False,
            "is_disabled": False,
            "current_range_meters": 900.0,
        },
        {
            "vehicle_id": "v3",
            "station_id": "a",
            "station_name": "A",
            "is_abandoned": False,
            "is_reserved": True,
            "is_disabled": False,
            "current_range_meters": 5000.0,
        },
        {
            "vehicle_id": "v4",
            "station_id": "a",
            "station_name": "A",
            "is_abandoned": False,
            "is_reserved": False,
            "is_disabled": True,
            "current_range_meters": 4000.0,
        },
        {
            "vehicle_id": "v0",
            "station_id": "a",
            "station_name": "A",
            "is_abandoned": False,
            "is_reserved": False,
            "is_disabled": False,
            "current_range_meters": 100.0,
        },
        {
            "vehicle_id": "v5",
            "station_id": "a",
            "station_name": "A",
            "is_abandoned": False,
            "is_reserved": False,
            "is_disabled": False,
            "current_range_meters": None,
        },
    ]
    for r in rows:
        acc = agg.add(acc, r, 7)
    out = agg.result(acc)
    assert (out["vehicles"], out["abandoned_count"], out["reserved_count"], out["disabled_count"]) == (6, 1, 1, 1)
    assert [t["vehicle_id"] for t in out["top_range"]] == ["v2", "v0", "v1"]  # reserved and disabled bikes cannot be taken


def test_pipelines_dedupe_join_late_stations_and_count_per_minute(tmp_path: Path) -> None:
    t1, t2, t3, t4 = T0 + 10_000, T0 + 40_000, T0 + 70_000, T0 + 100_000
    polls = [
        [info("a", "Gare SNCF", T0)],
        # minute 0, snapshot 1: b is not described yet
        [status("a", 0, 10, t1), status("b", 4, 0, t1), bike("v1", "a", t1), bike("v2", None, t1, 30000.0), bike("v3", "b", t1, 9000.0, reserved=True)],
        # minute 0, snapshot 2: a unchanged (same last_reported: dropped by dedupe), b changed
        [status("a", 0, 10, t2, reported=t1), status("b", 5, 2, t2), bike("v1", "a", t2), bike("v2", None, t2, 30000.0)],
        [info("b", "Brest Arena", t3)],
        # minute 1: b is now known; a reports an older time (a publisher's hiccup): dropped
        [status("a", 3, 7, t3, reported=t1 - 1000), status("b", 1, 3, t3), bike("v2", None, t3, 30000.0), bike("v4", "b", t3, 500.0, disabled=True)],
        [status("a", 2, 8, t4), status("b", 0, 9, t4)],
    ]
    log = run(tmp_path, polls)
    deduped = [(r.value["station_id"], r.value["last_reported_ms"]) for r in read_topic(log, T_STATUS)]
    assert deduped == [("a", t1), ("b", t1), ("b", t2), ("b", t3), ("a", t4), ("b", t4)]
    states = [(r.value["station_id"], r.value["snapshot_ms"], r.value["name"]) for r in read_topic(log, T_STATE)]
    # b is joined from the first snapshot after station_information described it
    assert states == [("a", t1, "Gare SNCF"), ("b", t1, None), ("b", t2, None), ("b", t3, "Brest Arena"), ("a", t4, "Gare SNCF"), ("b", t4, "Brest Arena")]
    minutes = {r.value["window_start_ms"]: r.value for r in read_topic(log, T_SYSTEM_MINUTE)}  # last update per window wins
    assert minutes[T0] == {
        "system_id": "s",
        "window_start_ms": T0,
        "window_end_ms": T0 + 60_000,
        "snapshot_ms": t2,
        "stations": 2,
        "empty_count": 1,
        "full_count": 0,
        "saturated_count": 1,
        "total_bikes_available": 5,
        "total_docks_available": 12,
    }
    assert minutes[T0 + 60_000]["snapshot_ms"] == t4
    assert (minutes[T0 + 60_000]["empty_count"], minutes[T0 + 60_000]["total_bikes_available"]) == (1, 2)
    alerts = sorted((r.value["vehicle_id"], r.value["alert"], r.value["station_name"]) for r in read_topic(log, T_ALERTS))
    # v2 is abandoned in three snapshots but alerted once
    assert alerts == [("v2", "abandoned", None), ("v3", "reserved", None), ("v4", "disabled", "Brest Arena")]
    db = tmp_path / "serving.db"
    stations = read_serving(db, "SELECT station_id, name, num_bikes_available, is_empty, is_full, capacity FROM bikes_stations ORDER BY 1")
    assert stations == [
        {"station_id": "a", "name": "Gare SNCF", "num_bikes_available": 2, "is_empty": False, "is_full": False, "capacity": 10},
        {"station_id": "b", "name": "Brest Arena", "num_bikes_available": 0, "is_empty": True, "is_full": False, "capacity": 10},
    ]
    vm = read_serving(db, "SELECT window_start_ms, vehicles, abandoned_count, reserved_count, disabled_count, top_range FROM bikes_vehicle_minute ORDER BY 1")
    assert [(v["vehicles"], v["abandoned_count"], v["reserved_count"], v["disabled_count"]) for v in vm] == [(2, 1, 0, 0), (2, 1, 0, 1)]
    assert '"vehicle_id":"v2"' in vm[0]["top_range"]


def test_a_removed_station_leaves_the_table(tmp_path: Path) -> None:
    gone = {"feed": "station_information", "system_id": "s", "station_id": "a", "removed": True, "snapshot_ms": T0 + 5000}
    log = run(tmp_path, [[info("a", "Gare SNCF", T0)], [status("a", 1, 1, T0 + 1000)], [gone], [status("a", 2, 1, T0 + 9000)]])
    assert [r.value["name"] for r in read_topic(log, T_STATE)] == ["Gare SNCF", None]


@pytest.mark.parametrize("bad", [{"feed": "station_status", "system_id": "s", "station_id": "x", "snapshot_ms": T0}])
def test_a_bad_record_is_dead_lettered_not_fatal(tmp_path: Path, bad: dict[str, Any]) -> None:
    log = run(tmp_path, [[info("a", "Gare SNCF", T0)], [bad, status("a", 1, 1, T0 + 1000)]])
    assert [r.value["station_id"] for r in read_topic(log, T_STATE)] == ["a"]
    assert len(read_topic(log, "bikes-feeds.dlq")) >= 1
