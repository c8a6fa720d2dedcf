"""The jobs page in a real browser, over a serving store and a log filled here (not by the jobs app).

`affluent web --offline` serves a folder whose serving store holds the offers of the integration
tests (`tests/integration/test_web_jobs.py`: HTML titles, Corsica, Paris arrondissements, overseas)
plus a few hundred more spread over every département, with their aggregates; the log's `jobs.offers`
topic holds them too. Chromium opens /jobs with every non-loopback request failing. Screenshots land in
tests/e2e/screenshots/jobs*.png.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.e2e.dashboard import Affluent, Page, wait_json
from tests.integration.test_web_jobs import BOLD, CONTRACT, GD, MIN, SERVEUR, XSS, expected, fill, geo_codes, make_offers, paris_day

from affluent.core.clock import now_ms
from affluent.core.sqlite_log import SQLiteLog

pytestmark = pytest.mark.slow

GEO = Path(__file__).resolve().parents[2] / "src" / "affluent" / "web" / "static" / "geo" / "departements.json"
#: départements left with no offer at all, to see the scale's zero
EMPTY = {"23", "48", "976"}


def centres() -> dict[str, tuple[str, float, float]]:
    """Each département's name and the mean point of its largest outline (close enough to its middle)."""
    out = {}
    for f in orjson.loads(GEO.read_bytes())["features"]:
        g = f["geometry"]
        rings = [g["coordinates"][0]] if g["type"] == "Polygon" else [p[0] for p in g["coordinates"]]
        ring = max(rings, key=len)
        out[f["properties"]["code"]] = (f["properties"]["nom"], sum(p[1] for p in ring) / len(ring), sum(p[0] for p in ring) / len(ring))
    return out


def more_offers(now: int) -> list[dict[str, Any]]:
    """A few hundred offers over every département but EMPTY, skewed like real ones, older than the SPEC ones (40 minutes or more)."""
    rng = random.Random(29)
    base = make_offers(now)[0]
    out = []
    for code, (name, lat, lon) in centres().items():
        if code in EMPTY:
            continue
        n = min(90, int(rng.paretovariate(1.1) * 3)) + (60 if code in ("75", "69", "13", "33", "59") else 0)
        for i in range(n):
            k = rng.randrange(4) + 1
            commune = f"{code}{k:03d}" if len(code) == 2 else f"{code}{k:02d}"
            gd, contract = rng.choice(list(GD)), rng.choice(list(CONTRACT))
            created = now - rng.choice([40, 90, 200, 1500, 3000, 8000, 12000, 25000]) * MIN - rng.randrange(60) * MIN
            title = rng.choice([SERVEUR, "Aide-soignant / Aide-soignante", "Cariste", "Comptable", "Vendeur / Vendeuse en magasin", "Maçon / Maçonne"])
            out.append(
                {
                    **base,
                    "offer_id": f"b{code}-{i}",
                    "title": title,
                    "appellation": title,
                    "company": f"Entreprise {i}",
                    "created_ms": created,
                    "updated_ms": created,
                    "versions": 1,
                    "day": paris_day(created),
                    "departement": code,
                    "departement_name": name,
                    "commune": commune,
                    "commune_name": f"{name} {k}",
                    "city": commune,
                    "city_name": f"{name} {k}",
                    "place": f"{code} - {name} {k}",
                    "lat": lat + (k - 2.5) * 0.08,
                    "lon": lon + ((k * 7) % 5 - 2) * 0.1,
                    "grand_domaine": gd,
                    "grand_domaine_label": GD[gd],
                    "contract": contract,
                    "contract_label": CONTRACT[contract],
                    "url": f"https://candidat.francetravail.fr/offres/recherche/detail/b{code}{i}",
                }
            )
    return out


