"""The jobs app against a real loopback server that behaves like the France Travail API.

Every generated offer must arrive exactly once, and the counts per département and per category
must equal a direct count over the generated offers (computed here by the fixtures' own simple
rules, not by affluent's): for 10,000 offers created within the same minute, after a token expiry
mid-backfill, under 429s, and after a SIGKILL mid-backfill and a restart (test_jobs_kill.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tests.fixtures.jobs.offers import bad_offers, city_of, created_ms, departement_of, generate_offers, grand_domaine_of, parse_ms, updated
from tests.fixtures.jobs.server import FranceTravailServer

from affluent.apps.jobs import tables
from affluent.apps.jobs.app import bundled_referentials
from affluent.apps.jobs.pipeline import T_RAW, build_pipelines
from affluent.core.clock import now_ms
from affluent.core.metrics import Metrics
from affluent.core.runtime import Runtime
from affluent.core.sqlite_log import SQLiteLog
from affluent.sinks.serving import read_serving
from affluent.sources.france_travail import FranceTravailClient, FranceTravailSource, Referentials, paris_day
from affluent.testing import read_topic, run_runtime_until

MINUTE_MS = 60_000
GRANDS_DOMAINES = set("ABCDEFGHIJKLMN")
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def refs() -> Referentials:
    return bundled_referentials()


def client_for(server: FranceTravailServer, *, rate_per_s: float = 0.0) -> FranceTravailClient:
    return FranceTravailClient(server.client_id, server.client_secret, token_url=server.token_url, api_url=server.api_url, rate_per_s=rate_per_s, timeout_s=5)


class JobsRun:
    """The jobs pipelines over a source, in a runtime of this process, until the source is backfilled and read."""

    def __init__(self, folder: Path, source: FranceTravailSource, refs: Referentials) -> None:
        self.folder = folder
        self.serving = folder / "serving.db"
        self.log = SQLiteLog(folder / "log.db")
        self.source = source
        self.pipelines = build_pipelines(source, refs, serving_db=self.serving, lake_root=folder / "lake", lake_commit_ms=200)
        self.metrics = Metrics()

    def run(self, timeout_s: float = 120.0, during: Any = None, until: Any = None) -> Runtime:
        rt = Runtime(self.log, metrics=self.metrics)
        for p in self.pipelines:
            rt.add(p)
        return run_runtime_until(
            rt,
            lambda: self.source.backfilled and (until is None or until()) and self._appended(rt) and self._caught_up(),
            timeout_s=timeout_s,
            during=during,
            what=lambda: f"not backfilled: {self.source.windows_done} windows, {self.source.offers} offers",
            poll_s=0.1,
        )

    def _appended(self, rt: Runtime) -> bool:
        """The source's last poll is in the log (it counts its offers before the runtime appends them)."""
        return next(s["records"] for s in rt.status() if s["kind"] == "source") >= self.source.offers

    def _caught_up(self) -> bool:
        ends = self.log.end_offsets(T_RAW) if self.log.topic_exists(T_RAW) else {}
        done = self.log.committed("jobs", T_RAW) if ends else {}
        return all(done.get(p, 0) >= e for p, e in ends.items())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return read_serving(self.serving, sql)


