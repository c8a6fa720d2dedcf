"""Event-time windows and aggregates, run by real PipelineTasks over the embedded log.

Window results are compared with a plain-Python reference that processes records one by one, in
log order, as windows.py describes: the watermark is the largest event time seen so far; a window
closes when the watermark reaches end + grace; a record whose every window is closed is late.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affluent.core import runtime as runtime_mod
from affluent.core.aggregates import Aggregate, Count, First, Last, Max, Mean, Min, Reduce, Sum, as_aggregate, result_fields
from affluent.core.errors import ConfigError, PipelineError
from affluent.core.log import TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask, Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.core.windows import HoppingWindow, SessionWindow, TumblingWindow, Window
from affluent.testing import read_topic

MIN_TIME = -(1 << 62)


# -- helpers ------------------------------------------------------------------------------------------------------------


def make_task(p: Pipeline, log: SQLiteLog, metrics: Metrics | None = None, owner: str | None = None) -> PipelineTask:
    task = PipelineTask(p, log, metrics=metrics or Metrics(), owner=owner)
    task.open()
    return task


def drain(task: PipelineTask) -> None:
    while task.poll_once():
        pass
    task.commit()


def run(p: Pipeline, log: SQLiteLog, metrics: Metrics | None = None) -> Metrics:
    metrics = metrics or Metrics()
    task = make_task(p, log, metrics)
    try:
        drain(task)
    finally:
        task.close()
    return metrics


def feed(log: SQLiteLog, topic: str, items: list[tuple[str, int]] | list[tuple[str, int, Any]], *, partition: int | None = None, partitions: int = 1) -> None:
    """Append (key, event time[, value]) records; the value defaults to {"k": key, "v": 1}."""
    if not log.topic_exists(topic):
        log.create_topic(topic, TopicConfig(partitions=partitions))
    recs = [Record(value=it[2] if len(it) > 2 else {"k": it[0], "v": 1}, key=it[0], timestamp_ms=it[1]) for it in items]
    log.append(topic, recs, partition=partition)


def results(log: SQLiteLog, topic: str = "out") -> list[tuple[Any, ...]]:
    """(key, start, end, <aggregate fields in name order>) of each window result, sorted."""
    out = []
    for r in read_topic(log, topic):
        v = dict(r.value)
        assert r.timestamp_ms == v["end_ms"] - 1
        assert r.key == (v["key"] if v["key"] is None or isinstance(v["key"], str) else str(v["key"]))
        key, start, end = v.pop("key"), v.pop("start_ms"), v.pop("end_ms")
        out.append((key, start, end, *[v[n] for n in sorted(v)]))
    return sorted(out, key=order)


def order(r: tuple[Any, ...]) -> tuple[Any, ...]:
    return (repr(r[0]), r[1], r[2], repr(r[3:]))


def windowed(p: Pipeline, window: Window, agg: Aggregate | dict[str, Aggregate], *, emit: str = "close", topic: str = "in", name: str = "w") -> Any:
    return p.topic(topic).window(window, agg, name=name, emit=emit)


def no_idle(**kw: int) -> dict[str, Any]:
    return {"idle_ms": None, **kw}


# -- window definitions --------------------------------------------------------------------------------------------------


def test_window_definitions_are_checked() -> None:
    for bad in (
        lambda: TumblingWindow(0),
        lambda: TumblingWindow(10, grace_ms=-1),
        lambda: HoppingWindow(10, 0),
        lambda: HoppingWindow(10, 20),
        lambda: SessionWindow(0),
        lambda: SessionWindow(-5),
    ):
        with pytest.raises(ConfigError):
            bad()
    with pytest.raises(PipelineError, match="'close' or 'update'"):
        Pipeline("p").topic("in").window(TumblingWindow(10), Count(), name="w", emit="always")


def test_hopping_window_starts() -> None:
    w = HoppingWindow(60, 20)
    assert list(w.starts(65)) == [20, 40, 60]
    assert list(w.starts(60)) == [20, 40, 60]
    assert list(w.starts(59)) == [0, 20, 40]
    assert list(w.starts(0)) == [-40, -20, 0]
    assert list(HoppingWindow(50, 50).starts(49)) == [0]
    assert list(TumblingWindow(50).starts(-1)) == [-50]


# -- aggregates ---------------------------------------------------------------------------------------------------------------


def _fold(agg: Aggregate, items: list[tuple[Any, int]]) -> Any:
    acc = agg.create()
    for v, t in items:
        acc = agg.add(acc, v, t)
    return acc


def test_aggregates() -> None:
    items = [({"q": 4, "p": 2.5}, 30), ({"q": None, "p": 1.0}, 10), ({"q": 9, "p": 3.0}, 20), ({"q": 1, "p": 0.5}, 10), ({"q": 7, "p": 8.0}, 30)]
    assert Count().result(_fold(Count(), items)) == 5
    assert Sum("q").result(_fold(Sum("q"), items)) == 21
    assert Mean("q").result(_fold(Mean("q"), items)) == 21 / 4
    assert Mean("q").result(Mean("q").create()) is None
    assert Min("q").result(_fold(Min("q"), items)) == 1
    assert Max("p").result(_fold(Max("p"), items)) == 8.0
    assert First("q").result(_fold(First("q"), items)) is None  # earliest time 10, first seen on ties
    assert First("p").result(_fold(First("p"), items)) == 1.0
    assert Last("q").result(_fold(Last("q"), items)) == 7  # latest time 30, last seen on ties
    assert Last("q").result(Last("q").create()) is None
    assert Sum(lambda v: v["p"] * 2).result(_fold(Sum(lambda v: v["p"] * 2), items)) == 30.0
    distinct = Reduce(set, lambda acc, v: acc | {v["q"]}, name="distinct", result=len)
    assert distinct.result(_fold(distinct, items)) == 5
    assert distinct.name == "distinct"
    assert Min("q", name="lowest").name == "lowest"
    assert (Count().name, Sum("x").name, Mean("x").name, Min("x").name, Max("x").name, First("x").name, Last("x").name) == (
        "count",
        "sum",
        "mean",
        "min",
        "max",
        "first",
        "last",
    )


def test_aggregate_merges_equal_one_fold() -> None:
    items = [({"q": i % 7, "p": i}, (i * 37) % 11) for i in range(20)]
    for agg in (Count(), Sum("q"), Mean("q"), Min("q"), Max("q"), First("p"), Last("p"), as_aggregate({"n": Count(), "s": Sum("q"), "first": First("p")})):
        whole = agg.result(_fold(agg, items))
        for cut in (0, 5, 13, 20):
            merged = agg.merge(_fold(agg, items[:cut]), _fold(agg, items[cut:]))
            assert agg.result(merged) == whole, (agg, cut)


def test_several_aggregates_give_a_dict() -> None:
    agg = as_aggregate({"n": Count(), "avg": Mean("q"), "hi": Max("q")})
    acc = _fold(agg, [({"q": 2}, 1), ({"q": 6}, 2)])
    assert agg.result(acc) == {"n": 2, "avg": 4.0, "hi": 6}
    assert result_fields(agg, acc) == {"n": 2, "avg": 4.0, "hi": 6}
    assert result_fields(Count(), 3) == {"count": 3}


def test_reduce_without_merge_says_why() -> None:
    r = Reduce(list, lambda acc, v: [*acc, v])
    with pytest.raises(TypeError, match="no merge function, which session windows need"):
        r.merge([1], [2])


# -- tumbling, hopping, session -------------------------------------------------------------------------------------------------


def test_tumbling_count_per_key(log: SQLiteLog) -> None:
    feed(log, "in", [("a", 0), ("b", 3), ("a", 9), ("a", 10), ("b", 25), ("a", 19), ("c", 40)])
    p = Pipeline("p")
    windowed(p, TumblingWindow(10, **no_idle()), Count()).to_topic("out")
    run(p, log)
    # a@19 comes after b@25 closed [10, 20): it is late. The watermark ends at 40: [40, 50) is still open
    assert results(log) == [("a", 0, 10, 2), ("a", 10, 20, 1), ("b", 0, 10, 1), ("b", 20, 30, 1)]
    assert [r.value["offset"] for r in read_topic(log, "p.late")] == [5]


def test_tumbling_with_several_aggregates(log: SQLiteLog) -> None:
    feed(log, "in", [("s1", 1, {"q": 5}), ("s1", 4, {"q": 1}), ("s1", 2, {"q": 3}), ("s2", 8, {"q": 10}), ("x", 100, {"q": 0})])
    p = Pipeline("p")
    aggs = {
        "n": Count(),
        "total": Sum("q"),
        "avg": Mean("q"),
        "lo": Min("q"),
        "hi": Max("q"),
        "first": First("q"),
        "last": Last("q"),
        "all": Reduce(list, lambda acc, v: [*acc, v["q"]], merge=lambda a, b: a + b),
    }
    windowed(p, TumblingWindow(10, **no_idle()), aggs).to_topic("out")
    run(p, log)
    (s1, s2) = sorted((r.value for r in read_topic(log, "out")), key=lambda v: v["key"])
    assert s1 == {"key": "s1", "start_ms": 0, "end_ms": 10, "n": 3, "total": 9, "avg": 3.0, "lo": 1, "hi": 5, "first": 5, "last": 1, "all": [5, 1, 3]}
    assert s2 == {"key": "s2", "start_ms": 0, "end_ms": 10, "n": 1, "total": 10, "avg": 10.0, "lo": 10, "hi": 10, "first": 10, "last": 10, "all": [10]}


def test_single_aggregate_field_names(log: SQLiteLog) -> None:
    feed(log, "in", [("a", 1, {"q": 2}), ("a", 2, {"q": 4}), ("z", 50, {"q": 0})])
    p = Pipeline("p")
    s = p.topic("in")
    s.window(TumblingWindow(10, **no_idle()), Mean("q"), name="avg").to_topic("avg")
    s.window(TumblingWindow(10, **no_idle()), Reduce(lambda: 1, lambda acc, v: acc * v["q"], name="product"), name="prod").to_topic("prod")
    run(p, log)
    assert [r.value for r in read_topic(log, "avg")] == [{"key": "a", "start_ms": 0, "end_ms": 10, "mean": 3.0}]
    assert [r.value for r in read_topic(log, "prod")] == [{"key": "a", "start_ms": 0, "end_ms": 10, "product": 8}]


def test_hopping_windows(log: SQLiteLog) -> None:
    feed(log, "in", [("a", 5), ("a", 15), ("a", 25), ("b", 12), ("z", 200)])
    p = Pipeline("p")
    windowed(p, HoppingWindow(20, 10, **no_idle()), Count()).to_topic("out")
    run(p, log)
    # b@12 comes after a@25 closed [0, 20): it counts only in [10, 30)
    assert results(log) == [("a", -10, 10, 1), ("a", 0, 20, 2), ("a", 10, 30, 2), ("a", 20, 40, 1), ("b", 10, 30, 1)]
    assert read_topic(log, "p.late") == []


def test_session_windows(log: SQLiteLog) -> None:
    # gap 10: a@0, a@5, a@12 make one session [0, 22); a@40 another; b's records are 10 apart: two sessions
    feed(log, "in", [("a", 0), ("b", 3), ("a", 5), ("a", 12), ("b", 13), ("a", 40), ("z", 100)])
    p = Pipeline("p")
    windowed(p, SessionWindow(10, **no_idle()), {"n": Count(), "first": First("k")}).to_topic("out")
    run(p, log)
    assert results(log) == [("a", 0, 22, "a", 3), ("a", 40, 50, "a", 1), ("b", 3, 13, "b", 1), ("b", 13, 23, "b", 1)]


def test_session_merges_two_sessions_bridged_by_a_record(log: SQLiteLog) -> None:
    # with a grace of 20, [0, 10) is still open when a@8 bridges it to [15, 25)
    feed(log, "in", [("a", 0), ("a", 15), ("a", 8), ("z", 100)])
    p = Pipeline("p")
    windowed(p, SessionWindow(10, grace_ms=20, **no_idle()), {"n": Count(), "sum": Sum("v")}).to_topic("out")
    run(p, log)
    assert results(log) == [("a", 0, 25, 3, 3)]


def test_a_record_in_a_closed_session_starts_a_new_one(log: SQLiteLog) -> None:
    # no grace: a@15 closes [0, 10); a@8 is not late (8 + 10 > 15) but its session is gone: it starts [8, 18), merged with [15, 25)
    feed(log, "in", [("a", 0), ("a", 15), ("a", 8), ("z", 100)])
    p = Pipeline("p")
    windowed(p, SessionWindow(10, **no_idle()), {"n": Count(), "sum": Sum("v")}).to_topic("out")
    run(p, log)
    assert results(log) == [("a", 0, 10, 1, 1), ("a", 8, 25, 2, 2)]


def test_session_window_with_an_aggregate_that_cannot_merge_is_refused() -> None:
    with pytest.raises(PipelineError):
        Pipeline("p").topic("in").window(SessionWindow(10), Reduce(list, lambda acc, v: [*acc, v]), name="w")


# -- grace, late records -----------------------------------------------------------------------------------------------------------


def test_grace_period_and_late_records_to_the_default_late_topic(log: SQLiteLog) -> None:
    # size 10, grace 5: [0, 10) closes when the watermark reaches 15
    feed(log, "in", [("a", 5), ("a", 12), ("a", 8), ("a", 16), ("a", 9), ("a", 14)])
    p = Pipeline("p")
    windowed(p, TumblingWindow(10, grace_ms=5, **no_idle()), Count()).to_topic("out")
    metrics = run(p, log)
    assert results(log) == [("a", 0, 10, 2)]  # 5 and 8; 9 came after the watermark reached 16
    (late,) = read_topic(log, "p.late")
    assert late.value == {"step": "w", "topic": "in", "partition": 0, "offset": 4, "timestamp_ms": 9, "value": {"k": "a", "v": 1}}
    assert late.key == "a" and late.timestamp_ms == 9
    assert metrics.get("affluent_late_records_total", pipeline="p", step="w") == 1
    assert read_topic(log, "p.dlq") == []


def test_late_stream_when_someone_reads_it(log: SQLiteLog) -> None:
    feed(log, "in", [("a", 5), ("b", 30), ("a", 7), ("b", 2), ("c", 29)])
    p = Pipeline("p")
    w = windowed(p, TumblingWindow(10, **no_idle()), Count())
    w.to_topic("out")
    w.late.map(lambda v: {**v, "late": True}).to_topic("late-readings")
    run(p, log)
    assert results(log) == [("a", 0, 10, 1)]
    assert [(r.key, r.value, r.timestamp_ms) for r in read_topic(log, "late-readings")] == [
        ("a", {"k": "a", "v": 1, "late": True}, 7),
        ("b", {"k": "b", "v": 1, "late": True}, 2),
        ("c", {"k": "c", "v": 1, "late": True}, 29),
    ]  # [20, 30) closed when the watermark reached 30
    assert read_topic(log, "p.late") == []


def test_hopping_record_partly_late_counts_in_its_open_windows(log: SQLiteLog) -> None:
    # size 30 hop 10: t=25 is in [0,30), [10,40), [20,50); after the watermark reaches 40, [0,30) and [10,40) are closed
    feed(log, "in", [("a", 5), ("a", 40), ("a", 25), ("z", 1000)])
    p = Pipeline("p")
    windowed(p, HoppingWindow(30, 10, **no_idle()), Count()).to_topic("out")
    run(p, log)
    got = {(k, s): n for k, s, _, n in results(log) if k == "a"}
    assert got == {("a", -20): 1, ("a", -10): 1, ("a", 0): 1, ("a", 20): 2, ("a", 30): 1, ("a", 40): 1}
    assert read_topic(log, "p.late") == []


# -- emit on close vs on update ---------------------------------------------------------------------------------------------------


def test_emit_on_update_vs_on_close(log: SQLiteLog) -> None:
    log.create_topic("in")
    p_close, p_update = Pipeline("on-close"), Pipeline("on-update")
    windowed(p_close, TumblingWindow(10, **no_idle()), Count()).to_topic("closed")
    windowed(p_update, TumblingWindow(10, **no_idle()), Count(), emit="update").to_topic("updates")
    tasks = [make_task(p_close, log), make_task(p_update, log)]
    for key, t in [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("a", 12)]:
        feed(log, "in", [(key, t)])
        for task in tasks:
            drain(task)
    for task in tasks:
        task.close()
    assert [(r.value["key"], r.value["start_ms"], r.value["count"]) for r in read_topic(log, "updates")] == [
        ("a", 0, 1),
        ("a", 0, 2),
        ("b", 0, 1),
        ("a", 0, 3),
        ("a", 10, 1),
    ]
    assert results(log, "closed") == [("a", 0, 10, 3), ("b", 0, 10, 1)]


def test_emit_on_update_sends_one_update_per_window_per_batch(log: SQLiteLog) -> None:
    feed(log, "in", [("a", 1), ("a", 2), ("b", 3), ("a", 4)])
    p = Pipeline("p")
    windowed(p, TumblingWindow(10, **no_idle()), {"n": Count(), "last": Last("k")}, emit="update").to_topic("out")
    run(p, log)
    assert results(log) == [("a", 0, 10, "a", 3), ("b", 0, 10, "b", 1)]


# -- watermarks: per partition, idle partitions -----------------------------------------------------------------------------------------


def test_watermarks_are_per_partition(log: SQLiteLog) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    feed(log, "in", [("a", 5), ("a", 100)], partition=0)
    feed(log, "in", [("b", 5)], partition=1)
    p = Pipeline("p")
    windowed(p, TumblingWindow(10, **no_idle()), Count()).to_topic("out")
    task = make_task(p, log)
    drain(task)
    assert results(log) == [("a", 0, 10, 1)]  # partition 1's watermark is still 5
    feed(log, "in", [("b", 7)], partition=1)  # not late: partition 0's watermark does not count
    feed(log, "in", [("a", 6)], partition=0)  # late in partition 0
    drain(task)
    feed(log, "in", [("b", 10)], partition=1)
    drain(task)
    task.close()
    assert results(log) == [("a", 0, 10, 1), ("b", 0, 10, 2)]
    assert [(r.value["partition"], r.value["offset"]) for r in read_topic(log, "p.late")] == [(0, 2)]


class CommitAfterEnds(SQLiteLog):
    """A source's commit lands just after a poll took its input's end offsets (armed once)."""

    commit: Any = None

    def end_offsets(self, topic: str) -> dict[int, int]:
        ends = super().end_offsets(topic)
        commit, self.commit = self.commit, None
        if commit is not None:
            commit()
        return ends


def test_records_committed_after_a_poll_took_its_ends_wait_for_the_next_poll(tmp_path: Path) -> None:
    """Read at once, partition 0's records would close the window before partition 1's of the same
    commit were read (seen in a test run: 8 records late at the start of a re-keyed window)."""
    log = CommitAfterEnds(tmp_path / "log.db")
    log.create_topic("in", TopicConfig(partitions=2))
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: "all", name="k").window(TumblingWindow(10, **no_idle()), Count(), name="w").to_topic("out")
    task = make_task(p, log)

    def commit() -> None:
        feed(log, "in", [("a", 5), ("a", 100)], partition=0)
        feed(log, "in", [("b", 5)], partition=1)

    log.commit = commit
    drain(task)
    drain(task)
    feed(log, "in", [("b", 100)], partition=1)
    drain(task)
    task.close()
    assert not log.topic_exists("p.late") or read_topic(log, "p.late") == []
    assert results(log) == [("all", 0, 10, 2)]


class FakeClock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock(1_000_000)
    monkeypatch.setattr(runtime_mod, "now_ms", c)
    return c


def test_an_idle_partitions_watermark_advances_with_the_wall_clock(log: SQLiteLog, clock: FakeClock) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    p = Pipeline("p")
    windowed(p, TumblingWindow(1_000, idle_ms=5_000), Count()).to_topic("out")
    task = make_task(p, log)
    feed(log, "in", [("a", 500)], partition=0)
    feed(log, "in", [("b", 200)], partition=1)
    drain(task)
    clock.ms += 4_999  # not idle yet
    task.poll_once()
    task.commit()
    assert results(log) == []
    clock.ms += 301  # idle for 5.3 s: the watermark moves 300 ms past 500 (and 200): nothing is due
    task.poll_once()
    task.commit()
    assert results(log) == []
    feed(log, "in", [("b", 300)], partition=1)  # partition 1 is active again; partition 0 stays idle
    clock.ms += 200  # partition 0: 500 + 500 = 1000: [0, 1000) closes there
    task.poll_once()
    task.commit()
    assert results(log) == [("a", 0, 1_000, 1)]
    clock.ms += 600  # partition 1 got data 600 ms ago: not idle; its window stays open
    task.poll_once()
    task.commit()
    assert results(log) == [("a", 0, 1_000, 1)]
    clock.ms += 5_000  # idle for 5.6 s: 300 + 600 = 900 < 1000 still
    task.poll_once()
    assert results(log) == [("a", 0, 1_000, 1)]
    clock.ms += 100
    task.poll_once()
    task.commit()
    task.close()
    assert results(log) == [("a", 0, 1_000, 1), ("b", 0, 1_000, 2)]


def test_no_idle_advance_when_idle_ms_is_none(log: SQLiteLog, clock: FakeClock) -> None:
    p = Pipeline("p")
    windowed(p, TumblingWindow(1_000, idle_ms=None), Count()).to_topic("out")
    feed(log, "in", [("a", 500)])
    task = make_task(p, log)
    drain(task)
    clock.ms += 3_600_000
    task.poll_once()
    task.commit()
    task.close()
    assert results(log) == []


def test_idle_advance_is_committed_and_survives_a_restart(log: SQLiteLog, clock: FakeClock) -> None:
    def build() -> Pipeline:
        p = Pipeline("p")
        windowed(p, TumblingWindow(1_000, idle_ms=1_000), Count()).to_topic("out")
        return p

    feed(log, "in", [("a", 100), ("a", 900)])
    task = make_task(build(), log)
    drain(task)
    clock.ms += 1_500  # watermark 900 + 500 = 1400: [0, 1000) closes
    task.poll_once()
    task.commit()
    task.close()
    assert results(log) == [("a", 0, 1_000, 2)]
    feed(log, "in", [("a", 950)])  # late against the restored watermark
    task = make_task(build(), log)
    drain(task)
    task.close()
    assert results(log) == [("a", 0, 1_000, 2)]
    assert [r.value["timestamp_ms"] for r in read_topic(log, "p.late")] == [950]


# -- restarts --------------------------------------------------------------------------------------------------------------------------


INPUT = [("a", 1), ("b", 2), ("a", 11), ("a", 5), ("b", 19), ("c", 20), ("a", 24), ("b", 3), ("a", 35), ("c", 31), ("b", 48), ("a", 50)]


def _build(window: Window, name: str = "p") -> Pipeline:
    p = Pipeline(name)
    w = windowed(p, window, {"n": Count(), "s": Sum("v"), "first": First("k")})
    w.to_topic("out")
    return p


@pytest.mark.parametrize(
    "window",
    [TumblingWindow(10, grace_ms=3, idle_ms=None), HoppingWindow(20, 10, idle_ms=None), SessionWindow(6, idle_ms=None)],
    ids=["tumbling", "hopping", "session"],
)
def test_window_state_survives_restarts(tmp_path: Path, window: Window) -> None:
    straight = SQLiteLog(tmp_path / "straight.db")
    for item in INPUT:
        feed(straight, "in", [item])
    run(_build(window), straight)
    expected = results(straight)
    expected_late = [r.value["offset"] for r in read_topic(straight, "p.late")]
    assert expected  # the input closes some windows

    restarted = SQLiteLog(tmp_path / "restarted.db")
    for i, item in enumerate(INPUT):
        feed(restarted, "in", [item])
        if i % 3 == 0:  # a new process (a new pipeline object) every third record
            run(_build(window), restarted)
    run(_build(window), restarted)
    assert results(restarted) == expected
    assert [r.value["offset"] for r in read_topic(restarted, "p.late")] == expected_late
    assert restarted.load_state("p.w", 0) != {}


def test_a_crash_before_the_commit_redoes_the_work_exactly_once(log: SQLiteLog) -> None:
    window = TumblingWindow(10, idle_ms=None)
    feed(log, "in", INPUT[:6])
    task = make_task(_build(window), log)
    drain(task)
    committed = results(log)
    feed(log, "in", INPUT[6:])
    while task.poll_once():
        pass  # processed, results pending in the checkpoint: then the process dies without committing
    assert results(log) == committed
    again = make_task(_build(window), log, owner=task.owner)  # the restarted process
    drain(again)
    again.close()

    straight = SQLiteLog(log.path.parent / "straight.db")
    feed(straight, "in", INPUT)
    run(_build(window), straight)
    assert results(log) == results(straight)


def test_run_to_end_closes_every_open_window_once(log: SQLiteLog) -> None:
    def build() -> Pipeline:
        p = Pipeline("p")
        s = p.topic("in")
        s.window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("out")
        s.window(SessionWindow(5, idle_ms=None), Count(), name="s").to_topic("sessions")
        return p

    feed(log, "in", [("a", 1), ("b", 12), ("a", 14)])
    task = make_task(build(), log)
    drain(task)
    task.close()
    assert results(log) == [("a", 0, 10, 1)]  # an unbounded input: the last windows stay open
    Runtime(log, metrics=Metrics()).add(build()).run_to_end(timeout_s=30)  # the input is bounded and has ended
    assert results(log) == [("a", 0, 10, 1), ("a", 10, 20, 1), ("b", 10, 20, 1)]
    assert results(log, "sessions") == [("a", 1, 6, 1), ("a", 14, 19, 1), ("b", 12, 17, 1)]
    Runtime(log, metrics=Metrics()).add(build()).run_to_end(timeout_s=30)  # a restart emits nothing twice
    assert len(read_topic(log, "out")) == 3 and len(read_topic(log, "sessions")) == 3


def test_run_to_end_closes_upstream_windows_before_the_pipelines_reading_them(log: SQLiteLog) -> None:
    """A pipeline reading another's window results sees the last of them before its own windows close."""
    totals = Pipeline("totals")  # added first: the runtime still ends "counts" first
    totals.topic("counts").window(TumblingWindow(100, idle_ms=None), Sum("count"), name="per-100").to_topic("totals")
    counts = Pipeline("counts")
    counts.topic("in").window(TumblingWindow(10, idle_ms=None), Count(), name="per-10").to_topic("counts")
    feed(log, "in", [("a", 1), ("a", 5), ("b", 12), ("a", 14), ("a", 150)])
    Runtime(log, metrics=Metrics()).add(totals).add(counts).run_to_end(timeout_s=30)
    got = sorted((r.value["key"], r.value["start_ms"], r.value["sum"]) for r in read_topic(log, "totals"))
    assert got == [("a", 0, 3), ("a", 100, 1), ("b", 0, 1)]


