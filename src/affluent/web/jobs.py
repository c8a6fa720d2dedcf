"""The jobs page: France Travail's job offers by département on a map of France, one département's
communes, titles, categories and trend, a live counter of new offers and the latest ones.

Everything comes from the jobs app's serving tables (`affluent.apps.jobs.tables`): the map sums
`jobs_cube` over the chosen days and filters (its primary key starts with the day, so a period is a
range of it); options and names come from `jobs_counts` (a range of its key's first column); the
counter reads `jobs_hourly` by key. A département's detail reads its offers in `jobs_offers` once (a
range of the app's index on (departement, created_ms)) and groups them three ways. The
latest offers come from the `jobs.offers` topic, as they arrive.
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query

from affluent.apps.jobs.tables import COUNTS, CUBE, HOURLY, OFFERS
from affluent.core.clock import now_ms
from affluent.core.records import Record
from affluent.sources.france_travail import paris_day
from affluent.web.board import Board, queries
from affluent.web.live import Channel, Computed, Feed, KeyedRows
from affluent.web.queries import Queries

#: the offers' country: days of the tables are calendar days there
TZ = ZoneInfo("Europe/Paris")
#: the topic the jobs app publishes each offer's latest version to
TOPIC = "jobs.offers"
HOUR_MS = 3_600_000
#: a département code: 01-95, 2A, 2B, 971-978, 984-989 (what the data may hold beyond the 101 maps' shapes)
DEPARTEMENT = r"^([0-9]{2}|2[AB]|9[78][0-9])$"
#: a grand domaine or contract code of the API's referentials (M, CDI, MIS, ...)
CODE = r"^[A-Za-z0-9_.-]{1,32}$"
#: the breakdowns of a département's offers, each a code column with its label column
CATEGORIES = ("grand_domaine", "contract", "experience", "qualification", "sector")
TOP = 10
#: the days whose totals the live channel `jobs.days` follows (offers are created now: older days hardly move)
LIVE_DAYS = 62

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
Q = Annotated[Queries, Depends(queries)]
Since = Annotated[date | None, Query(description="first day, included (YYYY-MM-DD, Europe/Paris)")]
Until = Annotated[date | None, Query(description="last day, included (YYYY-MM-DD, Europe/Paris)")]
GrandDomaine = Annotated[str | None, Query(pattern=CODE, description="a grand domaine code (see /api/jobs/filters), e.g. G")]
Contract = Annotated[str | None, Query(pattern=CODE, description="a contract type code (see /api/jobs/filters), e.g. CDI")]


@functools.cache
def shapes() -> dict[str, str]:
    """The 101 départements of the bundled map, code -> name, in the file's order."""
    raw = (resources.files("affluent.web") / "static" / "geo" / "departements.json").read_bytes()
    return {f["properties"]["code"]: f["properties"]["nom"] for f in orjson.loads(raw)["features"]}


def day_ms(day: str) -> int:
    """Epoch ms of a day's midnight in Europe/Paris."""
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=TZ).timestamp() * 1000)


class Filters:
    """The page's filters, checked, as a WHERE clause over columns that jobs_cube and jobs_offers share."""

    def __init__(self, since: date | None = None, until: date | None = None, grand_domaine: str | None = None, contract: str | None = None) -> None:
        if since is not None and until is not None and since > until:
            raise HTTPException(422, f"since ({since.isoformat()}) is after until ({until.isoformat()})")
        self.since = since.isoformat() if since else None
        self.until = until.isoformat() if until else None
        self.grand_domaine = grand_domaine or None
        self.contract = contract or None

    def where(self, *, by_time: bool = False, **more: str) -> tuple[str, list[Any]]:
        """by_time: the period as a range of created_ms (an offer's day is its creation's day in Paris), which
        the app's index on jobs_offers (departement, created_ms) answers; else as a range of days."""
        conds: list[str] = []
        params: list[Any] = []
        period: tuple[tuple[str, Any], ...] = (("day >= ?", self.since), ("day <= ?", self.until))
        if by_time:
            end = None if self.until is None or self.until == date.max.isoformat() else (date.fromisoformat(self.until) + timedelta(days=1)).isoformat()
            period = (("created_ms >= ?", day_ms(self.since) if self.since else None), ("created_ms < ?", day_ms(end) if end else None))
        for sql, v in (*period, ("grand_domaine = ?", self.grand_domaine), ("contract = ?", self.contract)):
            if v is not None:
                conds.append(sql)
                params.append(v)
        for col, v in more.items():
            conds.append(f"{col} = ?")
            params.append(v)
        return (" WHERE " + " AND ".join(conds) if conds else ""), params

    def echo(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "grand_domaine": self.grand_domaine, "contract": self.contract}