def counts_of(run: JobsRun, dimension: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in run.rows(f"SELECT code, offers FROM {tables.COUNTS} WHERE dimension = '{dimension}'"):
        if r["offers"]:
            out[r["code"]] += r["offers"]
    return out


def expected(offers: list[dict[str, Any]], fn: Any) -> Counter[str]:
    return Counter(fn(o) or "" for o in offers)


def assert_counts_match(run: JobsRun, offers: list[dict[str, Any]]) -> None:
    """Exactly once: every offer id once in the serving store, and every count equal to a direct count."""
    ids = [r["offer_id"] for r in run.rows(f"SELECT offer_id FROM {tables.OFFERS}")]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(o["id"] for o in offers)
    assert counts_of(run, "departement") == expected(offers, departement_of)
    # an unknown ROME code (Z9999) names no grand domaine: counted under '' (unknown)
    assert counts_of(run, "grand_domaine") == expected(offers, lambda o: g if (g := grand_domaine_of(o)) in GRANDS_DOMAINES else "")
    assert counts_of(run, "contract") == expected(offers, lambda o: o.get("typeContrat"))
    assert counts_of(run, "experience") == expected(offers, lambda o: o.get("experienceExige"))
    assert counts_of(run, "qualification") == expected(offers, lambda o: o.get("qualificationCode"))
    assert counts_of(run, "sector") == expected(offers, lambda o: o.get("secteurActivite"))
    communes = expected(offers, lambda o: (o.get("lieuTravail") or {}).get("commune"))
    assert counts_of(run, "commune") == communes
    assert counts_of(run, "city") == _fold(communes)
    days = expected(offers, lambda o: paris_day(created_ms(o) or 0)[0])
    day_counts: Counter[str] = Counter()
    for r in run.rows(f"SELECT day, sum(offers) AS n FROM {tables.CUBE} GROUP BY day"):
        if r["n"]:
            day_counts[r["day"]] = r["n"]
    assert day_counts == days
    created = sum(r["offers"] for r in run.rows(f"SELECT offers FROM {tables.HOURLY} WHERE kind = 'created'"))
    assert created == len(offers)


def _fold(communes: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for c, n in communes.items():
        out[city_of(c) if c else ""] += n
    return out


@pytest.fixture
def day_of_offers() -> list[dict[str, Any]]:
    """A realistic day: 3,000 offers over 24 h, plus 10,000 created within the same minute."""
    end = now_ms() - 10 * MINUTE_MS
    spread = generate_offers(3000, start_ms=end - 24 * HOUR_MS, end_ms=end, seed=11)
    minute = end - 3 * HOUR_MS
    burst = generate_offers(10_000, start_ms=minute, end_ms=minute + MINUTE_MS, seed=12)
    return spread + burst


def make_source(server: FranceTravailServer, refs: Referentials, **kw: Any) -> FranceTravailSource:
    kw.setdefault("since_ms", now_ms() - 25 * HOUR_MS)
    return FranceTravailSource(client_for(server), departements=refs.departements, interval_s=3600, overlap_s=300, first_backoff_s=0.1, metrics=Metrics(), **kw)


def test_every_offer_once_with_10000_in_one_minute(tmp_path: Path, refs: Referentials, day_of_offers: list[dict[str, Any]]) -> None:
    with FranceTravailServer(day_of_offers) as server:
        run = JobsRun(tmp_path, make_source(server, refs), refs)
        run.run()
        # the minute held more than `range` reaches: it was split, and every window was paged to its end
        assert run.source.windows_done > 3
        assert server.counts[("search", 400)] == 0
    assert_counts_match(run, day_of_offers)
    # the topic of raw offers holds each offer at least once; the boundary seconds may come twice
    raw_ids = {r.key for r in read_topic(run.log, T_RAW)}
    assert raw_ids == {o["id"] for o in day_of_offers}


def test_token_expiry_mid_backfill(tmp_path: Path, refs: Referentials) -> None:
    end = now_ms() - 10 * MINUTE_MS
    offers = generate_offers(6000, start_ms=end - 20 * HOUR_MS, end_ms=end, seed=21)
    with FranceTravailServer(offers) as server:
        run = JobsRun(tmp_path, make_source(server, refs), refs)
        server.expire_tokens(after_searches=10)  # fixed by the server, not by a poll that a fast backfill outruns
        run.run()
        assert server.searches > 12, "the backfill ended before the token expired"
        assert server.tokens_issued >= 2
        assert server.counts[("search", 401)] >= 1
    assert_counts_match(run, offers)


def test_under_429s(tmp_path: Path, refs: Referentials) -> None:
    end = now_ms() - 10 * MINUTE_MS
    offers = generate_offers(3000, start_ms=end - 6 * HOUR_MS, end_ms=end, seed=31)
    with FranceTravailServer(offers, retry_after_s=1) as server:
        server.script("429", "503", "html", "truncated", "429")
        run = JobsRun(tmp_path, make_source(server, refs), refs)
        run.run()
        assert server.counts[("search", 429)] >= 2
    assert_counts_match(run, offers)


def test_updates_replace_versions_and_bad_offers_are_dead_letters(tmp_path: Path, refs: Referentials) -> None:
    end = now_ms() - MINUTE_MS
    # created in the last minutes: the next search, which overlaps the last one by 5 minutes, sees them again
    offers = generate_offers(500, start_ms=end - 3 * MINUTE_MS, end_ms=end, seed=41)
    bad = bad_offers(42, at_ms=end - 2 * MINUTE_MS)
    with FranceTravailServer(offers) as server:
        server.add(bad, at_ms=end - 2 * MINUTE_MS)
        run = JobsRun(tmp_path, make_source(server, refs, since_ms=end - 10 * MINUTE_MS), refs)
        run.run()
        # a later version of 20 offers, half of them moved to another contract: each still counts once
        changed = [
            updated(o, later_ms=parse_ms(o["dateActualisation"]) + MINUTE_MS, typeContrat="CDD" if i % 2 else o.get("typeContrat"))
            for i, o in enumerate(offers[:20])
        ]
        server.add(changed)
        # a restart: the source resumes from its cursor and searches [cursor - overlap, now]
        run = JobsRun(tmp_path, make_source(server, refs, since_ms=end - 10 * MINUTE_MS), refs)
        run.source.interval_s = 0.2
        run.run(until=lambda: run.source.windows_done >= 1)
    # coordinates that are not numbers lose only the coordinates: the offer counts, with its place_issue
    kept = [o for o in bad if isinstance(o.get("lieuTravail"), dict) and isinstance(o["lieuTravail"].get("latitude"), str)]
    assert len(kept) == 1
    final = {o["id"]: o for o in offers + kept}
    final.update({o["id"]: o for o in changed})
    assert_counts_match(run, list(final.values()))
    versions = {r["offer_id"]: r["versions"] for r in run.rows(f"SELECT offer_id, versions FROM {tables.OFFERS}")}
    assert all(versions[o["id"]] == 2 for o in changed)
    updated_n = sum(r["offers"] for r in run.rows(f"SELECT offers FROM {tables.HOURLY} WHERE kind = 'updated'"))
    assert updated_n == len(changed)
    dlq = [r.value for r in read_topic(run.log, "jobs.dlq")]
    reasons = " | ".join(d["error"] for d in dlq)
    assert len(dlq) >= 3, reasons
    assert "dateCreation" in reasons and "no id" in reasons and "lieuTravail" in reasons
    issue = run.rows(f"SELECT place_issue, lat FROM {tables.OFFERS} WHERE offer_id = '{kept[0]['id']}'")
    assert issue == [{"place_issue": "bad_coordinates", "lat": None}]


def test_updates_of_older_offers_are_seen_by_the_refresh(tmp_path: Path, refs: Referentials) -> None:
    """A search by creation date does not bring an updated offer back: the refresh searches the last days again."""
    end = now_ms() - 2 * HOUR_MS
    offers = generate_offers(2000, start_ms=end - 20 * HOUR_MS, end_ms=end, seed=81)
    since = end - 21 * HOUR_MS
    with FranceTravailServer(offers) as server:
        run = JobsRun(tmp_path, make_source(server, refs, since_ms=since), refs)
        run.run()
        changed = [server.update(o["id"], later_ms=now_ms() - 1000, typeContrat="CDI" if o.get("typeContrat") != "CDI" else "CDD") for o in offers[:30]]
        src = make_source(server, refs, since_ms=since, refresh_s=30 * 3600, refresh_interval_s=0.5)
        run = JobsRun(tmp_path, src, refs)
        run.run(until=lambda: src.sweeps >= 1)
    final = {o["id"]: o for o in offers}
    final.update({o["id"]: o for o in changed})
    assert_counts_match(run, list(final.values()))
    updated_n = sum(r["offers"] for r in run.rows(f"SELECT offers FROM {tables.HOURLY} WHERE kind = 'updated'"))
    assert updated_n == len(changed)
