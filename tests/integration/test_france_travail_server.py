"""The France Travail look-alike server and the offer generator the jobs app is tested against."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from tests.fixtures.jobs.offers import (
    BAD_KINDS,
    DEPARTEMENT_CODES,
    UNKNOWN_ROME,
    bad_offers,
    city_of,
    created_ms,
    departement_of,
    format_date,
    generate_offers,
    load_referentials,
    parse_ms,
    updated,
)
from tests.fixtures.jobs.server import MSG_DEPARTEMENT, MSG_RANGE_FORMAT, MSG_RANGE_TOO_BIG, FranceTravailServer
from tests.integration.gbfs_server import Clock

T0 = 1_773_129_600_000  # 2026-03-10T08:00:00Z
HOUR = 3_600_000
SCOPE = "api_offresdemploiv2 o2dsoffre"


def api_date(ms: int) -> str:
    return format_date(ms, millis=False)


@pytest.fixture(scope="module")
def offers_5k() -> list[dict[str, Any]]:
    return generate_offers(5000, start_ms=T0, end_ms=T0 + 24 * HOUR, seed=7)


@pytest.fixture
def server() -> Iterator[FranceTravailServer]:
    with FranceTravailServer(generate_offers(400, start_ms=T0, end_ms=T0 + HOUR, seed=1)) as s:
        yield s


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def token(server: FranceTravailServer, client: httpx.Client, **form: str) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_id": server.client_id, "client_secret": server.client_secret, "scope": SCOPE, **form}
    return client.post(server.token_url, data=data)


def auth(server: FranceTravailServer, client: httpx.Client) -> dict[str, str]:
    return {"Authorization": "Bearer " + token(server, client).json()["access_token"]}


def search(server: FranceTravailServer, client: httpx.Client, headers: dict[str, str], **params: Any) -> httpx.Response:
    return client.get(server.api_url + "/v2/offres/search", params=params, headers=headers)


# -- token ----------------------------------------------------------------------------------------------------
def test_token_endpoint(server: FranceTravailServer, client: httpx.Client) -> None:
    r = token(server, client)
    assert r.status_code == 200
    doc = r.json()
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 1499 and doc["scope"] == SCOPE and doc["access_token"]
    r = token(server, client, client_secret="wrong")
    assert (r.status_code, r.json()) == (400, {"error": "invalid_client", "error_description": "Client authentication failed"})
    assert token(server, client, scope="api_offresdemploiv2").json()["error"] == "invalid_scope"
    assert token(server, client, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert server.tokens_issued == 1
    assert all("client_secret" not in params for _, _, params in server.requests)
    server.fail_token("503", "html")
    assert token(server, client).status_code == 503
    assert token(server, client).headers["content-type"].startswith("text/html")
    assert token(server, client).status_code == 200


def test_401_without_a_valid_token() -> None:
    clock = Clock()
    with FranceTravailServer(generate_offers(10, start_ms=T0, end_ms=T0 + HOUR, seed=1), clock=clock, token_ttl_s=100) as server, httpx.Client() as client:
        r = search(server, client, {})
        assert (r.status_code, r.content) == (401, b"")
        headers = auth(server, client)
        assert search(server, client, headers).status_code == 200
        clock.now += 101  # past the token's lifetime
        assert search(server, client, headers).status_code == 401
        headers = auth(server, client)
        assert search(server, client, headers).status_code == 200
        server.expire_tokens()
        assert search(server, client, headers).status_code == 401
        assert client.get(server.api_url + "/v2/referentiel/regions", headers=headers).status_code == 401
        assert server.counts["search", 401] == 3


# -- search ---------------------------------------------------------------------------------------------------
def test_paging_206_200_204(server: FranceTravailServer, client: httpx.Client) -> None:
    h = auth(server, client)
    window = {"minCreationDate": api_date(T0), "maxCreationDate": api_date(T0 + HOUR), "sort": 1}
    seen: list[dict[str, Any]] = []
    for p, status, content_range in ((0, 206, "offres 0-149/400"), (150, 206, "offres 150-299/400"), (300, 200, "offres 300-399/400")):
        r = search(server, client, h, range=f"{p}-{p + 149}", **window)
        assert (r.status_code, r.headers["content-range"], r.headers["accept-range"]) == (status, content_range, "150")
        assert r.headers["content-type"] == "application/json;charset=UTF-8"
        doc = r.json()
        seen += doc["resultats"]
        [agg] = doc["filtresPossibles"]
        assert agg["filtre"] == "typeContrat" and sum(a["nbResultats"] for a in agg["agregation"]) == 400
    assert len({o["id"] for o in seen}) == 400
    stamps = [parse_ms(o["dateCreation"]) for o in seen]
    assert stamps == sorted(stamps, reverse=True)  # sort=1: newest first
    r = search(server, client, h, range="450-599", **window)
    assert (r.status_code, r.content) == (204, b"")
    r = search(server, client, h, minCreationDate=api_date(T0 - 2 * HOUR), maxCreationDate=api_date(T0 - HOUR))
    assert (r.status_code, r.headers["content-range"]) == (204, "offres */0")
    # no range: 0-149; sort 0 pages are stable and cover everything once
    assert search(server, client, h).headers["content-range"] == "offres 0-149/400"
    relevance = [o["id"] for p in (0, 150, 300) for o in search(server, client, h, range=f"{p}-{p + 149}").json()["resultats"]]
    assert sorted(relevance) == sorted(o["id"] for o in seen) and relevance != [o["id"] for o in seen]
    assert server.connections == 1  # keep-alive: one connection for every request


TOO_BIG = MSG_RANGE_TOO_BIG


@pytest.mark.parametrize(
    ("range_", "message"),
    [("abc", MSG_RANGE_FORMAT), ("0-", MSG_RANGE_FORMAT), ("0-150", TOO_BIG), ("10-5", TOO_BIG), ("3001-3010", TOO_BIG), ("3000-3150", TOO_BIG)],
)
def test_range_errors(server: FranceTravailServer, client: httpx.Client, range_: str, message: str) -> None:
    r = search(server, client, auth(server, client), range=range_)
    assert (r.status_code, r.json()) == (400, {"message": message})


def test_cap_reports_the_real_total_but_serves_3150_at_most(client: httpx.Client) -> None:
    with FranceTravailServer(generate_offers(3300, start_ms=T0, end_ms=T0 + HOUR, seed=2)) as server:
        h = auth(server, client)
        r = search(server, client, h, range="3000-3149", sort=1)
        assert (r.status_code, r.headers["content-range"], len(r.json()["resultats"])) == (206, "offres 3000-3149/3300", 150)
        assert search(server, client, h, range="3150-3299").status_code == 400


def test_creation_bounds_are_inclusive_whole_seconds(client: httpx.Client) -> None:
    base = generate_offers(5, start_ms=T0, end_ms=T0 + HOUR, seed=3, kinds=())
    stamps = ["2026-03-10T07:59:59.999Z", "2026-03-10T08:00:00Z", "2026-03-10T08:59:59.999Z", "2026-03-10T09:00:00.512Z", "2026-03-10T09:00:01Z"]
    for o, stamp in zip(base, stamps, strict=True):
        o["dateCreation"] = o["dateActualisation"] = stamp
    with FranceTravailServer(base) as server:
        h = auth(server, client)

        def window(lo: str, hi: str) -> list[str]:
            r = search(server, client, h, minCreationDate=lo, maxCreationDate=hi, sort=1)
            return [o["dateCreation"] for o in r.json()["resultats"]] if r.status_code != 204 else []

        assert window("2026-03-10T08:00:00Z", "2026-03-10T09:00:00Z") == stamps[3:0:-1]
        assert window("2026-03-10T09:00:00Z", "2026-03-10T10:00:00Z") == [stamps[4], stamps[3]]  # 09:00:00.512 in both
        assert window("2026-03-10T07:59:59Z", "2026-03-10T07:59:59Z") == [stamps[0]]
        assert window("2026-03-10T10:00:00Z", "2026-03-10T09:00:00Z") == []
        for bad in ({"minCreationDate": "2026-03-10T08:00:00Z"}, {"minCreationDate": "2026-03-10 08:00:00", "maxCreationDate": "2026-03-10T09:00:00Z"}):
            r = search(server, client, h, **bad)
            assert r.status_code == 400 and r.json()["message"]
        r = search(server, client, h, minCreationDate="2026-03-10T08:00:00.000Z", maxCreationDate="2026-03-10T09:00:00Z")
        assert r.status_code == 400


def test_departement_filter(offers_5k: list[dict[str, Any]], client: httpx.Client) -> None:
    with FranceTravailServer(offers_5k) as server:
        h = auth(server, client)
        want = Counter(departement_of(o) for o in offers_5k)
        for codes in ("29", "2A", "971,972,973,974,976", "75,92,93,94,95"):
            r = search(server, client, h, departement=codes)
            total = int(r.headers["content-range"].rsplit("/", 1)[1])
            assert total == sum(want[c] for c in codes.split(",")) > 0
        for codes in ("99", "20", "29,", "01,02,03,04,05,06"):
            r = search(server, client, h, departement=codes)
            assert (r.status_code, r.json()) == (400, {"message": MSG_DEPARTEMENT})


# -- faults ---------------------------------------------------------------------------------------------------
def test_scripted_faults(server: FranceTravailServer, client: httpx.Client) -> None:
    h = auth(server, client)
    server.retry_after_s = 3
    server.script("429", "500", "503", "html", "truncated", "401")
    r = search(server, client, h)
    assert (r.status_code, r.headers["retry-after"], r.headers["content-type"]) == (429, "3", "text/plain")
    assert search(server, client, h).status_code == 500
    assert search(server, client, h).status_code == 503
    r = search(server, client, h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    r = search(server, client, h)
    assert r.status_code == 206
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)
    assert search(server, client, h).status_code == 401
    assert search(server, client, h).status_code == 206  # the script is used up
    server.timeout_sleep_s = 0.5
    server.script("timeout")
    with pytest.raises(httpx.ReadTimeout):
        client.get(server.api_url + "/v2/offres/search", headers=h, timeout=0.1)
    assert server.searches == 8


def test_throttle_answers_429_with_retry_after(server: FranceTravailServer, client: httpx.Client) -> None:
    h = auth(server, client)
    server.throttle(2, retry_after_s=1, burst=5)
    replies = [search(server, client, h) for _ in range(20)]
    statuses = [r.status_code for r in replies]
    assert statuses[:5] == [206] * 5 and statuses.count(429) >= 12  # a token every 0.5 s after the burst
    assert all(r.headers["retry-after"] == "1" and r.headers["content-type"] == "text/plain" for r in replies if r.status_code == 429)
    time.sleep(0.6)
    r = search(server, client, h)
    assert r.status_code == 206 and r.headers["x-ratelimit-replenish-rate-clientidlimiter"] == "2"
    server.throttle(None)
    assert all(search(server, client, h).status_code == 206 for _ in range(20))


# -- referentials, detail, live changes -----------------------------------------------------------------------
def test_referentials(server: FranceTravailServer, client: httpx.Client) -> None:
    h = auth(server, client)
    r = client.get(server.api_url + "/v2/referentiel/departements", headers=h)
    assert (r.status_code, r.headers["content-range"]) == (200, "departements */101")
    assert {"code": "29", "libelle": "Finistère", "region": {"code": "53", "libelle": "Bretagne"}} in r.json()
    communes = client.get(server.api_url + "/v2/referentiel/communes", headers=h).json()
    assert {"code", "libelle", "codePostal", "codeDepartement"} == set().union(*communes)
    assert client.get(server.api_url + "/v2/referentiel/nope", headers=h).status_code == 404
    assert client.get(server.api_url + "/v2/referentiel/_meta", headers=h).status_code == 404


def test_detail_add_and_update(server: FranceTravailServer, client: httpx.Client) -> None:
    h = auth(server, client)
    first = search(server, client, h).json()["resultats"][0]
    assert server.offer(first["id"]) == first
    assert client.get(server.api_url + f"/v2/offres/{first['id']}", headers=h).json() == first
    assert client.get(server.api_url + "/v2/offres/000ZZZZ", headers=h).status_code == 204
    new = server.update(first["id"], typeContrat="MIS")
    assert parse_ms(new["dateActualisation"]) == parse_ms(first["dateActualisation"]) + 60_000
    assert client.get(server.api_url + f"/v2/offres/{first['id']}", headers=h).json()["typeContrat"] == "MIS"
    server.add(generate_offers(10, start_ms=T0, end_ms=T0 + HOUR, seed=99))
    assert search(server, client, h).headers["content-range"] == "offres 0-149/410"
    bad = bad_offers(5, at_ms=T0)
    server.add(bad, at_ms=T0)
    r = search(server, client, h, minCreationDate=api_date(T0), maxCreationDate=api_date(T0))
    assert sum(o.get("id", "").endswith(tuple("BAD" + c for c in "ABCDE")) or "id" not in o for o in r.json()["resultats"]) == 5
    with pytest.raises(ValueError):
        server.add(bad[:1])


# -- the generator --------------------------------------------------------------------------------------------
def test_generator_is_deterministic() -> None:
    a = generate_offers(300, start_ms=T0, end_ms=T0 + HOUR, seed=11)
    assert a == generate_offers(300, start_ms=T0, end_ms=T0 + HOUR, seed=11)
    b = generate_offers(300, start_ms=T0, end_ms=T0 + HOUR, seed=12)
    assert a != b and not {o["id"] for o in a} & {o["id"] for o in b}


def test_generator_holds_every_case(offers_5k: list[dict[str, Any]]) -> None:
    offers = offers_5k
    refs = load_referentials()
    ids = [o["id"] for o in offers]
    assert len(set(ids)) == len(ids)
    partner = [o for o in offers if o["origineOffre"]["origine"] == "2"]
    assert all(re.fullmatch(r"\d{7}", o["id"]) and o["origineOffre"]["partenaires"][0]["nom"] for o in partner)
    assert all(re.fullmatch(r"\d{3}[A-Z]{4}", o["id"]) for o in offers if o["origineOffre"]["origine"] == "1")
    assert 0.25 < len(partner) / len(offers) < 0.35
    sizes = [len(orjson.dumps(o)) for o in offers]
    assert 800 < sum(sizes) / len(sizes) < 1500

    # dates: in the window, both forms, updated at or after creation
    created = [created_ms(o) for o in offers]
    assert all(c is not None and T0 <= c < T0 + 24 * HOUR for c in created)
    assert all(parse_ms(o["dateActualisation"]) >= parse_ms(o["dateCreation"]) for o in offers)
    with_ms = sum("." in o["dateCreation"] for o in offers)
    assert 0.4 < with_ms / len(offers) < 0.6

    # places
    lieux = [o["lieuTravail"] for o in offers]
    communes = [lt["commune"] for lt in lieux if "commune" in lt]
    deps = Counter(departement_of(o) for o in offers)
    assert {"971", "972", "973", "974", "976", "2A", "2B"} <= set(deps) and set(deps) - {None} <= DEPARTEMENT_CODES
    assert all(lt["commune"][:2] in ("2A", "2B") for lt in lieux if lt.get("codePostal", "").startswith("20"))
    assert any(c.startswith("2A") for c in communes) and any(c.startswith("2B") for c in communes)
    corsica = [lt for lt in lieux if lt.get("commune", "")[:2] in ("2A", "2B")]
    assert all(lt["codePostal"].startswith("20") and lt["libelle"][:2] == lt["commune"][:2] for lt in corsica)
    assert any(lt["libelle"].startswith("971 - ") for lt in lieux)
    cities = Counter(city_of(c) for c in communes if city_of(c) != c)
    assert set(cities) == {"75056", "69123", "13055"} and sum(cities.values()) > 150
    no_commune = [lt for lt in lieux if "commune" not in lt]
    assert all("latitude" not in lt and "codePostal" not in lt for lt in no_commune)
    assert any(re.fullmatch(r"\d\d - .+ \(Dept\.\)", lt["libelle"]) for lt in no_commune)
    assert "France" in {lt["libelle"] for lt in no_commune}
    region_names = {r["libelle"] for r in refs["regions"]}
    assert any(lt["libelle"] in region_names for lt in no_commune)
    assert any("commune" in lt and "latitude" not in lt for lt in lieux)
    for lt in lieux:
        if "latitude" in lt:
            assert -22 < lt["latitude"] < 52 and -62 < lt["longitude"] < 56

    # titles and codes
    titles = [o["intitule"] for o in offers]
    assert any("<b>" in t for t in titles) and any("<script>" in t for t in titles) and any("&amp;" in t for t in titles)
    romes = Counter(o["romeCode"] for o in offers)
    known = {m["code"] for m in refs["metiers"]}
    assert UNKNOWN_ROME in romes and set(romes) - {UNKNOWN_ROME} <= known
    contracts = Counter(o["typeContrat"] for o in offers)
    assert [c for c, _ in contracts.most_common(3)] == ["CDI", "CDD", "MIS"]
    assert all(o["typeContratLibelle"] for o in offers)
    assert {o["qualificationCode"] for o in offers} == set("123456789")
    assert {o["experienceExige"] for o in offers} == set("DSE")
    sectors = {s["code"] for s in refs["secteursActivites"]}
    assert all(o["secteurActivite"] in sectors and o["codeNAF"][:2] == o["secteurActivite"] for o in offers if "secteurActivite" in o)
    assert any(o["alternance"] for o in offers)


def test_clean_kinds_and_helpers() -> None:
    clean = generate_offers(500, start_ms=T0, end_ms=T0 + HOUR, seed=4, kinds=())
    assert all(o["origineOffre"]["origine"] == "1" and "latitude" in o["lieuTravail"] and "." not in o["dateCreation"] for o in clean)
    assert departement_of({"lieuTravail": {"libelle": "75 - Paris (Dept.)"}}) == "75"
    assert departement_of({"lieuTravail": {"libelle": "Bretagne"}}) is None
    assert departement_of({"lieuTravail": {"libelle": "99 - Ailleurs"}}) is None
    assert departement_of({"lieuTravail": {"commune": "97411", "libelle": "974 - SAINT-DENIS"}}) == "974"
    assert departement_of({"lieuTravail": {"commune": "2B033", "codePostal": "20200"}}) == "2B"
    assert departement_of({"lieuTravail": "29 - BREST"}) is None
    assert (city_of("75115"), city_of("69381"), city_of("13216"), city_of("29019")) == ("75056", "69123", "13055", "29019")
    assert parse_ms("2026-03-10T08:00:00Z") == T0 and parse_ms("2026-03-10T08:00:00.5Z") == T0 + 500


def test_bad_offers_and_updates() -> None:
    bad = bad_offers(3)
    assert len(bad) == len(BAD_KINDS)
    assert [created_ms(o) is None for o in bad] == [True, True, False, False, False]
    assert "id" not in bad[2] and isinstance(bad[3]["lieuTravail"], str) and bad[4]["lieuTravail"]["latitude"] == "abc"
    [o] = generate_offers(1, start_ms=T0, end_ms=T0 + HOUR, seed=5)
    later = parse_ms(o["dateActualisation"]) + 1000
    u = updated(o, later_ms=later, typeContrat="CDD")
    assert (u["id"], parse_ms(u["dateActualisation"]), u["typeContrat"], u["dateCreation"]) == (o["id"], later, "CDD", o["dateCreation"])
    with pytest.raises(ValueError):
        updated(o, later_ms=later - 5000)
