"""What each app brings to the dashboard: a page, its JSON API, its live channels and its alerts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request

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


def queries(request: Request) -> Queries:
    """The query layer of the server handling `request` (a FastAPI dependency)."""
    q: Queries = request.app.state.queries
    return q


__all__ = ["AlertFeed", "Board", "queries"]
