"""Bad input: unknown topics, damaged or full log files, malformed records, a schema that changes mid-stream."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from affluent.core import sqlite_log
from affluent.core.aggregates import Count, Max, Sum
from affluent.core.errors import ConfigError, LogCorruptError, LogError, LogFullError, UnknownTopicError
from affluent.core.log import OutgoingBatch, TopicConfig, open_log
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Lines, Record
from affluent.core.runtime import PipelineTask
from affluent.core.sqlite_log import SQLiteLog
from affluent.core.windows import TumblingWindow
from affluent.testing import read_topic, run_until


def run(p: Pipeline, log: SQLiteLog, metrics: Metrics | None = None) -> Metrics:
    metrics = metrics or Metrics()
    task = PipelineTask(p, log, metrics=metrics)
    task.open()
    try:
        while task.poll_once():
            pass
        task.commit()
    finally:
        task.close()
    return metrics


# -- unknown topics -------------------------------------------------------------------------------------------------------------


def test_unknown_topic_lists_known_ones_when_nothing_is_close(log: SQLiteLog) -> None:
    log.create_topic("bikes.status")
    log.create_topic("stock.readings")
    with pytest.raises(UnknownTopicError) as err:
        log.read("zzz", 0, 0)
    msg = str(err.value)
    assert "unknown topic 'zzz'" in msg
    assert "known topics: bikes.status, stock.readings" in msg
    assert "affluent topics create zzz" in msg
    with pytest.raises(UnknownTopicError, match=r"did you mean bikes\.status"):
        read_topic(log, "bikes.statuss")


def test_unknown_topic_in_an_empty_log(log: SQLiteLog) -> None:
    with pytest.raises(UnknownTopicError) as err:
        log.describe_topic("anything")
    assert str(err.value) == "unknown topic 'anything' (create it with `affluent topics create anything`)"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://", "bad Kafka log URL 'kafka://'"),
        ("kafka://h:9092?replication_factor=three&sasl.password=hunter2", "replication_factor and timeout_s must be numbers"),
        ("postgres://x", "unknown log URL 'postgres://x'"),
        ("sqlite:///", "bad SQLite log URL"),
    ],
)
def test_bad_log_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        open_log(url)
    assert "hunter2" not in str(err.value)


def test_kafka_url_options_and_secrets() -> None:
    from affluent.core.kafka_log import parse_kafka_url, redact_url

    url = "kafka://b1:9092,b2:9092?security.protocol=SASL_SSL&sasl.username=app&sasl.password=s3cr%26t&linger.ms=20"
    assert parse_kafka_url(url) == ("b1:9092,b2:9092", {"security.protocol": "SASL_SSL", "sasl.username": "app", "sasl.password": "s3cr&t", "linger.ms": "20"})
    shown = redact_url(url)
    assert "s3cr" not in shown and "sasl.password=***" in shown and "sasl.username=app" in shown
    log_ = open_log(url + "&timeout_s=1")
    assert "s3cr" not in log_.url and "s3cr" not in repr(vars(log_).get("url"))


def test_open_log_by_url_and_bad_options(tmp_path: Path) -> None:
    lg = open_log(f"sqlite:///{tmp_path / 'sub' / 'a.db'}")
    assert isinstance(lg, SQLiteLog)
    assert lg.path == tmp_path / "sub" / "a.db"
    with pytest.raises(ConfigError, match="synchronous must be NORMAL, FULL or OFF"):
        SQLiteLog(tmp_path / "b.db", synchronous="sometimes")


# -- damaged log files ---------------------------------------------------------------------------------------------------------


def test_a_garbage_file_is_a_corrupt_log_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "affluent.db"
    path.write_bytes(b"this is not a database, it is garbage " * 500)
    with pytest.raises(LogCorruptError) as err:
        SQLiteLog(path)
    assert str(path) in str(err.value)
    assert "damaged or is not an affluent log" in str(err.value)
    assert path.read_bytes().startswith(b"this is not a database")  # left for the user to inspect, not replaced


def test_a_log_damaged_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "affluent.db"
    lg = SQLiteLog(path)
    lg.create_topic("t")
    for i in range(20):
        lg.append("t", [Record(value={"i": i, "pad": "x" * 3000}) for _ in range(10)])
    lg.close()  # the last connection checkpoints the WAL into the file
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 10 * page
    for p in range(2, len(data) // page, 2):  # overwrite every other page after the first two
        data[p * page : p * page + 200] = b"\xde\xad\xbe\xef" * 50
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as err:
        lg = SQLiteLog(path)
        lg.describe_topic("t")
        for _ in lg.iter_records("t", 0, 0):
            pass
    assert "affluent.db" in str(err.value) or "topic 't'" in str(err.value)


def test_a_log_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "affluent.db"
    SQLiteLog(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(LogError, match=r"log schema version 99, this affluent reads 3 \(and 1, 2\): a newer affluent wrote it; upgrade") as err:
        SQLiteLog(path)
    assert str(path) in str(err.value)


# -- a full disk ------------------------------------------------------------------------------------------------------------------


class FullDisk:
    """A disk with no space left, for the log's two files: SQLite's grows no more (its page limit) and a
    segment file takes the bytes that fit, then the write fails with ENOSPC, as the kernel does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        real = sqlite_log._write_at

        def write_at(fd: int, blobs: Any, position: int) -> None:
            if not self.full:
                return real(fd, blobs, position)
            os.pwrite(fd, bytes(blobs[0])[:100], position)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(sqlite_log, "_write_at", write_at)

    def fill(self, log: SQLiteLog) -> None:
        self.full = True
        conn = log._conn()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        conn.execute(f"PRAGMA max_page_count={pages}")

    def free(self, log: SQLiteLog) -> None:
        self.full = False
        log._conn().execute("PRAGMA max_page_count=1073741823")