# -- keys -------------------------------------------------------------------------------------------------------------------------------


def test_window_keys_can_be_lists(log: SQLiteLog) -> None:
    feed(log, "in", [("x", 1, {"store": "s1", "sensor": 7}), ("x", 2, {"store": "s1", "sensor": 7}), ("x", 50, {"store": "s2", "sensor": 1})])
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: [v["store"], v["sensor"]]).window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("out")
    run(p, log)
    (r,) = read_topic(log, "out")
    assert r.key == '["s1",7]'
    assert r.value["count"] == 2


def test_late_records_keep_the_key_spelling_of_topics(log: SQLiteLog) -> None:
    reading = {"store": "s1", "sensor": 7}
    feed(log, "in", [("x", 1, reading), ("x", 50, reading), ("x", 2, reading)])
    p = Pipeline("p")
    keyed = p.topic("in").key_by(lambda v: [v["store"], v["sensor"]])
    keyed.to_topic("keyed")
    keyed.window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("out")
    run(p, log)
    assert {r.key for r in read_topic(log, "keyed")} == {'["s1",7]'}
    (late,) = read_topic(log, "p.late")
    assert late.key == '["s1",7]'


def test_a_window_after_key_by_aggregates_across_partitions(log: SQLiteLog) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    # readings keyed by sensor; counted per store: the store's sensors sit in different partitions
    feed(log, "in", [("s1", 1, {"store": "brest"}), ("s2", 2, {"store": "brest"}), ("s1", 100, {"store": "x"})], partition=0)
    feed(log, "in", [("s3", 3, {"store": "brest"}), ("s3", 100, {"store": "x"})], partition=1)
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["store"]).window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("out")
    run(p, log)
    assert results(log) == [("brest", 0, 10, 3)]


