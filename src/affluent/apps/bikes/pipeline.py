"""The bikes pipelines, as a diagram::

    GBFSSource | GBFSReplaySource --> bikes.gbfs (every feed, normalised)
    bikes-feeds:  bikes.gbfs --by feed--> bikes.system_information --> serving bikes_systems
                                     +--> bikes.station_information          (the stations table)
                                     +--> station_status --dedupe (station, last_reported)--> bikes.station_status
                                     |                   +--per system, 1-min window--> bikes.system_minute --> serving bikes_system_minute
                                     +--> bikes.vehicle_status
    bikes:        bikes.station_status --enrich(stations)--> bikes.station_state --> serving bikes_stations
                  bikes.vehicle_status --enrich(stations)--> serving bikes_vehicles
                                                         +--> alerts (abandoned, reserved, disabled) --dedupe--> bikes.vehicle_alerts
                                                         +--per system, 1-min window--> bikes.vehicle_minute --> serving bikes_vehicle_minute
    bikes-lake:   bikes.station_state --> lake bikes_station_status (date=/hour= in UTC)

The stations table is fed by a topic, so a station that appears after the start is joined from its
first snapshot on (the source reads station_information again as soon as a status names a station
it has not described).

Per-minute counts take, in each 1-min event-time window, the latest snapshot of the system: each
station (or bike) counts once, as it was at the last snapshot of that minute, however many snapshots
the minute saw. Event time is the snapshot's `last_updated`, so every station of a snapshot falls in
the same window and a station that has not reported for hours still counts in the minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from affluent.analytics.bikes import STATION_STATUS, bike_situation, is_abandoned, station_flags
from affluent.core.aggregates import Aggregate
from affluent.core.clock import DEFAULT_MAX_EVENT_AHEAD_MS
from affluent.core.log import DAY_MS, TopicConfig
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.sources import Source
from affluent.core.windows import TumblingWindow
from affluent.sinks.lake import ParquetLakeSink
from affluent.sinks.serving import ServingSink

T_GBFS = "bikes.gbfs"
T_SYSTEMS = "bikes.system_information"
T_STATION_INFO = "bikes.station_information"
T_STATUS = "bikes.station_status"
T_VEHICLES = "bikes.vehicle_status"
T_STATE = "bikes.station_state"
T_SYSTEM_MINUTE = "bikes.system_minute"
T_VEHICLE_MINUTE = "bikes.vehicle_minute"
T_ALERTS = "bikes.vehicle_alerts"

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: a vehicle that stays in the same alert situation is alerted again after this long
ALERT_REPEAT_MS = 6 * HOUR_MS
#: how many bikes the "top by remaining range" list holds
TOP_RANGE = 3
#: rows of bikes_vehicles older than the newest snapshot by more than this are gone (rented, renamed)
VEHICLES_RETAIN_MS = 15 * MINUTE_MS
#: the serving store keeps a week of per-minute counts (the lake keeps everything)
_MINUTES_KEPT: dict[str, Any] = {"retain_ms": 7 * DAY_MS, "time_column": "window_start_ms"}
# station_information is a table: its topic keeps every row until replaced
_KEEP = TopicConfig(retention_ms=None)

STATION_COLUMNS = {
    "system_id": "VARCHAR",
    "station_id": "VARCHAR",
    "name": "VARCHAR",
    "lat": "DOUBLE",
    "lon": "DOUBLE",
    "capacity": "INTEGER",
    "num_bikes_available": "INTEGER",
    "num_docks_available": "INTEGER",
    "num_bikes_disabled": "INTEGER",
    "num_docks_disabled": "INTEGER",
    "is_installed": "BOOLEAN",
    "is_renting": "BOOLEAN",
    "is_returning": "BOOLEAN",
    "is_empty": "BOOLEAN",
    "is_full": "BOOLEAN",
    "is_saturated": "BOOLEAN",
    "capacity_exceeded": "BOOLEAN",
    "bikes_by_type": "JSON",
    "last_reported_ms": "BIGINT",
    "snapshot_ms": "BIGINT",
    "timezone": "VARCHAR",
}
SYSTEM_MINUTE_COLUMNS = {
    "system_id": "VARCHAR",
    "window_start_ms": "BIGINT",
    "window_end_ms": "BIGINT",
    "snapshot_ms": "BIGINT",
    "stations": "INTEGER",
    "empty_count": "INTEGER",
    "full_count": "INTEGER",
    "saturated_count": "INTEGER",
    "total_bikes_available": "INTEGER",
    "total_docks_available": "INTEGER",
}
VEHICLE_COLUMNS = {
    "system_id": "VARCHAR",
    "vehicle_id": "VARCHAR",
    "station_id": "VARCHAR",
    "station_name": "VARCHAR",
    "lat": "DOUBLE",
    "lon": "DOUBLE",
    "is_reserved": "BOOLEAN",
    "is_disabled": "BOOLEAN",
    "is_abandoned": "BOOLEAN",
    "situation": "VARCHAR",
    "vehicle_type_id": "VARCHAR",
    "current_range_meters": "DOUBLE",
    "last_reported_ms": "BIGINT",
    "snapshot_ms": "BIGINT",
}
VEHICLE_MINUTE_COLUMNS = {
    "system_id": "VARCHAR",
    "window_start_ms": "BIGINT",
    "window_end_ms": "BIGINT",
    "snapshot_ms": "BIGINT",
    "vehicles": "INTEGER",
    "abandoned_count": "INTEGER",
    "reserved_count": "INTEGER",
    "disabled_count": "INTEGER",
    "top_range": "JSON",
}
SYSTEM_COLUMNS = {
    "system_id": "VARCHAR",
    "name": "VARCHAR",
    "operator": "VARCHAR",
    "timezone": "VARCHAR",
    "language": "VARCHAR",
    "url": "VARCHAR",
    "license_url": "VARCHAR",
    "gbfs_version": "VARCHAR",
    "snapshot_ms": "BIGINT",
}
LAKE_SCHEMA = pa.schema(
    [
        ("system_id", pa.string()),
        ("station_id", pa.string()),
        ("name", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("capacity", pa.int32()),
        ("num_bikes_available", pa.int32()),
        ("num_docks_available", pa.int32()),
        ("num_bikes_disabled", pa.int32()),
        ("num_docks_disabled", pa.int32()),
        ("is_installed", pa.bool_()),
        ("is_renting", pa.bool_()),
        ("is_returning", pa.bool_()),
        ("is_empty", pa.bool_()),
        ("is_full", pa.bool_()),
        ("is_saturated", pa.bool_()),
        ("last_reported_ms", pa.int64()),
        ("snapshot_ms", pa.int64()),
        ("timezone", pa.string()),
    ]
)


# -- keys and joins ---------------------------------------------------------------------------------------------
def feed_is(name: str) -> Any:
    return lambda v: v.get("feed") == name


def system_of(v: dict[str, Any]) -> str:
    return str(v["system_id"])


def station_key(v: dict[str, Any]) -> tuple[str, str | None]:
    return v["system_id"], v.get("station_id")


def station_row(v: dict[str, Any]) -> dict[str, Any] | None:
    """What the stations table keeps of a station_information record (None removes the station)."""
    if v.get("removed"):
        return None
    return {"name": v.get("name"), "lat": v.get("lat"), "lon": v.get("lon"), "capacity": v.get("capacity")}


def station_state(status: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    """A station's live state: its status, its flags, and what station_information says of it."""
    bikes, docks = status["num_bikes_available"], status.get("num_docks_available")
    empty, full, saturated = station_flags(bikes, docks)
    info = info or {}
    capacity = info.get("capacity")
    return {
        "system_id": status["system_id"],
        "station_id": status["station_id"],
        "name": info.get("name"),
        "lat": info.get("lat"),
        "lon": info.get("lon"),
        "capacity": capacity,
        "num_bikes_available": bikes,
        "num_docks_available": docks,
        "num_bikes_disabled": status.get("num_bikes_disabled"),
        "num_docks_disabled": status.get("num_docks_disabled"),
        "is_installed": status.get("is_installed"),
        "is_renting": status.get("is_renting"),
        "is_returning": status.get("is_returning"),
        "is_empty": empty,
        "is_full": full,
        "is_saturated": saturated,
        # docks out of service make bikes + docks differ from capacity; more than capacity is a feed oddity
        "capacity_exceeded": capacity is not None and docks is not None and bikes + docks > capacity,
        "bikes_by_type": status.get("bikes_by_type"),
        "last_reported_ms": status["last_reported_ms"],
        "snapshot_ms": status["snapshot_ms"],
        "timezone": status.get("timezone"),
    }


