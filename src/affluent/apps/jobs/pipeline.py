"""The jobs pipelines, as a diagram::

    FranceTravailSource | FranceTravailReplaySource --> jobs.raw (each offer as the API gave it, key: its id)
    jobs:       jobs.raw --normalize (bad offers: dead letters)--> versions (per offer id: new, or a later
                dateActualisation; the same version again is dropped) --> jobs.offers --> serving jobs_offers
                                        +--deltas (+1 for a new offer; -1/+1 where an update moved it)
                                           --counts (per axis, day and code)--> jobs.counts --> serving jobs_counts,
                                                                                              jobs_cube, jobs_hourly
    jobs-lake:  jobs.offers --> lake jobs_offers (each version; date=/hour= of creation, UTC)

Each offer counts once, in its latest version: an update that changes a category moves the offer
from one count to the other, and one that changes nothing moves nothing. Counts are running values
upserted by key, never increments: replaying the log rewrites the same rows with the same values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from affluent.apps.jobs import tables
from affluent.core.clock import DEFAULT_MAX_EVENT_AHEAD_MS
from affluent.core.log import DAY_MS, TopicConfig
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.sources import Source
from affluent.sinks.lake import ParquetLakeSink
from affluent.sinks.serving import ServingSink
from affluent.sources.france_travail import Referentials, normalize_offer
from affluent.sources.france_travail.offers import HOUR_MS

T_RAW = "jobs.raw"
T_OFFERS = "jobs.offers"
T_COUNTS = "jobs.counts"
#: the lake dataset of offer versions
LAKE_OFFERS = "jobs_offers"

#: the categories an offer is counted by, in the order its state keeps them (after the day)
AXES = tables.DIMENSIONS
_LABEL = {
    "departement": "departement_name",
    "commune": "commune_name",
    "city": "city_name",
    "grand_domaine": "grand_domaine_label",
    "contract": "contract_label",
    "experience": "experience_label",
    "qualification": "qualification_label",
    "sector": "sector_label",
}

LAKE_SCHEMA = pa.schema(
    [(c, {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(), "INTEGER": pa.int32()}[t]) for c, t in tables.OFFER_COLUMNS.items()]
)


# -- versions: each offer once, in its latest version ---------------------------------------------------------
def categories(offer: dict[str, Any]) -> list[str]:
    """[day, day_ms, then one code per axis ('' when unknown)]: what an offer is counted under."""
    return [offer["day"], offer["day_ms"], *(offer[a] or "" for a in AXES)]


def version_step(state: Any, offer: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    """State [updated_ms, versions, categories]; passes a new offer or a later version, with what it was counted under."""
    if state is not None and offer["updated_ms"] <= state[0]:
        return state, []  # this version, or an older one, again
    cats = categories(offer)
    versions = 1 if state is None else state[1] + 1
    return [offer["updated_ms"], versions, cats], [{**offer, "versions": versions, "was": None if state is None else state[2]}]


#: where the cube's axes sit in `categories`
_DEPT, _GD, _CONTRACT = 2, 2 + AXES.index("grand_domaine"), 2 + AXES.index("contract")


def deltas(v: dict[str, Any]) -> list[dict[str, Any]]:
    """The count changes a version makes: +1 where a new offer counts; -1 and +1 where an update moved it.

    Keys are tuples: ("c", axis, code, day), ("q", day, département, grand domaine, contract), ("h", kind, hour).
    """
    now, was = categories(v), v["was"]
    out: list[dict[str, Any]] = []
    if was is None:
        out.append({"key": ("h", "created", v["created_ms"] - v["created_ms"] % HOUR_MS), "n": 1})
    else:
        out.append({"key": ("h", "updated", v["updated_ms"] - v["updated_ms"] % HOUR_MS), "n": 1})
        if was == now:
            return out
    for i, axis in enumerate(AXES, 2):
        if was is None or was[i] != now[i] or was[0] != now[0]:
            if was is not None:
                out.append({"key": ("c", axis, was[i], was[0]), "n": -1, "day_ms": was[1]})
            out.append({"key": ("c", axis, now[i], now[0]), "n": 1, "day_ms": now[1], "label": v[_LABEL[axis]]})
    cube = ("q", now[0], now[_DEPT], now[_GD], now[_CONTRACT])
    old = None if was is None else ("q", was[0], was[_DEPT], was[_GD], was[_CONTRACT])
    if old != cube:
        if old is not None:
            out.append({"key": old, "n": -1, "day_ms": was[1]})
        out.append({"key": cube, "n": 1, "day_ms": now[1]})
    return out


def merge_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two changes of one count, as one."""
    return {**a, "n": a["n"] + b["n"], "label": b.get("label") or a.get("label")}


