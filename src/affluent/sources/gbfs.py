"""GBFS: poll any bike-share system's public feeds (GBFS 1.x, 2.x, 3.0) and normalise them to one schema.

Discovery goes through gbfs.json: v1/v2 list the feeds per language (`data.<lang>.feeds`), v3 lists
them flat (`data.feeds`). Each feed file then has its own schedule: its `ttl` (never faster than
`min_poll_s`, never slower than `max_poll_s`), conditional requests (ETag / If-Modified-Since, a 304
costs nothing), and a file whose `last_updated` did not change is skipped. A station that shows up in
station_status before station_information triggers an early re-read of station_information, so that
its name and place arrive before (or with) its first status.

Errors never lose the last good state: a feed that fails (HTTP 404/429/5xx, a timeout, an HTML page,
truncated JSON, a version this client does not know) is logged, counted, retried on its own schedule
while the other feeds go on. A bad answer (HTML, truncated JSON, 5xx, no connection) is retried after
1 s, then 2, 4, 8... capped at the file's own poll interval; a success resets it. A `Retry-After`
(429, 503; seconds or an HTTP date) is waited exactly, from 1 s up to `max_backoff_s`. When every due feed
failed, `poll` raises `SourceUnavailableError` (with `retry_after_s`: when the next feed is due) so
that the runtime retries then. A feed that disappears from gbfs.json or answers 404 triggers a new
discovery, so a moved feed is found again.

Normalised records, one per entity, `feed` saying which (event time = the file's `last_updated`)::

    system_information  feed, system_id, name, operator, timezone, language, url, license_url, gbfs_version, snapshot_ms
    station_information feed, system_id, station_id, name, short_name, lat, lon, capacity, address,
                        is_virtual_station, removed, snapshot_ms
    station_status      feed, system_id, timezone, station_id, num_bikes_available, num_bikes_disabled,
                        num_docks_available, num_docks_disabled, is_installed, is_renting, is_returning,
                        bikes_by_type, last_reported_ms, snapshot_ms
    vehicle_status      feed, system_id, vehicle_id, station_id, lat, lon, is_reserved, is_disabled,
                        vehicle_type_id, current_range_meters, last_reported_ms, snapshot_ms

v3 names are mapped to one vocabulary: `num_vehicles_*` -> `num_bikes_*`, `bike_id` (v2) -> `vehicle_id`,
`free_bike_status` (v2) -> `vehicle_status`; RFC 3339 and POSIX timestamps -> UTC epoch ms; localized
names `[{"text", "language"}]` -> the text in the feed's language; ids -> str; 0/1 booleans -> bool.

>>> parse_timestamp_ms("2026-03-10T11:00:00+01:00"), parse_timestamp_ms(1773136800)
(1773136800000, 1773136800000)
>>> as_bool(1), as_bool("false"), as_id(213688169)
(True, False, '213688169')
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import SourceUnavailableError
from affluent.core.metrics import METRICS, Metrics
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll
from affluent.sources.http import parse_retry_after
from affluent.sources.replay import ReplaySource

log = logging.getLogger("affluent.sources.gbfs")

#: the feeds this client reads, in the order a poll fetches them (names before states)
FEEDS = ("system_information", "station_information", "station_status", "vehicle_status")
#: file names that carry each feed (v2 calls vehicle_status free_bike_status)
FEED_FILES: dict[str, tuple[str, ...]] = {
    "system_information": ("system_information",),
    "station_information": ("station_information",),
    "station_status": ("station_status",),
    "vehicle_status": ("vehicle_status", "free_bike_status"),
}
KNOWN_MAJOR_VERSIONS = (1, 2, 3)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:-RC\d*)?")
#: a last_reported further ahead of last_updated than this is a publisher's clock bug
MAX_CLOCK_SKEW_MS = 300_000
#: the first retry of a file after a bad answer; each further failure doubles it
BACKOFF_START_S = 1.0


class GBFSFeedError(SourceUnavailableError):
    """A feed answered, but not with a GBFS document this client can read; retried later."""


class GBFSFeedMissingError(GBFSFeedError):
    """A feed answered 404/410: gone, moved, or not published by this system."""


class GBFSVersionError(GBFSFeedError):
    """A GBFS version this client does not know."""


# -- value coercion --------------------------------------------------------------------------------------
def parse_timestamp_ms(value: Any) -> int | None:
    """POSIX seconds (v1/v2; milliseconds tolerated), digits, or RFC 3339 (v3) -> UTC epoch ms."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            return None
        return int(value) if value > 1e11 else round(value * 1000)
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return None
        if s.isdigit():
            return parse_timestamp_ms(int(s))
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return None
        if dt.tzinfo is None:  # RFC 3339 requires an offset: read a bare one as UTC
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // _MS
    return None