def vehicle_state(v: dict[str, Any], info: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "system_id": v["system_id"],
        "vehicle_id": v["vehicle_id"],
        "station_id": v.get("station_id"),
        "station_name": info.get("name") if info else None,
        "lat": v.get("lat"),
        "lon": v.get("lon"),
        "is_reserved": bool(v.get("is_reserved")),
        "is_disabled": bool(v.get("is_disabled")),
        "is_abandoned": is_abandoned(v.get("station_id")),
        "situation": bike_situation(v.get("is_reserved"), v.get("is_disabled")),
        "vehicle_type_id": v.get("vehicle_type_id"),
        "current_range_meters": v.get("current_range_meters"),
        "last_reported_ms": v["last_reported_ms"],
        "snapshot_ms": v["snapshot_ms"],
    }


def vehicle_alerts(v: dict[str, Any]) -> list[dict[str, Any]]:
    """One alert per problem: abandoned (outside any station), reserved, disabled, or both."""
    kinds = (["abandoned"] if v["is_abandoned"] else []) + ([v["situation"]] if v["situation"] else [])
    keep = ("system_id", "vehicle_id", "station_id", "station_name", "lat", "lon", "current_range_meters", "snapshot_ms")
    return [{"alert": k, **{f: v[f] for f in keep}} for k in kinds]


