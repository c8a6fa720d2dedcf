"""The jobs commands: `affluent run jobs`, `affluent analyze jobs`, `affluent jobs referentials`."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
import typer
from rich.console import RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table as RichTable
from rich.text import Text

from affluent.apps.jobs.app import Endpoints, has_credentials, load_referentials, make_client, pipelines
from affluent.cli.common import DurationOpt, JoinOpt, QuietOpt, WorkersOpt, announce
from affluent.core.clock import now_ms
from affluent.core.errors import AffluentError, ConfigError
from affluent.sources.france_travail import FranceTravailSource, api_time

commands = typer.Typer(help="France Travail job offers.", no_args_is_help=True)
PARIS = ZoneInfo("Europe/Paris")
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([hd])")


@commands.callback()
def _jobs() -> None:
    """France Travail job offers."""


def parse_since(text: str) -> int:
    """'48h', '7d', a date (its midnight in Europe/Paris) or an ISO datetime -> UTC epoch ms.

    >>> parse_since("2026-03-10"), parse_since("2026-03-10T08:00:00Z")
    (1773097200000, 1773129600000)
    """
    from affluent.analytics.base import parse_when

    m = _AGO.fullmatch(text.strip())
    if m:
        return now_ms() - int(float(m.group(1)) * (3_600_000 if m.group(2) == "h" else 86_400_000))
    return parse_when(text, PARIS)


def backfill_view(src: FranceTravailSource) -> RenderableType | None:
    """The backfill's progress (its time span done, offers, windows left, requests per second), then the polling's."""
    grid = RichTable.grid(padding=(0, 1))
    rate = f"{src.request_rate():.1f} req/s"
    upto = f"created up to {api_time(src.cursor_s)}"
    retry = f"  retrying: {src.error[:60]}" if src.error else ""
    if not src.backfilled:
        done = src.backfill_progress
        total = f" (about {src.backfill_total:,} in the backfill)" if src.backfill_total else ""
        text = f"{done:4.0%}  {src.offers:,} offers this run{total}  {src.windows_left} windows left  {rate}  {upto}{retry}"
        grid.add_row(Text("backfill", style="bold"), ProgressBar(total=1.0, completed=done, width=30), Text(text))
    else:
        sweep = "  searching the last days again for updates" if src.sweep.plan else ""
        text = f"every {src.interval_s:g} s  {src.offers:,} offers this run ({src.updates:,} updates)  {rate}  {upto}{sweep}{retry}"
        grid.add_row(Text("live", style="bold"), Text(text))
    return grid


def run_command(
    since: Annotated[
        str | None, typer.Option("--since", help="Backfill from this date or ISO datetime, or this long ago (48h, 7d); default: 24 h ago.")
    ] = None,
    interval_s: Annotated[float | None, typer.Option("--interval-s", min=1, help="Seconds between searches once backfilled (default 60).")] = None,
    token_url: Annotated[str | None, typer.Option("--token-url", help="The OAuth2 token endpoint (default: setting jobs.token_url).")] = None,
    api_url: Annotated[str | None, typer.Option("--api-url", help="The Offres d'emploi API base (default: setting jobs.api_url).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Replay the bundled recording instead of calling the API.")] = False,
    duration_s: DurationOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = 1,
    join: JoinOpt = False,
) -> None:
    """Every France Travail job offer: a backfill from --since, then a search every --interval-s; categorised and counted per territory."""
    from affluent.cli.common import fail, settings
    from affluent.cli.main import run_pipelines

    s = settings()
    if interval_s is not None:
        s.jobs.interval_s = interval_s
    try:
        since_ms = parse_since(since) if since else None
        # endpoints named on the command line are what the user wants: no silent swap for the recording
        made = pipelines(
            s, offline=offline or s.offline, since_ms=since_ms, endpoints=Endpoints(token_url, api_url), fallback=False if (token_url or api_url) else None
        )
    except AffluentError as exc:
        fail(exc)
    announce("jobs", made, s)
    found = [b.source for p in made for b in p.sources if isinstance(b.source, FranceTravailSource)]
    source = found[0] if found else None
    progress = (lambda: backfill_view(source)) if source is not None else None
    run_pipelines(made, duration_s=duration_s, quiet=quiet, progress=progress, workers=workers, join=join)


def analyze_command(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Offers created from this date or ISO datetime (Europe/Paris unless it has an offset), or this long ago (48h, 7d)."),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date (included) or ISO datetime (excluded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
) -> None:
    """Over the lake: offers per département × grand domaine, top 10 titles per département, daily trend, CDI share, offers without a place."""
    from affluent.analytics.base import DuckDBEngine, EmptyLakeError, parse_when
    from affluent.analytics.jobs import analyze_jobs
    from affluent.cli.common import err_console, fail, settings
    from affluent.config import lake_path

    s = settings()
    try:
        since_ms = parse_since(since) if since else None
        until_ms = parse_when(until, PARIS, end=True) if until else None
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise ConfigError(f"--since {since} is not before --until {until}")
        root = lake_path(s)
    except AffluentError as exc:
        fail(exc)
    engine = DuckDBEngine(root)
    try:
        result = analyze_jobs(engine.run, since_ms=since_ms, until_ms=until_ms)
    except EmptyLakeError:
        err_console.print(f"No job offers in the lake yet ({root / 'jobs_offers'} is empty or missing). Run `affluent run jobs` first.", highlight=False)
        raise typer.Exit(1) from None
    except AffluentError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.close()
    if result["offers"] == 0:
        err_console.print("No job offers created in that period in the lake: widen --since/--until.", highlight=False)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    render(result)


def _when(ms: Any) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, PARIS).strftime("%Y-%m-%d %H:%M")


def render(result: dict[str, Any]) -> None:
    from affluent.cli.common import console

    console.print(
        f"[bold]jobs analysis[/]: {result['offers']:,} offers in {result['departements']} départements, "
        f"created {_when(result['first_ms'])} .. {_when(result['last_ms'])} (Europe/Paris)",
        highlight=False,
    )

    def table(title: str, cols: list[str], rows: list[list[Any]]) -> None:
        t = RichTable(title=title, title_justify="left")
        for c in cols:
            t.add_column(c, justify="right" if c in ("offers", "CDI", "share") else "left")
        for r in rows:
            t.add_row(*(Text("-" if x is None else str(x)) for x in r))  # Text: titles are data, never markup
        console.print(t)

    table("New offers per day", ["day", "offers"], [[r["day"], f"{r['offers']:,}"] for r in result["daily_trend"]])
    table(
        "Share of CDI per grand domaine",
        ["grand domaine", "offers", "CDI", "share"],
        [
            [
                f"{r['grand_domaine'] or '?'} {r['grand_domaine_label'] or ''}",
                f"{r['offers']:,}",
                f"{r['cdi']:,}",
                "-" if r["share"] is None else f"{r['share']:.0%}",
            ]
            for r in result["cdi_share"]
        ],
    )
    table("Offers without a commune or coordinates", ["reason", "offers"], [[r["reason"], f"{r['offers']:,}"] for r in result["missing_place"]])
    table(
        "Offers per département and grand domaine",
        ["département", "grand domaine", "offers"],
        [
            [f"{r['departement'] or '?'} {r['departement_name'] or ''}", f"{r['grand_domaine'] or '?'} {r['grand_domaine_label'] or ''}", f"{r['offers']:,}"]
            for r in result["departement_domaine"]
        ],
    )
    table(
        f"Top {10} job titles per département",
        ["département", "title", "offers"],
        [[f"{d['departement']} {d['departement_name'] or ''}", t["title"], f"{t['offers']:,}"] for d in result["top_titles"] for t in d["titles"]],
    )


@commands.command("referentials")
def referentials_command(
    refresh: Annotated[bool, typer.Option("--refresh", help="Fetch them from the API now (needs the credentials).")] = False,
) -> None:
    """The France Travail referentials in use (départements, communes, domaines, métiers, contracts, sectors) and where they come from."""
    from affluent.cli.common import console, fail, settings

    s = settings()
    try:
        client = None
        if refresh:
            if not has_credentials(s):
                raise ConfigError("--refresh needs the credentials: set FRANCE_TRAVAIL_CLIENT_ID and FRANCE_TRAVAIL_CLIENT_SECRET (in the environment or .env)")
            client = make_client(s)
        refs = load_referentials(s.data_dir, client, max_age_days=0 if refresh else s.jobs.referentials_max_age_days)
    except AffluentError as exc:
        fail(exc)
    console.print(f"referentials from {refs.origin}", highlight=False, markup=False)
    for name, items in sorted(refs.data.items()):
        if isinstance(items, list):
            console.print(f"  {name}: {len(items):,}", highlight=False, markup=False)