@pytest.mark.parametrize("values", ["records", "lines"])
def test_disk_full_raises_log_full_and_loses_nothing(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch, values: str) -> None:
    disk = FullDisk(monkeypatch)
    log.create_topic("t")
    log.append("t", [Record(value={"i": i}, key=f"k{i}") for i in range(100)])
    log.commit("g", {("t", 0): 40})
    disk.fill(log)
    big: Any = [Record(value={"i": 100 + i, "pad": "x" * 2000}) for i in range(200)]
    if values == "lines":  # a file's lines, stored as they came
        lines = Lines.of([orjson.dumps(r.value) for r in big])
        big = OutgoingBatch([None] * 200, cast(list[bytes], lines), [1] * 200, raw=True)
    with pytest.raises(LogFullError) as err:
        log.append("t", big)
    assert "disk is full" in str(err.value) and str(log.path) in str(err.value)
    # nothing committed is lost, and the failed append left nothing behind
    assert [r.value["i"] for r in log.iter_records("t", 0, 0)] == list(range(100))
    assert log.describe_topic("t").partitions[0].end_offset == 100
    assert log.committed("g", "t") == {0: 40}
    # space again: appends go on at the right offset, over the bytes the failed one left
    disk.free(log)
    assert log.append("t", big) == {0: (100, 200)}
    assert [r.value["i"] for r in log.iter_records("t", 0, 0)] == list(range(300))
    assert SQLiteLog(log.path).describe_topic("t").records == 300