# -- per-minute aggregates -----------------------------------------------------------------------------------------
class _LatestSnapshot(Aggregate):
    """Counts over the latest snapshot seen in a window; accumulator [snapshot_ms, counts...].

    Records of an older snapshot of the same window are ignored; a newer snapshot starts afresh.
    """

    #: the accumulator of a fresh snapshot, after its time
    empty: tuple[Any, ...] = ()

    def create(self) -> Any:
        return None

    def current(self, acc: Any, timestamp_ms: int) -> Any:
        """The accumulator to add to, or None when the record belongs to an older snapshot."""
        if acc is None or timestamp_ms > acc[0]:
            return [timestamp_ms, *(list(x) if isinstance(x, list) else x for x in self.empty)]
        return None if timestamp_ms < acc[0] else acc

    def merge(self, a: Any, b: Any) -> Any:
        if a is None or (b is not None and b[0] > a[0]):
            return b
        if b is None or b[0] < a[0]:
            return a
        return self.combine(a, b)

    def combine(self, a: Any, b: Any) -> Any:
        """Two accumulators of the same snapshot."""
        return [a[0], *(x + y for x, y in zip(a[1:], b[1:], strict=True))]


class StationCounts(_LatestSnapshot):
    """Counts of the latest station_status snapshot in a window: [snapshot_ms, stations, empty, full, saturated, bikes, docks]."""

    name = "stations"
    empty = (0, 0, 0, 0, 0, 0)

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        cur = self.current(acc, timestamp_ms)
        if cur is None:
            return acc  # an older snapshot of the same minute
        # everything that can raise on a bad record comes before the running totals change
        bikes, docks = value["num_bikes_available"], value.get("num_docks_available")
        empty, full, saturated = station_flags(bikes, docks)
        row = (1, int(empty), int(full), int(saturated), _count(bikes), _count(docks or 0))
        for i, n in enumerate(row, 1):
            cur[i] += n
        return cur

    def result(self, acc: Any) -> dict[str, Any]:
        t, n, empty, full, saturated, bikes, docks = acc
        return {
            "snapshot_ms": t,
            "stations": n,
            "empty_count": empty,
            "full_count": full,
            "saturated_count": saturated,
            "total_bikes_available": bikes,
            "total_docks_available": docks,
        }


