"""The crypto questions, defined once, answered by DuckDB (or Spark) over lake dataset `crypto_markets`.

The lake holds one row per coin each time CoinGecko's `last_updated` of that coin changed. Rows in
the period asked (since_ms <= last_updated_ms < until_ms) with a positive price answer:

1. a summary: rows, coins, first and last update;
2. daily returns per coin: the last price of each UTC day against the last price of the day before,
   as a signed percentage. A day after a day without data has no return (it would span two days).
   The first day of the period is compared with the day before it, read from the lake too;
3. volatility per coin: the sample standard deviation of its daily returns (percent), and of its
   hourly log returns (last price of each UTC hour against the hour before, same rule for gaps);
4. the top movers up and down: the first and last price of each coin in the period, signed percent;
   a mover up went up, a mover down went down (so a list can be shorter than asked);
5. the Pearson correlation of the daily returns of the `top` coins by latest market cap, pair by
   pair, over the days both have a return.

Days and hours are UTC. The SQL is the subset DuckDB and Spark SQL share (CTEs, row_number and lag
windows, ln, stddev_samp, corr); the period is rendered as checked integers.

>>> qs = crypto_questions(since_ms=0, until_ms=86_400_000)
>>> [q.name for q in qs]
['summary', 'top_coins', 'daily_returns', 'volatility', 'movers_up', 'movers_down', 'correlation']
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from affluent.analytics.base import Question
from affluent.core.errors import ConfigError

DATASET = "crypto_markets"
#: coins in the correlation matrix, by latest market cap
TOP_COINS = 10
#: coins in each list of movers
MOVERS = 5
DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# Epoch ms of real market data are positive, so `ms - ms % DAY_MS` is the start of its UTC day in both engines.
_CTES = """WITH snaps AS (
  SELECT coin_id, symbol, name, price, market_cap, last_updated_ms, snapshot_ms
  FROM {dataset} WHERE price > 0 AND {where}
),
latest AS (
  SELECT * FROM (
    SELECT s.*, row_number() OVER (PARTITION BY coin_id ORDER BY last_updated_ms DESC, snapshot_ms DESC) AS n FROM snaps s
  ) l WHERE n = 1
),
first_seen AS (
  SELECT * FROM (
    SELECT s.*, row_number() OVER (PARTITION BY coin_id ORDER BY last_updated_ms, snapshot_ms) AS n FROM snaps s
  ) f WHERE n = 1
),
daily AS (
  SELECT coin_id, day_ms, price AS close FROM (
    SELECT coin_id, day_ms, price, row_number() OVER (PARTITION BY coin_id, day_ms ORDER BY last_updated_ms DESC, snapshot_ms DESC) AS n
    FROM (SELECT coin_id, price, last_updated_ms, snapshot_ms, last_updated_ms - last_updated_ms % {day_ms} AS day_ms
          FROM {dataset} WHERE price > 0 AND {where_days}) d
  ) c WHERE n = 1
),
daily_returns AS (
  SELECT coin_id, day_ms, close, prev_close, 100.0 * (close / prev_close - 1) AS return_pct FROM (
    SELECT coin_id, day_ms, close,
           lag(close) OVER (PARTITION BY coin_id ORDER BY day_ms) AS prev_close,
           lag(day_ms) OVER (PARTITION BY coin_id ORDER BY day_ms) AS prev_day_ms
    FROM daily
  ) r WHERE prev_day_ms = day_ms - {day_ms} AND day_ms >= {first_day_ms}
),
hourly_returns AS (
  SELECT coin_id, ln(close / prev_close) AS log_return FROM (
    SELECT coin_id, hour_ms, close,
           lag(close) OVER (PARTITION BY coin_id ORDER BY hour_ms) AS prev_close,
           lag(hour_ms) OVER (PARTITION BY coin_id ORDER BY hour_ms) AS prev_hour_ms
    FROM (
      SELECT coin_id, hour_ms, price AS close FROM (
        SELECT coin_id, hour_ms, price, row_number() OVER (PARTITION BY coin_id, hour_ms ORDER BY last_updated_ms DESC, snapshot_ms DESC) AS n
        FROM (SELECT coin_id, price, last_updated_ms, snapshot_ms, last_updated_ms - last_updated_ms % {hour_ms} AS hour_ms FROM snaps) h
      ) c WHERE n = 1
    ) hc
  ) r WHERE prev_hour_ms = hour_ms - {hour_ms}
),
top_coins AS (
  SELECT coin_id, symbol, name, market_cap, cap_rank FROM (
    SELECT coin_id, symbol, name, market_cap, row_number() OVER (ORDER BY market_cap DESC, coin_id) AS cap_rank
    FROM latest WHERE market_cap IS NOT NULL
  ) t WHERE cap_rank <= {top}
),
moves AS (
  SELECT l.coin_id, l.symbol, l.name, f.last_updated_ms AS first_ms, f.price AS first_price,
         l.last_updated_ms AS last_ms, l.price AS last_price, 100.0 * (l.price / f.price - 1) AS change_pct
  FROM latest l JOIN first_seen f ON f.coin_id = l.coin_id
)
"""

_SQL: dict[str, tuple[str, str]] = {
    "summary": (
        "Market snapshots in the period",
        # all rows of the period, priced or not: what the lake holds
        """SELECT count(*) AS row_count, count(DISTINCT coin_id) AS coins, min(last_updated_ms) AS first_ms, max(last_updated_ms) AS last_ms