class Folder:
    """An affluent folder with the jobs tables and topic, and `affluent web --offline` serving it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = now_ms()
        self.offers = make_offers(self.now) + more_offers(self.now)
        data = root / ".affluent"
        data.mkdir()
        self.serving = data / "serving.db"
        self.log = SQLiteLog(data / "affluent.db")
        fill(self.serving, self.log, self.offers)
        self.web = Affluent(root, "web", "--offline", "--port", "0")
        self.url = self.web.wait_for_url()

    def add(self, offer: dict[str, Any]) -> None:
        self.offers.append(offer)
        fill(self.serving, self.log, self.offers, publish=[offer])

    def close(self) -> None:
        self.web.stop()
        self.log.close()
        assert "Traceback" not in self.web.output, self.web.output


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    folder = Folder(tmp_path_factory.mktemp("jobs"))
    try:
        wait_json(folder.url + "api/jobs/departements", lambda r: r["total"] == len(folder.offers), what="the offers filled in")
        yield folder
    finally:
        folder.close()


def shown(p: Any) -> dict[str, tuple[int, str, bool]]:
    """code -> (offers, fill colour, in an inset) of every département path on the page."""
    rows = p.eval_on_selector_all(
        "path.dep[data-code]", "ps => ps.map(p => [p.dataset.code, p.dataset.offers, p.getAttribute('fill'), !!p.closest('.jobs-insets')])"
    )
    assert len(rows) == len({r[0] for r in rows}), "a département drawn twice"
    return {code: (int(n), fill, inset) for code, n, fill, inset in rows}


def legend(p: Any) -> list[tuple[int, int, str, str]]:
    """The legend's classes: (min, max, colour, the swatch's computed colour)."""
    return [
        (int(lo), int(hi), c, bg)
        for lo, hi, c, bg in p.eval_on_selector_all(
            ".jobs-legend .item", "is => is.map(i => [i.dataset.min, i.dataset.max, i.dataset.colour, getComputedStyle(i.querySelector('i')).backgroundColor])"
        )
    ]


def number(text: str) -> int:
    """A number as the page shows it (with the browser's thousands separator)."""
    return int("".join(ch for ch in text if ch.isdigit()))


def rgb(hex_: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_[i : i + 2], 16) for i in (1, 3, 5)))


def wait_counts(p: Any, want: Counter[str]) -> None:
    """Until every département path shows the expected count."""
    target = {c: want.get(c, 0) for c in geo_codes()}
    p.wait_for_function(
        "t => { const ps = document.querySelectorAll('path.dep[data-code]'); return ps.length === 101 && "
        "[...ps].every(p => p.dataset.offers === String(t[p.dataset.code])); }",
        arg=target,
        timeout=10_000,
    )


def check_colours(p: Any) -> None:
    classes = legend(p)
    assert classes[0][:2] == (0, 0) and len(classes) >= 3
    # classes follow each other with no gap nor overlap, up to the largest count
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(classes))
    for code, (n, colour, _) in shown(p).items():
        held = [c for c in classes if c[0] <= n <= c[1]]
        assert len(held) == 1, (code, n, classes)
        assert colour == held[0][2] and rgb(colour) == held[0][3], (code, n, colour, held)
    assert max(n for n, _, _ in shown(p).values()) == classes[-1][1]


