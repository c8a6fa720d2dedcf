"""The API's referentials: the names of départements, régions, communes, domaines, métiers, contracts, sectors.

Every label affluent shows comes from here, never from code. A copy is bundled with the jobs app; when
credentials are set and the API answers, `refresh` fetches each referential again and `save` keeps that
copy in the data folder, preferred to the bundled one from then on. The file is one JSON object (gzipped
or not) whose keys are the API's referential names and whose values are lists in the API's own shape,
plus two lists the API only documents in its OpenAPI enums: `grandsDomaines` (A-N) and
`experiencesExigees` (D, S, E).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Any

import orjson

from affluent.core.errors import ConfigError

log = logging.getLogger("affluent.sources.france_travail")

#: the referentials fetched from the API by `refresh`
API_REFERENTIALS = ("departements", "regions", "communes", "domaines", "metiers", "typesContrats", "naturesContrats", "secteursActivites")


def _labels(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or ():
        if isinstance(it, dict) and it.get("code") is not None and isinstance(it.get("libelle"), str):
            out[str(it["code"])] = it["libelle"]
    return out


class Referentials:
    """Code -> label lookups over one copy of the referentials; `origin` says which copy."""

    def __init__(self, data: dict[str, Any], origin: str) -> None:
        self.data = data
        self.origin = origin
        self.departements = _labels(data.get("departements"))
        self.regions = _labels(data.get("regions"))
        self.region_of: dict[str, str] = {}
        for d in data.get("departements") or ():
            region = d.get("region") if isinstance(d, dict) else None
            if isinstance(region, dict) and region.get("code") is not None:
                self.region_of[str(d["code"])] = str(region["code"])
                if isinstance(region.get("libelle"), str):
                    self.regions.setdefault(str(region["code"]), region["libelle"])
        self.communes = _labels(data.get("communes"))
        #: an arrondissement of Paris, Lyon or Marseille -> its city's INSEE code
        self.city_of = {str(c["code"]): str(c["commune"]) for c in data.get("communes") or () if isinstance(c, dict) and c.get("commune")}
        self.region_names = {name.casefold(): code for code, name in self.regions.items()}
        self.domaines = _labels(data.get("domaines"))
        self.metiers = _labels(data.get("metiers"))
        self.grands_domaines = _labels(data.get("grandsDomaines"))
        self.contracts = _labels(data.get("typesContrats"))
        self.natures = _labels(data.get("naturesContrats"))
        self.sectors = _labels(data.get("secteursActivites"))
        self.experiences = _labels(data.get("experiencesExigees"))
        if len(self.departements) < 101 or not self.grands_domaines:
            raise ConfigError(
                f"the referentials of {origin} are incomplete ({len(self.departements)} départements, {len(self.grands_domaines)} grands domaines)"
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Referentials:
        p = Path(path)
        try:
            raw = p.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            data = orjson.loads(raw)
        except (OSError, orjson.JSONDecodeError, EOFError) as exc:
            raise ConfigError(f"cannot read the referentials at {p}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p} is not a referentials file (a JSON object of lists)")
        return cls(data, str(p))

    def refreshed(self, fetch: Any) -> Referentials:
        """A copy with each API referential fetched again by `fetch(name) -> list`; the others kept."""
        data = dict(self.data)
        for name in API_REFERENTIALS:
            items = fetch(name)
            if items:
                data[name] = items
        if data.get("communes") is not self.data.get("communes"):
            # the city of each arrondissement is ours (the API may not say it): kept across a refresh
            data["communes"] = [{**c, "commune": self.city_of[c["code"]]} if c.get("code") in self.city_of else c for c in data["communes"]]
        data["_meta"] = {**(self.data.get("_meta") or {}), "refreshed_from": "the France Travail API"}
        return Referentials(data, "the France Travail API")

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_bytes(gzip.compress(orjson.dumps(self.data, option=orjson.OPT_SORT_KEYS)))
        os.replace(tmp, p)

    def departement_of_commune(self, commune: str) -> str | None:
        """INSEE commune code -> département code: 3 characters overseas (97x), else 2 (2A and 2B included)."""
        code = commune[:3] if commune.startswith("97") else commune[:2]
        return code if code in self.departements else None
