"""The bikes commands: `affluent run bikes`, `affluent analyze bikes`, `affluent bikes systems`."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import typer
from rich.table import Table as RichTable
from rich.text import Text

from affluent.apps.bikes.app import pipelines
from affluent.apps.bikes.catalog import Catalog, load_catalog, load_systems, search_systems
from affluent.cli.common import DurationOpt, JoinOpt, QuietOpt, WorkersOpt, announce
from affluent.core.errors import AffluentError

commands = typer.Typer(help="Bike-share systems (GBFS).", no_args_is_help=True)


@commands.callback()
def _bikes() -> None:
    """Bike-share systems (GBFS)."""  # a callback keeps `systems` a subcommand, even while it is the only one


def run_command(
    feed: Annotated[
        str | None,
        typer.Option("--feed", help="A GBFS discovery URL (gbfs.json, GBFS 1.x/2.x/3.0), or a System ID from `affluent bikes systems`."),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Replay the bundled VéloZef recording instead of polling a feed.")] = False,
    duration_s: DurationOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = 1,
    join: JoinOpt = False,
) -> None:
    """Live bike-share stations and bikes from any GBFS feed (VéloZef Brest by default)."""
    from affluent.cli.common import fail, settings
    from affluent.cli.main import run_pipelines

    s = settings()
    try:
        # a feed named on the command line is what the user wants: no silent swap for the recording
        made = pipelines(s, offline=offline or s.offline, feed=feed, fallback=False if feed else None)
    except AffluentError as exc:
        fail(exc)
    announce("bikes", made, s)  # an offline source says so in its description
    run_pipelines(made, duration_s=duration_s, quiet=quiet, workers=workers, join=join)


def analyze_command(
    day: Annotated[str, typer.Option("--day", help="The day to answer for, YYYY-MM-DD, in the system's time zone.")],
    system: Annotated[str | None, typer.Option("--system", help="Only this system (its system_id).")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="Time zone of the day (default: the feed's, else bikes.timezone).")] = None,
    hourly: Annotated[bool, typer.Option("--hourly", help="Also show every station's hours.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per station (hours included).")] = False,
    max_gap_min: Annotated[float, typer.Option("--max-gap", help="Minutes a snapshot's state may last when no newer one comes.")] = 10.0,
) -> None:
    """Per station and day: mean bikes and docks available (per hour and per day), minutes empty and full.

    Time-weighted over the snapshots in the lake; days and hours in the system's time zone
    (system_information.timezone, else bikes.timezone, Europe/Paris by default).
    """
    from affluent.analytics.base import DuckDBEngine
    from affluent.analytics.bikes import station_days
    from affluent.cli.common import console, fail, settings
    from affluent.config import lake_path

    try:
        the_day = date.fromisoformat(day)
    except ValueError:
        fail(f"--day {day!r} is not a date: use YYYY-MM-DD")
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            fail(f"--tz {tz!r} is not a known time zone (such as Europe/Paris)")
    s = settings()
    try:
        engine = DuckDBEngine(lake_path(s))
        try:
            rows = station_days(engine, the_day, system_id=system, tz=tz, default_tz=s.bikes.timezone, max_gap_ms=int(max_gap_min * 60_000))
        finally:
            engine.close()
    except AffluentError as exc:  # a damaged lake file too: one line that names it, no traceback
        _fail_line(exc)
    if as_json:
        for r in rows:
            typer.echo(orjson.dumps(r.to_dict()).decode())
        return
    for (system_id, zone), group in _by_system(rows).items():
        table = RichTable(title=f"{system_id}, {the_day.isoformat()} ({zone}): per station, time-weighted", title_justify="left")
        table.add_column("station")
        for col in ("mean bikes", "mean docks", "min empty", "min full", "min seen"):
            table.add_column(col, justify="right")
        for r in group:
            table.add_row(
                r.name or r.station_id, _num(r.mean_bikes), _num(r.mean_docks), f"{r.minutes_empty:.1f}", f"{r.minutes_full:.1f}", f"{r.minutes_observed:.0f}"
            )
        console.print(table)
        if hourly:
            for r in group:
                ht = RichTable(title=f"{r.name or r.station_id}: per hour", title_justify="left")
                for col in ("hour", "mean bikes", "mean docks", "min empty", "min full", "min seen"):
                    ht.add_column(col, justify="right")
                for h in r.hours:
                    ht.add_row(
                        h["hour"],
                        _num(h["mean_bikes"]),
                        _num(h["mean_docks"]),
                        f"{h['minutes_empty']:.1f}",
                        f"{h['minutes_full']:.1f}",
                        f"{h['minutes_observed']:.0f}",
                    )
                console.print(ht)


def _fail_line(exc: AffluentError) -> NoReturn:
    """`fail`, on one line whatever the terminal's width: errors about the lake name long paths."""
    from affluent.cli.common import err_console

    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)
    raise typer.Exit(1)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _by_system(rows: list) -> dict[tuple[str, str], list]:  # type: ignore[type-arg]
    out: dict[tuple[str, str], list] = {}  # type: ignore[type-arg]
    for r in rows:
        out.setdefault((r.system_id, r.timezone), []).append(r)
    return out


@commands.command("systems")
def systems_command(
    country: Annotated[str | None, typer.Option("--country", help="Two-letter country code, such as FR.")] = None,
    search: Annotated[str | None, typer.Option("--search", help="Text to find in the name, place or System ID.")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="A systems.csv to read instead of MobilityData's catalogue.")] = None,
    catalog_url: Annotated[
        str | None,
        typer.Option("--catalog-url", help="Where to download the catalogue from when online (default: the bikes.catalog_url setting)."),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not download: use the cached or the bundled catalogue.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Download the catalogue even if the cached copy is less than a day old.")] = False,
) -> None:
    """List known public GBFS systems: MobilityData's systems.csv, refreshed when online (cached), else the bundled copy."""
    from affluent.cli.common import console, fail, settings

    try:
        if catalog is not None:
            cat = Catalog(load_systems(catalog), "file", _mtime_day(catalog), str(catalog))
        else:
            s = settings()
            cat = load_catalog(
                s.data_dir,
                url=catalog_url or s.bikes.catalog_url,
                offline=offline or s.offline,
                refresh=refresh,
                timeout_s=s.bikes.timeout_s,
                connect_timeout_s=s.bikes.probe_timeout_s,
            )
        found = search_systems(cat.systems, country=country, text=search)
    except AffluentError as exc:
        fail(exc)
    # two lines per system read well at any terminal width, and grep well
    console.print(cat.describe(), highlight=False, markup=False, soft_wrap=True)
    console.print(f"{len(found)} GBFS systems; run one with: affluent run bikes --feed <System ID>", highlight=False, markup=False)
    for sys_ in found:
        auth = ", needs a key" if sys_.needs_auth else ""
        versions = " ; ".join(sys_.versions) or "?"
        console.print(f"{sys_.system_id}  {sys_.name} ({sys_.location}), GBFS {versions}{auth}", highlight=False, markup=False, soft_wrap=True)
        console.print(f"    {sys_.discovery_url}", highlight=False, markup=False, soft_wrap=True)


def _mtime_day(path: Path) -> str:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d")
    except OSError:
        return "?"  # load_systems says what is wrong with the file
