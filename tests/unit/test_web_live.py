"""The live channels and hub over a real log and serving store; the home page's app states."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from affluent.config import Settings
from affluent.core.clock import now_ms
from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import ServingSink
from affluent.web.board import Board
from affluent.web.home import app_state
from affluent.web.live import Computed, Feed, Hub, KeyedRows
from affluent.web.queries import Queries


@pytest.fixture
def world(tmp_path: Path) -> tuple[Queries, ServingSink, SQLiteLog]:
    settings = Settings(serving={"url": f"sqlite:///{tmp_path / 'serving.db'}"}, lake={"url": f"parquet://{tmp_path / 'lake'}"})
    log = SQLiteLog(tmp_path / "log.db")
    sink = ServingSink(tmp_path / "serving.db", "things", key_columns=("id",), columns={"id": "VARCHAR", "n": "BIGINT"})
    sink.open()
    return Queries(settings, log), sink, log


def put(sink: ServingSink, *rows: dict[str, Any]) -> None:
    sink.write([Record(value=r) for r in rows])
    sink.flush()


def things(q: Queries) -> list[dict[str, Any]]:
    return q.serving("SELECT id, n FROM things ORDER BY id")


def run(scenario: Any) -> Any:
    """asyncio.run in a thread of its own: another test's browser may hold this thread's event loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, scenario()).result()


def frames(sub: Any) -> list[tuple[str, str, Any]]:
    import orjson

    out = []
    while not sub.queue.empty():
        msg = sub.queue.get_nowait()
        head, data = msg.split(b"\ndata: ")
        body = orjson.loads(data)
        out.append((head.removeprefix(b"event: ").decode(), body["kind"], body["data"]))
    return out


def test_keyed_rows_send_what_changed_and_what_went(world: tuple[Queries, ServingSink, SQLiteLog]) -> None:
    q, sink, _ = world
    put(sink, {"id": "a", "n": 1}, {"id": "b", "n": 2})
    hub = Hub(q, [KeyedRows("things", things, ("id",))])

    async def scenario() -> list[tuple[str, str, Any]]:
        await hub.poll_once()
        sub = hub.subscribe(["things"])
        await hub.poll_once()  # nothing changed: nothing sent
        put(sink, {"id": "b", "n": 3}, {"id": "c", "n": 4})
        sink.query("DELETE FROM things WHERE id = 'a'")
        await hub.poll_once()
        return frames(sub)

    got = run(scenario)
    assert got[0] == ("things", "snapshot", {"key": ["id"], "rows": [{"id": "a", "n": 1}, {"id": "b", "n": 2}]})
    assert got[1:] == [("things", "delta", {"key": ["id"], "upsert": [{"id": "b", "n": 3}, {"id": "c", "n": 4}], "delete": ["a"]})]


def test_a_feed_sends_new_records_once_and_a_late_subscriber_gets_the_last_ones(world: tuple[Queries, ServingSink, SQLiteLog]) -> None:
    q, _, log = world
    hub = Hub(q, [Feed("alerts", ["x.alerts"], lambda r: {"text": r.value["text"]}, keep=2)])

    async def scenario() -> tuple[list[Any], list[Any]]:
        await hub.poll_once()  # the topic does not exist yet
        early = hub.subscribe(["alerts"])
        log.create_topic("x.alerts")
        log.append("x.alerts", [Record(value={"text": t}, timestamp_ms=now_ms() + i) for i, t in enumerate("abc")])
        await hub.poll_once()
        await hub.poll_once()
        late = hub.subscribe(["alerts"])
        return frames(early), frames(late)

    early, late = run(scenario)
    assert early == [("alerts", "snapshot", {"items": []}), ("alerts", "delta", {"items": [{"text": "a"}, {"text": "b"}, {"text": "c"}]})]
    assert late == [("alerts", "snapshot", {"items": [{"text": "b"}, {"text": "c"}]})]


