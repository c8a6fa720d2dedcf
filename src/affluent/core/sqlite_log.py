"""The embedded log: one SQLite file indexes topics, record batches, group offsets, keyed state and leases.

The bytes of record batches live in segment files beside it (`<log>-segments/<topic id>-<partition>/`),
written once; SQLite keeps where each batch is (segment, position, size) in the same transaction
as the offsets and state of a checkpoint. A batch is written into its segment before that
transaction commits, at the end the index gives, so an append that rolls back (or a process
killed mid-write) leaves bytes no index row points to, which the next append overwrites.
WAL mode lets readers run beside the one writer; SQLite's own lock enforces that there is one
writer at a time, across processes, and leases enforce that one pipeline runs in one process at a time.

Logs of schema version 1 kept batches inside SQLite; they are read as they are, and new batches go
to segments.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import logging
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import (
    ConfigError,
    FencedError,
    LogBusyError,
    LogCorruptError,
    LogError,
    LogFullError,
    LogUnavailableError,
    PipelineAlreadyRunningError,
    TopicExistsError,
    UnknownTopicError,
)
from affluent.core.log import (
    TP,
    Checkpoint,
    Log,
    Membership,
    OutgoingBatch,
    PartitionInfo,
    TopicConfig,
    TopicInfo,
    check_topic_name,
    partition_for,
    pid_alive,
    serialise_values,
    spread,
)
from affluent.core.records import Lines, Record, RecordBatch, ValueDecoder, batch_parts, decode_batch, decode_chunks

log = logging.getLogger("affluent.log")

SCHEMA_VERSION = "3"
MAX_BATCH_RECORDS = 8192
MAX_BATCH_BYTES = 1 << 20
#: a worker whose heartbeat is older than this is not listed among a group's live workers
MEMBER_SESSION_MS = 10_000
#: a segment file takes no more batches once it holds this many bytes
SEGMENT_BYTES = 64 << 20
#: nor once its first batch is this old, so that time-based retention frees disk space
SEGMENT_MS = 6 * 3_600_000
#: a write-ahead log this big is copied into the log file by a background thread
WAL_CHECKPOINT_BYTES = 64 << 20
#: a write-ahead log larger than this is checkpointed by the appending thread itself
WAL_MAX_BYTES = 1 << 30
#: past this size the background copy no longer waits for appends to pause
WAL_BURST_BYTES = 512 << 20
#: the write-ahead log's size is looked at every this many writes too
CHECK_EVERY = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    config TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL, end_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL, count INTEGER NOT NULL, min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL, append_ms INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL,
    segment INTEGER, position INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS batches_position ON batches (topic_id, partition, base_offset);
-- retention reads these instead of every batch (the data blobs of version 1 share the table's pages)
CREATE INDEX IF NOT EXISTS batches_age ON batches (topic_id, partition, append_ms, count);
CREATE INDEX IF NOT EXISTS batches_sizes ON batches (topic_id, partition, base_offset, size, count);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, topic_id INTEGER NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, topic_id, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    store TEXT NOT NULL, partition INTEGER NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (store, partition, key));
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL, member TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat_ms INTEGER NOT NULL,
    PRIMARY KEY (grp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (
    grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statuses (
    name TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, updated_ms INTEGER NOT NULL, status TEXT NOT NULL);
"""

_SCHEMA_NAMES = frozenset(re.findall(r"IF NOT EXISTS (\w+)", _SCHEMA))


