"""A flaky GBFS feed, on a real HTTP server on loopback: per-file backoff, Retry-After, and freshness.

A bad answer (an HTML page, truncated JSON, HTTP 5xx, a cut connection) is retried after 1 s, then 2, 4...
capped at the file's poll interval, and from 1 s again after a success; a Retry-After is waited exactly.
The freshness test runs the bikes pipelines on the real runtime and log against a feed that publishes a
snapshot every second and answers 30% of the requests with a fault: the app must still get at least half
of the snapshots the feed published (a fixed 60 s wait after each HTML page got 3 snapshots in 3 minutes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integration.gbfs_server import HTTP, Clock, GBFSServer, Reply, doc, pipelines_drained, wait_until

from affluent.apps.bikes.pipeline import T_STATUS, build_pipelines
from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import Metrics
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sources.gbfs import GBFSSource
from affluent.testing import read_topic

VELOZEF = "/velozef_2.2/"
STATUS = VELOZEF + "station_status.json"


@pytest.fixture
def server() -> Iterator[GBFSServer]:
    with GBFSServer() as s:
        yield s


def status_only(server: GBFSServer, **kw: Any) -> tuple[GBFSSource, Clock, Metrics]:
    """A system that lists station_status only (ttl 60), so that a poll whose one file failed raises."""
    g = {
        "last_updated": 1773136800,
        "ttl": 86400,
        "version": "2.2",
        "data": {"en": {"feeds": [{"name": "station_status", "url": "{{base}}/s/station_status.json"}]}},
    }
    server.put("/s/gbfs.json", g)
    server.put("/s/station_status.json", doc("velozef_2.2", "station_status.json"))
    clock, metrics = Clock(), Metrics()
    src = GBFSSource(server.url("/s/gbfs.json"), clock=clock, metrics=metrics, system_id="s", vehicles=False, **kw)
    src.open(None)
    return src, clock, metrics


def failed_poll(src: GBFSSource, clock: Clock) -> tuple[float, float | None]:
    """Poll when station_status is due; it fails: (its wait before the next try, the retry_after_s the runtime gets)."""
    st = src.states["station_status"]
    clock.now = max(clock.now, st.due)
    with pytest.raises(SourceUnavailableError) as info:
        src.poll()
    return st.due - clock.now, info.value.retry_after_s


# -- backoff -------------------------------------------------------------------------------------------------------------
def test_backoff_starts_at_one_second_doubles_and_caps_at_the_poll_interval(server: GBFSServer) -> None:
    src, clock, metrics = status_only(server)  # min_poll_s 30, station_status ttl 60: a poll every 60 s
    assert src.poll().wait_s == 60
    server.script("/s/station_status.json", "html", "truncated", "500", "503", "cut", "html", "truncated", "500")
    clock.now += 60
    waits = [failed_poll(src, clock) for _ in range(8)]
    # the runtime is told to come back exactly when the file is due again
    assert waits == [(w, w) for w in (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0)]
    assert src.states["station_status"].failures == 8
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status") == 8
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="html") == 2

    # a new snapshot: read, and the file is back on its ttl with its failures forgotten
    status = doc("velozef_2.2", "station_status.json")
    status["last_updated"] += 300
    server.put("/s/station_status.json", status)
    clock.now = src.states["station_status"].due
    got = src.poll()
    assert len(got.records) == 28 and got.wait_s == 60
    assert src.states["station_status"].failures == 0 and src.states["station_status"].error is None

    # the next failure starts from 1 s again
    server.script("/s/station_status.json", "503", "html")
    clock.now += 60
    assert [failed_poll(src, clock)[0] for _ in range(2)] == [1.0, 2.0]


def test_backoff_is_capped_at_min_poll_s_when_the_ttl_is_shorter(server: GBFSServer) -> None:
    src, clock, _ = status_only(server, min_poll_s=5)
    status = {**doc("velozef_2.2", "station_status.json"), "ttl": 0}
    server.put("/s/station_status.json", status)
    assert src.poll().wait_s == 5
    server.script("/s/station_status.json", *["503"] * 5)
    clock.now += 5
    # ttl 0 is no cap at all: the file is never read more often than a healthy one is (min_poll_s)
    assert [failed_poll(src, clock)[0] for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_after_is_honoured_exactly_in_seconds_or_as_a_date_and_bounded(server: GBFSServer) -> None:
    src, clock, metrics = status_only(server, max_backoff_s=600)
    src.poll()
    in_20_s = formatdate(now_ms() / 1000 + 20, usegmt=True)
    server.script(
        "/s/station_status.json",
        Reply(429, b"{}", {"Retry-After": "7"}),
        Reply(503, b"{}", {"Retry-After": in_20_s}),
        Reply(429, b"{}", {"Retry-After": "86400"}),
        Reply(503, b"{}", {"Retry-After": "0"}),
        Reply(429, b"{}"),  # no Retry-After: the backoff goes on from the failures so far
    )
    clock.now += 60
    assert failed_poll(src, clock) == (7.0, 7.0)
    wait, retry = failed_poll(src, clock)
    assert 18 <= wait <= 20 and retry == wait  # an HTTP date, read against the wall clock (1 s resolution)
    assert failed_poll(src, clock) == (600.0, 600.0)  # a day is bounded by max_backoff_s
    assert failed_poll(src, clock) == (1.0, 1.0)  # "0" is no licence to retry in a loop
    assert failed_poll(src, clock) == (16.0, 16.0)  # 5th failure in a row: 1, 2, 4, 8, 16
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="http_429") == 3


def test_a_discovery_that_fails_before_any_success_backs_off_from_one_second(server: GBFSServer) -> None:
    server.script("/s/gbfs.json", "html", "truncated", "503")
    src, clock, metrics = status_only(server)
    retries = []
    for _ in range(3):
        with pytest.raises(SourceUnavailableError) as info:
            src.poll()
        retries.append(info.value.retry_after_s)
        clock.now += info.value.retry_after_s or 0.0
    assert retries == [1.0, 2.0, 4.0]  # an HTML page used to mean 60 s before the runtime tried again
    assert metrics.get("affluent_gbfs_errors_total", feed="gbfs") == 3
    assert len(src.poll().records) == 28


def test_one_file_backing_off_does_not_hold_back_the_others(server: GBFSServer) -> None:
    server.load_folder(HTTP / "velozef_2.2", VELOZEF)
    clock = Clock()
    src = GBFSSource(server.url(VELOZEF + "gbfs.json"), clock=clock, metrics=Metrics())
    src.open(None)
    src.poll()
    server.script(STATUS, "html")
    clock.now += 60
    got = src.poll()  # the other files answered (304): no raise
    assert got.records == [] and got.wait_s == 1.0  # the source wakes up for station_status's retry
    status = doc("velozef_2.2", "station_status.json")
    status["last_updated"] += 61
    server.put(STATUS, status)
    clock.now += 1
    assert {r.value["feed"] for r in src.poll().records} == {"station_status"}
    assert len(server.requests_for(VELOZEF + "free_bike_status.json")) == 2  # not read again for station_status's retry


# -- freshness under faults ------------------------------------------------------------------------------------------------
class LiveStatus:
    """station_status of a system that publishes a snapshot every second: last_updated is the current second,
    ttl 1, and every station reports in every snapshot (so each one passes the (station, last_reported) dedupe)."""

    def __init__(self) -> None:
        self.template = doc("velozef_2.2", "station_status.json")
        self.served: set[int] = set()  # snapshots answered in full (a fault is answered before this is asked)
        self.frozen: int | None = None
        self.lock = threading.Lock()

    def freeze(self) -> int:
        """Publish nothing new from now on; returns the last snapshot published."""
        with self.lock:
            self.frozen = now_ms() // 1000
            return self.frozen

    def __call__(self, _server: GBFSServer) -> bytes:
        with self.lock:
            second = now_ms() // 1000 if self.frozen is None else self.frozen
            self.served.add(second)
        stations = []
        for i, s in enumerate(self.template["data"]["stations"]):
            capacity = s["num_bikes_available"] + s["num_docks_available"]
            bikes = (second + i) % (capacity + 1)
            stations.append({**s, "num_bikes_available": bikes, "num_docks_available": capacity - bikes, "last_reported": second})
        return orjson.dumps({**self.template, "last_updated": second, "ttl": 1, "data": {"stations": stations}})


def settle(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_bikes_app_stays_fresh_when_30_percent_of_the_answers_are_faults(server: GBFSServer, log: SQLiteLog, tmp_path: Path) -> None:
    server.load_folder(HTTP / "velozef_2.2", VELOZEF)
    live = LiveStatus()
    server.route(STATUS, live)
    files = ["gbfs.json", "system_information.json", "station_information.json", "station_status.json", "free_bike_status.json"]
    server.flaky([VELOZEF + f for f in files], rate=0.3, seed=42)
    metrics = Metrics()
    # min_poll_s below the ttl: the feed's ttl (1 s) sets the pace
    source = GBFSSource(server.url(VELOZEF + "gbfs.json"), min_poll_s=0.5, timeout_s=2.0, metrics=metrics)
    pipelines = build_pipelines(source, serving_db=tmp_path / "serving.db", lake_root=tmp_path / "lake", lake_commit_ms=2000)
    rt = Runtime(log, metrics=metrics)
    for p in pipelines:
        rt.add(p)

    def received() -> set[int]:
        return {r.value["snapshot_ms"] // 1000 for r in read_topic(log, T_STATUS)} if log.topic_exists(T_STATUS) else set()

    start = now_ms() // 1000
    rt.start()
    try:
        time.sleep(18.0)
        last = live.freeze()
        # the last snapshot stays on offer; a fresh app reads it within a few retries
        settle(lambda: last in received(), timeout_s=10.0)
        wait_until(lambda: pipelines_drained(log, pipelines), timeout_s=30, what="the pipelines to drain", errors=rt.errors)
    finally:
        rt.stop()
    assert rt.errors == []

    published = set(range(start, last + 1))
    served, got = live.served, received()
    requests = len(server.requests_for(STATUS))
    faults = server.faults_served(STATUS)
    measured = f"{len(published)} snapshots published, {len(served)} served in full, {len(got)} reached {T_STATUS}; {faults} faults in {requests} requests"
    print(f"\nstation_status: {measured}")
    # the faults happened, about as often as asked, of every kind, and each was counted by the source
    assert 0.15 * requests <= faults <= 0.45 * requests
    assert {kind for _, kind in server.faults} == {"html", "truncated", "500", "503"}
    for kind, reason in (("html", "html"), ("truncated", "bad_document"), ("500", "http_500"), ("503", "http_503")):
        assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason=reason) == server.faults[STATUS, kind]
    # every snapshot served in full reached the topic, and those are at least half of what the feed published
    assert got <= published and got == served
    assert len(got) >= len(published) / 2, measured
    # what the app shows is fresh: the live per-station states carry the last snapshot
    assert max(got) == last