def count_step(state: Any, d: dict[str, Any], _t: int) -> tuple[Any, list[Any]]:
    """State [offers, label, day_ms]: the running count of one key, as the row its table keeps."""
    n = (state[0] if state else 0) + d["n"]
    label = d.get("label") or (state[1] if state else None)
    day_ms = d.get("day_ms", state[2] if state else None)
    new = [n, label, day_ms]
    k = d["key"]
    if k[0] == "c":
        row = {"table": tables.COUNTS, "dimension": k[1], "code": k[2], "label": label, "day": k[3], "day_ms": day_ms, "offers": n}
    elif k[0] == "q":
        row = {"table": tables.CUBE, "day": k[1], "day_ms": day_ms, "departement": k[2], "grand_domaine": k[3], "contract": k[4], "offers": n}
    else:
        row = {"table": tables.HOURLY, "kind": k[1], "hour_ms": k[2], "offers": n}
    return new, [row]


def _table_is(name: str) -> Any:
    return lambda v: v["table"] == name


def _lake_time(r: Record) -> int:
    return int(r.value["created_ms"])


# -- the pipelines -------------------------------------------------------------------------------------------------
def build_pipelines(
    source: Source,
    referentials: Referentials,
    *,
    serving_db: str | Path,
    lake_root: str | Path,
    lake_commit_ms: int = 30_000,
    state_ttl_ms: int = 8 * DAY_MS,
    serving_retain_ms: int = 31 * DAY_MS,
    max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
) -> list[Pipeline]:
    """The two jobs pipelines around one offers source (live or replayed).

    state_ttl_ms: how long after its creation an offer's versions are remembered: a version seen later
    than that (it cannot be by overlapping windows or a restart) is late, counted, and not counted twice.
    serving_retain_ms: the serving store keeps offers and counts of this many days back (the lake keeps all).
    """

    def serving(table: str, keys: tuple[str, ...], columns: dict[str, str], time_column: str, **kw: Any) -> ServingSink:
        return ServingSink(serving_db, table, key_columns=keys, columns=columns, retain_ms=serving_retain_ms, time_column=time_column, **kw)

    def normalize(raw: Any) -> dict[str, Any]:
        return normalize_offer(raw, referentials)

    p = Pipeline("jobs", poll_interval_ms=250, max_event_ahead_ms=max_event_ahead_ms)
    # the raw offers are big; the lake keeps every version, normalised, for ever
    raw = p.source(source, topic=T_RAW, config=TopicConfig(retention_ms=3 * DAY_MS))
    versions = raw.map(normalize, name="normalize").stateful(version_step, key=lambda o: o["offer_id"], name="versions", ttl_ms=state_ttl_ms)
    versions.to_topic(T_OFFERS)
    versions.to_sink(
        serving(
            tables.OFFERS,
            tables.OFFER_KEY,
            tables.OFFER_COLUMNS,
            "created_ms",
            indexes=[("departement", "created_ms"), ("created_ms",)],
        )
    )
    counts = versions.flat_map(deltas, name="deltas").stateful(
        count_step, key=lambda d: d["key"], name="counts", ttl_ms=state_ttl_ms, coalesce=True, combine=merge_deltas
    )
    counts.to_topic(T_COUNTS)
    by_table = counts.branch({t: _table_is(t) for t in (tables.COUNTS, tables.CUBE, tables.HOURLY)}, name="by-table")
    by_table[tables.COUNTS].to_sink(serving(tables.COUNTS, tables.COUNT_KEY, tables.COUNT_COLUMNS, "day_ms"))
    by_table[tables.CUBE].to_sink(serving(tables.CUBE, tables.CUBE_KEY, tables.CUBE_COLUMNS, "day_ms"))
    by_table[tables.HOURLY].to_sink(serving(tables.HOURLY, tables.HOURLY_KEY, tables.HOURLY_COLUMNS, "hour_ms"))

    lake = Pipeline("jobs-lake", commit_interval_ms=lake_commit_ms, poll_interval_ms=min(lake_commit_ms, 1_000) or 50, max_event_ahead_ms=max_event_ahead_ms)
    lake.topic(T_OFFERS).to_sink(ParquetLakeSink(lake_root, LAKE_OFFERS, time_ms=_lake_time, schema=LAKE_SCHEMA, tz="UTC"))
    return [p, lake]