class SQLiteLog(Log):
    """The embedded log backend (`sqlite:///path`)."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        if synchronous.upper() not in ("NORMAL", "FULL", "OFF"):
            raise ConfigError(f"synchronous must be NORMAL, FULL or OFF, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._topics: dict[str, tuple[int, TopicConfig]] = {}
        self._topics_lock = threading.Lock()
        self.segments = _Segments(self.path.with_name(self.path.name + "-segments"), fsync=self._synchronous == "FULL")
        self._checkpointer = _Checkpointer(self.path, before=self.segments.sync)
        self._writes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors("opening"):
            conn = self._conn()
            version = self._schema_version(conn)
            if version is None or not self._has_schema(conn):  # a new log, or an older one: the write lock is taken
                conn.executescript(_SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
                version = self._schema_version(conn)
        if version in ("1", "2"):
            version = self._upgrade(version)
        if version != SCHEMA_VERSION:
            raise LogError(
                f"{self.path}: log schema version {version}, this affluent reads {SCHEMA_VERSION} (and 1, 2): "
                "a newer affluent wrote it; upgrade with `pip install -U affluent`"
            )

    @staticmethod
    def _has_schema(conn: sqlite3.Connection) -> bool:
        """Whether every table and index of the schema is there (tables were added without a new version)."""
        names = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')").fetchall()
        return {n for (n,) in names} >= _SCHEMA_NAMES

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> str | None:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return None if row is None else str(row[0])

    def _upgrade(self, old: str) -> str:
        """Stored batches stay as they are and read as before. Version 1 kept them inside SQLite; new ones
        go to segments. Version 3 adds batches of lines (checked when read), which version 2 cannot read."""
        with self._write("upgrading") as conn:
            (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if version == "1":  # not done meanwhile by another process
                conn.execute("ALTER TABLE batches ADD COLUMN segment INTEGER")
                conn.execute("ALTER TABLE batches ADD COLUMN position INTEGER")
            if version in ("1", "2"):
                conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (SCHEMA_VERSION,))
        log.info("%s: upgraded the log from schema version %s to %s (stored batches are kept as they are)", self.path, old, SCHEMA_VERSION)
        return SCHEMA_VERSION

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteLog:
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ConfigError(f"bad SQLite log URL {url!r}: expected sqlite:///path/to/log.db")
        return cls(path, **options)

    def for_child(self) -> tuple[str, dict[str, Any]]:
        return self.url, {"synchronous": self._synchronous, "busy_timeout_s": self._busy_timeout_s}

    # -- connections and errors -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_s, check_same_thread=False)
            # small pages: record batches are in segment files, and a commit writes every page it changed to the
            # write-ahead log (takes effect on a new file)
            conn.execute("PRAGMA page_size=4096")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA mmap_size=0")  # a mapped log counts in RSS as it grows; reads go through the page cache
            # the write-ahead log is copied into the file in the background (_Checkpointer), not inside a commit
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_CHECKPOINT_BYTES}")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            where = f"{doing} the log {self.path}"
            if "locked" in msg or "busy" in msg:
                waited = time.monotonic() - started
                if waited < self._busy_timeout_s:  # SQLite gave up without waiting (a lock it does not wait for)
                    raise LogBusyError(f"{where}: the log was locked by another process ({msg}, after {waited:.2f} s)") from exc
                raise LogBusyError(f"{where}: another process held the write lock for over {self._busy_timeout_s:g} s") from exc
            if "full" in msg:
                self.close()  # a fresh connection after the fault: SQLite may keep a failed one in a bad state
                raise LogFullError(f"{where}: the disk is full; the write was rolled back, nothing committed was lost") from exc
            if "readonly" in msg or "disk I/O" in msg or "unable to open" in msg:
                self.close()
                raise LogUnavailableError(f"{where}: the disk cannot be written ({msg}); nothing committed was lost") from exc
            if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
                raise LogCorruptError(f"{where}: the file is damaged or is not an affluent log ({msg})") from exc
            raise LogError(f"{where}: {msg}") from exc
        except OSError as exc:  # a segment file
            where = f"{doing} the log {self.path}"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise LogFullError(f"{where}: the disk is full; the write was rolled back, nothing committed was lost") from exc
            raise LogUnavailableError(f"{where}: segment file {exc.filename or ''} cannot be used ({exc.strerror}); nothing committed was lost") from exc

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: takes the write lock up front, rolls back on any error."""
        conn = self._conn()
        with self._errors(doing):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        self._after_write(conn)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with contextlib.suppress(OSError):  # what the last connection checkpoints is on disk first
                self.segments.sync()
            conn.close()
            self._local.conn = None
        self.segments.close_readers()
        self._checkpointer.stop()

    # -- topics -------------------------------------------------------------------------------------
    def _topic(self, name: str, conn: sqlite3.Connection | None = None, *, refresh: bool = False) -> tuple[int, TopicConfig]:
        if not refresh:
            hit = self._topics.get(name)
            if hit is not None:
                return hit
        conn = conn or self._conn()
        with self._errors(f"looking up topic {name!r} in"):
            row = conn.execute("SELECT id, config FROM topics WHERE name=?", (name,)).fetchone()
        if row is None:
            with self._topics_lock:
                self._topics.pop(name, None)
            raise UnknownTopicError(name, [r[0] for r in conn.execute("SELECT name FROM topics")])
        hit = (row[0], TopicConfig.from_dict(orjson.loads(row[1])))
        with self._topics_lock:
            self._topics[name] = hit
        return hit

    def create_topic(self, name: str, config: TopicConfig | None = None, *, exist_ok: bool = True) -> TopicInfo:
        check_topic_name(name)
        config = config or TopicConfig()
        with self._write(f"creating topic {name!r} in") as conn:
            row = conn.execute("SELECT id FROM topics WHERE name=?", (name,)).fetchone()
            if row is not None:
                if not exist_ok:
                    raise TopicExistsError(name)
            else:
                cur = conn.execute(
                    "INSERT INTO topics (name, config, created_ms) VALUES (?, ?, ?)",
                    (name, orjson.dumps(config.to_dict()).decode(), now_ms()),
                )
                conn.executemany(
                    "INSERT INTO partitions VALUES (?, ?, 0, 0)",
                    [(cur.lastrowid, p) for p in range(config.partitions)],
                )
        return self.describe_topic(name)

    def delete_topic(self, name: str) -> None:
        with self._write(f"deleting topic {name!r} from") as conn:
            topic_id, _ = self._topic(name, conn, refresh=True)
            for table in ("batches", "partitions", "group_offsets"):
                conn.execute(f"DELETE FROM {table} WHERE topic_id=?", (topic_id,))
            conn.execute("DELETE FROM topics WHERE id=?", (topic_id,))
        self.segments.drop_topic(topic_id)  # ids are never reused: no append can write there any more
        with self._topics_lock:
            self._topics.pop(name, None)

    def topic_exists(self, name: str) -> bool:
        with self._errors(f"looking up topic {name!r} in"):
            return self._conn().execute("SELECT 1 FROM topics WHERE name=?", (name,)).fetchone() is not None

    def list_topics(self) -> list[TopicInfo]:
        with self._errors("listing topics of"):
            names = [r[0] for r in self._conn().execute("SELECT name FROM topics ORDER BY name")]
        out = []
        for n in names:
            with contextlib.suppress(UnknownTopicError):
                out.append(self.describe_topic(n))
        return out

    def describe_topic(self, name: str) -> TopicInfo:
        conn = self._conn()
        topic_id, config = self._topic(name, conn, refresh=True)
        with self._errors(f"describing topic {name!r} in"):
            parts = conn.execute(
                "SELECT p.partition, p.start_offset, p.end_offset, "
                "(SELECT coalesce(sum(size), 0) FROM batches b WHERE b.topic_id=p.topic_id AND b.partition=p.partition), "
                "(SELECT min(min_ts) FROM batches b WHERE b.topic_id=p.topic_id AND b.partition=p.partition), "
                "(SELECT max(max_ts) FROM batches b WHERE b.topic_id=p.topic_id AND b.partition=p.partition) "
                "FROM partitions p WHERE p.topic_id=? ORDER BY p.partition",
                (topic_id,),
            ).fetchall()
        return TopicInfo(name, config, tuple(PartitionInfo(*row) for row in parts))

    # -- data ---------------------------------------------------------------------------------------------
    def append(self, topic: str, batch: OutgoingBatch | Sequence[Record], *, partition: int | None = None) -> dict[int, tuple[int, int]]:
        out = batch if isinstance(batch, OutgoingBatch) else OutgoingBatch.of(batch)
        with self._write(f"appending to topic {topic!r} in") as conn:
            return self._append(conn, topic, out, partition)

    def _append(self, conn: sqlite3.Connection, topic: str, batch: OutgoingBatch, partition: int | None) -> dict[int, tuple[int, int]]:
        if not len(batch):
            return {}
        topic_id, config = self._topic(topic, conn)
        if conn.execute("SELECT 1 FROM partitions WHERE topic_id=? LIMIT 1", (topic_id,)).fetchone() is None:
            topic_id, config = self._topic(topic, conn, refresh=True)  # deleted, maybe recreated, by another client
        raw, checked = serialise_values(topic, config.value_format, batch)
        groups: dict[int, Sequence[int]]
        if config.partitions == 1 or partition is not None:
            p = partition or 0
            if p >= config.partitions or p < 0:
                raise ConfigError(f"topic {topic!r} has {config.partitions} partitions, there is no partition {p}")
            groups = {p: range(len(raw))}
        else:
            groups_l: dict[int, list[int]] = {}
            for i, k in enumerate(batch.keys):
                groups_l.setdefault(partition_for(k, config.partitions, i), []).append(i)
            groups = dict(groups_l)
        result: dict[int, tuple[int, int]] = {}
        now = now_ms()
        for p, idx in groups.items():
            row = conn.execute("SELECT end_offset FROM partitions WHERE topic_id=? AND partition=?", (topic_id, p)).fetchone()
            if row is None:
                raise UnknownTopicError(topic)
            first = offset = row[0]
            segment, position = self._segment_end(conn, topic_id, p, offset, now)
            whole = isinstance(idx, range) and len(idx) == len(raw)
            vals = raw if whole else [raw[i] for i in idx]
            times = batch.timestamps if whole else [batch.timestamps[i] for i in idx]
            keys = batch.keys if whole else [batch.keys[i] for i in idx]
            hdrs = batch.headers if (whole or batch.headers is None) else [batch.headers[i] for i in idx]
            rows = []
            places: list[tuple[int, int]] = []
            blobs: list[list[bytes]] = []
            stop = 0
            for run in vals.runs(MAX_BATCH_RECORDS, MAX_BATCH_BYTES) if type(vals) is Lines else _runs(vals):
                start, stop = stop, stop + len(run)
                if position >= SEGMENT_BYTES:
                    segment, position = offset, 0
                ts = times[start:stop]
                parts = batch_parts(run, ts, keys[start:stop], hdrs[start:stop] if hdrs else None, checked=checked)
                size = sum(map(len, parts))
                rows.append((topic_id, p, offset, stop - start, min(ts), max(ts), now, size, b"", segment, position))
                places.append((segment, position))
                blobs.append(parts)
                offset += stop - start
                position += size
            self.segments.write(topic_id, p, places, blobs)
            conn.executemany(
                "INSERT INTO batches (topic_id, partition, base_offset, count, min_ts, max_ts, append_ms, size, data, segment, position) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("UPDATE partitions SET end_offset=? WHERE topic_id=? AND partition=?", (offset, topic_id, p))
            result[p] = (first, offset - first)
        return result

    def _segment_end(self, conn: sqlite3.Connection, topic_id: int, partition: int, offset: int, now: int) -> tuple[int, int]:
        """(segment, position) where the partition's next batch goes: after its last batch, or a new segment
        named by `offset` when that one is full or old (or a batch of version 1, or none, came last)."""
        # the last batch, and when its segment's first batch (the one at the segment's own offset) was appended
        row = conn.execute(
            "SELECT b.segment, b.position + b.size, f.append_ms FROM batches b "
            "LEFT JOIN batches f ON f.topic_id=b.topic_id AND f.partition=b.partition AND f.base_offset=b.segment "
            "WHERE b.topic_id=? AND b.partition=? ORDER BY b.base_offset DESC LIMIT 1",
            (topic_id, partition),
        ).fetchone()
        if row is None or row[0] is None or row[1] >= SEGMENT_BYTES or row[2] is None or now - row[2] >= SEGMENT_MS:
            return offset, 0
        return row[0], row[1]

    def _after_write(self, conn: sqlite3.Connection) -> None:
        """Keep the write-ahead log short. Every CHECK_EVERY writes, a log past WAL_CHECKPOINT_BYTES is
        copied into the file by a background thread. While writes come without a pause none of them can
        complete, so past WAL_MAX_BYTES this thread waits for one: the next write then starts the
        write-ahead log over."""
        self._writes += 1
        if self._writes % CHECK_EVERY:
            return
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size >= WAL_CHECKPOINT_BYTES:
            self._checkpointer.request()
        if size > WAL_MAX_BYTES:
            with contextlib.suppress(sqlite3.Error):  # a full disk: the write-ahead log keeps it all
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def read(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000) -> list[RecordBatch]:
        conn = self._conn()
        topic_id, config = self._topic(topic, conn)
        if not 0 <= partition < config.partitions:
            raise ConfigError(f"topic {topic!r} has {config.partitions} partition(s), there is no partition {partition}")
        out: list[RecordBatch] = []
        seen = 0
        with self._errors(f"reading topic {topic!r} partition {partition} from"):
            cur = conn.execute(
                f"SELECT base_offset, count, {_WHERE} FROM batches WHERE topic_id=? AND partition=? AND base_offset >= "
                "(SELECT coalesce(max(base_offset), 0) FROM batches WHERE topic_id=? AND partition=? AND base_offset <= ?) "
                "ORDER BY base_offset",
                (topic_id, partition, topic_id, partition, offset),
            )
            rows = cur.fetchmany(1)
            if not rows and self._topic_moved(topic, topic_id):
                cur.close()
                return self.read(topic, partition, offset, max_records=max_records)
            for base, count, *where in itertools.chain(rows, cur):
                if base + count <= offset:
                    continue
                blob = self._blob(topic, topic_id, partition, base, *where)
                if blob is None:  # dropped by retention since the query
                    break
                b = decode_batch(blob, topic=topic, partition=partition, base_offset=base, value_format=config.value_format)
                out.append(b.tail_from(offset))
                seen += len(out[-1])
                if seen >= max_records:
                    break
            cur.close()
        return out

    def iter_batches(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000, decoder: ValueDecoder | None = None) -> Iterator[RecordBatch]:
        conn = self._conn()
        topic_id, config = self._topic(topic, conn)
        if not 0 <= partition < config.partitions:
            raise ConfigError(f"topic {topic!r} has {config.partitions} partition(s), there is no partition {partition}")
        seen = 0
        while seen < max_records:
            # one stored batch per query, and one statement (a consistent snapshot): the first batch that ends
            # after `offset` — the one holding it, or the next one after a gap. A batch holds at most
            # MAX_BATCH_RECORDS records, which bounds the index range to scan.
            with self._errors(f"reading topic {topic!r} partition {partition} from"):
                row = conn.execute(
                    f"SELECT base_offset, count, {_WHERE} FROM batches WHERE topic_id=? AND partition=? AND base_offset > ? "
                    "AND base_offset + count > ? ORDER BY base_offset LIMIT 1",
                    (topic_id, partition, offset - MAX_BATCH_RECORDS, offset),
                ).fetchone()
                blob = None if row is None else self._blob(topic, topic_id, partition, row[0], *row[2:])
            if row is None or blob is None:
                if seen == 0 and self._topic_moved(topic, topic_id):
                    yield from self.iter_batches(topic, partition, offset, max_records=max_records, decoder=decoder)
                return
            base, count = row[0], row[1]
            for b in decode_chunks(
                blob, topic=topic, partition=partition, base_offset=base, start_offset=offset, value_format=config.value_format, decoder=decoder
            ):
                yield b
                seen += len(b)
            offset = base + count

    def _blob(self, topic: str, topic_id: int, partition: int, base: int, segment: int | None, position: int, size: int, data: bytes) -> bytes | None:
        """A stored batch's bytes; None when its segment is gone (retention or a topic deletion since the query)."""
        if segment is None:  # stored by schema version 1
            return data
        blob = self.segments.read(topic_id, partition, segment, position, size)
        if blob is None:
            gone = self._conn().execute("SELECT 1 FROM batches WHERE topic_id=? AND partition=? AND base_offset=?", (topic_id, partition, base)).fetchone()
            if gone is None:
                return None
            raise LogCorruptError(f"the log {self.path}: topic {topic!r} partition {partition} batch at offset {base}: its segment file is missing")
        if len(blob) < size:
            raise LogCorruptError(
                f"the log {self.path}: topic {topic!r} partition {partition} batch at offset {base} is cut short "
                f"({len(blob)} of {size} bytes in its segment file)"
            )
        return blob

    def _topic_moved(self, topic: str, topic_id: int) -> bool:
        """True when another client deleted and recreated `topic` since we cached its id."""
        try:
            return self._topic(topic, refresh=True)[0] != topic_id
        except UnknownTopicError:
            return False

    def end_offsets(self, topic: str) -> dict[int, int]:
        conn = self._conn()
        topic_id, _ = self._topic(topic, conn)
        with self._errors(f"reading offsets of topic {topic!r} in"):
            return dict(conn.execute("SELECT partition, end_offset FROM partitions WHERE topic_id=?", (topic_id,)).fetchall())

    def start_offsets(self, topic: str) -> dict[int, int]:
        conn = self._conn()
        topic_id, _ = self._topic(topic, conn)
        with self._errors(f"reading offsets of topic {topic!r} in"):
            return dict(conn.execute("SELECT partition, start_offset FROM partitions WHERE topic_id=?", (topic_id,)).fetchall())

    # -- groups, checkpoints, state -----------------------------------------------------------------------------
    def committed(self, group: str, topic: str) -> dict[int, int]:
        conn = self._conn()
        topic_id, _ = self._topic(topic, conn)
        with self._errors(f"reading committed offsets of group {group!r} in"):
            rows = conn.execute("SELECT partition, next_offset FROM group_offsets WHERE grp=? AND topic_id=?", (group, topic_id))
            return dict(rows.fetchall())

    def list_groups(self) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, next_offset) for every committed offset."""
        with self._errors("listing consumer groups of"):
            return (
                self._conn()
                .execute(
                    "SELECT g.grp, t.name, g.partition, g.next_offset FROM group_offsets g JOIN topics t ON t.id=g.topic_id ORDER BY g.grp, t.name, g.partition"
                )
                .fetchall()
            )

    def commit_checkpoint(self, checkpoint: Checkpoint) -> dict[str, dict[int, tuple[int, int]]]:
        result: dict[str, dict[int, tuple[int, int]]] = {}
        now = now_ms()
        with self._write(f"committing a checkpoint of {checkpoint.group or 'a producer'!r} to") as conn:
            if checkpoint.owner is not None:
                self._renew(conn, checkpoint.lease or checkpoint.group, checkpoint.owner, now)
            if checkpoint.member is not None:
                _check_owned(conn, checkpoint.group, checkpoint.member, checkpoint.partitions)
            for topic, batch in checkpoint.appends.items():
                if len(batch):
                    result[topic] = self._append(conn, topic, batch, None)
            if checkpoint.offsets:
                rows = []
                for (topic, partition), offset in checkpoint.offsets.items():
                    topic_id, _ = self._topic(topic, conn)
                    rows.append((checkpoint.group, topic_id, partition, offset, now))
                conn.executemany("INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?, ?, ?)", rows)
            if checkpoint.state:
                puts = [(c.store, c.partition, c.key, c.value) for c in checkpoint.state if c.value is not None]
                dels = [(c.store, c.partition, c.key) for c in checkpoint.state if c.value is None]
                if puts:
                    conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?, ?)", puts)
                if dels:
                    conn.executemany("DELETE FROM state WHERE store=? AND partition=? AND key=?", dels)
        return result

    def load_state(self, store: str, partition: int) -> dict[bytes, bytes]:
        with self._errors(f"loading state {store!r} from"):
            rows = self._conn().execute("SELECT key, value FROM state WHERE store=? AND partition=?", (store, partition))
            return dict(rows.fetchall())

    def reset_group(self, group: str, *, state_prefix: str | None = None) -> None:
        """Forget a group's offsets (and the state stores under `state_prefix`): it starts over."""
        with self._write(f"resetting group {group!r} in") as conn:
            conn.execute("DELETE FROM group_offsets WHERE grp=?", (group,))
            if state_prefix:
                conn.execute("DELETE FROM state WHERE store >= ? AND store < ?", (state_prefix, state_prefix + "\uffff"))

    # -- leases ----------------------------------------------------------------------------------------------------
    def acquire_leases(self, names: Sequence[str], owner: str, *, takeover_after_s: float = 10.0) -> None:
        host = socket.gethostname()
        now = now_ms()
        # a refusal needs no write lock: another process's busy writers cannot make it wait
        with self._errors(f"claiming pipelines {', '.join(names)} in"):
            self._refuse_if_held(self._conn(), names, owner, host, now, takeover_after_s)
        with self._write(f"claiming pipelines {', '.join(names)} in") as conn:
            self._refuse_if_held(conn, names, owner, host, now, takeover_after_s)  # claimed meanwhile
            conn.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)", [(n, owner, os.getpid(), host, now) for n in names])

    @staticmethod
    def _refuse_if_held(conn: sqlite3.Connection, names: Sequence[str], owner: str, host: str, now: int, takeover_after_s: float) -> None:
        for name in names:
            row = conn.execute("SELECT owner, pid, host, heartbeat_ms FROM leases WHERE name=?", (name,)).fetchone()
            if row is not None and row[0] != owner:
                _, pid, other_host, beat = row
                dead = other_host == host and not pid_alive(pid)
                stale = now - beat > takeover_after_s * 1000
                if not (dead or stale):
                    raise PipelineAlreadyRunningError(
                        f"pipeline {name!r} is already running (pid {pid} on {other_host}, last seen {(now - beat) / 1000:.1f} s ago); stop it first"
                    )

    def check_lease(self, name: str, owner: str) -> None:
        with self._write(f"checking the lease of pipeline {name!r} in") as conn:
            self._renew(conn, name, owner, now_ms())

    def _renew(self, conn: sqlite3.Connection, name: str, owner: str, now: int) -> None:
        if conn.execute("UPDATE leases SET heartbeat_ms=? WHERE name=? AND owner=?", (now, name, owner)).rowcount:
            return
        row = conn.execute("SELECT pid, host FROM leases WHERE name=?", (name,)).fetchone()
        if row is None:
            raise FencedError(f"pipeline {name!r} is no longer held by this process (it stopped here); nothing more is written")
        raise FencedError(f"pipeline {name!r} was taken over by pid {row[0]} on {row[1]}; this process writes nothing more for it")

    def release_lease(self, name: str, owner: str) -> None:
        with self._write(f"releasing pipeline {name!r} in") as conn:
            conn.execute("DELETE FROM leases WHERE name=? AND owner=?", (name, owner))

    def group_members(self, group: str) -> dict[str, list[TP]]:
        now = now_ms()
        with self._errors(f"reading the workers of {group!r} in"):
            conn = self._conn()
            rows = conn.execute("SELECT member, heartbeat_ms FROM members WHERE grp=?", (group,)).fetchall()
            owners = conn.execute("SELECT topic, partition, member FROM owners WHERE grp=? ORDER BY topic, partition", (group,)).fetchall()
        out: dict[str, list[TP]] = {m: [] for m, beat in rows if now - beat <= MEMBER_SESSION_MS}
        for t, p, m in owners:
            if m in out:
                out[m].append((t, p))
        return out

    def join(self, group: str, member: str, topics: Sequence[str], on_revoke: Callable[[set[TP]], None], *, session_s: float = 10.0) -> Membership:
        for t in topics:
            self._topic(t)
        return _SQLiteMembership(self, group, member, list(topics), on_revoke, session_s)

    # -- status ------------------------------------------------------------------------------------------------------
    def put_statuses(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        host, now = socket.gethostname(), now_ms()
        rows = [(name, os.getpid(), host, now, orjson.dumps(st).decode()) for name, st in statuses.items()]
        with self._write("publishing pipeline statuses in") as conn:
            conn.executemany("INSERT OR REPLACE INTO statuses VALUES (?, ?, ?, ?, ?)", rows)

    def statuses(self) -> dict[str, dict[str, Any]]:
        with self._errors("reading pipeline statuses in"):
            rows = self._conn().execute("SELECT name, pid, host, updated_ms, status FROM statuses ORDER BY name").fetchall()
        return {name: {**orjson.loads(st), "pid": pid, "host": host, "updated_ms": at} for name, pid, host, at, st in rows}

    # -- retention -----------------------------------------------------------------------------------------------------
    def enforce_retention(self, at_ms: int | None = None) -> int:
        now = at_ms if at_ms is not None else now_ms()
        dropped = 0
        freed: list[tuple[int, int]] = []
        with self._errors("listing topics of"):
            topics = self._conn().execute("SELECT id, name, config FROM topics").fetchall()
        for topic_id, _name, cfg in topics:
            config = TopicConfig.from_dict(orjson.loads(cfg))
            if config.retention_ms is None and config.retention_bytes is None:
                continue
            with self._write("enforcing retention in") as conn:
                for p in range(config.partitions):
                    doomed: list[tuple[int, int]] = []
                    aged: list[tuple[int, int]] = []
                    if config.retention_ms is not None:
                        aged = conn.execute(
                            "SELECT id, count FROM batches WHERE topic_id=? AND partition=? AND append_ms < ?",
                            (topic_id, p, now - config.retention_ms),
                        ).fetchall()
                    if config.retention_bytes is not None:
                        total = 0
                        for bid, count, size in conn.execute(
                            "SELECT id, count, size FROM batches WHERE topic_id=? AND partition=? ORDER BY base_offset DESC",
                            (topic_id, p),
                        ).fetchall():
                            total += size
                            if total > config.retention_bytes:
                                doomed.append((bid, count))
                    # size retention keeps the newest batch, like Kafka's active segment: a consumer may not have read it yet
                    newest = conn.execute("SELECT id FROM batches WHERE topic_id=? AND partition=? ORDER BY base_offset DESC LIMIT 1", (topic_id, p)).fetchone()
                    ids = {bid: count for bid, count in doomed if newest is None or bid != newest[0]}
                    for bid, count in aged:
                        ids[bid] = count
                    if not ids:
                        continue
                    conn.executemany("DELETE FROM batches WHERE id=?", [(i,) for i in ids])
                    dropped += sum(ids.values())
                    conn.execute(
                        "UPDATE partitions SET start_offset = coalesce("
                        "(SELECT min(base_offset) FROM batches WHERE topic_id=? AND partition=?), end_offset) "
                        "WHERE topic_id=? AND partition=?",
                        (topic_id, p, topic_id, p),
                    )
                    freed.append((topic_id, p))
        for topic_id, p in freed:
            self._free_segments(topic_id, p)
        return dropped

    def _free_segments(self, topic_id: int, partition: int) -> None:
        """Delete the partition's segment files no batch points to. Under the write lock no append is
        between writing a segment and committing its index, so a file not in the index is not in use."""
        with self._write("freeing segments of") as conn:
            used = {s for (s,) in conn.execute("SELECT DISTINCT segment FROM batches WHERE topic_id=? AND partition=?", (topic_id, partition))}
            self.segments.delete_unused(topic_id, partition, used)


def _check_owned(conn: sqlite3.Connection, group: str, member: str, partitions: frozenset[TP]) -> None:
    if not partitions:
        return
    owned = set(conn.execute("SELECT topic, partition FROM owners WHERE grp=? AND member=?", (group, member)).fetchall())
    lost = sorted(tp for tp in partitions if tp not in owned)
    if lost:
        where = ", ".join(f"{t}[{p}]" for t, p in lost[:5])
        raise FencedError(f"pipeline {group!r}: worker {member} no longer owns {where} (another worker took it over); this checkpoint is not applied")


class _SQLiteMembership(Membership):
    """Members and partition owners in two tables of the log file, changed in write transactions."""

    def __init__(self, log_: SQLiteLog, group: str, member: str, topics: list[str], on_revoke: Callable[[set[TP]], None], session_s: float) -> None:
        self.log = log_
        self.on_revoke = on_revoke
        self.group = group
        self.member = member
        self.topics = topics
        self.session_ms = int(session_s * 1000)
        self.owned: set[TP] = set()
        self.host = socket.gethostname()

    def _live(self, conn: sqlite3.Connection, now: int) -> list[str]:
        rows = conn.execute("SELECT member, pid, host, heartbeat_ms FROM members WHERE grp=?", (self.group,)).fetchall()
        live: list[str] = []
        gone: list[str] = []
        for member, pid, host, beat in rows:
            dead = host == self.host and not pid_alive(pid)
            (gone if dead or now - beat > self.session_ms else live).append(member)
        for m in gone:
            conn.execute("DELETE FROM members WHERE grp=? AND member=?", (self.group, m))
        return live

    def sync(self) -> set[TP]:
        now = now_ms()
        with self.log._write(f"syncing worker {self.member} of {self.group!r} in") as conn:
            conn.execute("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?)", (self.group, self.member, os.getpid(), self.host, now))
            live = self._live(conn, now)
            partitions: list[TP] = []
            for t in self.topics:
                topic_id, _ = self.log._topic(t, conn)
                partitions.extend((t, p) for (p,) in conn.execute("SELECT partition FROM partitions WHERE topic_id=?", (topic_id,)))
            mine = spread(live, partitions).get(self.member, set())
            owners = {(t, p): m for t, p, m in conn.execute("SELECT topic, partition, member FROM owners WHERE grp=?", (self.group,))}
            take = [tp for tp in mine if owners.get(tp) not in set(live) - {self.member}]
            conn.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?, ?, ?)", [(self.group, t, p, self.member) for t, p in take])
            owned = {tp for tp, m in owners.items() if m == self.member} | set(take)
        gained = owned - self.owned
        self.owned = owned
        revoked = owned - mine
        if revoked:
            self.on_revoke(revoked)
            self._release(revoked)
        return gained

    def _release(self, partitions: set[TP]) -> None:
        with self.log._write(f"releasing partitions of worker {self.member} in") as conn:
            rows = [(self.group, t, p, self.member) for t, p in partitions]
            conn.executemany("DELETE FROM owners WHERE grp=? AND topic=? AND partition=? AND member=?", rows)
        self.owned -= partitions

    def leave(self) -> None:
        with self.log._write(f"leaving group {self.group!r} in") as conn:
            conn.execute("DELETE FROM owners WHERE grp=? AND member=?", (self.group, self.member))
            conn.execute("DELETE FROM members WHERE grp=? AND member=?", (self.group, self.member))
        self.owned = set()


