"""Known public GBFS systems: MobilityData's systems.csv catalogue, bundled, refreshed when online.

The bundled copy (data/systems.csv, MobilityData's catalogue as of `BUNDLED_DATE`, CC BY 3.0,
attribution in data/systems.ATTRIBUTION.md) lists every public system the catalogue knew then.
Discovery URLs and versions move over time, so `load_catalog` downloads the catalogue again when
online (`DEFAULT_CATALOG_URL`, or any URL) and keeps it, with its date, under the data folder; offline,
or when the download fails, it uses that cached copy, else the bundled one, and says which.
`affluent bikes systems --catalog FILE` reads any systems.csv instead.

>>> velozef = find_system("velozef")
>>> velozef.location, velozef.country, velozef.versions
('Brest', 'FR', ('2.2',))
>>> find_system(velozef.discovery_url).system_id
'velozef'
>>> len(load_systems()) >= 1500
True
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import httpx
import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import ConfigError

log = logging.getLogger("affluent.apps.bikes.catalog")

#: MobilityData's catalogue of public GBFS systems (CC BY 3.0, attribution: MobilityData)
DEFAULT_CATALOG_URL = "https://raw.githubusercontent.com/MobilityData/gbfs/master/systems.csv"
#: when the bundled copy of the catalogue was taken
BUNDLED_DATE = "2026-11-29"
ATTRIBUTION = "GBFS systems catalogue by MobilityData (github.com/MobilityData/gbfs), CC BY 3.0"
#: the downloaded catalogue, under the data folder, with its metadata (URL, date) next to it
CACHE_FILE = Path("catalog") / "gbfs-systems.csv"
#: a cached catalogue younger than this is used as it is, without downloading it again
MAX_AGE_S = 86_400.0

COLUMNS = (
    "Country Code",
    "Name",
    "Location",
    "System ID",
    "URL",
    "Auto-Discovery URL",
    "Supported Versions",
    "Authentication Info URL",
    "Authentication Type",
    "Authentication Parameter Name",
)


@dataclass(frozen=True, slots=True)
class System:
    country: str
    name: str
    location: str
    system_id: str
    url: str
    discovery_url: str
    versions: tuple[str, ...]
    auth_info_url: str = ""
    auth_type: str = ""
    auth_parameter: str = ""

    @property
    def needs_auth(self) -> bool:
        return self.auth_type not in ("", "0")


def bundled_catalog() -> str:
    return (resources.files("affluent.apps.bikes") / "data" / "systems.csv").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _bundled_systems() -> tuple[System, ...]:
    return tuple(parse_systems(bundled_catalog(), "the bundled catalogue"))


def load_systems(path: str | Path | None = None) -> list[System]:
    """The systems of a systems.csv file (the bundled copy by default)."""
    if path is None:
        return list(_bundled_systems())
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read the systems catalogue {path}: {exc}") from exc
    return parse_systems(text, str(path))


def parse_systems(text: str, what: str = "the catalogue") -> list[System]:
    """The systems of systems.csv text; ConfigError when it is not a GBFS systems.csv."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in COLUMNS[:6] if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{what} is not a GBFS systems.csv: no column {', '.join(missing)}")
    out = []
    for row in reader:
        url = (row.get("Auto-Discovery URL") or "").strip()
        if not url:
            continue
        out.append(
            System(
                country=(row.get("Country Code") or "").strip().upper(),
                name=(row.get("Name") or "").strip(),
                location=(row.get("Location") or "").strip(),
                system_id=(row.get("System ID") or "").strip(),
                url=(row.get("URL") or "").strip(),
                discovery_url=url,
                versions=tuple(v.strip() for v in (row.get("Supported Versions") or "").split(";") if v.strip()),
                auth_info_url=(row.get("Authentication Info URL") or "").strip(),
                auth_type=(row.get("Authentication Type") or "").strip(),
                auth_parameter=(row.get("Authentication Parameter Name") or "").strip(),
            )
        )
    return out


# -- the catalogue, refreshed when online ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Catalog:
    """A list of systems and where it comes from.

    origin: "downloaded" (just now), "cache" (downloaded earlier), "bundled" (shipped with affluent) or
    "file" (given by the user); date: the day it was downloaded, bundled or last modified (YYYY-MM-DD);
    note: why a copy is used instead of a fresh download (offline, or the error), "" otherwise.
    """

    systems: list[System]
    origin: str
    date: str
    source: str
    note: str = ""

    def describe(self) -> str:
        """One line for people: which catalogue, of which date, and why."""
        what = {
            "downloaded": f"downloaded today ({self.date}) from {self.source}",
            "cache": f"cached copy of {self.date} ({self.source})",
            "bundled": f"bundled copy of {self.date}",
            "file": f"{self.source} (modified {self.date})",
        }[self.origin]
        why = f"; {self.note}" if self.note else ""
        credit = "" if self.origin == "file" else f" [{ATTRIBUTION}]"
        return f"catalogue: {what}{why}{credit}"


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def _bundled(note: str) -> Catalog:
    return Catalog(load_systems(), "bundled", BUNDLED_DATE, "affluent", note)