def test_a_pipeline_retries_a_full_disk_and_commits_exactly_once(log: SQLiteLog, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    disk = FullDisk(monkeypatch)
    log.create_topic("in")
    log.append("in", [Record(value={"i": i, "pad": "y" * 3000}) for i in range(30)])
    calls = {"n": 0}

    def fill_then_free(k: Any, v: Any, t: int) -> None:
        if v["i"] != 0:
            return
        calls["n"] += 1
        # the task's own connection: this runs in its thread
        if calls["n"] == 1:
            disk.fill(log)
        else:
            disk.free(log)

    p = Pipeline("p", commit_interval_ms=0)
    p.topic("in").inspect(fill_then_free, name="disk").map(lambda v: {**v, "out": True}).to_topic("out")
    metrics = Metrics()
    task = PipelineTask(p, log, metrics=metrics)
    task.run(threading.Event(), until=lambda t: log.describe_topic("out").records >= 30)
    assert [r.value["i"] for r in read_topic(log, "out")] == list(range(30))
    assert log.committed("p", "in") == {0: 30}
    assert calls["n"] == 2
    assert metrics.get("affluent_task_errors_total", pipeline="p", error="LogFullError") == 1
    assert task.status == "stopped"


# -- malformed records ---------------------------------------------------------------------------------------------------------------


def test_malformed_records_go_to_the_dead_letter_topic_and_are_counted(log: SQLiteLog) -> None:
    log.create_topic("readings")
    log.append(
        "readings",
        OutgoingBatch(
            keys=["s1", "s2", "s3", "s4", "s5"],
            values=[
                b'{"sensor_id": "s1", "quantity": 3}',
                b'{"sensor_id": "s2", "quantity": ',
                b'{"sensor_id": "s3"}',
                b'{"sensor_id": "s4", "quantity": "lots"}',
                b'{"sensor_id": "s5", "quantity": 8}',
            ],
            timestamps=[1, 2, 3, 4, 5],
            raw=True,
        ),
    )
    p = Pipeline("stock")
    (
        p.topic("readings")
        .map(lambda v: {**v, "quantity": int(v["quantity"])}, name="parse")
        .filter(lambda v: v["quantity"] > 0, name="positive")
        .to_topic("clean")
    )
    metrics = Metrics()
    dead = run_until(p, log, topic="stock.dlq", count=3, metrics=metrics)
    assert [r.value["quantity"] for r in read_topic(log, "clean")] == [3, 8]
    by_offset = {d.value["offset"]: d.value for d in dead}
    assert sorted(by_offset) == [1, 2, 3]
    assert by_offset[1]["step"] == "readings.decode" and by_offset[1]["value"] == '{"sensor_id": "s2", "quantity": '
    assert by_offset[2]["step"] == "parse" and by_offset[2]["error"] == "KeyError: 'quantity'"
    assert by_offset[3]["step"] == "parse" and by_offset[3]["error_type"] == "ValueError"
    assert all(d["topic"] == "readings" and d["partition"] == 0 and d["pipeline"] == "stock" for d in by_offset.values())
    assert [d.timestamp_ms for d in sorted(dead, key=lambda d: d.value["offset"])] == [2, 3, 4]
    assert metrics.get("affluent_dead_letters_total", pipeline="stock") == 3
    assert metrics.get("affluent_dead_letters_total", pipeline="stock", step="parse") == 2


def test_a_value_that_cannot_be_written_as_json_is_dead_lettered_with_its_repr(log: SQLiteLog) -> None:
    log.create_topic("in")
    log.append("in", [Record(value={"x": 1})])
    p = Pipeline("p")
    p.topic("in").map(lambda v: {"obj": object()} if v["x"] else v).map(lambda v: v["nope"], name="fails").to_topic("out")
    run(p, log)
    (dead,) = [r.value for r in read_topic(log, "p.dlq")]
    assert dead["value"].startswith("{'obj': <object object at")


# -- a schema that changes mid-stream -------------------------------------------------------------------------------------------------


def test_schema_change_mid_stream_dead_letters_the_new_shape_and_goes_on(log: SQLiteLog) -> None:
    old = [{"sensor": "a", "qty": 2, "price": 1.5}, {"sensor": "b", "qty": 1, "price": 4.0}]
    new = [{"sensor": "a", "qty": "3", "price": {"amount": 2.0, "currency": "EUR"}}, {"sensor": "b", "quantity": 5}]
    back = [{"sensor": "a", "qty": 4, "price": 0.5}, {"sensor": "z", "qty": 0, "price": 0.0}]
    log.create_topic("in", TopicConfig(partitions=1))
    for i, v in enumerate(old + new + back):
        ts = [10, 20, 30, 40, 50, 500][i]
        log.append("in", [Record(value=v, key=v["sensor"], timestamp_ms=ts)])
    p = Pipeline("p")
    s = p.topic("in")
    s.map(lambda v: v["qty"] * v["price"], name="total").to_topic("totals")
    s.window(TumblingWindow(100, idle_ms=None), {"n": Count(), "qty": Sum("qty"), "top": Max("price")}, name="w").to_topic("windows")
    metrics = run(p, log)
    assert [r.value for r in read_topic(log, "totals")] == [3.0, 4.0, 2.0, 0.0]
    dead = [r.value for r in read_topic(log, "p.dlq")]
    assert sorted((d["step"], d["offset"]) for d in dead) == [("total", 2), ("total", 3), ("w", 2), ("w", 3)]
    assert {d["error_type"] for d in dead} <= {"TypeError", "KeyError"}
    windows = sorted((r.value for r in read_topic(log, "windows")), key=lambda w: w["key"])
    assert windows == [
        {"key": "a", "start_ms": 0, "end_ms": 100, "n": 2, "qty": 6, "top": 1.5},
        {"key": "b", "start_ms": 0, "end_ms": 100, "n": 1, "qty": 1, "top": 4.0},
    ]
    assert metrics.get("affluent_dead_letters_total", pipeline="p") == 4


def test_schema_change_in_a_dedupe_version(log: SQLiteLog) -> None:
    log.create_topic("in")
    log.append(
        "in",
        [
            Record(value=v, timestamp_ms=1)
            for v in ({"id": "a", "last_reported": 100}, {"id": "a", "last_reported": "2024-06-01T10:00:00Z"}, {"id": "a", "last_reported": 200})
        ],
    )
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["id"], version=lambda v: v["last_reported"]).to_topic("out")
    run(p, log)
    assert [r.value["last_reported"] for r in read_topic(log, "out")] == [100, 200]
    assert [d["offset"] for d in (r.value for r in read_topic(log, "p.dlq"))] == [1]
