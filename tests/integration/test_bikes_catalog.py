"""The GBFS systems catalogue: MobilityData's whole systems.csv bundled, refreshed from a URL when online and cached
with its date, the cache or the bundled copy otherwise, and the `affluent bikes systems` output saying which.

A real HTTP server on loopback stands for GitHub: no test here touches the network."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from affluent.apps.bikes import commands
from affluent.apps.bikes.app import resolve_feed
from affluent.apps.bikes.catalog import BUNDLED_DATE, CACHE_FILE, DEFAULT_CATALOG_URL, find_system, load_catalog, load_systems
from affluent.core.errors import ConfigError

HEADER = (
    "Country Code,Name,Location,System ID,URL,Auto-Discovery URL,Supported Versions,Authentication Info URL,Authentication Type,Authentication Parameter Name\n"
)
SMALL = HEADER + (
    "FR,VéloZef,Brest,velozef,https://x,https://gbfs.example/brest/gbfs.json,2.2 ; 3.0,,,\n"
    "ZZ,Newbike Testville,Testville,newbike_tv,https://y,https://gbfs.example/newbike/gbfs.json,3.0,,,\n"
)
DEAD_URL = "http://127.0.0.1:9/systems.csv"  # nothing listens on port 9: refused at once


@dataclass
class CatalogServer:
    """systems.csv on loopback: `body` and `status` can change between requests; `hits` counts them."""

    body: str = SMALL
    status: int = 200
    hits: int = 0
    url: str = ""
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)


@pytest.fixture
def server() -> Iterator[CatalogServer]:
    state = CatalogServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits += 1
            data = state.body.encode("utf-8")
            self.send_response(state.status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/MobilityData/gbfs/master/systems.csv"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def test_the_whole_catalogue_is_bundled_with_its_attribution() -> None:
    systems = load_systems()
    assert len(systems) == 1520
    notice = (resources.files("affluent.apps.bikes") / "data" / "systems.ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "MobilityData" in notice and "CC BY 3.0" in notice
    assert DEFAULT_CATALOG_URL == "https://raw.githubusercontent.com/MobilityData/gbfs/master/systems.csv"
    # the ids the other tests and the default settings use still resolve
    for system_id, url in (
        ("velozef", "https://gbfs.partners.fifteen.eu/gbfs/2.2/brest/en/gbfs.json"),
        ("lyon", "https://api.cyclocity.fr/contracts/lyon/gbfs/v3/gbfs.json"),
        ("Paris", "https://velib-metropole-opendata.smovengo.cloud/opendata/Velib_Metropole/gbfs.json"),
    ):
        assert resolve_feed(system_id) == (url, system_id)
        assert find_system(url).system_id == system_id  # type: ignore[union-attr]
    assert len({s.country for s in systems}) > 40 and sum(s.country == "FR" for s in systems) > 200


def test_online_the_catalogue_is_downloaded_and_cached_with_its_date(server: CatalogServer, tmp_path: Path) -> None:
    cat = load_catalog(tmp_path, url=server.url)
    assert (cat.origin, cat.date, cat.source, cat.note) == ("downloaded", today(), server.url, "")
    assert [s.system_id for s in cat.systems] == ["velozef", "newbike_tv"]
    assert cat.systems[0].versions == ("2.2", "3.0")
    assert (tmp_path / CACHE_FILE).read_text(encoding="utf-8") == SMALL
    meta = orjson.loads((tmp_path / CACHE_FILE).with_suffix(".json").read_bytes())
    assert meta["url"] == server.url and meta["systems"] == 2
    assert datetime.fromtimestamp(meta["fetched_ms"] / 1000, UTC).strftime("%Y-%m-%d") == today()
    assert f"downloaded today ({today()}) from {server.url}" in cat.describe() and "MobilityData" in cat.describe()
    # a copy less than a day old is used as it is; --refresh downloads again
    again = load_catalog(tmp_path, url=server.url)
    assert (again.origin, again.date, server.hits) == ("cache", today(), 1)
    server.body = SMALL + "DE,Third,Berlin,third,https://z,https://gbfs.example/third/gbfs.json,2.3,,,\n"
    fresh = load_catalog(tmp_path, url=server.url, refresh=True)
    assert (fresh.origin, len(fresh.systems), server.hits) == ("downloaded", 3, 2)
    assert load_catalog(tmp_path, url=server.url, max_age_s=0).origin == "downloaded" and server.hits == 3
    # a system known only to the downloaded copy runs by its ID (from the cache, without asking again)
    assert resolve_feed("third", tmp_path) == ("https://gbfs.example/third/gbfs.json", "third")
    assert resolve_feed("velozef", tmp_path)[1] == "velozef" and server.hits == 3
    with pytest.raises(ConfigError, match="neither a GBFS discovery URL nor a System ID"):
        resolve_feed("third")  # the bundled copy alone does not know it


def test_a_failed_refresh_falls_back_to_the_cache_then_to_the_bundled_copy(server: CatalogServer, tmp_path: Path) -> None:
    # no cache yet, and the server fails: the bundled copy, and why
    server.status = 503
    cat = load_catalog(tmp_path, url=server.url)
    assert (cat.origin, cat.date, len(cat.systems)) == ("bundled", BUNDLED_DATE, 1520)
    assert "503" in cat.note and server.url in cat.note
    assert not (tmp_path / CACHE_FILE).exists()
    # a page that is not a systems.csv (a captive portal, an error page served with 200) is not cached
    server.status, server.body = 200, "<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>"
    cat = load_catalog(tmp_path, url=server.url)
    assert cat.origin == "bundled" and "not a GBFS systems.csv" in cat.note and not (tmp_path / CACHE_FILE).exists()
    # once downloaded, the cache is what a failure falls back to, with the day it was downloaded
    server.body = SMALL
    assert load_catalog(tmp_path, url=server.url).origin == "downloaded"
    server.status = 500
    cat = load_catalog(tmp_path, url=server.url, refresh=True)
    assert (cat.origin, cat.date, len(cat.systems)) == ("cache", today(), 2)
    assert "500" in cat.note and f"cached copy of {today()}" in cat.describe()
    # unreachable: the same
    cat = load_catalog(tmp_path, url=DEAD_URL)
    assert (cat.origin, cat.date) == ("cache", today()) and "ConnectError" in cat.note
    # offline: no request at all
    hits = server.hits
    cat = load_catalog(tmp_path, url=server.url, offline=True, refresh=True)
    assert (cat.origin, cat.note, server.hits) == ("cache", "offline", hits)
    # a damaged cache is ignored
    (tmp_path / CACHE_FILE).with_suffix(".json").write_text("{not json")
    cat = load_catalog(tmp_path, url=server.url, offline=True)
    assert (cat.origin, cat.date, cat.note) == ("bundled", BUNDLED_DATE, "offline")
    credit = "[GBFS systems catalogue by MobilityData (github.com/MobilityData/gbfs), CC BY 3.0]"
    assert cat.describe() == f"catalogue: bundled copy of {BUNDLED_DATE}; offline {credit}"


def test_the_systems_command_says_which_catalogue(server: CatalogServer, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"AFFLUENT__DATA_DIR": str(tmp_path / "data"), "AFFLUENT__OFFLINE": "false", "COLUMNS": "200"}
    out = runner.invoke(commands, ["systems", "--catalog-url", server.url], env=env)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith(f"catalogue: downloaded today ({today()}) from {server.url}")
    assert lines[1].startswith("2 GBFS systems")
    assert "newbike_tv  Newbike Testville (Testville), GBFS 3.0" in out.output
    assert (tmp_path / "data" / CACHE_FILE).exists()
    # the URL can also come from the environment; this one fails, so the cached copy is used, and said so
    out = runner.invoke(commands, ["systems", "--refresh", "--search", "newbike"], env={**env, "AFFLUENT__BIKES__CATALOG_URL": DEAD_URL})
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"catalogue: cached copy of {today()} ({server.url}); the download from {DEAD_URL} failed (ConnectError")
    assert "1 GBFS systems" in out.output and "newbike_tv" in out.output
    # nothing cached and no way to download: the bundled copy, with its date
    out = runner.invoke(commands, ["systems", "--country", "FR", "--catalog-url", DEAD_URL], env={**env, "AFFLUENT__DATA_DIR": str(tmp_path / "empty")})
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"catalogue: bundled copy of {BUNDLED_DATE}; the download from {DEAD_URL} failed")
    assert "velozef  VéloZef (Brest), GBFS 2.2" in out.output and int(out.output.splitlines()[1].split()[0]) > 200
    # --offline never asks
    hits = server.hits
    out = runner.invoke(commands, ["systems", "--offline", "--refresh", "--catalog-url", server.url], env=env)
    assert out.exit_code == 0 and out.output.startswith(f"catalogue: cached copy of {today()}") and "; offline" in out.output
    assert server.hits == hits
