"""What the jobs pipelines write to the serving store: table names, keys and columns.

Every row is an idempotent upsert of a computed value, keyed by entity and period: a replay rewrites
the same rows with the same values. Days are calendar days in Europe/Paris (the API's country), as
`YYYY-MM-DD` and as the epoch ms of their midnight; hours are UTC epoch ms of the hour's start.
Unknown codes are '' in key columns (SQLite keys cannot hold NULL).
"""

from __future__ import annotations

#: the latest version of each offer, for the dashboard's lists
OFFERS = "jobs_offers"
OFFER_KEY = ("offer_id",)
OFFER_COLUMNS = {
    "offer_id": "VARCHAR",
    "title": "VARCHAR",
    "company": "VARCHAR",
    "created_ms": "BIGINT",
    "updated_ms": "BIGINT",
    "day": "VARCHAR",
    "departement": "VARCHAR",
    "departement_name": "VARCHAR",
    "region": "VARCHAR",
    "region_name": "VARCHAR",
    "commune": "VARCHAR",
    "commune_name": "VARCHAR",
    "city": "VARCHAR",
    "city_name": "VARCHAR",
    "place": "VARCHAR",
    "lat": "DOUBLE",
    "lon": "DOUBLE",
    "rome_code": "VARCHAR",
    "rome_label": "VARCHAR",
    "appellation": "VARCHAR",
    "grand_domaine": "VARCHAR",
    "grand_domaine_label": "VARCHAR",
    "domaine": "VARCHAR",
    "domaine_label": "VARCHAR",
    "contract": "VARCHAR",
    "contract_label": "VARCHAR",
    "experience": "VARCHAR",
    "experience_label": "VARCHAR",
    "qualification": "VARCHAR",
    "qualification_label": "VARCHAR",
    "sector": "VARCHAR",
    "sector_label": "VARCHAR",
    "origin": "VARCHAR",
    "partner": "VARCHAR",
    "url": "VARCHAR",
    "place_issue": "VARCHAR",
    "versions": "INTEGER",
}

#: offers created per day, along one axis at a time (each offer counted once, in its latest version)
COUNTS = "jobs_counts"
COUNT_KEY = ("dimension", "code", "day")
COUNT_COLUMNS = {
    "dimension": "VARCHAR",
    "code": "VARCHAR",
    "label": "VARCHAR",
    "day": "VARCHAR",
    "day_ms": "BIGINT",
    "offers": "INTEGER",
}
#: the axes of COUNTS: département, commune as given, commune with arrondissements folded into their city, ...
DIMENSIONS = ("departement", "commune", "city", "grand_domaine", "contract", "experience", "qualification", "sector")

#: offers created per day and département, by grand domaine and contract: the map's filters
CUBE = "jobs_cube"
CUBE_KEY = ("day", "departement", "grand_domaine", "contract")
CUBE_COLUMNS = {
    "day": "VARCHAR",
    "day_ms": "BIGINT",
    "departement": "VARCHAR",
    "grand_domaine": "VARCHAR",
    "contract": "VARCHAR",
    "offers": "INTEGER",
}

#: offers created (kind 'created') and updates seen (kind 'updated', by dateActualisation) per hour
HOURLY = "jobs_hourly"
HOURLY_KEY = ("kind", "hour_ms")
HOURLY_COLUMNS = {"kind": "VARCHAR", "hour_ms": "BIGINT", "offers": "INTEGER"}
