"""The dashboard in a real browser, against `affluent up` as a user starts it.

`live_up`: `affluent up` with the bikes feed served by a loopback GBFS server (recorded VéloZef files,
one station renamed to an XSS payload) and the stock simulator. `offline_up`: `affluent up --offline`
(the bundled recording and the simulator, no map tiles), browsed with every non-loopback request
failing. Screenshots of every page, wide and phone-sized, land in tests/e2e/screenshots/.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.dashboard import Affluent, Page, wait_json
from tests.integration.gbfs_server import HTTP, GBFSServer

from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog

pytestmark = pytest.mark.slow

XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
PAGES = {"home": "", "bikes": "bikes", "stock": "stock", "jobs": "jobs", "crypto": "crypto", "api": "docs"}
READY = {
    "home": ".app-card",
    "bikes": "path.station",
    "stock": "#answers-note",
    "jobs": "path[data-code]",
    "crypto": "#markets tbody.in-top tr",
    "api": ".swagger-ui .info",
}
#: no France Travail credentials, whatever the environment holds: jobs replays its recording
NO_CREDENTIALS = {"FRANCE_TRAVAIL_CLIENT_ID": "", "FRANCE_TRAVAIL_CLIENT_SECRET": ""}
#: crypto's APIs on a loopback port where nothing listens: no network in tests, crypto replays its recordings
NO_CRYPTO_API = {"AFFLUENT__CRYPTO__COINGECKO_URL": "http://127.0.0.1:9/api/v3", "AFFLUENT__CRYPTO__BINANCE_REST_URL": "http://127.0.0.1:9"}


def fixture_stations() -> dict[str, dict[str, Any]]:
    """The VéloZef fixture's stations: information and status merged, by station id."""
    info = orjson.loads((HTTP / "velozef_2.2" / "station_information.json").read_bytes())["data"]["stations"]
    status = orjson.loads((HTTP / "velozef_2.2" / "station_status.json").read_bytes())["data"]["stations"]
    by_id = {s["station_id"]: dict(s) for s in info}
    for s in status:
        by_id[s["station_id"]].update(s)
    return by_id


def fill_class(s: dict[str, Any]) -> str:
    """The legend's classes: empty, 1-33 %, 34-66 %, 67-99 %, full, not renting."""
    if not s["is_installed"] or not s["is_renting"]:
        return "closed"
    bikes, docks = s["num_bikes_available"], s["num_docks_available"]
    if bikes == 0:
        return "empty"
    if docks == 0:
        return "full"
    ratio = bikes / (s.get("capacity") or bikes + docks)
    return "low" if ratio <= 1 / 3 else "mid" if ratio <= 2 / 3 else "high"


def visit(page: Page, base: str, name: str) -> None:
    """Open one of PAGES and wait until it shows its data (the API page has no live connection)."""
    if name == "api":
        page.page.goto(base + PAGES[name])
        page.page.wait_for_selector(READY[name], timeout=15_000)
    else:
        page.open(base + PAGES[name], READY[name])


@pytest.fixture(scope="module")
def gbfs() -> Iterator[GBFSServer]:
    with GBFSServer() as server:
        server.load_folder(HTTP / "velozef_2.2", prefix="/velozef_2.2/")
        info = orjson.loads((HTTP / "velozef_2.2" / "station_information.json").read_bytes())
        info["data"]["stations"][0]["name"] = XSS + " Liberté"
        server.put("/velozef_2.2/station_information.json", info)
        yield server


@pytest.fixture(scope="module")
def live_up(tmp_path_factory: pytest.TempPathFactory, gbfs: GBFSServer) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("up")
    app = Affluent(folder, "up", "--quiet", "--port", "0", env={"AFFLUENT__BIKES__FEED": gbfs.url("/velozef_2.2/gbfs.json"), **NO_CREDENTIALS, **NO_CRYPTO_API})
    try:
        url = app.wait_for_url()
        wait_json(
            url + "api/apps",
            lambda apps: {a["app"]: a["state"] for a in apps} == {"bikes": "running", "stock": "simulating", "jobs": "replaying", "crypto": "replaying"},
            what="the four apps",
        )
        wait_json(url + "api/bikes/stations", lambda rows: len(rows) == 28, what="28 stations in the serving store")
        yield url, folder
    finally:
        app.stop()
    assert "Traceback" not in app.output, app.output


