"""The home page: each app's state, and the latest alerts of all apps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from affluent.core.records import Record
from affluent.web.board import Board, queries
from affluent.web.queries import Queries

router = APIRouter(prefix="/api", tags=["home"])
Q = Annotated[Queries, Depends(queries)]

#: how each source mode reads as an app state
_MODE_STATE = {"live": "running", "replay": "replaying", "simulator": "simulating"}
_MODE_REASON = {"replay": "offline: replays a recorded feed", "simulator": "offline: runs a simulator"}


def pipelines_of(app: str, statuses: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """An app's pipelines: the one named after it, and those named `<app>-...`."""
    return [{"name": n, **s} for n, s in statuses.items() if n == app or n.startswith(app + "-")]


def app_state(board: Board, statuses: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """What the home page says of one app, from its pipelines' published statuses."""
    pipes = pipelines_of(board.app, statuses)
    sources = [s for p in pipes for s in p.get("sources", [])]
    out: dict[str, Any] = {
        "app": board.app,
        "title": board.title,
        "summary": board.summary,
        "records_per_s": round(sum(s["rate"] for s in sources), 1),
        "records": sum(s["records"] for s in sources),
        "lag": sum(p["lag"] for p in pipes),
        "dead_letters": sum(p["dead_letters"] for p in pipes),
        "late": sum(p["late"] for p in pipes),
        "last_data_ms": max((s["last_event_ms"] for s in sources if s.get("last_event_ms")), default=None),
        "updated_ms": max((p["updated_ms"] for p in pipes), default=None),
        "pipelines": [{k: p[k] for k in ("name", "status", "records", "rate", "lag", "dead_letters", "late", "error")} for p in pipes],
        "sources": [{k: s.get(k) for k in ("name", "status", "mode", "describe", "records", "rate", "error", "note")} for s in sources],
    }
    failed = [p for p in pipes if p["status"] in ("failed", "gone")] + [s for s in sources if s["status"] == "failed"]
    if not pipes:
        out["state"], out["reason"] = "not running", f"no process runs it: start it with `affluent up` or `affluent run {board.app}`"
    elif failed:
        out["state"], out["reason"] = "error", "; ".join(f"{f['name']}: {f.get('error') or f['status']}" for f in failed)
    elif all(p["status"] == "stopped" for p in pipes):
        out["state"], out["reason"] = "stopped", "its process stopped"
    else:
        modes = sorted({s["mode"] for s in sources}, key=list(_MODE_STATE).index) or ["live"]
        worst = modes[-1]  # a replay or simulator anywhere makes the app offline
        out["state"] = _MODE_STATE[worst]
        notes = [s["note"] for s in sources if s.get("note")]
        retrying = [f"{s['name']}: {s['error']}" for s in sources if s.get("error")]
        out["reason"] = "; ".join(notes + retrying) or _MODE_REASON.get(worst)
    return out


def apps_state(q: Queries, boards: Sequence[Board]) -> list[dict[str, Any]]:
    statuses = q.pipelines()
    return [app_state(b, statuses) for b in boards]


@router.get("/apps", summary="Each app's state: running, replaying, simulating, error; records/s, lag, dead letters")
def get_apps(request: Request, q: Q) -> list[dict[str, Any]]:
    return apps_state(q, request.app.state.boards)


@router.get("/pipelines", summary="Every pipeline's last published status")
def get_pipelines(q: Q) -> dict[str, dict[str, Any]]:
    return q.pipelines()


@router.get("/alerts", summary="The latest alerts of all apps, newest first")
def get_alerts(request: Request, q: Q, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
    alerts: Alerts = request.app.state.alerts
    return alerts.latest(q, limit)


class Alerts:
    """Every app's alert topics, and a record of any of them as one item of the alert feed."""

    def __init__(self, boards: Sequence[Board]) -> None:
        self._by_topic = {feed.topic: (b.app, feed.render) for b in boards for feed in b.alerts}
        self.topics = sorted(self._by_topic)

    def item(self, r: Record) -> dict[str, Any]:
        app, render = self._by_topic[r.topic]
        try:
            shown = render(r)
        except Exception as exc:  # a record of another shape (produced by hand, an older version): shown as such, never a failed page
            shown = {"title": "an alert this version cannot read", "detail": f"{type(exc).__name__}: {exc}", "level": "info"}
        return {"app": app, "time_ms": r.timestamp_ms, "id": f"{r.topic}/{r.partition}/{r.offset}", **shown}

    def latest(self, q: Queries, limit: int) -> list[dict[str, Any]]:
        """The last `limit` alerts of all apps, newest first."""
        items = [self.item(r) for topic in self.topics for r in q.tail(topic, limit)]
        items.sort(key=lambda i: i["time_ms"], reverse=True)
        return items[:limit]
