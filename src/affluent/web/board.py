"""What each app brings to the dashboard: a page, its JSON API, its live channels and its alerts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from affluent.analytics.base import DuckDBEngine, EmptyLakeError
from affluent.core.errors import AffluentError
from affluent.core.records import Record
from affluent.web.live import Channel
from affluent.web.queries import Queries


@dataclass(frozen=True)
class AlertFeed:
    """An app's alert topic, and how one of its records reads on the home page."""

    topic: str
    #: record -> {"title", "detail", "level"} (all plain text; pages never read them as HTML)
    render: Callable[[Record], dict[str, Any]]


@dataclass
class Board:
    app: str
    title: str
    #: one line under the app's name on the home page
    summary: str
    router: APIRouter
    #: fresh live channels for one server (named "<app>.<what>")
    channels: Callable[[], list[Channel]] = list
    alerts: tuple[AlertFeed, ...] = ()
    #: the page's script, under /static
    script: str = field(default="")


def from_lake(q: Queries, answer: Callable[[DuckDBEngine], dict[str, Any]], *, empty: dict[str, Any], commit_s: float) -> dict[str, Any]:
    """`answer` run over the lake, with `note` None; `empty` and a note while the lake has no data yet; 503 when it cannot be read."""
    engine = DuckDBEngine(q.lake_root)
    try:
        return {**answer(engine), "note": None}
    except EmptyLakeError as exc:
        return {**empty, "note": f"{exc} (the lake is written every {commit_s:g} s)"}
    except AffluentError as exc:
        raise HTTPException(503, str(exc)) from exc
    finally:
        engine.close()


def queries(request: Request) -> Queries:
    """The query layer of the server handling `request` (a FastAPI dependency)."""
    q: Queries = request.app.state.queries
    return q


__all__ = ["AlertFeed", "Board", "from_lake", "queries"]
