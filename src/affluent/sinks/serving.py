"""The serving store: SQLite tables holding the latest live results, upserted by key.

`ServingSink` keeps one row per key (a station, a window, a vehicle). `write` checks and buffers rows,
the last one per key winning; `flush` (called before each checkpoint commit) upserts the buffer in
one transaction with `INSERT ... ON CONFLICT DO UPDATE`. Replaying records after a crash upserts the
same rows again, so the table ends exactly as if nothing had happened.

Who can read it: any process, at any time. The file is in WAL mode: readers never block the writer
and the writer never blocks them; each query sees the store as of the last committed flush, every
table whole (a flush is one transaction). Another process opens it with
`serving_connection(path, read_only=True)` or runs one query with `read_serving`. See
docs/serving-store.md for why SQLite rather than DuckDB.

SQLite has no boolean type: it stores 0 and 1. A column of a query's result that bears the name of a
BOOLEAN column of the store (and of no column of another type) reads as a bool.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from affluent.core.errors import ConfigError, SinkUnavailableError, TerminalError
from affluent.core.operators import Batch
from affluent.core.records import Record
from affluent.core.sinks import Sink

#: the column types a serving table may use, and the type each is declared with in SQLite. JSON is
#: declared TEXT: a column declared JSON would turn the text "12" into the integer 12 (NUMERIC affinity)
COLUMN_TYPES: dict[str, str] = {
    "VARCHAR": "VARCHAR",
    "BIGINT": "BIGINT",
    "INTEGER": "INTEGER",
    "DOUBLE": "DOUBLE",
    "BOOLEAN": "BOOLEAN",
    "JSON": "TEXT",
}
#: how long a connection waits for another one's write lock before the flush is retried
BUSY_TIMEOUT_S = 10.0
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: faults that may go away: a full, read-only or failing disk, a lock held too long, a vanished mount
_TRANSIENT = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN}
_DECLARED = "SELECT lower(c.name), upper(c.type) FROM sqlite_master AS t, pragma_table_info(t.name) AS c WHERE t.type = 'table'"


class ServingStoreMissingError(TerminalError):
    """No serving store at this path: no pipeline has written one there yet."""


# -- value checks: each takes a value that is not None and returns what is stored, or raises ------------------------
def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    v.encode()  # a lone surrogate cannot be stored: refuse it here rather than fail the flush
    return v


def _integer(bits: int) -> Callable[[Any], int]:
    top = 1 << (bits - 1)

    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected an integer, got {type(v).__name__}")
        if not -top <= v < top:
            raise ValueError(f"{v} does not fit in {bits} bits")
        return int(v)

    return check


def _double(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    f = float(v)
    return None if math.isnan(f) else f  # SQLite stores NaN as NULL: do it here, where a NaN key is refused


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _json(v: Any) -> str:
    return _text(v) if isinstance(v, str) else orjson.dumps(v).decode()


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "VARCHAR": _text,
    "BIGINT": _integer(64),
    "INTEGER": _integer(32),
    "DOUBLE": _double,
    "BOOLEAN": _boolean,
    "JSON": _json,
}


# -- connections and reading -------------------------------------------------------------------------------------------
def serving_connection(path: str | os.PathLike[str], *, read_only: bool = False) -> sqlite3.Connection:
    """A connection to the serving store, in autocommit mode; it may move between threads, one at a time.

    read_only: for readers (another process, a dashboard); raises ServingStoreMissingError when there
    is no store yet. Otherwise the file is created if need be, in WAL mode.
    """
    p = Path(path)
    if read_only:
        if not p.is_file():
            raise ServingStoreMissingError(f"there is no serving store at {p} yet: it is made by the first pipeline that writes to it")
        return sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    p.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(p, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        _wal(con)
        con.execute("PRAGMA synchronous=NORMAL")  # in WAL mode, survives a crash of the process (not of the machine)
    except BaseException:
        con.close()
        raise
    return con


def _wal(con: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). SQLite does not wait when another connection is switching it at
    the same moment (pipelines opening a new store together): retry for up to the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def serving_rows(con: sqlite3.Connection, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows of one query on a serving connection, as dicts; BOOLEAN columns as bools (see the module docstring)."""
    types: dict[str, set[str]] = {}
    for name, declared in con.execute(_DECLARED):
        types.setdefault(name, set()).add(declared)
    cur = con.execute(sql, params or ())
    if cur.description is None:
        return []
    names = [d[0] for d in cur.description]
    boolean = [types.get(n.lower()) == {"BOOLEAN"} for n in names]
    return [{n: bool(v) if b and v is not None else v for n, b, v in zip(names, boolean, row, strict=True)} for row in cur.fetchall()]


