"""Bike-share questions: what empty, full and saturated mean, and the daily per-station answers.

The definitions live here once and nowhere else. The live pipeline calls `station_flags` on every
station snapshot and stores the flags it returns with the snapshot in the lake; the daily analysis
sums those stored flags. So "full" on the live map and "minutes full" in the daily answers cannot
disagree (the original system had full = bikes == capacity live and docks == 0 in batch):

- empty: no bike to take, `num_bikes_available == 0`;
- full: no dock to return a bike to, `num_docks_available == 0`;
- saturated: 3 docks or fewer left, full included (`num_docks_available <= 3`).

>>> station_flags(0, 12), station_flags(5, 0), station_flags(9, 3), station_flags(4, None)
((True, False, False), (False, True, True), (False, False, True), (False, False, False))

The daily answers are time-weighted, not row counts: each snapshot's state lasts until that
station's next snapshot, at most `max_gap_ms` (10 min by default, so a feed outage is not counted
as hours of the last state seen), and never past the end of the day or past now (the time of the
analysis): a station seen for 1.2 minutes, right after the feed started, has 1.2 minutes observed,
not 11.2. A snapshot taken shortly before midnight carries into the day.
Days and hours are those of the system's time zone (system_information.timezone; Europe/Paris when
the feed does not say): a day is local midnight to local midnight, 23 or 25 hours on DST days, and
hour `i` is the i-th hour after local midnight. The lake's date=/hour= folders are in UTC.

The SQL is the subset DuckDB and Spark SQL share (CTEs, LEAD and ROW_NUMBER windows, GREATEST/LEAST,
VALUES); parameters are `$name` markers, which a Spark engine turns into its `:name` markers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from affluent.analytics.base import EmptyLakeError, Question
from affluent.core.clock import now_ms

#: a station with this many docks available or fewer is saturated
SATURATED_MAX_DOCKS = 3
#: the lake dataset of station status snapshots
STATION_STATUS = "bikes_station_status"
#: how long one snapshot's state may last when the next one does not come
MAX_GAP_MS = 600_000
DEFAULT_TIMEZONE = "Europe/Paris"
HOUR_MS = 3_600_000


def station_flags(num_bikes_available: int | None, num_docks_available: int | None) -> tuple[bool, bool, bool]:
    """(empty, full, saturated) of one station snapshot: THE definition, used live and in the lake."""
    empty = num_bikes_available == 0
    full = num_docks_available == 0
    saturated = num_docks_available is not None and num_docks_available <= SATURATED_MAX_DOCKS
    return empty, full, saturated


def is_abandoned(station_id: str | None) -> bool:
    """A bike outside any station (free floating; GBFS station_id "" or absent)."""
    return not station_id


def bike_situation(is_reserved: bool | None, is_disabled: bool | None) -> str | None:
    """'both', 'reserved', 'disabled' or None: a bike that riders cannot take right now, and why."""
    if is_reserved and is_disabled:
        return "both"
    if is_reserved:
        return "reserved"
    if is_disabled:
        return "disabled"
    return None


# -- day boundaries ------------------------------------------------------------------------------------------
def day_bounds_ms(day: date, tz: str) -> tuple[int, int]:
    """[local midnight, next local midnight) of `day` in `tz`, as UTC epoch ms (23 or 25 h on DST days)."""
    zone = ZoneInfo(tz)
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def hour_label(start_ms: int, tz: str) -> str:
    """Local wall-clock time of an hour's start, with its UTC offset (two 02:00 on the autumn DST day)."""
    return datetime.fromtimestamp(start_ms / 1000, UTC).astimezone(ZoneInfo(tz)).strftime("%H:%M%z")


def _utc_date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


# -- the questions ------------------------------------------------------------------------------------------
_HOURS = ", ".join(f"({h})" for h in range(25))

