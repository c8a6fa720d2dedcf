"""The embedded log: one SQLite file holds topics, record batches, group offsets, keyed state and leases.

Everything a checkpoint commits lives in this one file, because SQLite does not make a
transaction atomic across ATTACHed databases. WAL mode lets readers run beside the one writer;
SQLite's own lock enforces that there is one writer at a time, across processes, and leases
enforce that one pipeline runs in one process at a time.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import os
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
from affluent.core.records import Record, RecordBatch, ValueDecoder, decode_batch, decode_chunks, encode_batch

log = logging.getLogger("affluent.log")

SCHEMA_VERSION = "1"
MAX_BATCH_RECORDS = 8192
MAX_BATCH_BYTES = 1 << 20
#: a worker whose heartbeat is older than this is not listed among a group's live workers
MEMBER_SESSION_MS = 10_000
#: after this many bytes appended, a background thread copies the write-ahead log into the log file
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
    max_ts INTEGER NOT NULL, append_ms INTEGER NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS batches_position ON batches (topic_id, partition, base_offset);
-- retention reads these instead of every batch (the data blobs share the table's pages)
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
        self._checkpointer = _Checkpointer(self.path)
        self._appended = 0  # bytes appended since the write-ahead log's size was last looked at
        self._writes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors("opening"):
            conn = self._conn()
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version != SCHEMA_VERSION:
            raise LogError(f"{self.path}: log schema version {version}, this affluent reads {SCHEMA_VERSION}")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteLog:
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ConfigError(f"bad SQLite log URL {url!r}: expected sqlite:///path/to/log.db")
        return cls(path, **options)

    # -- connections and errors -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_timeout_s, check_same_thread=False)
            # big pages: a 1 MiB record batch is a chain of 16 pages, not 256 (takes effect on a new file)
            conn.execute("PRAGMA page_size=65536")
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
        try:
            yield
        except sqlite3.DatabaseError as exc:
            msg = str(exc)
            where = f"{doing} the log {self.path}"
            if "locked" in msg or "busy" in msg:
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
            conn.close()
            self._local.conn = None
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
            whole = isinstance(idx, range) and len(idx) == len(raw)
            vals = raw if whole else [raw[i] for i in idx]
            times = batch.timestamps if whole else [batch.timestamps[i] for i in idx]
            keys = batch.keys if whole else [batch.keys[i] for i in idx]
            hdrs = batch.headers if (whole or batch.headers is None) else [batch.headers[i] for i in idx]
            rows = []
            for start, stop in _chunks(vals):
                ts = times[start:stop]
                blob = encode_batch(vals[start:stop], ts, keys[start:stop], hdrs[start:stop] if hdrs else None, checked=checked)
                rows.append((topic_id, p, offset, stop - start, min(ts), max(ts), now, len(blob), blob))
                offset += stop - start
            conn.executemany(
                "INSERT INTO batches (topic_id, partition, base_offset, count, min_ts, max_ts, append_ms, size, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("UPDATE partitions SET end_offset=? WHERE topic_id=? AND partition=?", (offset, topic_id, p))
            result[p] = (first, offset - first)
            self._appended += sum(r[7] for r in rows)
        return result

    def _after_write(self, conn: sqlite3.Connection) -> None:
        """Keep the write-ahead log short. Past WAL_CHECKPOINT_BYTES appended (or every CHECK_EVERY
        writes, for state and deletes), a large log is copied into the file by a background thread.
        While appends come without a pause none of them can complete, so past WAL_MAX_BYTES this thread
        waits for one: the next write then starts the write-ahead log over."""
        self._writes += 1
        if self._appended < WAL_CHECKPOINT_BYTES and self._writes % CHECK_EVERY:
            return
        self._appended = 0
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
                "SELECT base_offset, count, data FROM batches WHERE topic_id=? AND partition=? AND base_offset >= "
                "(SELECT coalesce(max(base_offset), 0) FROM batches WHERE topic_id=? AND partition=? AND base_offset <= ?) "
                "ORDER BY base_offset",
                (topic_id, partition, topic_id, partition, offset),
            )
            rows = cur.fetchmany(1)
            if not rows and self._topic_moved(topic, topic_id):
                cur.close()
                return self.read(topic, partition, offset, max_records=max_records)
            for base, count, blob in itertools.chain(rows, cur):
                if base + count <= offset:
                    continue
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
                    "SELECT base_offset, count, data FROM batches WHERE topic_id=? AND partition=? AND base_offset > ? "
                    "AND base_offset + count > ? ORDER BY base_offset LIMIT 1",
                    (topic_id, partition, offset - MAX_BATCH_RECORDS, offset),
                ).fetchone()
            if row is None:
                if seen == 0 and self._topic_moved(topic, topic_id):
                    yield from self.iter_batches(topic, partition, offset, max_records=max_records, decoder=decoder)
                return
            base, count, blob = row
            for b in decode_chunks(
                blob, topic=topic, partition=partition, base_offset=base, start_offset=offset, value_format=config.value_format, decoder=decoder
            ):
                yield b
                seen += len(b)
            offset = base + count

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
        with self._write(f"claiming pipelines {', '.join(names)} in") as conn:
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
            conn.executemany("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?)", [(n, owner, os.getpid(), host, now) for n in names])

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
        return dropped


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

    def __init__(self, path: Path) -> None:
        self.path = path
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
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # a full disk: the write-ahead log keeps it all, and the next one retries
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


def _chunks(values: Sequence[bytes]) -> list[tuple[int, int]]:
    """Split into runs of at most MAX_BATCH_RECORDS records and about MAX_BATCH_BYTES bytes."""
    n = len(values)
    ends = list(itertools.accumulate(map(len, values)))  # ends[i]: bytes of values[0..i]
    out = []
    start = 0
    while start < n:
        stop = min(start + MAX_BATCH_RECORDS, n)
        # the run ends with the value that brings it to MAX_BATCH_BYTES
        full = bisect.bisect_left(ends, (ends[start - 1] if start else 0) + MAX_BATCH_BYTES, start, stop)
        stop = min(stop, full + 1)
        out.append((start, stop))
        start = stop
    return out