@pytest.fixture(scope="module")
def offline_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("offline")
    app = Affluent(folder, "up", "--offline", "--quiet", "--port", "0")
    try:
        url = app.wait_for_url()
        wait_json(
            url + "api/apps",
            lambda apps: {a["app"]: a["state"] for a in apps} == {"bikes": "replaying", "stock": "simulating", "jobs": "replaying", "crypto": "replaying"},
            what="offline apps",
        )
        wait_json(url + "api/bikes/stations", lambda rows: len(rows) > 0, what="replayed stations")
        yield url
    finally:
        app.stop()


@pytest.mark.parametrize("size", ["wide", "phone"])
@pytest.mark.parametrize("name", list(PAGES))
def test_page_loads_without_console_errors(browser: Any, live_up: tuple[str, Path], name: str, size: str) -> None:
    url, _ = live_up
    width, height = (1280, 800) if size == "wide" else (390, 844)
    page = Page(browser, width=width, height=height, block_network=True)
    try:
        visit(page, url, name)
        page.page.wait_for_timeout(1500)  # charts and the lake's answers
        page.screenshot(f"{name}-{size}")
        # tiles are on (the server is online) but the network is blocked here: their failures are expected
        errors = [e for e in page.errors if "tile.openstreetmap.org" not in e and "ERR_INTERNET_DISCONNECTED" not in e]
        assert errors == []
        if size == "phone":  # nothing wider than the phone: no sideways scrolling of the page
            assert page.page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        page.close()


def test_home_shows_each_apps_state(browser: Any, live_up: tuple[str, Path]) -> None:
    url, _ = live_up
    page = Page(browser)
    try:
        p = page.open(url, ".app-card[data-app=stock]")
        p.wait_for_selector(".app-card[data-app=bikes][data-state=running]")
        assert p.get_attribute(".app-card[data-app=stock]", "data-state") == "simulating"
        assert "offline: runs a simulator" in p.inner_text(".app-card[data-app=stock]")
        assert "records/s" in p.inner_text(".app-card[data-app=bikes]")
        # jobs, without credentials, replays its recording and says why
        assert p.get_attribute(".app-card[data-app=jobs]", "data-state") == "replaying"
        assert "no France Travail credentials" in p.inner_text(".app-card[data-app=jobs]")
    finally:
        page.close()


def test_bikes_map_has_one_marker_per_fixture_station_coloured_as_the_fixture_says(browser: Any, live_up: tuple[str, Path]) -> None:
    url, _ = live_up
    stations = fixture_stations()
    page = Page(browser)
    try:
        p = page.open(url + "bikes", "path.station")
        p.wait_for_function(f"document.querySelectorAll('path.station').length === {len(stations)}")
        shown = p.eval_on_selector_all("path.station", "ps => ps.map(p => [p.dataset.station, p.dataset.fill, p.getAttribute('fill')])")
        assert {sid: cls for sid, cls, _ in shown} == {sid: fill_class(s) for sid, s in stations.items()}
        # the legend's colour for each class is the markers' colour
        legend = dict(p.eval_on_selector_all(".legend .item i", "is => is.map(i => [i.parentElement.textContent, getComputedStyle(i).backgroundColor])"))
        assert len(legend) >= 6
        colours = {cls: {fill for _, c, fill in shown if c == cls} for cls in {c for _, c, _ in shown}}
        assert all(len(v) == 1 for v in colours.values()), colours
        # a popup shows the fixture's numbers
        sid, s = next((sid, s) for sid, s in stations.items() if fill_class(s) in ("low", "mid", "high"))
        p.click(f"path.station[data-station='{sid}']", force=True)
        text = p.inner_text(".leaflet-popup-content")
        assert s["name"] in text
        assert f"bikes\n{s['num_bikes_available']}" in text and f"docks\n{s['num_docks_available']}" in text
        assert f"capacity\n{s['capacity']}" in text
        # the top 3 by range of the latest vehicle snapshot, however old the fixture's times
        p.wait_for_function("document.querySelectorAll('#top-range tbody tr').length === 3", timeout=5_000)
    finally:
        page.close()


