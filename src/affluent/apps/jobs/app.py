"""Which source feeds the jobs pipelines: the France Travail API, or the bundled recording when it cannot be used."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from affluent.apps.jobs.pipeline import build_pipelines
from affluent.config import Settings, lake_path, serving_path
from affluent.core.clock import now_ms
from affluent.core.errors import AffluentError, ConfigError
from affluent.core.log import DAY_MS
from affluent.core.pipeline import Pipeline
from affluent.core.sources import Source
from affluent.sources.france_travail import API_URL, FranceTravailClient, FranceTravailReplaySource, FranceTravailSource, Referentials
from affluent.sources.france_travail.client import CREDENTIAL_SETTINGS, CredentialsError
from affluent.sources.replay import unpack_recording

log = logging.getLogger("affluent.apps.jobs")

#: six recorded hours of generated offers in the API's shape, made by tests/fixtures/jobs/make_recording.py
RECORDING = "france-travail.recording.jsonl"
REFERENTIALS = "referentials.json.gz"
HOUR_MS = 3_600_000


def recording_path(data_dir: Path) -> Path:
    return unpack_recording(resources.files("affluent.apps.jobs") / "data" / f"{RECORDING}.gz", data_dir)


def bundled_referentials() -> Referentials:
    with resources.as_file(resources.files("affluent.apps.jobs") / "data" / REFERENTIALS) as p:
        return Referentials.load(p)


def cached_referentials_path(data_dir: Path) -> Path:
    return Path(data_dir) / "jobs" / REFERENTIALS


def load_referentials(data_dir: Path, client: FranceTravailClient | None = None, *, max_age_days: float = 7.0) -> Referentials:
    """The API's referentials: the copy kept in the data folder, fetched again when older than
    `max_age_days` and a client is given; else the bundled copy."""
    cached = cached_referentials_path(data_dir)
    fresh = cached.exists() and time.time() - cached.stat().st_mtime < max_age_days * 86400
    if client is not None and not fresh:
        try:
            refs = bundled_referentials().refreshed(client.referential)
            refs.save(cached)
            log.info("jobs: referentials fetched from the API and kept in %s", cached)
            return refs
        except AffluentError as exc:
            log.warning("jobs: the referentials could not be fetched from the API (%s): using the %s copy", exc, "kept" if cached.exists() else "bundled")
    if cached.exists():
        try:
            return Referentials.load(cached)
        except AffluentError as exc:
            log.warning("jobs: %s; using the bundled referentials", exc)
    return bundled_referentials()


@dataclass
class Endpoints:
    """Where the API is, overriding the settings (CLI flags)."""

    token_url: str | None = None
    api_url: str | None = None


def replay_source(settings: Settings, note: str | None) -> FranceTravailReplaySource:
    """The bundled recording, looped, its times moved to now: a replay that looks live, and says it is not."""
    src = FranceTravailReplaySource(recording_path(settings.data_dir), speed=settings.jobs.replay_speed, loop=True, shift_to_now=True)
    src.note = note
    return src


def has_credentials(settings: Settings) -> bool:
    secret = settings.france_travail_client_secret
    return bool(settings.france_travail_client_id and secret is not None and secret.get_secret_value())


def make_client(settings: Settings, endpoints: Endpoints | None = None, *, timeout_s: float | None = None) -> FranceTravailClient:
    j = settings.jobs
    ep = endpoints or Endpoints()
    assert settings.france_travail_client_id and settings.france_travail_client_secret
    return FranceTravailClient(
        settings.france_travail_client_id,
        settings.france_travail_client_secret,
        token_url=ep.token_url or j.token_url,
        api_url=ep.api_url or j.api_url,
        rate_per_s=j.rate_per_s,
        timeout_s=timeout_s or j.timeout_s,
    )


def choose_source(
    settings: Settings,
    *,
    offline: bool,
    since_ms: int | None = None,
    endpoints: Endpoints | None = None,
    fallback: bool | None = None,
) -> tuple[Source, Referentials]:
    """The API when credentials are set and it gives a token, else the recording (and why, in its note)."""
    j = settings.jobs
    if since_ms is not None and since_ms > now_ms():
        raise ConfigError(f"--since {datetime.fromtimestamp(since_ms / 1000, UTC):%Y-%m-%d %H:%M} UTC is in the future: the backfill starts in the past")
    if offline:
        return replay_source(settings, "offline: replays the bundled recording of France Travail offers"), load_referentials(settings.data_dir)
    if not has_credentials(settings):
        note = (
            f"no France Travail credentials (set {CREDENTIAL_SETTINGS}; an application on francetravail.io "
            "with access to 'Offres d'emploi v2' gives them): replays the bundled recording"
        )
        log.warning("jobs: %s", note)
        return replay_source(settings, note), load_referentials(settings.data_dir)
    client = make_client(settings, endpoints)
    probe = make_client(settings, endpoints, timeout_s=j.probe_timeout_s)
    try:
        probe.token()
    except AffluentError as exc:
        if isinstance(exc, CredentialsError) and not (j.fallback_to_recording if fallback is None else fallback):
            client.close()
            raise ConfigError(str(exc)) from exc  # a definite answer: retrying will not change it
        if j.fallback_to_recording if fallback is None else fallback:
            note = f"the France Travail API could not be used at start ({exc}): replays the bundled recording"
            log.warning("jobs: %s", note)
            client.close()
            return replay_source(settings, note), load_referentials(settings.data_dir)
        log.warning("jobs: the France Travail API does not answer yet (%s); polling it anyway, with backoff", exc)
    finally:
        probe.close()
    if j.rate_per_s == 0 and urlsplit(client.api_url).hostname == urlsplit(API_URL).hostname:
        log.warning("jobs: no rate limit (jobs.rate_per_s = 0) against France Travail's own API, which allows a few requests per second")
    refs = load_referentials(settings.data_dir, client, max_age_days=j.referentials_max_age_days)
    start = since_ms if since_ms is not None else now_ms() - int(j.since_hours * HOUR_MS)
    source = FranceTravailSource(
        client,
        since_ms=start,
        departements=refs.departements,
        interval_s=j.interval_s,
        overlap_s=j.overlap_s,
        refresh_s=j.refresh_hours * 3600,
        refresh_interval_s=j.refresh_interval_s,
    )
    return source, refs


def replayed_before(settings: Settings) -> bool:
    """True when this data folder's log holds offers replayed from the bundled recording."""
    url = settings.log.url
    path = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    if path is None or not path.exists():
        return False
    from affluent.core.log import open_log

    try:
        with open_log(url) as log_:
            return bool(log_.load_state("jobs.source.replay-france-travail", 0))
    except AffluentError:
        return False


def pipelines(
    settings: Settings,
    *,
    offline: bool,
    since_ms: int | None = None,
    endpoints: Endpoints | None = None,
    fallback: bool | None = None,
) -> list[Pipeline]:
    """The jobs pipelines, fed by the API or, offline or without credentials, by the bundled recording."""
    source, refs = choose_source(settings, offline=offline, since_ms=since_ms, endpoints=endpoints, fallback=fallback)
    if not source.offline and replayed_before(settings):
        log.warning(
            "jobs: this data folder (%s) also holds offers replayed from the bundled recording, counted with the live ones; "
            "to keep live offers apart, start from an empty data folder (AFFLUENT__DATA_DIR and the log, serving and lake URLs)",
            settings.data_dir,
        )
    j = settings.jobs
    return build_pipelines(
        source,
        refs,
        serving_db=serving_path(settings),
        lake_root=lake_path(settings),
        lake_commit_ms=int(j.lake_commit_s * 1000),
        state_ttl_ms=int(j.state_days * DAY_MS),
        serving_retain_ms=int(j.serving_days * DAY_MS),
        max_event_ahead_ms=settings.max_event_ahead_ms,
    )