class _Checkpointer:
    """Copies the write-ahead log into the log file in a thread of its own (SQLite's PASSIVE checkpoint:
    it waits for no reader or writer), so that appends go on meanwhile. Other processes' connections
    do the same for what they append; the last connection to close checkpoints what is left.

    During a burst of appends the copy waits for them to pause (or for the write-ahead log to reach
    WAL_BURST_BYTES): run beside them, it would take the disk and the other core from them.
    """

    IDLE_S = 5.0
    #: appends are taken to have paused when the write-ahead log was not written for this long
    PAUSE_S = 0.25

    def __init__(self, path: Path, *, before: Callable[[], None]) -> None:
        self.path = path
        self._before = before
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def request(self) -> None:
        self._wanted.set()
        with self._lock:
            self._stopping = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-checkpoint", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wanted.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                self._wanted.wait(self.IDLE_S)
                with self._lock:
                    if self._stopping or not self._wanted.is_set():
                        self._thread = None
                        return
                    self._wanted.clear()
                self._await_pause()
                try:
                    self._before()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except (sqlite3.Error, OSError) as exc:  # a full disk: the write-ahead log keeps it all, and the next one retries
                    log.debug("background checkpoint of %s: %s", self.path, exc)
        finally:
            conn.close()

    def _await_pause(self) -> None:
        last = None
        while not self._stopping:
            try:
                st = os.stat(f"{self.path}-wal")
            except OSError:
                return
            if st.st_mtime_ns == last or st.st_size >= WAL_BURST_BYTES:
                return
            last = st.st_mtime_ns
            time.sleep(self.PAUSE_S)


