"""The durable log: topics of partitioned, keyed, timestamped records, read by offset.

Two backends implement `Log`: the embedded SQLite log (`sqlite:///path`) and Kafka
(`kafka://host:9092`). Pipelines see only this interface. The one seam that matters for
exactly-once is `commit_checkpoint`: the embedded backend commits a pipeline's outputs, its state
changes and its input offsets in one transaction.
"""

from __future__ import annotations

import os
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from affluent.core.errors import ConfigError
from affluent.core.records import DecodeFailure, Headers, Lines, Record, RecordBatch, ValueDecoder, dumps, encode_values

DAY_MS = 86_400_000
VALUE_FORMATS = ("json", "text", "bytes")


#: more partitions than this is surely a typo: a pipeline reads every partition of its input in each poll
MAX_PARTITIONS = 1024


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """How a topic is laid out and how long it keeps data.

    `retention_ms` and `retention_bytes` (per partition) drop whole old batches; None keeps all.
    `value_format` is "json" (values are JSON documents), "text" or "bytes".
    """

    partitions: int = 1
    retention_ms: int | None = 7 * DAY_MS
    retention_bytes: int | None = None
    value_format: str = "json"
    #: keep only each key's latest record (Kafka's cleanup.policy=compact), for tables and changelogs;
    #: the embedded log keeps every record (a table reads its topic in full either way)
    compact: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ConfigError(f"a topic has 1 to {MAX_PARTITIONS} partitions, not {self.partitions}")
        if self.value_format not in VALUE_FORMATS:
            raise ConfigError(f"value_format must be one of {VALUE_FORMATS}, not {self.value_format!r}")
        if self.retention_ms is not None and self.retention_ms <= 0:
            raise ConfigError("retention_ms must be positive, or None to keep everything")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ConfigError("retention_bytes must be positive, or None for no size limit")

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "retention_ms": self.retention_ms,
            "retention_bytes": self.retention_bytes,
            "value_format": self.value_format,
            "compact": self.compact,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TopicConfig:
        return cls(**{k: d[k] for k in ("partitions", "retention_ms", "retention_bytes", "value_format", "compact") if k in d})


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    start_offset: int  # first offset still stored
    end_offset: int  # next offset to be written
    size_bytes: int
    first_timestamp_ms: int | None = None
    last_timestamp_ms: int | None = None

    @property
    def records(self) -> int:
        return self.end_offset - self.start_offset


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    config: TopicConfig
    partitions: tuple[PartitionInfo, ...] = ()

    @property
    def records(self) -> int:
        return sum(p.records for p in self.partitions)

    @property
    def size_bytes(self) -> int:
        return sum(p.size_bytes for p in self.partitions)


@dataclass(slots=True)
class OutgoingBatch:
    """Records to append to one topic, in columns; values not yet serialised."""

    keys: list[str | None] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    headers: list[Headers | None] | None = None
    # Values already serialised (bytes), appended as they are (a list, or `Lines`).
    raw: bool = False
    # Raw values known to be valid JSON (affluent encoded them): the log need not check them.
    checked: bool = False

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, keys: Sequence[str | None], values: Sequence[Any], timestamps: Sequence[int]) -> None:
        self.keys.extend(keys)
        self.values.extend(values)
        self.timestamps.extend(timestamps)
        if self.headers is not None:
            self.headers.extend([None] * len(values))

    @classmethod
    def of(cls, records: Sequence[Record]) -> OutgoingBatch:
        hs = [r.headers for r in records]
        return cls(
            [r.key for r in records],
            [r.value for r in records],
            [r.timestamp_ms for r in records],
            hs if any(hs) else None,
        )


@dataclass(slots=True)
class StateChange:
    store: str
    partition: int
    key: bytes
    value: bytes | None  # None deletes


TP = tuple[str, int]


@dataclass(slots=True)
class Checkpoint:
    """Everything a pipeline task commits at once.

    appends: outputs per topic; offsets: the next offset to read per (topic, partition) for `group`;
    state: keyed state changes; owner: the lease that must still be held for the commit to apply.
    A member of a group (a worker) sets `member` and `partitions` instead of a lease: the commit
    applies only while that member still owns every one of those input partitions.
    """

    group: str = ""
    owner: str | None = None
    #: the lease `owner` must hold (default: the group's)
    lease: str | None = None
    member: str | None = None
    partitions: frozenset[TP] = frozenset()
    appends: dict[str, OutgoingBatch] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    state: list[StateChange] = field(default_factory=list)

    def output(self, topic: str) -> OutgoingBatch:
        """The batch of serialised values (bytes, valid JSON) bound for `topic`."""
        out = self.appends.get(topic)
        if out is None:
            out = self.appends[topic] = OutgoingBatch(raw=True, checked=True)
        return out

    def is_empty(self) -> bool:
        return not (any(len(b) for b in self.appends.values()) or self.offsets or self.state)


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (a lease or a worker of a dead one is free to take)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def check_topic_name(name: str) -> None:
    """Names every backend accepts (Kafka's rule), so a pipeline runs unchanged on both scales."""
    if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"bad topic name {name!r}: use 1 to 249 of A-Z a-z 0-9 . _ - (not '.' or '..')")


