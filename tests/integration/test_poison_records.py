"""Poison records never crash a pipeline: whatever a sink or serving table cannot take is a dead letter.

Each test feeds an app's real pipelines (real log, SQLite serving store, Parquet lake) with good
records and records spoiled by hypothesis (a null key, a wrong type, a string where a number goes,
an out-of-range time). The pipelines must drain without an error, the good records must reach every
store, each spoiled one either fits or lands in a dead-letter topic with its reason, and a second
start over the same log must be clean: no error, no new dead letter, the same stores.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affluent.apps.bikes.pipeline import T_SYSTEM_MINUTE, build_pipelines
from affluent.apps.stock.pipeline import DATASET, READINGS
from affluent.apps.stock.pipeline import build_pipelines as stock_pipelines
from affluent.core.clock import now_ms
from affluent.core.log import OutgoingBatch
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.sinks.serving import read_serving
from affluent.testing import ListSource, read_topic, temp_log

T0 = 1_773_136_800_000  # 2026-03-10 10:00 UTC
POISON = st.sampled_from([None, "", "x", "12", -1, 1.5, float("nan"), True, 2**63, -(2**63) - 1, 10**20, [], {}, {"a": [1]}])
EXAMPLES = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# -- bikes -------------------------------------------------------------------------------------------------------


def station_info(sid: str, t: int = T0) -> dict[str, Any]:
    return {
        "feed": "station_information",
        "system_id": "s",
        "station_id": sid,
        "name": f"Station {sid}",
        "lat": 48.39,
        "lon": -4.49,
        "capacity": 10,
        "snapshot_ms": t,
    }


def station_status(sid: str, bikes: int, t: int = T0) -> dict[str, Any]:
    return {
        "feed": "station_status",
        "system_id": "s",
        "timezone": "Europe/Paris",
        "station_id": sid,
        "num_bikes_available": bikes,
        "num_bikes_disabled": 0,
        "num_docks_available": 10 - bikes,
        "num_docks_disabled": 0,
        "is_installed": True,
        "is_renting": True,
        "is_returning": True,
        "bikes_by_type": {"mechanical": bikes},
        "last_reported_ms": t - 1000,
        "snapshot_ms": t,
    }


def vehicle(vid: str, station: str | None, t: int = T0) -> dict[str, Any]:
    return {
        "feed": "vehicle_status",
        "system_id": "s",
        "vehicle_id": vid,
        "station_id": station,
        "lat": 48.39,
        "lon": -4.49,
        "is_reserved": False,
        "is_disabled": False,
        "vehicle_type_id": "ebike",
        "current_range_meters": 12_000.0,
        "last_reported_ms": t,
        "snapshot_ms": t,
    }


def system_info(t: int = T0) -> dict[str, Any]:
    return {
        "feed": "system_information",
        "system_id": "s",
        "name": "VéloZef",
        "operator": "Fifteen",
        "timezone": "Europe/Paris",
        "language": "fr",
        "url": "https://example.org",
        "license_url": None,
        "gbfs_version": "2.2",
        "snapshot_ms": t,
    }


def bikes_records(values: list[dict[str, Any]]) -> list[Record]:
    out = []
    for v in values:
        t = v.get("snapshot_ms")
        # the GBFS source times a record by its feed's last_updated, never by a field of the record
        out.append(Record(value=v, key=str(v.get("station_id") or v.get("vehicle_id") or v.get("system_id")), timestamp_ms=t if type(t) is int else T0))
    return out


def drain(pipelines: list[Pipeline], log: Any) -> None:
    rt = Runtime(log, metrics=Metrics())
    for p in pipelines:
        rt.add(p)
    rt.run_to_end(timeout_s=60)


def dead_letters(log: Any, prefix: str) -> list[dict[str, Any]]:
    out = []
    for t in log.list_topics():
        if t.name.startswith(prefix) and t.name.endswith(".dlq"):
            out.extend(r.value for r in read_topic(log, t.name))
    return out


#: the key of each serving table: its rows in a fixed order
ORDER = {
    "bikes_systems": "system_id",
    "bikes_stations": "system_id, station_id",
    "bikes_system_minute": "system_id, window_start_ms",
    "bikes_vehicles": "system_id, vehicle_id",
    "bikes_vehicle_minute": "system_id, window_start_ms",
}


class BikesRun:
    """The three bikes pipelines over one folder, fed with given records."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.log = temp_log(folder)

    def run(self, values: list[dict[str, Any]]) -> None:
        drain(build_pipelines(ListSource(bikes_records(values), name="gbfs"), serving_db=self.db, lake_root=self.folder / "lake", lake_commit_ms=0), self.log)

    @property
    def db(self) -> Path:
        return self.folder / "serving.db"

    def table(self, name: str) -> list[dict[str, Any]]:
        return read_serving(self.db, f"SELECT * FROM {name} ORDER BY {ORDER[name]}")

    def lake(self) -> list[dict[str, Any]]:
        files = sorted((self.folder / "lake").glob("*/date=*/hour=*/*.parquet"))
        return sorted((r for f in files for r in pq.read_table(f).to_pylist()), key=lambda r: (r["station_id"], r["snapshot_ms"]))

    def everything(self) -> Any:
        tables = ("bikes_systems", "bikes_stations", "bikes_system_minute", "bikes_vehicles", "bikes_vehicle_minute")
        return {t: self.table(t) for t in tables}, self.lake(), dead_letters(self.log, "bikes")


