"""What lets a reading in: each kind of bad input is refused with a reason a person can act on."""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from affluent.analytics.base import parse_when
from affluent.analytics.stock import DUCKDB, SPARK, stock_questions
from affluent.apps.stock.readings import (
    BadReadingError,
    _check_fully,
    check_reading,
    check_readings,
    checked_or_none,
    event_time_ms,
    lake_columns,
    shelf_key,
)
from affluent.core.errors import ConfigError

GOOD: dict[str, Any] = {
    "sensor_id": "shelf-3",
    "timestamp": "2025-07-05T13:52:00.250Z",
    "product_id": "GTA6",
    "quantity": 1,
    "threshold": 2,
    "location": {"store": "paris-12", "lat": 48.85, "lon": 2.34},
    "alert": True,
}


def test_stocknows_own_message_is_accepted_and_completed() -> None:
    r = check_reading(dict(GOOD))
    assert r["store_id"] == "paris-12"
    assert r["reading_id"] == "paris-12-gta6-1751723520250"
    assert event_time_ms(r) == 1_751_723_520_250
    assert shelf_key(r) == "paris-12/GTA6"


def test_message_id_serves_as_reading_id() -> None:
    assert check_reading({**GOOD, "message_id": "5b7f2e0c"})["reading_id"] == "5b7f2e0c"


def test_timestamps_with_offsets_are_exact() -> None:
    assert event_time_ms(check_reading({**GOOD, "timestamp": "2025-07-05T15:52:00.250+02:00"})) == 1_751_723_520_250


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"quantity": None}, "missing field: quantity"),
        ({"product_id": None, "alert": None}, "missing fields: product_id, alert"),
        ({"quantity": -3}, "negative quantity -3"),
        ({"product_id": "caviar"}, "unknown product 'caviar'"),
        ({"quantity": "5"}, "quantity must be an integer, not a string ('5')"),
        ({"quantity": 2.5}, "quantity must be an integer, not a number (2.5)"),
        ({"quantity": True}, "quantity must be an integer, not a boolean (True)"),
        ({"threshold": 0}, "threshold must be positive, not 0"),
        ({"alert": "yes"}, "alert must be a boolean, not a string ('yes')"),
        ({"alert": False}, "alert is false but quantity 1 < threshold 2"),
        ({"timestamp": "yesterday"}, "timestamp 'yesterday' is not an ISO-8601 date and time"),
        ({"timestamp": "2025-07-05 13:52:00"}, "has no time zone"),
        ({"timestamp": 1751723520}, "timestamp must be an ISO-8601 string, not an integer"),
        ({"timestamp": "0001-01-01T00:00:00+01:00"}, "is out of range"),  # passed the check, then the lake refused it
        ({"timestamp": "9999-12-31T23:59:59-01:00"}, "is out of range"),
        ({"timestamp": "1969-12-31T23:59:59Z"}, "is before 1970"),
        ({"location": "paris"}, "location must be an object, not a string"),
        ({"location": {"lat": 1.0, "lon": 2.0}}, "missing field: location.store"),
        ({"location": {"store": "paris-12", "lat": 123.0, "lon": 2.0}}, "location.lat must be a number within ±90"),
        ({"sensor_id": ""}, "sensor_id must be a non-empty string"),
        ({"store_id": "lyon-2"}, "store_id 'lyon-2' differs from location.store 'paris-12'"),
    ],
)
def test_bad_readings_are_refused_with_their_reason(change: dict[str, Any], reason: str) -> None:
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(BadReadingError) as err:
        check_reading(bad)
    assert reason in str(err.value)


