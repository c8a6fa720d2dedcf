"""The Kafka log backend: `kafka://host1:9092,host2:9092?option=value&…`.

One Kafka record per affluent record: other Kafka clients read and write the same topics. The URL's
query holds librdkafka options (`security.protocol`, `sasl.mechanism`, `sasl.username`,
`sasl.password`, …), `producer.<option>` and `consumer.<option>` for one side only,
`append.<option>` for the idempotent producer of plain appends (outside checkpoints), and affluent's
own: `replication_factor` (default: the broker's) and `timeout_s`. Secrets never appear in `url`.

Exactly-once: a checkpoint made under a lease is one Kafka transaction holding the outputs, the
state changes (each state store has a compacted changelog topic, `<store>.changelog`, one partition
per input partition) and the group's input offsets. Readers read committed records only. A lease
is a transactional producer (`transactional.id` = `affluent.<lease>`): a new owner's producer fences
the old one, whose next commit fails and writes nothing. A heartbeat record per lease in the
compacted topic `affluent.leases` lets a second start see a live owner and refuse, as the embedded
log does. Topic layouts that Kafka has no config for (the value format) and pipeline statuses live
in the compacted topics `affluent.topics` and `affluent.statuses`. Retention is the broker's job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import (
    ConfigError,
    FencedError,
    LogError,
    LogUnavailableError,
    MissingDependencyError,
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
    StateChange,
    TopicConfig,
    TopicInfo,
    check_topic_name,
    pid_alive,
    serialise_values,
)
from affluent.core.records import Headers, RecordBatch, ValueDecoder, decode_values

ck: Any
try:  # typed as Any: the clients' own stubs are narrower than the configs librdkafka takes
    import confluent_kafka as ck
    from confluent_kafka.admin import AdminClient as _Admin
    from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

    AdminClient: Any = _Admin
except ImportError:  # pragma: no cover - the `kafka` extra
    ck = None

#: affluent's own topics on a Kafka cluster
TOPICS_TOPIC = "affluent.topics"
LEASES_TOPIC = "affluent.leases"
STATUSES_TOPIC = "affluent.statuses"
#: the event time of a record whose time Kafka cannot hold (1970 and before) travels in this header
TIME_HEADER = "affluent.ts"
CHANGELOG_SUFFIX = ".changelog"
#: how long to wait for the cluster's metadata: a broker that is down is said soon, and retried
METADATA_TIMEOUT_S = 10.0
#: a topic's partition count is looked up again this often: another client may delete or grow it
PARTITIONS_TTL_S = 5.0
_PRODUCER_ONLY = {"linger.ms", "batch.size", "batch.num.messages", "compression.type", "acks", "enable.idempotence", "partitioner"}
_OWN_OPTIONS = {"replication_factor", "timeout_s"}


def _is_secret(key: str) -> bool:
    return any(w in key.lower() for w in ("password", "secret", "token", "key.pem"))


def parse_kafka_url(url: str) -> tuple[str, dict[str, str]]:
    """(bootstrap servers, options) of `kafka://h1:9092,h2:9092?option=value`."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise ConfigError(f"bad Kafka log URL {redact_url(url)!r}: expected kafka://host:9092[,host2:9092][?option=value] (AFFLUENT__LOG__URL)")
    return parts.netloc, dict(parse_qsl(parts.query, keep_blank_values=True))


