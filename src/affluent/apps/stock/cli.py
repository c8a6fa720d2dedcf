"""`affluent run stock`, `affluent analyze stock`, and `affluent stock simulate|publish`."""

from __future__ import annotations

import math
import sys
import time
from typing import Annotated, Any

import orjson
import typer

from affluent.cli.common import DurationOpt, JoinOpt, QuietOpt, WorkersOpt
from affluent.core.errors import AffluentError

commands = typer.Typer(help="The stock app: simulate a period, publish simulated sensors to MQTT.", no_args_is_help=True)

SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed: the same seed gives the same readings.")]
PeriodOpt = Annotated[float | None, typer.Option("--period-s", help="Seconds between two readings of a shelf (default 2).")]
StoresOpt = Annotated[int | None, typer.Option("--stores", help="Number of stores (default 3).")]
SpeedOpt = Annotated[
    float | None,
    typer.Option("--speed", help="Simulated clock: 1 = real pace, N = N times faster, inf = as fast as possible (never past now)."),
]
StartOpt = Annotated[str | None, typer.Option("--start", help="Simulated start: date or ISO datetime (default now, or 7 days ago when accelerated).")]
EndOpt = Annotated[str | None, typer.Option("--end", help="Simulated end (exclusive; a date means the end of that day).")]
MqttOpt = Annotated[str | None, typer.Option("--mqtt", metavar="URL", help="Take readings from this MQTT broker (mqtt://host:1883), not the simulator.")]


def _settings(**stock: Any) -> Any:
    from affluent.cli.common import settings

    s = settings()
    update = {k: v for k, v in stock.items() if v is not None}
    if update:
        s = s.model_copy(update={"stock": s.stock.model_copy(update=update)})
    return s


def _fail(exc: AffluentError | str) -> None:
    from affluent.cli.common import fail

    fail(exc)


def run_command(
    seed: SeedOpt = None,
    period_s: PeriodOpt = None,
    stores: StoresOpt = None,
    speed: SpeedOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    mqtt: MqttOpt = None,
    duration_s: DurationOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = 1,
    join: JoinOpt = False,
) -> None:
    """Shelf sensors -> stock.readings -> alerts (stock.alerts) -> restock requests (stock.restock); every reading in the lake."""
    from affluent.apps.stock.pipeline import pipelines
    from affluent.cli.common import announce
    from affluent.cli.main import run_pipelines

    s = _settings(seed=seed, period_s=period_s, stores=stores, speed=speed, start=start, end=end, source=mqtt)
    try:
        made = pipelines(s, offline=False)
    except AffluentError as exc:
        _fail(exc)
        return
    announce("stock", made, s)
    run_pipelines(made, duration_s=duration_s, quiet=quiet, workers=workers, join=join)


