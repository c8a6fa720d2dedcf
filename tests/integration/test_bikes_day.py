"""Done-when test: a recorded day of a VéloZef-like feed, replayed through a loopback HTTP server as fast as it
answers, through the real source, log, pipelines, serving store and lake; the live per-minute windows and the
daily answers are checked against values computed here, in plain Python, from the fixture itself."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.fixtures.bikes.make_fixtures import DISCOVERY_PATH, FEED_PATHS, LATE, Day, serve_day, station_id, velozef_day
from tests.integration.gbfs_server import GBFSServer, pipelines_drained, wait_until

from affluent.analytics.base import DuckDBEngine, EmptyLakeError
from affluent.analytics.bikes import MAX_GAP_MS, station_days
from affluent.apps.bikes.pipeline import T_STATE, build_pipelines
from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import Metrics
from affluent.core.runtime import Runtime
from affluent.core.sources import SourcePoll
from affluent.sinks.serving import read_serving
from affluent.sources.gbfs import GBFSSource
from affluent.testing import read_topic, temp_log

MINUTE = 60_000
HOUR = 3_600_000


class SimulatedMinutes(GBFSSource):
    """GBFSSource on a simulated clock: each poll is one minute later, and nothing is slept.

    Feeds keep their ttl schedule (system_information once an hour, backoff after errors) in simulated
    time, while the recorded day goes through the server as fast as both can go.
    """

    def __init__(self, url: str, **kw: Any) -> None:
        self.minutes = 0
        super().__init__(url, clock=self._now, **kw)

    def _now(self) -> float:
        self.minutes += 1
        return self.minutes * 60.0

    def poll(self) -> SourcePoll:
        try:
            result = super().poll()
        except SourceUnavailableError as exc:
            raise SourceUnavailableError(str(exc), retry_after_s=0.0) from exc
        result.wait_s = 0.0
        return result


# -- the expected values, from the fixture ------------------------------------------------------------------------------
def expected_system_minutes(day: Day) -> dict[int, dict[str, int]]:
    latest: dict[int, Any] = {}
    for s in day.snapshots:
        ms = s.t * 1000
        latest[ms - ms % MINUTE] = s  # snapshots are in time order: the last one of each minute stays
    out = {}
    for start, s in latest.items():
        rows = s.station_status["data"]["stations"]
        out[start] = {
            "snapshot_ms": s.t * 1000,
            "stations": len(rows),
            "empty_count": sum(r["num_bikes_available"] == 0 for r in rows),
            "full_count": sum(r["num_docks_available"] == 0 for r in rows),
            "saturated_count": sum(r["num_docks_available"] <= 3 for r in rows),
            "total_bikes_available": sum(r["num_bikes_available"] for r in rows),
            "total_docks_available": sum(r["num_docks_available"] for r in rows),
        }
    return out


def vehicle_snapshots(day: Day) -> list[dict[str, Any]]:
    """free_bike_status files, each once (the publisher serves some twice)."""
    out: dict[int, dict[str, Any]] = {}
    for s in day.snapshots:
        out.setdefault(s.free_bike_status["last_updated"], s.free_bike_status)
    return list(out.values())


def expected_vehicle_minutes(day: Day) -> dict[int, dict[str, Any]]:
    latest: dict[int, Any] = {}
    for doc in vehicle_snapshots(day):
        ms = doc["last_updated"] * 1000
        latest[ms - ms % MINUTE] = doc
    out = {}
    for start, doc in latest.items():
        bikes = doc["data"]["bikes"]
        ok = [b for b in bikes if not b["is_reserved"] and not b["is_disabled"]]
        top = sorted(ok, key=lambda b: (-b["current_range_meters"], b["bike_id"]))[:3]
        out[start] = {
            "vehicles": len(bikes),
            "abandoned_count": sum(b["station_id"] == "" for b in bikes),
            "reserved_count": sum(b["is_reserved"] for b in bikes),
            "disabled_count": sum(b["is_disabled"] for b in bikes),
            "top": [(b["bike_id"], b["current_range_meters"]) for b in top],
        }
    return out


def station_series(day: Day) -> dict[str, list[tuple[int, int, int]]]:
    """(last_reported ms, bikes, docks) per station, one row per new last_reported."""
    out: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for s in day.snapshots:
        for r in s.station_status["data"]["stations"]:
            rows = out[r["station_id"]]
            t = r["last_reported"] * 1000
            if not rows or t > rows[-1][0]:
                rows.append((t, r["num_bikes_available"], r["num_docks_available"]))
    return out


def expected_day(day: Day) -> dict[str, dict[str, Any]]:
    """Time-weighted daily and hourly answers: each state lasts until the next, at most 10 min, clipped to the local day."""
    start, end = day.start_s * 1000, day.end_s * 1000
    out = {}
    for sid, rows in station_series(day).items():
        rows = [r for r in rows if start - MAX_GAP_MS <= r[0] < end]
        spans = []
        for i, (t, bikes, docks) in enumerate(rows):
            nxt = rows[i + 1][0] if i + 1 < len(rows) else t + MAX_GAP_MS
            s, e = max(t, start), min(nxt, t + MAX_GAP_MS, end)
            if e > s:
                spans.append((s, e, bikes, docks))
        if not spans:
            continue
        hours: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0.0])
        total = [0.0, 0.0, 0.0, 0.0, 0.0]
        for s, e, bikes, docks in spans:
            for acc, a, b in [(total, s, e)] + [
                (hours[h], max(s, start + h * HOUR), min(e, start + (h + 1) * HOUR)) for h in range((s - start) // HOUR, (e - 1 - start) // HOUR + 1)
            ]:
                ms = b - a
                if ms <= 0:
                    continue
                acc[0] += ms
                acc[1] += bikes * ms
                acc[2] += docks * ms
                acc[3] += ms if bikes == 0 else 0
                acc[4] += ms if docks == 0 else 0

        def answer(acc: list[float]) -> dict[str, float]:
            return {
                "minutes_observed": acc[0] / MINUTE,
                "mean_bikes": acc[1] / acc[0],
                "mean_docks": acc[2] / acc[0],
                "minutes_empty": acc[3] / MINUTE,
                "minutes_full": acc[4] / MINUTE,
            }

        out[sid] = {**answer(total), "hours": {h: answer(acc) for h, acc in sorted(hours.items())}}
    return out


# -- the test ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replayed_day(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("bikes-day")
    day = velozef_day()
    metrics = Metrics()
    log = temp_log(tmp)
    with GBFSServer() as server:
        count = serve_day(server, day)
        source = SimulatedMinutes(server.url(DISCOVERY_PATH), metrics=metrics)
        pipelines = build_pipelines(source, serving_db=tmp / "serving.db", lake_root=tmp / "lake", lake_commit_ms=2000)
        rt = Runtime(log, metrics=metrics)
        for p in pipelines:
            rt.add(p)
        rt.start()
        try:
            # one request past the last item: the poll that fetched it has been appended
            wait_until(lambda: server.served(FEED_PATHS["station_status"]) > count, timeout_s=120, what="the day to be served", errors=rt.errors)
            wait_until(lambda: pipelines_drained(log, pipelines), timeout_s=60, what="the pipelines to drain", errors=rt.errors)
        finally:
            rt.stop()
        errors = list(rt.errors)
        status = rt.status()
    return {"day": day, "tmp": tmp, "log": log, "metrics": metrics, "errors": errors, "status": status}


def test_nothing_crashed_and_the_outage_was_counted(replayed_day: dict[str, Any]) -> None:
    assert replayed_day["errors"] == []
    m = replayed_day["metrics"]
    assert m.get("affluent_gbfs_errors_total", feed="station_status") >= 3  # the 13:00 outage: 5xx, HTML, truncated JSON
    assert m.get("affluent_gbfs_files_total", feed="station_status", outcome="new") == len(replayed_day["day"].snapshots)
    assert m.get("affluent_gbfs_files_total", feed="station_status", outcome="not_modified") >= 9  # republished files
    assert m.get("affluent_dead_letters_total") == 0


def test_live_per_minute_windows(replayed_day: dict[str, Any]) -> None:
    db = replayed_day["tmp"] / "serving.db"
    got = {r.pop("window_start_ms"): r for r in read_serving(db, "SELECT * FROM bikes_system_minute ORDER BY window_start_ms")}
    want = expected_system_minutes(replayed_day["day"])
    assert len(want) > 1000  # a day of minutes, less those that saw no snapshot
    assert sorted(got) == sorted(want)
    for start, w in want.items():
        g = got[start]
        assert (g["system_id"], g["window_end_ms"]) == ("velozef", start + MINUTE)
        assert {k: g[k] for k in w} == w, start
    vm = {r["window_start_ms"]: r for r in read_serving(db, "SELECT * FROM bikes_vehicle_minute")}
    want_vm = expected_vehicle_minutes(replayed_day["day"])
    assert sorted(vm) == sorted(want_vm)
    for start, w in want_vm.items():
        g = vm[start]
        assert (g["vehicles"], g["abandoned_count"], g["reserved_count"], g["disabled_count"]) == (
            w["vehicles"],
            w["abandoned_count"],
            w["reserved_count"],
            w["disabled_count"],
        ), start
        assert [(t["vehicle_id"], t["current_range_meters"]) for t in orjson.loads(g["top_range"])] == w["top"], start
    # the minutes with a reserved and with a disabled bike at a station are there
    assert any(w["reserved_count"] for w in vm.values()) and any(w["disabled_count"] > 1 for w in vm.values())


def test_live_station_states(replayed_day: dict[str, Any]) -> None:
    day = replayed_day["day"]
    db = replayed_day["tmp"] / "serving.db"
    stations = {r["station_id"]: r for r in read_serving(db, "SELECT * FROM bikes_stations")}
    last = day.snapshots[-1]
    names = {s["station_id"]: s["name"] for s in last.station_information["data"]["stations"]}
    assert len(stations) == 29
    for r in last.station_status["data"]["stations"]:
        g = stations[r["station_id"]]
        assert (g["num_bikes_available"], g["num_docks_available"]) == (r["num_bikes_available"], r["num_docks_available"])
        assert (g["is_empty"], g["is_full"], g["is_saturated"]) == (r["num_bikes_available"] == 0, r["num_docks_available"] == 0, r["num_docks_available"] <= 3)
        assert g["name"] == names[r["station_id"]] and g["last_reported_ms"] == last.t * 1000
    assert stations[station_id(1)]["capacity_exceeded"] is True  # Gare SNCF: bikes + docks > capacity
    # the station that opened at 10:00 is joined with its name (the first state may race the table: see the report)
    arena = [r.value["name"] for r in read_topic(replayed_day["log"], T_STATE) if r.value["station_id"] == station_id(LATE)]
    assert len(arena) > 800 and all(n == "Brest Arena" for n in arena[1:])
    vehicles = read_serving(db, "SELECT * FROM bikes_vehicles WHERE snapshot_ms = (SELECT MAX(snapshot_ms) FROM bikes_vehicles)")
    assert len(vehicles) == len(vehicle_snapshots(day)[-1]["data"]["bikes"])
    assert sum(v["is_abandoned"] for v in vehicles) == 4


def test_daily_answers_from_the_lake(replayed_day: dict[str, Any]) -> None:
    day = replayed_day["day"]
    engine = DuckDBEngine(replayed_day["tmp"] / "lake")
    try:
        rows = {r.station_id: r for r in station_days(engine, day.day)}
        assert [r.station_id for r in station_days(engine, day.day, system_id="velozef")] == sorted(rows)
        with pytest.raises(EmptyLakeError):
            station_days(engine, day.day, system_id="another-system")
        lake_rows = engine.query("SELECT COUNT(*) AS n FROM bikes_station_status")[0]["n"]
    finally:
        engine.close()
    # exactly once: one lake row per new (station, last_reported)
    assert lake_rows == sum(len(v) for v in station_series(day).values())
    want = expected_day(day)
    assert sorted(rows) == sorted(want)
    info = {s["station_id"]: s["name"] for s in day.snapshots[-1].station_information["data"]["stations"]}
    for sid, w in want.items():
        r = rows[sid]
        assert (r.name, r.timezone, r.day) == (info[sid], "Europe/Paris", "2026-03-10")
        for k in ("minutes_observed", "mean_bikes", "mean_docks", "minutes_empty", "minutes_full"):
            assert getattr(r, k) == pytest.approx(w[k], rel=1e-9, abs=1e-9), (sid, k)
        assert [h["hour_index"] for h in r.hours] == list(w["hours"])
        for h in r.hours:
            wh = w["hours"][h["hour_index"]]
            for k in ("minutes_observed", "mean_bikes", "mean_docks", "minutes_empty", "minutes_full"):
                assert h[k] == pytest.approx(wh[k], rel=1e-9, abs=1e-9), (sid, h["hour"], k)
    # what the day looked like: the outage and the late opening show as unobserved time, not as the last state seen
    full_day = [r for r in rows.values() if r.station_id != station_id(LATE)]
    assert all(1380 < r.minutes_observed < 1440 for r in full_day)
    assert 600 < rows[station_id(LATE)].minutes_observed < 840
    assert any(r.minutes_full > 60 for r in rows.values()) and any(r.minutes_empty > 60 for r in rows.values())
    assert rows[station_id(0)].hours[0]["hour"] == "00:00+0100"


def test_the_lake_partitions_are_utc_dates_and_hours(replayed_day: dict[str, Any]) -> None:
    ds = Path(replayed_day["tmp"]) / "lake" / "bikes_station_status"
    dates = sorted(p.name for p in ds.glob("date=*"))
    assert dates == ["date=2026-03-09", "date=2026-03-10"]  # local 2026-03-10 is 23:00 UTC the 9th to 23:00 UTC the 10th
    assert sorted(p.name for p in (ds / "date=2026-03-09").glob("hour=*")) == ["hour=22", "hour=23"]
