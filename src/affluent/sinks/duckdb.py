"""The serving store: DuckDB tables holding the latest live results, upserted by key.

`DuckDBServingSink` keeps one row per key (a station, a window, a vehicle). `write` buffers rows,
the last one per key winning; `flush` (called before each checkpoint commit) upserts the buffer in
one transaction with `INSERT OR REPLACE`, from an Arrow table. Replaying records after a crash
upserts the same rows again, so the table ends exactly as if nothing had happened.

Who can read it. DuckDB lets one process open a database file for writing, and no other process
may open it at all while it does. So:

- inside the process that runs the pipelines (`affluent up` serves the dashboard from that very
  process), open `serving_connection(path)`: connections of one process share one database
  instance and see every committed flush;
- from another process, `serving_connection(path, read_only=True)` works while no pipeline writes
  the file (after `affluent run` ended, or on a copy); while a writer runs it fails with
  `ServingStoreBusyError`, which names the process holding the file.

The sink holds its connection for its whole life (opening the file per flush would cost more than
the upsert and would not let another process in between flushes reliably).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from affluent.core.errors import ConfigError, SinkUnavailableError, TerminalError
from affluent.core.records import Record
from affluent.core.sinks import Sink

#: the DuckDB column types a serving table may use, and their Arrow twins
COLUMN_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "JSON": pa.string(),  # stored as VARCHAR text; lists and dicts are serialised
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: WAL size at which the serving store checkpoints (its tables are small: a checkpoint takes milliseconds)
SERVING_CHECKPOINT = "1MB"
_lock = threading.Lock()


def _storage(column_type: str) -> str:
    return "VARCHAR" if column_type == "JSON" else column_type


class ServingStoreBusyError(TerminalError):
    """Another process holds the serving store's file."""


def _duckdb() -> Any:
    import duckdb

    return duckdb


def serving_connection(path: str | os.PathLike[str], *, read_only: bool = False) -> Any:
    """A DuckDB connection to the serving store (see the module docstring for who can read when)."""
    duckdb = _duckdb()
    p = Path(path)
    if not read_only:
        p.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _lock:  # DuckDB's instance cache is not safe against two threads opening the same file at once
            con = duckdb.connect(str(p), read_only=read_only)
        if not read_only:
            # upserts pile up in memory until a checkpoint, by default at 16 MB of WAL (hours of a live
            # store): checkpoint small and often, and let the allocator hand freed pages back
            con.execute(f"SET checkpoint_threshold='{SERVING_CHECKPOINT}'")
            con.execute("SET allocator_background_threads=true")
        return con
    except duckdb.IOException as exc:
        raise ServingStoreBusyError(f"cannot open the serving store {p}: {exc}") from exc
    except duckdb.ConnectionException as exc:
        raise ServingStoreBusyError(
            f"cannot open the serving store {p} {'read-only' if read_only else 'for writing'}: {exc}; "
            "in the process that writes it, open it with read_only=False"
        ) from exc