def analyze_command(
    since: Annotated[str | None, typer.Option("--since", help="From this date or ISO datetime (local unless it has an offset).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date (included) or ISO datetime (excluded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
    tz: Annotated[str | None, typer.Option("--tz", help="Time zone of days and hours (default: setting stock.timezone).")] = None,
) -> None:
    """Answer StockNow's questions over the lake: weekend vs weekday alerts, top products, top hours, mean stock, hourly trend."""
    from affluent.analytics.base import DuckDBEngine, EmptyLakeError, parse_when
    from affluent.analytics.stock import DUCKDB, analyze_stock, check_tz
    from affluent.cli.common import err_console
    from affluent.config import lake_path

    s = _settings()
    try:
        zone_name = tz or s.stock.timezone
        zone = check_tz(zone_name)
        since_ms = parse_when(since, zone) if since else None
        until_ms = parse_when(until, zone, end=True) if until else None
        root = lake_path(s)
    except AffluentError as exc:
        _fail(exc)
        return
    engine = DuckDBEngine(root)
    try:
        result = analyze_stock(engine.run, dialect=DUCKDB, tz=zone_name, since_ms=since_ms, until_ms=until_ms)
    except EmptyLakeError:
        err_console.print(
            f"No stock readings in the lake yet ({root / 'stock_readings'} is empty or missing). "
            "Run `affluent run stock` (or `affluent stock simulate --start 2025-03-03 --end 2025-03-09`) first.",
            highlight=False,
        )
        raise typer.Exit(1) from None
    except AffluentError as exc:  # a damaged lake file: one line that names it, no traceback
        from rich.text import Text

        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.close()
    if result["readings"] == 0:
        span = f"between {result['since'] or 'the start'} and {result['until'] or 'now'}"
        err_console.print(f"No stock readings {span} in the lake: widen --since/--until.", highlight=False)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    render(result)


def render(result: dict[str, Any]) -> None:
    """The answers as rich tables."""
    from rich.table import Table

    from affluent.cli.common import console

    console.print(
        f"[bold]stock analysis[/]: {result['readings']:,} readings, {result['alerts']:,} alerts, {result['stores']} stores, "
        f"{result['first_reading']} .. {result['last_reading']} (time zone {result['timezone']})",
        highlight=False,
    )
    wv = result["weekend_vs_weekday"]
    t = Table()
    for col in ("", "days covered", "alerts", "alerts per day", "readings", "alert share"):
        t.add_column(col, justify="right" if col else "left")
    for part in ("weekday", "weekend"):
        p = wv[part]
        rate = "-" if p["alerts_per_day"] is None else f"{p['alerts_per_day']:.1f}"
        share = f"{p['alerts'] / p['readings']:.1%}" if p["readings"] else "-"
        t.add_row(part, str(p["days"]), f"{p['alerts']:,}", rate, f"{p['readings']:,}", share)
    verdict = wv["more_alerts_per_day_on"]
    t.caption = {"weekend": "More alerts per day on weekends.", "weekday": "More alerts per day on weekdays.", "equal": "As many alerts per day on both."}.get(
        verdict, "The range does not cover both weekdays and weekend days."
    )
    _section("1. Alerts on weekends vs weekdays", t)

    t = Table()
    t.add_column("product")
    t.add_column("alerts", justify="right")
    for r in result["top_products"]:
        t.add_row(r["product_id"], f"{r['alerts']:,}")
    _section("2. Top products by alerts", t)

    t = Table()
    t.add_column("hour")
    t.add_column("alerts", justify="right")
    for r in result["top_hours"]:
        t.add_row(f"{r['hour']:02d}:00-{r['hour']:02d}:59", f"{r['alerts']:,}")
    _section(f"3. Top hours by alerts ({result['timezone']})", t)

    t = Table()
    for col in ("product", "mean quantity", "mean threshold", "readings"):
        t.add_column(col, justify="left" if col == "product" else "right")
    for r in result["stock_per_product"]:
        t.add_row(r["product_id"], f"{r['mean_quantity']:.2f}", f"{r['mean_threshold']:.2f}", f"{r['readings']:,}")
    _section("4. Average stock per product", t)

    t = Table()
    for col in ("hour", "mean quantity", "products", "readings"):
        t.add_column(col, justify="left" if col == "hour" else "right")
    for r in result["hourly_trend"]:
        t.add_row(r["hour"], f"{r['mean_quantity']:.2f}", str(r["products"]), f"{r['readings']:,}")
    _section(f"5. Hourly stock trend ({result['timezone']})", t)


def _section(title: str, table: Any) -> None:
    from affluent.cli.common import console

    console.print()
    console.print(f"[bold]{title}[/]", highlight=False)
    if table.row_count:
        console.print(table)
    else:
        console.print("no alerts in this range", style="dim")


@commands.command("simulate")
def simulate_command(
    start: Annotated[str, typer.Option("--start", help="Simulated start: date or ISO datetime.")],
    end: Annotated[str, typer.Option("--end", help="Simulated end (exclusive; a date means the end of that day).")],
    seed: SeedOpt = 42,
    period_s: PeriodOpt = None,
    stores: StoresOpt = None,
) -> None:
    """Generate a simulated period as fast as possible through the stock pipelines (log, alerts, restock, lake), then stop."""
    from affluent.apps.stock.pipeline import pipelines, run_to_end
    from affluent.cli.common import console, open_configured_log

    s = _settings(seed=seed, period_s=period_s, stores=stores, speed=math.inf, start=start, end=end, source="simulator")
    s = s.model_copy(update={"stock": s.stock.model_copy(update={"lake_commit_s": 5.0})})
    started = time.monotonic()
    try:
        made = pipelines(s, offline=True)
        log = open_configured_log(s)
        counts = run_to_end(made, log)
    except AffluentError as exc:
        _fail(exc)
        return
    if not counts["stock.readings"]:
        console.print(f"simulated {start} .. {end}: nothing new, this folder's log holds that period already; see `affluent analyze stock`", highlight=False)
        return
    console.print(
        f"simulated {start} .. {end}: {counts['stock.readings']:,} readings, {counts['stock.alerts']:,} alerts, "
        f"{counts['stock.restock']:,} restock records, {counts['stock.dlq']:,} dead letters in {time.monotonic() - started:.1f} s; "
        "now run `affluent analyze stock`",
        highlight=False,
    )


@commands.command("publish")
def publish_command(
    mqtt: Annotated[str, typer.Option("--mqtt", metavar="URL", help="Broker to publish to, e.g. mqtt://127.0.0.1:1883.")],
    seed: SeedOpt = None,
    period_s: PeriodOpt = None,
    stores: StoresOpt = None,
    speed: SpeedOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    duration_s: DurationOpt = None,
) -> None:
    """Run the shelf-sensor simulator and publish its readings to an MQTT broker (QoS 1), for `affluent run stock --mqtt`."""
    from affluent.apps.stock.mqtt import publish_simulation
    from affluent.apps.stock.pipeline import simulator_source
    from affluent.cli.common import console
    from affluent.sources.iot import MqttPublisher

    s = _settings(seed=seed, period_s=period_s, stores=stores, speed=speed, start=start, end=end)
    try:
        source = simulator_source(s.stock, name="stock-publisher")
        with MqttPublisher(mqtt) as pub:
            console.print(f"publishing {source.describe()} to {pub.address}", highlight=False)
            sent = publish_simulation(source, pub, duration_s=duration_s)
    except AffluentError as exc:
        _fail(exc)
        return
    except KeyboardInterrupt:
        return
    console.print(f"published {sent:,} readings", highlight=False)