def read_serving(path: str | os.PathLike[str], sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run one query on the serving store, read-only: from any process, while pipelines write it."""
    con = serving_connection(path, read_only=True)
    try:
        return serving_rows(con, sql, params)
    finally:
        con.close()


# -- the sink ----------------------------------------------------------------------------------------------------------
class ServingSink(Sink):
    """Upserts one row per key into a table of the serving store.

    columns: name -> type (VARCHAR, BIGINT, INTEGER, DOUBLE, BOOLEAN, JSON); key_columns: the primary
    key. row: record -> dict (default: the value), or None to skip the record.
    columns_of: (values, event times) -> {column: list}, the rows of a whole batch at once, in place of
    `row`: a batch is then checked a column at a time, with no Python object per row (see `write_batch`).
    retain_ms with time_column: at each flush, delete rows whose `time_column` is older than the
    newest one's by more than retain_ms (for tables of things that vanish, like rented bikes).
    indexes: column lists to index, for the pages' queries (the key is indexed already).
    """

    shared_writes = True  # upserts in one SQLite file: writers wait their turn

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
        indexes: Sequence[Sequence[str]] = (),
        columns_of: Callable[[list[Any], list[int]], dict[str, list[Any]]] | None = None,
    ) -> None:
        if columns_of is not None and row is not None:
            raise ConfigError(f"serving table {table!r}: columns_of makes the rows from values and event times; it takes no row")
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
        unknown = [c for ix in indexes for c in ix if c not in columns]
        if unknown:
            raise ConfigError(f"serving table {table!r}: index columns {unknown} are not among its columns")
        self.indexes = [tuple(ix) for ix in indexes]
        self.path = Path(path)
        self.table = table
        self.key_columns = tuple(key_columns)
        self.columns = {c: t.upper() for c, t in columns.items()}
        self.row = row
        self.columns_of = columns_of
        self.name = name or f"serving-{table}"
        self.retain_ms = retain_ms
        self.time_column = time_column
        self._checks = [(c, _CHECKS[t]) for c, t in self.columns.items()]
        self._key_at = [list(self.columns).index(k) for k in self.key_columns]
        cols = ", ".join(f'"{c}"' for c in self.columns)
        keys = ", ".join(f'"{k}"' for k in self.key_columns)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in self.columns if c not in self.key_columns)
        marks = ", ".join("?" * len(self.columns))
        on_conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        self._upsert = f'INSERT INTO "{table}" ({cols}) VALUES ({marks}) ON CONFLICT ({keys}) {on_conflict}'
        tc = f'"{time_column}"'
        self._expire = f'DELETE FROM "{table}" WHERE {tc} < (SELECT MAX({tc}) FROM "{table}") - ?' if time_column else None
        self._buffer: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # query() may come from another thread than the runtime's

    # -- lifecycle ------------------------------------------------------------------------------------------
    def open(self) -> None:
        with self._lock, self._faults("opened"):
            self._connect()

    def close(self) -> None:
        with self._lock:
            self._buffer.clear()
            self._disconnect()

    def _connect(self) -> sqlite3.Connection:
        if self._con is None:
            con = serving_connection(self.path)
            try:
                self._prepare(con)
            except BaseException:
                con.close()
                raise
            self._con = con
        return self._con

    def _disconnect(self) -> None:
        if self._con is not None:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None

    def _prepare(self, con: sqlite3.Connection) -> None:
        """Create the table, or add the columns a newer version of the app brought."""
        t = self.table
        defs = ", ".join(f'"{c}" {COLUMN_TYPES[ty]}' for c, ty in self.columns.items())
        keys = ", ".join(f'"{k}"' for k in self.key_columns)
        with _transaction(con):
            # WITHOUT ROWID: rows live in the key's b-tree, one lookup per upsert (and key columns are NOT NULL).
            # Not STRICT: that would forbid declaring BOOLEAN, which readers need; write() checks every type
            con.execute(f'CREATE TABLE IF NOT EXISTS "{t}" ({defs}, PRIMARY KEY ({keys})) WITHOUT ROWID')
            info = con.execute(f'PRAGMA table_info("{t}")').fetchall()  # (cid, name, type, notnull, default, pk)
            have_key = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
            if have_key != self.key_columns:
                raise ConfigError(f"serving table {t!r} in {self.path} is keyed by {have_key}, this pipeline by {self.key_columns}")
            have = {r[1] for r in info}
            for c, ty in self.columns.items():
                if c not in have:
                    con.execute(f'ALTER TABLE "{t}" ADD COLUMN "{c}" {COLUMN_TYPES[ty]}')
            if self.time_column is not None:  # retention looks up the newest time at each flush
                con.execute(f'CREATE INDEX IF NOT EXISTS "{t}__{self.time_column}" ON "{t}" ("{self.time_column}")')
            for ix in self.indexes:
                cols = ", ".join(f'"{c}"' for c in ix)
                con.execute(f'CREATE INDEX IF NOT EXISTS "{t}__{"__".join(ix)}" ON "{t}" ({cols})')

    @contextlib.contextmanager
    def _faults(self, doing: str) -> Iterator[None]:
        """A fault that may go away becomes SinkUnavailableError; the next flush starts from a fresh connection."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _TRANSIENT:
                raise
            self._disconnect()  # SQLite may leave a connection in a bad state after such a fault
            raise SinkUnavailableError(f"serving table {self.table!r} in {self.path} cannot be {doing} for now: {exc}") from exc

    # -- writing ----------------------------------------------------------------------------------------------
    def write(self, records: list[Record]) -> None:
        if self.columns_of is not None:
            self._write_columns(self.columns_of([r.value for r in records], [r.timestamp_ms for r in records]))
            return
        rows: list[dict[str, Any]] = []
        for r in records:
            row = self.row(r) if self.row is not None else r.value
            if row is None:
                continue
            if not isinstance(row, dict):
                raise ConfigError(f"serving table {self.table!r} takes dict rows, got {type(row).__name__}")
            rows.append(row)
        # all checked before any is buffered: a write that raises takes nothing (its records become dead letters)
        cols = self._checked_columns({c: [row.get(c) for row in rows] for c in self.columns}) if len(rows) > 8 else None
        if cols is None:
            self._buffer_rows([self._values(row) for row in rows])
        else:
            self._buffer_columns(cols)

    def write_batch(self, batch: Batch, topic: str, partition: int) -> None:
        """Take a whole batch: with `columns_of`, checked a column at a time straight from the values."""
        if self.columns_of is None:
            super().write_batch(batch, topic, partition)
        else:
            self._write_columns(self.columns_of(batch.values, batch.timestamps))

    def _write_columns(self, given: dict[str, list[Any]]) -> None:
        n = len(next(iter(given.values()), ()))
        if any(len(col) != n for col in given.values()):
            raise ConfigError(f"serving table {self.table!r}: columns_of gave columns of different lengths")
        full = {c: given.get(c) or [None] * n for c in self.columns}
        cols = self._checked_columns(full)
        if cols is None:  # some value needs the row-by-row checks, which convert it or say what is wrong
            self._buffer_rows([self._values(dict(zip(full, row, strict=True))) for row in zip(*full.values(), strict=True)])
        else:
            self._buffer_columns(cols)

    def _buffer_rows(self, values: list[tuple[Any, ...]]) -> None:
        at = self._key_at
        for v in values:
            self._buffer[tuple(v[i] for i in at)] = v

    def _buffer_columns(self, cols: list[list[Any]]) -> None:
        # the last row of a key wins, as in a loop: only those rows are made
        last = dict(zip(zip(*(cols[i] for i in self._key_at), strict=True), range(len(cols[0])), strict=True))
        self._buffer.update((key, tuple(col[i] for col in cols)) for key, i in last.items())

    def _checked_columns(self, given: dict[str, list[Any]]) -> list[list[Any]] | None:
        """The columns in table order, checked a column at a time (the common case: every value already
        of its type); None when some value needs the row-by-row checks."""
        cols = []
        keys = set(self.key_columns)
        for c, kind in self.columns.items():
            col = given[c]
            nulls = col.count(None)
            if nulls and c in keys:
                return None
            present = [v for v in col if v is not None] if nulls else col
            types = set(map(type, present))
            if not present:
                pass
            elif kind == "VARCHAR":
                if types != {str}:
                    return None
                try:
                    "".join(present).encode()  # a lone surrogate cannot be stored
                except UnicodeEncodeError:
                    return None
            elif kind in ("BIGINT", "INTEGER"):
                top = 1 << (63 if kind == "BIGINT" else 31)
                if types != {int} or not -top <= min(present) <= max(present) < top:
                    return None
            elif kind == "DOUBLE":
                if types != {float} or any(map(math.isnan, present)):
                    return None
            elif kind == "BOOLEAN":
                if types != {bool}:
                    return None
            else:
                return None
            cols.append(col)
        return cols

    def _values(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """The row's values in column order, checked now: a bad row fails its write, never a flush."""
        out = []
        for c, check in self._checks:
            v = row.get(c)
            if v is not None:
                try:
                    v = check(v)
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ConfigError(f"serving table {self.table!r}: column {c!r} ({self.columns[c]}) cannot take {v!r:.80}: {exc}") from exc
            out.append(v)
        missing = [k for k, i in zip(self.key_columns, self._key_at, strict=True) if out[i] is None]
        if missing:
            raise ConfigError(f"serving table {self.table!r}: key column(s) {', '.join(missing)} must not be null")
        return tuple(out)

    def discard(self) -> None:
        self._buffer.clear()

    def flush(self) -> None:
        if not self._buffer:
            return
        with self._lock, self._faults("written"):
            con = self._connect()
            with _transaction(con):
                con.executemany(self._upsert, self._buffer.values())
                if self._expire is not None:
                    con.execute(self._expire, (self.retain_ms,))
        self._buffer.clear()

    # -- reading ----------------------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Read through this sink's own connection (tests, the process's own pages): what it flushed."""
        with self._lock:
            return serving_rows(self._connect(), sql, params)


@contextlib.contextmanager
def _transaction(con: sqlite3.Connection) -> Iterator[None]:
    """One IMMEDIATE transaction: takes the write lock up front (waiting up to the busy timeout), rolls back on error."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        raise


__all__ = ["COLUMN_TYPES", "ServingSink", "ServingStoreMissingError", "read_serving", "serving_connection", "serving_rows"]