def test_a_window_after_key_by_waits_for_the_slowest_partition(log: SQLiteLog) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["store"]).window(TumblingWindow(10, idle_ms=None), Count(), name="w").to_topic("out")
    task = make_task(p, log)
    feed(log, "in", [("s1", 1, {"store": "brest"}), ("s1", 100, {"store": "x"})], partition=0)
    feed(log, "in", [("s2", 2, {"store": "brest"})], partition=1)
    drain(task)
    assert results(log) == []  # partition 1 is at 2: [0, 10) stays open
    feed(log, "in", [("s2", 7, {"store": "brest"})], partition=1)  # not late: the slowest partition decides
    drain(task)
    feed(log, "in", [("s2", 50, {"store": "y"})], partition=1)
    drain(task)
    task.close()
    assert results(log) == [("brest", 0, 10, 3)]
    assert read_topic(log, "p.late") == []


def test_a_record_for_a_window_closed_while_a_partition_idled_is_late(log: SQLiteLog, clock: FakeClock) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["k"]).window(TumblingWindow(10, idle_ms=1_000), Count(), name="w").to_topic("out")
    task = make_task(p, log)
    feed(log, "in", [("x", 5, {"k": "A"})], partition=0)
    feed(log, "in", [("y", 5, {"k": "B"})], partition=1)
    drain(task)
    clock.ms += 2_000  # partition 1 is idle: it no longer holds the watermark back
    feed(log, "in", [("x", 100, {"k": "A"})], partition=0)
    drain(task)
    assert results(log) == [("A", 0, 10, 1), ("B", 0, 10, 1)]
    feed(log, "in", [("x", 7, {"k": "A"})], partition=0)  # [0, 10) is closed and emitted: late
    drain(task)
    feed(log, "in", [("x", 200, {"k": "A"})], partition=0)
    feed(log, "in", [("y", 200, {"k": "B"})], partition=1)
    drain(task)
    task.close()
    assert results(log) == [("A", 0, 10, 1), ("A", 100, 110, 1), ("B", 0, 10, 1)]
    assert [r.value["timestamp_ms"] for r in read_topic(log, "p.late")] == [7]