FROM {dataset} WHERE {where}""",
    ),
    "top_coins": (
        "The largest coins by latest market cap",
        "SELECT coin_id, symbol, name, market_cap, cap_rank FROM top_coins ORDER BY cap_rank",
    ),
    "daily_returns": (
        "Daily returns per coin (UTC days)",
        """SELECT r.coin_id, l.symbol, r.day_ms, r.close, r.prev_close, r.return_pct
FROM daily_returns r JOIN latest l ON l.coin_id = r.coin_id ORDER BY r.coin_id, r.day_ms""",
    ),
    "volatility": (
        "How volatile is each coin?",
        """SELECT l.coin_id, l.symbol, l.name, d.days, d.daily_std_pct, h.hours, h.hourly_log_std
FROM latest l
LEFT JOIN (SELECT coin_id, count(*) AS days, stddev_samp(return_pct) AS daily_std_pct FROM daily_returns GROUP BY coin_id) d ON d.coin_id = l.coin_id
LEFT JOIN (SELECT coin_id, count(*) AS hours, stddev_samp(log_return) AS hourly_log_std FROM hourly_returns GROUP BY coin_id) h ON h.coin_id = l.coin_id
ORDER BY d.daily_std_pct DESC NULLS LAST, l.coin_id""",
    ),
    "movers_up": (
        "Which coins rose most over the period?",
        "SELECT * FROM moves WHERE change_pct > 0 ORDER BY change_pct DESC, coin_id LIMIT {movers}",
    ),
    "movers_down": (
        "Which coins fell most over the period?",
        "SELECT * FROM moves WHERE change_pct < 0 ORDER BY change_pct, coin_id LIMIT {movers}",
    ),
    "correlation": (
        "How do the daily returns of the largest coins move together?",
        """SELECT a.coin_id AS a, b.coin_id AS b, corr(a.return_pct, b.return_pct) AS corr, count(*) AS days
