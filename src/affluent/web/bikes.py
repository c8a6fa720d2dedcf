"""The bikes page: stations on a map, system totals over time, problem bikes and daily station metrics."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query

from affluent.analytics.base import DuckDBEngine
from affluent.apps.bikes.pipeline import T_ALERTS
from affluent.core.clock import now_ms
from affluent.core.records import Record
from affluent.web.board import AlertFeed, Board, from_lake, queries
from affluent.web.live import Channel, KeyedRows
from affluent.web.queries import Queries

HOUR_MS = 3_600_000
STATION_FIELDS = (
    "system_id, station_id, name, lat, lon, capacity, num_bikes_available, num_docks_available, num_bikes_disabled, "
    "num_docks_disabled, is_installed, is_renting, is_returning, is_empty, is_full, last_reported_ms, timezone"
)

router = APIRouter(prefix="/api/bikes", tags=["bikes"])
Q = Annotated[Queries, Depends(queries)]


def systems(q: Queries) -> list[dict[str, Any]]:
    return q.serving("SELECT system_id, name, operator, timezone, url, license_url, gbfs_version, snapshot_ms FROM bikes_systems ORDER BY system_id")


def stations(q: Queries, system_id: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE system_id = ?", [system_id]) if system_id else ("", [])
    return q.serving(f"SELECT {STATION_FIELDS} FROM bikes_stations {where} ORDER BY system_id, station_id", params)


def minutes(q: Queries, since_ms: int, system_id: str | None = None) -> list[dict[str, Any]]:
    """Per-minute system totals: stations, empty and full ones, bikes and docks available."""
    extra, params = (" AND system_id = ?", [system_id]) if system_id else ("", [])
    return q.serving(
        "SELECT system_id, window_start_ms, stations, empty_count, full_count, total_bikes_available, total_docks_available "
        f"FROM bikes_system_minute WHERE window_start_ms >= ?{extra} ORDER BY system_id, window_start_ms",
        [since_ms, *params],
    )


def fleet(q: Queries, since_ms: int) -> list[dict[str, Any]]:
    """Per-minute vehicle counts, and the top 3 by range of each minute."""
    rows = q.serving(
        "SELECT system_id, window_start_ms, vehicles, abandoned_count, reserved_count, disabled_count, top_range "
        "FROM bikes_vehicle_minute WHERE window_start_ms >= ? ORDER BY system_id, window_start_ms",
        [since_ms],
    )
    return [{**r, "top_range": _json(r["top_range"])} for r in rows]


def latest_fleet(q: Queries) -> list[dict[str, Any]]:
    """Each system's latest vehicle minute, however old: the top 3 by range now."""
    rows = q.serving(
        "SELECT system_id, window_start_ms, vehicles, abandoned_count, reserved_count, disabled_count, top_range FROM bikes_vehicle_minute v "
        "WHERE window_start_ms = (SELECT MAX(window_start_ms) FROM bikes_vehicle_minute w WHERE w.system_id = v.system_id)"
    )
    return [{**r, "top_range": _json(r["top_range"])} for r in rows]


def problem_bikes(q: Queries) -> list[dict[str, Any]]:
    """Abandoned, reserved and disabled bikes of each system's latest vehicle snapshot."""
    return q.serving(
        "SELECT v.system_id, vehicle_id, station_id, station_name, lat, lon, is_reserved, is_disabled, is_abandoned, situation, "
        "current_range_meters, last_reported_ms FROM bikes_vehicles v "
        "JOIN (SELECT system_id, MAX(snapshot_ms) AS latest FROM bikes_vehicles GROUP BY system_id) s "
        "ON v.system_id = s.system_id AND v.snapshot_ms = s.latest "
        "WHERE is_abandoned OR is_reserved OR is_disabled ORDER BY v.system_id, vehicle_id"
    )


def _json(v: Any) -> Any:
    return orjson.loads(v) if isinstance(v, str) else v


@router.get("/systems", summary="The bike-share systems running")
def get_systems(q: Q) -> list[dict[str, Any]]:
    return systems(q)


@router.get("/stations", summary="Every station's latest state")
def get_stations(q: Q, system_id: str | None = None) -> list[dict[str, Any]]:
    return stations(q, system_id)


@router.get("/minutes", summary="System totals per minute")
def get_minutes(q: Q, system_id: str | None = None, hours: Annotated[float, Query(gt=0, le=168)] = 24) -> list[dict[str, Any]]:
    return minutes(q, now_ms() - int(hours * HOUR_MS), system_id)


@router.get("/fleet", summary="Vehicle counts per minute, with the top 3 by range")
def get_fleet(q: Q, hours: Annotated[float, Query(gt=0, le=168)] = 24) -> list[dict[str, Any]]:
    return fleet(q, now_ms() - int(hours * HOUR_MS))


@router.get("/problems", summary="Abandoned, reserved and disabled bikes, now")
def get_problems(q: Q) -> list[dict[str, Any]]:
    return problem_bikes(q)


@router.get("/day", summary="Each station's day: minutes empty and full, mean bikes and docks (from the lake)")
def get_day(q: Q, day: date, system_id: str | None = None) -> dict[str, Any]:
    from affluent.analytics.bikes import station_days

    def answer(engine: DuckDBEngine) -> dict[str, Any]:
        try:
            found = station_days(engine, day, system_id=system_id, default_tz=q.settings.bikes.timezone)
        except OverflowError as exc:  # a day at the edge of the calendar (0001-01-01, 9999-12-31)
            raise HTTPException(422, f"day {day.isoformat()} is out of range") from exc
        return {"day": day.isoformat(), "stations": [{k: v for k, v in s.to_dict().items() if k != "hours"} for s in found]}

    return from_lake(q, answer, empty={"day": day.isoformat(), "stations": []}, commit_s=q.settings.bikes.lake_commit_s)


def channels() -> list[Channel]:
    day = 24 * HOUR_MS
    return [
        KeyedRows("bikes.systems", systems, ("system_id",)),
        KeyedRows("bikes.stations", stations, ("system_id", "station_id")),
        KeyedRows("bikes.minutes", lambda q: minutes(q, now_ms() - day), ("system_id", "window_start_ms")),
        KeyedRows("bikes.fleet", latest_fleet, ("system_id",)),
        KeyedRows("bikes.problems", problem_bikes, ("system_id", "vehicle_id")),
    ]


def alert(r: Record) -> dict[str, Any]:
    v = r.value
    if v.get("station_name"):
        where = f"at {v['station_name']}"
    else:
        where = f"outside any station ({v['lat']:.4f}, {v['lon']:.4f})" if v.get("lat") is not None else "outside any station"
    return {"title": f"bike {v['vehicle_id']} {v['alert']}", "detail": where, "level": "warning" if v["alert"] == "abandoned" else "info"}


BOARD = Board(
    app="bikes",
    title="Bike share",
    summary="GBFS stations, fill ratio, problem bikes",
    router=router,
    channels=channels,
    alerts=(AlertFeed(T_ALERTS, alert),),
    script="bikes.js",
)
