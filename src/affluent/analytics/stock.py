"""The stock questions, defined once, answered by DuckDB (or Spark) over lake dataset `stock_readings`.

StockNow's four questions and its bonus, fixed where its answers misled:

1. Are there more alerts on weekends or on weekdays? Counts, and alerts per day, since a week has
   five weekdays for two weekend days; days are the local dates that have readings.
2. Which five products raise the most alerts?
3. At which five hours of the day are there the most alerts, in the stores' time zone (not UTC)?
4. Average stock per product: mean quantity, mean threshold, number of readings.
5. Hourly trend: per local hour, mean quantity and number of distinct products. An hour is labelled
   with its local date, time and UTC offset, "2025-10-26 02:00+0200" then "2025-10-26 02:00+0100" on
   the autumn DST day (two hours, not one bucket), as the bikes answers do.

The SQL is the subset DuckDB and Spark SQL share; the expressions they spell differently (the
local time of an epoch-ms column, that local time as epoch ms, and "is a weekend day") come from a
`Dialect`. Time bounds and the time zone are checked values rendered into the SQL, so no
engine-specific parameter syntax is needed.

>>> qs = stock_questions(DUCKDB, "Europe/Paris", since_ms=0, until_ms=86_400_000)
>>> [q.name for q in qs]
['summary', 'weekend_vs_weekday', 'top_products', 'top_hours', 'stock_per_product', 'hourly_trend']
>>> "ts_ms >= 0 AND ts_ms < 86400000" in qs[0].sql
True
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from affluent.analytics.base import Question
from affluent.core.errors import ConfigError

DATASET = "stock_readings"
TOP_N = 5
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Dialect:
    """How an engine spells what the shared SQL subset lacks."""

    name: str
    #: the local timestamp of column ts_ms (UTC epoch ms) in time zone {tz}
    local_ts: str
    #: true for Saturday and Sunday, for timestamp expression {t}
    is_weekend: str
    #: the wall-clock time of timestamp expression {t} (a local time), as epoch ms
    wall_ms: str


DUCKDB = Dialect("duckdb", "timezone('{tz}', timezone('UTC', epoch_ms(ts_ms)))", "isodow({t}) >= 6", "epoch_ms({t})")
# Spark: with spark.sql.session.timeZone = UTC, timestamp_millis is the UTC wall clock
SPARK = Dialect("spark", "from_utc_timestamp(timestamp_millis(ts_ms), '{tz}')", "dayofweek({t}) IN (1, 7)", "unix_millis({t})")
DIALECTS = {d.name: d for d in (DUCKDB, SPARK)}

_SQL: dict[str, tuple[str, str]] = {
    "summary": (
        "Readings in range",
        """SELECT count(*) AS readings, sum(CASE WHEN alert THEN 1 ELSE 0 END) AS alerts,
       min(ts_ms) AS first_ms, max(ts_ms) AS last_ms, count(DISTINCT store_id) AS stores
FROM {dataset} WHERE {where}""",
    ),
    "weekend_vs_weekday": (
        "Are there more alerts on weekends or on weekdays?",
        """SELECT part, count(DISTINCT day) AS days, sum(CASE WHEN alert THEN 1 ELSE 0 END) AS alerts, count(*) AS readings
FROM (SELECT CASE WHEN {weekend} THEN 'weekend' ELSE 'weekday' END AS part, CAST({local} AS DATE) AS day, alert
      FROM {dataset} WHERE {where}) r
GROUP BY part""",
    ),
    "top_products": (
        "Which products raise the most alerts?",
        """SELECT product_id, count(*) AS alerts FROM {dataset} WHERE {where} AND alert
GROUP BY product_id ORDER BY alerts DESC, product_id LIMIT {top}""",
    ),
    "top_hours": (
        "At which hours of the day (local time) are there the most alerts?",
        """SELECT hour, count(*) AS alerts
FROM (SELECT hour({local}) AS hour FROM {dataset} WHERE {where} AND alert) r
GROUP BY hour ORDER BY alerts DESC, hour LIMIT {top}""",
    ),
    "stock_per_product": (
        "What is the average stock level per product?",
        """SELECT product_id, avg(quantity) AS mean_quantity, avg(threshold) AS mean_threshold, count(*) AS readings
FROM {dataset} WHERE {where} GROUP BY product_id ORDER BY product_id""",
    ),
    "hourly_trend": (
        "How does stock evolve, hour by hour (local time)?",
        # the UTC start of each reading's local hour: ts_ms minus the time since the local hour began, so the
        # two local 02:00 hours of the autumn DST day stay apart (and half-hour zones stay right)
        """SELECT hour_start_ms, avg(quantity) AS mean_quantity, count(DISTINCT product_id) AS products, count(*) AS readings
FROM (SELECT ts_ms - ((({wall_ms}) % {hour_ms}) + {hour_ms}) % {hour_ms} AS hour_start_ms, quantity, product_id
      FROM {dataset} WHERE {where}) r
