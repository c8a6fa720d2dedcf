"""Stream.stateful: a user rule with one state per key, checkpointed with its outputs."""

from __future__ import annotations

from typing import Any

from affluent.core.log import OutgoingBatch, TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.runtime import PipelineTask
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import read_topic


def _open_until_recovered(state: Any, v: dict[str, Any], ts: int) -> tuple[Any, list[Any]]:
    """One open request per shelf while its quantity is below 3; closed once it recovers."""
    if v["q"] < 0:
        raise ValueError("negative quantity")
    low = v["q"] < 3
    if low and state is None:
        return {"since": ts}, [{"shelf": v["shelf"], "open": True}]
    if not low and state is not None:
        return None, [{"shelf": v["shelf"], "open": False, "since": state["since"]}]
    return state, []


def _pipeline() -> Pipeline:
    p = Pipeline("shelves")
    p.topic("readings").stateful(_open_until_recovered, key=lambda v: v["shelf"], name="requests").to_topic("requests")
    return p


def _run(log: SQLiteLog) -> None:
    task = PipelineTask(_pipeline(), log, metrics=Metrics())
    task.open()
    while task.poll_once():
        pass
    task.commit()
    task.close()


def _feed(log: SQLiteLog, rows: list[tuple[str, int, int]], partition: int = 0) -> None:
    log.append("readings", OutgoingBatch([s for s, _, _ in rows], [{"shelf": s, "q": q} for s, q, _ in rows], [t for *_, t in rows]), partition=partition)


def test_state_lives_until_the_rule_ends_it_and_survives_restarts(log: SQLiteLog) -> None:
    log.create_topic("readings", TopicConfig(partitions=2))
    _feed(log, [("a", 1, 10), ("a", 0, 20), ("b", 5, 30)], partition=0)
    _feed(log, [("b", 2, 40)], partition=1)
    _run(log)
    # a restart: the open requests of a and b are remembered, across the two partitions
    _feed(log, [("a", 2, 50), ("a", 9, 60), ("b", 1, 70), ("a", -1, 80)], partition=1)
    _run(log)
    got = [(r.key, r.value["open"], r.value.get("since")) for r in read_topic(log, "requests")]
    assert sorted(got, key=str) == sorted([("a", True, None), ("b", True, None), ("a", False, 10)], key=str)
    assert [d.value["error"] for d in read_topic(log, "shelves.dlq")] == ["ValueError: negative quantity"]
