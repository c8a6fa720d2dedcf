"""The contract of `affluent.core.log.Log`: every backend must pass every test here.

Only the public `Log` interface is used (no SQL, no private attributes): backend-specific checks
(corrupt files, disk full, the batch codec) live in tests/unit. Other processes open the same log
by its URL.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from affluent.core.clock import now_ms
from affluent.core.errors import (
    ConfigError,
    FencedError,
    PipelineAlreadyRunningError,
    TopicExistsError,
    UnknownTopicError,
)
from affluent.core.log import Checkpoint, Log, OutgoingBatch, StateChange, TopicConfig
from affluent.core.records import Record

HOUR_MS = 3_600_000


@pytest.fixture
def log(log_backend: Any) -> Log:
    """A client on the backend under test (for this module, instead of the SQLite-only `log` of tests/conftest.py)."""
    return log_backend.open()


def _all(log: Log, topic: str, partition: int = 0, offset: int = 0) -> list[Record]:
    return list(log.iter_records(topic, partition, offset))


def _values(log: Log, topic: str, partition: int = 0, offset: int = 0) -> list[object]:
    return [r.value for r in _all(log, topic, partition, offset)]


def _out(keys: list[str | None], values: list[object], timestamps: list[int]) -> OutgoingBatch:
    """Records for a checkpoint to append, as Python values (the backend serialises them)."""
    return OutgoingBatch(keys=list(keys), values=list(values), timestamps=list(timestamps))


def _recs(n: int, *, start: int = 0, key: str | None = None, ts: int = 1_000) -> list[Record]:
    return [Record(value={"i": i}, key=key, timestamp_ms=ts + i) for i in range(start, start + n)]


# -- topics ------------------------------------------------------------------------------------------------


def test_create_topic_returns_its_layout(log: Log) -> None:
    info = log.create_topic("orders", TopicConfig(partitions=3, retention_ms=HOUR_MS))
    assert info.name == "orders"
    assert info.config == TopicConfig(partitions=3, retention_ms=HOUR_MS)
    assert [(p.partition, p.start_offset, p.end_offset, p.records) for p in info.partitions] == [(0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0)]
    assert info.records == 0
    assert log.topic_exists("orders")
    assert not log.topic_exists("order")


def test_create_topic_default_config(log: Log) -> None:
    info = log.create_topic("plain")
    assert info.config == TopicConfig()
    assert info.config.partitions == 1
    assert info.config.retention_ms == 7 * 86_400_000
    assert info.config.value_format == "json"


def test_create_existing_topic_exist_ok_keeps_the_original(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=2))
    log.append("t", _recs(3, key="a"))
    again = log.create_topic("t", TopicConfig(partitions=5), exist_ok=True)
    assert again.config.partitions == 2
    assert again.records == 3
    with pytest.raises(TopicExistsError, match="'t' already exists"):
        log.create_topic("t", exist_ok=False)


def test_list_topics_sorted_with_configs(log: Log) -> None:
    log.create_topic("b.two", TopicConfig(partitions=2))
    log.create_topic("a.one")
    log.create_topic("c.three", TopicConfig(value_format="text", retention_ms=None))
    topics = log.list_topics()
    assert [t.name for t in topics] == ["a.one", "b.two", "c.three"]
    assert [t.config.partitions for t in topics] == [1, 2, 1]
    assert topics[2].config.retention_ms is None
    assert topics[2].config.value_format == "text"


# tansu 0.6 answers metadata requests for a deleted and recreated topic in a way that crashes
# librdkafka's metadata cache (a segmentation fault in a client that used the topic)
@pytest.mark.backends("sqlite")
def test_delete_topic_removes_data_and_offsets(log: Log) -> None:
    log.create_topic("gone", TopicConfig(partitions=2))
    log.append("gone", _recs(5, key="k"))
    log.commit("grp", {("gone", 0): 3})
    log.delete_topic("gone")
    assert not log.topic_exists("gone")
    assert "gone" not in [t.name for t in log.list_topics()]
    with pytest.raises(UnknownTopicError):
        log.read("gone", 0, 0)
    # a new topic of the same name starts empty, at offset 0, with no committed offsets
    info = log.create_topic("gone")
    assert info.records == 0
    assert info.config.partitions == 1
    assert log.committed("grp", "gone") == {}
    assert log.append("gone", _recs(1)) == {0: (0, 1)}
    assert _values(log, "gone") == [{"i": 0}]


def test_delete_unknown_topic(log: Log) -> None:
    with pytest.raises(UnknownTopicError, match="'nope'"):
        log.delete_topic("nope")


@pytest.mark.parametrize("name", ["", "with space", "tab\there", "new\nline", "x" * 250])
def test_bad_topic_names_are_refused(log: Log, name: str) -> None:
    with pytest.raises(ConfigError, match="bad topic name"):
        log.create_topic(name)
    assert log.list_topics() == []


@pytest.mark.parametrize("name", ["x" * 249, "stock.readings", "bikes_station-status.v2", "A.b-C_9"])
def test_good_topic_names_are_accepted(log: Log, name: str) -> None:
    assert log.create_topic(name).name == name
    assert log.topic_exists(name)


@pytest.mark.parametrize("name", ["a/b", ".", "..", "a\x00b", "café"])
def test_names_that_cannot_exist_on_every_backend_are_refused(log: Log, name: str) -> None:
    # a pipeline runs unchanged on both scales: a name must be legal everywhere ([A-Za-z0-9._-])
    with pytest.raises(ConfigError):
        log.create_topic(name)


@pytest.mark.parametrize(
    "kwargs",
    [{"partitions": 0}, {"partitions": -1}, {"value_format": "xml"}, {"retention_ms": 0}, {"retention_ms": -5}],
)
def test_topic_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TopicConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("retention_bytes", [0, -1])
def test_topic_config_refuses_non_positive_retention_bytes(retention_bytes: int) -> None:
    with pytest.raises(ConfigError):
        TopicConfig(retention_bytes=retention_bytes)


def test_topic_config_round_trip(log_backend: Any, log: Log) -> None:
    configs = {
        "a": TopicConfig(),
        "b": TopicConfig(partitions=4, retention_ms=None, retention_bytes=1 << 20, value_format="text"),
        "c": TopicConfig(partitions=2, retention_ms=60_000, value_format="bytes"),
    }
    for name, cfg in configs.items():
        assert TopicConfig.from_dict(cfg.to_dict()) == cfg
        log.create_topic(name, cfg)
    assert {t.name: t.config for t in log.list_topics()} == configs
    other = log_backend.open()
    assert {n: other.describe_topic(n).config for n in configs} == configs


def test_unknown_topic_errors_suggest_a_name(log: Log) -> None:
    log.create_topic("stock.readings")
    for call in (
        lambda: log.describe_topic("stock.reading"),
        lambda: log.read("stock.reading", 0, 0),
        lambda: log.append("stock.reading", _recs(1)),
        lambda: log.committed("g", "stock.reading"),
    ):
        with pytest.raises(UnknownTopicError) as err:
            call()
        assert err.value.topic == "stock.reading"
        assert "did you mean stock.readings" in str(err.value)
    assert _values(log, "stock.readings") == []


# -- appending and reading -----------------------------------------------------------------------------


def test_append_returns_offsets_and_offsets_continue(log: Log) -> None:
    log.create_topic("t")
    assert log.append("t", _recs(3)) == {0: (0, 3)}
    assert log.append("t", _recs(2, start=3)) == {0: (3, 2)}
    assert log.append("t", []) == {}
    assert log.append("t", OutgoingBatch()) == {}
    recs = _all(log, "t")
    assert [r.offset for r in recs] == [0, 1, 2, 3, 4]
    assert [r.value["i"] for r in recs] == [0, 1, 2, 3, 4]
    info = log.describe_topic("t")
    assert (info.partitions[0].start_offset, info.partitions[0].end_offset, info.records) == (0, 5, 5)


def test_records_round_trip_keys_values_times_headers(log: Log) -> None:
    log.create_topic("t")
    sent = [
        Record(value={"nested": {"a": [1, 2.5, None, True]}, "s": "héllo ✓"}, key="k1", timestamp_ms=1_700_000_000_123, headers={"src": "x"}),
        Record(value=[1, "two", 3.0], key=None, timestamp_ms=0, headers=None),
        Record(value="just a string", key="k2", timestamp_ms=-5, headers={"a": "1", "b": "ü"}),
        Record(value=None, key="", timestamp_ms=2**53, headers={}),
        Record(value=12345678901234, key="k3", timestamp_ms=42),
    ]
    log.append("t", sent)
    got = _all(log, "t")
    assert [(r.value, r.key, r.timestamp_ms) for r in got] == [(s.value, s.key, s.timestamp_ms) for s in sent]
    assert [r.headers or None for r in got] == [s.headers or None for s in sent]
    assert [(r.topic, r.partition, r.offset) for r in got] == [("t", 0, i) for i in range(5)]


def test_outgoing_batch_columns_are_appended_as_given(log: Log) -> None:
    log.create_topic("t")
    out = OutgoingBatch(keys=["a", None], values=[{"x": 1}, {"x": 2}], timestamps=[10, 20], headers=[{"h": "1"}, None])
    assert log.append("t", out) == {0: (0, 2)}
    got = _all(log, "t")
    assert [(r.key, r.value, r.timestamp_ms, r.headers) for r in got] == [("a", {"x": 1}, 10, {"h": "1"}), (None, {"x": 2}, 20, None)]


def test_keys_choose_partitions_stably(log_backend: Any, log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=4))
    keys = [f"station-{i}" for i in range(60)]
    log.append("t", [Record(value={"k": k, "n": 0}, key=k) for k in keys])
    log.append("t", [Record(value={"k": k, "n": 1}, key=k) for k in reversed(keys)])
    other = log_backend.open()
    other.append("t", [Record(value={"k": k, "n": 2}, key=k) for k in keys[::3]])
    where: dict[str, set[int]] = {}
    per_key: dict[str, list[int]] = {}
    for p in range(4):
        for r in _all(log, "t", p):
            assert r.key == r.value["k"]
            where.setdefault(r.key, set()).add(p)
            per_key.setdefault(r.key, []).append(r.value["n"])
    assert all(len(ps) == 1 for ps in where.values()), "a key landed in two partitions"
    assert len({next(iter(ps)) for ps in where.values()}) == 4, "60 keys should use all 4 partitions"
    # per key, records stay in append order
    assert per_key["station-0"] == [0, 1, 2]
    assert per_key["station-1"] == [0, 1]
    assert sum(len(v) for v in per_key.values()) == 60 + 60 + 20


def test_explicit_partition(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=3))
    assert log.append("t", [Record(value=i, key=f"k{i}") for i in range(10)], partition=2) == {2: (0, 10)}
    assert _values(log, "t", 2) == list(range(10))
    assert _values(log, "t", 0) == [] and _values(log, "t", 1) == []
    for bad in (3, -1):
        with pytest.raises(ConfigError, match="partition"):
            log.append("t", [Record(value=1)], partition=bad)
    assert log.describe_topic("t").records == 10


def test_keyless_records_go_to_valid_partitions(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=3))
    result = log.append("t", [Record(value=i) for i in range(30)])
    assert sum(n for _, n in result.values()) == 30
    assert set(result) <= {0, 1, 2}
    got = sorted(v for p in range(3) for v in _values(log, "t", p))
    assert got == list(range(30))


def test_read_from_any_offset(log: Log) -> None:
    log.create_topic("t")
    log.append("t", _recs(10))  # offsets 0..9 in one batch
    log.append("t", _recs(5, start=10))  # 10..14
    for start in (0, 1, 7, 9, 10, 12, 14):
        batches = log.read("t", 0, start)
        offsets = [r.offset for b in batches for r in b.records()]
        assert offsets == list(range(start, 15)), start
        assert [r.value["i"] for b in batches for r in b.records()] == list(range(start, 15))
        assert batches[0].base_offset == start
    assert log.read("t", 0, 15) == []
    assert log.read("t", 0, 1_000) == []


def test_iter_batches_reads_what_read_reads(log: Log) -> None:
    log.create_topic("t")
    log.append("t", _recs(10))
    log.append("t", [Record(value={"i": i}, key=f"k{i}", timestamp_ms=i, headers={"n": str(i)}) for i in range(10, 1510)])
    log.append("t", _recs(5, start=1510))
    for start in (0, 5, 10, 11, 600, 1509, 1510, 1514):
        via_read = [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for b in log.read("t", 0, start, max_records=10**6) for r in b.records()]
        via_iter = [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for b in log.iter_batches("t", 0, start, max_records=10**6) for r in b.records()]
        assert via_iter == via_read, start
        assert [o for o, *_ in via_iter] == list(range(start, 1515))
    assert list(log.iter_batches("t", 0, 1515)) == []
    assert list(log.iter_batches("t", 0, 5000)) == []
    got = sum(len(b) for b in log.iter_batches("t", 0, 0, max_records=100))
    assert 100 <= got <= 1510


def test_read_mid_batch_keeps_keys_times_headers_aligned(log: Log) -> None:
    log.create_topic("t")
    log.append("t", [Record(value=i, key=f"k{i}", timestamp_ms=100 + i, headers={"n": str(i)}) for i in range(6)])
    recs = [r for b in log.read("t", 0, 4) for r in b.records()]
    assert [(r.offset, r.value, r.key, r.timestamp_ms, r.headers) for r in recs] == [
        (4, 4, "k4", 104, {"n": "4"}),
        (5, 5, "k5", 105, {"n": "5"}),
    ]


def test_read_respects_max_records_roughly(log: Log) -> None:
    log.create_topic("t")
    for i in range(10):
        log.append("t", _recs(10, start=10 * i))
    batches = log.read("t", 0, 0, max_records=25)
    n = sum(len(b) for b in batches)
    assert 25 <= n < 100
    offsets = [r.offset for b in batches for r in b.records()]
    assert offsets == list(range(n))


def test_large_append_reads_back_in_order(log: Log) -> None:
    log.create_topic("t")
    n = 20_000
    assert log.append("t", [Record(value=i, timestamp_ms=i) for i in range(n)]) == {0: (0, n)}
    recs = _all(log, "t")
    assert [r.value for r in recs] == list(range(n))
    assert [r.offset for r in recs] == list(range(n))
    assert log.describe_topic("t").records == n


# Kafka's brokers tell clients no partition's size or range of event times (the describe shows offsets)
@pytest.mark.backends("sqlite")
def test_describe_reports_sizes_and_event_times(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=2))
    log.append("t", [Record(value=1, timestamp_ms=500), Record(value=2, timestamp_ms=300), Record(value=3, timestamp_ms=900)], partition=1)
    info = log.describe_topic("t")
    p0, p1 = info.partitions
    assert (p0.records, p0.size_bytes, p0.first_timestamp_ms, p0.last_timestamp_ms) == (0, 0, None, None)
    assert p1.records == 3 and p1.size_bytes > 0
    assert (p1.first_timestamp_ms, p1.last_timestamp_ms) == (300, 900)
    assert info.size_bytes == p1.size_bytes


def test_text_and_bytes_topics_round_trip_raw_values(log: Log) -> None:
    log.create_topic("txt", TopicConfig(value_format="text"))
    log.create_topic("bin", TopicConfig(value_format="bytes"))
    log.append("txt", OutgoingBatch(keys=[None, "k"], values=["héllo".encode(), b"not {json"], timestamps=[1, 2], raw=True))
    log.append("bin", OutgoingBatch(keys=[None], values=[b"\x00\xff\x01"], timestamps=[1], raw=True))
    assert _values(log, "txt") == ["héllo", "not {json"]
    assert _values(log, "bin") == [b"\x00\xff\x01"]


def test_text_and_bytes_topics_round_trip_plain_records(log: Log) -> None:
    log.create_topic("txt", TopicConfig(value_format="text"))
    log.create_topic("bin", TopicConfig(value_format="bytes"))
    log.append("txt", [Record(value="héllo")])
    log.append("bin", [Record(value=b"\x00\xff")])
    assert _values(log, "txt") == ["héllo"]
    assert _values(log, "bin") == [b"\x00\xff"]


# -- consumer groups, checkpoints, state ------------------------------------------------------------------


def test_committed_offsets_per_group(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=2))
    log.append("t", _recs(10, key="a"))
    assert log.committed("g1", "t") == {}
    log.commit("g1", {("t", 0): 4, ("t", 1): 0})
    log.commit("g2", {("t", 1): 7})
    assert log.committed("g1", "t") == {0: 4, 1: 0}
    assert log.committed("g2", "t") == {1: 7}
    log.commit("g1", {("t", 0): 9})
    assert log.committed("g1", "t") == {0: 9, 1: 0}
    with pytest.raises(UnknownTopicError):
        log.commit("g1", {("nope", 0): 1})


def test_checkpoint_commits_appends_offsets_and_state_together(log: Log) -> None:
    log.create_topic("in")
    log.create_topic("out", TopicConfig(partitions=2))
    log.append("in", _recs(5))
    cp = Checkpoint(group="p")
    cp.appends["out"] = _out(["a", "b", "a"], [1, 2, 3], [10, 20, 30])
    cp.offsets[("in", 0)] = 5
    cp.state = [StateChange("p.w", 0, b"k1", b"v1"), StateChange("p.w", 0, b"k2", b"v2"), StateChange("p.w", 1, b"k1", b"x")]
    result = log.commit_checkpoint(cp)
    assert sum(n for _, n in result["out"].values()) == 3
    assert sorted(v for p in range(2) for v in _values(log, "out", p)) == [1, 2, 3]
    assert log.committed("p", "in") == {0: 5}
    assert log.load_state("p.w", 0) == {b"k1": b"v1", b"k2": b"v2"}
    assert log.load_state("p.w", 1) == {b"k1": b"x"}
    assert log.load_state("p.other", 0) == {}
    # deletes and overwrites
    log.commit_checkpoint(Checkpoint(group="p", state=[StateChange("p.w", 0, b"k1", None), StateChange("p.w", 0, b"k2", b"v2b")]))
    assert log.load_state("p.w", 0) == {b"k2": b"v2b"}


def test_failed_checkpoint_applies_nothing(log: Log) -> None:
    log.create_topic("in")
    log.create_topic("out")
    log.append("in", _recs(3))
    log.commit_checkpoint(Checkpoint(group="p", offsets={("in", 0): 1}, state=[StateChange("s", 0, b"k", b"old")]))
    cp = Checkpoint(group="p", offsets={("in", 0): 3}, state=[StateChange("s", 0, b"k", b"new")])
    cp.appends["out"] = _out([None], [{"ok": 1}], [1])
    cp.appends["missing.topic"] = _out([None], [{"ok": 2}], [1])
    with pytest.raises(UnknownTopicError):
        log.commit_checkpoint(cp)
    assert _values(log, "out") == []
    assert log.committed("p", "in") == {0: 1}
    assert log.load_state("s", 0) == {b"k": b"old"}


# -- retention --------------------------------------------------------------------------------------------


# Kafka's brokers enforce retention themselves, on their own schedule: there is no client call to test
@pytest.mark.backends("sqlite")
def test_retention_by_age(log: Log) -> None:
    log.create_topic("old", TopicConfig(retention_ms=HOUR_MS))
    log.create_topic("forever", TopicConfig(retention_ms=None))
    t0 = now_ms()
    log.append("old", _recs(4, ts=t0))
    log.append("forever", _recs(4, ts=t0))
    time.sleep(0.005)
    mid = now_ms()
    time.sleep(0.005)
    t1 = now_ms()
    log.append("old", _recs(3, start=4, ts=t1))
    assert log.enforce_retention() == 0  # nothing is an hour old yet
    dropped = log.enforce_retention(at_ms=mid + HOUR_MS)
    assert dropped == 4
    p = log.describe_topic("old").partitions[0]
    assert (p.start_offset, p.end_offset, p.records) == (4, 7, 3)
    assert [r.offset for r in _all(log, "old")] == [4, 5, 6]
    # a consumer whose committed offset is before the start reads from the start
    assert [r.value["i"] for b in log.read("old", 0, 0) for r in b.records()] == [4, 5, 6]
    assert [r.value["i"] for b in log.read("old", 0, 2) for r in b.records()] == [4, 5, 6]
    assert log.describe_topic("forever").records == 4
    # everything goes, the offsets go on
    assert log.enforce_retention(at_ms=t1 + 2 * HOUR_MS) == 3
    p = log.describe_topic("old").partitions[0]
    assert (p.start_offset, p.end_offset, p.records) == (7, 7, 0)
    assert log.read("old", 0, 0) == []
    assert log.append("old", _recs(1)) == {0: (7, 1)}
    assert log.describe_topic("forever").records == 4


# Kafka's brokers enforce retention themselves, on their own schedule: there is no client call to test
@pytest.mark.backends("sqlite")
def test_retention_by_size_keeps_the_newest(log: Log) -> None:
    log.create_topic("probe", TopicConfig(retention_ms=None))
    log.append("probe", [Record(value={"pad": "x" * 1000, "i": i}) for i in range(10)])
    one_batch = log.describe_topic("probe").size_bytes
    limit = int(one_batch * 2.5)
    log.create_topic("t", TopicConfig(retention_ms=None, retention_bytes=limit))
    for b in range(5):
        log.append("t", [Record(value={"pad": "x" * 1000, "i": 10 * b + i}) for i in range(10)])
    assert log.describe_topic("t").records == 50
    dropped = log.enforce_retention()
    info = log.describe_topic("t")
    assert dropped == 30
    assert info.size_bytes <= limit
    assert (info.partitions[0].start_offset, info.partitions[0].end_offset) == (30, 50)
    assert [r.value["i"] for r in _all(log, "t")] == list(range(30, 50))
    assert log.enforce_retention() == 0


# Kafka's brokers enforce retention themselves, on their own schedule: there is no client call to test
@pytest.mark.backends("sqlite")
def test_retention_by_size_keeps_the_newest_batch(log: Log) -> None:
    log.create_topic("t", TopicConfig(retention_ms=None, retention_bytes=100))
    log.append("t", [Record(value={"pad": "x" * 500})])
    log.append("t", [Record(value={"pad": "y" * 500})])
    log.enforce_retention()
    assert [r.value["pad"][0] for r in _all(log, "t")] == ["y"]


# -- durability and processes ---------------------------------------------------------------------------------


def test_everything_survives_a_closed_and_reopened_log(log_backend: Any) -> None:
    first = log_backend.open()
    first.create_topic("t", TopicConfig(partitions=2, retention_ms=None, retention_bytes=1 << 30))
    first.append("t", [Record(value={"i": i}, key=f"k{i % 3}", timestamp_ms=i, headers={"h": str(i)}) for i in range(20)])
    first.commit_checkpoint(Checkpoint(group="g", offsets={("t", 0): 2, ("t", 1): 3}, state=[StateChange("g.s", 1, b"k", b"v")]))
    before = {p: [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for r in _all(first, "t", p)] for p in range(2)}
    first.close()
    second = log_backend.open()
    info = second.describe_topic("t")
    assert info.config == TopicConfig(partitions=2, retention_ms=None, retention_bytes=1 << 30)
    assert info.records == 20
    assert {p: [(r.offset, r.key, r.value, r.timestamp_ms, r.headers) for r in _all(second, "t", p)] for p in range(2)} == before
    assert second.committed("g", "t") == {0: 2, 1: 3}
    assert second.load_state("g.s", 1) == {b"k": b"v"}
    assert second.append("t", [Record(value="next")], partition=0) == {0: (len(before[0]), 1)}


def test_two_clients_see_each_others_writes(log_backend: Any) -> None:
    a = log_backend.open()
    b = log_backend.open()
    a.create_topic("t")
    assert b.topic_exists("t")
    a.append("t", _recs(2))
    b.append("t", _recs(2, start=2))
    assert [r.value["i"] for r in _all(a, "t")] == [0, 1, 2, 3]
    assert [r.offset for r in _all(b, "t")] == [0, 1, 2, 3]


def test_threads_sharing_one_client_append_concurrently(log: Log) -> None:
    log.create_topic("t", TopicConfig(partitions=2))
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for b in range(25):
                log.append("t", [Record(value={"w": w, "i": b * 4 + j}, key=f"w{w}") for j in range(4)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    for p in range(2):
        recs = _all(log, "t", p)
        assert [r.offset for r in recs] == list(range(len(recs)))
    got = [(r.value["w"], r.value["i"]) for p in range(2) for r in _all(log, "t", p)]
    assert sorted(got) == [(w, i) for w in range(4) for i in range(100)]
    for w in range(4):
        assert [i for ww, i in got if ww == w] == list(range(100))


# tansu 0.6 answers metadata requests for a deleted and recreated topic in a way that crashes
# librdkafka's metadata cache (a segmentation fault in a client that used the topic)
@pytest.mark.backends("sqlite")
def test_topic_recreated_by_another_client(log_backend: Any) -> None:
    a = log_backend.open()
    b = log_backend.open()
    a.create_topic("t")
    a.append("t", _recs(1))
    b.delete_topic("t")
    b.create_topic("t")
    b.append("t", [Record(value="from b")])
    assert _values(a, "t") == ["from b"]
    a.append("t", [Record(value="from a")])
    assert _values(b, "t") == ["from b", "from a"]


_WRITER = """
import pathlib, sys, time
from affluent.core.log import open_log
from affluent.core.records import Record
url, writer, batches, size, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), pathlib.Path(sys.argv[5])
log = open_log(url)
log.describe_topic("shared")
print("ready", flush=True)
while not go.exists():
    time.sleep(0.002)