def test_every_departement_is_drawn_with_its_count_in_its_legend_colour(browser: Any, jobs: Folder) -> None:
    page = Page(browser, block_network=True)
    try:
        p = page.open(jobs.url + "jobs", "#top-departements")
        wait_counts(p, expected(jobs.offers))
        got = shown(p)
        assert sorted(got) == sorted(geo_codes()) and len(got) == 101
        assert sorted(c for c, (_, _, inset) in got.items() if inset) == ["971", "972", "973", "974", "976"]
        check_colours(p)
        assert {got[c][1] for c in EMPTY} == {"#ffffff"}
        # the overseas insets are named, and every one is in view
        assert p.eval_on_selector_all(".jobs-inset figcaption", "fs => fs.map(f => f.textContent)") == [
            "Guadeloupe",
            "Martinique",
            "Guyane",
            "La Réunion",
            "Mayotte",
        ]
        for code in ("971", "972", "973", "974", "976"):  # each fills its box, and stays in it
            fig, box = p.eval_on_selector(
                f"path.dep[data-code='{code}']",
                "p => [p.closest('figure'), p].map(e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; })",
            )
            assert box[2] - box[0] > 40 and box[3] - box[1] > 40, (code, box)
            assert fig[0] <= box[0] and fig[1] <= box[1] and box[2] <= fig[2] and box[3] <= fig[3], (code, fig, box)
        # a tooltip names the département and its count
        p.hover("path.dep[data-code='29']", force=True)
        tip = p.wait_for_selector(".leaflet-tooltip .jobs-tip").inner_text()
        assert tip.replace("\n", " ") == f"Finistère (29) {got['29'][0]} offers"
        # the latest offers: markup in a title is text
        p.wait_for_selector("#jobs-latest li[data-id]")
        titles = p.eval_on_selector_all("#jobs-latest .title", "ts => ts.map(t => t.textContent)")
        assert XSS in titles and BOLD in titles
        assert p.query_selector("#jobs-latest script, #jobs-latest b, #jobs-latest i") is None
        assert p.get_attribute("#jobs-latest li[data-id='o02'] .title", "href") is None  # its javascript: URL is no link
        # nothing but the dashboard was asked for; nothing went wrong; nothing ran
        page.page.wait_for_timeout(500)
        page.screenshot("jobs-overview")
        assert page.errors == [] and page.dialogs == []
        assert [u for u in page.requests if not u.startswith(jobs.url.rstrip("/"))] == []
        # the app is not running here: the page says so
        assert p.inner_text(".notice:not([hidden])").startswith("jobs is not running")
    finally:
        page.close()


def test_filters_change_the_counts_and_stay_in_the_url(browser: Any, jobs: Folder) -> None:
    page = Page(browser, block_network=True)
    try:
        p = page.open(jobs.url + "jobs", "#top-departements")
        wait_counts(p, expected(jobs.offers))
        options = p.eval_on_selector_all("#grand-domaine option", "os => os.map(o => [o.value, o.textContent])")
        assert options[0] == ["", "all grand domaines"] and dict(options[1:]) == GD  # the data's labels
        p.select_option("#grand-domaine", "G")
        wait_counts(p, expected(jobs.offers, gd="G"))
        check_colours(p)
        p.select_option("#contract", "CDI")
        p.select_option("#period", "7d")
        today = paris_day(jobs.now)
        week = expected(jobs.offers, since=p.input_value("#since"), until=today, gd="G", contract="CDI")
        assert p.input_value("#until") == today
        wait_counts(p, week)
        assert "grand_domaine=G" in p.url and "contract=CDI" in p.url and "period=7d" in p.url
        # the URL is the view: opened elsewhere, it shows the same
        other = Page(browser, block_network=True)
        try:
            q = other.open(p.url, "#top-departements")
            wait_counts(q, week)
            assert (q.input_value("#grand-domaine"), q.input_value("#contract"), q.input_value("#period")) == ("G", "CDI", "7d")
        finally:
            other.close()
        assert page.errors == []
    finally:
        page.close()


