"""Restock rules: missing quantity, seasons in the store's time zone, seasonal priority, one open request per shelf."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from affluent.apps.stock.catalogue import PRODUCTS, THRESHOLDS
from affluent.apps.stock.restock import RestockRule, is_high_priority, missing_quantity, season_at

PARIS = ZoneInfo("Europe/Paris")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def reading(quantity: int, when: str, *, product: str = "ski", store: str = "paris-12", n: int = 0) -> dict[str, Any]:
    threshold = THRESHOLDS[product]
    return {
        "sensor_id": "shelf-1",
        "timestamp": datetime.fromisoformat(when).astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "product_id": product,
        "quantity": quantity,
        "threshold": threshold,
        "location": {"store": store, "lat": 48.85, "lon": 2.34},
        "alert": quantity < threshold,
        "store_id": store,
        "reading_id": f"{store}-{product}-{n}",
    }


@pytest.mark.parametrize(
    ("quantity", "threshold", "missing"),
    [(0, 2, 6), (1, 2, 5), (3, 4, 9), (0, 4, 12), (2, 3, 7)],
)
def test_missing_quantity_is_three_thresholds_minus_quantity(quantity: int, threshold: int, missing: int) -> None:
    assert missing_quantity(quantity, threshold) == missing


@pytest.mark.parametrize(
    ("month", "season"),
    [(12, "winter"), (1, "winter"), (2, "winter"), (3, "spring"), (4, "spring"), (5, "spring"),
     (6, "summer"), (7, "summer"), (8, "summer"), (9, "autumn"), (10, "autumn"), (11, "autumn")],
)  # fmt: skip
def test_season_of_each_month(month: int, season: str) -> None:
    assert season_at(ms(f"2025-{month:02d}-15T12:00:00+00:00"), PARIS) == season


def test_season_comes_from_the_local_date_of_the_reading() -> None:
    # 31 May 22:30 UTC is already 1 June in Paris (UTC+2): summer there, spring in UTC
    t = ms("2025-05-31T22:30:00+00:00")
    assert season_at(t, PARIS) == "summer"
    assert season_at(t, ZoneInfo("UTC")) == "spring"
    assert season_at(ms("2025-11-30T23:30:00+00:00"), PARIS) == "winter"


def test_priority_table() -> None:
    high = {s: {p for p in PRODUCTS if is_high_priority(p, s)} for s in ("winter", "spring", "summer", "autumn")}
    assert high == {
        "winter": {"ski", "doudoune"},
        "spring": {"t-shirt"},
        "summer": {"maillot de bain", "crème solaire"},
        "autumn": {"parapluie", "pull"},
    }
    assert not any(is_high_priority(p, s) for p in ("GTA6", "coca", "papier toilette") for s in high)


def run(rule: RestockRule, readings: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    state: Any = None
    out: list[dict[str, Any]] = []
    for r in readings:
        state, emitted = rule.step(state, r, ms(r["timestamp"].replace("Z", "+00:00")))
        out.extend(emitted)
    return state, out


def test_one_open_request_per_shelf_until_stock_recovers() -> None:
    rule = RestockRule(PARIS)
    seq = [
        reading(5, "2025-01-10T10:00:00+01:00", n=1),  # fine: nothing
        reading(2, "2025-01-10T10:05:00+01:00", n=2),  # alert: opens a request
        reading(1, "2025-01-10T10:10:00+01:00", n=3),  # still low: no second request
        reading(0, "2025-01-10T10:15:00+01:00", n=4),
        reading(3, "2025-01-10T13:00:00+01:00", n=5),  # recovered (3 >= 3): closes it
        reading(4, "2025-01-10T13:05:00+01:00", n=6),  # fine: nothing
        reading(1, "2025-01-10T18:00:00+01:00", n=7),  # low again: a new request
    ]
    state, out = run(rule, seq)
    assert [o["status"] for o in out] == ["open", "closed", "open"]
    first, closed, second = out
    assert first["missing_quantity"] == 3 * 3 - 2
    assert first["high_priority"] is True and first["season"] == "winter"
    assert first["reading_id"] == "paris-12-ski-2"
    assert closed["request_id"] == first["request_id"]
    assert closed["quantity"] == 3 and closed["open_s"] == pytest.approx(2 * 3600 + 55 * 60)
    assert second["request_id"] != first["request_id"] and second["missing_quantity"] == 8
    assert state["open"] is True and state["request_id"] == second["request_id"]


def test_out_of_season_product_is_normal_priority() -> None:
    _, out = run(RestockRule(PARIS), [reading(0, "2025-07-14T12:00:00+02:00", product="ski")])
    assert out[0]["high_priority"] is False and out[0]["season"] == "summer" and out[0]["missing_quantity"] == 9
    _, out = run(RestockRule(PARIS), [reading(1, "2025-07-14T12:00:00+02:00", product="crème solaire")])
    assert out[0]["high_priority"] is True and out[0]["missing_quantity"] == 11


def test_a_late_reading_older_than_the_last_change_changes_nothing() -> None:
    rule = RestockRule(PARIS)
    state, out = run(rule, [reading(1, "2025-03-03T10:00:00+01:00", n=1), reading(5, "2025-03-03T11:00:00+01:00", n=2)])
    assert [o["status"] for o in out] == ["open", "closed"]
    # a redelivered alert from before the recovery must not reopen a request
    late = reading(1, "2025-03-03T10:30:00+01:00", n=9)
    state2, emitted = rule.step(state, late, ms("2025-03-03T10:30:00+01:00"))
    assert emitted == [] and state2 is state


def test_shelves_are_independent() -> None:
    rule = RestockRule(PARIS)
    states: dict[str, Any] = {}
    out = []
    for r in [
        reading(1, "2025-03-03T10:00:00+01:00", store="paris-12"),
        reading(1, "2025-03-03T10:00:00+01:00", store="lyon-2"),
        reading(1, "2025-03-03T10:00:00+01:00", store="paris-12", product="coca"),
        reading(0, "2025-03-03T10:05:00+01:00", store="lyon-2"),
    ]:
        key = f"{r['store_id']}/{r['product_id']}"
        states[key], emitted = rule.step(states.get(key), r, ms(r["timestamp"].replace("Z", "+00:00")))
        out.extend(emitted)
    assert sorted((o["store_id"], o["product_id"]) for o in out) == [("lyon-2", "ski"), ("paris-12", "coca"), ("paris-12", "ski")]
    coca = next(o for o in out if o["product_id"] == "coca")
    assert coca["missing_quantity"] == 11 and coca["high_priority"] is False