def test_station_name_with_markup_renders_as_text(browser: Any, live_up: tuple[str, Path]) -> None:
    url, _ = live_up
    first = next(iter(fixture_stations()))
    page = Page(browser)
    try:
        p = page.open(url + "bikes", "path.station")
        p.click(f"path.station[data-station='{first}']", force=True)
        popup = p.wait_for_selector(".leaflet-popup-content h3")
        assert popup.inner_text() == XSS + " Liberté"
        assert p.query_selector(".leaflet-popup-content img, .leaflet-popup-content script") is None
        p.wait_for_timeout(300)
        assert page.dialogs == []
    finally:
        page.close()


def test_an_appended_record_is_on_screen_within_2_seconds(browser: Any, live_up: tuple[str, Path]) -> None:
    """A low-stock reading appended to stock.readings shows in the stock page's live alerts, and on the home page."""
    url, folder = live_up
    store = f"{XSS}-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    reading = {
        "sensor_id": "shelf-e2e",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "product_id": "parapluie",
        "quantity": 1,
        "threshold": 3,
        "location": {"store": store, "lat": 47.2, "lon": -1.55},
        "alert": True,
        "store_id": store,
        "reading_id": f"e2e-{uuid.uuid4().hex}",
    }
    stock, home = Page(browser), Page(browser)
    log = SQLiteLog(folder / ".affluent" / "affluent.db")
    try:
        sp = stock.open(url + "stock", "#stock-alerts")
        hp = home.open(url, "#alerts")
        started = time.monotonic()
        log.append("stock.readings", [Record(value=reading, key=f"{store}/parapluie", timestamp_ms=int(now.timestamp() * 1000))])
        title = f"parapluie low at {store}"
        sp.wait_for_function("t => document.querySelector('#stock-alerts').innerText.includes(t)", arg=title, timeout=5_000)
        on_stock = time.monotonic() - started
        hp.wait_for_function("t => document.querySelector('#alerts').innerText.includes(t)", arg=title, timeout=5_000)
        on_home = time.monotonic() - started
        assert on_stock < 2.0 and on_home < 2.0, (on_stock, on_home)
        # the store's name is markup: shown as text, run never
        assert sp.query_selector("#stock-alerts img, #stock-alerts script") is None
        assert stock.dialogs == [] and home.dialogs == []
        # and the restock request it opened is listed
        sp.wait_for_function("t => document.querySelector('#restock').innerText.includes(t)", arg=store, timeout=5_000)
    finally:
        log.close()
        stock.close()
        home.close()


@pytest.mark.parametrize("name", ["home", "bikes", "stock", "jobs", "crypto", "api"])
def test_pages_work_offline_with_the_network_blocked(browser: Any, offline_up: str, name: str) -> None:
    page = Page(browser, block_network=True)
    try:
        visit(page, offline_up, name)
        page.page.wait_for_timeout(1000)
        page.screenshot(f"{name}-offline")
        assert page.errors == []
        outside = [u for u in page.requests if not u.startswith(offline_up.rstrip("/")) and not u.startswith("data:")]
        assert outside == []  # no tile, no CDN: nothing but the dashboard itself
        if name == "bikes":
            assert page.page.eval_on_selector_all("path.station", "ps => ps.length") > 0
            # the cards beside the map show the bikes the API lists, from the first load
            problems = httpx.get(offline_up + "api/bikes/problems", timeout=10).json()
            abandoned = sum(1 for b in problems if b["is_abandoned"])
            assert abandoned > 0
            page.page.wait_for_function("n => document.querySelector('[data-problem=abandoned]').textContent === String(n)", arg=abandoned, timeout=5_000)
            # the départements' outlines stand in for tiles
            assert page.page.eval_on_selector_all(".leaflet-base-pane path", "ps => ps.length") > 0
    finally:
        page.close()


def test_a_page_says_when_its_app_is_not_running(browser: Any, tmp_path: Path) -> None:
    """`affluent web` with no app running: the pages say so rather than pass old or empty figures for live ones."""
    web = Affluent(tmp_path, "web", "--port", "0", "--offline")
    page = Page(browser)
    try:
        url = web.wait_for_url()
        for name in ("bikes", "stock", "jobs", "crypto"):
            p = page.open(url + name)
            p.wait_for_selector(".notice:not([hidden])", timeout=10_000)
            assert p.inner_text(".notice").startswith(f"{name} is not running: no process runs it")
        assert page.errors == []
    finally:
        page.close()
        web.stop()
