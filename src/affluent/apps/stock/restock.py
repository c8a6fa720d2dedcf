"""The restock handler: from low-stock alerts to restock requests, one open request per shelf.

StockNow's rules, kept: a request asks for `3 × threshold − quantity` units; it is high priority
when the product is in season (winter 12-2: ski, doudoune; spring 3-5: t-shirt; summer 6-8:
maillot de bain, crème solaire; autumn 9-11: parapluie, pull). The season is that of the
reading's own date in the store's time zone, not of the processing clock.

What StockNow lacked: requests are published (topic `stock.restock`), and they are deduplicated.
A shelf (store, product) that keeps reporting alerts gets one request, which stays open until a
reading shows the stock recovered (quantity ≥ threshold); that reading publishes a `closed`
record for the request, and the next alert opens a new one. The handler therefore reads every
checked reading of the shelf, not only alerts: only the readings after an alert tell whether the
shelf was refilled.

The open/closed state of each shelf is keyed state (`keyed_state.KeyedState`), committed with the
requests it caused and the input offsets in one checkpoint: after a crash or restart no request is
lost or sent twice. Readings older than the shelf's last change (an MQTT redelivery arriving
late) change nothing.

>>> from zoneinfo import ZoneInfo
>>> rule = RestockRule(ZoneInfo("Europe/Paris"))
>>> alert = {"store_id": "paris-12", "product_id": "ski", "sensor_id": "shelf-1", "quantity": 1, "threshold": 3,
...          "alert": True, "timestamp": "2025-01-10T09:00:00.000Z", "reading_id": "r1",
...          "location": {"store": "paris-12", "lat": 48.85, "lon": 2.34}}
>>> state, out = rule.step(None, alert, 1736499600000)
>>> out[0]["status"], out[0]["missing_quantity"], out[0]["high_priority"], out[0]["season"]
('open', 8, True, 'winter')
>>> rule.step(state, {**alert, "quantity": 0, "reading_id": "r2"}, 1736499602000)[1]
[]
>>> opened = state["request_id"]
>>> state, out = rule.step(state, {**alert, "quantity": 9, "alert": False, "reading_id": "r3"}, 1736499604000)
>>> out[0]["status"], out[0]["request_id"] == opened, state["open"]
('closed', True, False)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from affluent.apps.stock.catalogue import RESTOCK_TARGET_FACTOR, SEASONAL_PRODUCTS, season_of_month


def missing_quantity(quantity: int, threshold: int) -> int:
    """Units to bring the shelf back to 3 × threshold.

    >>> missing_quantity(1, 4)
    11
    """
    return RESTOCK_TARGET_FACTOR * threshold - quantity


def season_at(ts_ms: int, tz: ZoneInfo) -> str:
    """The season of the local date of `ts_ms` in `tz`.

    >>> season_at(1740787199000, ZoneInfo("Europe/Paris"))  # 2025-02-28 23:59:59 UTC = 1 March 00:59 in Paris
    'spring'
    """
    return season_of_month(datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(tz).month)


def is_high_priority(product: str, season: str) -> bool:
    """In-season products are restocked first.

    >>> is_high_priority("crème solaire", "summer"), is_high_priority("crème solaire", "winter")
    (True, False)
    """
    return product in SEASONAL_PRODUCTS[season]


class RestockRule:
    """`step(state, reading, ts_ms)` for `KeyedState`, keyed by shelf ('store/product').

    State of a shelf: {"open": true, "request_id", "since_ms", "opened_at"} while a request is
    open, {"open": false, "since_ms"} after it closed; no state for a shelf never in alert.
    """

    def __init__(self, tz: ZoneInfo, store_tz: dict[str, ZoneInfo] | None = None) -> None:
        self.tz = tz
        self.store_tz = store_tz or {}

    def step(self, state: dict[str, Any] | None, r: dict[str, Any], ts_ms: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        if state is not None and ts_ms < state["since_ms"]:
            return state, []  # older than the shelf's last change: a late redelivery
        is_open = state is not None and state["open"]
        store = r["store_id"]
        if r["quantity"] < r["threshold"]:
            if is_open:
                return state, []
            season = season_at(ts_ms, self.store_tz.get(store, self.tz))
            request_id = f"{store}/{r['product_id']}/{r['timestamp']}"
            request = {
                "status": "open",
                "request_id": request_id,
                "store_id": store,
                "product_id": r["product_id"],
                "sensor_id": r["sensor_id"],
                "missing_quantity": missing_quantity(r["quantity"], r["threshold"]),
                "high_priority": is_high_priority(r["product_id"], season),
                "season": season,
                "quantity": r["quantity"],
                "threshold": r["threshold"],
                "timestamp": r["timestamp"],
                "reading_id": r["reading_id"],
                "location": r["location"],
            }
            return {"open": True, "request_id": request_id, "since_ms": ts_ms, "opened_at": r["timestamp"]}, [request]
        if not is_open:
            return state, []
        assert state is not None
        closed = {
            "status": "closed",
            "request_id": state["request_id"],
            "store_id": store,
            "product_id": r["product_id"],
            "sensor_id": r["sensor_id"],
            "quantity": r["quantity"],
            "threshold": r["threshold"],
            "timestamp": r["timestamp"],
            "reading_id": r["reading_id"],
            "opened_at": state["opened_at"],
            "open_s": (ts_ms - state["since_ms"]) / 1000,
        }
        return {"open": False, "since_ms": ts_ms}, [closed]
