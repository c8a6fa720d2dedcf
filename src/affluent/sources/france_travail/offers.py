"""One France Travail offer, as the API gives it, made into one flat row with every category named.

`normalize_offer` raises `BadOfferError` (the record becomes a dead letter, with this reason) only when
the offer cannot be placed in time or named: not an object, no id, a creation or update date that is
not a date, a `lieuTravail` that is not an object. Everything else is kept and said:

- no commune, or no coordinates: `place_issue` says why (`departement_only`, `region_only`,
  `country_only`, `unknown_place`, `no_coordinates`, `bad_coordinates`); the offer still counts in
  its département when the place names one;
- a ROME code the referentials do not know: kept, with the offer's own label, grand domaine from its
  first letter only when that is one of A-N;
- HTML in a title: a title is text; it is kept as it came, and shown as text.

>>> parse_api_time_ms("2026-03-10T08:42:17Z"), parse_api_time_ms("2026-03-10T08:42:17.512Z")
(1773132137000, 1773132137512)
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from affluent.core.errors import RecordError
from affluent.sources.france_travail.referentials import Referentials

#: day boundaries of the counts: the API's country
PARIS = ZoneInfo("Europe/Paris")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
HOUR_MS = 3_600_000


class BadOfferError(RecordError):
    """An offer that cannot be counted: dead-lettered with this reason."""


def parse_api_time_ms(value: Any) -> int | None:
    """An API date-time ('…Z', with or without milliseconds) -> UTC epoch ms; None when it is not one."""
    if not isinstance(value, str) or not _ISO.fullmatch(value.strip()):
        return None
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def paris_day(ms: int) -> tuple[str, int]:
    """('YYYY-MM-DD', epoch ms of that midnight) of the day `ms` falls in, in Europe/Paris."""
    dt = datetime.fromtimestamp(ms / 1000, PARIS)
    midnight = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.strftime("%Y-%m-%d"), int(midnight.timestamp() * 1000)


def _text(v: Any) -> str | None:
    if isinstance(v, str):
        v = v.strip()
        return v or None
    if isinstance(v, int | float) and not isinstance(v, bool):
        return str(v)
    return None


def _coordinate(v: Any, limit: float) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan  # present but not a number
    return x if math.isfinite(x) and -limit <= x <= limit else math.nan


def offer_time_ms(raw: Any) -> int:
    """The event time of a raw offer: its creation, or 0 ('now') when it has none (normalisation dead-letters it)."""
    return (parse_api_time_ms(raw.get("dateCreation")) if isinstance(raw, dict) else None) or 0


def _place(lieu: dict[str, Any], refs: Referentials) -> dict[str, Any]:
    """Département, région, commune, city and coordinates of a `lieuTravail`, and what is missing."""
    libelle = _text(lieu.get("libelle")) or ""
    commune = _text(lieu.get("commune"))
    if commune is not None and refs.departement_of_commune(commune) is None and commune not in refs.communes:
        commune = None  # not an INSEE code of France: the libelle tells the rest
    prefix = libelle.split(" - ", 1)[0].strip() if " - " in libelle else ""
    departement = refs.departement_of_commune(commune) if commune else None
    if departement is None and prefix in refs.departements:
        departement = prefix
    lat, lon = _coordinate(lieu.get("latitude"), 90), _coordinate(lieu.get("longitude"), 180)
    bad = (lat is not None and math.isnan(lat)) or (lon is not None and math.isnan(lon)) or (lat == 0 and lon == 0)
    if bad or lat is None or lon is None:
        lat = lon = None
    if commune is None:
        if departement is not None:
            issue = "departement_only"
        elif libelle.casefold() in refs.region_names:
            issue = "region_only"
        elif libelle.casefold() == "france":
            issue = "country_only"
        else:
            issue = "unknown_place"
    elif bad:
        issue = "bad_coordinates"
    elif lat is None:
        issue = "no_coordinates"
    else:
        issue = None
    region = refs.region_of.get(departement) if departement else None
    if region is None and issue == "region_only":
        region = refs.region_names[libelle.casefold()]
    city = refs.city_of.get(commune, commune) if commune else None
    commune_name = refs.communes.get(commune) if commune else None
    if commune and commune_name is None and prefix:
        commune_name = libelle.split(" - ", 1)[1].strip() or None
    return {
        "departement": departement,
        "departement_name": refs.departements.get(departement) if departement else None,
        "region": region,
        "region_name": refs.regions.get(region) if region else None,
        "commune": commune,
        "commune_name": commune_name,
        "city": city,
        "city_name": refs.communes.get(city, commune_name) if city else None,
        "place": libelle or None,
        "lat": lat,
        "lon": lon,
        "place_issue": issue,
    }


def normalize_offer(raw: Any, refs: Referentials) -> dict[str, Any]:
    """A raw API offer -> one flat row (the columns of `affluent.apps.jobs.tables.OFFER_COLUMNS`, plus `raw`)."""
    if not isinstance(raw, dict):
        raise BadOfferError(f"an offer must be a JSON object, not {type(raw).__name__}")
    offer_id = _text(raw.get("id"))
    if offer_id is None:
        raise BadOfferError("the offer has no id")
    created = parse_api_time_ms(raw.get("dateCreation"))
    if created is None:
        raise BadOfferError(f"offer {offer_id}: dateCreation {raw.get('dateCreation')!r} is not an ISO 8601 date-time")
    updated_raw = raw.get("dateActualisation")
    updated = created if updated_raw is None else parse_api_time_ms(updated_raw)
    if updated is None:
        raise BadOfferError(f"offer {offer_id}: dateActualisation {updated_raw!r} is not an ISO 8601 date-time")
    lieu = raw.get("lieuTravail")
    if lieu is None:
        lieu = {}
    if not isinstance(lieu, dict):
        raise BadOfferError(f"offer {offer_id}: lieuTravail must be an object, not {type(lieu).__name__}")
    rome = _text(raw.get("romeCode"))
    letter = rome[:1].upper() if rome else None
    grand_domaine = letter if letter in refs.grands_domaines else None
    domaine = rome[:3].upper() if rome and rome[:3].upper() in refs.domaines else None
    contract = _text(raw.get("typeContrat"))
    experience = _text(raw.get("experienceExige"))
    qualification = _text(raw.get("qualificationCode"))
    sector = _text(raw.get("secteurActivite"))
    company = raw.get("entreprise")
    origin = raw.get("origineOffre")
    origin = origin if isinstance(origin, dict) else {}
    partners = origin.get("partenaires")
    partner = _text(partners[0].get("nom")) if isinstance(partners, list) and partners and isinstance(partners[0], dict) else None
    day, day_ms = paris_day(created)
    return {
        "offer_id": offer_id,
        "title": _text(raw.get("intitule")) or _text(raw.get("appellationlibelle")) or _text(raw.get("romeLibelle")),
        "company": _text(company.get("nom")) if isinstance(company, dict) else None,
        "created_ms": created,
        "updated_ms": max(updated, created),
        "day": day,
        "day_ms": day_ms,
        **_place(lieu, refs),
        "rome_code": rome,
        "rome_label": refs.metiers.get(rome or "") or _text(raw.get("romeLibelle")),
        "appellation": _text(raw.get("appellationlibelle")),
        "grand_domaine": grand_domaine,
        "grand_domaine_label": refs.grands_domaines.get(grand_domaine) if grand_domaine else None,
        "domaine": domaine,
        "domaine_label": refs.domaines.get(domaine) if domaine else None,
        "contract": contract,
        "contract_label": refs.contracts.get(contract or "") or _text(raw.get("typeContratLibelle")),
        "experience": experience,
        "experience_label": refs.experiences.get(experience or ""),
        "qualification": qualification,
        "qualification_label": _text(raw.get("qualificationLibelle")),
        "sector": sector,
        "sector_label": refs.sectors.get(sector or "") or _text(raw.get("secteurActiviteLibelle")),
        "origin": _text(origin.get("origine")),
        "partner": partner,
        "url": _text(origin.get("urlOrigine")),
    }
