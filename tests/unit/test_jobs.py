"""The jobs app's pure parts: normalising an offer, versions and the count changes they make, KeyedStep's ttl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from affluent.apps.jobs.app import bundled_referentials
from affluent.apps.jobs.pipeline import deltas, version_step
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.sources.france_travail import BadOfferError, Referentials, normalize_offer, paris_day, parse_api_time_ms
from affluent.testing import ListSource, read_topic, run_until, temp_log


@pytest.fixture(scope="module")
def refs() -> Referentials:
    return bundled_referentials()


def offer(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "204BRZQ",
        "intitule": "Préparateur de commandes (H/F)",
        "dateCreation": "2026-03-10T08:42:17.512Z",
        "dateActualisation": "2026-03-10T08:47:03Z",
        "lieuTravail": {"libelle": "29 - Brest", "latitude": 48.39, "longitude": -4.48, "codePostal": "29200", "commune": "29019"},
        "romeCode": "N1103",
        "typeContrat": "CDD",
        "experienceExige": "S",
        "qualificationCode": "6",
        "qualificationLibelle": "Employé qualifié",
        "secteurActivite": "52",
        "entreprise": {"nom": "LOGIPORT"},
        "origineOffre": {"origine": "2", "partenaires": [{"nom": "BEETWEEN"}]},
    }
    base.update(kw)
    return base


def test_an_offer_is_named_from_the_referentials(refs: Referentials) -> None:
    o = normalize_offer(offer(), refs)
    assert (o["departement"], o["departement_name"], o["region"], o["region_name"]) == ("29", "Finistère", "53", "Bretagne")
    assert (o["commune"], o["commune_name"], o["city"]) == ("29019", "BREST", "29019")
    assert (o["grand_domaine"], o["domaine"]) == ("N", "N11")
    assert o["grand_domaine_label"] == refs.grands_domaines["N"] and o["contract_label"] == refs.contracts["CDD"]
    assert o["experience_label"] == "Expérience souhaitée" and o["sector_label"] == refs.sectors["52"]
    assert (o["created_ms"], o["updated_ms"], o["day"]) == (1773132137512, 1773132423000, "2026-03-10")
    assert (o["partner"], o["place_issue"]) == ("BEETWEEN", None)


@pytest.mark.parametrize(
    ("lieu", "dept", "city", "issue"),
    [
        ({"libelle": "75 - PARIS 11", "commune": "75111", "latitude": 48.86, "longitude": 2.38}, "75", "75056", None),
        ({"libelle": "13 - MARSEILLE 01", "commune": "13201", "latitude": 43.3, "longitude": 5.38}, "13", "13055", None),
        ({"libelle": "69 - LYON 03", "commune": "69383"}, "69", "69123", "no_coordinates"),
        ({"libelle": "2A - AJACCIO", "commune": "2A004", "latitude": 41.9, "longitude": 8.7}, "2A", "2A004", None),
        ({"libelle": "971 - LES ABYMES", "commune": "97101", "latitude": 16.27, "longitude": -61.5}, "971", "97101", None),
        ({"libelle": "976 - MAMOUDZOU", "commune": "97611", "latitude": "abc", "longitude": 45.2}, "976", "97611", "bad_coordinates"),
        ({"libelle": "35 - Ille-et-Vilaine (Dept.)"}, "35", None, "departement_only"),
        ({"libelle": "Bretagne"}, None, None, "region_only"),
        ({"libelle": "France"}, None, None, "country_only"),
        ({}, None, None, "unknown_place"),
    ],
)
def test_places(refs: Referentials, lieu: dict[str, Any], dept: str | None, city: str | None, issue: str | None) -> None:
    o = normalize_offer(offer(lieuTravail=lieu), refs)
    assert (o["departement"], o["city"], o["place_issue"]) == (dept, city, issue)
    if issue is not None and issue != "no_coordinates":
        assert o["lat"] is None and o["lon"] is None
    if issue == "region_only":
        assert o["region"] == "53"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"dateCreation": "10/03/2026"}, "dateCreation"),
        ({"dateCreation": "2026-13-45T99:00:00Z"}, "dateCreation"),
        ({"dateActualisation": "yesterday"}, "dateActualisation"),
        ({"id": None}, "no id"),
        ({"lieuTravail": "Brest"}, "lieuTravail"),
    ],
)
def test_bad_offers_say_why(refs: Referentials, change: dict[str, Any], reason: str) -> None:
    with pytest.raises(BadOfferError, match=reason):
        normalize_offer(offer(**change), refs)


def test_unknown_rome_and_html_title_are_kept(refs: Referentials) -> None:
    o = normalize_offer(offer(romeCode="Z9999", romeLibelle="Métier inconnu", intitule="<script>alert(1)</script>"), refs)
    assert (o["grand_domaine"], o["domaine"], o["rome_label"]) == (None, None, "Métier inconnu")
    assert o["title"] == "<script>alert(1)</script>"


def test_dates_and_days() -> None:
    assert parse_api_time_ms("2026-03-10T08:42:17Z") == 1773132137000
    assert parse_api_time_ms("2026-03-10") is None and parse_api_time_ms(17) is None
    # 23:30 UTC on 10 March is 00:30 on the 11th in Paris
    assert paris_day(parse_api_time_ms("2026-03-10T23:30:00Z") or 0)[0] == "2026-03-11"


def test_versions_pass_new_and_later_only_and_deltas_move_counts(refs: Referentials) -> None:
    first = normalize_offer(offer(), refs)
    state, out = version_step(None, first, 0)
    assert out[0]["versions"] == 1 and out[0]["was"] is None
    plus = {d["key"]: d["n"] for d in deltas(out[0])}
    assert plus[("c", "contract", "CDD", "2026-03-10")] == 1 and plus[("h", "created", 1773129600000)] == 1
    assert version_step(state, first, 0) == (state, [])  # the same version again
    later = normalize_offer(offer(dateActualisation="2026-03-11T09:00:00Z", typeContrat="CDI"), refs)
    state2, out2 = version_step(state, later, 0)
    moved = {d["key"]: d["n"] for d in deltas(out2[0])}
    assert moved == {
        ("h", "updated", 1773219600000): 1,
        ("c", "contract", "CDD", "2026-03-10"): -1,
        ("c", "contract", "CDI", "2026-03-10"): 1,
        ("q", "2026-03-10", "29", "N", "CDD"): -1,
        ("q", "2026-03-10", "29", "N", "CDI"): 1,
    }
    older = normalize_offer(offer(dateActualisation="2026-03-10T08:50:00Z"), refs)
    assert version_step(state2, older, 0) == (state2, [])


def running_total(state: Any, v: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    n = (state or 0) + v["n"]
    return n, [{"k": v["k"], "total": n}]


def test_keyed_step_ttl_forgets_and_counts_late_and_coalesce_keeps_each_keys_last(tmp_path: Path) -> None:
    day = 86_400_000
    recs = [Record(value={"k": "a", "n": 1}, timestamp_ms=t) for t in (day, day + 1, day + 2)]
    recs += [Record(value={"k": "b", "n": 5}, timestamp_ms=10 * day)]  # a's state expires (ttl 2 days)
    recs += [Record(value={"k": "a", "n": 1}, timestamp_ms=day + 3)]  # late: behind the newest by more than the ttl
    recs += [Record(value={"k": "a", "n": 1}, timestamp_ms=10 * day + 1)]  # a again, from nothing
    log = temp_log(tmp_path)
    p = Pipeline("totals")
    src = ListSource(recs, batch_size=100)
    p.source(src, topic="in").stateful(running_total, key=lambda v: v["k"], name="totals", ttl_ms=2 * day, coalesce=True).to_topic("out")
    out = run_until(p, log, topic="out", count=2)
    # one batch: each key's last output only
    assert sorted((r.value["k"], r.value["total"]) for r in out) == [("a", 1), ("b", 5)]
    assert len(read_topic(log, "out")) == 2


def test_credentials_come_from_the_environment_or_dotenv_and_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from affluent.config import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRANCE_TRAVAIL_CLIENT_ID", raising=False)
    monkeypatch.delenv("FRANCE_TRAVAIL_CLIENT_SECRET", raising=False)
    (tmp_path / ".env").write_text("FRANCE_TRAVAIL_CLIENT_ID=from-dotenv\nFRANCE_TRAVAIL_CLIENT_SECRET=dotenv-secret-77\n")
    s = Settings()
    assert s.france_travail_client_id == "from-dotenv"
    assert "dotenv-secret-77" not in repr(s) + str(s.model_dump())
    monkeypatch.setenv("FRANCE_TRAVAIL_CLIENT_ID", "from-env")
    monkeypatch.setenv("AFFLUENT__JOBS__API_URL", "http://127.0.0.1:9/api")
    s = Settings()
    assert (s.france_travail_client_id, s.jobs.api_url) == ("from-env", "http://127.0.0.1:9/api")