GROUP BY hour_start_ms ORDER BY hour_start_ms""",
    ),
}
QUESTION_NAMES = tuple(_SQL)


def check_tz(tz: str) -> ZoneInfo:
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", tz):
        raise ConfigError(f"bad time zone name {tz!r}")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {tz!r} (e.g. Europe/Paris)") from exc


def stock_questions(dialect: Dialect, tz: str, *, since_ms: int | None = None, until_ms: int | None = None) -> list[Question]:
    """The questions rendered for one engine, over readings with since_ms <= ts_ms < until_ms."""
    check_tz(tz)
    conds = []
    if since_ms is not None:
        conds.append(f"ts_ms >= {int(since_ms)}")
    if until_ms is not None:
        conds.append(f"ts_ms < {int(until_ms)}")
    where = " AND ".join(conds) or "TRUE"
    local = dialect.local_ts.format(tz=tz)
    parts = {
        "dataset": DATASET,
        "where": where,
        "local": local,
        "weekend": dialect.is_weekend.format(t=local),
        "wall_ms": dialect.wall_ms.format(t=local),
        "hour_ms": HOUR_MS,
        "top": TOP_N,
    }
    return [Question(name, title, sql.format(**parts), (DATASET,)) for name, (title, sql) in _SQL.items()]


def _iso(ms: int | None, tz: ZoneInfo) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).isoformat(timespec="seconds")


def hour_label(start_ms: int, tz: ZoneInfo) -> str:
    """Local date and time of an hour's start with its UTC offset: the autumn DST day has two 02:00 hours.

    >>> paris = ZoneInfo("Europe/Paris")
    >>> hour_label(1761436800000, paris), hour_label(1761440400000, paris)
    ('2025-10-26 02:00+0200', '2025-10-26 02:00+0100')
    """
    return datetime.fromtimestamp(start_ms / 1000, UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M%z")


def _num(x: Any) -> float:
    return float(x) if x is not None else 0.0


def answer(rows: dict[str, list[dict[str, Any]]], tz: str, *, since_ms: int | None, until_ms: int | None) -> dict[str, Any]:
    """The answers as a JSON-able document, from each question's result rows."""
    zone = check_tz(tz)
    s = rows["summary"][0] if rows["summary"] else {}
    parts: dict[str, dict[str, Any]] = {part: {"days": 0, "alerts": 0, "readings": 0} for part in ("weekday", "weekend")}
    for r in rows["weekend_vs_weekday"]:
        parts[r["part"]] = {"days": int(r["days"]), "alerts": int(r["alerts"] or 0), "readings": int(r["readings"])}
    for p in parts.values():
        p["alerts_per_day"] = p["alerts"] / p["days"] if p["days"] else None
    we, wd = parts["weekend"]["alerts_per_day"], parts["weekday"]["alerts_per_day"]
    verdict = "equal"
    if we is None or wd is None:
        verdict = "unknown"  # the range does not hold both kinds of days
    elif we != wd:
        verdict = "weekend" if we > wd else "weekday"
    return {
        "timezone": tz,
        "since": _iso(since_ms, zone),
        "until": _iso(until_ms, zone),
        "readings": int(s.get("readings") or 0),
        "alerts": int(s.get("alerts") or 0),
        "stores": int(s.get("stores") or 0),
        "first_reading": _iso(s.get("first_ms"), zone),
        "last_reading": _iso(s.get("last_ms"), zone),
        "weekend_vs_weekday": {**parts, "more_alerts_per_day_on": verdict},
        "top_products": [{"product_id": r["product_id"], "alerts": int(r["alerts"])} for r in rows["top_products"]],
        "top_hours": [{"hour": int(r["hour"]), "alerts": int(r["alerts"])} for r in rows["top_hours"]],
        "stock_per_product": [
            {
                "product_id": r["product_id"],
                "mean_quantity": _num(r["mean_quantity"]),
                "mean_threshold": _num(r["mean_threshold"]),
                "readings": int(r["readings"]),
            }
            for r in rows["stock_per_product"]
        ],
        "hourly_trend": [
            {
                "hour": hour_label(int(r["hour_start_ms"]), zone),
                "mean_quantity": _num(r["mean_quantity"]),
                "products": int(r["products"]),
                "readings": int(r["readings"]),
            }
            for r in rows["hourly_trend"]
        ],
    }


def analyze_stock(
    run: Callable[[Question], list[dict[str, Any]]],
    *,
    dialect: Dialect = DUCKDB,
    tz: str = "Europe/Paris",
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[str, Any]:
    """Answer the five questions with `run` (e.g. `DuckDBEngine(root).run`). Raises EmptyLakeError without data."""
    rows = {q.name: run(q) for q in stock_questions(dialect, tz, since_ms=since_ms, until_ms=until_ms)}
    return answer(rows, tz, since_ms=since_ms, until_ms=until_ms)