def _keyed_hopping() -> Pipeline:
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["k"]).window(HoppingWindow(20, 10, idle_ms=None), Count(), name="w").to_topic("out")
    return p


def _feed_keyed(log: SQLiteLog, task: PipelineTask, items: list[tuple[int, str, int]], restart_after: set[int]) -> PipelineTask:
    for i, (partition, key, t) in enumerate(items):
        log.append("in", [Record(value={"k": key}, timestamp_ms=t)], partition=partition)
        drain(task)
        if i in restart_after:
            task.close()
            task = make_task(_keyed_hopping(), log)
    return task


def test_after_key_by_every_record_is_counted_or_late(log: SQLiteLog) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    task = make_task(_keyed_hopping(), log)
    # partition 0 is empty when partition 1 moves the watermark to 28; then a@6 arrives in partition 0
    task = _feed_keyed(log, task, [(1, "b", 28), (0, "a", 6), (0, "z", 10_000), (1, "z", 10_000)], set())
    task.close()
    counted_a = sum(n for k, _, _, n in results(log) if k == "a")
    late_a = [r.value["timestamp_ms"] for r in read_topic(log, "p.late") if r.key == "a"]
    assert counted_a == 2 or late_a == [6]  # in its two windows, or late: never lost


# -- results do not depend on how the log is split into batches: a property test -------------------------------------------------