def labels(q: Queries, dimension: str) -> dict[str, str]:
    """code -> label of one axis of jobs_counts (the API's referentials, as the app wrote them)."""
    rows = q.serving(f"SELECT code, MAX(label) AS label FROM {COUNTS} WHERE dimension = ? GROUP BY code", [dimension])
    return {r["code"]: r["label"] for r in rows if r["label"]}


def departements(q: Queries, f: Filters) -> dict[str, Any]:
    """Offers per département over the period and filters: the 101 of the map (zeros included), then the others."""
    where, params = f.where()
    got = {r["code"]: r["offers"] for r in q.serving(f"SELECT departement AS code, SUM(offers) AS offers FROM {CUBE}{where} GROUP BY departement", params)}
    names = labels(q, "departement")
    known = shapes()
    out = [{"code": c, "name": names.get(c) or n, "offers": got.get(c, 0)} for c, n in known.items()]
    # '' (no place given) and codes outside the 101 shapes (Saint-Pierre-et-Miquelon, abroad, ...)
    elsewhere = sorted(({"code": c, "name": names.get(c), "offers": n} for c, n in got.items() if c not in known and n), key=lambda r: -r["offers"])
    return {**f.echo(), "total": sum(got.values()), "departements": out, "elsewhere": elsewhere}


def days_range(q: Queries) -> tuple[str | None, str | None]:
    """The first and last day jobs_cube holds (the ends of its primary key)."""
    rows = q.serving(f"SELECT MIN(day) AS first, MAX(day) AS last FROM {CUBE}")
    return (rows[0]["first"], rows[0]["last"]) if rows else (None, None)


def trend(q: Queries, code: str, f: Filters) -> list[dict[str, Any]]:
    """New offers per day in one département, every day of the period that the data covers (zeros included)."""
    where, params = f.where(departement=code)
    got = {r["day"]: r["offers"] for r in q.serving(f"SELECT day, SUM(offers) AS offers FROM {CUBE}{where} GROUP BY day", params)}
    first, last = days_range(q)
    if first is None or last is None:
        return []
    today = paris_day(now_ms())[0]
    start = max(f.since or first, first)
    end = min(f.until or max(last, today), max(last, today))
    out = []
    d, stop = date.fromisoformat(start), date.fromisoformat(end)
    while d <= stop:
        day = d.isoformat()
        out.append({"day": day, "day_ms": day_ms(day), "offers": got.get(day, 0)})
        d += timedelta(days=1)
    return out