def as_bool(value: Any, default: bool | None = None) -> bool | None:
    """GBFS booleans; some publishers (Vélib') send 0/1 or strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        s = value.strip().lower()
        if s in ("true", "1", "yes"):
            return True
        if s in ("false", "0", "no"):
            return False
    return default


def as_count(value: Any) -> int | None:
    """A non-negative integer count, or None when absent or not a count."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def as_id(value: Any) -> str | None:
    """Ids are strings; Vélib' sends large integers."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def localized(value: Any, language: str | None) -> str | None:
    """A plain string (v1/v2) or a v3 localized list [{"text", "language"}]: the text in `language`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [(str(i.get("language") or ""), i["text"]) for i in value if isinstance(i, dict) and isinstance(i.get("text"), str)]
        for lang, text in texts:
            if language and lang and lang.lower().split("-")[0] == language.lower().split("-")[0]:
                return text
        return texts[0][1] if texts else None
    return None


def coordinates(obj: Mapping[str, Any]) -> tuple[float | None, float | None]:
    lat, lon = as_float(obj.get("lat")), as_float(obj.get("lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None, None
    return lat, lon


def version_family(version: Any) -> int:
    """1, 2 or 3. A missing version is 1.0 (whose files had none); anything else unknown raises."""
    if version is None:
        return 1
    m = _VERSION.fullmatch(str(version).strip())
    if m is None or int(m.group(1)) not in KNOWN_MAJOR_VERSIONS:
        raise GBFSVersionError(f"GBFS version {version!r} is not one this client knows (1.x, 2.x, 3.x)", retry_after_s=300.0)
    return int(m.group(1))


def error_reason(exc: BaseException) -> str:
    """A short label for metrics: what went wrong, without the URL."""
    if isinstance(exc, GBFSVersionError):
        return "unknown_version"
    if isinstance(exc, GBFSFeedMissingError):
        return "not_found"
    if isinstance(exc, GBFSFeedError):
        return "html" if "HTML" in str(exc) else "bad_document"
    m = re.search(r"HTTP (\d{3})", str(exc))
    if m:
        return f"http_{m.group(1)}"
    return "timeout" if "no answer within" in str(exc) else "unreachable"


# -- documents ---------------------------------------------------------------------------------------------
def parse_document(body: bytes, *, url: str, content_type: str = "") -> dict[str, Any]:
    """A GBFS JSON document, or GBFSFeedError saying plainly what came instead."""
    head = body.lstrip()[:1]
    if head == b"<" or "html" in content_type.lower():
        raise GBFSFeedError(f"{url} returned an HTML page, not GBFS JSON (an error or portal page?)")
    if not body.strip():
        raise GBFSFeedError(f"{url} returned an empty body")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GBFSFeedError(f"{url} returned invalid or truncated JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise GBFSFeedError(f"{url} is not a GBFS document (no 'data' object)")
    return doc


@dataclass(slots=True)
class Envelope:
    version: str | None
    family: int
    last_updated_ms: int | None
    ttl_s: int | None
    data: dict[str, Any]


def envelope(doc: dict[str, Any], *, default_version: str | None = None) -> Envelope:
    version = doc.get("version", default_version)
    family = version_family(version)
    # Vélib' publishes lastUpdatedOther instead of last_updated
    updated = parse_timestamp_ms(doc.get("last_updated", doc.get("lastUpdatedOther")))
    return Envelope(None if version is None else str(version), family, updated, as_count(doc.get("ttl")), doc["data"])


@dataclass(slots=True)
class Discovery:
    """What gbfs.json says: the version, the language chosen, and the URL of each feed file."""

    url: str
    version: str | None
    family: int
    language: str | None
    files: dict[str, str]
    ttl_s: int | None = None

    def feed_url(self, feed: str) -> str | None:
        for name in FEED_FILES[feed]:
            if name in self.files:
                return self.files[name]
        return None


def parse_discovery(doc: dict[str, Any], *, url: str, language: str | None = None) -> Discovery:
    env = envelope(doc)
    data = env.data
    lang: str | None = None
    if isinstance(data.get("feeds"), list):  # v3 (and a few v2 publishers) list the feeds flat
        feeds = data["feeds"]
    else:
        langs = [k for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("feeds"), list)]
        if not langs:
            raise GBFSFeedError(f"{url} lists no feeds (neither data.feeds nor data.<language>.feeds)", retry_after_s=300.0)
        lang = language if language in langs else ("en" if "en" in langs else langs[0])
        feeds = data[lang]["feeds"]
    files = {}
    for f in feeds:
        if isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("url"), str):
            files[f["name"]] = urljoin(url, f["url"])
    if not any(n in files for n in (*FEED_FILES["station_status"], *FEED_FILES["vehicle_status"])):
        raise GBFSFeedError(f"{url} lists neither station_status nor free_bike_status/vehicle_status", retry_after_s=300.0)
    return Discovery(url, env.version, env.family, lang, files, env.ttl_s)


# -- normalisation -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Context:
    """What a file's rows need besides themselves."""

    system_id: str
    snapshot_ms: int
    language: str | None = None
    timezone: str | None = None


def _items(data: dict[str, Any], keys: tuple[str, ...], feed: str) -> list[Any]:
    for k in keys:
        items = data.get(k)
        if isinstance(items, list):
            return items
    raise GBFSFeedError(f"{feed} has no data.{' or data.'.join(keys)} list")


def normalize_system_information(data: dict[str, Any], ctx: Context, *, gbfs_version: str | None = None) -> dict[str, Any]:
    lang = as_id(data.get("language")) or ctx.language
    if lang is None and isinstance(data.get("languages"), list) and data["languages"]:
        lang = as_id(data["languages"][0])
    return {
        "feed": "system_information",
        "system_id": ctx.system_id,
        "name": localized(data.get("name"), lang),
        "operator": localized(data.get("operator"), lang),
        "timezone": as_id(data.get("timezone")),
        "language": lang,
        "url": as_id(data.get("url")),
        "license_url": as_id(data.get("license_url")),
        "gbfs_version": gbfs_version,
        "snapshot_ms": ctx.snapshot_ms,
    }


def normalize_station_information(data: dict[str, Any], ctx: Context) -> tuple[list[dict[str, Any]], Counter[str]]:
    problems: Counter[str] = Counter()
    out = []
    for s in _items(data, ("stations",), "station_information"):
        if not isinstance(s, dict):
            problems["not_an_object"] += 1
            continue
        sid = as_id(s.get("station_id"))
        if sid is None:
            problems["missing_station_id"] += 1
            continue
        lat, lon = coordinates(s)
        if lat is None:
            problems["missing_coordinates"] += 1
        out.append(
            {
                "feed": "station_information",
                "system_id": ctx.system_id,
                "station_id": sid,
                "name": localized(s.get("name"), ctx.language) or sid,
                "short_name": localized(s.get("short_name"), ctx.language),
                "lat": lat,
                "lon": lon,
                "capacity": as_count(s.get("capacity")),
                "address": localized(s.get("address"), ctx.language),
                "is_virtual_station": as_bool(s.get("is_virtual_station"), False),
                "removed": False,
                "snapshot_ms": ctx.snapshot_ms,
            }
        )
    return out, problems


def _bikes_by_type(s: Mapping[str, Any]) -> dict[str, int] | None:
    out: dict[str, int] = {}
    types = s.get("vehicle_types_available")
    if isinstance(types, list):  # GBFS 2.1+: [{"vehicle_type_id", "count"}]
        for t in types:
            if isinstance(t, dict) and as_id(t.get("vehicle_type_id")) and as_count(t.get("count")) is not None:
                out[str(as_id(t["vehicle_type_id"]))] = int(as_count(t["count"]) or 0)
    types = s.get("num_bikes_available_types")
    if isinstance(types, list):  # Vélib': [{"mechanical": 4}, {"ebike": 2}]
        for t in types:
            if isinstance(t, dict):
                for k, v in t.items():
                    n = as_count(v)
                    if n is not None:
                        out[str(k)] = n
    return out or None


def _first(s: Mapping[str, Any], *names: str) -> Any:
    for n in names:
        if n in s and s[n] is not None:
            return s[n]
    return None


def _reported_ms(value: Any, ctx: Context, problems: Counter[str]) -> int:
    ms = parse_timestamp_ms(value)
    if ms is None:
        return ctx.snapshot_ms
    if ms > ctx.snapshot_ms + MAX_CLOCK_SKEW_MS:
        problems["last_reported_in_future"] += 1
        return ctx.snapshot_ms
    return ms


def normalize_station_status(data: dict[str, Any], ctx: Context) -> tuple[list[dict[str, Any]], Counter[str]]:
    problems: Counter[str] = Counter()
    out = []
    for s in _items(data, ("stations",), "station_status"):
        if not isinstance(s, dict):
            problems["not_an_object"] += 1
            continue
        sid = as_id(s.get("station_id"))
        if sid is None:
            problems["missing_station_id"] += 1
            continue
        bikes = as_count(_first(s, "num_bikes_available", "num_vehicles_available", "numBikesAvailable"))
        if bikes is None:
            problems["bad_num_bikes_available"] += 1
            continue
        docks_raw = _first(s, "num_docks_available", "numDocksAvailable")
        docks = as_count(docks_raw)
        if docks_raw is not None and docks is None:
            problems["bad_num_docks_available"] += 1
            continue
        out.append(
            {
                "feed": "station_status",
                "system_id": ctx.system_id,
                "timezone": ctx.timezone,
                "station_id": sid,
                "num_bikes_available": bikes,
                "num_bikes_disabled": as_count(_first(s, "num_bikes_disabled", "num_vehicles_disabled")),
                "num_docks_available": docks,
                "num_docks_disabled": as_count(s.get("num_docks_disabled")),
                "is_installed": as_bool(s.get("is_installed"), True),
                "is_renting": as_bool(s.get("is_renting"), True),
                "is_returning": as_bool(s.get("is_returning"), True),
                "bikes_by_type": _bikes_by_type(s),
                "last_reported_ms": _reported_ms(s.get("last_reported"), ctx, problems),
                "snapshot_ms": ctx.snapshot_ms,
            }
        )
    return out, problems


def normalize_vehicles(data: dict[str, Any], ctx: Context) -> tuple[list[dict[str, Any]], Counter[str]]:
    problems: Counter[str] = Counter()
    out = []
    for v in _items(data, ("bikes", "vehicles"), "vehicle_status"):
        if not isinstance(v, dict):
            problems["not_an_object"] += 1
            continue
        vid = as_id(_first(v, "vehicle_id", "bike_id"))
        if vid is None:
            problems["missing_vehicle_id"] += 1
            continue
        station_id = as_id(v.get("station_id"))  # "" means free floating
        lat, lon = coordinates(v)
        if lat is None and station_id is None:
            problems["missing_coordinates"] += 1
        out.append(
            {
                "feed": "vehicle_status",
                "system_id": ctx.system_id,
                "vehicle_id": vid,
                "station_id": station_id,
                "lat": lat,
                "lon": lon,
                "is_reserved": as_bool(v.get("is_reserved"), False),
                "is_disabled": as_bool(v.get("is_disabled"), False),
                "vehicle_type_id": as_id(v.get("vehicle_type_id")),
                "current_range_meters": as_float(v.get("current_range_meters")),
                "last_reported_ms": _reported_ms(v.get("last_reported"), ctx, problems),
                "snapshot_ms": ctx.snapshot_ms,
            }
        )
    return out, problems


def record_key(value: Mapping[str, Any]) -> str | None:
    """Topic key of a normalised record: the station, the vehicle, or the system."""
    feed = value.get("feed")
    if feed in ("station_information", "station_status"):
        return str(value["station_id"])
    if feed == "vehicle_status":
        return str(value["vehicle_id"])
    return str(value.get("system_id"))


def slug_for_url(url: str) -> str:
    """A stable id for a feed that does not say its own: the telling words of its host and path."""
    parts = urlsplit(url)
    noise = {"www", "api", "com", "net", "org", "eu", "fr", "gbfs", "json", "en", "data", "public", "opendata"}
    words = [w for w in re.split(r"[^a-z0-9]+", f"{parts.hostname or ''} {parts.path.lower()}") if w and w not in noise]
    words = [w for w in words if not re.fullmatch(r"v?\d+", w)]  # ports, IP parts, versions
    return "-".join(words[-3:]) or "gbfs"


# -- the source ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _FeedState:
    last_updated_ms: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    ttl_s: int | None = None
    due: float = 0.0
    failures: int = 0
    error: str | None = None
    absent_logged: bool = False

    def saved(self) -> dict[str, Any]:
        return {"last_updated_ms": self.last_updated_ms, "etag": self.etag, "last_modified": self.last_modified}


@dataclass(slots=True)
class _Fetched:
    """One fetched feed file: None body means 304 Not Modified."""

    body: bytes | None
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None


class GBFSSource(Source):
    """Polls one GBFS system; emits the normalised records of every feed into one topic.

    url: the system's gbfs.json. system_id: the id records carry (default: system_information's, else
    one made from the URL; kept across restarts). wait_scale: multiplies every wait (1 honours ttl;
    tests use 0 to play a recorded day as fast as the server answers). vehicles: also read
    free_bike_status / vehicle_status. transport: an httpx transport (proxies, custom TLS).
    max_backoff_s: the longest wait after a failure, whatever a file's ttl or a server's Retry-After.
    """

    mode = "live"

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        system_id: str | None = None,
        language: str | None = None,
        min_poll_s: float = 30.0,
        max_poll_s: float = 3600.0,
        timeout_s: float = 10.0,
        max_backoff_s: float = 600.0,
        wait_scale: float = 1.0,
        vehicles: bool = True,
        headers: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.system_id = system_id
        self.name = name or f"gbfs-{system_id or slug_for_url(url)}"
        self.language = language
        self.min_poll_s = min_poll_s
        self.max_poll_s = max_poll_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.wait_scale = wait_scale
        self.vehicles = vehicles
        self.headers = dict(headers or {})
        self.metrics = metrics or METRICS
        self.transport = transport
        self.clock = clock
        self.discovery: Discovery | None = None
        self.states: dict[str, _FeedState] = {f: _FeedState() for f in FEEDS}
        self.timezone: str | None = None
        self._client: httpx.Client | None = None
        self._discovery_state = _FeedState()
        self._rediscover_at = 0.0
        self._info_seen: dict[str, bytes] = {}  # station_id -> what was last emitted for it
        self._info_refetch_at = 0.0

    # -- lifecycle --------------------------------------------------------------------------------------------
    def open(self, position: Any | None) -> None:
        pos = position or {}
        if pos.get("system_id") and self.system_id is None:
            self.system_id = str(pos["system_id"])
        # station and vehicle states resume where they stopped; names are read again on every start,
        # which also heals a station_information batch lost to a failed append
        for feed in ("station_status", "vehicle_status"):
            saved = (pos.get("feeds") or {}).get(feed) or {}
            st = self.states[feed]
            st.last_updated_ms = saved.get("last_updated_ms")
            st.etag = saved.get("etag")
            st.last_modified = saved.get("last_modified")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.timeout_s,
                follow_redirects=True,
                transport=self.transport,
                headers={"User-Agent": "affluent (GBFS client)", "Accept": "application/json", **self.headers},
            )
        return self._client

    def describe(self) -> str:
        return f"GBFS feed {self.url}"

    def _position(self) -> dict[str, Any]:
        return {"system_id": self.system_id, "feeds": {f: self.states[f].saved() for f in ("station_status", "vehicle_status")}}

    # -- HTTP --------------------------------------------------------------------------------------------------
    def _get(self, url: str, st: _FeedState) -> _Fetched:
        headers = {}
        if st.etag:
            headers["If-None-Match"] = st.etag
        if st.last_modified:
            headers["If-Modified-Since"] = st.last_modified
        try:
            resp = self.client.get(url, headers=headers)
        except httpx.TimeoutException as exc:
            raise SourceUnavailableError(f"{url}: no answer within {self.timeout_s:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(f"{url}: {type(exc).__name__}: {exc}") from exc
        code = resp.status_code
        if code == 304:
            return _Fetched(None)
        if code == 429 or code >= 500:
            retry = parse_retry_after(resp.headers.get("retry-after"))
            raise SourceUnavailableError(f"{url}: HTTP {code}", retry_after_s=retry)
        if code in (404, 410):
            raise GBFSFeedMissingError(f"{url}: HTTP {code} (the feed is gone or moved)", retry_after_s=60.0)
        if code >= 400:
            raise GBFSFeedError(f"{url}: HTTP {code}", retry_after_s=300.0)
        return _Fetched(resp.content, resp.headers.get("content-type", ""), resp.headers.get("etag"), resp.headers.get("last-modified"))

    # -- discovery ---------------------------------------------------------------------------------------------
    def _discover(self, now: float) -> None:
        st = self._discovery_state
        ttl_s = self.discovery.ttl_s if self.discovery else None
        try:
            got = self._get(self.url, st)
            if got.body is None:
                st.failures = 0
                self._rediscover_at = now + self._ttl_wait(ttl_s)
                return
            disc = parse_discovery(parse_document(got.body, url=self.url, content_type=got.content_type), url=self.url, language=self.language)
        except SourceUnavailableError as exc:
            self._count_error("gbfs", exc)
            delay = self._backoff(st, exc, ttl_s)
            if self.discovery is None:
                log.error("source %s: cannot read the discovery file (attempt %d, next try in %.1f s): %s", self.name, st.failures, delay, exc)
                # the runtime waits retry_after_s: this source's backoff, not the hint the error was made with
                raise type(exc)(str(exc), retry_after_s=delay) from exc
            self._rediscover_at = now + delay
            log.warning("source %s: discovery failed (%s); keeping the feed URLs found before", self.name, exc)
            return
        st.etag, st.last_modified, st.failures = got.etag, got.last_modified, 0
        if self.discovery is None or disc.files != self.discovery.files:
            log.info(
                "source %s: GBFS %s, language %s, feeds: %s",
                self.name,
                disc.version or "1.0",
                disc.language or "-",
                ", ".join(sorted(disc.files)),
            )
        self.discovery = disc
        self._rediscover_at = now + self._ttl_wait(disc.ttl_s)

    # -- scheduling ----------------------------------------------------------------------------------------------
    def _poll_interval_s(self, ttl_s: int | None) -> float:
        """How often a healthy file is read: its ttl, never faster than min_poll_s nor slower than max_poll_s."""
        return min(max(float(ttl_s or 0), self.min_poll_s), self.max_poll_s)

    def _ttl_wait(self, ttl_s: int | None) -> float:
        return self._poll_interval_s(ttl_s) * self.wait_scale

    def backoff_s(self, failures: int, ttl_s: int | None, retry_after_s: float | None = None) -> float:
        """The wait before the next attempt at a file that failed `failures` times in a row (unscaled).

        A server's Retry-After (or a wait an error names, as 300 s for a version this client does not
        know) is honoured exactly, up to max_backoff_s, and never under 1 s (or the poll interval, when
        shorter): a "0", or a date already past by a server clock that is behind, must not make a retry
        loop without a pause. Otherwise 1 s, 2 s, 4 s... capped at the file's
        poll interval, max(ttl, min_poll_s): a bad answer is often a one-off (a proxy's error page, a
        file cut while it was rewritten), so the next try comes well before the next snapshot would, and
        a feed that stays broken is never read more often than a healthy one (min_poll_s still holds)
        nor less often (once it answers again, its next snapshot arrives as fresh as on a healthy feed).
        The ttl alone would not do as a cap: a ttl of 0 would mean no wait at all.

        >>> src = GBFSSource("http://127.0.0.1/gbfs.json", min_poll_s=30)
        >>> [src.backoff_s(n, ttl_s=60) for n in range(1, 9)]
        [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
        >>> src.backoff_s(1, ttl_s=0), src.backoff_s(9, ttl_s=0), src.backoff_s(3, ttl_s=60, retry_after_s=120)
        (1.0, 30.0, 120.0)
        """
        interval = self._poll_interval_s(ttl_s)
        if retry_after_s is not None:
            return float(min(max(min(BACKOFF_START_S, interval), retry_after_s), self.max_backoff_s))
        return float(min(interval, self.max_backoff_s, BACKOFF_START_S * 2 ** min(max(failures, 1) - 1, 30)))

    def _backoff(self, st: _FeedState, exc: BaseException, ttl_s: int | None) -> float:
        """Counts one more failure of a file and returns the wait before its next attempt (scaled)."""
        st.failures += 1
        return self.backoff_s(st.failures, ttl_s, getattr(exc, "retry_after_s", None)) * self.wait_scale

    def _count_error(self, feed: str, exc: BaseException) -> None:
        self.metrics.inc("affluent_gbfs_errors_total", source=self.name, feed=feed, reason=error_reason(exc))

    # -- polling ---------------------------------------------------------------------------------------------------
    def poll(self) -> SourcePoll:
        now = self.clock()
        if self.discovery is None or now >= self._rediscover_at:
            self._discover(now)
        assert self.discovery is not None
        records: list[Record] = []
        errors: list[SourceUnavailableError] = []
        fetched = False
        for feed in FEEDS:
            if feed == "vehicle_status" and not self.vehicles:
                continue
            st = self.states[feed]
            if now < st.due:
                continue
            if self.discovery.feed_url(feed) is None:
                self._absent(feed, st, now)
                continue
            try:
                recs = self._poll_feed(feed, now)
            except SourceUnavailableError as exc:
                self._failed(feed, st, exc, now)
                errors.append(exc)
                continue
            fetched = True
            self._recovered(feed, st)
            if feed == "station_status" and recs:
                recs = self._names_first(recs, now) + recs
            records.extend(recs)
        if errors and not fetched:
            waits = [self.states[f].due - now for f in FEEDS if self.states[f].due > now]
            retry = max(0.0, min(waits)) if waits else None
            raise SourceUnavailableError("; ".join(dict.fromkeys(str(e) for e in errors)), retry_after_s=retry)
        return SourcePoll(records=records, wait_s=self._next_wait(now), position=self._position())

    def _next_wait(self, now: float) -> float:
        feeds = [f for f in FEEDS if f != "vehicle_status" or self.vehicles]
        due = min([self.states[f].due for f in feeds] + [self._rediscover_at])
        return max(0.0, due - now)

    def _absent(self, feed: str, st: _FeedState, now: float) -> None:
        if not st.absent_logged:
            level = logging.WARNING if feed == "station_status" else logging.INFO
            log.log(level, "source %s: the system publishes no %s feed", self.name, feed)
            st.absent_logged = True
        st.due = max(self._rediscover_at, now + self._ttl_wait(None))  # looked for again after the next discovery

    def _recovered(self, feed: str, st: _FeedState) -> None:
        """A file answered well: its backoff starts again from BACKOFF_START_S at its next failure."""
        if st.failures:
            log.warning("source %s: %s is back after %d failed attempts", self.name, feed, st.failures)
            st.failures, st.error = 0, None

    def _failed(self, feed: str, st: _FeedState, exc: SourceUnavailableError, now: float) -> None:
        self._count_error(feed, exc)
        st.due = now + self._backoff(st, exc, st.ttl_s)
        first = st.error != str(exc)
        st.error = str(exc)
        (log.error if first else log.warning)(
            "source %s: %s failed (%s); keeping the last good state, attempt %d, next try in %.1f s",
            self.name,
            feed,
            exc,
            st.failures,
            max(0.0, st.due - now),
        )
        if isinstance(exc, GBFSFeedMissingError):
            self._rediscover_at = now  # the feed may have moved: read gbfs.json again on the next poll

    def _poll_feed(self, feed: str, now: float) -> list[Record]:
        st = self.states[feed]
        disc = self.discovery
        assert disc is not None
        url = disc.feed_url(feed)
        assert url is not None
        got = self._get(url, st)
        if got.body is None:
            self.metrics.inc("affluent_gbfs_files_total", source=self.name, feed=feed, outcome="not_modified")
            st.due = now + self._ttl_wait(st.ttl_s)
            return []
        env = envelope(parse_document(got.body, url=url, content_type=got.content_type), default_version=disc.version)
        if env.last_updated_ms is None or env.last_updated_ms != st.last_updated_ms:
            try:
                recs = self._normalize(feed, env, env.last_updated_ms or now_ms())
            except SourceUnavailableError:
                raise
            except Exception as exc:  # a shape no rule above foresaw: this file is unreadable, the others go on
                raise GBFSFeedError(f"{url}: cannot read this {feed} file ({type(exc).__name__}: {exc})") from exc
            outcome = "new"
        else:
            recs, outcome = [], "unchanged"
        # remembered only once read: a file that failed is fetched again in full, not answered 304
        st.etag, st.last_modified, st.ttl_s, st.last_updated_ms = got.etag, got.last_modified, env.ttl_s, env.last_updated_ms
        st.due = now + self._ttl_wait(env.ttl_s)
        self.metrics.inc("affluent_gbfs_files_total", source=self.name, feed=feed, outcome=outcome)
        return recs

    def _context(self, snapshot_ms: int) -> Context:
        if self.system_id is None:
            self.system_id = slug_for_url(self.url)
        disc = self.discovery
        return Context(self.system_id, snapshot_ms, disc.language if disc else self.language, self.timezone)

    def _normalize(self, feed: str, env: Envelope, snapshot_ms: int) -> list[Record]:
        if feed == "system_information":
            sid = as_id(env.data.get("system_id"))
            if self.system_id is None and sid:
                self.system_id = sid
            ctx = self._context(snapshot_ms)
            value = normalize_system_information(env.data, ctx, gbfs_version=env.version)
            self.timezone = value["timezone"] or self.timezone
            return [Record(value=value, key=ctx.system_id, timestamp_ms=snapshot_ms)]
        ctx = self._context(snapshot_ms)
        if feed == "station_information":
            rows, problems = normalize_station_information(env.data, ctx)
            rows = self._changed_stations(rows, snapshot_ms)
        elif feed == "station_status":
            rows, problems = normalize_station_status(env.data, ctx)
        else:
            rows, problems = normalize_vehicles(env.data, ctx)
        if problems:
            for reason, n in problems.items():
                self.metrics.inc("affluent_gbfs_bad_records_total", n, source=self.name, feed=feed, reason=reason)
            log.warning("source %s: %s snapshot has bad rows: %s", self.name, feed, ", ".join(f"{n} {r}" for r, n in sorted(problems.items())))
        return [Record(value=r, key=record_key(r), timestamp_ms=snapshot_ms) for r in rows]

    def _changed_stations(self, rows: list[dict[str, Any]], snapshot_ms: int) -> list[dict[str, Any]]:
        """Only stations whose description changed, plus removals: station_information is a table, not a stream."""
        seen = self._info_seen
        out = []
        current = set()
        for r in rows:
            sid = r["station_id"]
            current.add(sid)
            fingerprint = orjson.dumps({k: v for k, v in r.items() if k != "snapshot_ms"})
            if seen.get(sid) != fingerprint:
                seen[sid] = fingerprint
                out.append(r)
        for sid in [s for s in seen if s not in current]:
            del seen[sid]
            out.append({"feed": "station_information", "system_id": self.system_id, "station_id": sid, "removed": True, "snapshot_ms": snapshot_ms})
        return out

    def _names_first(self, status: list[Record], now: float) -> list[Record]:
        """Stations in station_status that station_information has not described yet: read it again now."""
        if now < self._info_refetch_at or self.discovery is None or self.discovery.feed_url("station_information") is None:
            return []
        if all(r.value["station_id"] in self._info_seen for r in status):
            return []
        self._info_refetch_at = now + self.min_poll_s * self.wait_scale
        st = self.states["station_information"]
        try:
            recs = self._poll_feed("station_information", now)
        except SourceUnavailableError as exc:
            self._failed("station_information", st, exc, now)
            return []
        self._recovered("station_information", st)
        return recs


class GBFSReplaySource(ReplaySource):
    """Plays back a recording of `GBFSSource`, moving the times inside values along with event times."""

    TIME_FIELDS = ("snapshot_ms", "last_reported_ms")

    def describe(self) -> str:
        pace = "as fast as possible" if math.isinf(self.speed) else f"{self.speed:g}x"
        return f"OFFLINE replay of the recording {self.path.name} ({pace}, times moved to now), not live data"

    def poll(self) -> SourcePoll:
        result = super().poll()
        shift = self.shift_ms
        if shift and result.records:
            for r in result.records:
                v = r.value
                if isinstance(v, dict):
                    r.value = {**v, **{f: v[f] + shift for f in self.TIME_FIELDS if isinstance(v.get(f), int)}}
        return result


__all__ = [
    "FEEDS",
    "Context",
    "Discovery",
    "GBFSFeedError",
    "GBFSFeedMissingError",
    "GBFSReplaySource",
    "GBFSSource",
    "GBFSVersionError",
    "as_bool",
    "as_count",
    "as_id",
    "envelope",
    "localized",
    "normalize_station_information",
    "normalize_station_status",
    "normalize_system_information",
    "normalize_vehicles",
    "parse_discovery",
    "parse_document",
    "parse_timestamp_ms",
    "version_family",
]