for b in range(batches):
    log.append("shared", [Record(value={"w": writer, "i": b * size + j}, key=f"w{writer}", timestamp_ms=b) for j in range(size)])
log.close()
print("done", flush=True)
"""


def test_processes_appending_concurrently(log_backend: Any, log: Log, spawn: Any, tmp_path: Path) -> None:
    log.create_topic("shared")
    go = tmp_path / "go"
    writers, batches, size = 4, 30, 7
    procs = [spawn(_WRITER, log_backend.url, str(w), str(batches), str(size), str(go)) for w in range(writers)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == "done"
    recs = _all(log, "shared")
    total = writers * batches * size
    assert [r.offset for r in recs] == list(range(total)), "offsets must be contiguous from 0"
    seen = [(r.value["w"], r.value["i"]) for r in recs]
    assert len(set(seen)) == total, "no duplicates"
    assert set(seen) == {(w, i) for w in range(writers) for i in range(batches * size)}
    for w in range(writers):
        mine = [i for ww, i in seen if ww == w]
        assert mine == sorted(mine), "each writer's records stay in its order"
        assert {r.key for r in recs if r.value["w"] == w} == {f"w{w}"}
    if log_backend.name == "sqlite":
        # each append is one contiguous run: batches from different writers never interleave
        # (Kafka keeps one producer's records in order, not one append's records together)
        runs = [seen[i : i + size] for i in range(0, total, size)]
        assert all(len({w for w, _ in run}) == 1 for run in runs)
    # tansu's high watermark can lag its last batch for a moment (it counts that batch's first record)
    deadline = time.monotonic() + 10
    while log.describe_topic("shared").records != total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert log.describe_topic("shared").records == total


# -- leases ------------------------------------------------------------------------------------------------

_HOLDER = """
import os, sys
from affluent.core.log import open_log
url, name, owner, how = sys.argv[1:5]
log = open_log(url)
log.acquire_lease(name, owner)
print("holding", os.getpid(), flush=True)
sys.stdin.readline()
if how == "release":
    log.release_lease(name, owner)
    log.close()
    print("released", flush=True)