def _window_starts(w: Window, t: int) -> list[int]:
    if isinstance(w, TumblingWindow):
        return [t - t % w.size_ms]
    assert isinstance(w, HoppingWindow)
    return list(w.starts(t))


def reference_windows(
    records: list[tuple[str, int, int]], w: TumblingWindow | HoppingWindow, *, count_only: bool = False
) -> tuple[list[tuple[Any, ...]], list[int]]:
    """Record by record: (sorted results, offsets of late records). Results as `results()` shows them."""
    size, grace = w.size_ms, w.grace_ms
    wm = MIN_TIME
    open_: dict[tuple[str, int], list[tuple[int, int]]] = {}
    out: list[tuple[Any, ...]] = []
    late: list[int] = []
    for offset, (key, t, v) in enumerate(records):
        wm = max(wm, t)
        alive = [s for s in _window_starts(w, t) if s + size + grace > wm]
        if not alive:
            late.append(offset)
        for s in alive:
            open_.setdefault((key, s), []).append((t, v))
        for k, s in sorted(open_):
            if s + size + grace <= wm:
                items = open_.pop((k, s))
                vs = [x for _, x in items]
                if count_only:
                    out.append((k, s, s + size, len(vs)))
                    continue
                first = min(range(len(items)), key=lambda i: (items[i][0], i))
                last = max(range(len(items)), key=lambda i: (items[i][0], i))
                # fields in name order: first, hi, last, lo, mean, n, sum
                out.append((k, s, s + size, items[first][1], max(vs), items[last][1], min(vs), sum(vs) / len(vs), len(vs), sum(vs)))
    return sorted(out, key=order), late