def partition_for(key: str | None, partitions: int, fallback: int = 0) -> int:
    """Stable key → partition; records without a key go to `fallback`."""
    if partitions == 1:
        return 0
    if key is None:
        return fallback % partitions
    return zlib.crc32(key.encode()) % partitions


def serialise_values(topic: str, value_format: str, batch: OutgoingBatch) -> tuple[list[bytes], bool]:
    """Values as stored bytes, and whether each is known to be one valid JSON value (affluent encoded it)."""
    values = batch.values
    if value_format == "json":
        if not batch.raw:
            return encode_values(values), True
        return values if type(values) in (list, Lines) else list(values), batch.checked
    out: list[bytes] = []
    for v in values:
        if isinstance(v, bytes | bytearray | memoryview):
            out.append(bytes(v))
        elif isinstance(v, str) and value_format == "text":
            out.append(v.encode())
        else:
            raise ConfigError(f"topic {topic!r} holds {value_format} values, not {type(v).__name__}")
    return out, True


class Membership(ABC):
    """One member (a worker) of a pipeline's group: which input partitions it owns.

    The partitions of every input topic are spread over the live members by partition number, so
    that partition p of each input lands on one member with the state of p. A member calls `sync`
    often (it is also its heartbeat). Partitions it must give up are handed to `on_revoke`, given at
    `join`, which checkpoints them, and only then released; partitions of a member that is gone are
    taken over.
    """

    group: str
    member: str
    #: the partitions this member owns now
    owned: set[TP]

    @abstractmethod
    def sync(self) -> set[TP]:
        """Heartbeat; give up what the group takes (through `on_revoke`); returns the partitions newly owned."""

    @abstractmethod
    def leave(self) -> None:
        """Release everything and leave the group."""


def spread(members: Sequence[str], partitions: Sequence[TP]) -> dict[str, set[TP]]:
    """Partition p of every topic goes to the (p mod n)-th member, in sorted order."""
    ms = sorted(members)
    out: dict[str, set[TP]] = {m: set() for m in ms}
    for tp in partitions:
        out[ms[tp[1] % len(ms)]].add(tp)
    return out


