"""Operators: the steps of a pipeline, each working on a whole batch at once.

A batch flows down a tree of operators as four parallel lists (keys, values, event times, source
offsets). Stateless operators turn lists into lists with one C-level pass where they can; a user
function that raises on one record sends that record to the dead-letter topic and the rest of the
batch goes on. Stateful operators (windows, dedupe) keep their state per input partition and hand
their changes to the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, islice
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from affluent.core.clock import MAX_EVENT_MS, MIN_EVENT_MS, event_time_error
from affluent.core.errors import PipelineError
from affluent.core.expr import Expr
from affluent.core.log import StateChange
from affluent.core.records import Record, dumps, encode_values

if TYPE_CHECKING:
    from affluent.core.runtime import TaskContext

Fn = Callable[[Any], Any]


@dataclass(slots=True)
class Batch:
    keys: list[Any]
    values: list[Any]
    timestamps: list[int]
    offsets: Sequence[int]  # source offsets (a range straight from the log), -1 for derived records

    def __len__(self) -> int:
        return len(self.values)

    def select(self, mask: Sequence[Any]) -> Batch:
        return Batch(
            list(compress(self.keys, mask)),
            list(compress(self.values, mask)),
            list(compress(self.timestamps, mask)),
            list(compress(self.offsets, mask)),
        )

    def records(self, topic: str, partition: int) -> list[Record]:
        """The batch as records of `topic` partition `partition` (for sinks that take records)."""
        return [
            Record(value=v, key=k if k is None or type(k) is str else key_str(k), timestamp_ms=t, topic=topic, partition=partition, offset=o)
            for k, v, t, o in zip(self.keys, self.values, self.timestamps, self.offsets, strict=True)
        ]

    def take(self, idx: Sequence[int]) -> Batch:
        return Batch(
            [self.keys[i] for i in idx],
            [self.values[i] for i in idx],
            [self.timestamps[i] for i in idx],
            [self.offsets[i] for i in idx],
        )


class Node:
    """One step. `process` takes a batch and passes what it makes to `emit`."""

    kind = "step"
    stateful = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.children: list[Node] = []
        self.store = name  # set to "<pipeline>.<name>" when the pipeline is built

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        raise NotImplementedError

    def emit(self, batch: Batch, ctx: TaskContext) -> None:
        if batch.values:
            for child in self.children:
                child.process(batch, ctx)

    #: set when the pipeline runs on several workers: state is kept per input partition, and moves with it
    by_partition = False

    # stateful operators override these
    def open_partition(self, partition: int, state: dict[bytes, bytes], now_wall_ms: int) -> None:
        return None

    def close_partition(self, partition: int) -> None:
        """Forget the in-memory state of `partition` (another worker owns it now; its checkpoint is committed)."""
        return None

    def reset(self) -> None:
        """Forget all in-memory state, before it is loaded again from the last checkpoint."""
        return None

    def single_owner_reason(self) -> str | None:
        """Why this step cannot share its input's partitions with other workers, or None when it can."""
        return None

    def state_changes(self) -> list[StateChange]:
        return []

    def tick(self, ctx: TaskContext, now_wall_ms: int) -> None:
        return None

    def walk(self) -> Iterable[Node]:
        yield self
        for c in self.children:
            yield from c.walk()


def apply_each(fn: Fn, batch: Batch, ctx: TaskContext, step: str) -> tuple[list[Any], list[bool] | None]:
    """fn over every value, once each; a value it raises on is dead-lettered and the rest go on.

    Returns the results and a keep-mask (None when every record succeeded).
    """
    values = batch.values
    if isinstance(fn, Expr):
        try:
            return fn.evaluate(values), None
        except Exception:
            pass  # expressions are pure: evaluate again one by one to find the bad records
    out: list[Any] = []
    keep: list[bool] | None = None
    start = 0
    n = len(values)
    while start < n:
        try:
            # extend keeps what map produced before an exception, so each value is seen once
            out.extend(map(fn, islice(values, start, None)))
            break
        except Exception as exc:
            i = len(out)
            if keep is None:
                keep = [True] * n
            keep[i] = False
            out.append(None)
            ctx.dead_letter(step, values[i], batch.offsets[i], exc, timestamp_ms=batch.timestamps[i])
            start = i + 1
    return out, keep


class Map(Node):
    kind = "map"

    def __init__(self, name: str, fn: Fn) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        out, keep = apply_each(self.fn, batch, ctx, self.name)
        b = Batch(batch.keys, out, batch.timestamps, batch.offsets)
        self.emit(b if keep is None else b.select(keep), ctx)