_WHERE = "segment, position, size, data"  # where a stored batch's bytes are


class _Segments:
    """The segment files of the log's partitions: `<folder>/<topic id>-<partition>/<first offset>.seg`.

    Writes happen inside the log's write transaction, at positions its index gives. Each reading
    thread keeps the file it last read of each partition open: it reads on after a segment is deleted
    (retention), and lets it go when it moves on.
    """

    def __init__(self, folder: Path, *, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self._local = threading.local()
        self._dirty: set[Path] = set()  # written since their last sync
        self._lock = threading.Lock()

    def path(self, topic_id: int, partition: int, segment: int) -> Path:
        return self.folder / f"{topic_id}-{partition}" / f"{segment:020d}.seg"

    def write(self, topic_id: int, partition: int, places: Sequence[tuple[int, int]], blobs: Sequence[Sequence[bytes]]) -> None:
        """Write each blob (its parts) at its (segment, position); the blobs of one segment go in one system call."""
        for segment, same in itertools.groupby(zip(places, blobs, strict=True), key=lambda pb: pb[0][0]):
            group = list(same)
            position = group[0][0][1]
            path = self.path(topic_id, partition, segment)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                _write_at(fd, [part for _, parts in group for part in parts], position)
                if self.fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
            if not self.fsync:
                with self._lock:
                    self._dirty.add(path)

    def read(self, topic_id: int, partition: int, segment: int, position: int, size: int) -> bytes | None:
        """`size` bytes at `position` (fewer when the file was cut short); None when the file is gone."""
        files: dict[tuple[int, int], tuple[int, Any]] | None = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
        held = files.get((topic_id, partition))
        if held is None or held[0] != segment:
            if held is not None:
                held[1].close()
                del files[(topic_id, partition)]
            try:
                f = open(self.path(topic_id, partition, segment), "rb", buffering=0)  # noqa: SIM115 - kept open between reads
            except FileNotFoundError:
                return None
            held = files[(topic_id, partition)] = (segment, f)
        return os.pread(held[1].fileno(), size, position)

    def sync(self) -> None:
        """Flush what was written to disk (before SQLite makes the index that points to it durable)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for path in dirty:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def close_readers(self) -> None:
        for _, f in getattr(self._local, "files", {}).values():
            f.close()
        self._local.files = {}

    def delete_unused(self, topic_id: int, partition: int, used: set[int | None]) -> None:
        folder = self.folder / f"{topic_id}-{partition}"
        with contextlib.suppress(FileNotFoundError):
            for f in folder.iterdir():
                if f.suffix == ".seg" and int(f.stem) not in used:
                    f.unlink(missing_ok=True)

    def drop_topic(self, topic_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            for folder in self.folder.iterdir():
                if folder.name.split("-")[0] == str(topic_id):
                    shutil.rmtree(folder, ignore_errors=True)


def _write_at(fd: int, blobs: Sequence[bytes], position: int) -> None:
    """Write the blobs one after another from `position`, whatever the system call takes at a time."""
    buffers = [memoryview(b) for b in blobs]
    while buffers:
        n = os.pwritev(fd, buffers[:512], position)  # at most IOV_MAX buffers a call
        position += n
        while buffers and n >= len(buffers[0]):
            n -= len(buffers[0])
            buffers.pop(0)
        if buffers and n:
            buffers[0] = buffers[0][n:]


def _runs(values: Sequence[bytes]) -> list[Sequence[bytes]]:
    """Split into runs of at most MAX_BATCH_RECORDS values and about MAX_BATCH_BYTES bytes."""
    n = len(values)
    ends = list(itertools.accumulate(map(len, values)))  # ends[i]: bytes of values[0..i]
    out = []
    start = 0
    while start < n:
        stop = min(start + MAX_BATCH_RECORDS, n)
        # the run ends with the value that brings it to MAX_BATCH_BYTES
        full = bisect.bisect_left(ends, (ends[start - 1] if start else 0) + MAX_BATCH_BYTES, start, stop)
        stop = min(stop, full + 1)
        out.append(values[start:stop])
        start = stop
    return out