@dataclass(frozen=True, slots=True)
class _Cached:
    systems: list[System]
    url: str
    fetched_ms: int


def _read_cache(csv_path: Path) -> _Cached | None:
    """The cached catalogue, or None when there is none or it cannot be used."""
    try:
        meta = orjson.loads(csv_path.with_suffix(".json").read_bytes())
        if not isinstance(meta, dict) or type(meta.get("fetched_ms")) is not int or not isinstance(meta.get("url"), str):
            raise ValueError(f"{csv_path.with_suffix('.json').name} has no url and fetched_ms")
        systems = parse_systems(csv_path.read_text(encoding="utf-8-sig"), str(csv_path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, ConfigError) as exc:  # orjson.JSONDecodeError is a ValueError
        log.warning("ignoring the cached GBFS catalogue %s: %s", csv_path, exc)
        return None
    return _Cached(systems, meta["url"], meta["fetched_ms"]) if systems else None


def _write_cache(csv_path: Path, text: str, meta: dict[str, object]) -> None:
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in ((csv_path, text.encode("utf-8")), (csv_path.with_suffix(".json"), orjson.dumps(meta))):
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)


def download_catalog(url: str, *, timeout_s: float = 10.0, connect_timeout_s: float | None = None) -> tuple[str, list[System]]:
    """The text and systems of the systems.csv at `url`; httpx.HTTPError or ConfigError when it fails."""
    timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s or timeout_s)
    resp = httpx.get(url, timeout=timeout, follow_redirects=True, headers={"Accept": "text/csv, text/plain;q=0.9, */*;q=0.1"})
    resp.raise_for_status()
    text = resp.content.decode("utf-8-sig", errors="replace")
    systems = parse_systems(text, url)
    if not systems:
        raise ConfigError(f"{url} lists no GBFS system")
    return text, systems


def load_catalog(
    data_dir: str | os.PathLike[str],
    *,
    url: str = DEFAULT_CATALOG_URL,
    offline: bool = False,
    refresh: bool = False,
    max_age_s: float = MAX_AGE_S,
    timeout_s: float = 10.0,
    connect_timeout_s: float | None = None,
) -> Catalog:
    """The freshest catalogue at hand, downloaded from `url` when online and the cached copy is stale.

    The download is kept in `<data_dir>/catalog/gbfs-systems.csv` with its date and URL (a .json next to
    it). Offline, or when the download fails, the cached copy is used, else the bundled one (whichever is
    newer); `Catalog.note` says why. A cached copy of `url` younger than `max_age_s` is used without
    downloading again, unless `refresh`.
    """
    csv_path = Path(data_dir) / CACHE_FILE
    cached = _read_cache(csv_path)
    now = now_ms()

    def fallback(note: str) -> Catalog:
        if cached is not None and _day(cached.fetched_ms) >= BUNDLED_DATE:  # else the bundled copy is newer
            return Catalog(cached.systems, "cache", _day(cached.fetched_ms), cached.url, note)
        return _bundled(note)

    if offline:
        return fallback("offline")
    if cached is not None and not refresh and cached.url == url and 0 <= now - cached.fetched_ms < max_age_s * 1000:
        return fallback(f"less than {max_age_s / 3600:g} h old, not downloaded again")
    try:
        text, systems = download_catalog(url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.debug("cannot download the GBFS catalogue from %s (%s)", url, reason)
        return fallback(f"the download from {url} failed ({reason.splitlines()[0]})")
    except ConfigError as exc:
        return fallback(f"the download failed ({exc})")
    try:
        _write_cache(csv_path, text, {"url": url, "fetched_ms": now, "systems": len(systems)})
    except OSError as exc:
        log.warning("cannot cache the GBFS catalogue in %s: %s", csv_path, exc)
    return Catalog(systems, "downloaded", _day(now), url)


def find_system(id_or_url: str, systems: list[System] | None = None) -> System | None:
    """The system with this System ID (case-insensitive) or this discovery URL."""
    key = id_or_url.strip()
    for s in systems if systems is not None else load_systems():
        if s.discovery_url == key or s.system_id.lower() == key.lower():
            return s
    return None


def search_systems(systems: list[System], *, country: str | None = None, text: str | None = None) -> list[System]:
    out = systems
    if country:
        out = [s for s in out if s.country == country.strip().upper()]
    if text:
        t = text.lower()
        out = [s for s in out if t in f"{s.name} {s.location} {s.system_id}".lower()]
    return sorted(out, key=lambda s: (s.country, s.name.lower(), s.location))
