"""The runtime: runs pipelines and their sources, batch at a time, with exactly-once checkpoints.

A pipeline task loops: read a batch from each input partition, push it down the operator tree,
and every `commit_interval_ms` commit one checkpoint holding the outputs, the state changes and
the next input offsets. On the embedded log that checkpoint is one SQLite transaction, so a crash
at any point leaves either all of a checkpoint or none of it; on restart the task reloads its
offsets and state and goes on as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any, cast

import orjson

from affluent.core.clock import MAX_EVENT_MS, MIN_EVENT_MS, event_time_error, now_ms
from affluent.core.errors import (
    AffluentError,
    FencedError,
    PipelineError,
    SinkUnavailableError,
    TerminalError,
    TransientError,
)
from affluent.core.log import Checkpoint, Log, Membership, OutgoingBatch, StateChange, TopicConfig, open_log
from affluent.core.metrics import METRICS, Metrics
from affluent.core.operators import Batch, key_str
from affluent.core.pipeline import Pipeline, SourceBinding
from affluent.core.records import Record, RecordBatch, decode_values, dumps, encode_values
from affluent.core.sources import SourcePoll
from affluent.core.stateful import Table
from affluent.core.task_process import ProcessPipelineTask, ProcessSourceTask, can_run_apart

log = logging.getLogger("affluent.runtime")

DEFAULT_LOG_URL = "sqlite:///.affluent/affluent.db"
#: leases are renewed this often (a lease is taken over once its heartbeat is 10 s old)
LEASE_RENEW_MS = 2_000
#: late records of a step are logged at most this often, with their count
LATE_LOG_MS = 60_000
_POSITION = b"position"
#: a worker syncs with its group (heartbeat, partitions to take or give up) this often
SYNC_S = 0.5
#: stored batches smaller than this are processed together, up to about this many records
PROCESS_RECORDS = 2000


def _tps(tps: set[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))


def event_time(t: Any, now: int) -> int:
    """A source record's event time as int epoch ms (0 or None: now); floats are rounded down."""
    if not t:
        return now
    if type(t) is not int:
        if not isinstance(t, int | float) or t != t:
            raise TypeError(f"event time must be epoch ms, got {t!r}")
        t = int(t)
    if not MIN_EVENT_MS <= t <= MAX_EVENT_MS:
        raise ValueError(f"event time {t} ms is out of range")
    return t


def _jsonable(value: Any) -> Any:
    try:
        return orjson.loads(dumps(value))
    except TypeError:
        return repr(value)