def detail(q: Queries, code: str, f: Filters) -> dict[str, Any]:
    """One département: its offers in view, communes with coordinates, top titles, categories and daily trend."""
    names = labels(q, "departement")
    if code not in shapes() and code not in names:
        raise HTTPException(404, f"no département {code!r}: neither on the map nor in the data")
    days = trend(q, code, f)  # every day of the cube in the period: its sum is the département's offers in view
    where, params = f.where(by_time=True, departement=code)
    # one read of the département's offers (materialized), grouped three ways: by commune (each with its
    # city, so cities are sums of communes), by title, and by the categories together (a few thousand
    # combinations at most), which are summed up here; the categories' labels come from jobs_counts
    cats = ", ".join(CATEGORIES)
    rows = q.serving(
        f"WITH d AS MATERIALIZED (SELECT commune, commune_name, city, city_name, lat, lon, "
        f"COALESCE(NULLIF(appellation, ''), NULLIF(title, '')) AS title, {cats} FROM {OFFERS}{where}) "
        "SELECT 'commune' AS axis, COALESCE(commune, '') AS code, MAX(commune_name) AS label, COUNT(*) AS offers, "
        "AVG(CASE WHEN lat IS NOT NULL AND lon IS NOT NULL THEN lat END) AS lat, AVG(CASE WHEN lat IS NOT NULL AND lon IS NOT NULL THEN lon END) AS lon, "
        "MAX(city) AS city, MAX(city_name) AS city_name, NULL AS grand_domaine, NULL AS contract, NULL AS experience, NULL AS qualification, NULL AS sector "
        "FROM d GROUP BY 2 UNION ALL "
        "SELECT * FROM (SELECT 'title', title, NULL, COUNT(*), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL "
        f"FROM d WHERE title IS NOT NULL GROUP BY 2 ORDER BY 4 DESC, 2 LIMIT {TOP}) UNION ALL "
        f"SELECT 'categories', NULL, NULL, COUNT(*), NULL, NULL, NULL, NULL, {cats} FROM d GROUP BY {cats}",
        params,
    )
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (-r["offers"], r["code"] or "")):
        by[r["axis"]].append(r)
    points = [{"code": r["code"], "name": r["label"], "city": r["city"], "offers": r["offers"], "lat": r["lat"], "lon": r["lon"]} for r in by["commune"]]
    cities: dict[str, dict[str, Any]] = {}
    for r in by["commune"]:
        city = cities.setdefault(r["city"] or "", {"code": r["city"] or "", "label": None, "offers": 0})
        city["offers"] += r["offers"]
        city["label"] = city["label"] or r["city_name"]
    counted: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
    for r in by["categories"]:
        for c in CATEGORIES:
            counted[c][r[c] or ""] += r["offers"]
    categories = {}
    for c in CATEGORIES:
        names_of = labels(q, c)
        categories[c] = [{"code": k, "label": names_of.get(k), "offers": n} for k, n in sorted(counted[c].items(), key=lambda kv: (-kv[1], kv[0]))]
    return {
        "code": code,
        "name": names.get(code) or shapes().get(code),
        **f.echo(),
        "offers": sum(d["offers"] for d in days),
        "listed": sum(p["offers"] for p in points),
        "communes": points,
        "cities": sorted(cities.values(), key=lambda c: (-c["offers"], c["code"]))[:TOP],
        "titles": [{"title": r["code"], "offers": r["offers"]} for r in by["title"]],
        "categories": categories,
        "trend": days,
    }


def filters(q: Queries) -> dict[str, Any]:
    """The options of the page's filters, with their labels and offer counts, and the days the data covers."""
    rows = q.serving(
        f"SELECT dimension, code, MAX(label) AS label, SUM(offers) AS offers FROM {COUNTS} "
        "WHERE dimension IN ('grand_domaine', 'contract') AND code != '' GROUP BY dimension, code"
    )
    out: dict[str, Any] = {"grand_domaine": [], "contract": []}
    for r in sorted(rows, key=lambda r: (-r["offers"], r["code"])):
        out[r["dimension"]].append({"code": r["code"], "label": r["label"], "offers": r["offers"]})
    first, last = days_range(q)
    return {**out, "first_day": first, "last_day": last, "today": paris_day(now_ms())[0], "timezone": str(TZ)}


def counter(q: Queries) -> dict[str, Any]:
    """Offers created today (Europe/Paris) and in the current hour, updates seen today, and the last 48 hours."""
    now = now_ms()
    hour = now // HOUR_MS * HOUR_MS
    today = paris_day(now)[0]
    midnight = day_ms(today)
    first = min(midnight, hour - 47 * HOUR_MS)
    rows = q.serving(f"SELECT kind, hour_ms, offers FROM {HOURLY} WHERE kind IN ('created', 'updated') AND hour_ms >= ?", [first])
    created = {r["hour_ms"]: r["offers"] for r in rows if r["kind"] == "created"}
    latest = q.serving(f"SELECT MAX(hour_ms) AS h FROM {HOURLY} WHERE kind = 'created'")
    return {
        "day": today,
        "today": sum(n for h, n in created.items() if h >= midnight),
        "hour_ms": hour,
        "hour": created.get(hour, 0),
        "updated_today": sum(r["offers"] for r in rows if r["kind"] == "updated" and r["hour_ms"] >= midnight),
        "latest_hour_ms": latest[0]["h"] if latest else None,
        "hours": [{"hour_ms": h, "offers": created.get(h, 0)} for h in range(hour - 47 * HOUR_MS, hour + 1, HOUR_MS)],
    }


