"""The jobs questions, defined once, answered by DuckDB (or Spark) over lake dataset `jobs_offers`.

The lake holds every version of an offer; each question reads the latest version of each (the one
with the latest `dateActualisation`), created in the period asked:

1. offers per département and grand domaine;
2. the ten most offered job titles (ROME appellations, else the offer's title) per département;
3. the daily trend of new offers (days in Europe/Paris);
4. the share of CDI per grand domaine;
5. offers without a commune or coordinates, by reason.

The SQL is the subset DuckDB and Spark SQL share; the period is rendered as checked integers.

>>> qs = jobs_questions(since_ms=0, until_ms=86_400_000)
>>> [q.name for q in qs]
['summary', 'departement_domaine', 'top_titles', 'daily_trend', 'cdi_share', 'missing_place']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from affluent.analytics.base import Question

DATASET = "jobs_offers"
TOP_TITLES = 10
#: the contract type whose share is asked
CDI = "CDI"

_LATEST = """WITH latest AS (
  SELECT * FROM (
    SELECT o.*, row_number() OVER (PARTITION BY offer_id ORDER BY updated_ms DESC, versions DESC) AS version_rank
    FROM {dataset} o WHERE {where}
  ) v WHERE version_rank = 1
)
"""

_SQL: dict[str, tuple[str, str]] = {
    "summary": (
        "Offers in the period",
        "SELECT count(*) AS offers, min(created_ms) AS first_ms, max(created_ms) AS last_ms, count(DISTINCT departement) AS departements FROM latest",
    ),
    "departement_domaine": (
        "How many offers per département and grand domaine?",
        """SELECT departement, max(departement_name) AS departement_name, grand_domaine, max(grand_domaine_label) AS grand_domaine_label,
       count(*) AS offers
FROM latest GROUP BY departement, grand_domaine ORDER BY departement, grand_domaine""",
    ),
    "top_titles": (
        "Which job titles are offered most, per département?",
        """SELECT departement, departement_name, title, offers FROM (
  SELECT departement, departement_name, title, offers,
         row_number() OVER (PARTITION BY departement ORDER BY offers DESC, title) AS title_rank
  FROM (SELECT departement, max(departement_name) AS departement_name, coalesce(appellation, title) AS title, count(*) AS offers
        FROM latest WHERE departement IS NOT NULL GROUP BY departement, coalesce(appellation, title)) t
) r WHERE title_rank <= {top} ORDER BY departement, offers DESC, title""",
    ),
    "daily_trend": (
        "How many new offers per day (Europe/Paris)?",
        "SELECT day, count(*) AS offers FROM latest GROUP BY day ORDER BY day",
    ),
    "cdi_share": (
        "What share of offers is a CDI, per grand domaine?",
        """SELECT grand_domaine, max(grand_domaine_label) AS grand_domaine_label, count(*) AS offers,
       sum(CASE WHEN contract = '{cdi}' THEN 1 ELSE 0 END) AS cdi
FROM latest GROUP BY grand_domaine ORDER BY grand_domaine""",
    ),
    "missing_place": (
        "How many offers lack a commune or coordinates, and why?",
        "SELECT place_issue AS reason, count(*) AS offers FROM latest WHERE place_issue IS NOT NULL GROUP BY place_issue ORDER BY offers DESC, reason",
    ),
}
QUESTION_NAMES = tuple(_SQL)


def jobs_questions(*, since_ms: int | None = None, until_ms: int | None = None) -> list[Question]:
    """The questions over offers created with since_ms <= created_ms < until_ms."""
    conds = []
    if since_ms is not None:
        conds.append(f"created_ms >= {int(since_ms)}")
    if until_ms is not None:
        conds.append(f"created_ms < {int(until_ms)}")
    latest = _LATEST.format(dataset=DATASET, where=" AND ".join(conds) or "TRUE")
    return [Question(name, title, latest + sql.format(top=TOP_TITLES, cdi=CDI), (DATASET,)) for name, (title, sql) in _SQL.items()]


def analyze_jobs(run: Callable[[Question], list[dict[str, Any]]], *, since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
    """Every answer, as one JSON-able document."""
    rows = {q.name: run(q) for q in jobs_questions(since_ms=since_ms, until_ms=until_ms)}
    s = rows["summary"][0] if rows["summary"] else {}
    top: dict[str, dict[str, Any]] = {}
    for r in rows["top_titles"]:
        d = top.setdefault(r["departement"], {"departement": r["departement"], "departement_name": r["departement_name"], "titles": []})
        d["titles"].append({"title": r["title"], "offers": int(r["offers"])})
    return {
        "since_ms": since_ms,
        "until_ms": until_ms,
        "offers": int(s.get("offers") or 0),
        "first_ms": s.get("first_ms"),
        "last_ms": s.get("last_ms"),
        "departements": int(s.get("departements") or 0),
        "departement_domaine": [{**r, "offers": int(r["offers"])} for r in rows["departement_domaine"]],
        "top_titles": list(top.values()),
        "daily_trend": [{"day": str(r["day"]), "offers": int(r["offers"])} for r in rows["daily_trend"]],
        "cdi_share": [
            {**r, "offers": int(r["offers"]), "cdi": int(r["cdi"] or 0), "share": (int(r["cdi"] or 0) / int(r["offers"])) if r["offers"] else None}
            for r in rows["cdi_share"]
        ],
        "missing_place": [{"reason": r["reason"], "offers": int(r["offers"])} for r in rows["missing_place"]],
    }
