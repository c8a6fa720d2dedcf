"""The crypto commands: `affluent run crypto`, `affluent analyze crypto`, `affluent crypto candles`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table as RichTable
from rich.text import Text

from affluent.apps.crypto import tables
from affluent.cli.common import DurationOpt, JoinOpt, QuietOpt, WorkersOpt, announce
from affluent.core.errors import AffluentError, ConfigError

commands = typer.Typer(help="Crypto markets: CoinGecko snapshots, Binance trades, candles.", no_args_is_help=True)


@commands.callback()
def _crypto() -> None:
    """Crypto markets: CoinGecko snapshots, Binance trades, candles."""


def iso(ms: int | None) -> str | None:
    """UTC epoch ms -> ISO-8601 with its offset.

    >>> iso(1773136800000)
    '2026-03-10T10:00:00+00:00'
    """
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds" if ms % 1000 else "seconds")


def run_command(
    top: Annotated[int | None, typer.Option("--top", min=1, max=1000, help="Follow the top N coins by market cap (default 100).")] = None,
    symbols: Annotated[str | None, typer.Option("--symbols", help="Comma-separated pairs whose trades are followed (default: ten large USDT pairs).")] = None,
    coingecko_url: Annotated[str | None, typer.Option("--coingecko-url", help="The CoinGecko API root (default: setting crypto.coingecko_url).")] = None,
    binance_ws_url: Annotated[str | None, typer.Option("--binance-ws-url", help="Binance's websocket root (default: setting crypto.binance_ws_url).")] = None,
    binance_rest_url: Annotated[str | None, typer.Option("--binance-rest-url", help="Binance's REST root (default: setting crypto.binance_rest_url).")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Replay the bundled recordings instead of calling the APIs.")] = False,
    duration_s: DurationOpt = None,
    quiet: QuietOpt = False,
    workers: WorkersOpt = 1,
    join: JoinOpt = False,
) -> None:
    """Live crypto markets: the top coins every 30 s, trades into exact 1m/5m/1h candles, moving averages, anomalies, forecasts."""
    from affluent.apps.crypto.app import Endpoints, pipelines
    from affluent.cli.common import console, fail, settings
    from affluent.cli.main import run_pipelines

    s = settings()
    if top is not None:
        s.crypto.top = top
    if symbols:
        s.crypto.symbols = [x.strip().upper() for x in symbols.split(",") if x.strip()]
    try:
        # endpoints named on the command line are what the user wants: no silent swap for the recording
        made = pipelines(s, offline=offline or s.offline, endpoints=Endpoints(coingecko_url, binance_ws_url, binance_rest_url))
    except AffluentError as exc:
        fail(exc)
    announce("crypto", made, s)
    for note in (b.source.note for p in made for b in p.sources if b.source.note):
        console.print(f"crypto: {note}", highlight=False, markup=False)
    if offline or s.offline:
        console.print("crypto: the recordings hold 50 coins and 10 pairs: --top and --symbols apply to the live APIs", highlight=False, markup=False)
    run_pipelines(made, duration_s=duration_s, quiet=quiet, workers=workers, join=join)


def analyze_command(
    since: Annotated[str | None, typer.Option("--since", help="From this date (UTC midnight) or ISO datetime.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date (included) or ISO datetime (excluded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
) -> None:
    """Over the lake: daily returns, volatility, top movers up and down, and the correlation of the top 10 coins."""
    from zoneinfo import ZoneInfo

    from affluent.analytics.base import DuckDBEngine, EmptyLakeError, parse_when
    from affluent.analytics.crypto import analyze_crypto
    from affluent.apps.crypto.report import render
    from affluent.cli.common import err_console, fail, settings
    from affluent.config import lake_path

    s = settings()
    utc = ZoneInfo("UTC")
    try:
        since_ms = parse_when(since, utc) if since else None
        until_ms = parse_when(until, utc, end=True) if until else None
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise ConfigError(f"--since {since} is not before --until {until}")
        root = lake_path(s)
    except AffluentError as exc:
        fail(exc)
    engine = DuckDBEngine(root)
    try:
        result = analyze_crypto(engine.run, since_ms=since_ms, until_ms=until_ms)
    except EmptyLakeError:
        err_console.print(f"No market snapshots in the lake yet ({root / tables.LAKE_MARKETS} is empty or missing). Run `affluent run crypto` first.")
        raise typer.Exit(1) from None
    except AffluentError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        engine.close()
    if result["rows"] == 0:
        err_console.print("No market snapshots in that period in the lake: widen --since/--until.")
        raise typer.Exit(1)
    if as_json:
        # times as UTC epoch ms, and the period's ends also as ISO-8601 with their offset
        shown = {**result, "first": iso(result["first_ms"]), "last": iso(result["last_ms"])}
        sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    render(result)


def read_candles(path: Any, symbol: str, interval: str, since_ms: int | None, until_ms: int | None) -> list[dict[str, Any]]:
    """Candles of one symbol and interval from the serving store, oldest first (open_time in [since, until))."""
    from affluent.sinks.serving import read_serving

    where: list[str] = ["symbol = ?", "interval = ?"]
    params: list[Any] = [symbol, interval]
    if since_ms is not None:
        where.append("open_time >= ?")
        params.append(since_ms)
    if until_ms is not None:
        where.append("open_time < ?")
        params.append(until_ms)
    cols = "symbol, open_time, open, high, low, close, volume, trades"
    return read_serving(path, f"SELECT {cols} FROM {tables.CANDLES} WHERE {' AND '.join(where)} ORDER BY open_time", params)


@commands.command("candles")
def candles_command(
    symbol: Annotated[str, typer.Option("--symbol", help="A pair, e.g. BTCUSDT.")],
    interval: Annotated[str, typer.Option("--interval", help="1m, 5m or 1h.")] = "1m",
    since: Annotated[str | None, typer.Option("--since", help="From this date (UTC midnight) or ISO datetime.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Up to this date (included) or ISO datetime (excluded).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the candles as JSON (open_time in UTC epoch ms).")] = False,
) -> None:
    """Candles of one pair from the serving store, oldest first."""
    from zoneinfo import ZoneInfo

    from affluent.analytics.base import parse_when
    from affluent.cli.common import console, err_console, fail, settings
    from affluent.config import serving_path

    s = settings()
    utc = ZoneInfo("UTC")
    try:
        if interval not in tables.INTERVALS:
            raise ConfigError(f"--interval {interval!r}: use one of {', '.join(tables.INTERVALS)}")
        since_ms = parse_when(since, utc) if since else None
        until_ms = parse_when(until, utc, end=True) if until else None
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise ConfigError(f"--since {since} is not before --until {until}")
        rows = read_candles(serving_path(s), symbol.upper(), interval, since_ms, until_ms)
    except AffluentError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not rows:
        err_console.print(f"No {interval} candles of {symbol.upper()} in the serving store for that period. Is `affluent run crypto` following it?")
        raise typer.Exit(1)
    t = RichTable(title=f"{symbol.upper()} {interval} candles", title_justify="left")
    for c in ("open time", "open", "high", "low", "close", "volume", "trades"):
        t.add_column(c, justify="left" if c == "open time" else "right", no_wrap=True, min_width=25 if c == "open time" else None)
    for r in rows:
        t.add_row(iso(r["open_time"]) or "-", *(repr(r[k]) for k in ("open", "high", "low", "close", "volume")), f"{r['trades']:,}")
    console.print(t)