def day_totals(q: Queries) -> list[dict[str, Any]]:
    """New offers per day over the last LIVE_DAYS days, all of France with no filter: a new offer changes one of
    these rows (a range of jobs_cube's key, read in key order: no sort, and a cost that does not grow with the
    days the store keeps)."""
    since = (datetime.fromtimestamp(now_ms() / 1000, TZ).date() - timedelta(days=LIVE_DAYS)).isoformat()
    return q.serving(f"SELECT day, MAX(day_ms) AS day_ms, SUM(offers) AS offers FROM {CUBE} WHERE day >= ? GROUP BY day ORDER BY day", [since])


_HTTPS = re.compile(r"^https://[^\s\"'<>]+$")


def offer_item(r: Record) -> dict[str, Any] | None:
    """A record of jobs.offers as one line of the latest offers (plain text; a link only when it is https)."""
    v = r.value
    if not isinstance(v, dict) or not v.get("offer_id"):
        return None

    def text(k: str) -> str | None:
        x = v.get(k)
        return str(x) if x is not None and x != "" else None

    url = text("url")
    return {
        "id": str(v["offer_id"]),
        "title": text("title") or text("appellation"),
        "company": text("company"),
        "place": text("place") or text("city_name") or text("commune_name"),
        "departement": text("departement"),
        "departement_name": text("departement_name"),
        "created_ms": v.get("created_ms") if isinstance(v.get("created_ms"), int) else None,
        "updated_ms": v.get("updated_ms") if isinstance(v.get("updated_ms"), int) else None,
        "url": url if url and _HTTPS.match(url) else None,
        "time_ms": r.timestamp_ms,
    }


def safe_item(r: Record) -> dict[str, Any] | None:
    try:
        return offer_item(r)
    except Exception:  # a record of another shape must not stop the feed (it would be read again and again)
        return None


def latest(q: Queries, limit: int) -> list[dict[str, Any]]:
    """The latest offers published, newest first, each offer once (its latest version)."""
    seen: set[str] = set()
    out = []
    for r in reversed(q.tail(TOPIC, limit * 4)):
        item = safe_item(r)
        if item is not None and item["id"] not in seen:
            seen.add(item["id"])
            out.append(item)
    return out[:limit]


@router.get("/departements", summary="Offers per département over a period, by grand domaine and contract: the 101 of the map, then the others")
def get_departements(q: Q, since: Since = None, until: Until = None, grand_domaine: GrandDomaine = None, contract: Contract = None) -> dict[str, Any]:
    return departements(q, Filters(since, until, grand_domaine, contract))


@router.get("/departements/{code}", summary="One département: communes with offers, top titles, categories and the daily trend")
def get_departement(
    q: Q,
    code: Annotated[str, Path(pattern=DEPARTEMENT, description="INSEE code: 01-95, 2A, 2B, 971-976, ...")],
    since: Since = None,
    until: Until = None,
    grand_domaine: GrandDomaine = None,
    contract: Contract = None,
) -> dict[str, Any]:
    return detail(q, code, Filters(since, until, grand_domaine, contract))


@router.get("/filters", summary="Grand domaines and contract types with their labels and counts; the days the data covers")
def get_filters(q: Q) -> dict[str, Any]:
    return filters(q)


@router.get("/counter", summary="Offers created today (Europe/Paris) and this hour, updates today, and the last 48 hours")
def get_counter(q: Q) -> dict[str, Any]:
    return counter(q)


@router.get("/latest", summary="The latest offers published, newest first")
def get_latest(q: Q, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[dict[str, Any]]:
    return latest(q, limit)


def channels() -> list[Channel]:
    return [
        Computed("jobs.counter", counter),
        KeyedRows("jobs.days", day_totals, ("day",)),
        Feed("jobs.latest", [TOPIC], safe_item, keep=30),
    ]


BOARD = Board(
    app="jobs",
    title="Job offers",
    summary="France Travail job offers by département and category",
    router=router,
    channels=channels,
    script="jobs.js",
)
