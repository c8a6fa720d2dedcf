"""`affluent web` in its own process, beside `affluent run` in another: live tables and live updates.

The serving store is SQLite in WAL mode, so the dashboard reads what another process writes while
it writes it; statuses come from the log. Nothing here reads a runtime's internals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.dashboard import Affluent, sse_events, wait_json
from tests.integration.gbfs_server import HTTP, GBFSServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def apps_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`affluent run bikes` and `affluent run stock` in two processes, `affluent web` in a third, one folder."""
    folder = tmp_path_factory.mktemp("web")
    with GBFSServer() as gbfs:
        gbfs.load_folder(HTTP / "velozef_2.2", prefix="/velozef_2.2/")
        bikes = Affluent(folder, "run", "bikes", "--quiet", "--feed", gbfs.url("/velozef_2.2/gbfs.json"))
        stock = Affluent(folder, "run", "stock", "--quiet", env={"AFFLUENT__STOCK__PERIOD_S": "0.5"})
        web = Affluent(folder, "web", "--port", "0")
        try:
            url = web.wait_for_url()
            yield url, folder
        finally:
            for p in (web, bikes, stock):
                p.stop()
        for p in (web, bikes, stock):
            assert "Traceback" not in p.output, p.output


def test_web_reads_the_serving_store_another_process_writes(apps_elsewhere: tuple[str, Path]) -> None:
    url, _ = apps_elsewhere
    rows = wait_json(url + "api/bikes/stations", lambda r: len(r) == 28, what="the 28 stations written by `affluent run bikes`")
    fixture = {s["station_id"]: s for s in orjson.loads((HTTP / "velozef_2.2" / "station_status.json").read_bytes())["data"]["stations"]}
    assert {r["station_id"]: r["num_bikes_available"] for r in rows} == {k: s["num_bikes_available"] for k, s in fixture.items()}
    assert all(type(r["is_renting"]) is bool for r in rows)
    apps = wait_json(
        url + "api/apps",
        lambda a: (
            {x["app"]: (x["state"], x["records"] > 0) for x in a}
            == {
                "bikes": ("running", True),
                "stock": ("simulating", True),
                "jobs": ("not running", False),
                "crypto": ("not running", False),
            }
        ),
        what="both apps, with records",
    )
    stock = next(a for a in apps if a["app"] == "stock")
    assert stock["dead_letters"] == 0 and stock["reason"] == "offline: runs a simulator"
    assert {p["name"] for p in stock["pipelines"]} == {"stock", "stock-lake"}


def test_live_updates_cross_processes(apps_elsewhere: tuple[str, Path]) -> None:
    """The stock simulator writes every 0.5 s in its own process: the stream carries a snapshot, then deltas."""
    url, _ = apps_elsewhere
    wait_json(url + "api/stock/stores", lambda r: len(r) == 3, what="three stores")

    def enough(events: list[tuple[str, dict[str, Any]]]) -> bool:
        return sum(1 for n, e in events if n == "stock.stores" and e["kind"] == "delta") >= 2

    events = sse_events(url + "api/events?channels=stock.stores,apps", until=enough)
    first = [(n, e["kind"]) for n, e in events[:2]]
    assert sorted(first) == [("apps", "snapshot"), ("stock.stores", "snapshot")]
    snapshot = next(e["data"] for n, e in events if n == "stock.stores")
    assert len(snapshot["rows"]) == 3 and snapshot["key"] == ["store_id"]
    deltas = [e["data"] for n, e in events if n == "stock.stores" and e["kind"] == "delta"]
    assert all(d["upsert"] and not d["delete"] for d in deltas)
    newest = max(r["last_ms"] for r in snapshot["rows"])
    assert max(r["last_ms"] for d in deltas for r in d["upsert"]) > newest


def test_an_unknown_channel_is_a_clear_404(apps_elsewhere: tuple[str, Path]) -> None:
    url, _ = apps_elsewhere
    resp = httpx.get(url + "api/events?channels=nope", timeout=5)
    assert resp.status_code == 404 and "unknown channel(s) ['nope']" in resp.json()["detail"]


def test_openapi_documents_the_json_api(apps_elsewhere: tuple[str, Path]) -> None:
    url, _ = apps_elsewhere
    spec = httpx.get(url + "openapi.json", timeout=5).json()
    for path in ("/api/apps", "/api/alerts", "/api/events", "/api/bikes/stations", "/api/bikes/day", "/api/stock/restock", "/api/stock/answers"):
        assert path in spec["paths"], path
    page = httpx.get(url + "docs", timeout=5)
    assert page.status_code == 200 and "/static/vendor/swagger-ui/swagger-ui-bundle.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_answers_over_the_lake_from_another_process(apps_elsewhere: tuple[str, Path]) -> None:
    url, _ = apps_elsewhere
    got = httpx.get(url + "api/stock/answers", params={"since": "2020-01-01"}, timeout=30).json()
    # the lake is written every 30 s: either answers, or a note saying there is nothing yet
    assert got["readings"] > 0 or "no 'stock_readings' data yet" in got["note"]
    bad = httpx.get(url + "api/stock/answers", params={"since": "yesterday-ish"}, timeout=30)
    assert bad.status_code == 422


