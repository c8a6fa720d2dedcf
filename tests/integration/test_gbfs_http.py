"""GBFSSource against a real HTTP server on loopback: discovery, ttl, ETag / If-Modified-Since, bad answers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from tests.integration.gbfs_server import HTTP, Clock, GBFSServer, Reply, doc

from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import Metrics
from affluent.sources.gbfs import GBFSSource


@pytest.fixture
def server() -> Iterator[GBFSServer]:
    with GBFSServer() as s:
        yield s


def make_source(server: GBFSServer, system: str, **kw: Any) -> tuple[GBFSSource, Clock, Metrics]:
    server.load_folder(HTTP / system, f"/{system}/")
    clock, metrics = Clock(), Metrics()
    src = GBFSSource(server.url(f"/{system}/gbfs.json"), clock=clock, metrics=metrics, **kw)
    src.open(None)
    return src, clock, metrics


def feeds(records: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r.value["feed"]] = out.get(r.value["feed"], 0) + 1
    return out


def test_v2_2_poll_honours_ttl_and_etag(server: GBFSServer) -> None:
    src, clock, metrics = make_source(server, "velozef_2.2")
    first = src.poll()
    assert feeds(first.records) == {"system_information": 1, "station_information": 28, "station_status": 28, "vehicle_status": 154}
    assert src.system_id == "velozef" and src.name == "gbfs-velozef"  # a name made from the URL (the system says its id later)
    assert all(r.timestamp_ms == r.value["snapshot_ms"] for r in first.records)
    assert first.wait_s == 60  # station_status ttl
    assert {r.key for r in first.records if r.value["feed"] == "station_status"} == {r.value["station_id"] for r in first.records[1:29]}
    clock.now += 60
    again = src.poll()
    assert again.records == []
    status_requests = server.requests_for("/velozef_2.2/station_status.json")
    assert len(status_requests) == 2 and status_requests[1]["if-none-match"].startswith('"')
    assert metrics.get("affluent_gbfs_files_total", feed="station_status", outcome="not_modified") == 1
    # system_information (ttl 3600) is not asked for again before its time, nor after a 304
    assert len(server.requests_for("/velozef_2.2/system_information.json")) == 1
    for _ in range(61):
        clock.now += 60
        src.poll()
    assert len(server.requests_for("/velozef_2.2/system_information.json")) == 2
    assert len(server.requests_for("/velozef_2.2/station_status.json")) == 63


def test_unchanged_last_updated_is_skipped_without_validators() -> None:
    with GBFSServer(validators=None) as server:
        src, clock, metrics = make_source(server, "velozef_2.2", min_poll_s=1)
        assert len(src.poll().records) > 0
        clock.now += 60
        assert src.poll().records == []
        assert metrics.get("affluent_gbfs_files_total", feed="station_status", outcome="unchanged") == 1
        status = doc("velozef_2.2", "station_status.json")
        status["last_updated"] += 60
        server.put("/velozef_2.2/station_status.json", status)
        clock.now += 60
        got = src.poll()
        assert feeds(got.records) == {"station_status": 28}


def test_if_modified_since() -> None:
    with GBFSServer(validators="last-modified") as server:
        src, clock, metrics = make_source(server, "velozef_2.2")
        src.poll()
        clock.now += 60
        assert src.poll().records == []
        assert "if-modified-since" in server.requests_for("/velozef_2.2/station_status.json")[1]
        assert metrics.get("affluent_gbfs_files_total", feed="station_status", outcome="not_modified") == 1


@pytest.mark.parametrize(("ttl", "min_poll_s", "wait"), [(300, 30, 300), (0, 30, 30), (90_000, 30, 3600)])
def test_ttl_bounds_the_wait(server: GBFSServer, ttl: int, min_poll_s: float, wait: float) -> None:
    g = {
        "last_updated": 1773136800,
        "ttl": 86400,
        "version": "2.3",
        "data": {"en": {"feeds": [{"name": "station_status", "url": "{{base}}/s/station_status.json"}]}},
    }
    server.put("/s/gbfs.json", g)
    server.put("/s/station_status.json", {**doc("citybike_2.3", "station_status.json"), "ttl": ttl})
    src = GBFSSource(server.url("/s/gbfs.json"), min_poll_s=min_poll_s, clock=Clock(), metrics=Metrics(), system_id="s")
    assert src.poll().wait_s == wait


def test_v3_and_velib_like_feeds_over_http(server: GBFSServer) -> None:
    lyon, _, _ = make_source(server, "lyon_3.0")
    got = lyon.poll()
    assert feeds(got.records) == {"system_information": 1, "station_information": 2, "station_status": 2, "vehicle_status": 2}
    assert lyon.system_id == "lyon" and lyon.timezone == "Europe/Paris"
    assert got.wait_s == 30  # ttl 0: never faster than min_poll_s
    velib, _, metrics = make_source(server, "velib_1.0")
    got = velib.poll()
    assert feeds(got.records) == {"system_information": 1, "station_information": 2, "station_status": 2}
    assert [r.value["station_id"] for r in got.records if r.value["feed"] == "station_status"] == ["213688169", "36255"]
    assert metrics.get("affluent_gbfs_errors_total") == 0  # no vehicle feed is no error


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("503", "http_503"), ("500", "http_500"), ("html", "html"), ("truncated", "bad_document"), ("cut", "unreachable"), ("404", "not_found")],
)
def test_a_broken_answer_keeps_the_last_good_state(server: GBFSServer, caplog: pytest.LogCaptureFixture, reply: str, reason: str) -> None:
    src, clock, metrics = make_source(server, "velozef_2.2")
    src.poll()
    server.script("/velozef_2.2/station_status.json", reply)
    clock.now += 60
    with caplog.at_level(logging.ERROR, logger="affluent.sources.gbfs"):
        got = src.poll()  # the other feeds answered (304): no raise, nothing new
    assert got.records == []
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason=reason) == 1
    assert any("station_status failed" in r.getMessage() and "keeping the last good state" in r.getMessage() for r in caplog.records)
    # it comes back with a new snapshot
    status = doc("velozef_2.2", "station_status.json")
    status["last_updated"] += 120
    server.put("/velozef_2.2/station_status.json", status)
    clock.now += 3600
    got = src.poll()
    assert feeds(got.records).get("station_status") == 28
    assert src.states["station_status"].failures == 0


def test_when_every_due_feed_fails_poll_raises_with_retry_after(server: GBFSServer) -> None:
    g = {
        "last_updated": 1773136800,
        "ttl": 60,
        "version": "2.2",
        "data": {"en": {"feeds": [{"name": "station_status", "url": "{{base}}/s/station_status.json"}]}},
    }
    server.put("/s/gbfs.json", g)
    server.put("/s/station_status.json", doc("velozef_2.2", "station_status.json"))
    server.script("/s/station_status.json", Reply(429, b"{}", {"Retry-After": "120"}))
    metrics = Metrics()
    src = GBFSSource(server.url("/s/gbfs.json"), clock=Clock(), metrics=metrics, system_id="s", vehicles=False)
    clock = src.clock
    with pytest.raises(SourceUnavailableError) as info:
        src.poll()
    # station_status waits as long as the server asked; the runtime comes back when anything is due
    assert src.states["station_status"].due - clock() == 120
    assert info.value.retry_after_s is not None and 0 < info.value.retry_after_s <= 120
    assert metrics.get("affluent_gbfs_errors_total", reason="http_429") == 1


def test_unknown_version_is_an_error_not_a_crash(server: GBFSServer) -> None:
    src, clock, metrics = make_source(server, "velozef_2.2")
    src.poll()
    server.put("/velozef_2.2/station_status.json", (HTTP / "bad" / "station_status_unknown_version.json").read_bytes())
    clock.now += 60
    assert src.poll().records == []
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="unknown_version") == 1


def test_discovery_down_then_up(server: GBFSServer) -> None:
    server.script("/velozef_2.2/gbfs.json", "503", "html")
    src, _, metrics = make_source(server, "velozef_2.2")
    for _ in range(2):
        with pytest.raises(SourceUnavailableError):
            src.poll()
    assert metrics.get("affluent_gbfs_errors_total", feed="gbfs") == 2
    assert len(src.poll().records) > 0


def test_a_feed_that_moves_is_found_again(server: GBFSServer) -> None:
    src, clock, metrics = make_source(server, "velozef_2.2")
    src.poll()
    # station_status moves to a new URL: the old one answers 404, gbfs.json lists the new one
    moved = doc("velozef_2.2", "station_status.json")
    moved["last_updated"] += 60
    server.files.pop("/velozef_2.2/station_status.json")
    server.put("/velozef_2.2/v2/station_status.json", moved)
    g = doc("velozef_2.2", "gbfs.json")
    for f in g["data"]["en"]["feeds"]:
        if f["name"] == "station_status":
            f["url"] = "{{base}}/velozef_2.2/v2/station_status.json"
    server.put("/velozef_2.2/gbfs.json", g)
    clock.now += 30
    src._rediscover_at = clock.now + 1000  # the 404 must trigger the new discovery, not the ttl
    clock.now += 30
    assert src.poll().records == []
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="not_found") == 1
    clock.now += 3600
    got = src.poll()
    assert feeds(got.records).get("station_status") == 28


def test_station_without_coordinates_is_kept_and_counted(server: GBFSServer) -> None:
    server.put("/velozef_2.2/station_information.json", (HTTP / "bad" / "station_information_no_coordinates.json").read_bytes())
    src, _, metrics = make_source(server, "velozef_2.2")
    server.put("/velozef_2.2/station_information.json", (HTTP / "bad" / "station_information_no_coordinates.json").read_bytes())
    got = src.poll()
    info = [r.value for r in got.records if r.value["feed"] == "station_information"]
    assert len(info) == 28 and sum(i["lat"] is None for i in info) == 1
    assert metrics.get("affluent_gbfs_bad_records_total", feed="station_information", reason="missing_coordinates") == 1


def test_a_station_seen_first_in_status_gets_its_name_in_the_same_poll(server: GBFSServer) -> None:
    info = doc("velozef_2.2", "station_information.json")
    status = doc("velozef_2.2", "station_status.json")
    newcomer = dict(status["data"]["stations"][0], station_id="new-station")
    status["data"]["stations"].append(newcomer)
    with_new = {
        **info,
        "last_updated": info["last_updated"] + 1,
        "data": {"stations": [*info["data"]["stations"], {"station_id": "new-station", "name": "Brest Arena", "lat": 48.4, "lon": -4.44}]},
    }
    src, _, _ = make_source(server, "velozef_2.2")
    server.put("/velozef_2.2/station_status.json", status)
    # the publisher adds the station to station_information once status has shown it
    server.route("/velozef_2.2/station_information.json", lambda s: orjson.dumps(with_new if s.requests_for("/velozef_2.2/station_status.json") else info))
    got = src.poll()
    values = [r.value for r in got.records]
    order = [(v["feed"], v["station_id"]) for v in values if v.get("station_id") == "new-station"]
    assert order == [("station_information", "new-station"), ("station_status", "new-station")]
    # only what changed in station_information is emitted again
    assert sum(1 for v in values if v["feed"] == "station_information") == 28 + 1


def test_restart_resumes_without_duplicates(server: GBFSServer) -> None:
    src, _, _ = make_source(server, "velozef_2.2")
    first = src.poll()
    position = orjson.loads(orjson.dumps(first.position))
    src.close()
    again = GBFSSource(src.url, clock=Clock(), metrics=Metrics())
    again.open(position)
    got = again.poll()
    # names are read again on every start; states already emitted are not
    assert feeds(got.records) == {"system_information": 1, "station_information": 28}
    assert again.system_id == "velozef"


def test_an_unforeseen_failure_fails_that_file_only_and_it_is_read_again_in_full(server: GBFSServer) -> None:
    class Fragile(GBFSSource):
        """A normaliser with a bug for one file: what the source does when the unforeseen happens."""

        broken = False

        def _normalize(self, feed: str, env: Any, snapshot_ms: int) -> list[Any]:
            if feed == "station_status" and self.broken:
                raise KeyError("num_bikes_available")
            return super()._normalize(feed, env, snapshot_ms)

    server.load_folder(HTTP / "velozef_2.2", "/velozef_2.2/")
    clock, metrics = Clock(), Metrics()
    src = Fragile(server.url("/velozef_2.2/gbfs.json"), clock=clock, metrics=metrics)
    src.poll()
    status = doc("velozef_2.2", "station_status.json")
    status["last_updated"] += 60
    server.put("/velozef_2.2/station_status.json", status)
    src.broken = True
    clock.now += 60
    assert src.poll().records == []
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="bad_document") == 1
    src.broken = False
    clock.now += 3600
    assert feeds(src.poll().records) == {"station_status": 28}
    # the file that failed was not remembered: the retry still names the ETag of the last file read, so it comes in full
    first, failed, retry = server.requests_for("/velozef_2.2/station_status.json")
    assert "if-none-match" not in first and failed["if-none-match"] == retry["if-none-match"]


def test_a_feed_that_does_not_answer_in_time(server: GBFSServer) -> None:
    import time

    def slow(_s: GBFSServer) -> bytes:
        time.sleep(1.0)
        return (HTTP / "velozef_2.2" / "station_status.json").read_bytes()

    src, _, metrics = make_source(server, "velozef_2.2", timeout_s=0.3)
    server.route("/velozef_2.2/station_status.json", slow)
    got = src.poll()  # the other feeds answered
    assert [r for r in got.records if r.value["feed"] == "station_status"] == []
    assert metrics.get("affluent_gbfs_errors_total", feed="station_status", reason="timeout") == 1
    assert "no answer within 0.3 s" in (src.states["station_status"].error or "")
