"""Which source feeds the bikes pipelines: the live GBFS feed, or the bundled recording when offline."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import httpx

from affluent.apps.bikes.catalog import find_system, load_catalog
from affluent.apps.bikes.pipeline import build_pipelines
from affluent.config import BikesSettings, Settings, lake_path, serving_path
from affluent.core.errors import AffluentError, ConfigError
from affluent.core.pipeline import Pipeline
from affluent.core.sources import Source
from affluent.sources.gbfs import GBFSReplaySource, GBFSSource, parse_discovery, parse_document
from affluent.sources.replay import unpack_recording

log = logging.getLogger("affluent.apps.bikes")

#: two recorded hours of a VéloZef-like feed (29 stations, GBFS 2.2), made by tests/fixtures/bikes/make_fixtures.py
RECORDING = "velozef-brest.recording.jsonl"


def recording_path(data_dir: Path) -> Path:
    """The bundled recording, unpacked once into `data_dir`."""
    return unpack_recording(resources.files("affluent.apps.bikes") / "data" / f"{RECORDING}.gz", data_dir)


def resolve_feed(feed: str, data_dir: Path | None = None) -> tuple[str, str | None]:
    """(discovery URL, catalogue System ID or None) for a URL or a System ID of the catalogue.

    With `data_dir`, the catalogue is the copy `affluent bikes systems` last downloaded there, when it
    is newer than the bundled one: a system listed there can be run by its ID.
    """
    systems = load_catalog(data_dir, offline=True).systems if data_dir is not None else None
    system = find_system(feed, systems)
    if system is not None:
        return system.discovery_url, system.system_id
    if not feed.startswith(("http://", "https://")):
        raise ConfigError(f"{feed!r} is neither a GBFS discovery URL nor a System ID of `affluent bikes systems`")
    return feed, None


def probe_feed(url: str, timeout_s: float) -> str | None:
    """None when the discovery file answers as GBFS within `timeout_s`, else what went wrong."""
    try:
        resp = httpx.get(url, timeout=timeout_s, follow_redirects=True, headers={"Accept": "application/json"})
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}"
        parse_discovery(parse_document(resp.content, url=url, content_type=resp.headers.get("content-type", "")), url=url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except AffluentError as exc:
        return str(exc)
    return None


def recording_source(b: BikesSettings, data_dir: Path) -> GBFSReplaySource:
    """The bundled recording, looped, its times moved to now: a replay that looks live."""
    return GBFSReplaySource(recording_path(data_dir), speed=b.replay_speed, loop=True, shift_to_now=True)


def choose_source(b: BikesSettings, *, offline: bool, data_dir: Path = Path(".affluent"), feed: str | None = None, fallback: bool | None = None) -> Source:
    """The live feed (`feed`, else the configured one), or the recording when offline or unreachable.

    fallback: replay the recording when the feed does not answer at startup (default: the setting).
    """
    if offline:
        return recording_source(b, data_dir)
    url, system_id = resolve_feed(feed or b.feed, data_dir)
    problem = probe_feed(url, b.probe_timeout_s)
    if problem is not None:
        if b.fallback_to_recording if fallback is None else fallback:
            log.warning("the feed %s cannot be reached (%s): replaying the bundled VéloZef recording instead (offline)", url, problem)
            replay = recording_source(b, data_dir)
            replay.note = f"the feed {url} could not be reached at start ({problem}): replays the bundled VéloZef recording"
            return replay
        log.warning("the feed %s does not answer yet (%s); polling it anyway, with backoff", url, problem)
    return GBFSSource(url, system_id=system_id, language=b.language, min_poll_s=b.min_poll_s, timeout_s=b.timeout_s)


def pipelines(settings: Settings, *, offline: bool, feed: str | None = None, fallback: bool | None = None) -> list[Pipeline]:
    """The bikes pipelines, fed by the live feed or, offline, by the bundled recording."""
    source = choose_source(settings.bikes, offline=offline, data_dir=settings.data_dir, feed=feed, fallback=fallback)
    return build_pipelines(
        source,
        serving_db=serving_path(settings),
        lake_root=lake_path(settings),
        lake_commit_ms=int(settings.bikes.lake_commit_s * 1000),
        max_event_ahead_ms=settings.max_event_ahead_ms,
    )