# Snapshots near the day (one max gap before it, for the state at midnight), one row per
# (station, last_reported), each lasting until the station's next snapshot, capped, and clipped to
# [day start, until) where until is the end of the day or now, whichever comes first.
_SPANS = f"""
WITH snaps AS (
    SELECT system_id, station_id, name, last_reported_ms AS ts_ms,
           num_bikes_available AS bikes, num_docks_available AS docks,
           CASE WHEN is_empty THEN 1 ELSE 0 END AS empty_i,
           CASE WHEN is_full THEN 1 ELSE 0 END AS full_i,
           ROW_NUMBER() OVER (PARTITION BY system_id, station_id, last_reported_ms ORDER BY snapshot_ms DESC) AS dup
    FROM {STATION_STATUS}
    WHERE system_id = $system_id
      AND date BETWEEN $date_lo AND $date_hi
      AND last_reported_ms >= $day_start_ms - $max_gap_ms
      AND last_reported_ms < $day_end_ms
),
ordered AS (
    SELECT system_id, station_id, ts_ms, bikes, docks, empty_i, full_i,
           LEAD(ts_ms) OVER (PARTITION BY system_id, station_id ORDER BY ts_ms) AS next_ms
    FROM snaps
    WHERE dup = 1
),
spans AS (
    SELECT system_id, station_id, bikes, docks, empty_i, full_i,
           GREATEST(ts_ms, $day_start_ms) AS start_ms,
           LEAST(COALESCE(next_ms, ts_ms + $max_gap_ms), ts_ms + $max_gap_ms, $until_ms) AS end_ms
    FROM ordered
),
names AS (
    SELECT system_id, station_id, name
    FROM (SELECT system_id, station_id, name,
                 ROW_NUMBER() OVER (PARTITION BY system_id, station_id ORDER BY ts_ms DESC) AS rn
          FROM snaps WHERE name IS NOT NULL) latest
    WHERE rn = 1
)"""

_MEASURES = """
       SUM(p.ms) AS observed_ms,
       SUM(p.bikes * p.ms) / SUM(p.ms) AS mean_bikes,
       SUM(p.docks * p.ms) / SUM(CASE WHEN p.docks IS NULL THEN NULL ELSE p.ms END) AS mean_docks,
       CAST(SUM(p.empty_i * p.ms) AS DOUBLE) / 60000 AS minutes_empty,
       CAST(SUM(p.full_i * p.ms) AS DOUBLE) / 60000 AS minutes_full"""

STATION_DAY = Question(
    name="bikes_station_day",
    title="Per station and day: mean bikes and docks available, minutes empty and full (time-weighted)",
    sql=f"""{_SPANS}
SELECT p.system_id, p.station_id, n.name,{_MEASURES}
FROM (SELECT spans.*, end_ms - start_ms AS ms FROM spans) p
LEFT JOIN names n ON n.system_id = p.system_id AND n.station_id = p.station_id
WHERE p.ms > 0
GROUP BY p.system_id, p.station_id, n.name
ORDER BY p.system_id, p.station_id""",
    datasets=(STATION_STATUS,),
)

STATION_HOUR = Question(
    name="bikes_station_hour",
    title="Per station and local hour: mean bikes and docks available, minutes empty and full (time-weighted)",
    sql=f"""{_SPANS},
hours AS (SELECT h FROM (VALUES {_HOURS}) AS hours_t(h)),
pieces AS (
    SELECT sp.system_id, sp.station_id, hours.h, sp.bikes, sp.docks, sp.empty_i, sp.full_i,
           LEAST(sp.end_ms, $day_start_ms + (hours.h + 1) * {HOUR_MS})
             - GREATEST(sp.start_ms, $day_start_ms + hours.h * {HOUR_MS}) AS ms
    FROM spans sp
    JOIN hours ON sp.start_ms < $day_start_ms + (hours.h + 1) * {HOUR_MS} AND sp.end_ms > $day_start_ms + hours.h * {HOUR_MS}
)
SELECT p.system_id, p.station_id, n.name, p.h AS hour_index,{_MEASURES}
FROM pieces p
LEFT JOIN names n ON n.system_id = p.system_id AND n.station_id = p.station_id
WHERE p.ms > 0
GROUP BY p.system_id, p.station_id, n.name, p.h
ORDER BY p.system_id, p.station_id, p.h""",
    datasets=(STATION_STATUS,),
)