def spoil(value: dict[str, Any], field: str, poison: Any) -> dict[str, Any]:
    bad = copy.deepcopy(value)
    bad[field] = poison
    return bad


def check_bikes(good: list[dict[str, Any]], bad: dict[str, Any], expect: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        run = BikesRun(Path(d))
        run.run([*good[:2], bad, *good[2:]])
        expect(run)
        for letter in dead_letters(run.log, "bikes"):
            assert letter["error"] and letter["step"], letter
        before = run.everything()
        run.run([*good[:2], bad, *good[2:]])  # a second start over the same log: nothing new, nothing fails
        assert run.everything() == before


STATUS_FIELDS = sorted(set(station_status("a", 1)) - {"feed"})


@EXAMPLES
@given(field=st.sampled_from(STATUS_FIELDS), poison=POISON)
def test_bikes_station_status_poison(field: str, poison: Any) -> None:
    """Sinks fed by station_status: bikes_stations, bikes_system_minute, the lake."""
    good = [station_info("a"), station_info("b"), station_status("a", 3), station_status("b", 0)]

    def expect(run: BikesRun) -> None:
        stations = {r["station_id"]: r["num_bikes_available"] for r in run.table("bikes_stations")}
        assert stations.get("a") == 3 and stations.get("b") == 0, stations
        assert {(r["station_id"], r["num_bikes_available"]) for r in run.lake()} >= {("a", 3), ("b", 0)}
        minute = run.table("bikes_system_minute")
        assert minute and minute[-1]["stations"] >= 2 and minute[-1]["empty_count"] >= 1, minute

    check_bikes(good, spoil(station_status("c", 5), field, poison), expect)


@EXAMPLES
@given(field=st.sampled_from(sorted(set(vehicle("v", "a")) - {"feed"})), poison=POISON)
def test_bikes_vehicle_status_poison(field: str, poison: Any) -> None:
    """Sinks fed by vehicle_status: bikes_vehicles, bikes_vehicle_minute."""
    good = [station_info("a"), vehicle("v1", "a"), vehicle("v2", None)]

    def expect(run: BikesRun) -> None:
        assert {"v1", "v2"} <= {r["vehicle_id"] for r in run.table("bikes_vehicles")}
        minute = run.table("bikes_vehicle_minute")
        assert minute and minute[-1]["vehicles"] >= 2 and minute[-1]["abandoned_count"] >= 1, minute

    check_bikes(good, spoil(vehicle("v3", "a"), field, poison), expect)


@EXAMPLES
@given(field=st.sampled_from(sorted(set(system_info()) - {"feed"})), poison=POISON)
def test_bikes_system_information_poison(field: str, poison: Any) -> None:
    """The sink fed by system_information: bikes_systems (a null system_id crashed it at every start)."""
    good = [system_info(T0 - 5000), station_info("a"), station_status("a", 3)]

    def expect(run: BikesRun) -> None:
        assert [r["system_id"] for r in run.table("bikes_systems")] == ["s"]
        assert [r["station_id"] for r in run.table("bikes_stations")] == ["a"]

    check_bikes(good, spoil(system_info(), field, poison), expect)


@EXAMPLES
@given(field=st.sampled_from(sorted(set(station_info("a")) - {"feed"})), poison=POISON)
def test_bikes_station_information_poison(field: str, poison: Any) -> None:
    """The stations table (a lookup fed by a topic) and what joins it."""
    good = [station_info("a"), station_status("a", 3)]

    def expect(run: BikesRun) -> None:
        assert [(r["station_id"], r["num_bikes_available"]) for r in run.table("bikes_stations")] == [("a", 3)]

    check_bikes(good, spoil(station_info("b"), field, poison), expect)


@pytest.mark.parametrize("field", ["system_id", "station_id"])
def test_bikes_null_keys_are_dead_letters_at_every_start(tmp_path: Path, field: str) -> None:
    """The review's case: one record with a null system_id or station_id crashed the pipeline at every start."""
    bad = spoil(station_status("x", 1), field, None) if field == "station_id" else spoil(system_info(), "system_id", None)
    run = BikesRun(tmp_path)
    for _ in range(2):
        run.run([station_info("a"), bad, station_status("a", 2)])
        letters = dead_letters(run.log, "bikes")
        assert letters and all("must not be null" in d["error"] or "NoneType" in d["error"] or "null" in d["error"] for d in letters), letters
        assert [r["station_id"] for r in run.table("bikes_stations")] == ["a"]


def test_a_snapshot_timed_a_day_ahead_is_a_dead_letter_and_counts_go_on(tmp_path: Path) -> None:
    """A future timestamp must not move the watermark: later real snapshots are counted, none is late."""
    now = now_ms() // 60_000 * 60_000 - 120_000
    future = station_status("a", 9, now + 86_400_000)
    values = [station_info("a", now), station_status("a", 1, now), future, station_status("a", 2, now + 60_000)]
    run = BikesRun(tmp_path)
    run.run(values)
    letters = dead_letters(run.log, "bikes")
    assert len(letters) == 1 and "ahead of the wall clock" in letters[0]["error"], letters
    minutes = {r["window_start_ms"]: r["total_bikes_available"] for r in run.table("bikes_system_minute")}
    assert minutes == {now: 1, now + 60_000: 2}
    assert read_topic(run.log, "bikes-feeds.late") == [] and read_topic(run.log, "bikes.late") == []
    assert sorted(r.value["total_bikes_available"] for r in read_topic(run.log, T_SYSTEM_MINUTE)) == [1, 2]


def test_every_bikes_and_stock_sink_has_a_poison_test(tmp_path: Path) -> None:
    """A new sink or serving table needs a poison test above: this list is checked against the apps."""
    covered = {
        "serving-bikes_systems": test_bikes_system_information_poison,
        "serving-bikes_stations": test_bikes_station_status_poison,
        "serving-bikes_system_minute": test_bikes_station_status_poison,
        "serving-bikes_vehicles": test_bikes_vehicle_status_poison,
        "serving-bikes_vehicle_minute": test_bikes_vehicle_status_poison,
        "lake-bikes_station_status": test_bikes_station_status_poison,
        f"lake-{DATASET}": test_stock_reading_poison,
    }
    bikes = build_pipelines(ListSource([]), serving_db=tmp_path / "s.db", lake_root=tmp_path / "lake")
    stock = stock_pipelines(ListSource([]), lake_root=tmp_path / "lake", tz=_paris())
    assert {s.name for p in [*bikes, *stock] for s in p.sinks} == set(covered)


# -- stock ---------------------------------------------------------------------------------------------------------


def _paris() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Paris")


def reading(i: int) -> dict[str, Any]:
    q = i % 5
    return {
        "sensor_id": f"shelf-{i % 3}",
        "timestamp": f"2026-03-10T10:{i:02d}:00Z",
        "product_id": "GTA6",
        "quantity": q,
        "threshold": 2,
        "location": {"store": "paris-12", "lat": 48.85, "lon": 2.34},
        "alert": q < 2,
        "store_id": "paris-12",
        "device_id": "paris-12-gta6",
        "reading_id": f"r-{i}",
        "seq": i,
    }


READING_FIELDS = [*sorted(reading(0)), "location.store", "location.lat", "location.lon"]
TIMES = st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "2026-13-01T00:00:00Z", "2026-03-10T10:00:00"])