AGGS: dict[str, Aggregate] = {"n": Count(), "sum": Sum("v"), "mean": Mean("v"), "lo": Min("v"), "hi": Max("v"), "first": First("v"), "last": Last("v")}
WINDOWS = [
    TumblingWindow(50, idle_ms=None),
    TumblingWindow(50, grace_ms=20, idle_ms=None),
    HoppingWindow(60, 20, idle_ms=None),
    HoppingWindow(60, 20, grace_ms=15, idle_ms=None),
    HoppingWindow(40, 40, idle_ms=None),
    HoppingWindow(45, 15, grace_ms=100, idle_ms=None),
]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Window, list[tuple[str, int, int]], list[int], set[int]]:
    window = draw(st.sampled_from(WINDOWS))
    n = draw(st.integers(1, 60))
    base = draw(st.lists(st.integers(-10, 40), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(-80, 5), min_size=n, max_size=n))
    times, t = [], 0
    for b, j in zip(base, jitter, strict=True):
        t += b
        times.append(max(0, t + j))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    vals = draw(st.lists(st.integers(-20, 20), min_size=n, max_size=n))
    records = [*zip(keys, times, vals, strict=True), ("zz", max(times) + 10_000, 0)]  # closes everything before it
    sizes = []
    left = len(records)
    while left:
        k = draw(st.integers(1, left))
        sizes.append(k)
        left -= k
    restarts = draw(st.sets(st.integers(0, len(sizes) - 1)))
    return window, records, sizes, restarts


