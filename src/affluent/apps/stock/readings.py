"""A shelf reading: its JSON shape, the check that lets it in, and its row in the lake.

The shape is StockNow's, with additions::

    {"sensor_id": "shelf-2", "timestamp": "2025-07-05T13:52:00.000Z", "product_id": "GTA6",
     "quantity": 1, "threshold": 2, "location": {"store": "paris-12", "lat": 48.85, "lon": 2.34},
     "alert": true,
     "store_id": "paris-12", "device_id": "paris-12-gta6", "reading_id": "paris-12-gta6-1234", "seq": 1234}

`store_id` defaults to `location.store`; `reading_id` (or an MQTT-style `message_id`) identifies
a reading so that redeliveries can be dropped; it defaults to store, product and timestamp.

>>> r = check_reading({"sensor_id": "shelf-2", "timestamp": "2025-07-05T13:52:00Z", "product_id": "GTA6",
...     "quantity": 1, "threshold": 2, "location": {"store": "paris-12", "lat": 48.85, "lon": 2.34}, "alert": True})
>>> r["store_id"], r["reading_id"], event_time_ms(r)
('paris-12', 'paris-12-gta6-1751723520000', 1751723520000)
>>> check_reading({**r, "quantity": -1})
Traceback (most recent call last):
...
affluent.apps.stock.readings.BadReadingError: negative quantity -1
"""

from __future__ import annotations

import math
import operator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import pyarrow as pa

from affluent.apps.stock.catalogue import THRESHOLDS, slug
from affluent.core.errors import RecordError
from affluent.core.expr import col

REQUIRED = ("sensor_id", "timestamp", "product_id", "quantity", "threshold", "location", "alert")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class BadReadingError(RecordError, ValueError):
    """A reading that cannot be trusted; it goes to the dead-letter topic with this message."""


def _type(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(x), "null" if x is None else type(x).__name__
    )


