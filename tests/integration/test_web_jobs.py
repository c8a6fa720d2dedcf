"""The jobs page's JSON API and live channels over a serving store filled by hand with a known set of offers.

The store is written through ServingSink with the jobs app's own schema (`affluent.apps.jobs.tables`),
the aggregates computed here from the offers as the app's pipelines would; the expected answers are
computed again from the offers themselves. "Now" is a fixed instant (2026-03-10 14:30 in Paris).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from tests.e2e.dashboard import sse_events

from affluent.apps.jobs.tables import (
    COUNT_COLUMNS,
    COUNT_KEY,
    COUNTS,
    CUBE,
    CUBE_COLUMNS,
    CUBE_KEY,
    DIMENSIONS,
    HOURLY,
    HOURLY_COLUMNS,
    HOURLY_KEY,
    OFFER_COLUMNS,
    OFFER_KEY,
    OFFERS,
)
from affluent.config import Settings
from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import ServingSink

PARIS = ZoneInfo("Europe/Paris")
NOW = int(datetime(2026, 3, 10, 14, 30, tzinfo=PARIS).timestamp() * 1000)
MIN = 60_000
DAY = 24 * 60 * MIN
HOUR = 60 * MIN
TOPIC = "jobs.offers"

# the API's referentials, as the app copies them into the rows
GD = {"G": "Hôtellerie - Restauration - Tourisme - Loisirs et Animation", "J": "Santé", "M": "Support à l'entreprise", "N": "Transport et Logistique"}
CONTRACT = {"CDI": "Contrat à durée indéterminée", "CDD": "Contrat à durée déterminée", "MIS": "Mission intérimaire"}
EXPERIENCE = {"D": "Débutant accepté", "S": "Expérience souhaitée", "E": "Expérience exigée"}
QUALIFICATION = {"6": "Employé qualifié", "9": "Cadre"}
SECTOR = {"56": "Restauration", "86": "Activités pour la santé humaine", "49": "Transports terrestres", "69": "Activités juridiques et comptables"}
DEPS = {"29": "Finistère", "2A": "Corse-du-Sud", "971": "Guadeloupe", "75": "Paris", "69": "Rhône", "13": "Bouches-du-Rhône", "975": "Saint-Pierre-et-Miquelon"}
# commune -> (name, city, city name, lat, lon): arrondissements fold into their city
COMMUNES = {
    "29019": ("Brest", "29019", "Brest", 48.39, -4.49),
    "29232": ("Quimper", "29232", "Quimper", 47.99, -4.10),
    "2A004": ("Ajaccio", "2A004", "Ajaccio", 41.93, 8.74),
    "97120": ("Pointe-à-Pitre", "97120", "Pointe-à-Pitre", 16.24, -61.53),
    "97101": ("Les Abymes", "97101", "Les Abymes", 16.27, -61.50),
    "75101": ("Paris 1er Arrondissement", "75056", "Paris", 48.86, 2.34),
    "75115": ("Paris 15e Arrondissement", "75056", "Paris", 48.84, 2.29),
    "75120": ("Paris 20e Arrondissement", "75056", "Paris", 48.86, 2.40),
    "69383": ("Lyon 3e Arrondissement", "69123", "Lyon", 45.76, 4.85),
    "69266": ("Villeurbanne", "69266", "Villeurbanne", 45.77, 4.88),
    "13201": ("Marseille 1er Arrondissement", "13055", "Marseille", 43.30, 5.38),
    "13001": ("Aix-en-Provence", "13001", "Aix-en-Provence", 43.53, 5.45),
    "97502": ("Saint-Pierre", "97502", "Saint-Pierre", 46.78, -56.17),
}
SERVEUR = "Serveur / Serveuse de restaurant"
XSS = "<script>alert(1)</script>"
BOLD = "<b>Serveur</b>"
# id, minutes before NOW, commune ('' for no place), grand domaine, contract, experience, qualification, sector, appellation, title
SPEC: list[tuple[str, int, str, str, str, str, str, str, str | None, str | None]] = [
    ("o01", 20, "29019", "G", "CDI", "D", "6", "56", SERVEUR, "Serveur H/F"),
    ("o02", 5, "29019", "G", "CDD", "S", "6", "56", SERVEUR, BOLD),
    ("o03", DAY // MIN + 30, "29019", "J", "CDI", "E", "9", "86", "Infirmier / Infirmière", "Infirmier de nuit"),
    ("o04", 5 * DAY // MIN, "29019", "G", "MIS", "D", "6", "56", None, BOLD),
    ("o05", DAY // MIN + 60, "29232", "N", "CDI", "S", "6", "49", "Chauffeur / Chauffeuse poids lourd", "Chauffeur PL"),
    ("o06", 20 * DAY // MIN, "29232", "G", "CDI", "D", "6", "56", SERVEUR, "Serveur saison"),
    ("o07", 330, "2A004", "G", "CDD", "D", "6", "56", SERVEUR, "Serveur plage"),
    ("o08", 5 * DAY // MIN + 10, "2A004", "J", "CDI", "E", "9", "86", "Aide-soignant / Aide-soignante", "ASH"),
    ("o09", DAY // MIN, "97120", "J", "CDI", "E", "9", "86", "Infirmier / Infirmière", "IDE"),
    ("o10", 20 * DAY // MIN + 5, "97120", "M", "CDD", "S", "6", "69", "Comptable", "Comptable H/F"),
    ("o11", 390, "97101", "G", "CDI", "D", "6", "56", "Cuisinier / Cuisinière", "Cuisinier"),
    ("o12", 25, "75101", "G", "CDI", "D", "6", "56", None, XSS),
    ("o13", 210, "75115", "M", "CDI", "S", "9", "69", "Comptable", "Comptable senior"),
    ("o14", DAY // MIN + 90, "75115", "M", "CDD", "S", "6", "69", "Comptable", "Comptable"),
    ("o15", 5 * DAY // MIN + 60, "75120", "G", "MIS", "D", "6", "56", "Cuisinier / Cuisinière", "Commis"),
    ("o16", 20 * DAY // MIN + 60, "75115", "M", "CDI", "E", "9", "69", "Assistant / Assistante de direction", "Assistant"),
    ("o17", 31, "69383", "N", "MIS", "D", "6", "49", "Cariste", "Cariste H/F"),
    ("o18", DAY // MIN + 120, "69383", "N", "MIS", "D", "6", "49", "Cariste", "Cariste"),
    ("o19", 5 * DAY // MIN + 120, "69266", "J", "CDI", "S", "6", "86", "Aide-soignant / Aide-soignante", "AS"),
    ("o20", DAY // MIN + 150, "13201", "G", "CDD", "D", "6", "56", SERVEUR, "Serveur"),
    ("o21", 20 * DAY // MIN + 120, "13001", "M", "CDI", "E", "9", "69", "Comptable", "Comptable"),
    ("o22", 240, "", "G", "CDI", "D", "6", "56", "Plongeur / Plongeuse", "Plongeur"),
    ("o23", DAY // MIN + 200, "97502", "N", "CDI", "S", "6", "49", "Cariste", "Cariste SPM"),
    ("o24", 450, "2A004", "", "CDI", "", "", "", None, None),
]


def paris_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, PARIS).date().isoformat()


def midnight_ms(day: str) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=PARIS).timestamp() * 1000)


def departement_of(commune: str) -> str:
    if not commune:
        return ""
    return commune[:3] if commune.startswith("97") else commune[:2]


def make_offers(now: int) -> list[dict[str, Any]]:
    """The offers of SPEC, created the given minutes before `now`; o01 was updated once since."""
    out = []
    for oid, minutes, commune, gd, contract, exp, qual, sector, appellation, title in SPEC:
        created = now - minutes * MIN
        dep = departement_of(commune)
        name, city, city_name, lat, lon = COMMUNES.get(commune, (None, None, None, None, None))
        row: dict[str, Any] = dict.fromkeys(OFFER_COLUMNS)
        row.update(
            offer_id=oid,
            title=title,
            company=f"Entreprise {oid} <i>&amp;</i>",
            created_ms=created,
            updated_ms=created + (3 * MIN if oid == "o01" else 0),
            day=paris_day(created),
            departement=dep or None,
            departement_name=DEPS.get(dep),
            commune=commune or None,
            commune_name=name,
            city=city,
            city_name=city_name,
            place=f"{dep} - {city_name}" if commune else None,
            lat=lat,
            lon=lon,
            appellation=appellation,
            grand_domaine=gd or None,
            grand_domaine_label=GD.get(gd),
            contract=contract,
            contract_label=CONTRACT[contract],
            experience=exp or None,
            experience_label=EXPERIENCE.get(exp),
            qualification=qual or None,
            qualification_label=QUALIFICATION.get(qual),
            sector=sector or None,
            sector_label=SECTOR.get(sector),
            origin="1",
            url="javascript:alert(1)" if oid == "o02" else f"https://candidat.francetravail.fr/offres/recherche/detail/{oid}",
            versions=2 if oid == "o01" else 1,
        )
        out.append(row)
    return out


def aggregates(offers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """jobs_cube, jobs_counts and jobs_hourly rows, as the app's pipelines compute them."""
    cube: Counter[tuple[str, str, str, str]] = Counter()
    counts: Counter[tuple[str, str, str]] = Counter()
    names: dict[tuple[str, str], str | None] = {}
    hourly: Counter[tuple[str, int]] = Counter()
    for o in offers:
        cube[(o["day"], o["departement"] or "", o["grand_domaine"] or "", o["contract"] or "")] += 1
        for dim in DIMENSIONS:
            code = o[dim] or ""
            counts[(dim, code, o["day"])] += 1
            names[(dim, code)] = o.get(f"{dim}_name", o.get(f"{dim}_label"))
        hourly[("created", o["created_ms"] // HOUR * HOUR)] += 1
        if o["versions"] > 1:
            hourly[("updated", o["updated_ms"] // HOUR * HOUR)] += 1
    return (
        [{"day": k[0], "day_ms": midnight_ms(k[0]), "departement": k[1], "grand_domaine": k[2], "contract": k[3], "offers": n} for k, n in cube.items()],
        [{"dimension": d, "code": c, "label": names[(d, c)], "day": day, "day_ms": midnight_ms(day), "offers": n} for (d, c, day), n in counts.items()],
        [{"kind": k, "hour_ms": h, "offers": n} for (k, h), n in hourly.items()],
    )


def sinks(serving: Path) -> dict[str, ServingSink]:
    return {
        # indexed as the app's pipeline indexes it: a département's offers, by time
        OFFERS: ServingSink(serving, OFFERS, key_columns=OFFER_KEY, columns=OFFER_COLUMNS, indexes=[("departement", "created_ms"), ("created_ms",)]),
        CUBE: ServingSink(serving, CUBE, key_columns=CUBE_KEY, columns=CUBE_COLUMNS),
        COUNTS: ServingSink(serving, COUNTS, key_columns=COUNT_KEY, columns=COUNT_COLUMNS),
        HOURLY: ServingSink(serving, HOURLY, key_columns=HOURLY_KEY, columns=HOURLY_COLUMNS),
    }


def fill(serving: Path, log: SQLiteLog, offers: list[dict[str, Any]], publish: list[dict[str, Any]] | None = None) -> None:
    """Write the offers and their aggregates to the serving store (the aggregates are recomputed over every
    offer given), and publish the offers of `publish` (default: all) to the jobs.offers topic."""
    cube, counts, hourly = aggregates(offers)
    for table, sink in sinks(serving).items():
        rows = {OFFERS: offers, CUBE: cube, COUNTS: counts, HOURLY: hourly}[table]
        sink.open()
        try:
            sink.write([Record(value=r) for r in rows])
            sink.flush()
        finally:
            sink.close()
    log.create_topic(TOPIC)
    ordered = sorted(offers if publish is None else publish, key=lambda o: o["updated_ms"])
    log.append(TOPIC, [Record(value={**o, "extra": "a field the page does not know"}, key=o["offer_id"], timestamp_ms=o["updated_ms"]) for o in ordered])


def expected(
    offers: list[dict[str, Any]], since: str | None = None, until: str | None = None, gd: str | None = None, contract: str | None = None
) -> Counter[str]:
    """Offers per département code ('' for none) over a period and filters, counted from the offers themselves."""
    out: Counter[str] = Counter()
    for o in offers:
        if (since and o["day"] < since) or (until and o["day"] > until) or (gd and o["grand_domaine"] != gd) or (contract and o["contract"] != contract):
            continue
        out[o["departement"] or ""] += 1
    return out


def geo_codes() -> list[str]:
    geo = Path(__file__).resolve().parents[2] / "src" / "affluent" / "web" / "static" / "geo" / "departements.json"
    return [f["properties"]["code"] for f in orjson.loads(geo.read_bytes())["features"]]


# -- the server ---------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def dashboard(folder: Path) -> Iterator[tuple[str, Path, SQLiteLog]]:
    """The dashboard, in this process, over a store and a log holding the offers of SPEC, at NOW."""
    import affluent.web.jobs
    from affluent.web.server import DashboardServer, create_app

    serving = folder / "serving.db"
    log = SQLiteLog(folder / "log.db")
    fill(serving, log, make_offers(NOW))
    settings = Settings(serving={"url": f"sqlite:///{serving}"}, lake={"url": f"parquet://{folder / 'lake'}"}, web={"live_interval_s": 0.05})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(affluent.web.jobs, "now_ms", lambda: NOW)
        app = create_app(settings, log, offline=True)
        server = DashboardServer(app, "127.0.0.1", 0).start()
        try:
            deadline = time.monotonic() + 10
            while app.state.hub.channels["jobs.counter"].snapshot() is None:  # the live channels' first poll is done
                assert time.monotonic() < deadline, "the live updates never polled"
                time.sleep(0.02)
            yield server.url, serving, log
        finally:
            server.stop()
            log.close()


@pytest.fixture(scope="module")
def jobs_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, SQLiteLog]]:
    with dashboard(tmp_path_factory.mktemp("jobs")) as got:
        yield got


def get(url: str, **params: Any) -> Any:
    resp = httpx.get(url, params={k: v for k, v in params.items() if v is not None}, timeout=10)
    assert resp.status_code == 200, (url, params, resp.status_code, resp.text)
    return resp.json()


TODAY = paris_day(NOW)


def days_before(n: int) -> str:
    return (date.fromisoformat(TODAY) - timedelta(days=n)).isoformat()


@pytest.mark.parametrize(
    ("params", "spot"),
    [
        ({}, {"29": 6, "2A": 3, "971": 3, "75": 5, "69": 3, "13": 2, "01": 0}),
        ({"since": TODAY, "until": TODAY}, {"29": 2, "2A": 2, "971": 1, "75": 2, "69": 1, "13": 0}),
        ({"since": days_before(6), "until": TODAY}, {"29": 5, "2A": 3, "971": 2, "75": 4, "69": 3, "13": 1}),
        ({"since": days_before(1)}, {"29": 4, "2A": 2, "971": 2, "75": 3, "69": 2, "13": 1}),
        ({"until": days_before(6)}, {"29": 1, "2A": 0, "971": 1, "75": 1, "69": 0, "13": 1}),
        ({"grand_domaine": "G"}, {"29": 4, "2A": 1, "971": 1, "75": 2, "69": 0, "13": 1}),
        ({"contract": "CDI"}, {"29": 4, "2A": 2, "971": 2, "75": 3, "69": 1, "13": 1}),
        ({"grand_domaine": "G", "contract": "CDI", "since": days_before(29), "until": TODAY}, {"29": 2, "2A": 0, "971": 1, "75": 1, "69": 0, "13": 0}),
        ({"grand_domaine": "X"}, {"29": 0, "75": 0}),
    ],
)
def test_the_map_counts_every_departement_for_filters_and_periods(jobs_web: tuple[str, Path, SQLiteLog], params: dict[str, str], spot: dict[str, int]) -> None:
    url, _, _ = jobs_web
    got = get(url + "api/jobs/departements", **params)
    offers = make_offers(NOW)
    want = expected(offers, params.get("since"), params.get("until"), params.get("grand_domaine"), params.get("contract"))
    rows = got["departements"]
    assert [r["code"] for r in rows] == geo_codes() and len(rows) == 101
    assert {r["code"]: r["offers"] for r in rows} == {c: want.get(c, 0) for c in geo_codes()}
    assert {c: n for c, n in ((r["code"], r["offers"]) for r in rows) if c in spot} == spot
    assert {r["code"]: (r["name"], r["offers"]) for r in got["elsewhere"]} == {c: (DEPS.get(c), n) for c, n in want.items() if c in ("", "975") and n}
    assert got["total"] == sum(want.values())
    names = {r["code"]: r["name"] for r in rows}
    assert (names["2A"], names["971"], names["01"]) == ("Corse-du-Sud", "Guadeloupe", "Ain")  # from the data, else the map's file
    assert {k: got[k] for k in ("since", "until", "grand_domaine", "contract")} == {k: params.get(k) for k in ("since", "until", "grand_domaine", "contract")}


def test_a_departements_detail_has_its_communes_titles_categories_and_trend(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    d = get(url + "api/jobs/departements/29")
    assert (d["code"], d["name"], d["offers"], d["listed"]) == ("29", "Finistère", 6, 6)
    assert [(c["code"], c["name"], c["offers"], c["lat"], c["lon"]) for c in d["communes"]] == [
        ("29019", "Brest", 4, 48.39, -4.49),
        ("29232", "Quimper", 2, 47.99, -4.10),
    ]
    # the appellation when there is one, else the title, as it came: markup is text to the page
    assert d["titles"] == [
        {"title": SERVEUR, "offers": 3},
        {"title": BOLD, "offers": 1},
        {"title": "Chauffeur / Chauffeuse poids lourd", "offers": 1},
        {"title": "Infirmier / Infirmière", "offers": 1},
    ]
    cats = d["categories"]
    assert cats["grand_domaine"] == [
        {"code": "G", "label": GD["G"], "offers": 4},
        {"code": "J", "label": "Santé", "offers": 1},
        {"code": "N", "label": GD["N"], "offers": 1},
    ]
    assert [(c["code"], c["offers"]) for c in cats["contract"]] == [("CDI", 4), ("CDD", 1), ("MIS", 1)]
    assert [(c["label"], c["offers"]) for c in cats["experience"]] == [("Débutant accepté", 3), ("Expérience souhaitée", 2), ("Expérience exigée", 1)]
    assert [(c["code"], c["offers"]) for c in cats["qualification"]] == [("6", 5), ("9", 1)]
    assert [(c["label"], c["offers"]) for c in cats["sector"]] == [("Restauration", 4), ("Transports terrestres", 1), ("Activités pour la santé humaine", 1)]
    # every day from the first of the data to today, zeros included
    trend = d["trend"]
    assert trend[0]["day"] == days_before(20) and trend[-1]["day"] == TODAY and len(trend) == 21
    assert {t["day"]: t["offers"] for t in trend if t["offers"]} == {days_before(20): 1, days_before(5): 1, days_before(1): 2, TODAY: 2}
    assert all(t["day_ms"] == midnight_ms(t["day"]) for t in trend)

    # filtered: the same filters as the map's
    g = get(url + "api/jobs/departements/29", grand_domaine="G", since=days_before(6), until=TODAY)
    assert (g["offers"], g["listed"]) == (3, 3)
    assert [(c["code"], c["offers"]) for c in g["communes"]] == [("29019", 3)]
    assert g["titles"] == [{"title": SERVEUR, "offers": 2}, {"title": BOLD, "offers": 1}]
    assert [t["day"] for t in g["trend"]] == [days_before(n) for n in range(6, -1, -1)]
    assert [t["offers"] for t in g["trend"]] == [0, 1, 0, 0, 0, 0, 2]


def test_paris_lists_arrondissements_as_points_and_its_city_once(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    d = get(url + "api/jobs/departements/75")
    assert d["offers"] == 5
    assert [(c["code"], c["city"], c["offers"]) for c in d["communes"]] == [("75115", "75056", 3), ("75101", "75056", 1), ("75120", "75056", 1)]
    assert d["cities"] == [{"code": "75056", "label": "Paris", "offers": 5}]
    assert {"title": XSS, "offers": 1} in d["titles"]


def test_corsica_and_overseas_and_unknown_categories(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    corse = get(url + "api/jobs/departements/2A")
    assert (corse["name"], corse["offers"]) == ("Corse-du-Sud", 3)
    # an offer with no grand domaine nor title: counted under '' with no label, and in no title
    assert {"code": "", "label": None, "offers": 1} in corse["categories"]["grand_domaine"]
    assert sum(t["offers"] for t in corse["titles"]) == 2
    guadeloupe = get(url + "api/jobs/departements/971")
    assert [(c["name"], c["offers"]) for c in guadeloupe["communes"]] == [("Pointe-à-Pitre", 2), ("Les Abymes", 1)]
    spm = get(url + "api/jobs/departements/975")  # not on the map, but in the data
    assert (spm["name"], spm["offers"]) == ("Saint-Pierre-et-Miquelon", 1)
    empty = get(url + "api/jobs/departements/01")
    assert (empty["name"], empty["offers"], empty["communes"], empty["titles"]) == ("Ain", 0, [], [])


def test_filters_list_the_datas_labels(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    f = get(url + "api/jobs/filters")
    assert f["grand_domaine"] == [
        {"code": "G", "label": GD["G"], "offers": 10},
        {"code": "M", "label": GD["M"], "offers": 5},
        {"code": "J", "label": "Santé", "offers": 4},
        {"code": "N", "label": GD["N"], "offers": 4},
    ]
    assert [(c["code"], c["label"], c["offers"]) for c in f["contract"]] == [
        ("CDI", CONTRACT["CDI"], 15),
        ("CDD", CONTRACT["CDD"], 5),
        ("MIS", CONTRACT["MIS"], 4),
    ]
    assert (f["first_day"], f["last_day"], f["today"], f["timezone"]) == (days_before(20), TODAY, TODAY, "Europe/Paris")


def test_the_counter_counts_today_and_this_hour(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    c = get(url + "api/jobs/counter")
    offers = make_offers(NOW)
    hour = NOW // HOUR * HOUR
    assert c["today"] == sum(1 for o in offers if o["day"] == TODAY) == 9
    assert c["hour"] == sum(1 for o in offers if o["created_ms"] >= hour) == 3  # 14:05, 14:10, 14:25
    assert (c["day"], c["hour_ms"], c["updated_today"], c["latest_hour_ms"]) == (TODAY, hour, 1, hour)
    assert len(c["hours"]) == 48 and c["hours"][-1] == {"hour_ms": hour, "offers": 3}
    assert sum(h["offers"] for h in c["hours"]) == sum(1 for o in offers if o["created_ms"] >= hour - 47 * HOUR)


def test_the_latest_offers_come_newest_first_as_text_with_safe_links(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    got = get(url + "api/jobs/latest", limit=5)
    assert [i["id"] for i in got] == ["o02", "o01", "o12", "o17", "o13"]  # o01 was updated 3 minutes after its creation
    assert got[0]["title"] == BOLD and got[0]["url"] is None  # a javascript: URL is no link
    assert got[1]["url"] == "https://candidat.francetravail.fr/offres/recherche/detail/o01"
    assert got[2]["title"] == XSS and got[2]["company"] == "Entreprise o12 <i>&amp;</i>" and got[2]["place"] == "75 - Paris"
    assert (got[2]["departement"], got[2]["departement_name"], got[2]["created_ms"]) == ("75", "Paris", NOW - 25 * MIN)


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("api/jobs/departements/2C", {}, 422, "string should match pattern"),
        ("api/jobs/departements/291", {}, 422, "string should match pattern"),
        ("api/jobs/departements/99", {}, 404, "no département '99'"),
        ("api/jobs/departements", {"since": "2026-02-30"}, 422, "valid date"),
        ("api/jobs/departements", {"until": "yesterday"}, 422, "valid date"),
        ("api/jobs/departements", {"since": "2026-03-10", "until": "2026-03-01"}, 422, "since (2026-03-10) is after until (2026-03-01)"),
        ("api/jobs/departements/29", {"since": "2026-03-10", "until": "2026-03-01"}, 422, "is after until"),
        ("api/jobs/departements", {"grand_domaine": "<script>"}, 422, "string should match pattern"),
        ("api/jobs/departements", {"contract": "x" * 40}, 422, "string should match pattern"),
        ("api/jobs/latest", {"limit": "0"}, 422, "greater than or equal to 1"),
    ],
)
def test_bad_input_is_a_clear_4xx(jobs_web: tuple[str, Path, SQLiteLog], path: str, params: dict[str, str], status: int, says: str) -> None:
    url, _, _ = jobs_web
    resp = httpx.get(url + path, params=params, timeout=10)
    assert resp.status_code == status, resp.text
    assert says.lower() in resp.text.lower()


def test_the_calendars_ends_are_answers_not_errors(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, _, _ = jobs_web
    wide = get(url + "api/jobs/departements/29", since="0001-01-01", until="9999-12-31")
    assert wide["offers"] == 6 and len(wide["trend"]) == 21  # the trend spans the data's days, not the calendar's
    assert get(url + "api/jobs/departements", since="9999-12-31")["total"] == 0


def test_the_page_the_api_document_and_the_map_queries_plans(jobs_web: tuple[str, Path, SQLiteLog]) -> None:
    url, serving, _ = jobs_web
    page = httpx.get(url + "jobs", timeout=10)
    assert page.status_code == 200 and '<script src="/static/jobs.js">' in page.text and 'data-page="jobs"' in page.text
    assert "jobs" in [a["app"] for a in get(url + "api/config")["apps"]]
    spec = get(url + "openapi.json")
    for path in ("/api/jobs/departements", "/api/jobs/departements/{code}", "/api/jobs/filters", "/api/jobs/counter", "/api/jobs/latest"):
        assert spec["paths"][path]["get"]["summary"], path
    params = {p["name"]: p["schema"] for p in spec["paths"]["/api/jobs/departements"]["get"]["parameters"]}
    assert params["since"]["anyOf"][0]["format"] == "date" and "pattern" in params["grand_domaine"]["anyOf"][0]
    # a period is a range of jobs_cube's primary key, a département's offers a range of the app's index; options and names a range of jobs_counts'
    import sqlite3

    con = sqlite3.connect(serving)
    try:

        def plan(sql: str, *args: Any) -> str:
            return " / ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + sql, args))

        assert "USING PRIMARY KEY (day>? AND day<?)" in plan(
            f"SELECT departement, SUM(offers) FROM {CUBE} WHERE day >= ? AND day <= ? AND grand_domaine = ? GROUP BY departement", "a", "b", "G"
        )
        assert "USING INDEX jobs_offers__departement__created_ms (departement=? AND created_ms>? AND created_ms<?)" in plan(
            f"SELECT commune FROM {OFFERS} WHERE created_ms >= ? AND created_ms < ? AND grand_domaine = ? AND departement = ?", 0, 1, "G", "29"
        )
        assert "USING PRIMARY KEY (dimension=?)" in plan(f"SELECT code, MAX(label) FROM {COUNTS} WHERE dimension = ? GROUP BY code", "departement")
        assert "USING PRIMARY KEY (kind=? AND hour_ms>?)" in plan(
            f"SELECT kind, hour_ms, offers FROM {HOURLY} WHERE kind IN ('created', 'updated') AND hour_ms >= ?", 0
        )
    finally:
        con.close()


# -- live updates ---------------------------------------------------------------------------------------------------------
def test_live_channels_send_a_snapshot_then_what_a_new_offer_changes(tmp_path: Path) -> None:
    with dashboard(tmp_path) as (url, serving, log):
        live_scenario(url, serving, log)


def live_scenario(url: str, serving: Path, log: SQLiteLog) -> None:
    offers = make_offers(NOW)
    new = {**offers[0], "offer_id": "o99", "title": "<img src=x onerror=alert(1)>", "created_ms": NOW - MIN, "updated_ms": NOW - MIN, "versions": 1}
    wrote = threading.Event()

    def write(events: list[tuple[str, dict[str, Any]]]) -> None:
        if not wrote.is_set() and len(events) >= 3:  # the three snapshots are in
            wrote.set()
            fill(serving, log, [*offers, new], publish=[new])

    def done(events: list[tuple[str, dict[str, Any]]]) -> bool:
        deltas = {n for n, e in events if e["kind"] == "delta"}
        return {"jobs.counter", "jobs.days", "jobs.latest"} <= deltas

    events = sse_events(url + "api/events?channels=jobs.counter,jobs.days,jobs.latest", until=done, on=write)
    snap = {n: e["data"] for n, e in events if e["kind"] == "snapshot"}
    assert snap["jobs.counter"]["today"] == 9 and snap["jobs.counter"]["hour"] == 3
    assert snap["jobs.days"]["key"] == ["day"]
    assert {r["day"]: r["offers"] for r in snap["jobs.days"]["rows"]} == dict(Counter(o["day"] for o in offers))
    assert [i["id"] for i in snap["jobs.latest"]["items"]][-3:] == ["o12", "o01", "o02"]  # oldest first, as they came
    delta = {n: e["data"] for n, e in events if e["kind"] == "delta"}
    assert delta["jobs.counter"]["today"] == 10 and delta["jobs.counter"]["hour"] == 4
    assert delta["jobs.days"] == {"key": ["day"], "upsert": [{"day": TODAY, "day_ms": midnight_ms(TODAY), "offers": 10}], "delete": []}
    assert [i["id"] for i in delta["jobs.latest"]["items"]][-1] == "o99"
    assert delta["jobs.latest"]["items"][-1]["title"] == "<img src=x onerror=alert(1)>"
    # and the map reads the new offer
    assert {r["code"]: r["offers"] for r in get(url + "api/jobs/departements")["departements"]}["29"] == 7
