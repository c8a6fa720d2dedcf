"""Stateless and stateful operators, run by a real PipelineTask over the embedded log."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from affluent.core.errors import PipelineError, SourceUnavailableError
from affluent.core.log import OutgoingBatch, TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.runtime import PipelineTask
from affluent.core.sinks import Sink
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import ListSink, read_topic


def run(p: Pipeline, log: SQLiteLog, metrics: Metrics | None = None, *, owner: str | None = None) -> Metrics:
    """Open a task, process everything the input topics hold, commit, close."""
    metrics = metrics or Metrics()
    task = PipelineTask(p, log, metrics=metrics, owner=owner)
    task.open()
    try:
        while task.poll_once():
            pass
        task.commit()
    finally:
        task.close()
    return metrics


def feed(log: SQLiteLog, topic: str, values: list[Any], *, keys: list[str | None] | None = None, ts: list[int] | None = None, partitions: int = 1) -> None:
    if not log.topic_exists(topic):
        log.create_topic(topic, TopicConfig(partitions=partitions))
    keys = keys or [None] * len(values)
    ts = ts or [1_000 + i for i in range(len(values))]
    log.append(topic, [Record(value=v, key=k, timestamp_ms=t) for v, k, t in zip(values, keys, ts, strict=True)])


def values(log: SQLiteLog, topic: str) -> list[Any]:
    return [r.value for r in read_topic(log, topic)]


def dlq(log: SQLiteLog, pipeline: str) -> list[dict[str, Any]]:
    return values(log, f"{pipeline}.dlq") if log.topic_exists(f"{pipeline}.dlq") else []


# -- map, filter, flat_map, key_by, with_timestamp -----------------------------------------------------------


def test_map(log: SQLiteLog) -> None:
    feed(log, "in", [{"x": i} for i in range(5)], keys=["a", "b", None, "d", "e"], ts=[10, 20, 30, 40, 50])
    p = Pipeline("p")
    p.topic("in").map(lambda v: {"y": v["x"] * 2}, name="double").to_topic("out")
    run(p, log)
    out = read_topic(log, "out")
    assert [(r.key, r.value, r.timestamp_ms) for r in out] == [
        ("a", {"y": 0}, 10),
        ("b", {"y": 2}, 20),
        (None, {"y": 4}, 30),
        ("d", {"y": 6}, 40),
        ("e", {"y": 8}, 50),
    ]
    assert dlq(log, "p") == []


def test_a_failing_map_dead_letters_only_the_bad_record(log: SQLiteLog) -> None:
    feed(log, "in", [{"x": 1}, {"x": 0}, {"nox": 1}, {"x": 4}], keys=["k0", "k1", "k2", "k3"], ts=[100, 200, 300, 400])
    p = Pipeline("p")
    p.topic("in").map(lambda v: 12 // v["x"], name="inverse").to_topic("out")
    metrics = run(p, log)
    assert values(log, "out") == [12, 3]
    dead = read_topic(log, "p.dlq")
    assert [(d.value["offset"], d.value["error_type"]) for d in dead] == [(1, "ZeroDivisionError"), (2, "KeyError")]
    first = dead[0].value
    assert first["pipeline"] == "p" and first["step"] == "inverse" and first["topic"] == "in" and first["partition"] == 0
    assert first["value"] == {"x": 0}
    assert first["error"].startswith("ZeroDivisionError")
    assert [d.timestamp_ms for d in dead] == [200, 300]
    assert metrics.get("affluent_dead_letters_total", pipeline="p", step="inverse") == 2
    assert metrics.get("affluent_records_in_total", pipeline="p") == 4


def test_a_user_function_runs_once_per_record(log: SQLiteLog) -> None:
    feed(log, "in", [1, 2, 0, 3])
    calls: list[int] = []

    def fn(v: int) -> int:
        calls.append(v)
        return 6 // v

    p = Pipeline("p")
    p.topic("in").map(fn).to_topic("out")
    run(p, log)
    assert values(log, "out") == [6, 3, 2]
    assert sorted(calls) == [0, 1, 2, 3]


def test_filter(log: SQLiteLog) -> None:
    feed(log, "in", [{"q": 5}, {"q": 0}, {"q": 12}, {"q": None}, {"q": 3}])
    p = Pipeline("p")
    p.topic("in").filter(lambda v: v["q"] is not None and v["q"] > 4, name="big").to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"q": 5}, {"q": 12}]
    assert dlq(log, "p") == []


def test_filter_keeps_truthy_and_dead_letters_errors(log: SQLiteLog) -> None:
    feed(log, "in", [{"tags": ["a"]}, {"tags": []}, {}, {"tags": "x"}])
    p = Pipeline("p")
    p.topic("in").filter(lambda v: v["tags"], name="tagged").to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"tags": ["a"]}, {"tags": "x"}]
    assert [(d["offset"], d["step"], d["error_type"]) for d in dlq(log, "p")] == [(2, "tagged", "KeyError")]


def test_flat_map(log: SQLiteLog) -> None:
    feed(log, "in", [{"items": [1, 2, 3]}, {"items": []}, {"items": None}, {"items": [4]}], keys=["a", "b", "c", "d"], ts=[1, 2, 3, 4])
    p = Pipeline("p")
    p.topic("in").flat_map(lambda v: ({"item": i} for i in v["items"]), name="explode").to_topic("out")
    run(p, log)
    out = read_topic(log, "out")
    assert [(r.key, r.value, r.timestamp_ms) for r in out] == [("a", {"item": 1}, 1), ("a", {"item": 2}, 1), ("a", {"item": 3}, 1), ("d", {"item": 4}, 4)]
    assert [(d["offset"], d["error_type"]) for d in dlq(log, "p")] == [(2, "TypeError")]


def test_key_by_sets_keys_written_as_strings(log: SQLiteLog) -> None:
    feed(log, "in", [{"s": "x", "n": 1}, {"s": "y", "n": 2}, {"s": "z", "n": 3}])
    p = Pipeline("p")
    s = p.topic("in")
    s.key_by(lambda v: v["s"], name="by-s").to_topic("str-keys")
    s.key_by(lambda v: v["n"], name="by-n").to_topic("int-keys")
    s.key_by(lambda v: (v["s"], v["n"]), name="by-both").to_topic("tuple-keys")
    s.key_by(lambda v: v["missing"], name="bad").to_topic("never")
    run(p, log)
    assert [r.key for r in read_topic(log, "str-keys")] == ["x", "y", "z"]
    assert [r.key for r in read_topic(log, "int-keys")] == ["1", "2", "3"]
    assert [r.key for r in read_topic(log, "tuple-keys")] == ['["x",1]', '["y",2]', '["z",3]']
    assert values(log, "never") == []
    assert [d["step"] for d in dlq(log, "p")] == ["bad"] * 3


def test_keys_choose_output_partitions(log: SQLiteLog) -> None:
    feed(log, "in", [{"station": f"s{i % 6}", "i": i} for i in range(60)])
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["station"]).to_topic("out", config=TopicConfig(partitions=3))
    run(p, log)
    assert log.describe_topic("out").config.partitions == 3
    where: dict[str, set[int]] = {}
    for r in read_topic(log, "out"):
        where.setdefault(r.key, set()).add(r.partition)
    assert len(where) == 6 and all(len(ps) == 1 for ps in where.values())


def test_with_timestamp(log: SQLiteLog) -> None:
    feed(log, "in", [{"at": 1_700_000_000_000}, {"at": 5}, {"at": "2024-01-01"}, {"at": 7.5}, {"at": None}, {"at": 9}])
    p = Pipeline("p")
    p.topic("in").with_timestamp(lambda v: v["at"], name="event-time").to_topic("out")
    run(p, log)
    assert [(r.value, r.timestamp_ms) for r in read_topic(log, "out")] == [({"at": 1_700_000_000_000}, 1_700_000_000_000), ({"at": 5}, 5), ({"at": 9}, 9)]
    dead = dlq(log, "p")
    assert sorted((d["offset"], d["error_type"]) for d in dead) == [(2, "TypeError"), (3, "TypeError"), (4, "TypeError")]
    assert "event time must be int epoch ms, got 7.5" in dead[1]["error"]
    assert all(d["step"] == "event-time" for d in dead)


def test_with_timestamp_all_good_or_all_bad(log: SQLiteLog) -> None:
    feed(log, "in", [{"at": 7.5}, {"at": "x"}])
    feed(log, "in2", [{"at": 3}, {"at": 4}])
    p = Pipeline("p")
    p.topic("in").with_timestamp(lambda v: v["at"]).to_topic("out")
    p.topic("in2").with_timestamp(lambda v: v["at"]).to_topic("out2")
    run(p, log)
    assert values(log, "out") == []
    assert [r.timestamp_ms for r in read_topic(log, "out2")] == [3, 4]
    assert sorted(d["offset"] for d in dlq(log, "p")) == [0, 1]


def test_with_timestamp_checks_types_even_when_another_record_failed(log: SQLiteLog) -> None:
    feed(log, "in", [{"at": 1000}, {"at": 1500.5}, {}])
    p = Pipeline("p")
    p.topic("in").with_timestamp(lambda v: v["at"]).to_topic("out")
    run(p, log)
    assert [r.timestamp_ms for r in read_topic(log, "out")] == [1000]
    assert sorted((d["offset"], d["error_type"]) for d in dlq(log, "p")) == [(1, "TypeError"), (2, "KeyError")]


# -- validate ------------------------------------------------------------------------------------------------


class Reading(pydantic.BaseModel):
    sensor_id: str
    quantity: int
    unit: str = "pcs"


def test_validate_with_a_pydantic_model(log: SQLiteLog) -> None:
    feed(
        log,
        "in",
        [{"sensor_id": "s1", "quantity": "12"}, {"sensor_id": "s2"}, {"sensor_id": "s3", "quantity": 4, "unit": "kg"}, {"sensor_id": 5, "quantity": "many"}],
    )
    p = Pipeline("p")
    p.topic("in").validate(Reading, name="schema").to_topic("out")
    metrics = run(p, log)
    assert values(log, "out") == [{"sensor_id": "s1", "quantity": 12, "unit": "pcs"}, {"sensor_id": "s3", "quantity": 4, "unit": "kg"}]
    dead = dlq(log, "p")
    assert [(d["offset"], d["step"], d["error_type"]) for d in dead] == [(1, "schema", "ValidationError"), (3, "schema", "ValidationError")]
    assert "quantity" in dead[0]["error"]
    assert dead[0]["value"] == {"sensor_id": "s2"}
    assert metrics.get("affluent_dead_letters_total", step="schema") == 2


def test_validate_with_a_function(log: SQLiteLog) -> None:
    def check(v: dict[str, Any]) -> dict[str, Any] | None:
        if v["price"] < 0:
            raise ValueError("negative price")
        return {**v, "checked": True} if v.get("normalise") else None

    feed(log, "in", [{"price": 1}, {"price": -1}, {"price": 2, "normalise": True}, {}])
    p = Pipeline("p")
    p.topic("in").validate(check, name="prices").to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"price": 1}, {"price": 2, "normalise": True, "checked": True}]
    assert [(d["offset"], d["error"]) for d in dlq(log, "p")] == [(1, "ValueError: negative price"), (3, "KeyError: 'price'")]


def test_validate_with_a_boolean_check(log: SQLiteLog) -> None:
    feed(log, "in", [{"x": 1}, {"x": -1}])
    p = Pipeline("p")
    p.topic("in").validate(lambda v: v["x"] > 0, name="positive").to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"x": 1}]
    assert [d["offset"] for d in dlq(log, "p")] == [1]


# -- branch ------------------------------------------------------------------------------------------------------


def test_branch_first_match_wins_and_default(log: SQLiteLog) -> None:
    feed(log, "in", [{"q": 0}, {"q": 3}, {"q": 50}, {"q": 8}, {"q": "x"}, {"q": 100}])
    p = Pipeline("p")
    routes = p.topic("in").branch(
        {"empty": lambda v: v["q"] == 0, "low": lambda v: v["q"] < 10, "also-empty": lambda v: v["q"] == 0}, default="rest", name="route"
    )
    assert set(routes) == {"empty", "low", "also-empty", "rest"}
    for name, stream in routes.items():
        stream.to_topic(f"out.{name}")
    run(p, log)
    assert values(log, "out.empty") == [{"q": 0}]
    assert values(log, "out.low") == [{"q": 3}, {"q": 8}]
    assert values(log, "out.also-empty") == []
    assert values(log, "out.rest") == [{"q": 50}, {"q": 100}]
    assert [(d["offset"], d["step"], d["error_type"]) for d in dlq(log, "p")] == [(4, "route", "TypeError")]


def test_branch_without_default_drops_the_rest(log: SQLiteLog) -> None:
    feed(log, "in", [1, 2, 3, 4, 5, 6])
    p = Pipeline("p")
    routes = p.topic("in").branch({"even": lambda v: v % 2 == 0, "three": lambda v: v % 3 == 0})
    routes["even"].to_topic("even")
    routes["three"].map(lambda v: v * 100).to_topic("three")
    run(p, log)
    assert values(log, "even") == [2, 4, 6]
    assert values(log, "three") == [300]
    assert dlq(log, "p") == []


def test_branch_default_cannot_be_a_branch_name() -> None:
    with pytest.raises(PipelineError, match="default 'a'"):
        Pipeline("p").topic("in").branch({"a": bool}, default="a")


# -- dedupe -------------------------------------------------------------------------------------------------------


def test_dedupe_by_key(log: SQLiteLog) -> None:
    feed(log, "in", [{"id": i % 3, "n": i} for i in range(9)])
    p = Pipeline("p")
    p.topic("in").dedupe(name="once", key=lambda v: v["id"]).to_topic("out")
    metrics = run(p, log)
    assert values(log, "out") == [{"id": 0, "n": 0}, {"id": 1, "n": 1}, {"id": 2, "n": 2}]
    assert metrics.get("affluent_records_dropped_total", step="once") == 6


def test_dedupe_passes_records_unchanged(log: SQLiteLog) -> None:
    feed(log, "in", [{"id": i % 2, "n": i} for i in range(4)], keys=[f"rec{i}" for i in range(4)], ts=[5, 6, 7, 8])
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["id"]).to_topic("out")
    run(p, log)
    out = read_topic(log, "out")
    assert [(r.key, r.value, r.timestamp_ms) for r in out] == [("rec0", {"id": 0, "n": 0}, 5), ("rec1", {"id": 1, "n": 1}, 6)]


def test_dedupe_uses_the_record_key_by_default(log: SQLiteLog) -> None:
    feed(log, "in", [1, 2, 3, 4], keys=["a", "b", "a", None])
    p = Pipeline("p")
    p.topic("in").dedupe(name="once").to_topic("out")
    run(p, log)
    assert values(log, "out") == [1, 2, 4]


def test_dedupe_with_versions(log: SQLiteLog) -> None:
    # GBFS: dedupe on (station_id, last_reported): only newer reports pass
    reports = [("s1", 100), ("s2", 100), ("s1", 100), ("s1", 160), ("s1", 130), ("s2", 100), ("s2", 220), ("s1", 160)]
    feed(log, "in", [{"station_id": s, "last_reported": t} for s, t in reports])
    p = Pipeline("p")
    p.topic("in").dedupe(name="new-reports", key=lambda v: v["station_id"], version=lambda v: v["last_reported"]).to_topic("out")
    run(p, log)
    assert [(v["station_id"], v["last_reported"]) for v in values(log, "out")] == [("s1", 100), ("s2", 100), ("s1", 160), ("s2", 220)]


def test_dedupe_forgets_after_ttl_of_event_time(log: SQLiteLog) -> None:
    # ttl 100: a is seen at 0, 50 and 100 (each sighting keeps it), then not until 260 (> 100 + 100): it passes again
    feed(log, "in", [{"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": "a"}, {"id": "a"}, {"id": "b"}], ts=[0, 50, 60, 100, 260, 270])
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["id"], ttl_ms=100).to_topic("out")
    run(p, log)
    assert [(r.value["id"], r.timestamp_ms) for r in read_topic(log, "out")] == [("a", 0), ("b", 60), ("a", 260), ("b", 270)]


def test_dedupe_ttl_counts_from_the_last_sighting(log: SQLiteLog) -> None:
    feed(log, "in", [{"id": "a"}] * 4, ts=[0, 60, 120, 180])
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["id"], ttl_ms=100).to_topic("out")
    run(p, log)
    assert [r.timestamp_ms for r in read_topic(log, "out")] == [0]


def test_dedupe_state_survives_a_restart(log: SQLiteLog) -> None:
    def build() -> Pipeline:
        p = Pipeline("p")
        p.topic("in").dedupe(name="d", key=lambda v: v["id"], version=lambda v: v["v"]).to_topic("out")
        return p

    feed(log, "in", [{"id": "a", "v": 1}, {"id": ["x", 1], "v": 1}])
    run(build(), log)
    feed(log, "in", [{"id": "a", "v": 1}, {"id": ["x", 1], "v": 1}, {"id": "a", "v": 2}, {"id": ["x", 1], "v": 0}])
    run(build(), log)
    assert values(log, "out") == [{"id": "a", "v": 1}, {"id": ["x", 1], "v": 1}, {"id": "a", "v": 2}]


def test_dedupe_by_key_function_across_partitions(log: SQLiteLog) -> None:
    log.create_topic("in", TopicConfig(partitions=2))
    log.append("in", [Record(value={"offer_id": "o1", "src": 0}, key="feed-a")], partition=0)
    log.append("in", [Record(value={"offer_id": "o1", "src": 1}, key="feed-b")], partition=1)
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["offer_id"]).to_topic("out")
    run(p, log)
    assert len(values(log, "out")) == 1


def test_dedupe_key_errors_are_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "in", [{"id": 1}, {}, {"id": 1}, {"id": 2}])
    p = Pipeline("p")
    p.topic("in").dedupe(name="d", key=lambda v: v["id"]).to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"id": 1}, {"id": 2}]
    assert [(d["offset"], d["step"]) for d in dlq(log, "p")] == [(1, "d")]


# -- enrich with a table ---------------------------------------------------------------------------------------------


def _stations_pipeline(how: str) -> Pipeline:
    p = Pipeline(f"p-{how}")
    stations = p.table("stations", "station_information", key=lambda v: v["station_id"])
    (
        p.topic("status")
        .enrich(stations, key=lambda v: v["station_id"], join=lambda v, row: {**v, "name": row["name"] if row else None}, how=how, name="with-name")
        .to_topic(f"out-{how}")
    )
    return p


@pytest.mark.parametrize("how", ["left", "inner"])
def test_enrich_with_a_topic_fed_table(log: SQLiteLog, how: str) -> None:
    feed(log, "station_information", [{"station_id": "1", "name": "Gare"}, {"station_id": "2", "name": "Port"}])
    feed(log, "status", [{"station_id": "1", "bikes": 3}, {"station_id": "9", "bikes": 1}, {"station_id": "2", "bikes": 0}])
    task = PipelineTask(_stations_pipeline(how), log, metrics=Metrics())
    task.open()
    while task.poll_once():
        pass
    task.commit()
    # a row appearing later is joined from then on, not retroactively
    feed(log, "station_information", [{"station_id": "9", "name": "Phare"}, {"station_id": "1", "name": "Gare SNCF"}])
    feed(log, "status", [{"station_id": "9", "bikes": 5}, {"station_id": "1", "bikes": 4}])
    while task.poll_once():
        pass
    task.commit()
    task.close()
    got = [(v["station_id"], v["name"]) for v in values(log, f"out-{how}")]
    if how == "left":
        assert got == [("1", "Gare"), ("9", None), ("2", "Port"), ("9", "Phare"), ("1", "Gare SNCF")]
    else:
        assert got == [("1", "Gare"), ("2", "Port"), ("9", "Phare"), ("1", "Gare SNCF")]
    assert dlq(log, f"p-{how}") == []


def test_enrich_table_is_reloaded_on_restart_and_tombstones_remove_rows(log: SQLiteLog) -> None:
    feed(log, "station_information", [{"station_id": "1", "name": "Gare"}, {"station_id": "2", "name": "Port"}], keys=["1", "2"])
    p = Pipeline("p")
    table = p.table("stations", "station_information", value=lambda v: v)  # keyed by the record key
    p.topic("status").enrich(table, key=lambda v: v["station_id"], join=lambda v, row: [v["station_id"], row and row["name"]], how="left").to_topic("out")
    feed(log, "status", [{"station_id": "1"}])
    run(p, log)
    log.append("station_information", [Record(value=None, key="1")])  # a tombstone
    feed(log, "status", [{"station_id": "1"}, {"station_id": "2"}])
    run(p, log)  # a new task: the table is read again from the topic
    assert values(log, "out") == [["1", "Gare"], ["1", None], ["2", "Port"]]


def test_bad_table_rows_arriving_while_running_are_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "station_information", [{"station_id": "1", "name": "Gare"}])
    p = Pipeline("p")
    t = p.table("stations", "station_information", key=lambda v: v["station_id"])
    p.topic("status").enrich(t, key=lambda v: v["station_id"], join=lambda v, row: row and row["name"]).to_topic("out")
    metrics = Metrics()
    task = PipelineTask(p, log, metrics=metrics)
    task.open()
    feed(log, "station_information", [{"name": "no id"}, {"station_id": "2", "name": "Port"}])
    log.append("station_information", OutgoingBatch(keys=[None], values=[b'{"station_id": "1", "na'], timestamps=[9], raw=True))
    feed(log, "status", [{"station_id": "1"}, {"station_id": "2"}])
    while task.poll_once():
        pass
    task.commit()
    task.close()
    assert values(log, "out") == ["Gare", "Port"]  # the undecodable row deleted nothing
    dead = sorted((d["topic"], d["offset"], d["step"]) for d in dlq(log, "p"))
    assert dead == [("station_information", 1, "stations"), ("station_information", 3, "station_information.decode")]
    assert metrics.get("affluent_dead_letters_total", pipeline="p") == 2


def test_enrich_join_errors_are_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "station_information", [{"station_id": "1", "capacity": 10}])
    feed(log, "status", [{"station_id": "1", "bikes": 5}, {"station_id": "1"}, {"station_id": "1", "bikes": 10}])
    p = Pipeline("p")
    t = p.table("stations", "station_information", key=lambda v: v["station_id"])
    ratio = p.topic("status").enrich(t, key=lambda v: v["station_id"], join=lambda v, row: v["bikes"] / row["capacity"], name="ratio")
    ratio.to_topic("out")
    run(p, log)
    assert values(log, "out") == [0.5, 1.0]
    assert [(d["offset"], d["step"], d["error_type"]) for d in dlq(log, "p")] == [(1, "ratio", "KeyError")]


def test_an_undecodable_table_row_does_not_delete_the_row(log: SQLiteLog) -> None:
    feed(log, "station_information", [{"name": "Gare"}], keys=["1"])
    log.append("station_information", OutgoingBatch(keys=["1"], values=[b'{"name": "Gare SN'], timestamps=[2], raw=True))
    feed(log, "status", [{"station_id": "1"}])
    p = Pipeline("p")
    t = p.table("stations", "station_information")
    p.topic("status").enrich(t, key=lambda v: v["station_id"], join=lambda v, row: row).to_topic("out")
    run(p, log)
    assert values(log, "out") == [{"name": "Gare"}]
    assert [d["offset"] for d in dlq(log, "p")] == [1]


def test_a_table_row_whose_key_fails_is_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "station_information", [{"station_id": "1", "name": "Gare"}, {"name": "no id"}])
    feed(log, "status", [{"station_id": "1"}])
    p = Pipeline("p")
    t = p.table("stations", "station_information", key=lambda v: v["station_id"])
    p.topic("status").enrich(t, key=lambda v: v["station_id"], join=lambda v, row: row["name"]).to_topic("out")
    metrics = run(p, log)
    assert values(log, "out") == ["Gare"]
    assert [(d["topic"], d["offset"]) for d in dlq(log, "p")] == [("station_information", 1)]
    assert metrics.get("affluent_dead_letters_total", pipeline="p") == 1


def test_enrich_how_is_checked() -> None:
    p = Pipeline("p")
    t = p.table("t", "tt")
    with pytest.raises(PipelineError, match="'left' or 'inner'"):
        p.topic("in").enrich(t, key=lambda v: v, join=lambda v, r: v, how="outer")


# -- batch_map, inspect ------------------------------------------------------------------------------------------------


def test_batch_map(log: SQLiteLog) -> None:
    feed(log, "in", [{"p": float(i)} for i in range(6)], keys=list("abcdef"))
    seen_sizes: list[int] = []

    def scale(vals: list[dict[str, float]]) -> list[float]:
        seen_sizes.append(len(vals))
        return [v["p"] * 10 for v in vals]

    p = Pipeline("p")
    p.topic("in").batch_map(scale, name="scale").to_topic("out")
    run(p, log)
    assert [(r.key, r.value) for r in read_topic(log, "out")] == list(zip("abcdef", [0.0, 10.0, 20.0, 30.0, 40.0, 50.0], strict=True))
    assert seen_sizes == [6]


def test_batch_map_dead_letters_the_records_it_fails_on(log: SQLiteLog) -> None:
    feed(log, "in", [{"p": 1}, {"p": "x"}, {"p": 3}])
    p = Pipeline("p")
    p.topic("in").batch_map(lambda vals: [v["p"] + 1 for v in vals], name="inc").to_topic("out")
    run(p, log)
    assert values(log, "out") == [2, 4]
    assert [(d["offset"], d["step"], d["error_type"]) for d in dlq(log, "p")] == [(1, "inc", "TypeError")]


def test_batch_map_returning_the_wrong_length_is_a_pipeline_error(log: SQLiteLog) -> None:
    feed(log, "in", [1, 2, 3])
    p = Pipeline("p")
    p.topic("in").batch_map(lambda vals: vals[:1], name="short").to_topic("out")
    with pytest.raises(PipelineError, match="'short' returned 1 values for 3"):
        run(p, log)
    assert values(log, "out") == []


def test_inspect_sees_key_value_time_and_passes_everything(log: SQLiteLog) -> None:
    feed(log, "in", [{"a": 1}, {"a": 2}], keys=["k1", None], ts=[5, 6])
    seen: list[tuple[Any, Any, int]] = []
    p = Pipeline("p")
    p.topic("in").inspect(lambda k, v, t: seen.append((k, v, t)), name="look").to_topic("out")
    run(p, log)
    assert seen == [("k1", {"a": 1}, 5), (None, {"a": 2}, 6)]
    assert values(log, "out") == [{"a": 1}, {"a": 2}]


def test_a_failing_inspect_dead_letters_the_record(log: SQLiteLog) -> None:
    feed(log, "in", [1, 0, 2])
    p = Pipeline("p")
    p.topic("in").inspect(lambda k, v, t: 1 / v, name="look").to_topic("out")
    run(p, log)
    assert values(log, "out") == [1, 2]
    assert [d["offset"] for d in dlq(log, "p")] == [1]


# -- to_topic, to_sink -----------------------------------------------------------------------------------------------------


def test_to_topic_creates_it_with_its_config_and_fans_out(log: SQLiteLog) -> None:
    feed(log, "in", [1, 2, 3])
    p = Pipeline("p")
    s = p.topic("in")
    s.to_topic("copy-a", config=TopicConfig(partitions=2, retention_ms=None))
    s.map(lambda v: -v).to_topic("copy-b")
    metrics = run(p, log)
    assert log.describe_topic("copy-a").config == TopicConfig(partitions=2, retention_ms=None)
    assert sorted(values(log, "copy-a")) == [1, 2, 3]
    assert values(log, "copy-b") == [-1, -2, -3]
    assert metrics.get("affluent_records_out_total", target="copy-b") == 3


def test_an_unserialisable_output_value_is_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "in", [0, 1, 2])
    p = Pipeline("p")
    p.topic("in").map(lambda v: {"obj": object()} if v == 1 else v, name="odd").to_topic("out")
    run(p, log)
    assert values(log, "out") == [0, 2]
    assert [(d["offset"], d["error_type"]) for d in dlq(log, "p")] == [(1, "TypeError")]


def test_to_sink(log: SQLiteLog) -> None:
    feed(log, "in", [{"v": i} for i in range(4)], keys=["a", None, "c", "d"], ts=[10, 11, 12, 13], partitions=1)
    sink = ListSink("mem")
    p = Pipeline("p")
    p.topic("in").key_by(lambda v: v["v"] * 2).filter(lambda v: v["v"] != 2).to_sink(sink)
    assert p.sinks == [sink]
    run(p, log)
    assert [(r.key, r.value, r.timestamp_ms, r.topic, r.partition, r.offset) for r in sink.records] == [
        ("0", {"v": 0}, 10, "in", 0, 0),
        ("2", {"v": 1}, 11, "in", 0, 1),
        ("6", {"v": 3}, 13, "in", 0, 3),
    ]
    assert sink.values == [{"v": 0}, {"v": 1}, {"v": 3}]
    assert sink.flushes >= 1


class PickySink(Sink):
    """Refuses values with "bad"; raises a transient error when told to."""

    name = "picky"

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.unavailable = False

    def write(self, records: list[Record]) -> None:
        if self.unavailable:
            raise SourceUnavailableError("store down")
        if any(r.value.get("bad") for r in records):
            raise ValueError("cannot store a bad row")
        self.rows.extend(r.value for r in records)


def test_a_sink_refusing_one_record_dead_letters_only_it(log: SQLiteLog) -> None:
    feed(log, "in", [{"i": 0}, {"i": 1, "bad": True}, {"i": 2}])
    sink = PickySink()
    p = Pipeline("p")
    p.topic("in").to_sink(sink)
    run(p, log)
    assert sink.rows == [{"i": 0}, {"i": 2}]
    assert [(d["offset"], d["step"], d["error"]) for d in dlq(log, "p")] == [(1, "picky", "ValueError: cannot store a bad row")]


def test_a_transient_sink_error_is_not_dead_lettered(log: SQLiteLog) -> None:
    feed(log, "in", [{"i": 0}])
    sink = PickySink()
    sink.unavailable = True
    p = Pipeline("p")
    p.topic("in").to_sink(sink)
    with pytest.raises(SourceUnavailableError):
        run(p, log)
    assert dlq(log, "p") == []
    assert log.committed("p", "in") == {}


# -- pipeline definitions ------------------------------------------------------------------------------------------------


def test_step_names_must_be_unique_and_pipeline_names_valid() -> None:
    p = Pipeline("p")
    p.topic("in").map(abs, name="m")
    with pytest.raises(PipelineError, match="two steps named 'm'"):
        p.topic("in").filter(bool, name="m")
    for bad in ("", "a b", "a/b"):
        with pytest.raises(PipelineError, match="bad pipeline name"):
            Pipeline(bad)


def test_describe_draws_the_tree() -> None:
    p = Pipeline("alerts")
    s = p.topic("stock.readings")
    s.filter(bool, name="only-alerts").to_topic("stock.alerts")
    s.map(abs, name="abs")
    assert p.describe().splitlines() == [
        "pipeline alerts",
        "  topic stock.readings",
        "    filter only-alerts",
        "      to_topic stock.alerts",
        "    map abs",
    ]