_SEQ = itertools.count()


@dataclass
class Run:
    """Where one scenario ran: its own input topic, pipeline and output topic in a shared log."""

    log: SQLiteLog
    name: str

    @property
    def out(self) -> list[tuple[Any, ...]]:
        return results(self.log, f"{self.name}.out")

    @property
    def late(self) -> list[int]:
        return [r.value["offset"] for r in read_topic(self.log, f"{self.name}.late")]

    @property
    def dead(self) -> list[Record]:
        return read_topic(self.log, f"{self.name}.dlq")


def _run_chunks(
    log: SQLiteLog,
    window: Window,
    records: list[tuple[str, int, int]],
    sizes: list[int],
    restarts: set[int] | None = None,
    agg: Aggregate | dict[str, Aggregate] = AGGS,
) -> Run:
    """Append `records` in chunks of `sizes`, processing after each; a new task (a restart) after the chunks in `restarts`."""
    run_ = Run(log, f"r{next(_SEQ)}")
    topic = f"{run_.name}.in"
    log.create_topic(topic)

    def build() -> Pipeline:
        p = Pipeline(run_.name)
        p.topic(topic).window(window, agg, name="w").to_topic(f"{run_.name}.out")
        return p

    task = make_task(build(), log)
    pos = 0
    for i, size in enumerate(sizes):
        chunk = records[pos : pos + size]
        pos += size
        log.append(topic, [Record(value={"v": v}, key=k, timestamp_ms=t) for k, t, v in chunk])
        drain(task)
        if restarts and i in restarts:
            task.close()
            task = make_task(build(), log)
    drain(task)
    task.close()
    return run_


