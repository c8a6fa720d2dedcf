"""Helpers shared by the CLI commands."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from affluent.config import Settings, load_settings
from affluent.core.errors import AffluentError, TransientError
from affluent.core.log import Log, open_log
from affluent.core.pipeline import Pipeline


def _console(*, stderr: bool = False) -> Console:
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 160  # to a file or a pipe rich assumes 80 columns, and cuts the status table's names
    return c


console = _console()
err_console = _console(stderr=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False, log_time_format="[%Y-%m-%d %H:%M:%S]")],
        force=True,
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def settings() -> Settings:
    """The settings, or exit with one line per bad one, naming its environment variable."""
    from pydantic import ValidationError

    try:
        return load_settings()
    except ValidationError as exc:
        lines = []
        for e in exc.errors():
            name = ".".join(str(p) for p in e["loc"])
            env = "AFFLUENT__" + "__".join(str(p).upper() for p in e["loc"])
            secret = any(w in name for w in ("secret", "api_key", "elasticsearch_url"))
            shown = "" if secret else f", not {e.get('input')!r}"  # a secret is never printed
            lines.append(f"setting {name} ({env}): {e['msg']}{shown}")
        fail("\n".join(lines))


def open_configured_log(s: Settings | None = None) -> Log:
    s = s or settings()
    if s.log.url.startswith("sqlite://"):
        return open_log(s.log.url, synchronous=s.log.synchronous)
    return open_log(s.log.url)


DurationOpt = Annotated[float | None, typer.Option("--duration", help="Stop after this many seconds.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No live status table.")]
WorkersOpt = Annotated[
    int,
    typer.Option("--workers", min=1, help="Run the app in this many processes that share its partitions (a worker that dies is replaced)."),
]
JoinOpt = Annotated[
    bool,
    typer.Option("--join", help="Run as one more worker of the app, beside workers in other processes or on other machines (as a pod does)."),
]


def wait_for_log(log: Log, *, max_backoff_s: float = 30.0) -> None:
    """Until the log answers: a broker that is down at start is waited for, one line per try."""
    backoff = 1.0
    while True:
        try:
            log.list_topics()
            return
        except TransientError as exc:
            err_console.print(Text.assemble(("waiting for the log:", "yellow"), f" {exc}; retrying in {backoff:.0f} s"))
            time.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)


def fail(exc: AffluentError | str, code: int = 1) -> NoReturn:
    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)))
    sys.exit(code)


def announce(app: str, made: list[Pipeline], s: Settings) -> None:
    """What an app reads (one line per source: into which topic, live or not) and where its results go."""
    from affluent.config import lake_path, serving_path

    for p in made:
        for b in p.sources:
            console.print(f"{app}: {b.source.describe()} -> {b.topic}{'' if b.source.offline else ' (live)'}", highlight=False, markup=False)
    console.print(f"{app}: serving store {serving_path(s)}, lake {lake_path(s)}", highlight=False)
