"""The `affluent` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from affluent.apps import available_apps
from affluent.cli import topics
from affluent.cli.common import DurationOpt, QuietOpt, console, fail, open_configured_log, settings, setup_logging, wait_for_log
from affluent.config import Settings
from affluent.core.errors import AffluentError, PipelineAlreadyRunningError
from affluent.core.pipeline import Pipeline
from affluent.core.runtime import Runtime

if TYPE_CHECKING:
    from affluent.web.server import DashboardServer

app = typer.Typer(
    name="affluent",
    help="Live open data: public feeds turned into live maps, charts, alerts and answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(topics.app, name="topics")
run_app = typer.Typer(help="Run one app's pipelines (sources included) until Ctrl+C.", no_args_is_help=True)
analyze_app = typer.Typer(help="Answer an app's batch questions over the lake.", no_args_is_help=True)
lake_app = typer.Typer(help="Look after the Parquet lake.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(analyze_app, name="analyze")
app.add_typer(lake_app, name="lake")


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    log_url: Annotated[
        str | None,
        typer.Option("--log", help="The log: sqlite:///path (embedded) or kafka://host:9092[,host2:9092][?option=value] (default: setting log.url)."),
    ] = None,
) -> None:
    setup_logging(verbose)
    if log_url is not None:  # for every command of this process, as AFFLUENT__LOG__URL would
        os.environ["AFFLUENT__LOG__URL"] = log_url


def _status_table(rt: Runtime, started: float) -> RichTable:
    table = RichTable(title=f"affluent: {time.monotonic() - started:.0f} s, log {rt.log.url}", title_justify="left")
    for col in ("kind", "name", "status", "records", "late", "dead letters", "mode", "last error"):
        table.add_column(col)
    for s in rt.status():
        mode = "" if s["kind"] != "source" else ("offline replay/simulator" if s.get("offline") else "live")
        late, dead = (f"{s[k]:,}" if k in s else "" for k in ("late", "dead_letters"))
        cells = (s["kind"], s["name"], s["status"], f"{s['records']:,}", late, dead, mode, (s.get("error") or "")[:60])
        table.add_row(*(Text(c, style="yellow" if c in (late, dead) and c not in ("", "0") else "") for c in cells))
    return table


def run_pipelines(
    pipelines: list[Pipeline],
    *,
    duration_s: float | None = None,
    quiet: bool = False,
    fail_fast: bool = True,
    serve: Callable[[], Callable[[], None]] | None = None,
    progress: Callable[[], RenderableType | None] | None = None,
    workers: int = 1,
    join: bool = False,
) -> None:
    """Run pipelines in this process, with a live status table, until Ctrl+C or `duration_s`.

    All of them run, or none when another process runs one of them. With `fail_fast`, the first
    task that dies stops them all; otherwise the others go on. The exit code is 1 when one died.
    serve: called once the pipelines are claimed (a second start is refused before it), it starts
    something beside them (the dashboard) and returns how to stop it.
    progress: what to show under the table (a backfill's progress bar), or None.
    workers: more than 1 starts that many worker processes of this command and looks after them.
    join: this process is one worker among others (started by `--workers`, or in a pod of its own).
    """
    if workers > 1 and not join:
        _supervise(workers, duration_s=duration_s)
        return
    try:
        log = open_configured_log()
        wait_for_log(log)
    except AffluentError as exc:
        fail(exc)
    worker = f"{socket.gethostname()}-{os.getpid()}" if join else None
    rt = Runtime(log, fail_fast=fail_fast, worker=worker)
    for p in pipelines:
        rt.add(p)
    rt.start()
    try:
        stop_serving = serve() if serve is not None and not rt.errors else None
    except BaseException:  # the dashboard's port is taken: release the pipelines before exiting
        rt.stop()
        raise
    try:
        if not rt.errors:  # refused: nothing runs, there is no table to show
            _run(rt, duration_s=duration_s, quiet=quiet, progress=progress)
    finally:
        if stop_serving is not None:
            stop_serving()
    for err in rt.errors:
        what = "not started" if isinstance(err, PipelineAlreadyRunningError) else "stopped with an error"
        console.print(f"[red]{what}:[/] {escape(str(err))}", highlight=False)
    if rt.errors:
        raise typer.Exit(1)


def _supervise(n: int, *, duration_s: float | None) -> None:
    """Start `n` workers (this very command, with `--join`), replace any that dies, stop them all on Ctrl+C."""
    argv: list[str] = []
    skip = False
    for a in sys.argv[1:]:
        if skip or a == "--workers" or a.startswith("--workers="):
            skip = a == "--workers"
            continue
        argv.append(a)
    cmd = [sys.executable, "-m", "affluent.cli.main", *argv, "--join", "--quiet"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd)
        console.print(f"worker started: pid {proc.pid}", highlight=False)
        return proc

    procs = [start() for _ in range(n)]
    deadline = None if duration_s is None else time.monotonic() + duration_s
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
            for i, proc in enumerate(procs):
                if proc.poll() is not None:
                    console.print(f"worker pid {proc.pid} ended with code {proc.returncode}; starting another", highlight=False)
                    procs[i] = start()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _run(rt: Runtime, *, duration_s: float | None, quiet: bool, progress: Callable[[], RenderableType | None] | None = None) -> None:
    started = time.monotonic()

    def view(r: Runtime) -> RenderableType:
        extra = progress() if progress is not None else None
        return _status_table(r, started) if extra is None else Group(_status_table(r, started), extra)

    if quiet:
        rt.run(timeout_s=duration_s)
    else:
        with Live(view(rt), console=console, refresh_per_second=2) as live:
            rt.run(timeout_s=duration_s, on_tick=lambda r: live.update(view(r)))


@app.command()
def up(
    offline: Annotated[bool, typer.Option("--offline", help="Use recorded replays and simulators only; no map tiles.")] = False,
    duration_s: DurationOpt = None,
    quiet: QuietOpt = False,
    host: Annotated[str | None, typer.Option("--host", help="Serve the dashboard on this address (default: setting web.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Serve the dashboard on this port (default: setting web.port, 8000; 0: any free port).")] = None,
    web: Annotated[bool, typer.Option("--web/--no-web", help="Serve the dashboard.")] = True,
) -> None:
    """Run every app, embedded, with zero servers, and serve the dashboard; offline it replays recordings and runs simulators."""
    s = settings()
    offline = offline or s.offline
    pipelines: list[Pipeline] = []
    banner: list[Text] = []
    for name, mod in available_apps().items():
        try:
            made = mod.pipelines(s, offline=offline)
        except AffluentError as exc:
            console.print(f"[yellow]app {name} not started:[/] {exc}")
            continue
        pipelines.extend(made)
        for p in made:
            for b in p.sources:
                mode = "live" if b.source.mode == "live" else f"offline ({b.source.mode})"
                banner.append(Text.assemble("app ", (name, "bold"), f": source {b.source.describe()} -> {b.topic} ({mode})"))
    if not pipelines:
        fail("no app could be started")

    def serve() -> Callable[[], None]:
        for line in banner:  # once the apps are claimed: a second start says only that it is refused
            console.print(line)
        return _dashboard(s, host, port, offline=offline).start().stop if web else lambda: None

    # one app's failure does not take the others down: it shows in the status table and the exit code
    run_pipelines(pipelines, duration_s=duration_s, quiet=quiet, fail_fast=False, serve=serve)


def _dashboard(s: Settings, host: str | None, port: int | None, *, offline: bool) -> DashboardServer:
    """The dashboard bound to its address (a busy port exits with a clear error)."""
    from affluent.web.server import DashboardServer, create_app, is_loopback

    host = host or s.web.host
    try:
        app = create_app(s, open_configured_log(s), offline=offline, host=host)
        server = DashboardServer(app, host, s.web.port if port is None else port)
    except AffluentError as exc:
        fail(exc)
    if not is_loopback(host):
        console.print(f"[yellow]the dashboard listens on {escape(host)}:[/] anyone who can reach it can read it (it is read-only)")
    console.print(Text.assemble("dashboard: ", (server.url, "bold underline")), highlight=False)
    return server


@app.command()
def web(
    host: Annotated[str | None, typer.Option("--host", help="Listen on this address (default: setting web.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen on this port (default: setting web.port, 8000; 0: any free port).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="No background map tiles.")] = False,
) -> None:
    """Serve the dashboard alone, for apps running in other processes (`affluent run bikes`), until Ctrl+C."""
    s = settings()
    _dashboard(s, host, port, offline=offline or s.offline).serve()


@app.command()
def apps() -> None:
    """List the apps this installation provides."""
    for name, mod in available_apps().items():
        doc = (mod.__doc__ or "").strip().splitlines()
        console.print(f"[bold]{name}[/]  {doc[0] if doc else ''}")


@app.command()
def version() -> None:
    """Print affluent's version."""
    from importlib.metadata import version as v

    console.print(v("affluent"))


@lake_app.command("compact")
def lake_compact(
    dataset: Annotated[str | None, typer.Argument(help="Dataset folder under the lake (default: all).")] = None,
) -> None:
    """Merge the small Parquet files of each partition into one, atomically."""
    from affluent.config import lake_path
    from affluent.sinks.lake import compact_lake

    try:
        root = lake_path(settings())
        stats = compact_lake(root, dataset)
    except AffluentError as exc:
        fail(exc)
    console.print(
        f"lake {root}: {stats['datasets']} dataset(s), {stats['partitions_compacted']:,} partition(s) compacted, "
        f"{stats['files_before']:,} Parquet file(s) before, {stats['files_after']:,} after",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


@lake_app.command("check")
def lake_check(
    dataset: Annotated[str | None, typer.Argument(help="Dataset folder under the lake (default: all).")] = None,
) -> None:
    """Verify every file of the lake: Parquet files readable, commit markers sound, nothing left by a crashed write.

    Prints one line per problem, then a summary; exits with 1 when there is a problem.
    """
    from affluent.config import lake_path
    from affluent.sinks.lake import check_lake

    stats: dict[str, int] = {}
    try:
        root = lake_path(settings())
        problems = check_lake(root, dataset, stats=stats)
    except AffluentError as exc:
        fail(exc)
    for p in problems:
        console.print(str(p), highlight=False, markup=False, soft_wrap=True)
    summary = (
        f"lake {root}: {stats['datasets']} dataset(s), {stats['files']:,} Parquet file(s), {stats['row_groups']:,} row group(s), "
        f"{stats['rows']:,} rows, {stats['markers']:,} commit marker(s) checked: "
    )
    console.print(summary + (f"{len(problems)} problem(s)" if problems else "no problem"), highlight=False, markup=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)


def _mount_apps() -> None:
    for name, mod in available_apps().items():
        run_cmd = getattr(mod, "run_command", None)
        if run_cmd is not None:
            run_app.command(name, help=run_cmd.__doc__)(run_cmd)
        analyze_cmd = getattr(mod, "analyze_command", None)
        if analyze_cmd is not None:
            analyze_app.command(name, help=analyze_cmd.__doc__)(analyze_cmd)
        extra = getattr(mod, "commands", None)
        if extra is not None:
            app.add_typer(extra, name=name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM (systemd, docker, kill) stops as Ctrl+C does: pipelines commit and release, statuses say "stopped"
    signal.signal(signal.SIGTERM, _interrupt)
    # the topic tool needs no app: skip importing them (most of a CLI call's start-up time)
    first = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    if first not in ("topics", "version", "lake"):
        _mount_apps()
    app()


__all__ = ["app", "main", "open_configured_log", "run_pipelines"]


if __name__ == "__main__":
    main()