def _count(n: Any) -> int:
    """A count from a feed: an int (a bool or a string is a bad record)."""
    if type(n) is not int:
        raise TypeError(f"expected a whole number, got {n!r}")
    return n


def _top_key(item: list[Any]) -> tuple[float, str]:
    return -item[0], item[1]


class VehicleCounts(_LatestSnapshot):
    """The latest vehicle snapshot in a window: how many bikes, abandoned, reserved, disabled, and the top by range."""

    name = "vehicles"
    empty = (0, 0, 0, 0, [])

    def add(self, acc: Any, value: Any, timestamp_ms: int) -> Any:
        cur = self.current(acc, timestamp_ms)
        if cur is None:
            return acc
        # everything that can raise on a bad record comes before the running totals change
        flags = (bool(value["is_abandoned"]), bool(value["is_reserved"]), bool(value["is_disabled"]))
        rng = value.get("current_range_meters")
        item = None
        if rng is not None and not flags[1] and not flags[2]:
            item = [float(rng), value["vehicle_id"], value.get("station_id"), value.get("station_name")]
        cur[1] += 1
        for i, flag in enumerate(flags, 2):
            cur[i] += flag
        if item is not None:
            top = cur[5]
            if len(top) < TOP_RANGE or _top_key(item) < _top_key(top[-1]):
                top.append(item)
                top.sort(key=_top_key)
                del top[TOP_RANGE:]
        return cur

    def combine(self, a: Any, b: Any) -> Any:
        top = sorted(a[5] + b[5], key=_top_key)[:TOP_RANGE]
        return [a[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4], top]

    def result(self, acc: Any) -> dict[str, Any]:
        t, n, abandoned, reserved, disabled, top = acc
        return {
            "snapshot_ms": t,
            "vehicles": n,
            "abandoned_count": abandoned,
            "reserved_count": reserved,
            "disabled_count": disabled,
            "top_range": [{"vehicle_id": v, "current_range_meters": r, "station_id": s, "station_name": n} for r, v, s, n in top],
        }


def _window_row(part: str) -> Any:
    def flatten(w: dict[str, Any]) -> dict[str, Any]:
        return {"system_id": w["key"], "window_start_ms": w["start_ms"], "window_end_ms": w["end_ms"], **w[part]}

    return flatten


def _minute() -> TumblingWindow:
    # snapshots of a feed only move forward; grace covers a publisher's clock stepping back a little.
    # No idle advance: results are emitted on update, and a quiet feed must not make its next snapshot late.
    return TumblingWindow(MINUTE_MS, grace_ms=MINUTE_MS, idle_ms=None)


def _lake_time(r: Record) -> int:
    return int(r.value["last_reported_ms"])