#: complete readings, as the simulator makes them: a batch of them passes unchanged
WHOLE: list[dict[str, Any]] = [
    {**GOOD, "store_id": "paris-12", "reading_id": f"r{i}", "quantity": i % 4, "alert": i % 4 < 2, "timestamp": f"2025-07-05T13:52:0{i % 3}.000Z"}
    for i in range(12)
]
#: each value differs from a complete reading in one way that `check_reading` must look at
ODD: list[Any] = [
    {**WHOLE[0], "quantity": -1},
    {**WHOLE[0], "alert": None},
    {**WHOLE[0], "product_id": "caviar"},
    {**WHOLE[0], "sensor_id": ""},
    {**WHOLE[0], "reading_id": 7},
    {**WHOLE[0], "timestamp": "yesterday"},
    {**WHOLE[0], "store_id": "lyon-2"},
    {**WHOLE[0], "location": {"store": "paris-12", "lat": 48, "lon": 2}},  # int coordinates: good
    {**WHOLE[0], "location": {"store": "paris-12", "lat": 48.0, "lon": 181.0}},
    {**WHOLE[0], "location": {"store": "paris-12", "lat": float("nan"), "lon": 2.0}},
    {k: v for k, v in WHOLE[0].items() if k not in ("store_id", "reading_id")},  # good, completed
    {**WHOLE[0], "reading_id": ""},  # good, its id made
    {**WHOLE[0], "store_id": "", "location": {"store": "", "lat": 48.85, "lon": 2.34}},
    [1, 2],
]


def test_a_batch_is_checked_as_each_of_its_readings() -> None:
    assert check_readings(WHOLE) is WHOLE
    assert checked_or_none(WHOLE) is WHOLE
    for odd in ODD:
        batch = [*WHOLE, odd]
        try:  # each reading checked field by field, never by the batch check
            want: Any = [_check_fully(v) for v in batch]
        except BadReadingError as exc:
            with pytest.raises(BadReadingError, match=re.escape(str(exc))):
                check_readings(batch)
            assert checked_or_none(batch) == [*WHOLE, None]
        else:
            assert check_readings(batch) == want
            assert checked_or_none(batch) == want


@pytest.mark.parametrize(("value", "reason"), [([1, 2], "not an array"), ("not json {", "not a string"), (None, "not null")])
def test_non_objects_are_refused(value: Any, reason: str) -> None:
    with pytest.raises(BadReadingError, match=reason):
        check_reading(value)


def test_lake_row_is_flat_and_typed() -> None:
    r = check_reading({**GOOD, "seq": 7, "device_id": "paris-12-gta6"})
    columns = lake_columns([r], [event_time_ms(r)])
    assert {name: col[0] for name, col in columns.items()} == {
        "reading_id": "paris-12-gta6-1751723520250", "ts_ms": 1_751_723_520_250, "timestamp": "2025-07-05T13:52:00.250Z",
        "store_id": "paris-12", "sensor_id": "shelf-3", "device_id": "paris-12-gta6", "product_id": "GTA6",
        "quantity": 1, "threshold": 2, "alert": True, "lat": 48.85, "lon": 2.34, "seq": 7,
    }  # fmt: skip


# -- analysis inputs --------------------------------------------------------------------------------
PARIS = ZoneInfo("Europe/Paris")


def test_since_until_take_dates_and_datetimes() -> None:
    assert parse_when("2025-03-03", PARIS) == 1_740_956_400_000  # local midnight
    assert parse_when("2025-03-09", PARIS, end=True) == 1_741_561_200_000  # end of that day
    assert parse_when("2025-03-30", PARIS, end=True) - parse_when("2025-03-30", PARIS) == 23 * 3_600_000  # DST day
    assert parse_when("2025-03-03T08:00:00", PARIS) == 1_740_985_200_000  # naive = local
    assert parse_when("2025-03-03T08:00:00Z", PARIS) == 1_740_988_800_000
    with pytest.raises(ConfigError, match="neither a date"):
        parse_when("last tuesday", PARIS)


def test_questions_render_for_both_engines() -> None:
    for dialect in (DUCKDB, SPARK):
        qs = {q.name: q.sql for q in stock_questions(dialect, "Europe/Paris", since_ms=1, until_ms=2)}
        assert "'Europe/Paris'" in qs["top_hours"] and "ts_ms >= 1 AND ts_ms < 2" in qs["top_hours"]
        assert "LIMIT 5" in qs["top_products"]
    assert "from_utc_timestamp" in {q.name: q.sql for q in stock_questions(SPARK, "UTC")}["hourly_trend"]
    with pytest.raises(ConfigError):
        stock_questions(DUCKDB, "Europe/Paris'; DROP TABLE x; --")
