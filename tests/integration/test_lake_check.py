"""`affluent lake check` and damaged lake files, as users meet them: a lake written by the real ParquetLakeSink,
then damaged on purpose (a file cut in half, a page header overwritten, leftovers of crashed writes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from affluent.analytics.bikes import STATION_STATUS, station_flags
from affluent.analytics.stock import DATASET as STOCK_READINGS
from affluent.apps.bikes.pipeline import LAKE_SCHEMA as BIKES_SCHEMA
from affluent.apps.stock.readings import LAKE_SCHEMA as STOCK_SCHEMA
from affluent.core.records import Record
from affluent.sinks.lake import LakeError, ParquetLakeSink, check_lake

HOUR = 3_600_000
T0 = int(datetime(2025, 3, 24, 9, 0, tzinfo=UTC).timestamp() * 1000)  # Monday 24 March 2025, 10:00 in Paris


def write(root: Path, dataset: str, schema: pa.Schema, flushes: list[list[tuple[int, dict[str, Any]]]]) -> None:
    sink = ParquetLakeSink(root, dataset, schema=schema, tz="UTC")
    sink.open()
    offset = 0
    for rows in flushes:
        sink.write([Record(value={f.name: r.get(f.name) for f in schema}, timestamp_ms=t, topic="in", offset=offset + i) for i, (t, r) in enumerate(rows)])
        offset += len(rows)
        sink.flush()
    sink.close()


def reading(t: int, quantity: int) -> tuple[int, dict[str, Any]]:
    return t, {"reading_id": f"r{t}", "ts_ms": t, "store_id": "paris-12", "product_id": "ski", "quantity": quantity, "threshold": 5, "alert": quantity < 5}


def station(t: int, bikes: int, docks: int) -> tuple[int, dict[str, Any]]:
    empty, full, saturated = station_flags(bikes, docks)
    row = {"system_id": "testbikes", "station_id": "s1", "name": "Gare", "num_bikes_available": bikes, "num_docks_available": docks}
    return t, {**row, "is_empty": empty, "is_full": full, "is_saturated": saturated, "last_reported_ms": t, "snapshot_ms": t, "timezone": "Europe/Paris"}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """Three hours of stock readings (one flush each) and two hours of station snapshots."""
    root = tmp_path / "lake"
    write(root, STOCK_READINGS, STOCK_SCHEMA, [[reading(T0 + h * HOUR + m * 60_000, 3 + (m % 9)) for m in range(0, 60, 5)] for h in range(3)])
    write(root, STATION_STATUS, BIKES_SCHEMA, [[station(T0 + h * HOUR + m * 60_000, m % 4, 10) for m in range(0, 60, 2)] for h in range(2)])
    return root


def parts(root: Path, dataset: str) -> list[Path]:
    return sorted((root / dataset).glob("date=*/hour=*/part-*.parquet"))


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def overwrite_first_page_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(4, 68):  # just after the leading magic bytes: the first page header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def affluent(cwd: Path, lake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a narrow terminal: an error must still be one line
    env = {**os.environ, "AFFLUENT__LAKE__URL": f"parquet://{lake}", "COLUMNS": "80", "NO_COLOR": "1"}
    code = "from affluent.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_check_lake_finds_each_kind_of_problem(lake: Path) -> None:
    stats: dict[str, int] = {}
    assert check_lake(lake, stats=stats) == []
    assert stats == {"datasets": 2, "files": 5, "row_groups": 5, "rows": 3 * 12 + 2 * 30, "markers": 5}
    stock, bikes = parts(lake, STOCK_READINGS), parts(lake, STATION_STATUS)
    cut_in_half(stock[0])
    overwrite_first_page_header(stock[1])
    orphan_tmp = stock[2].with_name(f".tmp-0123456789abcdef-{stock[2].name}")
    shutil.copy(stock[2], orphan_tmp)
    uncommitted = bikes[0].with_name("part-0000000042-deadbeef.parquet")
    shutil.copy(bikes[0], uncommitted)
    marker = lake / STATION_STATUS / "_commits" / "0000000002.json"
    marker.write_bytes(marker.read_bytes()[:10])
    problems = check_lake(lake)
    found = {(p.path, p.problem.split(":")[0], p.damaged) for p in problems}
    assert found == {
        (stock[0], "not a readable Parquet file", True),
        (stock[1], "row group 1 of 1 does not decode", True),
        (orphan_tmp, "temporary file left by a crashed write (the lake sink deletes it on its next open)", False),
        (marker, "commit marker does not parse", False),
    }, problems  # with a marker unreadable, which flush is uncommitted cannot be told: not reported
    marker.write_bytes(orjson.dumps({"seq": 2, "offsets": {"in:0": 59}, "rows": 30}))
    problems = check_lake(lake, STATION_STATUS)
    assert [(p.path, p.problem.split(":")[0]) for p in problems] == [(uncommitted, "data file of an uncommitted flush (sequence 42, last commit 2)")]
    with pytest.raises(LakeError, match="no dataset 'nothing'"):
        check_lake(lake, "nothing")
    with pytest.raises(LakeError, match="no lake"):
        check_lake(lake / "missing")


def test_affluent_lake_check(lake: Path, tmp_path: Path) -> None:
    ok = affluent(tmp_path, lake, "lake", "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines() == [f"lake {lake}: 2 dataset(s), 5 Parquet file(s), 5 row group(s), 96 rows, 5 commit marker(s) checked: no problem"]
    stock = parts(lake, STOCK_READINGS)
    cut_in_half(stock[2])
    leftover = stock[0].with_name(".tmp-0123456789abcdef-part-0000000004-abcdef12.parquet")
    leftover.write_bytes(b"PAR1")
    bad = affluent(tmp_path, lake, "lake", "check")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    assert lines[0] == f"{leftover}: temporary file left by a crashed write (the lake sink deletes it on its next open)"
    assert lines[1].startswith(f"{stock[2]}: not a readable Parquet file: ")
    assert len(lines) == 3 and lines[2].endswith(": 2 problem(s)")
    only_bikes = affluent(tmp_path, lake, "lake", "check", STATION_STATUS)
    assert only_bikes.returncode == 0 and "1 dataset(s), 2 Parquet file(s)" in only_bikes.stdout
    missing = affluent(tmp_path, lake, "lake", "check", "nothing")
    assert missing.returncode == 1 and "no dataset 'nothing'" in missing.stderr and "Traceback" not in missing.stderr


def test_affluent_analyze_names_a_damaged_file_in_one_line(lake: Path, tmp_path: Path) -> None:
    assert affluent(tmp_path, lake, "analyze", "stock", "--json").returncode == 0
    assert affluent(tmp_path, lake, "analyze", "bikes", "--day", "2025-03-24", "--json").returncode == 0
    stock, bikes = parts(lake, STOCK_READINGS), parts(lake, STATION_STATUS)
    cut_in_half(stock[1])
    overwrite_first_page_header(bikes[1])
    for args, damaged in ((("analyze", "stock"), stock[1]), (("analyze", "bikes", "--day", "2025-03-24"), bikes[1])):
        out = affluent(tmp_path, lake, *args)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
        [line] = out.stderr.splitlines()
        assert line.startswith(f"error: damaged lake file {damaged}: ")
        assert line.endswith("run `affluent lake check` for every problem")


def test_affluent_lake_compact_says_what_it_did(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    hour0 = [[reading(T0 + m * 60_000, 4) for m in range(0, 30, 5)], [reading(T0 + m * 60_000, 6) for m in range(30, 60, 5)]]
    write(root, STOCK_READINGS, STOCK_SCHEMA, [*hour0, [reading(T0 + HOUR, 7)]])
    done = affluent(tmp_path, root, "lake", "compact")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"lake {root}: 1 dataset(s), 1 partition(s) compacted, 3 Parquet file(s) before, 2 after"]
    assert len(parts(root, STOCK_READINGS)) == 2
    assert affluent(tmp_path, root, "lake", "check").stdout.endswith(
        ": 1 dataset(s), 2 Parquet file(s), 2 row group(s), 13 rows, 1 commit marker(s) checked: no problem\n"
    )