def read_serving(path: str | os.PathLike[str], sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run one query on the serving store, from a process that does not write it."""
    con = serving_connection(path, read_only=True)
    try:
        cur = con.execute(sql, params or [])
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


class DuckDBServingSink(Sink):
    """Upserts one row per key into a DuckDB table.

    columns: name -> DuckDB type (VARCHAR, BIGINT, INTEGER, DOUBLE, BOOLEAN, JSON); key_columns: the
    primary key. row: record -> dict (default: the value), or None to skip the record.
    retain_ms with time_column: at each flush, delete rows whose `time_column` is older than the
    newest one's by more than retain_ms (for tables of things that vanish, like rented bikes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        table: str,
        *,
        key_columns: Sequence[str],
        columns: Mapping[str, str],
        row: Callable[[Record], dict[str, Any] | None] | None = None,
        name: str | None = None,
        retain_ms: int | None = None,
        time_column: str | None = None,
    ) -> None:
        for ident in (table, *columns):
            if not _NAME.match(ident):
                raise ConfigError(f"serving table or column name {ident!r} is not a plain identifier")
        bad = {c: t for c, t in columns.items() if t.upper() not in COLUMN_TYPES}
        if bad:
            raise ConfigError(f"serving table {table!r}: unsupported column types {bad}; use one of {sorted(COLUMN_TYPES)}")
        missing = [k for k in key_columns if k not in columns]
        if not key_columns or missing:
            raise ConfigError(f"serving table {table!r}: key columns {missing or '(none)'} are not among its columns")
        if (retain_ms is None) != (time_column is None) or (time_column is not None and time_column not in columns):
            raise ConfigError(f"serving table {table!r}: retain_ms needs a time_column among the columns")
        self.path = Path(path)
        self.table = table
        self.key_columns = tuple(key_columns)
        self.columns = {c: t.upper() for c, t in columns.items()}
        self.row = row
        self.name = name or f"duckdb-{table}"
        self.retain_ms = retain_ms
        self.time_column = time_column
        self.schema = pa.schema([(c, COLUMN_TYPES[t]) for c, t in self.columns.items()])
        self._json = [c for c, t in self.columns.items() if t == "JSON"]
        self._buffer: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._con: Any = None
        self.rows_written = 0

    # -- lifecycle ------------------------------------------------------------------------------------------
    def open(self) -> None:
        if self._con is not None:
            return
        self._con = serving_connection(self.path)
        cols = ", ".join(f'"{c}" {_storage(t)}' for c, t in self.columns.items())
        keys = ", ".join(f'"{k}"' for k in self.key_columns)
        self._con.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" ({cols}, PRIMARY KEY ({keys}))')
        have = {r[0] for r in self._con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", [self.table]).fetchall()}
        for c, t in self.columns.items():
            if c not in have:  # a newer version of the app added a column
                self._con.execute(f'ALTER TABLE "{self.table}" ADD COLUMN "{c}" {_storage(t)}')
        self._buffer.clear()

    def close(self) -> None:
        self._buffer.clear()
        if self._con is not None:
            with contextlib.suppress(Exception):
                self._con.close()
            self._con = None

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, records: list[Record]) -> None:
        keys = self.key_columns
        rows: list[dict[str, Any]] = []
        for r in records:
            row = self.row(r) if self.row is not None else r.value
            if row is None:
                continue
            if not isinstance(row, dict):
                raise ConfigError(f"serving table {self.table!r} takes dict rows, got {type(row).__name__}")
            rows.append(row)
        if not rows:
            return
        for row in rows:  # key columns are NOT NULL: such a row would fail the whole flush
            missing = [k for k in keys if row.get(k) is None]
            if missing:
                raise ConfigError(f"serving table {self.table!r}: key column(s) {', '.join(missing)} must not be null")
        try:  # convert now: a row of the wrong type fails this write (a dead letter), never a flush
            self._arrow(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"serving table {self.table!r}: a row does not fit its columns ({exc})") from exc
        for row in rows:
            self._buffer[tuple(row.get(k) for k in keys)] = row

    def discard(self) -> None:
        self._buffer.clear()

    def _arrow(self, rows: list[dict[str, Any]]) -> pa.Table:
        data: dict[str, list[Any]] = {c: [r.get(c) for r in rows] for c in self.columns}
        for c in self._json:
            data[c] = [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in data[c]]
        return pa.Table.from_pydict(data, schema=self.schema)

    def flush(self) -> None:
        if not self._buffer:
            return
        if self._con is None:
            self.open()
        rows = list(self._buffer.values())
        batch = self._arrow(rows)
        cols = ", ".join(f'"{c}"' for c in self.columns)
        con = self._con
        view = f"_affluent_batch_{self.table}"
        duckdb = _duckdb()
        try:
            con.register(view, batch)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(f'INSERT OR REPLACE INTO "{self.table}" ({cols}) SELECT {cols} FROM {view}')
                    if self.retain_ms is not None:
                        tc = f'"{self.time_column}"'
                        con.execute(f'DELETE FROM "{self.table}" WHERE {tc} < (SELECT MAX({tc}) FROM "{self.table}") - ?', [self.retain_ms])
                    con.execute("COMMIT")
                except Exception:
                    with contextlib.suppress(Exception):
                        con.execute("ROLLBACK")
                    raise
            finally:
                with contextlib.suppress(Exception):
                    con.unregister(view)
        except (duckdb.IOException, duckdb.FatalException, duckdb.TransactionException, OSError) as exc:
            # a full or read-only disk: start again from a fresh connection at the next flush
            self.close()
            raise SinkUnavailableError(f"serving table {self.table!r} in {self.path} cannot be written for now: {exc}") from exc
        self.rows_written += len(rows)
        self._buffer.clear()

    # -- reading (same process) -----------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Read through this sink's own connection (tests, the process's own dashboard)."""
        if self._con is None:
            self.open()
        cur = self._con.execute(sql, params or [])
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


__all__ = ["COLUMN_TYPES", "DuckDBServingSink", "ServingStoreBusyError", "read_serving", "serving_connection"]
