"""The stock page: live alerts, open restock requests, stores on a map, and the five answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException

from affluent.apps.stock.pipeline import ALERTS
from affluent.core.errors import AffluentError
from affluent.core.records import Record
from affluent.web.board import AlertFeed, Board, from_lake, queries
from affluent.web.live import Channel, KeyedRows
from affluent.web.queries import Queries

router = APIRouter(prefix="/api/stock", tags=["stock"])
Q = Annotated[Queries, Depends(queries)]


def open_requests(q: Queries, store_id: str | None = None) -> list[dict[str, Any]]:
    """Open restock requests, high priority first, then the most missing units."""
    where, params = (" AND store_id = ?", [store_id]) if store_id else ("", [])
    return q.serving(
        "SELECT store_id, product_id, request_id, high_priority, season, missing_quantity, quantity, threshold, opened_ms "
        f"FROM stock_restock WHERE status = 'open'{where} ORDER BY high_priority DESC, missing_quantity DESC, store_id, product_id",
        params,
    )


def stores(q: Queries) -> list[dict[str, Any]]:
    """Each store: where it is, its shelves, those in alert, and its open requests."""
    return q.serving(
        "SELECT s.store_id, AVG(lat) AS lat, AVG(lon) AS lon, COUNT(*) AS shelves, SUM(alert) AS alerts, MAX(ts_ms) AS last_ms, "
        "(SELECT COUNT(*) FROM stock_restock r WHERE r.store_id = s.store_id AND r.status = 'open') AS open_requests "
        "FROM stock_shelves s GROUP BY s.store_id ORDER BY s.store_id"
    )


def shelves(q: Queries, store_id: str | None = None) -> list[dict[str, Any]]:
    where, params = ("WHERE store_id = ?", [store_id]) if store_id else ("", [])
    fields = "store_id, product_id, sensor_id, quantity, threshold, alert, ts_ms"
    return q.serving(f"SELECT {fields} FROM stock_shelves {where} ORDER BY store_id, product_id", params)


@router.get("/restock", summary="Open restock requests, by priority")
def get_restock(q: Q, store_id: str | None = None) -> list[dict[str, Any]]:
    return open_requests(q, store_id)


@router.get("/stores", summary="Stores with their shelves in alert and open requests")
def get_stores(q: Q) -> list[dict[str, Any]]:
    return stores(q)


@router.get("/shelves", summary="Every shelf's latest reading")
def get_shelves(q: Q, store_id: str | None = None) -> list[dict[str, Any]]:
    return shelves(q, store_id)


@router.get("/answers", summary="The five questions over the lake, for a period (dates or ISO datetimes, local time)")
def get_answers(q: Q, since: str | None = None, until: str | None = None) -> dict[str, Any]:
    from affluent.analytics.base import parse_when
    from affluent.analytics.stock import DUCKDB, analyze_stock, check_tz

    tz = q.settings.stock.timezone
    try:
        zone = check_tz(tz)
        since_ms = parse_when(since, zone) if since else None
        until_ms = parse_when(until, zone, end=True) if until else None
    except AffluentError as exc:
        raise HTTPException(422, str(exc)) from exc
    except (OverflowError, ValueError) as exc:  # a date at the edge of the calendar
        raise HTTPException(422, f"period {since!r} to {until!r} is out of range: {exc}") from exc
    return from_lake(
        q,
        lambda engine: analyze_stock(engine.run, tz=tz, dialect=DUCKDB, since_ms=since_ms, until_ms=until_ms),
        empty={"readings": 0},
        commit_s=q.settings.stock.lake_commit_s,
    )


def channels() -> list[Channel]:
    return [
        KeyedRows("stock.restock", open_requests, ("store_id", "product_id")),
        KeyedRows("stock.stores", stores, ("store_id",)),
    ]


def alert(r: Record) -> dict[str, Any]:
    v = r.value
    return {
        "title": f"{v['product_id']} low at {v['store_id']}",
        "detail": f"{v['quantity']} left on shelf {v['sensor_id']}, threshold {v['threshold']}",
        "level": "warning",
    }


BOARD = Board(
    app="stock",
    title="Warehouse stock",
    summary="shelf sensors, low-stock alerts, restock requests",
    router=router,
    channels=channels,
    alerts=(AlertFeed(ALERTS, alert),),
    script="stock.js",
)
