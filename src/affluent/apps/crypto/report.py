"""The crypto analysis (`affluent.analytics.crypto.analyze_crypto`'s document) as terminal tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text


def _when(ms: Any) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


def price_text(p: float | None) -> str:
    """Prices span 1e-8 (memecoins) to 1e5 (bitcoin): cents above 1, four significant digits below.

    >>> price_text(84123.456), price_text(0.000012345), price_text(None)
    ('84,123.46', '1.234e-05', '-')
    """
    if p is None:
        return "-"
    return f"{p:,.2f}" if abs(p) >= 1 else f"{p:.4g}"


def pct_text(x: float | None) -> str:
    """Signed: a fall shows its minus sign, a rise its plus sign.

    >>> pct_text(-3.14159), pct_text(2.0), pct_text(None)
    ('-3.14%', '+2.00%', '-')
    """
    return "-" if x is None else f"{x:+.2f}%"


def _table(console: Console, title: str, cols: list[str], rows: list[list[str]], *, left: int = 1) -> None:
    """The first `left` columns are names (left-aligned), the others numbers."""
    if not rows:  # e.g. no coin fell: say so rather than draw an empty table
        console.print(Text(f"{title}: none"))
        return
    t = RichTable(title=title, title_justify="left")
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i < left else "right")
    for r in rows:
        t.add_row(*(Text(x) for x in r))  # Text: coin names are data, never markup
    console.print(t)


def render(result: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        from affluent.cli.common import console as default

        console = default
    console.print(
        Text.assemble(
            ("crypto analysis", "bold"),
            f": {result['rows']:,} snapshots of {result['coins']} coins, updated {_when(result['first_ms'])} .. {_when(result['last_ms'])}",
        )
    )

    def coin(r: dict[str, Any]) -> str:
        return f"{(r.get('symbol') or '?').upper()} {r.get('name') or r['coin_id']}"

    for way, title in (("up", "Top movers up"), ("down", "Top movers down")):
        _table(
            console,
            f"{title} over the period",
            ["coin", "first", "last", "change", "from", "to"],
            [
                [coin(m), price_text(m["first_price"]), price_text(m["last_price"]), pct_text(m["change_pct"]), _when(m["first_ms"]), _when(m["last_ms"])]
                for m in result["movers"][way]
            ],
        )
    _table(
        console,
        "Volatility (sample standard deviations)",
        ["coin", "days", "σ daily return", "hours", "σ hourly log return"],
        [
            [
                coin(v),
                str(v["days"]),
                "-" if v["daily_std_pct"] is None else f"{v['daily_std_pct']:.2f}%",
                str(v["hours"]),
                "-" if v["hourly_log_std"] is None else f"{v['hourly_log_std']:.4f}",
            ]
            for v in result["volatility"]
        ],
    )

    top = result["correlation"]["coins"]
    symbols = {c["coin_id"]: (c["symbol"] or c["coin_id"]).upper() for c in top}
    # the largest coins by latest market cap, one column each: returns are each day's last price vs the day before's
    by_coin = {c["coin_id"]: {r["day"]: r["return_pct"] for r in c["returns"]} for c in result["daily_returns"] if c["coin_id"] in symbols}
    days = sorted({d for returns in by_coin.values() for d in returns})
    _table(
        console,
        "Daily returns (UTC days)",
        ["day", *symbols.values()],
        [[d, *(pct_text(by_coin.get(c, {}).get(d)) for c in symbols)] for d in days],
    )
    corr = {(p["a"], p["b"]): p["corr"] for p in result["correlation"]["pairs"]}
    corr.update({(b, a): v for (a, b), v in list(corr.items())})
    _table(
        console,
        "Correlation of daily returns",
        ["", *symbols.values()],
        [[symbols[a], *("" if a == b else "-" if corr.get((a, b)) is None else f"{corr[(a, b)]:+.2f}" for b in symbols)] for a in symbols],
    )
