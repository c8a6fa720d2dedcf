"""Known public GBFS systems: a bundled subset of MobilityData's systems.csv catalogue.

The bundled copy (data/systems.csv, same columns as the catalogue) lists VéloZef and a few dozen
French and European systems, as public copies of the catalogue gave them; discovery URLs and
versions move over time, so `affluent bikes systems --catalog FILE` reads a fresh systems.csv
(https://github.com/MobilityData/gbfs/blob/master/systems.csv) instead.

>>> velozef = find_system("velozef")
>>> velozef.location, velozef.versions
('Brest, FR', ('2.2',))
>>> find_system(velozef.discovery_url).system_id
'velozef'
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from affluent.core.errors import ConfigError

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


def load_systems(path: str | Path | None = None) -> list[System]:
    """The systems of a systems.csv file (the bundled copy by default)."""
    if path is None:
        text = bundled_catalog()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"cannot read the systems catalogue {path}: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    missing = [c for c in COLUMNS[:6] if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{path or 'the bundled catalogue'} is not a GBFS systems.csv: no column {', '.join(missing)}")
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