def test_a_slow_subscriber_is_dropped_and_the_others_go_on(world: tuple[Queries, ServingSink, SQLiteLog], monkeypatch: pytest.MonkeyPatch) -> None:
    q, _, _ = world
    monkeypatch.setattr(Hub, "queue_size", 3)
    values = iter(range(100))
    hub = Hub(q, [Computed("count", lambda q: next(values))])

    async def scenario() -> tuple[Any, Any]:
        slow = hub.subscribe(["count"])
        fast = hub.subscribe(["count"])
        for _ in range(5):
            await hub.poll_once()
            frames(fast)
        return slow, fast

    slow, fast = run(scenario)
    assert slow.dropped and slow not in hub.subscribers and fast in hub.subscribers
    # the slow one's stream ends (its browser reconnects from a snapshot)
    assert None in [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]


def board(app: str = "stock") -> Board:
    from fastapi import APIRouter

    return Board(app=app, title=app, summary="", router=APIRouter())


def status(mode: str, *, status_: str = "running", note: str | None = None, error: str | None = None, records: int = 5) -> dict[str, Any]:
    source = {"name": "src", "status": "running", "mode": mode, "note": note, "error": error, "records": records, "rate": 2.5, "last_event_ms": 1000}
    return {"status": status_, "error": None, "records": records, "rate": 1.0, "lag": 3, "late": 1, "dead_letters": 2, "sources": [source], "updated_ms": 5}


def test_app_state_from_published_statuses() -> None:
    assert app_state(board(), {})["state"] == "not running"
    sim = app_state(board(), {"stock": status("simulator"), "stock-lake": {**status("live"), "sources": []}, "stockholm": status("live")})
    assert (sim["state"], sim["reason"], sim["records_per_s"], sim["lag"], sim["dead_letters"], sim["late"]) == (
        "simulating",
        "offline: runs a simulator",
        2.5,
        6,
        4,
        2,
    )
    assert [p["name"] for p in sim["pipelines"]] == ["stock", "stock-lake"]  # not "stockholm"
    replay = app_state(board("bikes"), {"bikes": status("replay", note="the feed https://x cannot be reached (HTTP 503)")})
    assert (replay["state"], replay["reason"]) == ("replaying", "the feed https://x cannot be reached (HTTP 503)")
    live = app_state(board("bikes"), {"bikes": status("live", error="HTTP 503, retrying")})
    assert (live["state"], live["reason"]) == ("running", "src: HTTP 503, retrying")
    gone = app_state(board("bikes"), {"bikes": {**status("live", status_="gone"), "error": "no news from pid 7 on h for 30 s"}})
    assert (gone["state"], gone["reason"]) == ("error", "bikes: no news from pid 7 on h for 30 s")


def test_a_status_from_a_process_that_is_gone_says_so(world: tuple[Queries, ServingSink, SQLiteLog]) -> None:
    q, _, log = world
    log.put_statuses({"stock": {"status": "running", "error": None}})
    assert q.pipelines()["stock"]["status"] == "running"
    log._conn().execute("UPDATE statuses SET updated_ms = updated_ms - 60000")
    got = q.pipelines()["stock"]
    assert got["status"] == "gone" and "no news from pid" in got["error"]


def test_a_pipeline_whose_process_fell_silent_shows_as_gone(world: tuple[Queries, ServingSink, SQLiteLog]) -> None:
    """Running, or restarting its own process, with no news for longer than STALE_MS: gone. Stopped stays stopped."""
    from affluent.web.queries import STALE_MS

    q, _, log = world
    old = now_ms() - STALE_MS - 1_000
    with log._write("test") as conn:  # statuses published long ago by a process that died since
        conn.executemany(
            "INSERT INTO statuses VALUES (?, 4242, 'elsewhere', ?, ?)",
            [(name, old, f'{{"status": "{status}", "error": null}}') for name, status in (("a", "running"), ("b", "restarting"), ("c", "stopped"))],
        )
    shown = q.pipelines()
    assert {name: st["status"] for name, st in shown.items()} == {"a": "gone", "b": "gone", "c": "stopped"}
    assert "no news from pid 4242 on elsewhere" in shown["b"]["error"]
