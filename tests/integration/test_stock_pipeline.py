"""The stock pipelines on the real embedded log and a real Parquet lake: bad input, restock requests, restarts, redeliveries."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from affluent.analytics.base import DuckDBEngine
from affluent.apps.stock.catalogue import THRESHOLDS
from affluent.apps.stock.pipeline import ALERTS, READINGS, RESTOCK, build_pipelines, run_to_end
from affluent.core.log import Log
from affluent.core.metrics import Metrics
from affluent.core.records import Record
from affluent.testing import ListSource, read_topic

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def reading(store: str, product: str, quantity: int, when: str, n: int) -> dict[str, Any]:
    t = THRESHOLDS[product]
    ts = datetime.fromisoformat(when).astimezone(UTC)
    return {
        "sensor_id": "shelf-1",
        "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "product_id": product,
        "quantity": quantity,
        "threshold": t,
        "location": {"store": store, "lat": 48.85, "lon": 2.34},
        "alert": quantity < t,
        "store_id": store,
        "device_id": f"{store}-{product}",
        "reading_id": f"{store}-{product}-{n}",
        "seq": n,
    }


def run(log: Log, lake: Path, values: list[Any], *, name: str = "feed", redelivery_window: int | None = None, metrics: Metrics | None = None) -> dict[str, int]:
    source = ListSource([Record(value=v) for v in values], name=name, batch_size=7)
    pipes = build_pipelines(source, lake_root=lake, tz=PARIS, lake_commit_ms=200, redelivery_window=redelivery_window)
    return run_to_end(pipes, log, timeout_s=30, metrics=metrics)


def lake_ids(lake: Path) -> list[str]:
    eng = DuckDBEngine(lake)
    try:
        return [r["reading_id"] for r in eng.query("SELECT reading_id FROM stock_readings ORDER BY reading_id", datasets=["stock_readings"])]
    finally:
        eng.close()


def test_bad_readings_are_dead_lettered_with_reasons_and_good_ones_flow(log: Log, tmp_path: Path) -> None:
    good = [
        reading("paris-12", "ski", 10, "2025-01-10T10:00:00+01:00", 1),
        reading("paris-12", "ski", 2, "2025-01-10T10:02:00+01:00", 2),
        reading("lyon-2", "coca", 1, "2025-01-10T10:02:00+01:00", 3),
        reading("lyon-2", "coca", 20, "2025-01-10T11:00:00+01:00", 4),
    ]
    base = good[0]
    bad = [
        {k: v for k, v in base.items() if k != "quantity"},
        {**base, "quantity": -4, "alert": True, "reading_id": "neg"},
        {**base, "product_id": "caviar", "reading_id": "cav"},
        {**base, "quantity": "12", "reading_id": "str"},
        {**base, "timestamp": "soon", "reading_id": "ts"},
        ["not", "a", "reading"],
    ]
    log.create_topic(READINGS)
    log.append(READINGS, [Record(value=v) for v in bad[:3]])  # another producer's bad records, before and among good ones
    metrics = Metrics()
    counts = run(log, tmp_path / "lake", good[:2] + bad[3:] + good[2:], metrics=metrics)
    assert counts[READINGS] == 7 and log.describe_topic(READINGS).records == 10  # what the run added; all 10 are read
    assert metrics.get("affluent_dead_letters_total", pipeline="stock", step="check-reading") == 6
    assert metrics.get("affluent_dead_letters_total", pipeline="stock-lake") == 0

    dlq = read_topic(log, "stock.dlq")
    reasons = sorted(r.value["error"] for r in dlq)
    assert reasons == sorted(
        [
            "BadReadingError: missing field: quantity",
            "BadReadingError: negative quantity -4",
            "BadReadingError: unknown product 'caviar'",
            "BadReadingError: quantity must be an integer, not a string ('12')",
            "BadReadingError: timestamp 'soon' is not an ISO-8601 date and time",
            "BadReadingError: a reading must be a JSON object, not an array: \"['not', 'a', 'reading']\"",
        ]
    )
    assert all(r.value["topic"] == READINGS and r.value["step"] == "check-reading" and r.value["offset"] >= 0 for r in dlq)
    assert {r.value["value"].get("reading_id") for r in dlq if isinstance(r.value["value"], dict)} >= {"neg", "cav", "str", "ts"}
    # good ones went on: alerts, restock, lake; the lake pipeline does not dead-letter them a second time
    assert [r.value["reading_id"] for r in read_topic(log, ALERTS)] == ["paris-12-ski-2", "lyon-2-coca-3"]
    assert [(r.value["status"], r.key) for r in read_topic(log, RESTOCK)] == [
        ("open", "paris-12/ski"), ("open", "lyon-2/coca"), ("closed", "lyon-2/coca"),
    ]  # fmt: skip
    assert lake_ids(tmp_path / "lake") == sorted(v["reading_id"] for v in good)
    assert read_topic(log, "stock-lake.dlq") == []


def test_restock_requests_for_known_low_stock_and_open_until_recovered_across_restarts(log: Log, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    first = [
        reading("paris-12", "doudoune", 3, "2025-02-03T10:00:00+01:00", 1),  # winter, in season: high priority, 3*4-3 = 9
        reading("paris-12", "doudoune", 1, "2025-02-03T10:05:00+01:00", 2),  # still open: no second request
        reading("marseille-1", "GTA6", 0, "2025-02-03T10:05:00+01:00", 3),  # never seasonal: 3*2-0 = 6, normal priority
        reading("marseille-1", "maillot de bain", 2, "2025-02-03T10:10:00+01:00", 4),  # summer product in winter: 10, normal
    ]
    run(log, lake, first, name="feed-1")
    opened = [r.value for r in read_topic(log, RESTOCK)]
    assert [(o["store_id"], o["product_id"], o["missing_quantity"], o["high_priority"], o["season"]) for o in opened] == [
        ("paris-12", "doudoune", 9, True, "winter"),
        ("marseille-1", "GTA6", 6, False, "winter"),
        ("marseille-1", "maillot de bain", 10, False, "winter"),
    ]
    assert all(o["status"] == "open" for o in opened)

    # a restart: the open requests are remembered (state committed with the requests)
    second = [
        reading("paris-12", "doudoune", 0, "2025-02-03T11:00:00+01:00", 5),  # still open: nothing
        reading("marseille-1", "GTA6", 14, "2025-02-03T13:00:00+01:00", 6),  # recovered: closed
        reading("marseille-1", "GTA6", 1, "2025-02-03T19:00:00+01:00", 7),  # low again: new request, 6-1 = 5
        reading("paris-12", "doudoune", 1, "2025-02-03T10:30:00+01:00", 8),  # out of order, still open: nothing
    ]
    run(log, lake, second, name="feed-2")
    later = [r.value for r in read_topic(log, RESTOCK)][3:]
    assert [(o["status"], o["product_id"], o.get("missing_quantity")) for o in later] == [("closed", "GTA6", None), ("open", "GTA6", 5)]
    assert later[0]["request_id"] == opened[1]["request_id"]
    assert later[0]["open_s"] == 3 * 3600 - 5 * 60
    assert lake_ids(lake) == sorted(v["reading_id"] for v in first + second)
    assert len(read_topic(log, ALERTS)) == 7


def test_redelivered_readings_are_dropped_when_the_source_is_at_least_once(log: Log, tmp_path: Path) -> None:
    rs = [reading("lyon-2", "t-shirt", q, f"2025-04-01T10:0{i}:00+02:00", i) for i, q in enumerate([9, 3, 2, 8])]
    feed = [*rs[:2], rs[1], *rs[2:], rs[0], rs[3]]  # QoS 1 redeliveries
    counts = run(log, tmp_path / "lake", feed, redelivery_window=64)
    assert counts[READINGS] == 7
    assert [r.value["reading_id"] for r in read_topic(log, ALERTS)] == ["lyon-2-t-shirt-1", "lyon-2-t-shirt-2"]
    assert [(r.value["status"], r.value.get("missing_quantity")) for r in read_topic(log, RESTOCK)] == [("open", 9), ("closed", None)]
    assert lake_ids(tmp_path / "lake") == sorted(v["reading_id"] for v in rs)


def test_a_run_counts_what_it_added_and_a_repeated_period_adds_nothing(log: Log, tmp_path: Path) -> None:
    """`affluent stock simulate` says what this run made: the same period again makes nothing new."""
    from affluent.apps.stock.pipeline import pipelines
    from affluent.config import Settings

    s = Settings(data_dir=tmp_path)
    s = s.model_copy(
        update={
            "stock": s.stock.model_copy(
                update={"seed": 7, "stores": 1, "period_s": 60.0, "speed": float("inf"), "start": "2025-03-03T08:00", "end": "2025-03-03T09:00"}
            )
        }
    )
    first = run_to_end(pipelines(s, offline=True), log, timeout_s=60)
    again = run_to_end(pipelines(s, offline=True), log, timeout_s=60)
    assert first[READINGS] == 60 * 10 and again == {READINGS: 0, ALERTS: 0, RESTOCK: 0, "stock.dlq": 0}
    assert log.describe_topic(READINGS).records == first[READINGS]