def test_a_departement_shows_its_communes_titles_categories_and_trend(browser: Any, jobs: Folder) -> None:
    page = Page(browser, block_network=True)
    try:
        p = page.open(jobs.url + "jobs", "#top-departements")
        wait_counts(p, expected(jobs.offers))
        p.click("path.dep[data-code='29']", force=True)
        p.wait_for_selector("#dep-name")
        mine = [o for o in jobs.offers if o["departement"] == "29"]
        assert p.inner_text("#dep-name") == "Finistère (29)"
        assert number(p.inner_text("#dep-offers")) == len(mine)
        titles = Counter(o["appellation"] or o["title"] for o in mine)
        first = p.inner_text("#dep-titles li:first-child .label")
        assert titles[first] == max(titles.values())
        assert p.eval_on_selector_all("#dep-titles li", "ls => ls.length") == min(10, len(titles))
        # its communes are points, sized by offers
        communes = Counter(o["commune"] for o in mine)
        p.wait_for_function("n => document.querySelectorAll('path.commune').length === n", arg=len(communes))
        points = dict(p.eval_on_selector_all("path.commune", "ps => ps.map(p => [p.dataset.commune, Number(p.dataset.offers)])"))
        assert points == dict(communes)
        p.wait_for_selector("#dep-trend .uplot")
        assert p.eval_on_selector_all(".jobs-cat", "cs => cs.length") == 5
        assert "?departement=29" in p.url or "&departement=29" in p.url
        page.page.wait_for_timeout(800)  # the map's flight to the département
        page.screenshot("jobs")
        # Paris: a title with markup is shown as text, and nothing runs
        p.select_option("#departement", "75")
        p.wait_for_function("() => document.querySelector('#dep-name')?.textContent === 'Paris (75)'")
        labels = p.eval_on_selector_all("#dep-titles .label", "ls => ls.map(l => l.textContent)")
        assert XSS in labels
        assert p.is_visible(f"#dep-titles .label[title='{XSS}']")
        assert p.query_selector("#jobs-panel script") is None
        p.wait_for_timeout(300)
        assert page.dialogs == [] and page.errors == []
    finally:
        page.close()


def test_a_new_offer_shows_live(browser: Any, jobs: Folder) -> None:
    page = Page(browser, block_network=True)
    try:
        p = page.open(jobs.url + "jobs", "#top-departements")
        wait_counts(p, expected(jobs.offers))
        p.wait_for_selector("[data-counter=today]")
        before = number(p.inner_text("[data-counter=today]"))
        now = now_ms()
        title = "<img src=x onerror=alert(3)> Boulanger"
        offer = {**jobs.offers[0], "offer_id": "live-1", "title": title, "appellation": None, "created_ms": now, "updated_ms": now, "day": paris_day(now)}
        jobs.add(offer)
        p.wait_for_function("t => [...document.querySelectorAll('#jobs-latest .title')].some(e => e.textContent === t)", arg=title, timeout=5_000)
        p.wait_for_function("n => document.querySelector('[data-counter=today]').textContent.replace(/\\D/g, '') === String(n)", arg=before + 1, timeout=5_000)
        wait_counts(p, expected(jobs.offers))
        assert p.query_selector("#jobs-latest img") is None and page.dialogs == []
    finally:
        page.close()


def test_the_page_says_when_the_app_replays_a_recording(browser: Any, jobs: Folder) -> None:
    stop = threading.Event()
    source = {"name": "france-travail", "status": "running", "mode": "replay", "describe": "recording", "records": 3, "rate": 1.0, "error": None}
    note = "no France Travail credentials: replays the bundled recording"

    def publish() -> None:
        status = {"status": "running", "error": None, "records": 3, "rate": 1.0, "lag": 0, "dead_letters": 0, "late": 0}
        while not stop.is_set():
            jobs.log.put_statuses({"jobs": {**status, "sources": [{**source, "note": note, "last_event_ms": now_ms()}]}})
            stop.wait(1.0)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    page = Page(browser, block_network=True)
    try:
        p = page.open(jobs.url + "jobs", "#jobs-mode:not([hidden])")
        text = p.inner_text("#jobs-mode")
        assert text.startswith("Offline: these offers come from a recording of France Travail's API, replayed, not from the live API") and note in text
        assert p.is_hidden(".notice:not(#jobs-mode)")
    finally:
        stop.set()
        thread.join(5)
        page.close()


def test_on_a_phone_nothing_overflows(browser: Any, jobs: Folder) -> None:
    page = Page(browser, width=390, height=844, block_network=True)
    try:
        p = page.open(jobs.url + "jobs?departement=2A", "#dep-name")
        wait_counts(p, expected(jobs.offers))
        page.page.wait_for_timeout(800)
        page.screenshot("jobs-phone")
        assert p.evaluate("document.documentElement.scrollWidth") <= 390
        assert httpx.get(jobs.url + "api/jobs/departements/2A", timeout=10).json()["offers"] == number(p.inner_text("#dep-offers"))
        assert page.errors == []
    finally:
        page.close()
