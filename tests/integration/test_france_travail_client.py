"""The France Travail client and source against the loopback API server: tokens, faults, splitting."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from tests.fixtures.jobs.offers import departement_of, generate_offers
from tests.fixtures.jobs.server import FranceTravailServer

from affluent.apps.jobs.app import bundled_referentials
from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import Metrics
from affluent.sources.france_travail import CredentialsError, FranceTravailClient, FranceTravailError, FranceTravailSource, TokenBucket

HOUR_MS = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(server: FranceTravailServer, *, secret: str | None = None, clock: Any = None) -> FranceTravailClient:
    kw = {"clock": clock} if clock is not None else {}
    return FranceTravailClient(
        server.client_id,
        secret or server.client_secret,
        token_url=server.token_url,
        api_url=server.api_url,
        rate_per_s=0,
        timeout_s=1,
        reachable=server.cap,
        **kw,
    )


def window(hours: int = 2) -> dict[str, str]:
    from affluent.sources.france_travail import api_time

    end = now_ms() // 1000
    return {"minCreationDate": api_time(end - hours * 3600), "maxCreationDate": api_time(end), "sort": "1"}


@pytest.fixture(scope="module")
def offers() -> list[dict[str, Any]]:
    end = now_ms() - 60_000
    return generate_offers(400, start_ms=end - HOUR_MS, end_ms=end, seed=7)


def test_pages_206_then_200_then_204(offers: list[dict[str, Any]]) -> None:
    with FranceTravailServer(offers) as server:
        c = client(server)
        first = c.search(window(), 0)
        assert (first.first, first.last, first.total, first.more) == (0, 149, 400, True)
        last = c.search(window(), 300)
        assert (last.first, last.last, last.more, len(last.offers)) == (300, 399, False, 100)
        none = c.search(window(hours=0), 0)  # the current second: no offer was created in it
        assert none.total == 0 and none.offers == []


def test_token_renewed_before_expiry_and_on_401(offers: list[dict[str, Any]]) -> None:
    clock = Clock()
    with FranceTravailServer(offers, token_ttl_s=100) as server:
        c = client(server, clock=clock)
        c.search(window(), 0)
        clock.now += 79  # 4/5 of its life: still good
        c.search(window(), 0)
        assert server.tokens_issued == 1
        clock.now += 2
        c.search(window(), 0)
        assert server.tokens_issued == 2
        server.expire_tokens()  # revoked upstream: the 401 brings a new token, and the search succeeds
        assert c.search(window(), 0).total == 400
        assert server.tokens_issued == 3


def test_wrong_secret_names_the_settings_and_never_shows_the_secret(offers: list[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FranceTravailServer(offers) as server:
        c = client(server, secret="wrong-secret-4242")
        with pytest.raises(CredentialsError) as err:
            c.search(window(), 0)
    msg = str(err.value)
    assert "FRANCE_TRAVAIL_CLIENT_SECRET" in msg and "invalid_client" in msg
    assert "wrong-secret-4242" not in msg + repr(c) + caplog.text


@pytest.mark.parametrize(("kind", "says"), [("429", "HTTP 429"), ("503", "HTTP 503"), ("html", "HTML page"), ("truncated", "truncated JSON")])
def test_faults_are_retryable_errors_saying_what_came(offers: list[dict[str, Any]], kind: str, says: str) -> None:
    with FranceTravailServer(offers, retry_after_s=7) as server:
        c = client(server)
        server.script(kind)
        with pytest.raises(FranceTravailError) as err:
            c.search(window(), 0)
        assert says in str(err.value)
        if kind == "429":
            assert err.value.retry_after_s == 7
        assert c.search(window(), 0).total == 400  # and the next try works


def test_token_bucket_spaces_requests() -> None:
    waits: list[float] = []
    clock = Clock()
    bucket = TokenBucket(3.0, clock=clock, sleep=waits.append)
    for _ in range(4):
        bucket.take()
    assert waits == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert TokenBucket(0).take() == 0.0


def test_a_second_above_the_cap_is_split_by_departement_and_what_stays_out_of_reach_is_counted() -> None:
    """With a cap of 300 results: 500 offers in one second are searched département by département."""
    refs = bundled_referentials()
    second = (now_ms() // 1000 - 600) * 1000
    crowded = generate_offers(500, start_ms=second, end_ms=second + 999, seed=71, kinds=("partner",))
    # 320 more in one département and the same second: 20 of them cannot be reached
    paris = [o for o in generate_offers(12_000, start_ms=second, end_ms=second + 999, seed=72, kinds=("partner",)) if departement_of(o) == "75"]
    extra = paris[:320]
    assert len(extra) == 320
    metrics = Metrics()
    with FranceTravailServer(crowded + extra, cap=300) as server:
        src = FranceTravailSource(client(server), since_ms=second - 5000, departements=refs.departements, interval_s=3600, metrics=metrics)
        src.open(None)
        got: list[Any] = []
        while not src.backfilled:
            got += [r.value for r in src.poll().records]
    ids = Counter(o["id"] for o in got)
    assert max(ids.values()) == 1
    in_75 = [o for o in crowded + extra if departement_of(o) == "75"]
    assert len(in_75) > 300
    missed = {o["id"] for o in crowded + extra} - set(ids)
    assert len(missed) == len(in_75) - 300
    assert all(departement_of(o) == "75" for o in crowded + extra if o["id"] in missed)
    assert metrics.get("affluent_france_travail_capped_windows_total") >= 1


def test_source_failures_heal_from_the_same_page(offers: list[dict[str, Any]]) -> None:
    refs = bundled_referentials()
    with FranceTravailServer(offers) as server:
        src = FranceTravailSource(client(server), since_ms=now_ms() - 2 * HOUR_MS, departements=refs.departements, metrics=Metrics())
        src.open(None)
        got = src.poll().records
        server.script("503", "html")
        for _ in range(2):
            with pytest.raises(SourceUnavailableError) as err:
                src.poll()
            assert err.value.retry_after_s is not None and err.value.retry_after_s >= 0.5
        while not src.backfilled:
            got += src.poll().records
    assert sorted(r.key for r in got) == sorted(o["id"] for o in offers)


def test_referentials_refresh_from_the_api_keeps_the_cities_of_arrondissements(tmp_path: Any) -> None:
    from affluent.apps.jobs.app import cached_referentials_path, load_referentials

    bundled = bundled_referentials()
    api = {k: v for k, v in bundled.data.items() if k != "_meta"}
    api["departements"] = [{**d, "libelle": d["libelle"].upper()} if d["code"] == "29" else d for d in api["departements"]]
    with FranceTravailServer([], referentials=api) as server:
        refs = load_referentials(tmp_path, client(server), max_age_days=7)
        assert refs.origin == "the France Travail API"
        assert refs.departements["29"] == "FINISTÈRE"  # the API's copy, not the bundled one
        assert refs.city_of["75111"] == "75056"
        assert server.counts[("referentiel", 200)] == 8
        # kept in the data folder, and read from there while fresh
        assert cached_referentials_path(tmp_path).exists()
        assert load_referentials(tmp_path, client(server)).departements["29"] == "FINISTÈRE"
        assert server.counts[("referentiel", 200)] == 8


def test_overlapping_searches_send_an_offer_again_only_when_it_changed(offers: list[dict[str, Any]]) -> None:
    from tests.fixtures.jobs.offers import bad_offers

    refs = bundled_referentials()
    with FranceTravailServer(offers) as server:
        server.add(bad_offers(3, at_ms=now_ms() - 120_000), at_ms=now_ms() - 120_000)
        src = FranceTravailSource(client(server), since_ms=now_ms() - 2 * HOUR_MS, departements=refs.departements, interval_s=1, overlap_s=3 * 3600)
        src.open(None)
        first: list[Any] = []
        while not src.backfilled:
            first += src.poll().records
        server.update(offers[0]["id"], later_ms=now_ms())
        again: list[Any] = []
        src.cursor_s -= 5  # the next search is due: [cursor - overlap, now] covers every offer again
        while src.windows_done < 2 or src.main.plan:
            again += src.poll().records
    assert len(first) == len(offers) + 5
    # the second search saw every offer again, and sent only the one that changed
    assert [r.key for r in again] == [offers[0]["id"]]