def test_a_busy_port_is_a_clear_error(apps_elsewhere: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = apps_elsewhere
    port = url.rstrip("/").rsplit(":", 1)[1]
    other = Affluent(tmp_path, "web", "--port", port)
    try:
        other.proc.wait(30)
    finally:
        other.stop()
    assert other.proc.returncode == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in other.output and "choose another --port" in other.output


def test_odd_requests_get_clear_answers_never_a_500(apps_elsewhere: tuple[str, Path]) -> None:
    url, _ = apps_elsewhere
    for path, params in [
        ("api/bikes/day", {"day": "0001-01-01"}),
        ("api/bikes/day", {"day": "9999-12-31"}),
        ("api/stock/answers", {"since": "0001-01-01", "until": "9999-12-31"}),
        ("api/events", {"channels": ""}),
        ("api/events", {"channels": ","}),
    ]:
        resp = httpx.get(url + path, params=params, timeout=30)
        assert resp.status_code == 422, (path, params, resp.status_code, resp.text)
    # served on loopback, the dashboard answers only to a loopback name (no DNS rebinding)
    assert httpx.get(url + "api/apps", headers={"Host": "evil.example"}, timeout=5).status_code == 400
    assert httpx.head(url, timeout=5).status_code == 200


def test_an_alert_of_another_shape_does_not_break_the_feed(apps_elsewhere: tuple[str, Path]) -> None:
    from affluent.core.records import Record
    from affluent.core.sqlite_log import SQLiteLog

    url, folder = apps_elsewhere
    log = SQLiteLog(folder / ".affluent" / "affluent.db")
    try:
        log.create_topic("bikes.vehicle_alerts")
        log.append("bikes.vehicle_alerts", [Record(value="just a string", timestamp_ms=int(time.time() * 1000))])
    finally:
        log.close()
    alerts = httpx.get(url + "api/alerts", params={"limit": 5}, timeout=10)
    assert alerts.status_code == 200
    assert alerts.json()[0]["title"] == "an alert this version cannot read"


def test_sigterm_stops_like_ctrl_c(tmp_path: Path) -> None:
    """systemd and docker stop with SIGTERM: pipelines commit, release, and say "stopped"."""
    import signal

    from affluent.core.sqlite_log import SQLiteLog

    run = Affluent(tmp_path, "run", "stock", "--quiet")
    db = tmp_path / ".affluent" / "affluent.db"
    try:
        deadline = time.monotonic() + 30
        while not (db.exists() and SQLiteLog(db).statuses().get("stock", {}).get("records")):
            assert time.monotonic() < deadline, run.output
            time.sleep(0.2)
        run.proc.send_signal(signal.SIGTERM)
        assert run.proc.wait(15) == 0, run.output
    finally:
        run.stop()
    log = SQLiteLog(db)
    try:
        assert {n: s["status"] for n, s in log.statuses().items()} == {"stock": "stopped", "stock-lake": "stopped"}
    finally:
        log.close()


def test_stopping_with_a_browser_tab_open_ends_its_stream_cleanly(tmp_path: Path) -> None:
    """Ctrl+C with a live-updates stream open: the stream ends, the server exits at once, no traceback."""
    import signal
    import threading

    web = Affluent(tmp_path, "web", "--port", "0")
    ended: list[str] = []
    try:
        url = web.wait_for_url()

        def read() -> None:
            try:
                with httpx.stream("GET", url + "api/events?channels=apps", timeout=30) as resp:
                    for _ in resp.iter_bytes():
                        pass
                ended.append("ended")
            except httpx.HTTPError as exc:
                ended.append(f"cut: {exc!r}")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_json(url + "api/apps", lambda a: len(a) == 4, what="the apps")
        time.sleep(0.5)  # the stream is open, its snapshot sent
        t0 = time.monotonic()
        web.proc.send_signal(signal.SIGINT)
        assert web.proc.wait(15) == 0, web.output
        reader.join(5)
        took = time.monotonic() - t0
    finally:
        web.stop()
    assert ended == ["ended"], web.output
    assert "Traceback" not in web.output and "Exception in ASGI application" not in web.output, web.output
    assert took < 2.0, f"{took:.1f} s: the server waited out its graceful timeout for the open stream"
