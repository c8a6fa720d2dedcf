"""Batch analytics over the lake, defined once and run by an engine (DuckDB here; Spark later).

A question is SQL over views named after lake datasets, in the subset of SQL that DuckDB and Spark
SQL share. An engine makes each view from `<root>/<dataset>/**/*.parquet` with the `date` and
`hour` folder names as columns. A damaged file of the lake makes a question fail with a LakeError
that names the file (found with `check_lake`), never with the engine's traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from affluent.core.clock import now_ms
from affluent.core.errors import ConfigError, TerminalError
from affluent.sinks.lake import LakeError, check_lake, dataset_path


class EmptyLakeError(TerminalError):
    """The dataset a question needs has no data (yet)."""


class AnalysisError(TerminalError):
    """The engine could not answer a question (and no damaged lake file explains why)."""


@dataclass(frozen=True)
class Question:
    """One batch question: a title for people, SQL for engines, and the datasets it reads."""

    name: str
    title: str
    sql: str
    datasets: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


def parse_when(text: str, tz: ZoneInfo, *, end: bool = False) -> int:
    """A date or ISO datetime -> UTC epoch ms. A date is its local midnight, or the next one when `end`
    (so `--until 2025-03-09` includes that day); a datetime without offset is local time.

    >>> paris = ZoneInfo("Europe/Paris")
    >>> parse_when("2025-03-03", paris), parse_when("2025-03-03", paris, end=True) - parse_when("2025-03-03", paris)
    (1740956400000, 86400000)
    >>> parse_when("2025-03-03T12:00:00Z", paris)
    1741003200000
    """
    text = text.strip()
    if text == "now":
        return now_ms()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            dt = datetime(d.year, d.month, d.day, tzinfo=tz)
        else:
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
    except ValueError:
        raise ConfigError(f"{text!r} is neither a date (2025-03-03) nor an ISO datetime (2025-03-03T08:00:00+01:00)") from None
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class DuckDBEngine:
    """Runs questions with DuckDB, in process, over the local Parquet lake."""

    name = "duckdb"

    def __init__(self, lake_root: str | os.PathLike[str]) -> None:
        import duckdb

        self.root = Path(lake_root)
        self.con = duckdb.connect()
        self._views: set[str] = set()

    def view(self, dataset: str) -> None:
        import duckdb

        if dataset in self._views:
            return
        ds = dataset_path(self.root, dataset)
        files = list(ds.glob("date=*/hour=*/*.parquet")) if ds.exists() else []
        if not files:
            raise EmptyLakeError(f"the lake has no {dataset!r} data yet (looked in {ds}); run the app first")
        pattern = str(ds / "date=*" / "hour=*" / "*.parquet").replace("'", "''")
        try:  # union_by_name reads every file's footer here
            self.con.execute(f"CREATE OR REPLACE VIEW {dataset} AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)")
        except duckdb.Error as exc:
            raise self._explain(exc, [dataset]) from exc
        self._views.add(dataset)

    def query(self, sql: str, params: dict[str, Any] | None = None, *, datasets: tuple[str, ...] | list[str] = ()) -> list[dict[str, Any]]:
        import duckdb

        for d in datasets:
            self.view(d)
        try:
            cur = self.con.execute(sql, params or {})
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
        except duckdb.Error as exc:
            raise self._explain(exc, list(datasets)) from exc

    def _explain(self, exc: Exception, datasets: list[str]) -> TerminalError:
        """The error to raise for an engine failure: the damaged lake file behind it, if there is one."""
        problems = []
        for d in datasets:
            try:
                problems += check_lake(self.root, d)
            except LakeError:
                continue
        # unreadable files first, else other Parquet files that should not be there (a crashed write's temporary file)
        damaged = [p for p in problems if p.damaged] or [p for p in problems if p.path.suffix == ".parquet"]
        engine_says = " ".join(str(exc).split("\n")[0].split())
        if not damaged:
            return AnalysisError(f"{self.name} could not answer: {engine_says}")
        more = f" (and {len(damaged) - 1} more problem(s))" if len(damaged) > 1 else ""
        what = "damaged lake file" if damaged[0].damaged else "lake file"
        return LakeError(f"{what} {damaged[0].path}: {damaged[0].problem.rstrip('.')}{more}; run `affluent lake check` for every problem")

    def run(self, question: Question, **params: Any) -> list[dict[str, Any]]:
        return self.query(question.sql, {**question.params, **params}, datasets=question.datasets)

    def close(self) -> None:
        self.con.close()
