"""The serving sink: keyed, idempotent upserts at flush, readable by other processes while it writes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from affluent.config import ServingSettings, Settings, serving_path
from affluent.core.errors import ConfigError, SinkUnavailableError
from affluent.core.operators import Batch
from affluent.core.records import Record
from affluent.sinks import serving
from affluent.sinks.serving import ServingSink, ServingStoreMissingError, read_serving

COLUMNS = {"system_id": "VARCHAR", "station_id": "VARCHAR", "bikes": "INTEGER", "full": "BOOLEAN", "ts": "BIGINT", "extra": "JSON"}


def rec(station: str, bikes: int, ts: int, offset: int = 0) -> Record:
    return Record(value={"system_id": "s", "station_id": station, "bikes": bikes, "full": bikes == 0, "ts": ts, "extra": {"n": bikes}}, offset=offset)


def sink(path: Path, **kw: object) -> ServingSink:
    return ServingSink(path, "stations", key_columns=("system_id", "station_id"), columns=COLUMNS, **kw)  # type: ignore[arg-type]


def rows(path: Path) -> list[dict[str, object]]:
    return read_serving(path, 'SELECT station_id, bikes, "full", ts, extra FROM stations ORDER BY station_id')  # full is a keyword: quoted


def test_upserts_by_key_last_one_wins(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 10), rec("b", 0, 10), rec("a", 3, 20)])  # a twice in one batch
    s.flush()
    assert rows(db)[1] == {"station_id": "b", "bikes": 0, "full": True, "ts": 10, "extra": '{"n":0}'}
    s.write([rec("b", 4, 30)])
    s.flush()
    s.close()
    assert rows(db) == [
        {"station_id": "a", "bikes": 3, "full": False, "ts": 20, "extra": '{"n":3}'},
        {"station_id": "b", "bikes": 4, "full": False, "ts": 30, "extra": '{"n":4}'},
    ]


def test_replaying_records_after_a_crash_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
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
    db = tmp_path / "serving.db"
    s = sink(db, retain_ms=100, time_column="ts")
    s.open()
    s.write([rec("a", 1, 1000), rec("b", 1, 1000)])
    s.flush()
    s.write([rec("a", 2, 1150)])
    s.flush()
    s.close()
    assert [r["station_id"] for r in rows(db)] == ["a"]


def test_new_columns_are_added_to_an_existing_table(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    old = ServingSink(db, "stations", key_columns=("system_id", "station_id"), columns={"system_id": "VARCHAR", "station_id": "VARCHAR"})
    old.open()
    old.write([Record(value={"system_id": "s", "station_id": "z"})])
    old.flush()
    old.close()
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 1)])
    s.flush()
    s.close()
    assert [(r["station_id"], r["full"]) for r in rows(db)] == [("a", False), ("z", None)]


def test_a_table_keyed_otherwise_is_refused_with_its_name(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    old = ServingSink(db, "stations", key_columns=("station_id",), columns={"system_id": "VARCHAR", "station_id": "VARCHAR"})
    old.open()
    old.close()
    with pytest.raises(ConfigError, match=r"'stations' .* is keyed by"):
        sink(db).open()


def test_close_drops_what_was_not_flushed(tmp_path: Path) -> None:
    """A process that lost its lease closes its sinks: what they hold must not reach the store."""
    db = tmp_path / "serving.db"
    s = sink(db)
    s.open()
    s.write([rec("a", 1, 10)])
    s.flush()
    s.write([rec("a", 9, 20), rec("b", 2, 20)])
    s.close()
    assert [(r["station_id"], r["bikes"]) for r in rows(db)] == [("a", 1)]


def test_bad_definitions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ServingSink(tmp_path / "x.db", "t; DROP", key_columns=("a",), columns={"a": "VARCHAR"})
    with pytest.raises(ConfigError):
        ServingSink(tmp_path / "x.db", "t", key_columns=("b",), columns={"a": "VARCHAR"})
    with pytest.raises(ConfigError):
        ServingSink(tmp_path / "x.db", "t", key_columns=("a",), columns={"a": "BLOB"})


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("station_id", None),  # a null key
        ("bikes", "3"),
        ("bikes", True),  # a bool is not a count
        ("bikes", 2**31),  # INTEGER is 32 bits
        ("ts", 2**63),
        ("ts", 1.5),
        ("full", 1),
        ("system_id", 7),
        ("system_id", "\ud800"),  # cannot be UTF-8
        ("extra", {1: "x"}),  # not JSON: keys must be strings
    ],
)
def test_a_row_that_does_not_fit_fails_its_write_and_takes_nothing(tmp_path: Path, column: str, value: object) -> None:
    """The runtime then writes the records one by one and dead-letters this one: the flush never fails."""
    s = sink(tmp_path / "serving.db")
    s.open()
    bad = rec("b", 2, 10)
    bad.value[column] = value
    with pytest.raises(ConfigError, match=f"{column}"):
        s.write([rec("a", 1, 10), bad])
    s.write([rec("c", 3, 10)])
    s.flush()
    assert [r["station_id"] for r in s.query("SELECT station_id FROM stations")] == ["c"]
    s.close()


def test_values_are_stored_as_their_column_types(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    s = ServingSink(db, "t", key_columns=("k",), columns={"k": "VARCHAR", "d": "DOUBLE", "b": "BIGINT", "j": "JSON", "f": "BOOLEAN"})
    s.open()
    s.write([Record(value={"k": "a", "d": 2, "b": 2**63 - 1, "j": "12", "f": False}), Record(value={"k": "b", "d": float("nan"), "j": [1, {"x": None}]})])
    s.flush()
    s.close()
    got = read_serving(db, "SELECT k, d, typeof(d) AS td, b, j, typeof(j) AS tj, f FROM t ORDER BY k")
    assert got == [
        {"k": "a", "d": 2.0, "td": "real", "b": 2**63 - 1, "j": "12", "tj": "text", "f": False},  # JSON text stays text
        {"k": "b", "d": None, "td": "null", "b": None, "j": '[1,{"x":null}]', "tj": "text", "f": None},  # SQLite has no NaN
    ]
    # a column named like a BOOLEAN column reads as bool; an expression over one does not
    assert read_serving(db, "SELECT f, NOT f AS g FROM t WHERE k = ?", ["a"]) == [{"f": False, "g": 1}]


def test_the_serving_url_names_a_sqlite_file() -> None:
    assert serving_path(Settings(serving=ServingSettings())) == Path(".affluent/serving.db")
    for url in ("duckdb:///.affluent/store.duckdb", "sqlite:///", "postgresql://localhost/affluent"):
        with pytest.raises(ConfigError, match=r"use sqlite:///path/to/serving\.db"):
            serving_path(Settings(serving=ServingSettings(url=url)))


def test_a_busy_store_is_transient_and_the_next_flush_reconnects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "BUSY_TIMEOUT_S", 0.1)
    db = tmp_path / "serving.db"
    s = sink(db)
    s.open()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock for longer than the busy timeout
    s.write([rec("a", 1, 10)])
    with pytest.raises(SinkUnavailableError, match="cannot be written for now"):
        s.flush()
    holder.execute("COMMIT")
    holder.close()
    s.flush()  # the buffer is still there, on a fresh connection
    s.close()
    assert [r["bikes"] for r in rows(db)] == [1]


def test_pipelines_opening_a_new_store_together_all_open_it(tmp_path: Path) -> None:
    """SQLite does not wait for a file that another connection is switching to WAL mode: the sinks must."""
    errors: list[Exception] = []

    def open_(s: ServingSink, start: threading.Barrier) -> None:
        start.wait()
        try:
            s.open()
        except Exception as exc:
            errors.append(exc)

    for trial in range(100):  # before the fix, about 1 trial in 15 failed
        sinks = [ServingSink(tmp_path / f"{trial}.db", f"t{i}", key_columns=("k",), columns={"k": "VARCHAR"}) for i in range(5)]
        start = threading.Barrier(len(sinks))
        threads = [threading.Thread(target=open_, args=(s, start)) for s in sinks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in sinks:
            s.close()
    assert not errors, errors


def test_another_process_reads_the_live_rows_while_the_writer_holds_the_store(tmp_path: Path) -> None:
    db = tmp_path / "serving.db"
    s = sink(db)
    s.open()
    s.write([rec("a", 0, 1)])
    s.flush()
    s.write([rec("a", 9, 2)])  # buffered, not flushed: no reader sees it
    code = f"from affluent.sinks.serving import read_serving; print(read_serving({str(db)!r}, 'SELECT bikes, \"full\" FROM stations'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[{'bikes': 0, 'full': True}]", out.stderr
    assert s.query('SELECT bikes, "full" FROM stations') == [{"bikes": 0, "full": True}]
    s.close()
    with pytest.raises(ServingStoreMissingError, match=r"nothing\.db"):
        read_serving(tmp_path / "missing" / "nothing.db", "SELECT 1")


WRITER = """
import sys, time
from pathlib import Path
from affluent.core.records import Record
from affluent.sinks.serving import ServingSink