@contextlib.contextmanager
def fresh_log() -> Iterator[SQLiteLog]:
    """A new log for one example, in memory-backed storage when there is some (an fsync per example adds up)."""
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        lg = SQLiteLog(Path(d) / "log.db", synchronous="OFF")
        try:
            yield lg
        finally:
            lg.close()


PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(scenarios())
def test_window_results_match_the_reference_however_the_log_is_split(scenario: tuple[Window, list[Any], list[int], set[int]]) -> None:
    window, records, sizes, restarts = scenario
    assert isinstance(window, TumblingWindow | HoppingWindow)
    expected, expected_late = reference_windows(records, window)
    with fresh_log() as lg:
        got = _run_chunks(lg, window, records, sizes, restarts)
        assert got.out == expected
        assert got.late == expected_late
        assert got.dead == []


@PROPERTY
@given(scenarios())
def test_window_counts_match_the_reference_however_the_log_is_split(scenario: tuple[Window, list[Any], list[int], set[int]]) -> None:
    # a lone Count takes the folded fast path
    window, records, sizes, restarts = scenario
    window = TumblingWindow(window.size_ms, grace_ms=window.grace_ms, idle_ms=None)
    expected, expected_late = reference_windows(records, window, count_only=True)
    with fresh_log() as lg:
        got = _run_chunks(lg, window, records, sizes, restarts, Count())
        assert got.out == expected
        assert got.late == expected_late


def test_one_batch_and_many_batches_give_the_same_windows(log: SQLiteLog) -> None:
    records = [(k, t, v) for k, t, v in zip("abcabcabca" * 3, [5, 9, 60, 2, 130, 70, 61, 20, 199, 250] * 3, range(30), strict=True)]
    records += [("zz", 10_000, 0)]
    outs = []
    for sizes in ([len(records)], [1] * len(records), [3, 7, 1, 1, 15, 4]):
        got = _run_chunks(log, HoppingWindow(60, 20, grace_ms=10, idle_ms=None), records, sizes)
        outs.append((got.out, got.late))
    assert outs[0][0] and outs[0][1]
    assert outs[0] == outs[1] == outs[2]


def reference_sessions(records: list[tuple[str, int, int]], gap: int, grace: int) -> list[tuple[Any, ...]]:
    """Record by record: sessions (key, start, end, n, sum), closed when the watermark reaches end + grace."""
    wm = MIN_TIME
    sessions: dict[str, list[list[int]]] = {}
    out: list[tuple[Any, ...]] = []
    for key, t, v in records:
        wm = max(wm, t)
        if t + gap + grace > wm:
            new = [t, t + gap, 1, v]
            kept = []
            for s in sessions.get(key, []):
                if s[0] < new[1] and new[0] < s[1]:
                    new = [min(s[0], new[0]), max(s[1], new[1]), s[2] + new[2], s[3] + new[3]]
                else:
                    kept.append(s)
            sessions[key] = [*kept, new]
        for k in list(sessions):
            for s in [s for s in sessions[k] if s[1] + grace <= wm]:
                out.append((k, s[0], s[1], s[2], s[3]))
                sessions[k].remove(s)
    return sorted(out, key=order)


def _session_outputs(log: SQLiteLog, records: list[tuple[str, int, int]], sizes: list[int], gap: int) -> list[tuple[Any, ...]]:
    return _run_chunks(log, SessionWindow(gap, idle_ms=None), records, sizes, agg={"n": Count(), "sum": Sum("v")}).out


SESSION_INPUT = [("a", 0, 1), ("b", 10, 1), ("a", 5, 1), ("b", 100, 1)]


def test_session_windows_one_record_per_batch_match_the_reference(log: SQLiteLog) -> None:
    got = _session_outputs(log, SESSION_INPUT, [1] * 4, 10)
    assert got == reference_sessions(SESSION_INPUT, 10, 0) == [("a", 0, 10, 1, 1), ("a", 5, 15, 1, 1), ("b", 10, 20, 1, 1)]


def test_session_windows_do_not_depend_on_batching(log: SQLiteLog) -> None:
    assert _session_outputs(log, SESSION_INPUT, [4], 10) == reference_sessions(SESSION_INPUT, 10, 0)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 200), st.integers(0, 9)), min_size=1, max_size=25))
def test_session_windows_record_by_record_match_the_reference(records: list[tuple[str, int, int]]) -> None:
    records = [*records, ("zz", 10_000, 0)]
    with fresh_log() as lg:
        assert _session_outputs(lg, records, [1] * len(records), 15) == reference_sessions(records, 15, 0)
