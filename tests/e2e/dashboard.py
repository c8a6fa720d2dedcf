"""Running `affluent up` / `affluent web` / `affluent run` as a user does, and a headless Chromium to look at them.

Chromium is Debian's (`/usr/bin/chromium`, or `AFFLUENT_CHROMIUM`), driven by Playwright with its
`executable_path`; a test that needs it skips without it (and CI=true turns that skip into a failure).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

AFFLUENT = str(Path(sys.executable).parent / "affluent")
SCREENSHOTS = Path(__file__).parent / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    found = os.environ.get("AFFLUENT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return found if found and Path(found).exists() else None


class Affluent:
    """One `affluent` command running in its own folder, its output collected."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.args = args
        self.lines: list[str] = []
        full = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
        self.proc = subprocess.Popen([AFFLUENT, *args], cwd=folder, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_url(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(r"dashboard: (http://\S+/)", self.output)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"`affluent {' '.join(self.args)}` printed no dashboard URL:\n{self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_json(url: str, check: Any, *, timeout_s: float = 60.0, what: str = "") -> Any:
    """GET `url` until `check(json)` is true; returns that JSON."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5).json()
            if check(last):
                return last
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or url}; last answer: {str(last)[:2000]}")


class Page:
    """A browser page that records console errors and failed requests."""

    def __init__(self, browser: Any, *, width: int = 1280, height: int = 800, block_network: bool = False) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        if block_network:  # anything but loopback fails, as with no network at all
            self.context.route(re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/]).*"), lambda route: route.abort("internetdisconnected"))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        self.page.on("dialog", dialog)

    def open(self, url: str, ready: str | None = None) -> Any:
        self.page.goto(url)
        self.page.wait_for_selector("#live.on", timeout=15_000)  # the live connection is up
        if ready:
            self.page.wait_for_selector(ready, timeout=15_000)
        return self.page

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


Events = list[tuple[str, dict[str, Any]]]


def sse_events(url: str, *, until: Callable[[Events], bool], on: Callable[[Events], None] | None = None, timeout_s: float = 20.0) -> Events:
    """Server-sent events from `url` until `until(events)`; `on(events)` after each other one (to write data mid-stream)."""
    events: Events = []
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", url, timeout=timeout_s) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                events.append((name, orjson.loads(line[6:])))
                if until(events):
                    return events
                if on is not None:
                    on(events)
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"the stream ended before the expected events: {[(n, e.get('kind')) for n, e in events]}")
