"""The dashboard's web server: pages, a JSON API documented with OpenAPI, and live updates over SSE.

`create_app` builds the ASGI app over a log and the settings' serving store and lake; `DashboardServer`
binds it to a socket first (so a busy port is a clear error, and port 0 picks a free one) and serves
it in the foreground (`affluent web`) or in a thread beside the apps (`affluent up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from affluent.apps import available_apps
from affluent.config import Settings
from affluent.core.errors import ConfigError
from affluent.core.log import Log
from affluent.web import home
from affluent.web.board import Board
from affluent.web.live import Channel, Computed, Feed, Hub
from affluent.web.queries import Queries

log = logging.getLogger("affluent.web")

STATIC = Path(str(resources.files("affluent.web") / "static"))
#: the page of each app, for the apps this installation has
BOARDS = {"bikes": "affluent.web.bikes", "stock": "affluent.web.stock", "jobs": "affluent.web.jobs", "crypto": "affluent.web.crypto"}


def boards() -> list[Board]:
    have = available_apps()
    return [importlib.import_module(mod).BOARD for app, mod in BOARDS.items() if app in have]


def _page(title: str, page: str, script: str) -> str:
    template = Template((STATIC / "page.html").read_text(encoding="utf-8"))
    return template.substitute(title=title, page=page, script=script)


def _channels(bs: Sequence[Board], alerts: home.Alerts) -> list[Channel]:
    out: list[Channel] = [
        Computed("apps", lambda q: home.apps_state(q, bs)),
        Feed("alerts", alerts.topics, alerts.item, keep=50),
    ]
    for b in bs:
        out += b.channels()
    return out


def create_app(settings: Settings, log_: Log, *, offline: bool = False, host: str = "127.0.0.1") -> FastAPI:
    """The dashboard over `log_` and the settings' serving store and lake. Read-only.

    host: the address it is served on; on loopback, requests must name a loopback host (a web page
    elsewhere cannot reach it through DNS rebinding).
    """
    bs = boards()
    queries = Queries(settings, log_)
    alerts = home.Alerts(bs)
    hub = Hub(queries, _channels(bs, alerts), interval_s=settings.web.live_interval_s)
    tiles = None if offline or not settings.web.tiles_url else {"url": settings.web.tiles_url, "attribution": settings.web.tiles_attribution}
    # the tile server's origin, for the page's content policy ({s} subdomains become a wildcard)
    tile_origin = "" if tiles is None else "{0.scheme}://{0.netloc}".format(urlsplit(settings.web.tiles_url.replace("{s}", "*")))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.run())
        try:
            yield
        finally:
            hub.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="affluent",
        summary="Live open data: each app's state, live tables and batch answers, as JSON.",
        version=_version(),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.queries = queries
    app.state.boards = bs
    app.state.alerts = alerts
    app.state.hub = hub
    app.include_router(home.router)
    for b in bs:
        app.include_router(b.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
    csp = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        f"img-src 'self' data: {tile_origin}; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        # external text is only ever set as text; this stops a script even if a bug let one in
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/api/config", tags=["home"], summary="The apps this dashboard shows, and the map tiles (null when offline)")
    def get_config() -> dict[str, Any]:
        return {
            "apps": [{"app": b.app, "title": b.title, "summary": b.summary} for b in bs],
            "tiles": tiles,
            "offline": offline,
            "channels": sorted(hub.channels),
        }

    @app.get(
        "/api/events",
        tags=["home"],
        summary="Live updates (server-sent events): a snapshot of each channel asked for, then its changes",
        response_class=StreamingResponse,
    )
    async def events(channels: Annotated[str, Query(description="comma-separated channel names, e.g. apps,alerts,bikes.stations")] = "apps,alerts") -> Response:
        wanted = [c.strip() for c in channels.split(",") if c.strip()]
        if not wanted:
            return JSONResponse({"detail": f"name at least one channel; known: {sorted(hub.channels)}"}, status_code=422)
        unknown = [c for c in wanted if c not in hub.channels]
        if unknown:
            return JSONResponse({"detail": f"unknown channel(s) {unknown}; known: {sorted(hub.channels)}"}, status_code=404)
        sub = hub.subscribe(wanted)
        return StreamingResponse(hub.stream(sub), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"))

    pages = [("/", "affluent", "home", "home.js")] + [(f"/{b.app}", b.title, b.app, b.script) for b in bs]
    for path, title, page, script in pages:
        app.add_api_route(path, _page_route(title, page, script), methods=["GET", "HEAD"], include_in_schema=False, response_class=HTMLResponse)
    return app


def _page_route(title: str, page: str, script: str) -> Any:
    def route() -> HTMLResponse:
        return HTMLResponse(_page(title, page, script))

    return route


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("affluent")
    except PackageNotFoundError:
        return "dev"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class _Server(uvicorn.Server):
    """Ends the live-update streams as shutdown begins: they never end by themselves, and uvicorn
    waits for open responses (then cancels them, with a traceback) before the app's own shutdown."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)


class DashboardServer:
    """The dashboard bound to host:port; `start()` serves it in a thread, `serve()` in the foreground."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}; choose another --port") from exc
        sock.listen(128)
        sock.set_inheritable(True)
        self.socket = sock
        self.host, self.port = host, sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="on")
        self.server = _Server(config, app.state.hub)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve(self) -> None:
        """Serve until Ctrl+C or SIGTERM (which uvicorn raises again once it has shut down)."""
        with contextlib.suppress(KeyboardInterrupt):
            self.server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 10.0) -> DashboardServer:
        self._thread = threading.Thread(target=self.serve, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)
        self.socket.close()


__all__ = ["BOARDS", "DashboardServer", "boards", "create_app", "is_loopback"]