FROM daily_returns a
JOIN daily_returns b ON b.day_ms = a.day_ms AND a.coin_id < b.coin_id
JOIN top_coins ta ON ta.coin_id = a.coin_id
JOIN top_coins tb ON tb.coin_id = b.coin_id
GROUP BY a.coin_id, b.coin_id ORDER BY a.coin_id, b.coin_id""",
    ),
}
QUESTION_NAMES = tuple(_SQL)


def crypto_questions(*, since_ms: int | None = None, until_ms: int | None = None, top: int = TOP_COINS) -> list[Question]:
    """The questions over snapshots with since_ms <= last_updated_ms < until_ms; `top` coins in the correlation."""
    if int(top) < 2:
        raise ConfigError(f"a correlation needs at least 2 coins, not top={top}")
    conds, day_conds = [], []
    first_day_ms = 0
    if since_ms is not None:
        conds.append(f"last_updated_ms >= {int(since_ms)}")
        first_day_ms = int(since_ms) - int(since_ms) % DAY_MS
        day_conds.append(f"last_updated_ms >= {first_day_ms - DAY_MS}")  # the close of the day before the period
    if until_ms is not None:
        conds.append(f"last_updated_ms < {int(until_ms)}")
        day_conds.append(f"last_updated_ms < {int(until_ms)}")
    parts = {
        "dataset": DATASET,
        "where": " AND ".join(conds) or "TRUE",
        "where_days": " AND ".join(day_conds) or "TRUE",
        "first_day_ms": first_day_ms,
        "day_ms": DAY_MS,
        "hour_ms": HOUR_MS,
        "top": int(top),
        "movers": MOVERS,
    }
    ctes = _CTES.format(**parts)
    return [Question(name, title, (ctes if name != "summary" else "") + sql.format(**parts), (DATASET,)) for name, (title, sql) in _SQL.items()]


def _num(x: Any) -> float | None:
    """A float, or None for SQL NULL and NaN (DuckDB's corr of a constant series; Spark says NULL)."""
    if x is None:
        return None
    f = float(x)
    return None if math.isnan(f) else f


def utc_day(ms: int) -> str:
    """
    >>> utc_day(1741003200000)
    '2025-03-03'
    """
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def analyze_crypto(
    run: Callable[[Question], list[dict[str, Any]]],
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    top: int = TOP_COINS,
) -> dict[str, Any]:
    """Every answer, as one JSON-able document. Raises EmptyLakeError when the lake has no market data."""
    rows = {q.name: run(q) for q in crypto_questions(since_ms=since_ms, until_ms=until_ms, top=top)}
    s = rows["summary"][0] if rows["summary"] else {}
    returns: dict[str, dict[str, Any]] = {}
    for r in rows["daily_returns"]:
        c = returns.setdefault(r["coin_id"], {"coin_id": r["coin_id"], "symbol": r["symbol"], "returns": []})
        c["returns"].append(
            {"day": utc_day(int(r["day_ms"])), "close": float(r["close"]), "prev_close": float(r["prev_close"]), "return_pct": float(r["return_pct"])}
        )
    coins = [{"coin_id": r["coin_id"], "symbol": r["symbol"], "name": r["name"], "market_cap": float(r["market_cap"])} for r in rows["top_coins"]]
    found = {(r["a"], r["b"]): r for r in rows["correlation"]}
    pairs = []
    ids = sorted(c["coin_id"] for c in coins)
    for i, a in enumerate(ids):  # every pair of the top coins, those without common days too
        for b in ids[i + 1 :]:
            r = found.get((a, b), {})
            pairs.append({"a": a, "b": b, "corr": _num(r.get("corr")), "days": int(r.get("days") or 0)})

    def mover(r: dict[str, Any]) -> dict[str, Any]:
        return {
            **{k: r[k] for k in ("coin_id", "symbol", "name")},
            "first_ms": int(r["first_ms"]),
            "first_price": float(r["first_price"]),
            "last_ms": int(r["last_ms"]),
            "last_price": float(r["last_price"]),
            "change_pct": float(r["change_pct"]),
        }

    return {
        "since_ms": since_ms,
        "until_ms": until_ms,
        "rows": int(s.get("row_count") or 0),
        "coins": int(s.get("coins") or 0),
        "first_ms": s.get("first_ms"),
        "last_ms": s.get("last_ms"),
        "daily_returns": list(returns.values()),
        "volatility": [
            {
                **{k: r[k] for k in ("coin_id", "symbol", "name")},
                "days": int(r["days"] or 0),
                "daily_std_pct": _num(r["daily_std_pct"]),
                "hours": int(r["hours"] or 0),
                "hourly_log_std": _num(r["hourly_log_std"]),
            }
            for r in rows["volatility"]
        ],
        "movers": {"up": [mover(r) for r in rows["movers_up"]], "down": [mover(r) for r in rows["movers_down"]]},
        "correlation": {"coins": coins, "pairs": pairs},
    }