@EXAMPLES
@given(field=st.sampled_from(READING_FIELDS), poison=st.one_of(POISON, TIMES))
def test_stock_reading_poison(field: str, poison: Any) -> None:
    """Every reading ends in the lake or in stock.dlq, exactly once; the lake never refuses a checked reading."""
    bad = reading(7)
    if field.startswith("location."):
        bad["location"][field.split(".")[1]] = poison
    else:
        bad[field] = poison
    values = [reading(1), reading(2), bad, reading(3)]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        log = temp_log(folder)

        def run() -> None:
            records = [Record(value=v) for v in values]
            drain(stock_pipelines(ListSource(records, name="readings"), lake_root=folder / "lake", tz=_paris(), lake_commit_ms=0), log)

        run()
        lake = [r for f in sorted((folder / "lake" / DATASET).glob("date=*/hour=*/*.parquet")) for r in pq.read_table(f).to_pylist()]
        ids = sorted(r["reading_id"] for r in lake)
        letters = [r.value for r in read_topic(log, "stock.dlq")]
        assert len(ids) == len(set(ids)), "a reading is twice in the lake"
        assert {"r-1", "r-2", "r-3"} <= set(ids)
        assert len(lake) + len(letters) == len(values), (ids, letters)
        assert all(d["error"] for d in letters)
        assert not log.topic_exists("stock-lake.dlq") or read_topic(log, "stock-lake.dlq") == []
        assert len(read_topic(log, READINGS)) == len(values)
        run()  # a second start: nothing new anywhere
        assert len(read_topic(log, "stock.dlq")) == len(letters)


def test_an_undecodable_reading_is_dead_lettered_once(tmp_path: Path) -> None:
    """ "stock" and "stock-lake" both read stock.readings: only "stock" dead-letters what does not decode."""
    log = temp_log(tmp_path)
    log.create_topic(READINGS)
    raw = [orjson.dumps(reading(1)), b'{"sensor_id": "shelf-1", "quant', orjson.dumps(reading(2))]
    log.append(READINGS, OutgoingBatch(keys=[None] * 3, values=raw, timestamps=[T0] * 3, raw=True))
    drain(stock_pipelines(ListSource([], name="readings"), lake_root=tmp_path / "lake", tz=_paris(), lake_commit_ms=0), log)
    letters = [r.value for r in read_topic(log, "stock.dlq")]
    assert len(letters) == 1 and letters[0]["value"] == '{"sensor_id": "shelf-1", "quant', letters
    assert read_topic(log, "stock-lake.dlq") == []
    lake = [r for f in sorted((tmp_path / "lake" / DATASET).glob("date=*/hour=*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["reading_id"] for r in lake) == ["r-1", "r-2"]