db, keys = Path(sys.argv[1]), int(sys.argv[2])
s = ServingSink(db, "live", key_columns=("k",), columns={"k": "VARCHAR", "gen": "BIGINT", "odd": "BOOLEAN", "pad": "VARCHAR"})
s.open()
gen = 0
while not (db.parent / "stop").exists():
    s.write([Record(value={"k": f"k{i}", "gen": gen, "odd": gen % 2 == 1, "pad": "x" * 100}) for i in range(keys)])
    s.flush()
    if gen == 0:
        print("ready", flush=True)
    gen += 1
s.close()
print(gen, flush=True)
"""


def test_readers_see_each_flush_whole_while_another_process_writes(tmp_path: Path) -> None:
    """A writer process flushes every key with a new generation, over and over; each read sees one generation, whole."""
    db, keys = tmp_path / "serving.db", 2_000
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(db), str(keys)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready", writer.stderr.read() if writer.stderr else ""
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while (len(seen) < 300 or len(set(seen)) < 10) and time.monotonic() < deadline:
            got = read_serving(db, "SELECT gen, odd, count(*) AS n FROM live GROUP BY gen, odd")
            assert len(got) == 1 and got[0]["n"] == keys, got  # never half a flush, never two generations
            assert got[0]["odd"] is (got[0]["gen"] % 2 == 1), got
            seen.append(got[0]["gen"])
        assert seen == sorted(seen), "a reader went back to an older flush"
        assert len(set(seen)) >= 10, f"the writer flushed too seldom to overlap the reads: {sorted(set(seen))}"
    finally:
        (tmp_path / "stop").touch()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert int(out.split()[-1]) > 10


def test_a_batch_taken_as_columns_is_stored_as_its_records_would_be(tmp_path: Path) -> None:
    cols = {"k": "VARCHAR", "d": "DOUBLE", "b": "BIGINT", "f": "BOOLEAN"}
    values = [{"k": f"k{i % 7}", "d": float(i), "b": i, "f": i % 2 == 0} for i in range(30)]
    values += [{"k": "k1", "d": 5, "b": None, "f": True}]  # an int where a double goes: converted row by row

    def columns_of(vs: list[dict[str, object]], ts: list[int]) -> dict[str, list[object]]:
        return {c: [v[c] for v in vs] for c in cols}

    def last_b(name: str) -> list[object]:
        return [r["b"] for r in read_serving(tmp_path / f"{name}.db", "SELECT * FROM t ORDER BY k")]

    for name, kw in (("rows", {}), ("columns", {"columns_of": columns_of})):
        s = ServingSink(tmp_path / f"{name}.db", "t", key_columns=("k",), columns=cols, **kw)  # type: ignore[arg-type]
        s.open()
        # well-typed values, several rows a key (taken a column at a time), then the odd one (row by row)
        for part, base in ((values[:30], 0), (values[30:], 30)):
            s.write_batch(Batch([None] * len(part), part, [0] * len(part), range(base, base + len(part))), "in", 0)
            s.flush()
            if base == 0:
                assert last_b(name) == [28, 29, 23, 24, 25, 26, 27]  # the last of each key
        s.close()
    got = read_serving(tmp_path / "columns.db", "SELECT * FROM t ORDER BY k")
    assert got == read_serving(tmp_path / "rows.db", "SELECT * FROM t ORDER BY k")
    assert last_b("columns") == [28, None, 23, 24, 25, 26, 27]