# -- the pipelines -------------------------------------------------------------------------------------------------
def build_pipelines(
    source: Source,
    *,
    serving_db: str | Path,
    lake_root: str | Path,
    lake_commit_ms: int = 30_000,
    max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
) -> list[Pipeline]:
    """The three bikes pipelines around one GBFS source (live or replayed).

    max_event_ahead_ms: a snapshot timed further ahead of the wall clock is a dead letter: it would
    move the per-minute windows' watermark and make every later real snapshot late.
    """

    def serving(table: str, keys: tuple[str, ...], columns: dict[str, str], **kw: Any) -> ServingSink:
        return ServingSink(serving_db, table, key_columns=keys, columns=columns, **kw)

    feeds = Pipeline("bikes-feeds", max_event_ahead_ms=max_event_ahead_ms)
    raw = feeds.source(source, topic=T_GBFS, config=TopicConfig(retention_ms=DAY_MS))
    by_feed = raw.branch(
        {
            "systems": feed_is("system_information"),
            "stations": feed_is("station_information"),
            "status": feed_is("station_status"),
            "vehicles": feed_is("vehicle_status"),
        },
        name="by-feed",
    )
    by_feed["systems"].to_topic(T_SYSTEMS, config=_KEEP)
    by_feed["systems"].to_sink(serving("bikes_systems", ("system_id",), SYSTEM_COLUMNS, row=lambda r: {k: r.value.get(k) for k in SYSTEM_COLUMNS}))
    by_feed["stations"].to_topic(T_STATION_INFO, config=_KEEP)
    by_feed["vehicles"].to_topic(T_VEHICLES, config=TopicConfig(retention_ms=DAY_MS))  # the biggest feed; the serving store keeps what matters
    status = by_feed["status"]
    status.dedupe(name="new-snapshots", key=station_key, version=lambda v: v["last_reported_ms"]).to_topic(T_STATUS)
    minute = status.key_by(system_of, name="by-system").window(_minute(), StationCounts(), name="system-minute", emit="update")
    system_minute = minute.map(_window_row("stations"), name="system-minute-row")
    system_minute.to_topic(T_SYSTEM_MINUTE)
    system_minute.to_sink(serving("bikes_system_minute", ("system_id", "window_start_ms"), SYSTEM_MINUTE_COLUMNS, **_MINUTES_KEPT))

    # a feed changes about once a minute: waking 4 times a second keeps the serving store fresh and its upserts batched
    live = Pipeline("bikes", poll_interval_ms=250, max_event_ahead_ms=max_event_ahead_ms)
    stations = live.table("stations", T_STATION_INFO, key=station_key, value=station_row, config=_KEEP)
    state = live.topic(T_STATUS).enrich(stations, key=station_key, join=station_state, name="station-state")
    state.to_topic(T_STATE)
    state.to_sink(serving("bikes_stations", ("system_id", "station_id"), STATION_COLUMNS))
    vehicles = live.topic(T_VEHICLES).enrich(stations, key=station_key, join=vehicle_state, name="vehicle-state")
    vehicles.to_sink(serving("bikes_vehicles", ("system_id", "vehicle_id"), VEHICLE_COLUMNS, retain_ms=VEHICLES_RETAIN_MS, time_column="snapshot_ms"))
    alerts = vehicles.flat_map(vehicle_alerts, name="alerts")
    alerts.dedupe(name="new-alerts", key=lambda a: [a["system_id"], a["vehicle_id"], a["alert"]], ttl_ms=ALERT_REPEAT_MS).to_topic(T_ALERTS)
    fleet = vehicles.key_by(system_of, name="vehicles-by-system").window(_minute(), VehicleCounts(), name="vehicle-minute", emit="update")
    vehicle_minute = fleet.map(_window_row("vehicles"), name="vehicle-minute-row")
    vehicle_minute.to_topic(T_VEHICLE_MINUTE)
    vehicle_minute.to_sink(serving("bikes_vehicle_minute", ("system_id", "window_start_ms"), VEHICLE_MINUTE_COLUMNS, **_MINUTES_KEPT))

    # Parquet files hold more rows when the lake commits seldom; it still reads every second, so that what it
    # read is written when the runtime stops (closing commits)
    lake = Pipeline("bikes-lake", commit_interval_ms=lake_commit_ms, poll_interval_ms=min(lake_commit_ms, 1_000) or 50, max_event_ahead_ms=max_event_ahead_ms)
    lake.topic(T_STATE).to_sink(ParquetLakeSink(lake_root, STATION_STATUS, time_ms=_lake_time, schema=LAKE_SCHEMA, tz="UTC"))
    return [feeds, live, lake]