class Log(ABC):
    """A set of topics. Thread-safe; one instance may be shared by a process's threads."""

    url: str

    # -- topics ------------------------------------------------------------------------------
    @abstractmethod
    def create_topic(self, name: str, config: TopicConfig | None = None, *, exist_ok: bool = True) -> TopicInfo: ...

    @abstractmethod
    def delete_topic(self, name: str) -> None: ...

    @abstractmethod
    def list_topics(self) -> list[TopicInfo]: ...

    @abstractmethod
    def describe_topic(self, name: str) -> TopicInfo: ...

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written, by partition."""
        return {p.partition: p.end_offset for p in self.describe_topic(topic).partitions}

    def start_offsets(self, topic: str) -> dict[int, int]:
        """The oldest offset still held (after retention), by partition."""
        return {p.partition: p.start_offset for p in self.describe_topic(topic).partitions}

    def topic_exists(self, name: str) -> bool:
        return any(t.name == name for t in self.list_topics())

    # -- data ----------------------------------------------------------------------------------
    @abstractmethod
    def append(self, topic: str, batch: OutgoingBatch | Sequence[Record], *, partition: int | None = None) -> dict[int, tuple[int, int]]:
        """Append records; returns {partition: (first_offset, count)}. Keys choose partitions."""

    @abstractmethod
    def read(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000) -> list[RecordBatch]:
        """Batches from `offset` on, at most about `max_records` records; [] at the end of the log."""

    def iter_batches(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000, decoder: ValueDecoder | None = None) -> Iterator[RecordBatch]:
        """Like `read`, but decodes lazily, a small batch at a time (into `decoder`'s types if given)."""
        for b in self.read(topic, partition, offset, max_records=max_records):
            if decoder is not None:
                b = _redecode(b, decoder)
            yield b

    def iter_records(self, topic: str, partition: int, offset: int = 0, *, max_records: int | None = None) -> Iterator[Record]:
        seen = 0
        while True:
            batches = self.read(topic, partition, offset)
            if not batches:
                return
            for b in batches:
                for r in b.records():
                    yield r
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return
                offset = b.next_offset

    # -- consumer groups and checkpoints --------------------------------------------------------
    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed next-offsets of `group` for `topic`, by partition (absent = never committed)."""

    @abstractmethod
    def commit_checkpoint(self, checkpoint: Checkpoint) -> dict[str, dict[int, tuple[int, int]]]:
        """Apply appends, state changes and offsets together. Embedded: atomically."""

    def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        self.commit_checkpoint(Checkpoint(group=group, offsets=dict(offsets)))

    @abstractmethod
    def load_state(self, store: str, partition: int) -> dict[bytes, bytes]: ...

    def list_groups(self) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, next offset) of every committed offset."""
        return []

    def group_members(self, group: str) -> dict[str, list[TP]]:
        """The live workers of `group`, each with the input partitions it owns (empty: none runs as a worker)."""
        return {}

    def prepare_stores(self, stores: Sequence[str], partitions: int) -> None:
        """Make room for state stores kept per input partition, `partitions` of them (Kafka: changelog topics)."""
        return None

    # -- ownership -------------------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, *, takeover_after_s: float = 10.0) -> None:
        """Claim exclusive ownership of `name` (a pipeline), or raise PipelineAlreadyRunningError."""
        self.acquire_leases([name], owner, takeover_after_s=takeover_after_s)

    @abstractmethod
    def acquire_leases(self, names: Sequence[str], owner: str, *, takeover_after_s: float = 10.0) -> None:
        """Claim all of `names` or none: PipelineAlreadyRunningError when one is held by a live owner.

        A lease is taken over only from an owner that is gone: its process is dead, or its heartbeat
        is older than `takeover_after_s`. Owners renew theirs with `check_lease` well within that.
        """

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> None: ...

    def for_child(self) -> tuple[str, dict[str, Any]] | None:
        """How a child process opens this log (`open_log(url, **options)`) to commit under a lease this
        process holds; None when it cannot (the lease lives in this process, as a Kafka producer's does)."""
        return None

    def join(self, group: str, member: str, topics: Sequence[str], on_revoke: Callable[[set[TP]], None], *, session_s: float = 10.0) -> Membership:
        """Join `group` as `member`, to share the partitions of `topics` with its other members.

        on_revoke(partitions) checkpoints partitions this member must give up, before another takes them.
        A member whose heartbeat (its `sync`) is older than `session_s`, or whose process is dead, is gone.
        """
        raise ConfigError(f"the log {self.url} does not spread pipelines over workers yet")

    @abstractmethod
    def check_lease(self, name: str, owner: str) -> None:
        """Raise FencedError unless `owner` still holds the lease on `name` (and renew it)."""

    # -- status -------------------------------------------------------------------------------------
    @abstractmethod
    def put_statuses(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        """Publish each pipeline's latest status (a JSON-able dict), for readers in any process."""

    @abstractmethod
    def statuses(self) -> dict[str, dict[str, Any]]:
        """The latest status published for each pipeline, with `updated_ms`, `pid` and `host` added."""

    # -- housekeeping -------------------------------------------------------------------------------
    @abstractmethod
    def enforce_retention(self, at_ms: int | None = None) -> int:
        """Drop batches past their topic's retention; returns how many records were dropped."""

    def close(self) -> None:
        return None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_log(url: str, **options: Any) -> Log:
    """Open a log by URL: `sqlite:///path/to/file.db` or `kafka://host:9092`."""
    if url.startswith("sqlite://"):
        from affluent.core.sqlite_log import SQLiteLog

        return SQLiteLog.from_url(url, **options)
    if url.startswith("kafka://"):
        from affluent.core.kafka_log import KafkaLog

        return KafkaLog.from_url(url, **options)
    raise ConfigError(f"unknown log URL {url!r}: use sqlite:///path or kafka://host:port")


def _redecode(batch: RecordBatch, decoder: ValueDecoder) -> RecordBatch:
    """Turn a batch of decoded JSON values into the decoder's types (backends without a typed fast path)."""

    values: list[Any] = []
    failures = list(batch.failures)
    for i, v in enumerate(batch.values):
        try:
            values.append(msgspec.convert(v, decoder.schema))
        except msgspec.ValidationError as exc:
            values.append(None)
            failures.append(DecodeFailure(i, dumps(v), f"does not match the schema: {exc}"))
    return RecordBatch(batch.topic, batch.partition, batch.base_offset, batch.keys, values, batch.timestamps, batch.headers, failures)
