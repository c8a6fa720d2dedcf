"""The DuckDB serving sink: keyed, idempotent upserts at flush, readable by another process once it is closed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from affluent.core.errors import ConfigError
from affluent.core.records import Record
from affluent.sinks.duckdb import DuckDBServingSink, ServingStoreBusyError, read_serving

COLUMNS = {"system_id": "VARCHAR", "station_id": "VARCHAR", "bikes": "INTEGER", "full": "BOOLEAN", "ts": "BIGINT", "extra": "JSON"}


def rec(station: str, bikes: int, ts: int, offset: int = 0) -> Record:
    return Record(value={"system_id": "s", "station_id": station, "bikes": bikes, "full": bikes == 0, "ts": ts, "extra": {"n": bikes}}, offset=offset)


def sink(path: Path, **kw: object) -> DuckDBServingSink:
    return DuckDBServingSink(path, "stations", key_columns=("system_id", "station_id"), columns=COLUMNS, **kw)  # type: ignore[arg-type]


def rows(path: Path) -> list[dict[str, object]]:
    return read_serving(path, 'SELECT station_id, bikes, "full", ts, extra FROM stations ORDER BY station_id')  # full is a keyword: quoted


def test_upserts_by_key_last_one_wins(tmp_path: Path) -> None:
    db = tmp_path / "serving.duckdb"
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 10), rec("b", 0, 10), rec("a", 3, 20)])  # a twice in one batch
    s.flush()
    s.write([rec("b", 4, 30)])
    s.flush()
    s.close()
    assert rows(db) == [
        {"station_id": "a", "bikes": 3, "full": False, "ts": 20, "extra": '{"n":3}'},
        {"station_id": "b", "bikes": 4, "full": False, "ts": 30, "extra": '{"n":4}'},
    ]


def test_replaying_records_after_a_crash_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "serving.duckdb"
    batch = [rec("a", 1, 10), rec("b", 2, 10), rec("a", 5, 11)]
    s = sink(db)
    s.open()
    s.write(batch)
    s.flush()
    s.write(batch)  # the same records again, as after a crash between flush and commit
    s.flush()
    s.close()
    once = rows(db)
    assert [r["bikes"] for r in once] == [5, 2]
    s2 = sink(db)
    s2.open()
    s2.write(batch)
    s2.flush()
    s2.close()
    assert rows(db) == once


def test_retention_drops_rows_older_than_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "serving.duckdb"
    s = sink(db, retain_ms=100, time_column="ts")
    s.open()
    s.write([rec("a", 1, 1000), rec("b", 1, 1000)])
    s.flush()
    s.write([rec("a", 2, 1150)])
    s.flush()
    s.close()
    assert [r["station_id"] for r in rows(db)] == ["a"]


def test_new_columns_are_added_to_an_existing_table(tmp_path: Path) -> None:
    db = tmp_path / "serving.duckdb"
    old = DuckDBServingSink(db, "stations", key_columns=("system_id", "station_id"), columns={"system_id": "VARCHAR", "station_id": "VARCHAR"})
    old.open()
    old.write([Record(value={"system_id": "s", "station_id": "z"})])
    old.flush()
    old.close()
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 1)])
    s.flush()
    s.close()
    assert [r["station_id"] for r in rows(db)] == ["a", "z"]


def test_close_drops_what_was_not_flushed(tmp_path: Path) -> None:
    """A process that lost its lease closes its sinks: what they hold must not reach the store."""
    db = tmp_path / "serving.duckdb"
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 10)])
    s.flush()
    s.write([rec("a", 9, 20), rec("b", 2, 20)])
    s.close()
    assert [(r["station_id"], r["bikes"]) for r in rows(db)] == [("a", 1)]


def test_bad_definitions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DuckDBServingSink(tmp_path / "x.duckdb", "t; DROP", key_columns=("a",), columns={"a": "VARCHAR"})
    with pytest.raises(ConfigError):
        DuckDBServingSink(tmp_path / "x.duckdb", "t", key_columns=("b",), columns={"a": "VARCHAR"})
    with pytest.raises(ConfigError):
        DuckDBServingSink(tmp_path / "x.duckdb", "t", key_columns=("a",), columns={"a": "BLOB"})


def test_another_process_reads_once_the_writer_is_gone_and_is_told_while_it_writes(tmp_path: Path) -> None:
    db = tmp_path / "serving.duckdb"
    s = sink(db)
    s.open()
    s.write([rec("a", 7, 1)])
    s.flush()
    # while this process holds the file, another process is refused with a clear error
    code = textwrap.dedent(f"""
        from affluent.sinks.duckdb import read_serving, ServingStoreBusyError
        try:
            read_serving({str(db)!r}, "SELECT 1")
        except ServingStoreBusyError as exc:
            print("busy:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("busy: cannot open the serving store"), out.stdout + out.stderr
    # the same process reads through its own connections
    assert s.query("SELECT bikes FROM stations") == [{"bikes": 7}]
    s.close()
    code = f"from affluent.sinks.duckdb import read_serving; print(read_serving({str(db)!r}, 'SELECT bikes FROM stations'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[{'bikes': 7}]", out.stderr
    with pytest.raises(ServingStoreBusyError):
        read_serving(tmp_path / "missing" / "nothing.duckdb", "SELECT 1")