def redact_url(url: str) -> str:
    """The URL with the values of secret options replaced: safe to log and show."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(f"{k}={'***' if _is_secret(k) else quote(v, safe='')}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{parts.netloc}?{query}"


def _require() -> Any:
    if ck is None:
        raise MissingDependencyError("confluent_kafka", "kafka")
    return ck


class KafkaLog(Log):
    """The Kafka backend (`kafka://host:9092`). Thread-safe: each thread reads with its own consumer."""

    def __init__(self, bootstrap: str, options: Mapping[str, str] | None = None) -> None:
        _require()
        opts = dict(options or {})
        self.bootstrap = bootstrap
        self.url = redact_url(f"kafka://{bootstrap}" + ("?" + "&".join(f"{k}={v}" for k, v in opts.items()) if opts else ""))
        try:
            self.replication_factor = int(opts.pop("replication_factor", "-1"))
            self.timeout_s = float(opts.pop("timeout_s", "30"))
        except ValueError as exc:
            raise ConfigError(f"log URL {self.url}: replication_factor and timeout_s must be numbers ({exc})") from exc
        common = {
            "bootstrap.servers": bootstrap,
            "client.id": f"affluent-{socket.gethostname()}-{os.getpid()}",
            # librdkafka logs each failed connection; affluent reports an unreachable broker itself, once per error
            "log_level": 2,
            "logger": logging.getLogger("affluent.kafka"),
        }
        self._producer_conf = {**common, **{k: v for k, v in opts.items() if not k.startswith(("consumer.", "producer.", "append."))}}
        self._append_conf = {k.removeprefix("append."): v for k, v in opts.items() if k.startswith("append.")}
        self._consumer_conf = {k: v for k, v in self._producer_conf.items() if k not in _PRODUCER_ONLY}
        for k, v in opts.items():
            if k.startswith("producer."):
                self._producer_conf[k.removeprefix("producer.")] = v
            elif k.startswith("consumer."):
                self._consumer_conf[k.removeprefix("consumer.")] = v
        self._admin_conf = dict(self._consumer_conf)
        self._local = threading.local()
        self._lock = threading.RLock()
        self._admin: Any = None
        self._producer: Any = None
        self._plain: Any = None
        self._offsets: Any = None
        self._groups: dict[str, Any] = {}
        #: lease name -> (owner, transactional producer, lock: one transaction at a time)
        self._leases: dict[str, tuple[str, Any, threading.Lock]] = {}
        self._configs: dict[str, TopicConfig] = {}
        #: topic -> (partitions, when looked up)
        self._counts: dict[str, tuple[int, float]] = {}
        self._meta: dict[str, _MetaTopic] = {}
        self._readers: list[_Reader] = []
        #: (group, member) -> this process's membership, and the transactional producer of its checkpoints
        self._members: dict[tuple[str, str], _KafkaMembership] = {}
        self._member_producers: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaLog:
        bootstrap, opts = parse_kafka_url(url)
        opts.update({k: str(v) for k, v in options.items()})
        return cls(bootstrap, opts)

    # -- clients and errors -------------------------------------------------------------------------------
    def _admin_client(self) -> Any:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self._admin_conf)
            return self._admin

    def _new_producer(self, transactional_id: str) -> Any:
        conf = {"linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random", **self._producer_conf}
        prod = ck.Producer({**conf, "transactional.id": transactional_id})
        with self._errors("connecting a producer to"):
            prod.init_transactions(self.timeout_s)
        return prod

    def _plain_producer(self) -> Any:
        """An idempotent producer for appends outside checkpoints: offsets run on without transaction markers."""
        with self._lock:
            if self._plain is None:
                conf = {"enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4", "partitioner": "murmur2_random", **self._producer_conf}
                self._plain = ck.Producer({**conf, **self._append_conf})
            return self._plain

    def _client_producer(self) -> Any:
        """This client's own transactional producer, for writes outside any lease (each append is all or nothing)."""
        with self._lock:
            if self._producer is None:
                self._producer = self._new_producer(f"affluent.client.{uuid.uuid4().hex}")
            return self._producer

    def _transaction(self, prod: Any, doing: str, fill: Callable[[], None], offsets: Callable[[], None] | None = None) -> None:
        """Run `fill` (and `offsets`) in one transaction of `prod`: committed whole, or aborted and raised."""
        try:
            prod.begin_transaction()
            fill()
            if offsets is not None:
                offsets()
            deadline = time.monotonic() + 4 * self.timeout_s
            while True:
                try:
                    prod.commit_transaction(self.timeout_s)
                    return
                except ck.KafkaException as exc:  # a commit that timed out is resumed, never started again
                    if not exc.args[0].retriable() or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        except ck.KafkaException as exc:
            err = exc.args[0]
            mapped = self._error(err, doing)
            if err.fatal() or isinstance(mapped, FencedError):
                self._drop_producer(prod)
            else:
                with contextlib.suppress(ck.KafkaException):
                    prod.abort_transaction(self.timeout_s)
            raise mapped from exc
        except BaseException:
            with contextlib.suppress(ck.KafkaException):
                prod.abort_transaction(self.timeout_s)
            raise

    def _drop_producer(self, prod: Any) -> None:
        with self._lock:
            if prod is self._producer:
                self._producer = None
            if self._plain is not None:
                self._plain.flush(self.timeout_s)
                self._plain = None
            for name, held in list(self._leases.items()):
                if held[1] is prod:
                    del self._leases[name]

    def consumer_conf(self, group: str, **extra: Any) -> dict[str, Any]:
        return {
            **self._consumer_conf,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
            # big fetches: a pipeline reads a backlog in few round trips
            "max.partition.fetch.bytes": 4 << 20,
            **extra,
        }

    def _group_client(self, group: str) -> Any:
        """A consumer of `group` that never subscribes: for its committed offsets and its metadata."""
        with self._lock:
            c = self._groups.get(group)
            if c is None:
                c = self._groups[group] = ck.Consumer(self.consumer_conf(group))
            return c

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except ck.KafkaException as exc:
            raise self._error(exc.args[0] if exc.args else exc, doing) from exc

    def _error(self, err: Any, doing: str) -> Exception:
        code = err.code() if hasattr(err, "code") else None
        where = f"{doing} the Kafka log at {self.bootstrap}"
        text = err.str() if hasattr(err, "str") else str(err)
        E = ck.KafkaError
        if code in (E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_TOPIC, E._UNKNOWN_PARTITION):
            return LogError(f"{where}: {text}")
        if code in (E._FENCED, E.PRODUCER_FENCED, E.INVALID_PRODUCER_EPOCH, E.TRANSACTIONAL_ID_AUTHORIZATION_FAILED):
            return FencedError(f"{where}: this process's pipeline was taken over by another process; it writes nothing more ({text})")
        if code in (E.TOPIC_ALREADY_EXISTS,):
            return LogError(f"{where}: {text}")
        down = (E._TRANSPORT, E._ALL_BROKERS_DOWN, E._TIMED_OUT, E._MSG_TIMED_OUT, E.REQUEST_TIMED_OUT, E._RESOLVE)
        busy = (E.NOT_COORDINATOR, E.COORDINATOR_NOT_AVAILABLE, E.COORDINATOR_LOAD_IN_PROGRESS)
        if code in down + busy or getattr(err, "retriable", lambda: False)():
            return LogUnavailableError(f"{where}: the brokers cannot be reached ({text}); check the setting log.url (AFFLUENT__LOG__URL)")
        return LogError(f"{where}: {text}")

    def close(self) -> None:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None:
            reader.close()
            self._local.reader = None
            self._readers.remove(reader)
        for ms in list(self._members.values()):
            ms.leave()
        with self._lock:
            self._member_producers.clear()
            for _, prod, _ in self._leases.values():
                with contextlib.suppress(Exception):
                    prod.flush(1)
            self._leases.clear()
            self._producer = None
            for c in self._groups.values():
                with contextlib.suppress(Exception):
                    c.close()
            self._groups.clear()
            for m in self._meta.values():
                m.close()
            self._meta.clear()

    # -- topics -----------------------------------------------------------------------------------------
    def _metadata(self, topic: str | None = None) -> Any:
        # every topic's: a request for one topic may create it on brokers that auto-create topics
        with self._errors("reading the metadata of"):
            return self._admin_client().list_topics(timeout=min(self.timeout_s, METADATA_TIMEOUT_S))

    def _partitions(self, name: str) -> int:
        md = self._metadata(name)
        t = md.topics.get(name)
        if t is None or t.error is not None or not t.partitions:
            raise UnknownTopicError(name, self._names())
        return len(t.partitions)

    def _names(self) -> list[str]:
        md = self._metadata()
        return sorted(n for n, t in md.topics.items() if t.error is None and not n.startswith(("__", "affluent.")))

    def _kafka_config(self, config: TopicConfig) -> dict[str, str]:
        conf = {
            "retention.ms": str(config.retention_ms if config.retention_ms is not None else -1),
            "retention.bytes": str(config.retention_bytes if config.retention_bytes is not None else -1),
        }
        if config.compact:
            conf["cleanup.policy"] = "compact"
        return conf

    def _create(self, name: str, partitions: int, conf: Mapping[str, str]) -> bool:
        """Create a topic; False when it exists already."""
        fs = self._admin_client().create_topics([NewTopic(name, partitions, self.replication_factor, config=dict(conf))], operation_timeout=self.timeout_s)
        try:
            fs[name].result(self.timeout_s)
        except ck.KafkaException as exc:
            if exc.args[0].code() == ck.KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise self._error(exc.args[0], f"creating topic {name!r} in") from exc
        self._wait_for(name)
        return True

    def _wait_for(self, name: str) -> None:
        """Until the cluster's metadata lists the new topic (creation is asynchronous on Kafka)."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            t = self._metadata(name).topics.get(name)
            if t is not None and t.error is None and t.partitions:
                return
            time.sleep(0.05)

    def create_topic(self, name: str, config: TopicConfig | None = None, *, exist_ok: bool = True) -> TopicInfo:
        check_topic_name(name)
        config = config or TopicConfig()
        created = self._create(name, config.partitions, self._kafka_config(config))
        if not created:
            if not exist_ok:
                raise TopicExistsError(name)
        else:
            self._meta_topic(TOPICS_TOPIC).put({name: config.to_dict()})
            self._configs[name] = config
        return self.describe_topic(name)

    def delete_topic(self, name: str) -> None:
        self._partitions(name)
        for reader in list(self._readers):
            reader.forget(name)  # librdkafka must not hold a deleted partition: a recreated topic would crash it
        fs = self._admin_client().delete_topics([name], operation_timeout=self.timeout_s)
        try:
            fs[name].result(self.timeout_s)
        except ck.KafkaException as exc:
            raise self._error(exc.args[0], f"deleting topic {name!r} from") from exc
        self._configs.pop(name, None)
        self._counts.pop(name, None)
        self._meta_topic(TOPICS_TOPIC).put({name: None})
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and name in self._metadata().topics:
            time.sleep(0.05)

    def topic_exists(self, name: str) -> bool:
        t = self._metadata(name).topics.get(name)
        return t is not None and t.error is None and bool(t.partitions)

    def list_topics(self) -> list[TopicInfo]:
        out = []
        for n in self._names():
            with contextlib.suppress(UnknownTopicError):
                out.append(self.describe_topic(n))
        return out

    def _config(self, name: str, partitions: int) -> TopicConfig:
        """The topic's layout: as affluent created it, else read from the broker's topic configs."""
        saved = self._meta_topic(TOPICS_TOPIC).latest().get(name)
        if saved is not None and saved.get("partitions") == partitions:
            return TopicConfig.from_dict(saved)
        conf: dict[str, Any] = {"partitions": partitions}
        with contextlib.suppress(Exception):
            fs = self._admin_client().describe_configs([ConfigResource("topic", name)])
            entries = next(iter(fs.values())).result(self.timeout_s)
            for key, field in (("retention.ms", "retention_ms"), ("retention.bytes", "retention_bytes")):
                if key in entries and entries[key].value is not None:
                    v = int(entries[key].value)
                    conf[field] = v if v > 0 else None
            if "cleanup.policy" in entries and "compact" in str(entries["cleanup.policy"].value):
                conf["compact"] = True
        return TopicConfig.from_dict(conf)

    def describe_topic(self, name: str) -> TopicInfo:
        n = self._partitions(name)
        config = self._config(name, n)
        parts = []
        for p, (lo, hi) in sorted(self._watermarks(name, n).items()):
            parts.append(PartitionInfo(p, lo, hi, 0))
        return TopicInfo(name, config, tuple(parts))

    def _watermarks(self, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        with self._errors(f"reading the offsets of topic {topic!r} in"):
            return {p: self.watermarks(topic, p) for p in range(partitions)}

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(first offset held, next offset to be written): records of open transactions count."""
        with self._lock:
            if self._offsets is None:
                # read_uncommitted: the end is where the next record goes, whatever transactions are open
                self._offsets = ck.Consumer(self.consumer_conf("affluent.reader", **{"isolation.level": "read_uncommitted"}))
            c = self._offsets
        lo, hi = c.get_watermark_offsets(ck.TopicPartition(topic, partition), timeout=self.timeout_s, cached=False)
        return int(lo), int(hi)

    def end_offsets(self, topic: str) -> dict[int, int]:
        return {p: hi for p, (_, hi) in self._watermarks(topic, self._partitions_cached(topic)).items()}

    def start_offsets(self, topic: str) -> dict[int, int]:
        return {p: lo for p, (lo, _) in self._watermarks(topic, self._partitions_cached(topic)).items()}

    def _value_format(self, topic: str) -> str:
        cfg = self._configs.get(topic)
        if cfg is None:
            saved = self._meta_topic(TOPICS_TOPIC).latest().get(topic)
            cfg = TopicConfig.from_dict(saved) if saved else TopicConfig()
            self._configs[topic] = cfg
        return cfg.value_format

    # -- data -------------------------------------------------------------------------------------------------
    def append(self, topic: str, batch: OutgoingBatch | Sequence[Any], *, partition: int | None = None) -> dict[int, tuple[int, int]]:
        out = batch if isinstance(batch, OutgoingBatch) else OutgoingBatch.of(batch)
        if not len(out):
            return {}
        n = self._partitions(topic)
        if partition is not None and not 0 <= partition < n:
            raise ConfigError(f"topic {topic!r} has {n} partitions, there is no partition {partition}")
        prod = self._plain_producer()
        with self._lock:  # one append's records are sent together
            delivered = self._produce(prod, topic, out, partition)
            with self._errors(f"appending to topic {topic!r} in"):
                left = prod.flush(self.timeout_s)
        if left:
            raise LogUnavailableError(f"appending to {topic!r} in the Kafka log at {self.bootstrap}: {left} record(s) not acknowledged in {self.timeout_s:g} s")
        return delivered.result(self)

    def _produce(self, prod: Any, topic: str, batch: OutgoingBatch, partition: int | None) -> _Delivered:
        raw, _ = serialise_values(topic, self._value_format(topic), batch)
        delivered = _Delivered(topic, len(raw))
        produce, cb = prod.produce, delivered.callback
        headers = batch.headers
        for i, (k, v, t) in enumerate(zip(batch.keys, raw, batch.timestamps, strict=True)):
            h = headers[i] if headers is not None else None
            hs = [(hk, hv.encode()) for hk, hv in h.items()] if h else None
            if t <= 0:  # librdkafka reads 0 as "now"
                hs = [*(hs or []), (TIME_HEADER, str(t).encode())]
                t = 0
            kwargs: dict[str, Any] = {"key": None if k is None else k.encode(), "value": v, "timestamp": t, "on_delivery": cb}
            if hs:
                kwargs["headers"] = hs
            if partition is not None:
                kwargs["partition"] = partition
            while True:
                try:
                    produce(topic, **kwargs)
                    break
                except BufferError:  # the producer's queue is full: let it drain
                    prod.poll(0.05)
                except ck.KafkaException as exc:
                    raise self._error(exc.args[0], f"appending to topic {topic!r} in") from exc
        return delivered

    def read(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000) -> list[RecordBatch]:
        return list(self.iter_batches(topic, partition, offset, max_records=max_records))

    def iter_batches(self, topic: str, partition: int, offset: int, *, max_records: int = 10_000, decoder: ValueDecoder | None = None) -> Iterator[RecordBatch]:
        n = self._partitions_cached(topic)
        if not 0 <= partition < n:
            raise ConfigError(f"topic {topic!r} has {n} partition(s), there is no partition {partition}")
        fmt = self._value_format(topic)
        msgs, next_offset = self._reader().fetch(topic, partition, offset, max_records)
        yield from _batches(topic, partition, offset, msgs, next_offset, fmt, decoder)

    def _partitions_cached(self, topic: str) -> int:
        """The topic's partition count, looked up again after PARTITIONS_TTL_S (or when this client deletes it)."""
        hit = self._counts.get(topic)
        now = time.monotonic()
        if hit is not None and now - hit[1] < PARTITIONS_TTL_S:
            return hit[0]
        n = self._partitions(topic)
        self._counts[topic] = (n, now)
        return n

    def _reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = _Reader(self, ck.Consumer(self.consumer_conf("affluent.reader", **{"enable.partition.eof": True})))
            self._readers.append(reader)
        return reader

    # -- groups, checkpoints, state -------------------------------------------------------------------------
    def committed(self, group: str, topic: str) -> dict[int, int]:
        n = self._partitions(topic)
        with self._errors(f"reading committed offsets of group {group!r} in"):
            tps = self._group_client(group).committed([ck.TopicPartition(topic, p) for p in range(n)], timeout=self.timeout_s)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def list_groups(self) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, next_offset) for every committed offset of affluent's groups."""
        admin = self._admin_client()
        with self._errors("listing consumer groups of"):
            groups = sorted(g.group_id for g in admin.list_consumer_groups(request_timeout=self.timeout_s).result(self.timeout_s).valid)
        out = []
        for g in groups:
            if g == "affluent.reader":
                continue
            with contextlib.suppress(Exception):
                res = admin.list_consumer_group_offsets([ck.ConsumerGroupTopicPartitions(g)], request_timeout=self.timeout_s)
                for tp in next(iter(res.values())).result(self.timeout_s).topic_partitions:
                    if tp.offset >= 0:
                        out.append((g, tp.topic, tp.partition, tp.offset))
        return sorted(out)

    def commit_checkpoint(self, checkpoint: Checkpoint) -> dict[str, dict[int, tuple[int, int]]]:
        cp = checkpoint
        for topic in [t for t, b in cp.appends.items() if len(b)] + sorted({t for t, _ in cp.offsets}):
            self._partitions_cached(topic)  # an unknown topic fails the checkpoint before anything is written
        self._ensure_changelogs(cp.state)
        if cp.member is not None:
            return self._commit_member(cp)
        if cp.owner is None:
            return self._commit_plain(cp)
        lease = cp.lease or cp.group
        held = self._leases.get(lease)
        if held is None or held[0] != cp.owner:
            raise FencedError(f"pipeline {lease!r} is no longer held by owner {cp.owner} here (it stopped, or was taken over); nothing more is written")
        _, prod, lock = held
        with lock:
            return self._commit(prod, cp)

    def _commit_member(self, cp: Checkpoint) -> dict[str, dict[int, tuple[int, int]]]:
        """A worker's checkpoint: one transaction whose offsets carry the group generation it owns them in."""
        assert cp.member is not None
        ms = self._members.get((cp.group, cp.member))
        lost = sorted(cp.partitions - ms.owned) if ms is not None else sorted(cp.partitions)
        if ms is None or lost:
            where = ", ".join(f"{t}[{p}]" for t, p in lost[:5])
            raise FencedError(f"pipeline {cp.group!r}: worker {cp.member} no longer owns {where}; this checkpoint is not applied")
        key = (cp.group, cp.member)
        with self._lock:
            held = self._member_producers.get(key)
            if held is None:
                held = self._member_producers[key] = (self._new_producer(f"affluent.{cp.group}.{cp.member}"), threading.Lock())
        prod, lock = held
        with lock:
            return self._commit(prod, cp, ms.consumer)

    def _commit(self, prod: Any, cp: Checkpoint, consumer: Any = None) -> dict[str, dict[int, tuple[int, int]]]:
        delivered: list[_Delivered] = []

        def fill() -> None:
            delivered.extend(self._produce(prod, t, b, None) for t, b in cp.appends.items() if len(b))
            self._produce_state(prod, cp.state)

        def offsets() -> None:
            if cp.offsets:
                tps = [ck.TopicPartition(t, p, o) for (t, p), o in cp.offsets.items()]
                metadata = (consumer or self._group_client(cp.group)).consumer_group_metadata()
                prod.send_offsets_to_transaction(tps, metadata, self.timeout_s)

        self._transaction(prod, f"committing a checkpoint of {cp.group!r} to", fill, offsets)
        return {d.topic: d.result(self) for d in delivered}

    def _commit_plain(self, cp: Checkpoint) -> dict[str, dict[int, tuple[int, int]]]:
        """A checkpoint outside any lease (tools, tests): outputs and state in one transaction of this
        client's producer, then the offsets. Only a lease's checkpoint is one transaction in all."""
        result: dict[str, dict[int, tuple[int, int]]] = {}
        if any(len(b) for b in cp.appends.values()) or cp.state:
            prod = self._client_producer()
            with self._lock:
                result = self._commit(prod, Checkpoint(group=cp.group, appends=cp.appends, state=cp.state))
        if cp.offsets:
            with self._errors(f"committing offsets of group {cp.group!r} to"):
                self._group_client(cp.group).commit(offsets=[ck.TopicPartition(t, p, o) for (t, p), o in cp.offsets.items()], asynchronous=False)
        return result

    def _ensure_changelogs(self, changes: Sequence[StateChange]) -> None:
        need: dict[str, int] = {}
        for c in changes:
            need[c.store] = max(need.get(c.store, 0), c.partition + 1)
        known: dict[str, int] = self._local.__dict__.setdefault("changelogs", {})
        for store, n in need.items():
            if known.get(store, 0) >= n:
                continue
            topic = store + CHANGELOG_SUFFIX
            if not self._create(topic, n, {"cleanup.policy": "compact"}):
                have = self._partitions(topic)
                if have < n:
                    fs = self._admin_client().create_partitions([NewPartitions(topic, n)])
                    with self._errors(f"adding partitions to {topic!r} in"):
                        fs[topic].result(self.timeout_s)
                    self._wait_partitions(topic, n)
                n = max(n, have)
            known[store] = n
            self._counts[topic] = (n, time.monotonic())

    def prepare_stores(self, stores: Sequence[str], partitions: int) -> None:
        self._ensure_changelogs([StateChange(store, partitions - 1, b"", None) for store in stores])

    def _wait_partitions(self, topic: str, n: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self._partitions(topic) < n:
            time.sleep(0.05)

    def _produce_state(self, prod: Any, changes: Sequence[StateChange]) -> None:
        for c in changes:
            while True:
                try:
                    prod.produce(c.store + CHANGELOG_SUFFIX, key=c.key, value=c.value, partition=c.partition)
                    break
                except BufferError:
                    prod.poll(0.05)

    def load_state(self, store: str, partition: int) -> dict[bytes, bytes]:
        topic = store + CHANGELOG_SUFFIX
        if not self.topic_exists(topic) or partition >= self._partitions(topic):
            return {}
        state: dict[bytes, bytes] = {}
        for m in self._read_all(topic, partition):
            k = m.key()
            if m.value() is None:
                state.pop(k, None)
            else:
                state[k] = m.value()
        return state

    def _read_all(self, topic: str, partition: int) -> list[Any]:
        """Every committed record of one partition, with a consumer of its own."""
        c = ck.Consumer(self.consumer_conf("affluent.reader", **{"enable.partition.eof": True}))
        try:
            with self._errors(f"reading topic {topic!r} from"):
                lo, hi = self.watermarks(topic, partition)
                if hi <= lo:
                    return []
                c.assign([ck.TopicPartition(topic, partition, lo)])
                out: list[Any] = []
                deadline = time.monotonic() + self.timeout_s
                while time.monotonic() < deadline:
                    for m in c.consume(10_000, 0.2):
                        err = m.error()
                        if err is None:
                            out.append(m)
                        elif err.code() == ck.KafkaError._PARTITION_EOF:
                            return out
                        else:
                            raise self._error(err, f"reading topic {topic!r} from")
                raise LogUnavailableError(f"reading topic {topic!r} from the Kafka log at {self.bootstrap}: not read to its end in {self.timeout_s:g} s")
        finally:
            c.close()

    # -- leases ------------------------------------------------------------------------------------------------
    def acquire_leases(self, names: Sequence[str], owner: str, *, takeover_after_s: float = 10.0) -> None:
        leases = self._meta_topic(LEASES_TOPIC).latest()
        host, now = socket.gethostname(), now_ms()
        for name in names:
            row = leases.get(name)
            if row is None or row.get("owner") in (owner, None):
                continue
            dead = row.get("host") == host and not pid_alive(int(row.get("pid", 0)))
            stale = now - int(row.get("heartbeat_ms", 0)) > takeover_after_s * 1000
            if not (dead or stale):
                ago = (now - int(row["heartbeat_ms"])) / 1000
                who = f"pid {row.get('pid')} on {row.get('host')}"
                raise PipelineAlreadyRunningError(f"pipeline {name!r} is already running ({who}, last seen {ago:.1f} s ago); stop it first")
        for name in names:
            held = self._leases.get(name)
            if held is not None and held[0] == owner:
                continue
            # a new producer with the lease's transactional id fences the previous owner's
            prod = self._new_producer(f"affluent.{name}")
            self._leases[name] = (owner, prod, threading.Lock())
            self._beat(name, owner)

    def _beat(self, name: str, owner: str) -> None:
        self._meta_topic(LEASES_TOPIC).put({name: {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat_ms": now_ms()}})

    def check_lease(self, name: str, owner: str) -> None:
        held = self._leases.get(name)
        row = self._meta_topic(LEASES_TOPIC).latest().get(name)
        if held is None or held[0] != owner or row is None or row.get("owner") != owner:
            if held is not None and held[0] == owner:
                self._leases.pop(name, None)
            if row is None or row.get("owner") is None:
                raise FencedError(f"pipeline {name!r} is no longer held by this process (it stopped here); nothing more is written")
            raise FencedError(f"pipeline {name!r} was taken over by pid {row.get('pid')} on {row.get('host')}; this process writes nothing more for it")
        self._beat(name, owner)

    def release_lease(self, name: str, owner: str) -> None:
        held = self._leases.get(name)
        if held is None or held[0] != owner:
            return
        self._leases.pop(name, None)
        row = self._meta_topic(LEASES_TOPIC).latest().get(name)
        if row is not None and row.get("owner") == owner:
            self._meta_topic(LEASES_TOPIC).put({name: {"owner": None, "heartbeat_ms": now_ms()}})

    def group_members(self, group: str) -> dict[str, list[TP]]:
        admin = self._admin_client()
        with self._errors(f"describing group {group!r} of"):
            desc = admin.describe_consumer_groups([group], request_timeout=self.timeout_s)[group].result(self.timeout_s)
        out: dict[str, list[TP]] = {}
        for m in desc.members:
            parts = m.assignment.topic_partitions if m.assignment is not None else []
            out[(m.client_id or m.member_id).removeprefix("affluent-")] = sorted((tp.topic, tp.partition) for tp in parts)
        return out

    def join(self, group: str, member: str, topics: Sequence[str], on_revoke: Callable[[set[TP]], None], *, session_s: float = 10.0) -> Membership:
        for t in topics:
            self._partitions(t)
        ms = _KafkaMembership(self, group, member, list(topics), on_revoke, session_s)
        self._members[(group, member)] = ms
        return ms

    # -- status ----------------------------------------------------------------------------------------------------
    def put_statuses(self, statuses: Mapping[str, Mapping[str, Any]]) -> None:
        meta = self._meta_topic(STATUSES_TOPIC)
        host, now = socket.gethostname(), now_ms()
        meta.put({name: {**st, "pid": os.getpid(), "host": host, "updated_ms": now} for name, st in statuses.items()})

    def statuses(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in sorted(self._meta_topic(STATUSES_TOPIC).latest().items()) if v is not None}

    def enforce_retention(self, at_ms: int | None = None) -> int:
        return 0  # the brokers enforce each topic's retention.ms and retention.bytes

    # -- affluent's own compacted topics ---------------------------------------------------------------------------
    def _meta_topic(self, name: str) -> _MetaTopic:
        with self._lock:
            m = self._meta.get(name)
            if m is None:
                self._create(name, 1, {"cleanup.policy": "compact"})
                m = self._meta[name] = _MetaTopic(self, name)
            return m


class _Delivered:
    """Collects the delivery reports of one topic's records: {partition: (first offset, count)}."""

    def __init__(self, topic: str, expected: int) -> None:
        self.topic = topic
        self.expected = expected
        self.offsets: dict[int, list[int]] = {}
        self.error: Any = None

    def callback(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.error = err
            return
        lo_n = self.offsets.get(msg.partition())
        off = msg.offset()
        if lo_n is None:
            self.offsets[msg.partition()] = [off, 1]
        else:
            lo_n[0] = min(lo_n[0], off)
            lo_n[1] += 1

    def result(self, log_: KafkaLog) -> dict[int, tuple[int, int]]:
        if self.error is not None:
            raise log_._error(self.error, f"appending to topic {self.topic!r} in")
        return {p: (lo, n) for p, (lo, n) in sorted(self.offsets.items())}


class _Reader:
    """A thread's consumer: reads partitions by offset, remembering where each one is positioned."""

    def __init__(self, log_: KafkaLog, consumer: Any) -> None:
        self.log = log_
        self.consumer = consumer
        #: the next offset the consumer delivers, per assigned (topic, partition)
        self.at: dict[tuple[str, int], int] = {}
        self.buf: dict[tuple[str, int], list[Any]] = {}
        #: where the consumer last reached the end of a partition
        self.eof: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()

    def forget(self, topic: str) -> None:
        """Stop reading `topic`."""
        with self.lock:
            tps = [tp for tp in self.at if tp[0] == topic]
            if tps:
                self.consumer.incremental_unassign([ck.TopicPartition(*tp) for tp in tps])
                for tp in tps:
                    self.at.pop(tp, None)
                    self.buf.pop(tp, None)
                    self.eof.pop(tp, None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()

    def _position(self, tp: tuple[str, int], offset: int) -> None:
        c = self.consumer
        if tp in self.at:
            c.incremental_unassign([ck.TopicPartition(*tp)])
        c.incremental_assign([ck.TopicPartition(tp[0], tp[1], offset)])
        self.at[tp] = offset
        self.buf[tp] = []
        self.eof.pop(tp, None)

    def _poll(self, timeout_s: float) -> None:
        for m in self.consumer.consume(10_000, timeout_s):
            err = m.error()
            tp = (m.topic(), m.partition())
            if err is None:
                buf = self.buf.get(tp)
                if buf is not None:
                    buf.append(m)
                    self.eof.pop(tp, None)
            elif err.code() == ck.KafkaError._PARTITION_EOF:
                self.eof[tp] = m.offset()
            elif err.code() in (ck.KafkaError._UNKNOWN_TOPIC, ck.KafkaError.UNKNOWN_TOPIC_OR_PART):
                raise UnknownTopicError(tp[0])
            elif not err.retriable():
                raise self.log._error(err, f"reading topic {tp[0]!r} partition {tp[1]} from")

    def fetch(self, topic: str, partition: int, offset: int, max_records: int) -> tuple[list[Any], int]:
        """Up to `max_records` records from `offset` on, and the offset to read next (past any
        transaction markers); nothing when the partition holds nothing more now."""
        with self.lock:
            return self._fetch(topic, partition, offset, max_records)

    def _fetch(self, topic: str, partition: int, offset: int, max_records: int) -> tuple[list[Any], int]:
        tp = (topic, partition)
        if self.at.get(tp) != offset:
            self._position(tp, offset)
        buf = self.buf[tp]
        if not buf:
            with self.log._errors(f"reading topic {topic!r} from"):
                self._poll(0)
                if not buf:
                    end = self.log.watermarks(topic, partition)[1]
                    # records are there (or a transaction's, not committed yet): wait a little for the fetch
                    deadline = time.monotonic() + (self.log.timeout_s if tp not in self.eof else 0.5)
                    while end > offset and not buf and self.eof.get(tp, -1) < end and time.monotonic() < deadline:
                        self._poll(0.05)
        first = 0
        while first < len(buf) and buf[first].offset() < offset:
            first += 1
        take = buf[first : first + max_records]
        del buf[: first + len(take)]
        nxt = take[-1].offset() + 1 if take else offset
        if not buf and tp in self.eof and self.eof[tp] > nxt:
            nxt = self.eof[tp]  # transaction markers after the last record
        self.at[tp] = nxt
        return take, nxt


def _batches(
    topic: str, partition: int, offset: int, msgs: list[Any], next_offset: int, value_format: str, decoder: ValueDecoder | None
) -> Iterator[RecordBatch]:
    """Messages as RecordBatches of consecutive offsets (Kafka's offsets have gaps: transaction markers)."""
    start = 0
    for i in range(1, len(msgs) + 1):
        if i == len(msgs) or msgs[i].offset() != msgs[i - 1].offset() + 1:
            yield _batch(topic, partition, msgs[start:i], value_format, decoder)
            start = i
    last = msgs[-1].offset() + 1 if msgs else offset
    if next_offset > last:  # an empty batch moves the reader past offsets that hold no record
        yield RecordBatch(topic, partition, next_offset, [], [], [])


def _batch(topic: str, partition: int, msgs: list[Any], value_format: str, decoder: ValueDecoder | None) -> RecordBatch:
    keys: list[str | None] = []
    raw: list[bytes] = []
    times: list[int] = []
    headers: list[Headers | None] = []
    any_headers = False
    for m in msgs:
        k = m.key()
        keys.append(None if k is None else k.decode("utf-8", "replace"))
        v = m.value()
        raw.append(b"null" if v is None and value_format == "json" else (v or b""))
        t = m.timestamp()[1]
        hs = m.headers()
        if hs:
            h = {hk: (hv or b"").decode("utf-8", "replace") for hk, hv in hs}
            own = h.pop(TIME_HEADER, None)
            if own is not None:
                t = int(own)
            headers.append(h or None)
            any_headers = any_headers or bool(h)
        else:
            headers.append(None)
        times.append(t)
    values, failures = decode_values(raw, value_format, decoder)
    return RecordBatch(topic, partition, msgs[0].offset(), keys, values, times, headers if any_headers else None, failures)


class _KafkaMembership(Membership):
    """A member of the pipeline's Kafka consumer group. Its consumer only holds the assignment (its
    partitions are paused: the task reads them with its own reader); the range assignor gives
    partition p of every input topic to the same member."""

    def __init__(self, log_: KafkaLog, group: str, member: str, topics: list[str], on_revoke: Callable[[set[TP]], None], session_s: float) -> None:
        self.log = log_
        self.group = group
        self.member = member
        self.on_revoke = on_revoke
        self.owned: set[TP] = set()
        self._gained: set[TP] = set()
        session_ms = int(session_s * 1000)
        conf = log_.consumer_conf(
            group,
            **{
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(100, session_ms // 5),
                "partition.assignment.strategy": "range",
                "client.id": f"affluent-{member}",
            },
        )
        self.consumer = ck.Consumer(conf)
        self.consumer.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost)

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        consumer.pause(partitions)
        tps = {(p.topic, p.partition) for p in partitions}
        self.owned |= tps
        self._gained |= tps

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        tps = {(p.topic, p.partition) for p in partitions} & self.owned
        try:
            if tps:
                self.on_revoke(tps)  # checkpointed while this member's generation still owns them
        finally:
            self.owned -= tps
            self._gained -= tps

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self.owned -= tps
        self._gained -= tps
        raise FencedError(f"pipeline {self.group!r}: worker {self.member} was taken for gone and lost {', '.join(f'{t}[{p}]' for t, p in sorted(tps))}")

    def sync(self) -> set[TP]:
        with self.log._errors(f"syncing worker {self.member} of {self.group!r} with"):
            self.consumer.poll(0)  # serves the group's rebalance callbacks
        gained, self._gained = self._gained, set()
        return gained

    def leave(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()
        self.owned = set()
        self.log._members.pop((self.group, self.member), None)


class _MetaTopic:
    """One of affluent's compacted topics, read into memory: the latest JSON value per key."""

    def __init__(self, log_: KafkaLog, name: str) -> None:
        self.log = log_
        self.name = name
        self.values: dict[str, Any] = {}
        self.position = 0
        self.consumer = ck.Consumer(log_.consumer_conf("affluent.reader", **{"enable.partition.eof": True}))
        self.lock = threading.Lock()

    def put(self, items: Mapping[str, Any]) -> None:
        """Write each key's new value (None deletes it), in one transaction."""
        log_ = self.log
        prod = log_._client_producer()

        def fill() -> None:
            for key, value in items.items():
                prod.produce(self.name, key=key.encode(), value=None if value is None else orjson.dumps(value), partition=0)

        with log_._lock:
            log_._transaction(prod, f"writing {self.name!r} in", fill)

    def latest(self) -> dict[str, Any]:
        """Every key's latest value, after reading what was written since the last call."""
        with self.lock, self.log._errors(f"reading {self.name!r} in"):
            c = self.consumer
            end = self.log.watermarks(self.name, 0)[1]
            if end <= self.position:
                return self.values
            c.assign([ck.TopicPartition(self.name, 0, self.position)])
            deadline = time.monotonic() + self.log.timeout_s
            while self.position < end and time.monotonic() < deadline:
                for m in c.consume(10_000, 0.1):
                    err = m.error()
                    if err is not None:
                        if err.code() == ck.KafkaError._PARTITION_EOF:
                            self.position = max(self.position, m.offset())
                            end = min(end, m.offset())
                        continue
                    k = m.key().decode()
                    v = m.value()
                    if v is None:
                        self.values.pop(k, None)
                    else:
                        self.values[k] = orjson.loads(v)
                    self.position = m.offset() + 1
            c.unassign()
            return self.values

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.consumer.close()