def _raw_text(raw: bytes) -> Any:
    """A dead letter keeps the raw value: as JSON when it parses, as text otherwise."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


class TaskContext:
    """What operators see of the task running them."""

    def __init__(self, pipeline: str, metrics: Metrics, owner: str, max_event_ahead_ms: int | None = None) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.owner = owner
        self.max_event_ahead_ms = max_event_ahead_ms
        #: per step: late records not logged yet, and when the last log line was written
        self._late_unlogged: dict[str, tuple[int, int]] = {}
        self.checkpoint = Checkpoint(group=pipeline, owner=owner)
        self.topic = ""
        self.partition = 0
        self.now_wall_ms = now_ms()
        self.dead_letters = 0
        #: input (topic, partition)s that had unread records when this poll began
        self.backlog: set[tuple[str, int]] = set()
        #: input (topic, partition)s read to their end by the last poll: only their watermarks may follow the wall clock
        self.caught_up: set[tuple[str, int]] = set()
        #: every input (topic, partition) of the task
        self.inputs: set[tuple[str, int]] = set()
        #: the state partition of steps that group records from every input partition: 0, or the partition
        #: of the repartition topic being read
        self.scope = 0
        #: repartition topics among the inputs: their partitions are not where records come from
        self.repartition_topics: set[str] = set()

    @contextlib.contextmanager
    def scoped(self, scope: int) -> Iterator[None]:
        old, self.scope = self.scope, scope
        try:
            yield
        finally:
            self.scope = old

    def backlog_partitions(self) -> set[int]:
        """Input partitions (of the topics records come from) with unread records."""
        return {p for t, p in self.backlog if t not in self.repartition_topics}

    def partition_caught_up(self, partition: int) -> bool:
        """Every input topic's `partition` was read to its end by the last poll."""
        return all(tp in self.caught_up for tp in self.inputs if tp[1] == partition)

    @contextlib.contextmanager
    def at_partition(self, partition: int, topic: str = "") -> Iterator[None]:
        old = self.partition, self.topic
        self.partition, self.topic = partition, topic or self.topic
        try:
            yield
        finally:
            self.partition, self.topic = old

    def dead_letter(self, step: str, value: Any, offset: int, error: BaseException | str, *, timestamp_ms: int | None = None, raw: bytes | None = None) -> None:
        """Send one bad record to `<pipeline>.dlq` with why and where it came from."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        doc = {
            "pipeline": self.pipeline,
            "step": step,
            "error": reason,
            "error_type": "DecodeError" if isinstance(error, str) else type(error).__name__,
            "topic": self.topic,
            "partition": self.partition,
            "offset": offset,
            "value": _jsonable(value) if raw is None else _raw_text(raw),
            "failed_at_ms": self.now_wall_ms,
        }
        self.checkpoint.output(f"{self.pipeline}.dlq").extend([None], [dumps(doc)], [timestamp_ms or self.now_wall_ms])
        self.dead_letters += 1
        self.metrics.inc("affluent_dead_letters_total", pipeline=self.pipeline, step=step)
        log.warning("dead letter in %s/%s from %s[%d]@%d: %s", self.pipeline, step, self.topic, self.partition, offset, reason)

    def late_default(self, step: str, batch: Batch) -> None:
        """Late records of a window whose `.late` stream nobody reads go to `<pipeline>.late`."""
        out = self.checkpoint.output(f"{self.pipeline}.late")
        docs = [
            {"step": step, "topic": self.topic, "partition": self.partition, "offset": o, "timestamp_ms": t, "value": _jsonable(v)}
            for v, t, o in zip(batch.values, batch.timestamps, batch.offsets, strict=True)
        ]
        out.extend([k if k is None or type(k) is str else key_str(k) for k in batch.keys], [dumps(d) for d in docs], batch.timestamps)

    def count_late(self, step: str, n: int) -> None:
        self.metrics.inc("affluent_late_records_total", n, pipeline=self.pipeline, step=step)
        pending, last = self._late_unlogged.get(step, (0, -LATE_LOG_MS))
        pending += n
        if self.now_wall_ms - last >= LATE_LOG_MS:
            log.warning(
                "pipeline %s step %s: %d late record(s) (event time before a closed window) went to its .late stream; the count is affluent_late_records_total",
                self.pipeline,
                step,
                pending,
            )
            pending, last = 0, self.now_wall_ms
        self._late_unlogged[step] = (pending, last)

    def count_out(self, target: str, n: int) -> None:
        self.metrics.inc("affluent_records_out_total", n, pipeline=self.pipeline, target=target)

    def count_dropped(self, step: str, n: int) -> None:
        self.metrics.inc("affluent_records_dropped_total", n, pipeline=self.pipeline, step=step)


class PipelineTask:
    """Runs one pipeline over the partitions of its input topics, in one thread.

    Alone (the default), the task holds the pipeline's lease and reads every partition. As a worker
    (`member` set), it shares the partitions with the pipeline's other workers: it owns those the
    group gives it, restores exactly their state, and checkpoints before letting one go.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        log_: Log,
        *,
        metrics: Metrics | None = None,
        owner: str | None = None,
        member: str | None = None,
        parent_lease: bool = False,
    ) -> None:
        """parent_lease: the lease is held, renewed and released by the process that started this one
        (a pipeline in a process of its own); the task commits under it."""
        self.pipeline = pipeline
        self.parent_lease = parent_lease
        self.log = log_
        self.member = member
        self.membership: Membership | None = None
        self._next_sync = 0.0
        self.metrics = metrics or METRICS
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ctx = TaskContext(pipeline.name, self.metrics, self.owner, pipeline.max_event_ahead_ms)
        #: why this task lost its lease (set by the runtime's lease heartbeat): it then writes nothing more
        self.lost: str | None = None
        self.positions: dict[tuple[str, int], int] = {}
        self.table_positions: dict[tuple[str, int], int] = {}
        self.table_checked: dict[tuple[Any, ...], int] = {}
        self.records_in = 0
        self.last_commit_wall = 0
        self.status = "created"
        self.error: str | None = None
        self._dirty_offsets: set[tuple[str, int]] = set()
        self._multi_partition = False
        self._uncommitted = 0
        #: set by `Runtime.run_to_end` once the input has ended: the task's thread then calls `finish`
        self.end_requested = False
        #: set by `Runtime.run_to_end`: the input is bounded, so the task commits as soon as it has read all of it
        self.bounded = False
        self._wake = threading.Event()  # set to end a wait between polls early
        #: set at each poll that read nothing (so after it ended too): a runtime waiting for the end of the
        #: input shares its own here, and asks again
        self.progress = threading.Event()
        self._sinks_open = False
        self.ended = False

    # -- lifecycle ------------------------------------------------------------------------------------------
    def open(self) -> None:
        p, lg = self.pipeline, self.log
        for topic, node in p.inputs.items():
            if not lg.topic_exists(topic):
                lg.create_topic(topic, node.config or TopicConfig())
        for topic, cfg in p.output_topics.items():
            if not lg.topic_exists(topic):
                lg.create_topic(topic, cfg or TopicConfig())
        for topic in (p.dlq_topic, f"{p.name}.late"):
            if not lg.topic_exists(topic):
                lg.create_topic(topic, TopicConfig(retention_ms=30 * 86_400_000))
        widest = max((len(lg.describe_topic(t).partitions) for t in p.inputs), default=1)
        lg.prepare_stores([f"{p.name}.{n.name}" for n in p.stateful_nodes()] + [f"{p.name}.tables"], widest)
        if self.member is None:
            if not self.parent_lease:
                lg.acquire_lease(p.name, self.owner)
        else:
            reasons = [r for n in p.nodes() if (r := n.single_owner_reason()) is not None]
            if reasons:
                raise PipelineError(f"pipeline {p.name!r} cannot be spread over workers: {'; '.join(reasons)}")
            for n in p.stateful_nodes():
                n.by_partition = True
            self.membership = lg.join(p.name, self.member, list(p.inputs), self._revoke)
            self.membership.sync()
            self._next_sync = time.monotonic() + SYNC_S
        try:
            self._open_sinks()
        except TransientError as exc:
            # a store that is down at start: the pipeline waits for it (the next polls try again, with back-off)
            # while the other pipelines go on
            self.error = str(exc)
            log.warning("pipeline %s: %s; its sinks are opened again before it reads", p.name, exc)
        self._load()
        self.status = "running"

    def _open_sinks(self) -> None:
        """Open every sink, or none: one that fails for now (TransientError, OSError) leaves them all closed."""
        try:
            for sink in self.pipeline.sinks:
                sink.open()
        except (TransientError, OSError) as exc:
            for sink in self.pipeline.sinks:
                with contextlib.suppress(Exception):
                    sink.close()
            if isinstance(exc, OSError):
                raise SinkUnavailableError(f"pipeline {self.pipeline.name}: a sink cannot open: {exc}") from exc
            raise
        self._sinks_open = True
        self.error = None  # nothing else has run yet: the error, if any, was theirs

    def _owns(self, tp: tuple[str, int]) -> bool:
        return self.membership is None or tp in self.membership.owned

    def sync(self) -> None:
        """A worker's turn with its group: checkpoint and let go of partitions, take new ones."""
        ms = self.membership
        if ms is None or time.monotonic() < self._next_sync:
            return
        self._next_sync = time.monotonic() + SYNC_S
        gained = ms.sync()
        if gained:
            self._take(gained)
            log.info("pipeline %s: worker %s took %s", self.pipeline.name, self.member, _tps(gained))

    def _revoke(self, tps: set[tuple[str, int]]) -> None:
        """The group takes `tps` from this worker: checkpoint what was read of them, then forget them."""
        self.commit(force=True)
        self._drop(tps)
        log.info("pipeline %s: worker %s let go of %s", self.pipeline.name, self.member, _tps(tps))

    def _take(self, tps: set[tuple[str, int]]) -> None:
        """Start reading `tps` from their committed offsets, with the state of their partitions."""
        p, lg = self.pipeline, self.log
        before = {part for _, part in self.positions}
        for topic in {t for t, _ in tps}:
            committed = lg.committed(p.name, topic)
            starts = lg.start_offsets(topic)
            for t, part in tps:
                if t == topic:
                    self.positions[(t, part)] = committed.get(part, starts.get(part, 0))
        now = now_ms()
        for part_no in sorted({part for _, part in self.positions} - before):
            for node in p.stateful_nodes():
                node.open_partition(part_no, lg.load_state(node.store, part_no), now)
        self._multi_partition = True
        self.ctx.inputs = set(self.positions)

    def _drop(self, tps: set[tuple[str, int]]) -> None:
        """Forget `tps` and the state of partitions no longer read at all (their checkpoint is committed)."""
        for tp in tps:
            self.positions.pop(tp, None)
            self._dirty_offsets.discard(tp)
            self.ctx.caught_up.discard(tp)
        left = {part for _, part in self.positions}
        for part_no in {part for _, part in tps} - left:
            for node in self.pipeline.stateful_nodes():
                node.close_partition(part_no)
        self.ctx.inputs = set(self.positions)

    def _load(self) -> None:
        """(Re)load offsets and state from the last committed checkpoint."""
        p, lg = self.pipeline, self.log
        self.positions.clear()
        partitions: set[int] = set()
        for topic in p.inputs:
            info = lg.describe_topic(topic)
            committed = lg.committed(p.name, topic)
            for part in info.partitions:
                if self._owns((topic, part.partition)):
                    self.positions[(topic, part.partition)] = committed.get(part.partition, part.start_offset)
                    partitions.add(part.partition)
        now = now_ms()
        for node in p.stateful_nodes():
            node.store = f"{p.name}.{node.name}"
            node.reset()
            for part_no in sorted(partitions):
                node.open_partition(part_no, lg.load_state(node.store, part_no), now)
        # how far each table topic was read at the last checkpoint: its bad rows were dead-lettered then
        self.table_checked = {tuple(orjson.loads(k)): int(v) for k, v in lg.load_state(f"{p.name}.tables", 0).items()}
        for table in p.tables.values():
            table.rows.clear()
            info = lg.describe_topic(table.topic)
            for part in info.partitions:
                self.table_positions[(table.topic, part.partition)] = part.start_offset
        self.ctx.checkpoint = self._checkpoint()
        for sink in p.sinks:
            sink.discard()  # what they took since the last checkpoint will be written again
        self._refresh_tables()  # after the fresh checkpoint: dead letters of bad table rows go in it
        self._multi_partition = self.membership is not None or any(part > 0 for _, part in self.positions)
        self.ctx.inputs = set(self.positions)
        self.ctx.repartition_topics = set(p.repartition_topics)
        self._dirty_offsets.clear()
        self._uncommitted = 0

    def close(self) -> None:
        committed = False
        try:
            if self.status == "running":
                self.commit()
                committed = True
        except Exception as exc:  # the last checkpoint failed: it is replayed at the next start
            log.error("pipeline %s: the final commit failed: %s", self.pipeline.name, exc)
            if self.status == "running":
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
        if not committed:  # fenced, failed or not committed: what the sinks hold is written again by the owner
            for sink in self.pipeline.sinks:
                with contextlib.suppress(Exception):
                    sink.discard()
        for sink in self.pipeline.sinks:
            with contextlib.suppress(Exception):
                sink.close()
        with contextlib.suppress(Exception):
            if self.membership is not None:
                self.membership.leave()
            elif not self.parent_lease:
                self.log.release_lease(self.pipeline.name, self.owner)
        if self.status == "running":
            self.status = "stopped"

    # -- the loop --------------------------------------------------------------------------------------------
    def _refresh_tables(self) -> int:
        n = 0
        for (topic, part), pos in list(self.table_positions.items()):
            tables = [t for t in self.pipeline.tables.values() if t.topic == topic]
            while True:
                batches = self.log.read(topic, part, pos, max_records=self.pipeline.max_poll_records)
                if not batches:
                    break
                for b in batches:
                    self._apply_table_batch(tables, b)
                    pos = b.next_offset
                    n += len(b)
            self.table_positions[(topic, part)] = pos
        return n

    def _apply_table_batch(self, tables: list[Table], b: RecordBatch) -> None:
        ctx = self.ctx
        checked = self.table_checked.get((b.topic, b.partition), -1)
        with ctx.at_partition(b.partition, b.topic):
            bad = {f.index for f in b.failures}
            for f in b.failures:
                if b.base_offset + f.index >= checked:
                    ctx.dead_letter(f"{b.topic}.decode", None, b.base_offset + f.index, f.error, timestamp_ms=b.timestamps[f.index], raw=f.raw)
            keys, values = b.keys, b.values
            if bad:
                idx = [i for i in range(len(b)) if i not in bad]
                keys, values = [keys[i] for i in idx], [values[i] for i in idx]
                offsets = [b.base_offset + i for i in idx]
            else:
                offsets = list(range(b.base_offset, b.next_offset))
            for t in tables:
                for i, exc in t.apply(keys, values):
                    if offsets[i] >= checked:
                        ctx.dead_letter(t.name, values[i], offsets[i], exc)

    def poll_once(self) -> int:
        """Read and process one round of batches; returns how many records were read."""
        if not self._sinks_open:
            self._open_sinks()  # nothing is read before the pipeline's sinks can take what it makes
        ctx = self.ctx
        ctx.now_wall_ms = now_ms()
        has_tables = bool(self.pipeline.tables)
        total = 0
        budget = self.pipeline.max_poll_records
        if self._multi_partition:
            ends: dict[tuple[str, int], int] = {}
            for topic in self.pipeline.inputs:
                ends.update({(topic, p): e for p, e in self.log.end_offsets(topic).items()})
            ctx.backlog = {tp for tp, pos in self.positions.items() if ends.get(tp, pos) > pos}
        for (topic, part), pos in self.positions.items():
            root = self.pipeline.inputs[topic]
            ctx.topic, ctx.partition = topic, part
            before = pos
            read_here = 0
            limit = budget
            if self._multi_partition:
                # no further than the ends the backlog was taken at: records a source committed since, to
                # this partition and others, are read at the next poll, with those others in its backlog
                # (read now, they would move a window's watermark past the others' records)
                limit = min(budget, ends.get((topic, part), pos) - pos)
            # small stored batches (a source's polls) are processed together: per-batch costs are paid once
            pending: list[Batch] = []
            pending_n = 0
            for rb in self.log.iter_batches(topic, part, pos, max_records=limit, decoder=root.decoder) if limit > 0 else ():
                n = len(rb)
                if not n:  # offsets that hold no record (Kafka's transaction markers)
                    pos = rb.next_offset
                    continue
                batch = Batch(rb.keys, rb.values, rb.timestamps, range(rb.base_offset, rb.base_offset + n))
                if rb.failures:
                    bad = {f.index for f in rb.failures}
                    if root.dead_letters:
                        for f in rb.failures:
                            ctx.dead_letter(f"{topic}.decode", None, rb.base_offset + f.index, f.error, timestamp_ms=rb.timestamps[f.index], raw=f.raw)
                    else:  # another pipeline reading this topic dead-letters them
                        ctx.count_dropped(f"{topic}.decode", len(bad))
                    batch = batch.take([i for i in range(n) if i not in bad])
                pending.append(batch)
                pending_n += len(batch)
                if pending_n >= PROCESS_RECORDS:
                    self._process(root, pending, has_tables)
                    pending, pending_n = [], 0
                pos = rb.next_offset
                total += n
                read_here += n
            self._process(root, pending, has_tables)
            if read_here < budget:
                ctx.caught_up.add((topic, part))
            else:
                ctx.caught_up.discard((topic, part))
            if pos != before:
                self.positions[(topic, part)] = pos
                self._dirty_offsets.add((topic, part))
        if total:
            self.records_in += total
            self._uncommitted += total
            self.metrics.inc("affluent_records_in_total", total, pipeline=self.pipeline.name)
        for node in self.pipeline.stateful_nodes():
            node.tick(ctx, ctx.now_wall_ms)
        return total

    def _process(self, root: Any, batches: list[Batch], has_tables: bool) -> None:
        if not batches:
            return
        if has_tables:
            # after reading input, so that a table row committed with (or before) it is seen
            self._refresh_tables()
        if len(batches) == 1:
            root.process(batches[0], self.ctx)
            return
        join = chain.from_iterable
        merged = Batch(
            list(join(b.keys for b in batches)),
            list(join(b.values for b in batches)),
            list(join(b.timestamps for b in batches)),
            list(join(b.offsets for b in batches)),
        )
        root.process(merged, self.ctx)

    def caught_up(self) -> bool:
        """True when the task runs, has read everything its input topics hold, and has committed the
        records it made of them (another pipeline may read those)."""
        if self.status != "running" or any(len(b) for b in list(self.ctx.checkpoint.appends.values())):
            return False
        ends: dict[str, dict[int, int]] = {}
        for (topic, part), pos in list(self.positions.items()):
            end = (ends.get(topic) or ends.setdefault(topic, self.log.end_offsets(topic))).get(part, pos)
            if pos < end:
                return False
        return True

    def request_stop(self) -> None:
        """Wake the task's thread, waiting between polls, to see that it is asked to stop."""
        self._wake.set()

    def request_end(self) -> None:
        """The input has ended: the task's thread calls `finish` once it has read everything."""
        self.end_requested = True
        self._wake.set()

    def finish(self) -> None:
        """Treat the input as ended: close every open window, then commit."""
        for node in self.pipeline.stateful_nodes():
            close_all = getattr(node, "close_all", None)
            if close_all is not None:
                close_all(self.ctx)
        self.commit(force=True)
        self.ended = True

    def drain(self) -> int:
        """Process everything the input topics hold now, committing as it goes; returns records read."""
        total = 0
        while True:
            n = self.poll_once()
            total += n
            if now_ms() - self.last_commit_wall >= self.pipeline.commit_interval_ms:
                self.commit()
            if n == 0:
                break
        self.commit()
        return total

    def _checkpoint(self) -> Checkpoint:
        if self.member is None:
            return Checkpoint(group=self.pipeline.name, owner=self.owner)
        return Checkpoint(group=self.pipeline.name, member=self.member)

    def commit(self, *, force: bool = False) -> None:
        cp = self.ctx.checkpoint
        if self.member is not None:  # applied only while this worker owns every partition it read
            cp.partitions = frozenset(self.positions)
        changes: list[StateChange] = []
        for node in self.pipeline.stateful_nodes():
            changes.extend(node.state_changes())
        for tp, pos in self.table_positions.items():
            if pos > self.table_checked.get(tp, -1):
                self.table_checked[tp] = pos
                changes.append(StateChange(f"{self.pipeline.name}.tables", 0, orjson.dumps(list(tp)), str(pos).encode()))
        cp.state = changes
        cp.offsets = {tp: self.positions[tp] for tp in self._dirty_offsets}
        if cp.is_empty() and (force or now_ms() - self.last_commit_wall < LEASE_RENEW_MS):
            return  # nothing to commit, and the lease is fresh enough
        if self.lost is not None:
            raise FencedError(self.lost)
        if self.pipeline.sinks:
            # a process that lost its lease must not write outside the log either
            if self.member is None:
                self.log.check_lease(self.pipeline.name, self.owner)
            for sink in self.pipeline.sinks if self._sinks_open else ():  # sinks not open yet took nothing
                try:
                    sink.flush()
                except OSError as exc:  # a full or read-only disk: the checkpoint is retried
                    raise SinkUnavailableError(f"sink {sink.name}: {exc}") from exc
        self.log.commit_checkpoint(cp)
        self.metrics.inc("affluent_checkpoints_total", pipeline=self.pipeline.name)
        self.ctx.checkpoint = self._checkpoint()
        self._dirty_offsets.clear()
        self._uncommitted = 0
        self.last_commit_wall = now_ms()

    def run(self, stop: threading.Event, *, until: Callable[[PipelineTask], bool] | None = None) -> None:
        p = self.pipeline
        try:
            self.open()
            self.last_commit_wall = now_ms()
            backoff = 0.1
            reload = False
            while not stop.is_set():
                if self.lost is not None:
                    raise FencedError(self.lost)
                try:
                    if reload:  # back to the last committed checkpoint
                        self._load()
                        reload, self.error = False, None
                    self.sync()
                    n = self.poll_once()
                    if n == 0 and self.end_requested and not self.ended:
                        self.finish()
                    elif now_ms() - self.last_commit_wall >= p.commit_interval_ms:
                        self.commit()
                    elif n == 0 and self.bounded:
                        self.commit(force=True)  # all read: what it made is committed now, not at the next interval
                    backoff = 0.1
                except FencedError as exc:
                    if self.membership is None:
                        raise
                    # a worker taken for gone lost partitions to another: back to what it owns, from the last checkpoint
                    log.warning("pipeline %s: worker %s: %s; going on from its last checkpoint", p.name, self.member, exc)
                    self.membership.sync()
                    reload = True
                    continue
                except TransientError as exc:
                    # a full, read-only or busy disk: the failed checkpoint rolled back; retry from the last one
                    log.error("pipeline %s: %s; retrying from the last checkpoint in %.1f s", p.name, exc, backoff)
                    self.metrics.inc("affluent_task_errors_total", pipeline=p.name, error=type(exc).__name__)
                    self.error = str(exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    reload = True
                    continue
                if until is not None and until(self):
                    break
                if n == 0:
                    self.progress.set()
                    self._wake.wait(p.poll_interval_ms / 1000)
                    self._wake.clear()
            if stop.is_set():
                self._drain()
        except FencedError as exc:
            self.status, self.error = "fenced", str(exc)
            log.error("pipeline %s stopped: %s", p.name, exc)
            raise
        except TerminalError as exc:
            self.status, self.error = "failed", str(exc)
            log.error("pipeline %s failed: %s", p.name, exc)
            raise
        except Exception as exc:
            self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error("pipeline %s crashed:\n%s", p.name, traceback.format_exc())
            raise
        finally:
            self.close()

    def _drain(self, max_s: float = 2.0) -> None:
        """Stopping: read what the stopped sources appended last, so that the final commit holds it too.

        Bounded: a pipeline far behind stops after `max_s` and reads the rest at its next start.
        """
        deadline = time.monotonic() + max_s
        with contextlib.suppress(TransientError):
            while self.lost is None and time.monotonic() < deadline and self.poll_once():
                pass


class SourceTask:
    """Polls one source and appends what it returns, saving its position in the same transaction."""

    def __init__(
        self,
        binding: SourceBinding,
        log_: Log,
        *,
        metrics: Metrics | None = None,
        max_backoff_s: float = 30.0,
        dlq_topic: str | None = None,
        lease: tuple[str, str] | None = None,
        max_event_ahead_ms: int | None = None,
        pipeline: str | None = None,
    ) -> None:
        self.binding = binding
        self.max_event_ahead_ms = max_event_ahead_ms
        self.lease = lease  # (pipeline, owner): a source appends only while its pipeline's lease is held
        self.dlq_topic = dlq_topic or f"{binding.topic}.dlq"
        self._pending: tuple[Checkpoint, SourcePoll] | None = None
        self.log = log_
        self.metrics = metrics or METRICS
        # resume position: per pipeline, so that two pipelines' sources of the same name do not mix
        owner_name = pipeline or (lease[0] if lease else None)
        #: the pipeline this source feeds
        self.pipeline = owner_name
        self.store = f"{owner_name}.source.{binding.source.name}" if owner_name else f"source.{binding.source.name}"
        self.status = "created"
        self.error: str | None = None
        self.records_out = 0
        #: the newest event time this source appended
        self.last_event_ms: int | None = None
        self.polls = 0
        self.max_backoff_s = max_backoff_s
        #: set once it is done: a runtime waiting for the end of the input shares its own here, and asks again
        self.progress = threading.Event()

    def open(self) -> None:
        b = self.binding
        if not self.log.topic_exists(b.topic):
            self.log.create_topic(b.topic, b.config or TopicConfig())
        if not self.log.topic_exists(self.dlq_topic):
            self.log.create_topic(self.dlq_topic, TopicConfig(retention_ms=30 * 86_400_000))
        saved = self.log.load_state(self.store, 0).get(_POSITION)
        b.source.open(orjson.loads(saved) if saved is not None else None)
        self.status = "running"

    def poll_once(self) -> tuple[float, bool]:
        """One poll and its commit; returns (seconds to wait, done).

        When the commit fails (a busy or full disk), the poll's records are kept and the next call
        commits them before polling again: the source has moved past them already.
        """
        src, b = self.binding.source, self.binding
        if self._pending is None:
            result = src.poll()
            self.polls += 1
            self._pending = (self._checkpoint(result), result)
        cp, result = self._pending
        if not cp.is_empty():
            self.log.commit_checkpoint(cp)
        self._pending = None
        src.committed(result.position)
        n = len(cp.appends[b.topic]) if b.topic in cp.appends else 0
        self.records_out += n
        if n:
            newest = max(cp.appends[b.topic].timestamps)
            self.last_event_ms = newest if self.last_event_ms is None else max(self.last_event_ms, newest)
            self.metrics.inc("affluent_source_records_total", n, source=src.name)
        self.metrics.set("affluent_source_last_poll_ms", now_ms(), source=src.name)
        return result.wait_s, result.done

    def _checkpoint(self, result: SourcePoll) -> Checkpoint:
        b = self.binding
        cp = Checkpoint(group=self.store)
        if self.lease is not None:
            cp.lease, cp.owner = self.lease
        records, raw = result.records, result.raw
        if raw and (b.key is not None or records):  # to be keyed, or beside records: as records
            records, raw = records + self._decoded(cp, raw), None
        if records:
            now = now_ms()
            out = OutgoingBatch(headers=[] if any(r.headers for r in records) else None)
            key = b.key
            for r in records:
                k = r.key
                try:
                    if key is not None:
                        k = key(r.value)
                except Exception as exc:  # one bad record: a dead letter, the others go on
                    self._dead_letter(cp, r, exc, "key")
                    continue
                try:
                    t = event_time(r.timestamp_ms, now)
                    if self.max_event_ahead_ms is not None and t - now > self.max_event_ahead_ms:
                        raise ValueError(event_time_error(t, now, self.max_event_ahead_ms))
                except Exception as exc:
                    self._dead_letter(cp, r, exc, "event-time")
                    continue
                out.keys.append(k if k is None or type(k) is str else str(k))
                out.values.append(r.value)
                out.timestamps.append(t)
                if out.headers is not None:
                    out.headers.append(r.headers)
            try:
                encoded = OutgoingBatch(out.keys, encode_values(out.values), out.timestamps, out.headers, raw=True, checked=True)
            except TypeError:
                encoded = OutgoingBatch(headers=[] if out.headers is not None else None, raw=True, checked=True)
                for i, v in enumerate(out.values):
                    try:
                        one = dumps(v)
                    except TypeError as exc:
                        self._dead_letter(cp, Record(value=repr(v), key=out.keys[i], timestamp_ms=out.timestamps[i]), exc, "encode")
                        continue
                    encoded.keys.append(out.keys[i])
                    encoded.values.append(one)
                    encoded.timestamps.append(out.timestamps[i])
                    if encoded.headers is not None and out.headers is not None:
                        encoded.headers.append(out.headers[i])
            if len(encoded):
                cp.appends[b.topic] = encoded
        if raw:
            cp.appends[b.topic] = OutgoingBatch([None] * len(raw), cast(list[bytes], raw), [now_ms()] * len(raw), raw=True)  # or Lines: the logs take both
        if result.position is not None:
            cp.state.append(StateChange(self.store, 0, _POSITION, dumps(result.position)))
        return cp

    def _decoded(self, cp: Checkpoint, raw: Sequence[bytes]) -> list[Record]:
        """Serialised values as records, to be keyed; those that are not JSON are dead letters."""
        values, failures = decode_values(raw)
        for f in failures:
            self._dead_letter(cp, Record(value=f.raw.decode("utf-8", "replace")), ValueError(f.error), "decode")
        bad = {f.index for f in failures}
        return [Record(value=v) for i, v in enumerate(values) if i not in bad]

    def _dead_letter(self, cp: Checkpoint, r: Record, exc: BaseException, what: str) -> None:
        src = self.binding.source.name
        step = f"{src}.{what}"
        doc = {
            "source": src,
            "step": step,
            "error": f"{type(exc).__name__}: {exc}",
            "error_type": type(exc).__name__,
            "topic": self.binding.topic,
            "partition": None,
            "offset": None,
            "value": _jsonable(r.value),
            "failed_at_ms": now_ms(),
        }
        cp.output(self.dlq_topic).extend([None], [dumps(doc)], [now_ms()])  # the record's own time may be what is wrong
        self.metrics.inc("affluent_dead_letters_total", pipeline=self.dlq_topic.removesuffix(".dlq"), step=step)
        log.warning("dead letter from source %s (%s): %s: %s", src, what, type(exc).__name__, exc)

    def run(self, stop: threading.Event) -> None:
        """Poll until done or stopped; transient faults (the feed, a full or read-only disk) are retried
        with backoff. A terminal error ends the task and is raised, after status and error are set."""
        src = self.binding.source
        backoff = 1.0
        try:
            while not stop.is_set():
                try:
                    if self.status != "running":
                        self.open()
                    wait_s, done = self.poll_once()
                    backoff = 1.0
                    self.error = None
                except TransientError as exc:
                    retry = getattr(exc, "retry_after_s", None)
                    wait_s, done = (min(max(retry, 0.0), self.max_backoff_s) if retry is not None else backoff), False
                    backoff = min(backoff * 2, self.max_backoff_s)
                    self.error = str(exc)
                    self.metrics.inc("affluent_source_errors_total", source=src.name, kind="transient")
                    log.warning("source %s: %s; retrying in %.1f s", src.name, exc, wait_s)
                except TerminalError:
                    raise
                except Exception as exc:
                    wait_s, done = backoff, False
                    backoff = min(backoff * 2, self.max_backoff_s)
                    self.error = f"{type(exc).__name__}: {exc}"
                    self.metrics.inc("affluent_source_errors_total", source=src.name, kind="error")
                    log.error("source %s failed a poll: %s; retrying in %.1f s", src.name, self.error, wait_s)
                if done:
                    self.status = "done"
                    self.progress.set()
                    return
                stop.wait(wait_s)
            self.status = "stopped"
        except TerminalError as exc:
            self.status, self.error = "failed", str(exc)
            self.metrics.inc("affluent_source_errors_total", source=src.name, kind="terminal")
            log.error("source %s stopped: %s", src.name, exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                src.close()


#: the youngest generation's collection threshold while pipelines run (Python's default is 700)
GC_GEN0_THRESHOLD = 10_000
#: glibc malloc: buffers under this size come from the heap, not from a fresh mmap each
MALLOC_MMAP_BYTES = 4 << 20
#: glibc malloc: free memory kept at the heap's top before it goes back to the system
MALLOC_TRIM_BYTES = 16 << 20


def tune_process() -> None:
    """Tune the collector and the allocator for batches.

    Batches allocate many short-lived objects, nearly all freed by reference counting; at the default
    threshold the collector runs thousands of times a second and its older generations scan all the
    state held in memory (a measured 25% of the jobs pipeline's time). Cyclic garbage is still collected.

    Stored batches are ~1 MiB buffers. glibc's default returns such a buffer to the system when it is
    freed, so the next one is fresh memory, and touching it costs a page fault per 4 KiB (a measured
    third of the append's time). Kept in the heap, they are reused.
    """
    gen0, *older = gc.get_threshold()
    if 0 < gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, *older)
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class Runtime:
    """Runs pipelines and sources in threads of this process until stopped.

    Its pipelines are claimed together: all of them run here, or none when another live process
    holds one. A heartbeat thread renews the leases every LEASE_RENEW_MS, whatever the pipelines'
    commit intervals; a pipeline whose lease is lost all the same stops and writes nothing more.
    With `fail_fast`, the first task that dies (a pipeline crash, a source's terminal error) stops
    them all; otherwise the others go on, and `errors` holds what died.
    """

    def __init__(
        self,
        log_: Log | str | None = None,
        *,
        metrics: Metrics | None = None,
        retention_interval_s: float = 60.0,
        fail_fast: bool = True,
        worker: str | None = None,
    ) -> None:
        if log_ is None or isinstance(log_, str):
            log_ = open_log(log_ or DEFAULT_LOG_URL)
        self.log = log_
        self.metrics = metrics or METRICS
        self.pipelines: list[Pipeline] = []
        self.tasks: list[PipelineTask | ProcessPipelineTask] = []
        self.source_tasks: list[SourceTask | ProcessSourceTask] = []
        self.stop_event = threading.Event()
        #: set when what `drained` asks may have changed: a pipeline read nothing, a source is done, a child
        #: process reported, a task failed
        self._progress = threading.Event()
        #: set first when stopping: sources end before their pipelines release the leases they append under
        self.sources_stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._source_threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.retention_interval_s = retention_interval_s
        self.fail_fast = fail_fast
        #: this process's name among the pipelines' workers (None: it runs them alone)
        self.worker = worker
        self._unclaimed: list[tuple[Pipeline, str]] = []
        self._claims = threading.Lock()
        self._owner = ""
        #: (pipeline, owner, its task or None) for every lease this runtime holds
        self._leases: list[tuple[str, str, PipelineTask | ProcessPipelineTask | None]] = []
        self._heartbeat: threading.Thread | None = None
        self._started = False
        #: (monotonic time, count) of the last status published per task, for records/s
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}

    def add(self, pipeline: Pipeline) -> Runtime:
        self.pipelines.append(pipeline)
        return self

    def start(self) -> Runtime:
        """Claim the pipelines and start their threads (once: a second call does nothing)."""
        if self._started:
            return self
        self._started = True
        tune_process()
        owner = self._owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if self.worker is not None:
            return self._start_worker(owner)
        try:  # claimed here, before any source runs: refused, this process runs nothing at all
            self.log.acquire_leases([p.name for p in self.pipelines], owner)
        except AffluentError as exc:
            log.debug("not started: %s", exc)  # in `errors`: the caller says it
            self.errors.append(exc)
            return self
        for p in self.pipelines:
            self._start_sources(p, p.name, owner)
            task = None
            if p.reads:
                task = self._pipeline_task(p, owner)
                self._run_task(task, task.run)
            self._leases.append((p.name, owner, task))
        if self._leases and self._heartbeat is None:
            self._publish_statuses()
            self._heartbeat = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
            self._heartbeat.start()
        return self

    def _start_sources(self, p: Pipeline, lease: str, owner: str) -> None:
        for b in p.sources:
            ahead = None if b.source.simulated_clock else p.max_event_ahead_ms
            kind = ProcessSourceTask if self._own_process(b) else SourceTask
            st = kind(b, self.log, metrics=self.metrics, dlq_topic=p.dlq_topic, lease=(lease, owner), max_event_ahead_ms=ahead, pipeline=p.name)
            st.progress = self._progress
            self.source_tasks.append(st)
            self._source_threads.append(self._spawn(f"source-{b.source.name}", self._yielding(p, lease, st.run), self.sources_stop))

    def _run_task(self, task: PipelineTask | ProcessPipelineTask, run: Callable[[threading.Event], None]) -> None:
        """Run a pipeline's task in a thread of its own; it tells `run_to_end` when it may have read all."""
        task.progress = self._progress
        self.tasks.append(task)
        self._spawn(f"pipeline-{task.pipeline.name}", run, self.stop_event)

    def _pipeline_task(self, p: Pipeline, owner: str) -> PipelineTask | ProcessPipelineTask:
        """The pipeline's task: in a process of its own when it asks for one and can be sent there."""
        if p.own_process:
            reason = can_run_apart(p, self.log)
            if reason is None:
                return ProcessPipelineTask(p, self.log, metrics=self.metrics, owner=owner)
            log.info("pipeline %s runs in a thread, not a process of its own: %s", p.name, reason)
        return PipelineTask(p, self.log, metrics=self.metrics, owner=owner)

    def _own_process(self, b: SourceBinding) -> bool:
        """Whether `b` runs in a process of its own: its source asks for one, and it can be sent there."""
        if not b.source.own_process or self.worker is not None:
            return False
        reason = can_run_apart(b, self.log)
        if reason is not None:
            log.info("source %s runs in a thread, not a process of its own: %s", b.source.name, reason)
        return reason is None

    def _yielding(self, p: Pipeline, lease: str, run: Callable[[threading.Event], None]) -> Callable[[threading.Event], None]:
        """As a worker, a task run under a lease that another worker took (two claimed a dead
        worker's at once, and the later fenced the earlier) stops here quietly: the lease is
        claimed again when it is free."""
        if self.worker is None:
            return run

        def guarded(stop: threading.Event) -> None:
            try:
                run(stop)
            except FencedError as exc:
                log.warning("worker %s: %s; another worker runs it", self.worker, exc)
                with self._claims:
                    self._leases = [x for x in self._leases if x[0] != lease]
                    if (p, lease) not in self._unclaimed:
                        self._unclaimed.append((p, lease))

        return guarded

    def _start_worker(self, owner: str) -> Runtime:
        """As one of several workers. A pipeline whose partitions can be shared runs here on the
        partitions the group gives this worker, and its sources run in one worker at a time (the one
        holding the lease `<pipeline>.sources`). Any other pipeline runs whole in one worker at a time,
        under its own lease, and moves to another worker when that one is gone."""
        assert self.worker is not None
        for p in self.pipelines:
            if p.reads and not any(not s.shared_writes for s in p.sinks):
                p.spread_by_repartition(self._partitions(p))
            reasons = p.single_worker_reasons()
            if p.reads and not reasons:
                task = PipelineTask(p, self.log, metrics=self.metrics, owner=owner, member=self.worker)
                self._run_task(task, task.run)
                if p.sources:
                    self._unclaimed.append((p, f"{p.name}.sources"))
            else:
                self._unclaimed.append((p, p.name))
                if reasons:
                    log.info("pipeline %s runs in one worker at a time: %s", p.name, "; ".join(reasons))
        self._claim(owner)
        self._heartbeat = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def _partitions(self, p: Pipeline) -> dict[str, int]:
        """How many partitions each of `p`'s inputs has (or will have, as declared)."""
        out = {}
        for topic, node in p.inputs.items():
            out[topic] = len(self.log.describe_topic(topic).partitions) if self.log.topic_exists(topic) else (node.config.partitions if node.config else 1)
        return out

    def _claim(self, owner: str) -> None:
        """Run what no live worker runs: a pipeline's sources, or a pipeline that takes one worker."""
        with self._claims:
            self._claim_free(owner)

    def _claim_free(self, owner: str) -> None:
        for p, lease in list(self._unclaimed):
            try:
                self.log.acquire_lease(lease, owner)
            except AffluentError:
                continue  # another worker runs it; tried again at the next beat
            self._unclaimed.remove((p, lease))
            self._start_sources(p, lease, owner)
            task = None
            if lease == p.name and p.reads:
                task = PipelineTask(p, self.log, metrics=self.metrics, owner=owner)
                self._run_task(task, self._yielding(p, lease, task.run))
            self._leases.append((lease, owner, task))
            log.info("worker %s runs %s", self.worker, f"pipeline {p.name}" if lease == p.name else f"the sources of pipeline {p.name}")

    def _beat(self) -> None:
        held = list(self._leases)
        while not self.stop_event.wait(LEASE_RENEW_MS / 1000):
            if self._unclaimed and not self.sources_stop.is_set():
                known = set(self._leases)
                self._claim(self._owner)
                held.extend(x for x in self._leases if x not in known)
            self._renew_leases(held)
            self._publish_statuses()

    def _renew_leases(self, held: list[tuple[str, str, PipelineTask | ProcessPipelineTask | None]]) -> None:
        for lease in list(held):
            name, owner, task = lease
            if task is not None and task.status not in ("created", "running", "restarting"):
                held.remove(lease)  # it ended and released its lease
                continue
            try:
                self.log.check_lease(name, owner)
            except FencedError as exc:
                if self.stop_event.is_set():
                    return
                log.error("pipeline %s: %s", name, exc)
                if task is not None:
                    task.lost = str(exc)
                held.remove(lease)
            except AffluentError as exc:  # a busy or read-only disk: the next beat tries again
                log.warning("pipeline %s: could not renew its lease: %s", name, exc)

    def _publish_statuses(self) -> None:
        """Publish `pipeline_statuses()` in the log, where dashboards in any process read them."""
        try:
            self.log.put_statuses(self.pipeline_statuses())
        except AffluentError as exc:  # a busy or full disk: the next beat publishes again
            log.debug("could not publish pipeline statuses: %s", exc)

    def pipeline_statuses(self) -> dict[str, dict[str, Any]]:
        """Each pipeline's state as a JSON-able dict: status, records, records/s, lag, dead letters, sources."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        held = {n for n, _, _ in self._leases}
        for p in self.pipelines:
            name = p.name
            task = next((t for t in self.tasks if t.pipeline is p), None)
            if task is None and name not in held and f"{name}.sources" not in held:
                continue  # not run here
            records = task.records_in if task is not None else 0
            lag = 0
            for topic in p.inputs:
                with contextlib.suppress(AffluentError):
                    done = self.log.committed(p.name, topic)
                    lag += sum(end - done.get(part, 0) for part, end in self.log.end_offsets(topic).items())
            sources = [self._source_status(st, now) for st in self.source_tasks if st.pipeline == name]
            out[name] = {
                "status": task.status if task is not None else ("running" if not self.stop_event.is_set() else "stopped"),
                "error": task.error if task is not None else None,
                "records": records,
                "rate": self._rate(("pipeline", name), records, now),
                "lag": lag,
                "late": int(self.metrics.get("affluent_late_records_total", pipeline=name)),
                "dead_letters": int(self.metrics.get("affluent_dead_letters_total", pipeline=name)),
                "inputs": sorted(p.inputs),
                "sources": sources,
                # as a worker: this process's name and the input partitions it owns now
                "worker": self.worker,
                "partitions": sorted(f"{t}[{n}]" for t, n in task.positions) if task is not None and task.member is not None else None,
            }
        return out

    def _source_status(self, st: SourceTask | ProcessSourceTask, now: float) -> dict[str, Any]:
        src = st.binding.source
        return {
            "name": src.name,
            "topic": st.binding.topic,
            "status": st.status,
            "error": st.error,
            "records": st.records_out,
            "rate": self._rate(("source", src.name), st.records_out, now),
            "mode": src.mode,
            "note": src.note,
            "describe": src.describe(),
            "last_event_ms": st.last_event_ms,
        }

    def _rate(self, key: tuple[str, str], count: int, now: float) -> float:
        """Records per second since the previous status of `key`."""
        before = self._counts.get(key)
        self._counts[key] = (now, count)
        if before is None or now <= before[0]:
            return 0.0
        return round((count - before[1]) / (now - before[0]), 1)

    def _spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> threading.Thread:
        def target() -> None:
            try:
                fn(*args)
            except BaseException as exc:
                self.errors.append(exc)
                self._progress.set()  # run_to_end raises it now

        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def stop(self, timeout_s: float = 10.0) -> None:
        self.sources_stop.set()
        for t in self._source_threads:
            t.join(timeout_s)
        self.stop_event.set()
        for running in self.tasks:
            running.request_stop()
        for t in self.threads:
            t.join(timeout_s)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout_s)
        if self._leases:
            self._publish_statuses()
        for name, owner, task in self._leases:
            if task is None:  # a pipeline of sources only: no task released its lease
                with contextlib.suppress(AffluentError):
                    self.log.release_lease(name, owner)

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def run(self, *, timeout_s: float | None = None, on_tick: Callable[[Runtime], None] | None = None, tick_s: float = 0.5) -> None:
        """Start, then block until Ctrl+C, `timeout_s`, every task has ended, or (fail_fast) one died.

        Enforces retention meanwhile. What died is in `errors`.
        """
        self.start()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_retention = time.monotonic() + self.retention_interval_s
        try:
            while self.alive():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if self.fail_fast and self.errors:
                    break
                if time.monotonic() >= next_retention:
                    try:
                        dropped = self.log.enforce_retention()
                        if dropped:
                            log.info("retention dropped %d old records", dropped)
                    except AffluentError as exc:
                        log.warning("retention: %s", exc)
                    next_retention = time.monotonic() + self.retention_interval_s
                if on_tick is not None:
                    on_tick(self)
                self.stop_event.wait(tick_s)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def drained(self) -> bool:
        """Every source is done and every pipeline has read all of its input.

        The input topics must not grow while the pipelines are asked: one pipeline may commit into
        another's input just after that one said it had read everything.
        """
        if not all(st.status == "done" for st in self.source_tasks) or not all(t.status == "running" for t in self.tasks):
            return False
        before = self._input_ends()
        return all(t.caught_up() for t in self.tasks) and self._input_ends() == before

    def _input_ends(self) -> dict[str, dict[int, int]]:
        return {topic: self.log.end_offsets(topic) for t in self.tasks for topic in t.pipeline.inputs}

    def run_to_end(self, *, timeout_s: float | None = None) -> None:
        """Run a bounded input (a file, a replay at once, a simulated period, a test) to its end, then stop.

        Starts, waits until every source is done and every pipeline has read all of its input, then
        ends each pipeline's input in turn, upstream first: its open windows close (no record can come
        to them any more) and their results are committed, and the pipelines reading those results
        read them too. Stopping commits the sinks. Raises the first error of a task that died (a
        source's terminal error included), and TimeoutError naming the status when `timeout_s` passes first.
        """
        dead_before = {p.name: self.metrics.get("affluent_dead_letters_total", pipeline=p.name) for p in self.pipelines}
        self.start()
        for task in self.tasks:
            task.bounded = True
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            self._wait(self.drained, deadline)
            for task in self._upstream_first():
                task.request_end()
                self._wait(lambda t=task: t.ended and self.drained(), deadline)  # type: ignore[misc]
        finally:
            self.stop()
        if self.errors:
            raise self.errors[0]
        for p in self.pipelines:  # one line at the end: the warnings of thousands of bad records scroll away
            n = int(self.metrics.get("affluent_dead_letters_total", pipeline=p.name) - dead_before[p.name])
            if n:
                log.warning("pipeline %s: %s record(s) dead-lettered in this run, each with its error in topic %s", p.name, f"{n:,}", p.dlq_topic)

    def _wait(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Until `done()`, asked again when a task says it may be (asking takes the pipelines' interpreter lock)."""
        while True:
            self._progress.clear()  # before asking: a task's word from now on ends the wait below
            if done():
                return
            if self.errors:
                raise self.errors[0]
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the pipelines did not reach the end of their input in time; status: {self.status()}")
            self._progress.wait(0.1)

    def _upstream_first(self) -> list[PipelineTask | ProcessPipelineTask]:
        """Tasks ordered so that one writing a topic comes before those reading it (as added, in a cycle)."""
        left = list(self.tasks)
        order: list[PipelineTask | ProcessPipelineTask] = []
        while left:
            writes = {t for task in left for t in task.pipeline.output_topics}
            ready = [t for t in left if not writes & (set(t.pipeline.inputs) - set(t.pipeline.output_topics))] or left[:1]
            order.extend(ready)
            left = [t for t in left if t not in ready]
        return order

    def status(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for st in self.source_tasks:
            out.append(
                {
                    "kind": "source",
                    "name": st.binding.source.name,
                    "status": st.status,
                    "records": st.records_out,
                    "offline": st.binding.source.offline,
                    "error": st.error,
                }
            )
        for t in self.tasks:
            name = t.pipeline.name
            out.append(
                {
                    "kind": "pipeline",
                    "name": name,
                    "status": t.status,
                    "records": t.records_in,
                    "late": int(self.metrics.get("affluent_late_records_total", pipeline=name)),
                    "dead_letters": int(self.metrics.get("affluent_dead_letters_total", pipeline=name)),
                    "error": t.error,
                }
            )
        return out