@lru_cache(maxsize=4096)
def parse_timestamp_ms(text: str) -> int:
    """ISO-8601 with a time zone ('...Z' or '+02:00') -> UTC epoch ms, exactly (no float rounding)."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadReadingError(f"timestamp {text[:40]!r} is not an ISO-8601 date and time") from None
    if dt.tzinfo is None:
        raise BadReadingError(f"timestamp {text[:40]!r} has no time zone (expected e.g. 2025-07-05T13:52:00Z)")
    try:
        ms = (dt - _EPOCH) // _MS
        datetime.fromtimestamp(ms // 1000, UTC)  # the lake files readings by UTC date: it must have one
    except (OverflowError, ValueError, OSError):
        raise BadReadingError(f"timestamp {text[:40]!r} is out of range") from None
    if ms < 0:
        raise BadReadingError(f"timestamp {text[:40]!r} is before 1970: not a sensor reading")
    return ms


def _int(v: dict[str, Any], name: str) -> int:
    x = v[name]
    if type(x) is not int:
        raise BadReadingError(f"{name} must be an integer, not {_type(x)} ({x!r})"[:200])
    return x


def _str(v: dict[str, Any], name: str, where: str = "") -> str:
    x = v[name]
    if type(x) is not str or not x:
        raise BadReadingError(f"{where}{name} must be a non-empty string, not {_type(x)} ({x!r})"[:200])
    return x


def _coord(loc: dict[str, Any], name: str, bound: float) -> None:
    x = loc.get(name)
    if not isinstance(x, int | float) or isinstance(x, bool) or not -bound <= x <= bound:
        raise BadReadingError(f"location.{name} must be a number within ±{bound:g}, not {x!r}"[:200])


def check_reading(v: Any) -> dict[str, Any]:
    """The reading, with `store_id` and `reading_id` filled in; raises BadReadingError saying what is wrong."""
    # a complete, well-formed reading (nearly all of them) passes as it is; anything else gets the full check
    return v if _all_well_formed([v]) else _check_fully(v)


def _check_fully(v: Any) -> dict[str, Any]:
    if type(v) is not dict:
        raise BadReadingError(f"a reading must be a JSON object, not {_type(v)}: {str(v)[:80]!r}")
    missing = [f for f in REQUIRED if v.get(f) is None]
    if missing:
        raise BadReadingError(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    product = _str(v, "product_id")
    if product not in THRESHOLDS:
        raise BadReadingError(f"unknown product {product[:60]!r}")
    quantity = _int(v, "quantity")
    if quantity < 0:
        raise BadReadingError(f"negative quantity {quantity}")
    threshold = _int(v, "threshold")
    if threshold <= 0:
        raise BadReadingError(f"threshold must be positive, not {threshold}")
    alert = v["alert"]
    if type(alert) is not bool:
        raise BadReadingError(f"alert must be a boolean, not {_type(alert)} ({alert!r})"[:200])
    if alert != (quantity < threshold):
        relation = "<" if quantity < threshold else ">="
        raise BadReadingError(f"alert is {str(alert).lower()} but quantity {quantity} {relation} threshold {threshold}")
    _str(v, "sensor_id")
    stamp = v["timestamp"]
    if type(stamp) is not str:
        raise BadReadingError(f"timestamp must be an ISO-8601 string, not {_type(stamp)} ({stamp!r})"[:200])
    ts_ms = parse_timestamp_ms(stamp)
    loc = v["location"]
    if type(loc) is not dict:
        raise BadReadingError(f"location must be an object, not {_type(loc)}")
    if loc.get("store") is None:
        raise BadReadingError("missing field: location.store")
    store = _str(loc, "store", "location.")
    _coord(loc, "lat", 90)
    _coord(loc, "lon", 180)
    store_id = v.get("store_id")
    reading_id = v.get("reading_id") or v.get("message_id")
    if store_id is not None and store_id != store:
        raise BadReadingError(f"store_id {store_id!r} differs from location.store {store!r}"[:200])
    if store_id is not None and reading_id is not None and type(reading_id) is str:
        return v
    if reading_id is not None and type(reading_id) is not str:
        raise BadReadingError(f"reading_id must be a string, not {_type(reading_id)}")
    return {**v, "store_id": store, "reading_id": reading_id or f"{store}-{slug(product)}-{ts_ms}"}


def check_readings(values: list[Any]) -> list[dict[str, Any]]:
    """`check_reading` over a batch; raises at the first bad reading.

    A batch of complete, well-formed readings (nearly all of them) is checked a field at a time across
    the batch, and passes unchanged.
    """
    if _all_well_formed(values):
        return values
    return [check_reading(v) for v in values]


def checked_or_none(values: list[Any]) -> list[dict[str, Any] | None]:
    """Each reading checked, or None for a bad one (for steps that leave dead-lettering to another pipeline)."""
    if _all_well_formed(values):
        return values
    return [_checked_or_none(v) for v in values]


def _checked_or_none(v: Any) -> dict[str, Any] | None:
    try:
        return check_reading(v)
    except BadReadingError:
        return None


#: the fields a well-formed reading is checked on, each taken from every reading of a batch in one C-level pass
_CHECKED = ("quantity", "threshold", "alert", "product_id", "sensor_id", "reading_id", "timestamp", "store_id", "location")
_GET = {name: operator.itemgetter(name) for name in _CHECKED}
_GET_PLACE = {name: operator.itemgetter(name) for name in ("store", "lat", "lon")}


def _column(values: list[Any], name: str) -> list[Any]:
    return list(map(_GET[name], values))


def _all_well_formed(values: list[Any]) -> bool:
    """Whether every value is a complete, well-formed reading, checked a field at a time across the batch.

    A missing field (KeyError) or another shape only means "not sure": each value is then checked on its own.
    """
    if set(map(type, values)) != {dict}:
        return False
    try:
        q, t = _column(values, "quantity"), _column(values, "threshold")
        if set(map(type, q)) != {int} or set(map(type, t)) != {int} or min(q) < 0 or min(t) <= 0:
            return False
        if not all(map(operator.is_, map(_GET["alert"], values), map(operator.lt, q, t))):
            return False
        if not set(map(_GET["product_id"], values)) <= THRESHOLDS.keys():
            return False
        sensors, ids = _column(values, "sensor_id"), _column(values, "reading_id")
        if set(map(type, sensors)) != {str} or not all(sensors) or set(map(type, ids)) != {str} or not all(ids):  # an empty id is made
            return False
        stamps = _column(values, "timestamp")
        if set(map(type, stamps)) != {str}:
            return False
        locs = _column(values, "location")
        if set(map(type, locs)) != {dict}:
            return False
        stores = list(map(_GET_PLACE["store"], locs))
        if set(map(type, stores)) != {str} or not all(stores) or _column(values, "store_id") != stores:
            return False
        for name, bound in (("lat", 90), ("lon", 180)):
            xs = list(map(_GET_PLACE[name], locs))
            if not set(map(type, xs)) <= {int, float} or any(map(math.isnan, xs)) or not -bound <= min(xs) <= max(xs) <= bound:
                return False
    except (KeyError, TypeError):  # a field missing, or of a type that cannot be hashed or compared
        return False
    try:
        for stamp in set(stamps):
            parse_timestamp_ms(stamp)
    except BadReadingError:
        return False
    return True


#: a checked reading's event time, its own timestamp: an expression, so that a batch's are taken with no Python call per reading
event_time_ms = col("timestamp").apply(parse_timestamp_ms)


def shelf_key(v: dict[str, Any]) -> str:
    """'store/product': the unit of stock, of alerts and of restock requests."""
    return f"{v.get('store_id') or v['location']['store']}/{v['product_id']}"


def source_key(v: Any) -> str | None:
    """`shelf_key` of a raw value, None when it is not a reading: a source must never fail on a bad record."""
    try:
        return shelf_key(v)
    except Exception:
        return None


def reading_id(v: dict[str, Any]) -> str:
    return str(v["reading_id"])


LAKE_SCHEMA = pa.schema(
    [
        ("reading_id", pa.string()),
        ("ts_ms", pa.int64()),
        ("timestamp", pa.string()),
        ("store_id", pa.string()),
        ("sensor_id", pa.string()),
        ("device_id", pa.string()),
        ("product_id", pa.string()),
        ("quantity", pa.int64()),
        ("threshold", pa.int64()),
        ("alert", pa.bool_()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("seq", pa.int64()),
    ]
)


def _coords(values: list[dict[str, Any]]) -> dict[str, list[Any]]:
    locs = _column(values, "location")
    return {"lat": list(map(_GET_PLACE["lat"], locs)), "lon": list(map(_GET_PLACE["lon"], locs))}


def lake_columns(values: list[dict[str, Any]], times: list[int]) -> dict[str, list[Any]]:
    """Checked readings and their event times as the columns of dataset `stock_readings` (event time `ts_ms`, UTC epoch ms)."""
    return {
        "reading_id": _column(values, "reading_id"),
        "ts_ms": times,
        "timestamp": _column(values, "timestamp"),
        "store_id": _column(values, "store_id"),
        "sensor_id": _column(values, "sensor_id"),
        "device_id": [d if type(d := v.get("device_id")) is str else None for v in values],
        "product_id": _column(values, "product_id"),
        "quantity": _column(values, "quantity"),
        "threshold": _column(values, "threshold"),
        "alert": _column(values, "alert"),
        **_coords(values),  # an integer becomes a double in the table, as float() would make it
        "seq": [n if type(n := v.get("seq")) is int else None for v in values],
    }


def shelf_columns(values: list[dict[str, Any]], times: list[int]) -> dict[str, list[Any]]:
    """Checked readings as the columns of serving table stock_shelves (each shelf's latest reading)."""
    named = ("store_id", "product_id", "sensor_id", "quantity", "threshold", "alert")
    return {**{name: _column(values, name) for name in named}, "ts_ms": times, **_coords(values)}
