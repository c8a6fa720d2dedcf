"""The embedded log's segment files: batches written once beside the SQLite index, rolled, freed, upgraded."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from affluent.core import sqlite_log
from affluent.core.log import OutgoingBatch, TopicConfig
from affluent.core.records import Record
from affluent.core.sqlite_log import SCHEMA_VERSION, SQLiteLog

FIXTURES = Path(__file__).parent.parent / "fixtures"


def segment_files(log: SQLiteLog) -> list[str]:
    return sorted(str(p.relative_to(log.segments.folder)) for p in log.segments.folder.rglob("*.seg"))


def values(log: SQLiteLog, topic: str, partition: int = 0, offset: int = 0) -> list[int]:
    return [r.value["i"] for r in log.iter_records(topic, partition, offset)]


def test_batches_are_written_once_into_segment_files_and_sqlite_keeps_only_where_they_are(log: SQLiteLog) -> None:
    log.create_topic("t", TopicConfig(partitions=2))
    log.append("t", [Record(value={"i": i, "pad": "x" * 500}) for i in range(100)], partition=1)
    assert segment_files(log) == ["1-1/00000000000000000000.seg"]
    (in_sqlite, stored) = log._conn().execute("SELECT sum(length(data)), sum(size) FROM batches").fetchone()
    assert in_sqlite == 0 and stored == (log.segments.folder / "1-1/00000000000000000000.seg").stat().st_size
    assert values(log, "t", 1) == list(range(100))
    assert [r.value["i"] for b in log.read("t", 1, 37) for r in b.records()] == list(range(37, 100))


def test_a_full_segment_rolls_at_a_batch_boundary(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_log, "SEGMENT_BYTES", 2_000)
    log.create_topic("t")
    for i in range(0, 60, 10):
        log.append("t", [Record(value={"i": i + j, "pad": "y" * 100}) for j in range(10)])
    files = segment_files(log)
    assert len(files) == 6 // 2 and files[0] == "1-0/00000000000000000000.seg" and files[1] == "1-0/00000000000000000020.seg"
    assert values(log, "t") == list(range(60))
    # one append bigger than a segment is cut into several stored batches over several files
    monkeypatch.setattr(sqlite_log, "MAX_BATCH_BYTES", 1_500)
    log.append("t", [Record(value={"i": 60 + j, "pad": "z" * 100}) for j in range(60)])
    assert len(segment_files(log)) > 4
    assert values(log, "t") == list(range(120))


def test_an_old_segment_rolls_so_that_time_retention_can_free_it(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"now": 1_700_000_000_000}
    monkeypatch.setattr(sqlite_log, "now_ms", lambda: clock["now"])
    log.create_topic("t", TopicConfig(retention_ms=24 * 3_600_000))
    log.append("t", [Record(value={"i": 0})])
    clock["now"] += sqlite_log.SEGMENT_MS - 1
    log.append("t", [Record(value={"i": 1})])
    clock["now"] += 1
    log.append("t", [Record(value={"i": 2})])
    assert segment_files(log) == ["1-0/00000000000000000000.seg", "1-0/00000000000000000002.seg"]
    # a day after, retention drops the first segment's two batches and deletes its file
    assert log.enforce_retention(at_ms=clock["now"] + 24 * 3_600_000) == 2
    assert segment_files(log) == ["1-0/00000000000000000002.seg"]
    assert values(log, "t", 0, 2) == [2]


def test_size_retention_deletes_the_files_of_dropped_segments_and_a_reader_holding_one_reads_on(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_log, "SEGMENT_BYTES", 3_000)
    log.create_topic("t", TopicConfig(retention_ms=None, retention_bytes=5_000))
    for i in range(0, 100, 10):
        log.append("t", [Record(value={"i": i + j, "pad": "y" * 100}) for j in range(10)])
    reader = log.iter_batches("t", 0, 0, max_records=10)
    assert [r.value["i"] for r in next(reader).records()] == list(range(10))  # holds the first segment open
    before = segment_files(log)
    dropped = log.enforce_retention()
    after = segment_files(log)
    assert dropped > 0 and len(after) < len(before) and after == before[-len(after) :]
    start = log.start_offsets("t")[0]
    # batches go one by one, as before; a file goes once none of its batches is left
    assert int(Path(after[0]).stem) <= start < int(Path(after[1]).stem)
    assert values(log, "t", 0, start) == list(range(start, 100))


def test_a_deleted_topic_leaves_no_segment_files_and_its_name_starts_over(log: SQLiteLog) -> None:
    log.create_topic("t")
    log.append("t", [Record(value={"i": i}) for i in range(5)])
    log.delete_topic("t")
    assert segment_files(log) == []
    log.create_topic("t")
    log.append("t", [Record(value={"i": 7})])
    assert segment_files(log) == ["2-0/00000000000000000000.seg"]
    assert values(log, "t") == [7]


def test_a_missing_segment_file_is_named_in_a_clear_error(log: SQLiteLog) -> None:
    from affluent.core.errors import LogCorruptError

    log.create_topic("t")
    log.append("t", [Record(value={"i": i}) for i in range(5)])
    log.close()
    shutil.rmtree(log.segments.folder)
    with pytest.raises(LogCorruptError, match="topic 't' partition 0 batch at offset 0: its segment file is missing"):
        values(SQLiteLog(log.path), "t")


def test_a_log_of_schema_version_1_is_upgraded_in_place_and_reads_as_before(tmp_path: Path) -> None:
    """tests/fixtures/log-v1.db was written by affluent before segment files (schema version 1): its
    batches are inside SQLite. It opens, reads the same, takes new appends into segments, and keeps its
    group offsets."""
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "log-v1.db", path)
    log = SQLiteLog(path)
    try:
        assert log.end_offsets("readings") == {0: 42, 1: 8}
        assert log.committed("counter", "readings") == {0: 3, 1: 2}
        p0 = list(log.iter_records("readings", 0, 0))
        assert [r.value["qty"] for r in p0[-10:]] == list(range(100, 110)) and {r.key for r in p0[-10:]} == {"s9"}
        assert p0[0].timestamp_ms >= 1_700_000_000_000 and all(r.value["sensor"] == r.key for r in p0)
        every = sorted(r.value["qty"] for p in (0, 1) for r in log.iter_records("readings", p, 0))
        assert every == list(range(40)) + list(range(100, 110))
        assert [r.headers for r in log.iter_records("readings", 0, 0) if r.headers] == [{"src": "v1"}] * sum(
            1 for r in p0 if r.value["qty"] % 10 == 0 and r.value["qty"] < 40
        )
        log.append("readings", [Record(value={"sensor": "s9", "qty": 200}, key="s9")])
        assert [r.value["qty"] for r in log.iter_records("readings", 0, 40)] == [108, 109, 200]
        assert segment_files(log) == ["1-0/00000000000000000042.seg"]
    finally:
        log.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_a_log_of_schema_version_2_is_upgraded_and_takes_batches_of_lines(tmp_path: Path) -> None:
    """tests/fixtures/log-v2.db (and its segments) was written by affluent before batches of lines: ten
    records affluent encoded, then four raw values, one of them not JSON, checked when appended."""
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "log-v2.db", path)
    shutil.copytree(FIXTURES / "log-v2.db-segments", tmp_path / "old.db-segments")
    log = SQLiteLog(path)
    try:
        old = [b for b in log.read("lines", 0, 0)]
        assert [v["n"] if v else None for b in old for v in b.values] == [*range(11), None, 12, 13]
        assert [r.key for r in list(log.iter_records("lines", 0, 0))[:4]] == ["k0", "k1", "k2", "k0"]
        assert [(f.index, f.raw) for b in old for f in b.failures] == [(1, b'{"n": 11')]
        log.append("lines", OutgoingBatch(keys=[None] * 2, values=[b'{"n": 14}', b"{"], timestamps=[1, 2], raw=True))
        (new,) = log.read("lines", 0, 14)
        assert new.values == [{"n": 14}, None] and [(f.index, f.raw) for f in new.failures] == [(1, b"{")]
    finally:
        log.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_a_log_of_this_version_without_the_tables_added_since_gets_them_when_opened(tmp_path: Path) -> None:
    """Tables came after schema version 3 without a new version (workers, statuses): opening adds them."""
    SQLiteLog(tmp_path / "log.db").close()
    conn = sqlite3.connect(tmp_path / "log.db")
    conn.executescript("DROP TABLE statuses; DROP TABLE members; DROP TABLE owners;")
    conn.close()
    log = SQLiteLog(tmp_path / "log.db")
    try:
        log.put_statuses({"p": {"status": "running"}})
        assert log.statuses()["p"]["status"] == "running"
        assert log.group_members("g") == {}
    finally:
        log.close()