class BatchMap(Node):
    """A user function over the whole list of values (vectorised code: pyarrow, numpy)."""

    kind = "batch_map"

    def __init__(self, name: str, fn: Callable[[list[Any]], list[Any]]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        try:
            out = list(self.fn(batch.values))
            if len(out) != len(batch):
                raise PipelineError(f"batch_map {self.name!r} returned {len(out)} values for {len(batch)}")
        except PipelineError:
            raise
        except Exception:
            keep = []
            out = []
            for i, v in enumerate(batch.values):
                try:
                    out.append(self.fn([v])[0])
                    keep.append(True)
                except Exception as exc:
                    ctx.dead_letter(self.name, v, batch.offsets[i], exc, timestamp_ms=batch.timestamps[i])
                    out.append(None)
                    keep.append(False)
            self.emit(Batch(batch.keys, out, batch.timestamps, batch.offsets).select(keep), ctx)
            return
        self.emit(Batch(batch.keys, out, batch.timestamps, batch.offsets), ctx)


class Filter(Node):
    kind = "filter"

    def __init__(self, name: str, fn: Fn) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        mask, keep = apply_each(self.fn, batch, ctx, self.name)
        if keep is not None:
            mask = [m and k for m, k in zip(mask, keep, strict=True)]
        self.emit(batch.select(mask), ctx)


class FlatMap(Node):
    kind = "flat_map"

    def __init__(self, name: str, fn: Callable[[Any], Iterable[Any]]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        keys: list[Any] = []
        values: list[Any] = []
        times: list[int] = []
        offsets: list[int] = []
        fn = self.fn
        for k, v, t, o in zip(batch.keys, batch.values, batch.timestamps, batch.offsets, strict=True):
            try:
                items = list(fn(v))
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            n = len(items)
            values.extend(items)
            keys.extend([k] * n)
            times.extend([t] * n)
            offsets.extend([o] * n)
        self.emit(Batch(keys, values, times, offsets), ctx)


class KeyBy(Node):
    kind = "key_by"

    def __init__(self, name: str, fn: Fn) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        keys, keep = apply_each(self.fn, batch, ctx, self.name)
        b = Batch(keys, batch.values, batch.timestamps, batch.offsets)
        self.emit(b if keep is None else b.select(keep), ctx)


class WithTimestamp(Node):
    """Sets each record's event time (UTC epoch ms) from its value."""

    kind = "with_timestamp"

    def __init__(self, name: str, fn: Fn) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        times, keep = apply_each(self.fn, batch, ctx, self.name)
        ahead = ctx.max_event_ahead_ms
        limit = MAX_EVENT_MS if ahead is None else min(MAX_EVENT_MS, ctx.now_wall_ms + ahead)
        if set(map(type, times)) - {int} or (times and (min(times) < MIN_EVENT_MS or max(times) > limit)):
            if keep is None:
                keep = [True] * len(times)
            for i, t in enumerate(times):
                why = event_time_error(t, ctx.now_wall_ms, ahead) if keep[i] else None
                if why is not None:
                    keep[i] = False
                    err = TypeError(why) if type(t) is not int else ValueError(why)
                    ctx.dead_letter(self.name, batch.values[i], batch.offsets[i], err, timestamp_ms=batch.timestamps[i])
        b = Batch(batch.keys, batch.values, times, batch.offsets)
        self.emit(b if keep is None else b.select(keep), ctx)


class Validate(Node):
    """Dead-letters the values a check rejects.

    check: a pydantic model (the value becomes the model's validated, normalised form), or a function
    that raises or returns False to reject; returning None or True passes the value unchanged, and
    returning anything else passes that instead (a normalised value).
    """

    kind = "validate"

    def __init__(self, name: str, check: Any) -> None:
        super().__init__(name)
        validate = getattr(check, "model_validate", None)
        if validate is not None:
            self.fn: Fn = lambda v: validate(v).model_dump(mode="json")
        else:

            def run(v: Any) -> Any:
                got = check(v)
                if got is False:
                    raise ValueError(f"rejected by {getattr(check, '__name__', 'the check')}")
                return v if got is None or got is True else got

            self.fn = run

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        out, keep = apply_each(self.fn, batch, ctx, self.name)
        b = Batch(batch.keys, out, batch.timestamps, batch.offsets)
        self.emit(b if keep is None else b.select(keep), ctx)


class Inspect(Node):
    kind = "inspect"

    def __init__(self, name: str, fn: Callable[[Any, Any, int], None]) -> None:
        super().__init__(name)
        self.fn = fn

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        keep: list[bool] | None = None
        for i, (k, v, t) in enumerate(zip(batch.keys, batch.values, batch.timestamps, strict=True)):
            try:
                self.fn(k, v, t)
            except Exception as exc:
                if keep is None:
                    keep = [True] * len(batch)
                keep[i] = False
                ctx.dead_letter(self.name, v, batch.offsets[i], exc, timestamp_ms=t)
        self.emit(batch if keep is None else batch.select(keep), ctx)


class Branch(Node):
    """Routes each record to the first branch whose predicate holds (or to `default`)."""

    kind = "branch"

    def __init__(self, name: str, predicates: dict[str, Fn], default: str | None) -> None:
        super().__init__(name)
        self.predicates = list(predicates.items())
        self.outlets: dict[str, Outlet] = {n: Outlet(f"{name}.{n}") for n in predicates}
        self.default = default
        if default is not None:
            if default in self.outlets:
                raise PipelineError(f"branch {name!r}: default {default!r} is also a predicate name")
            self.outlets[default] = Outlet(f"{name}.{default}")
        self.children = list(self.outlets.values())

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        routes: dict[str, list[int]] = {n: [] for n in self.outlets}
        preds = self.predicates
        for i, v in enumerate(batch.values):
            try:
                for n, p in preds:
                    if p(v):
                        routes[n].append(i)
                        break
                else:
                    if self.default is not None:
                        routes[self.default].append(i)
            except Exception as exc:
                ctx.dead_letter(self.name, v, batch.offsets[i], exc, timestamp_ms=batch.timestamps[i])
        for n, idx in routes.items():
            if idx:
                self.outlets[n].emit(batch if len(idx) == len(batch) else batch.take(idx), ctx)


class Outlet(Node):
    """A pass-through node that other steps hang from (branches, late records)."""

    kind = "outlet"

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        self.emit(batch, ctx)


class ToTopic(Node):
    kind = "to_topic"

    def __init__(self, name: str, topic: str) -> None:
        super().__init__(name)
        self.topic = topic

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        keys = [k if k is None or type(k) is str else key_str(k) for k in batch.keys]
        try:
            raw = encode_values(batch.values)
        except TypeError:  # find the values that cannot be serialised; they are dead letters, not a crash at commit
            raw, keep = apply_each(dumps, batch, ctx, self.name)
            if keep is not None:
                raw = list(compress(raw, keep))
                keys = list(compress(keys, keep))
                batch = batch.select(keep)
        ctx.checkpoint.output(self.topic).extend(keys, raw, batch.timestamps)
        ctx.count_out(self.topic, len(batch))


def key_str(k: Any) -> str:
    """How a non-string key is spelled in a topic: JSON for tuples, lists and dicts."""
    return orjson.dumps(k).decode() if isinstance(k, tuple | list | dict) else str(k)


class ToSink(Node):
    """Hands each batch whole to a sink (`Sink.write_batch`). A batch the sink refuses is written again
    one record at a time, and the records it refuses then are dead letters."""

    kind = "to_sink"

    def __init__(self, name: str, sink: Any) -> None:
        super().__init__(name)
        self.sink = sink

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        try:
            self.sink.write_batch(batch, ctx.topic, ctx.partition)
        except Exception as exc:
            if getattr(exc, "transient", False):
                raise
            for r in batch.records(ctx.topic, ctx.partition):
                try:
                    self.sink.write([r])
                except Exception as one:
                    if getattr(one, "transient", False):
                        raise
                    ctx.dead_letter(self.name, r.value, r.offset, one, timestamp_ms=r.timestamp_ms)
        ctx.count_out(self.name, len(batch))


_ENVELOPE = msgspec.json.Encoder()


class Repartition(Node):
    """Sends records to a repartition topic, partitioned by their key (or `key(value)`), so that each
    key's state downstream has one owner among the workers. A record travels with its key, its value
    and the input partition it came from, whose watermark the steps downstream follow."""

    kind = "repartition"

    def __init__(self, name: str, topic: str, key: Fn | None = None) -> None:
        super().__init__(name)
        self.topic = topic
        self.key_fn = key

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        keys = batch.keys
        if self.key_fn is not None:
            keys, ok = apply_each(self.key_fn, batch, ctx, self.name)
            if ok is not None:
                batch, keys = batch.select(ok), [k for k, keep in zip(keys, ok, strict=True) if keep]
        p = ctx.partition
        encode = _ENVELOPE.encode  # msgspec: dicts, tuples and Structs (typed inputs) alike
        out = ctx.checkpoint.output(self.topic)
        out.extend(
            [k if k is None or type(k) is str else key_str(k) for k in keys],
            [encode({"k": k, "v": v, "p": p}) for k, v in zip(keys, batch.values, strict=True)],
            batch.timestamps,
        )


class Unwrap(Node):
    """Reads a repartition topic: each record back with its own key and value, the state scope set to
    the repartition partition, and the input partition it came from as the partition its steps see."""

    kind = "unwrap"

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        values = batch.values
        n = len(values)
        with ctx.scoped(ctx.partition):
            i = 0
            while i < n:
                origin = values[i]["p"]
                j = i + 1
                while j < n and values[j]["p"] == origin:
                    j += 1
                run = values[i:j]
                sub = Batch([_key(v["k"]) for v in run], [v["v"] for v in run], batch.timestamps[i:j], batch.offsets[i:j])
                with ctx.at_partition(origin):
                    self.emit(sub, ctx)
                i = j


def _key(k: Any) -> Any:
    return tuple(_key(x) for x in k) if isinstance(k, list) else k