SYSTEMS_NEAR_DAY = Question(
    name="bikes_systems_near_day",
    title="Systems with snapshots in the lake around a day, with their time zone",
    sql=f"""
SELECT system_id, MAX(timezone) AS timezone, COUNT(*) AS snapshots
FROM {STATION_STATUS}
WHERE date BETWEEN $date_lo AND $date_hi
GROUP BY system_id
ORDER BY system_id""",
    datasets=(STATION_STATUS,),
)


class Engine(Protocol):
    def run(self, question: Question, **params: Any) -> list[dict[str, Any]]: ...


@dataclass(slots=True)
class StationDay:
    system_id: str
    station_id: str
    name: str | None
    day: str
    timezone: str
    minutes_observed: float
    mean_bikes: float | None
    mean_docks: float | None
    minutes_empty: float
    minutes_full: float
    hours: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def station_days(
    engine: Engine,
    day: date,
    *,
    system_id: str | None = None,
    tz: str | None = None,
    default_tz: str = DEFAULT_TIMEZONE,
    max_gap_ms: int = MAX_GAP_MS,
    now: int | None = None,
) -> list[StationDay]:
    """The daily and hourly answers for every station (of one system, or of every system) on `day`.

    now: the time of the analysis, UTC epoch ms (default: the wall clock); no time after it is counted.
    Raises EmptyLakeError when the lake holds no snapshot near that day.
    """
    now = now_ms() if now is None else now
    # UTC dates that can hold a snapshot of the local day, whatever the zone (UTC-12 .. UTC+14)
    lo = (day - timedelta(days=1)).isoformat()
    hi = (day + timedelta(days=1)).isoformat()
    systems = engine.run(SYSTEMS_NEAR_DAY, date_lo=lo, date_hi=hi)
    if system_id is not None:
        systems = [s for s in systems if s["system_id"] == system_id]
    if not systems:
        which = f"system {system_id!r}" if system_id else "any system"
        raise EmptyLakeError(f"the lake has no station snapshots of {which} around {day.isoformat()}")
    out: list[StationDay] = []
    for s in systems:
        zone = tz or s.get("timezone") or default_tz
        start_ms, end_ms = day_bounds_ms(day, zone)
        params = {
            "system_id": s["system_id"],
            "day_start_ms": start_ms,
            "day_end_ms": end_ms,
            "until_ms": min(end_ms, now),
            "max_gap_ms": max_gap_ms,
            "date_lo": _utc_date(start_ms - max_gap_ms),
            "date_hi": _utc_date(end_ms - 1),
        }
        hours: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for h in engine.run(STATION_HOUR, **params):
            hstart = start_ms + int(h["hour_index"]) * HOUR_MS
            hours.setdefault((h["system_id"], h["station_id"]), []).append(
                {
                    "hour_index": int(h["hour_index"]),
                    "hour": hour_label(hstart, zone),
                    "start_ms": hstart,
                    "minutes_observed": h["observed_ms"] / 60000,
                    "mean_bikes": h["mean_bikes"],
                    "mean_docks": h["mean_docks"],
                    "minutes_empty": h["minutes_empty"],
                    "minutes_full": h["minutes_full"],
                }
            )
        for d in engine.run(STATION_DAY, **params):
            out.append(
                StationDay(
                    system_id=d["system_id"],
                    station_id=d["station_id"],
                    name=d["name"],
                    day=day.isoformat(),
                    timezone=zone,
                    minutes_observed=d["observed_ms"] / 60000,
                    mean_bikes=d["mean_bikes"],
                    mean_docks=d["mean_docks"],
                    minutes_empty=d["minutes_empty"],
                    minutes_full=d["minutes_full"],
                    hours=hours.get((d["system_id"], d["station_id"]), []),
                )
            )
    return out


__all__ = [
    "MAX_GAP_MS",
    "SATURATED_MAX_DOCKS",
    "STATION_DAY",
    "STATION_HOUR",
    "STATION_STATUS",
    "StationDay",
    "bike_situation",
    "day_bounds_ms",
    "is_abandoned",
    "station_days",
    "station_flags",
]