else:
    os._exit(0)  # dies holding the lease
"""


def test_a_live_owner_keeps_its_pipeline(log_backend: Any, log: Log, spawn: Any) -> None:
    holder = spawn(_HOLDER, log_backend.url, "stock", "owner-a", "release")
    word, pid = holder.stdout.readline().split()
    assert word == "holding"
    with pytest.raises(PipelineAlreadyRunningError) as err:
        log.acquire_lease("stock", "owner-b")
    msg = str(err.value)
    assert "'stock'" in msg and "already running" in msg
    assert f"pid {pid}" in msg
    assert "stop it first" in msg
    # another pipeline is free
    log.acquire_lease("bikes", "owner-b")
    out, _ = holder.communicate("\n", timeout=30)
    assert out.strip() == "released"
    log.acquire_lease("stock", "owner-b")  # released: free to take


def test_a_dead_owners_lease_is_taken_over(log_backend: Any, log: Log, spawn: Any) -> None:
    holder = spawn(_HOLDER, log_backend.url, "stock", "owner-a", "die")
    assert holder.stdout.readline().startswith("holding")
    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    start = time.monotonic()
    log.acquire_lease("stock", "owner-b")  # no waiting for the takeover delay: the owner is gone
    assert time.monotonic() - start < 5
    # the dead owner's late checkpoint is refused and applies nothing
    log.create_topic("out")
    cp = Checkpoint(group="stock", owner="owner-a", offsets={("out", 0): 0}, state=[StateChange("stock.s", 0, b"k", b"v")])
    cp.appends["out"] = _out([None], [1], [1])
    with pytest.raises(FencedError, match="'stock'"):
        log.commit_checkpoint(cp)
    assert _values(log, "out") == []
    assert log.committed("stock", "out") == {}
    assert log.load_state("stock.s", 0) == {}
    # the new owner commits
    cp.owner = "owner-b"
    log.commit_checkpoint(cp)
    assert _values(log, "out") == [1]


def test_a_stale_lease_is_taken_over_and_the_old_owner_fenced(log_backend: Any) -> None:
    a = log_backend.open()
    b = log_backend.open()
    a.create_topic("out")
    a.acquire_lease("p", "owner-a")
    a.acquire_lease("p", "owner-a")  # re-acquiring one's own lease is fine
    ok = Checkpoint(group="p", owner="owner-a")
    ok.appends["out"] = _out([None], ["a1"], [1])
    a.commit_checkpoint(ok)
    with pytest.raises(PipelineAlreadyRunningError):
        b.acquire_lease("p", "owner-b", takeover_after_s=60)
    time.sleep(0.05)
    b.acquire_lease("p", "owner-b", takeover_after_s=0.01)  # a's heartbeat is older than 10 ms
    late = Checkpoint(group="p", owner="owner-a")
    late.appends["out"] = _out([None], ["a2"], [2])
    with pytest.raises(FencedError, match="taken over"):
        a.commit_checkpoint(late)
    with pytest.raises(PipelineAlreadyRunningError):
        a.acquire_lease("p", "owner-a", takeover_after_s=60)
    a.release_lease("p", "owner-a")  # not the owner: changes nothing
    mine = Checkpoint(group="p", owner="owner-b")
    mine.appends["out"] = _out([None], ["b1"], [3])
    b.commit_checkpoint(mine)
    assert _values(a, "out") == ["a1", "b1"]


# -- workers: a group's members share its partitions ---------------------------------------------------------


# Kafka's group protocol is tried by tests/integration/test_workers.py (a rejoin takes seconds there)
@pytest.mark.backends("sqlite")
def test_members_share_partitions_and_a_revoked_one_is_checkpointed_first(log_backend: Any) -> None:
    a_log, b_log = log_backend.open(), log_backend.open()
    a_log.create_topic("in", TopicConfig(partitions=4))
    a_log.create_topic("other", TopicConfig(partitions=4))
    given_up: list[set[tuple[str, int]]] = []
    a = a_log.join("g", "a", ["in", "other"], given_up.append)
    assert a.sync() == {(t, p) for t in ("in", "other") for p in range(4)}
    b = b_log.join("g", "b", ["in", "other"], lambda tps: None)
    assert b.sync() == set()  # a still owns them: b waits until a lets go
    assert a.sync() == set()
    # partition p of every topic goes to one member, with the state of p
    assert given_up == [{("in", 1), ("in", 3), ("other", 1), ("other", 3)}]
    assert b.sync() == {("in", 1), ("in", 3), ("other", 1), ("other", 3)}
    assert a_log.group_members("g") == {"a": [("in", 0), ("in", 2), ("other", 0), ("other", 2)], "b": [("in", 1), ("in", 3), ("other", 1), ("other", 3)]}
    # a checkpoint applies only while its member owns every partition it read
    cp = Checkpoint(group="g", member="a", partitions=frozenset({("in", 0), ("in", 1)}), offsets={("in", 0): 1})
    with pytest.raises(FencedError, match=r"in\[1\]"):
        a_log.commit_checkpoint(cp)
    assert a_log.committed("g", "in") == {}
    cp.partitions = frozenset({("in", 0)})
    a_log.commit_checkpoint(cp)
    assert a_log.committed("g", "in") == {0: 1}
    # a member that leaves hands everything over
    b.leave()
    assert a.sync() == {("in", 1), ("in", 3), ("other", 1), ("other", 3)}
    assert list(a_log.group_members("g")) == ["a"]
