"""Stateful operators: event-time windows, dedupe, and the lookup-join with a table.

State is kept in memory per input partition and checkpointed as changes: each operator reports
the keys it touched since the last checkpoint, and the runtime commits them with the outputs and
the input offsets in one transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import compress
from typing import TYPE_CHECKING, Any

import orjson

from affluent.core.aggregates import Aggregate, Aggregates, Count, result_fields
from affluent.core.errors import PipelineError
from affluent.core.log import StateChange
from affluent.core.operators import Batch, Fn, Node, Outlet, apply_each
from affluent.core.windows import HoppingWindow, SessionWindow, TumblingWindow, Window

if TYPE_CHECKING:
    from affluent.core.runtime import TaskContext

MIN_TIME = -(1 << 62)
MAX_TIME = 1 << 62
_WM_KEY = b"\x00wm"
_INPUT_WM = b"\x00wm:"


def _hashable(x: Any) -> Any:
    return tuple(_hashable(i) for i in x) if isinstance(x, list) else x


_PLAIN_KEYS = {str, int, type(None), float, bool, tuple}


def hashable_keys(batch: Batch, ctx: TaskContext, step: str) -> Batch:
    """Keys as state can hold them: lists become tuples; a key that still cannot be hashed is a dead letter."""
    if not (set(map(type, batch.keys)) - _PLAIN_KEYS):
        return batch
    keys: list[Any] = []
    keep: list[bool] = []
    for i, k in enumerate(batch.keys):
        k = _hashable(k)
        try:
            hash(k)
        except TypeError as exc:
            ctx.dead_letter(step, batch.values[i], batch.offsets[i], TypeError(f"the key {k!r} cannot be a state key: {exc}"), timestamp_ms=batch.timestamps[i])
            keys.append(None)
            keep.append(False)
            continue
        keys.append(k)
        keep.append(True)
    out = Batch(keys, batch.values, batch.timestamps, batch.offsets)
    return out if all(keep) else out.select(keep)


class _WindowPartition:
    __slots__ = ("by_start", "dirty", "last_data_wall", "last_tick_wall", "pending", "pending_min", "sessions", "touched", "wins", "wm", "wm_dirty")

    def __init__(self, now_wall_ms: int) -> None:
        self.wins: dict[tuple[Any, int], Any] = {}
        self.by_start: dict[int, set[Any]] = {}
        self.sessions: dict[Any, list[list[Any]]] = {}
        # counts not yet folded into `wins` (the Count fast path folds once per many batches)
        self.pending: Counter[tuple[Any, int]] = Counter()
        self.pending_min = MAX_TIME
        self.wm = MIN_TIME
        self.wm_dirty = False
        self.dirty: set[Any] = set()
        self.touched: set[Any] = set()
        self.last_data_wall = now_wall_ms
        self.last_tick_wall = now_wall_ms


class WindowOp(Node):
    """Aggregates records per key and event-time window; emits on close or on every update.

    What differs between kinds of windows lives in the subclasses: `FixedWindowOp` (tumbling and
    hopping: windows fixed by a record's time) and `SessionWindowOp` (sessions that grow and merge).
    `WindowOp.of(window, ...)` makes the one a window needs.
    """

    kind = "window"
    stateful = True

    @staticmethod
    def of(name: str, window: Window, aggregate: Aggregate, emit: str = "close", *, across_partitions: bool = False) -> WindowOp:
        cls = SessionWindowOp if window.merging else FixedWindowOp
        return cls(name, window, aggregate, emit, across_partitions=across_partitions)

    def __init__(self, name: str, window: Window, aggregate: Aggregate, emit: str = "close", *, across_partitions: bool = False) -> None:
        super().__init__(name)
        if emit not in ("close", "update"):
            raise PipelineError(f"window {name!r}: emit must be 'close' or 'update', not {emit!r}")
        # after key_by, records of one key come from every input partition: one state for all of them,
        # whose watermark is the lowest of the partitions' (embedded: one task reads every partition)
        self.across = across_partitions
        #: per state partition: each input partition's watermark, and when it last had a record
        self.input_wm: dict[int, dict[int, int]] = {}
        self.input_wall: dict[int, dict[int, int]] = {}
        self.window = window
        self.agg = aggregate
        self.emit_mode = emit
        self.late = Outlet(f"{name}.late")
        self.parts: dict[int, _WindowPartition] = {}
        self._count_fast = type(aggregate) is Count
        #: fed by a repartition topic (as workers): one state per repartition partition, whose watermark
        #: waits for each of the `origins` input partitions (or for idle_ms without news from one)
        self.repartitioned = False
        self.origins = 0
        self._scope_wall: dict[int, int] = {}

    # -- state ---------------------------------------------------------------------------------------
    def single_owner_reason(self) -> str | None:
        if self.across and not self.repartitioned:
            return f"window {self.name!r} follows a key_by, so each of its keys comes from every input partition"
        return None

    def reset(self) -> None:
        self.parts.clear()
        self.input_wm.clear()
        self.input_wall.clear()

    def close_partition(self, partition: int) -> None:
        self.parts.pop(partition, None)
        self.input_wm.pop(partition, None)
        self.input_wall.pop(partition, None)

    def open_partition(self, partition: int, state: dict[bytes, bytes], now_wall_ms: int) -> None:
        if self.across and not self.repartitioned and partition != 0:
            return  # one state, kept under partition 0
        part = _WindowPartition(now_wall_ms)
        if self.across:
            self.input_wm[partition] = {}
        for k, v in state.items():
            if k == _WM_KEY:
                part.wm = orjson.loads(v)
                continue
            if k.startswith(_INPUT_WM):
                self.input_wm[partition][int(k[len(_INPUT_WM) :])] = orjson.loads(v)
                continue
            self._load(part, orjson.loads(k), orjson.loads(v))
        self.parts[partition] = part

    def _load(self, part: _WindowPartition, key: Any, acc: Any) -> None:
        """Put one saved entry back into `part`."""
        raise NotImplementedError

    def _changes(self, part: _WindowPartition, partition: int) -> list[StateChange]:
        """The state changes of `part`'s dirty entries."""
        raise NotImplementedError

    def _add(self, part: _WindowPartition, batch: Batch, ctx: TaskContext, wm: int, cap: int, floor: int) -> None:
        """Add records that are not late."""
        raise NotImplementedError

    def _updated(self, part: _WindowPartition, touched: list[Any]) -> Iterator[tuple[Any, int, int, Any]]:
        """(key, start, end, accumulator) of every window the `touched` entries hold."""
        raise NotImplementedError

    def _due(self, part: _WindowPartition, wm: int) -> Iterator[tuple[Any, int, int, Any]]:
        """Take the windows that closed by watermark `wm` out of `part`, one by one (consume them all)."""
        raise NotImplementedError

    def _fold_pending(self, part: _WindowPartition) -> None:
        wins, by_start, dirty, touched = part.wins, part.by_start, part.dirty, part.touched
        for ks, n in part.pending.items():
            acc = wins.get(ks)
            if acc is None:
                by_start.setdefault(ks[1], set()).add(ks[0])
                acc = 0
            wins[ks] = acc + n
            dirty.add(ks)
            touched.add(ks)
        part.pending.clear()
        part.pending_min = MAX_TIME

    def state_changes(self) -> list[StateChange]:
        out: list[StateChange] = []
        dumps = orjson.dumps
        for p, part in self.parts.items():
            if part.pending:
                self._fold_pending(part)
            if not (part.dirty or part.wm_dirty):
                continue
            out.extend(self._changes(part, p))
            out.append(StateChange(self.store, p, _WM_KEY, dumps(part.wm)))
            if self.across:
                out.extend(StateChange(self.store, p, _INPUT_WM + str(q).encode(), dumps(w)) for q, w in self.input_wm.get(p, {}).items())
            part.dirty.clear()
            part.wm_dirty = False
        return out

    # -- processing --------------------------------------------------------------------------------------
    def process(self, batch: Batch, ctx: TaskContext) -> None:
        scope = ctx.scope if self.across else ctx.partition
        part = self.parts.get(scope)
        if part is None:
            part = self.parts[scope] = _WindowPartition(ctx.now_wall_ms)
        batch = hashable_keys(batch, ctx, self.name)
        ts = batch.timestamps
        if self.across:
            wms = self.input_wm.setdefault(scope, {})
            own = wms.get(ctx.partition, MIN_TIME)
            cap = min((w for q, w in wms.items() if q != ctx.partition), default=MAX_TIME)
            start_wm = own
        else:
            cap, start_wm = MAX_TIME, part.wm
        # a record is judged against its own partition's watermark, capped by the others', and never
        # below the watermark that already closed windows: nothing joins a window that was emitted
        floor = part.wm
        late = self._late(ts, start_wm, cap, floor)
        if late:
            lb = batch.take(late)
            ctx.count_late(self.name, len(late))
            self.late.emit(lb, ctx) if self.late.children else ctx.late_default(self.name, lb)
            drop = set(late)
            batch = batch.take([i for i in range(len(batch)) if i not in drop])
            ts = batch.timestamps
        if ts:
            self._add(part, batch, ctx, start_wm, cap, floor)
            hi = max(ts)
            if self.across:
                wms = self.input_wm[scope]
                if hi > wms.get(ctx.partition, MIN_TIME):
                    wms[ctx.partition] = hi
                self.input_wall.setdefault(scope, {})[ctx.partition] = ctx.now_wall_ms
                hi = self._across_wm(ctx, scope)
            if hi > part.wm:
                part.wm = hi
                part.wm_dirty = True
        part.last_data_wall = part.last_tick_wall = ctx.now_wall_ms
        self._after(part, ctx)

    def _across_wm(self, ctx: TaskContext, scope: int) -> int:
        """The lowest watermark of the input partitions that still matter.

        A partition with unread records counts (even before its first record is read); one that is
        caught up and has had no record for `idle_ms` does not hold the others back.
        """
        idle = self.window.idle_ms
        now = ctx.now_wall_ms
        lowest = MAX_TIME
        backlog = ctx.backlog_partitions()
        wms, walls = self.input_wm.get(scope, {}), self.input_wall.get(scope, {})
        # repartitioned: an input partition not heard from yet counts too, from when this state began
        began = self._scope_wall.setdefault(scope, now)
        for q in set(wms) | backlog | set(range(self.origins)):
            if q not in backlog and idle is not None and now - walls.get(q, began) >= idle:
                continue
            lowest = min(lowest, wms.get(q, MIN_TIME))
        return lowest if lowest != MAX_TIME else max(wms.values(), default=MIN_TIME)

    def _late(self, ts: list[int], wm: int, cap: int = MAX_TIME, floor: int = MIN_TIME) -> list[int]:
        """Indices of late records, the watermark advancing record by record: max(floor, min(own, cap))."""
        last_end, grace = self.window.last_end, self.window.grace_ms
        lo = min(ts) if ts else 0
        hi = max(ts) if ts else 0
        if last_end(lo) + grace > max(floor, min(max(wm, hi), cap)):
            return []  # even the earliest record's last window is still open: none is late
        late = []
        cur = wm
        for i, t in enumerate(ts):
            if t > cur:
                cur = t
            if last_end(t) + grace <= max(floor, min(cur, cap)):
                late.append(i)
        return late

    # -- emitting ---------------------------------------------------------------------------------------------
    def _result(self, key: Any, start: int, end: int, acc: Any) -> dict[str, Any]:
        out = {"key": key, "start_ms": start, "end_ms": end}
        out.update(result_fields(self.agg, acc))
        return out

    def _after(self, part: _WindowPartition, ctx: TaskContext) -> None:
        if self.emit_mode == "update" and part.pending:
            self._fold_pending(part)
        if self.emit_mode == "update" and part.touched:
            self._emit_updates(part, ctx)
        part.touched.clear()
        self._close(part, ctx)

    def _emit_updates(self, part: _WindowPartition, ctx: TaskContext) -> None:
        # in a fixed order (window start, then key): the same input gives the same output topic, in any process
        self._emit_windows(self._updated(part, sorted(part.touched, key=_emit_order)), ctx)

    def _emit_windows(self, windows: Iterable[tuple[Any, int, int, Any]], ctx: TaskContext) -> None:
        keys: list[Any] = []
        values: list[Any] = []
        times: list[int] = []
        for k, start, end, acc in windows:
            keys.append(k)
            values.append(self._result(k, start, end, acc))
            times.append(end - 1)
        if keys:
            self.emit(Batch(keys, values, times, [-1] * len(keys)), ctx)

    def _close(self, part: _WindowPartition, ctx: TaskContext) -> None:
        due = self._due(part, part.wm)
        if self.emit_mode == "close":
            self._emit_windows(due, ctx)
        else:  # already emitted at their last update
            for _ in due:
                pass

    def close_all(self, ctx: TaskContext) -> None:
        """End of a bounded input: every open window closes.

        The watermark then stands where the last of them would have closed: should the input grow
        after all (a file appended to), a record for a closed window is late, never a second result
        for it, and later records open new windows.
        """
        for p, part in self.parts.items():
            closed = list(self._due(part, MAX_TIME))
            if self.emit_mode == "close":
                with ctx.at_partition(p):
                    self._emit_windows(closed, ctx)
            last_close = max((end for _, _, end, _ in closed), default=MIN_TIME) + self.window.grace_ms
            if last_close > part.wm:
                part.wm = last_close
                part.wm_dirty = True

    def tick(self, ctx: TaskContext, now_wall_ms: int) -> None:
        """Advance idle partitions' watermarks with the wall clock and close what is due."""
        idle = self.window.idle_ms
        if self.across:
            for scope, part in self.parts.items():
                if not self.input_wm.get(scope):
                    continue
                wm = self._across_wm(ctx, scope)
                if wm > part.wm:
                    part.wm = wm
                    part.wm_dirty = True
                    with ctx.at_partition(scope):
                        self._close(part, ctx)
        if idle is None:
            return
        for p, part in self.parts.items():
            if part.wm == MIN_TIME or (not self.across and not ctx.partition_caught_up(p)):
                continue  # during a catch-up, a filter dropping everything for a while is not idleness
            if now_wall_ms - part.last_data_wall >= idle:
                part.wm += now_wall_ms - max(part.last_tick_wall, part.last_data_wall + idle)
                part.last_tick_wall = now_wall_ms
                part.wm_dirty = True
                with ctx.at_partition(p):
                    self._close(part, ctx)


class FixedWindowOp(WindowOp):
    """Tumbling and hopping windows: state is one accumulator per (key, window start)."""

    window: TumblingWindow | HoppingWindow

    def _load(self, part: _WindowPartition, key: Any, acc: Any) -> None:
        k, start = key
        k = _hashable(k)
        part.wins[(k, start)] = acc
        part.by_start.setdefault(start, set()).add(k)

    def _changes(self, part: _WindowPartition, partition: int) -> list[StateChange]:
        dumps = orjson.dumps
        out = []
        for ks in part.dirty:
            acc = part.wins.get(ks, _MISSING)
            out.append(StateChange(self.store, partition, dumps(ks), None if acc is _MISSING else dumps(acc)))
        return out

    def _add(self, part: _WindowPartition, batch: Batch, ctx: TaskContext, wm: int, cap: int, floor: int) -> None:
        w = self.window
        keys, values, ts = batch.keys, batch.values, batch.timestamps
        if w.hop_ms == w.size_ms:  # tumbling: one window per record
            size = w.size_ms
            starts = [t - t % size for t in ts]
            if self._count_fast:
                part.pending.update(zip(keys, starts, strict=True))
                lo = min(starts)
                if lo < part.pending_min:
                    part.pending_min = lo
                return
            pairs = zip(keys, starts, values, ts, batch.offsets, strict=True)
            self._fold(part, ((k, s, v, t, o) for k, s, v, t, o in pairs), ctx)
            return
        size, grace = w.size_ms, w.grace_ms
        cur = wm

        def gen() -> Any:
            nonlocal cur
            for k, v, t, o in zip(keys, values, ts, batch.offsets, strict=True):
                if t > cur:
                    cur = t
                closed_to = max(floor, min(cur, cap))
                for s in w.starts(t):
                    if s + size + grace > closed_to:
                        yield k, s, v, t, o

        self._fold(part, gen(), ctx)

    def _fold(self, part: _WindowPartition, items: Any, ctx: TaskContext) -> None:
        wins, by_start, touched, dirty = part.wins, part.by_start, part.touched, part.dirty
        create, add = self.agg.create, self.agg.add
        failed: set[int] = set()
        for k, s, v, t, o in items:
            ks = (k, s)
            acc = wins.get(ks)
            if acc is None:
                acc = create()
                new = True
            else:
                new = False
            try:
                acc = add(acc, v, t)
            except Exception as exc:
                if o not in failed:
                    failed.add(o)
                    ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            if new:
                by_start.setdefault(s, set()).add(k)
            wins[ks] = acc
            dirty.add(ks)
            touched.add(ks)

    def _updated(self, part: _WindowPartition, touched: list[Any]) -> Iterator[tuple[Any, int, int, Any]]:
        size = self.window.size_ms
        for ks in touched:
            acc = part.wins.get(ks, _MISSING)
            if acc is not _MISSING:
                yield ks[0], ks[1], ks[1] + size, acc

    def _due(self, part: _WindowPartition, wm: int) -> Iterator[tuple[Any, int, int, Any]]:
        size = self.window.size_ms
        limit = wm - size - self.window.grace_ms
        if part.pending and part.pending_min <= limit:
            self._fold_pending(part)
        for start in sorted(s for s in part.by_start if s <= limit):
            for k in part.by_start.pop(start):
                part.dirty.add((k, start))
                yield k, start, start + size, part.wins.pop((k, start))


class SessionWindowOp(WindowOp):
    """Session windows: state is the list of open sessions, [start, end, accumulator], per key."""

    window: SessionWindow

    def __init__(self, name: str, window: Window, aggregate: Aggregate, emit: str = "close", *, across_partitions: bool = False) -> None:
        super().__init__(name, window, aggregate, emit, across_partitions=across_partitions)
        parts = aggregate.parts if isinstance(aggregate, Aggregates) else [("", aggregate)]
        if any(getattr(a, "_merge", True) is None for _, a in parts):
            which = "one aggregate has" if isinstance(aggregate, Aggregates) else "this Reduce has"
            raise PipelineError(f"window {name!r}: session windows merge sessions, and {which} no merge function")

    def _load(self, part: _WindowPartition, key: Any, acc: Any) -> None:
        part.sessions[_hashable(key)] = acc

    def _changes(self, part: _WindowPartition, partition: int) -> list[StateChange]:
        dumps = orjson.dumps
        out = []
        for key in part.dirty:
            s = part.sessions.get(key)
            out.append(StateChange(self.store, partition, dumps(key), dumps(s) if s else None))
        return out

    def _add(self, part: _WindowPartition, batch: Batch, ctx: TaskContext, wm: int, cap: int, floor: int) -> None:
        gap = self.window.gap_ms
        grace = self.window.grace_ms
        create, add, merge = self.agg.create, self.agg.add, self.agg.merge
        sessions = part.sessions
        cur = wm
        for k, v, t, o in zip(batch.keys, batch.values, batch.timestamps, batch.offsets, strict=True):
            if t > cur:
                cur = t
            closed_before = max(floor, min(cur, cap)) - grace  # a session ending by then has closed: nothing joins it
            try:
                new = [t, t + gap, add(create(), v, t)]
                kept = []
                for s in sessions.get(k, ()):
                    if s[1] > closed_before and s[0] < new[1] and new[0] < s[1]:
                        new = [min(s[0], new[0]), max(s[1], new[1]), merge(s[2], new[2])]
                    else:
                        kept.append(s)
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            kept.append(new)
            sessions[k] = kept
            part.dirty.add(k)
            part.touched.add(k)

    def _updated(self, part: _WindowPartition, touched: list[Any]) -> Iterator[tuple[Any, int, int, Any]]:
        for k in touched:
            for s in part.sessions.get(k, ()):
                yield k, s[0], s[1], s[2]

    def _due(self, part: _WindowPartition, wm: int) -> Iterator[tuple[Any, int, int, Any]]:
        grace = self.window.grace_ms
        for k in list(part.sessions):
            sess = part.sessions[k]
            closing = [s for s in sess if s[1] + grace <= wm]
            if not closing:
                continue
            rest = [s for s in sess if s[1] + grace > wm]
            if rest:
                part.sessions[k] = rest
            else:
                del part.sessions[k]
            part.dirty.add(k)
            for s in sorted(closing, key=lambda s: s[0]):
                yield k, s[0], s[1], s[2]


class _Missing:
    pass


_MISSING = _Missing()


class Dedupe(Node):
    """Passes a record only if its key is new or its version is newer than the last one seen.

    What was seen is forgotten `ttl_ms` of event time after it was last seen.
    """

    kind = "dedupe"
    stateful = True

    def __init__(self, name: str, key: Fn | None, version: Fn | None, ttl_ms: int | None, *, across_partitions: bool = False) -> None:
        super().__init__(name)
        # keyed by something else than the input topic's key: one state for every input partition
        self.across = across_partitions
        self.key_fn = key
        self.version_fn = version
        self.ttl_ms = ttl_ms
        self.seen: dict[int, dict[Any, list[Any]]] = {}
        self.dirty: dict[int, set[Any]] = {}
        self.wm: dict[int, int] = {}
        #: fed by a repartition topic (as workers): one state per repartition partition
        self.repartitioned = False

    def single_owner_reason(self) -> str | None:
        if self.across and not self.repartitioned:
            return f"dedupe {self.name!r} keys records by something else than their input key"
        return None

    def reset(self) -> None:
        self.seen.clear()
        self.dirty.clear()
        self.wm.clear()

    def close_partition(self, partition: int) -> None:
        self.seen.pop(partition, None)
        self.dirty.pop(partition, None)
        self.wm.pop(partition, None)

    def open_partition(self, partition: int, state: dict[bytes, bytes], now_wall_ms: int) -> None:
        if self.across and not self.repartitioned and partition != 0:
            return  # one state, kept under partition 0
        seen = {}
        for k, v in state.items():
            if k == _WM_KEY:
                self.wm[partition] = orjson.loads(v)
            else:
                seen[_hashable(orjson.loads(k))] = orjson.loads(v)
        self.seen[partition] = seen
        self.dirty[partition] = set()
        self.wm.setdefault(partition, MIN_TIME)

    def state_changes(self) -> list[StateChange]:
        out = []
        for p, keys in self.dirty.items():
            seen = self.seen[p]
            for k in keys:
                v = seen.get(k)
                out.append(StateChange(self.store, p, orjson.dumps(k), None if v is None else orjson.dumps(v)))
            if keys:
                out.append(StateChange(self.store, p, _WM_KEY, orjson.dumps(self.wm[p])))
            keys.clear()
        return out

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        p = ctx.scope if self.across else ctx.partition
        if p not in self.seen:
            self.open_partition(p, {}, ctx.now_wall_ms)
        seen, dirty = self.seen[p], self.dirty[p]
        if self.key_fn is not None:
            ids, ok = apply_each(self.key_fn, batch, ctx, self.name)
            if ok is not None:  # records whose key failed are dead letters already
                batch, ids = batch.select(ok), list(compress(ids, ok))
        else:
            ids = batch.keys
        if self.version_fn is None:
            versions: list[Any] = [None] * len(batch)
        else:
            versions, okv = apply_each(self.version_fn, batch, ctx, self.name)
            if okv is not None:
                batch, ids, versions = batch.select(okv), list(compress(ids, okv)), list(compress(versions, okv))
        ttl = self.ttl_ms
        keep: list[bool] = []
        wm = self.wm[p]
        for i, (k, ver, t) in enumerate(zip(ids, versions, batch.timestamps, strict=True)):
            if t > wm:
                wm = t
            expires = t + ttl if ttl is not None else None
            try:
                k = _hashable(k)
                prev = seen.get(k)
                # expired by the watermark, record by record: the same answer however the log is batched
                fresh = prev is None or (ttl is not None and prev[1] <= wm) or (ver is not None and (prev[0] is None or ver > prev[0]))
            except TypeError as exc:  # an unhashable key, or a version of another type than before (a schema change)
                ctx.dead_letter(self.name, batch.values[i], batch.offsets[i], exc, timestamp_ms=t)
                keep.append(False)
                continue
            keep.append(fresh)
            if fresh:
                seen[k] = [ver, expires]
                dirty.add(k)
            elif expires is not None and prev is not None and expires > prev[1]:
                prev[1] = expires  # forgotten ttl_ms after it was last seen, not last passed
                dirty.add(k)
        dropped = len(keep) - sum(keep)
        if dropped:
            ctx.count_dropped(self.name, dropped)
        if ttl is not None and wm != self.wm[p]:
            for k in [k for k, v in seen.items() if v[1] is not None and v[1] <= wm]:
                del seen[k]
                dirty.add(k)
        self.wm[p] = wm
        self.emit(batch.select(keep), ctx)


#: (state or None, value, event time ms) -> (new state or None to forget the key, output values)
Step = Callable[[Any, Any, int], tuple[Any, list[Any]]]


class KeyedStep(Node):
    """Runs `step(state, value, timestamp_ms) -> (new state, outputs)` over each record, with its key's state.

    For rules whose state lives as long as the rule says (an open request until stock recovers),
    not as long as a window or a TTL. States are JSON values, checkpointed with the outputs and the
    input offsets. `step` must not change the state it is given in place: it returns a new state,
    the same object when nothing changed, or None to forget the key. A step that raises
    dead-letters the record and leaves the key's state as it was. Outputs are keyed by the key.

    ttl_ms: a key's state is forgotten `ttl_ms` of event time after its last record, and a record
    already that far behind the newest one seen is late (counted, not stepped): its key's state may
    be gone, and stepping it from nothing would undo what was done.
    coalesce: of a batch's outputs, emit only each key's last one (for running values, such as a
    count: the last is the whole answer, and the others would only repeat it).
    combine: `combine(a, b) -> value` merges the values of a batch's records that share a key before
    the step sees them (a sum of counts: one step per key and batch instead of one per record). The
    merged record has the latest time and offset of its parts; one that fails to merge is a dead letter.
    """

    kind = "stateful"
    stateful = True

    def __init__(
        self,
        name: str,
        key: Fn,
        step: Step,
        *,
        ttl_ms: int | None = None,
        coalesce: bool = False,
        combine: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        super().__init__(name)
        self.key_fn = key
        self.step = step
        self.ttl_ms = ttl_ms
        self.coalesce = coalesce
        self.combine = combine
        # keyed by the step's own key: one state for every input partition, kept under partition 0
        self.states: dict[Any, Any] = {}
        self.dirty: set[Any] = set()
        #: with a ttl: key -> event time after which it is forgotten; the newest event time seen
        self.expires: dict[Any, int] = {}
        self.wm = MIN_TIME
        self._sweep_at = MIN_TIME
        self._late = 0
        #: as a worker: the input partition each key's records come from
        self.partition_of: dict[Any, int] = {}
        #: its stream was re-keyed before it: as workers, it reads a repartition topic keyed by its key
        self.rekeyed_input = False
        self.repartitioned = False

    def reset(self) -> None:
        self.states, self.expires, self.dirty, self.partition_of = {}, {}, set(), {}
        self.wm = self._sweep_at = MIN_TIME

    def open_partition(self, partition: int, state: dict[bytes, bytes], now_wall_ms: int) -> None:
        # alone, one state for every input partition, under partition 0; as a worker, each key's state
        # lives under the input partition its records come from, and moves with it
        if not self.by_partition:
            if partition != 0:
                return
            self.reset()
        for k, v in state.items():
            if k == _WM_KEY:
                self.wm = max(self.wm, orjson.loads(v))
                continue
            key, value = _hashable(orjson.loads(k)), orjson.loads(v)
            if self.ttl_ms is None:
                self.states[key] = value
            else:
                self.states[key], self.expires[key] = value
            if self.by_partition:
                self.partition_of[key] = partition
        self._sweep_at = self.wm

    def close_partition(self, partition: int) -> None:
        for k in [k for k, p in self.partition_of.items() if p == partition]:
            self.states.pop(k, None)
            self.expires.pop(k, None)
            self.dirty.discard(k)
            del self.partition_of[k]

    def _place(self, key: Any, ctx: TaskContext) -> None:
        """As a worker: a key's records must all come from one input partition, which owns its state
        (the repartition topic's partition when it reads one)."""
        here = ctx.scope if self.repartitioned else ctx.partition
        p = self.partition_of.setdefault(key, here)
        if p != here:
            raise PipelineError(
                f"step {self.name!r}: key {key!r} comes from input partitions {p} and {here}: the input is not "
                "partitioned by this step's key, so it cannot be spread over workers (key the input topic by it)"
            )

    def state_changes(self) -> list[StateChange]:
        out = []
        where = self.partition_of
        touched: set[int] = set()
        for k in self.dirty:
            v = self.states.get(k)
            if v is not None and self.ttl_ms is not None:
                v = [v, self.expires[k]]
            p = where.get(k, 0)
            touched.add(p)
            out.append(StateChange(self.store, p, orjson.dumps(k), None if v is None else orjson.dumps(v)))
            if v is None:
                where.pop(k, None)
        if self.dirty and self.ttl_ms is not None:
            out.extend(StateChange(self.store, p, _WM_KEY, orjson.dumps(self.wm)) for p in sorted(touched))
        self.dirty.clear()
        return out

    def state_of(self, key: Any) -> Any:
        return self.states.get(_hashable(key))

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        states, dirty, expires = self.states, self.dirty, self.expires
        step, ttl = self.step, self.ttl_ms
        keys: list[Any] = []
        values: list[Any] = []
        times: list[int] = []
        offsets: list[int] = []
        latest: dict[Any, tuple[Any, int, int]] = {}
        self._late = 0
        by_partition = self.by_partition
        for k, v, t, o in self._keyed(batch, ctx):
            if by_partition:
                self._place(k, ctx)
            try:
                old = states.get(k)
                if old is not None and ttl is not None and expires.get(k, MAX_TIME) <= self.wm:
                    old = None  # its time is up, swept or not: the same answer however the log is batched
                    states.pop(k)
                    expires.pop(k, None)
                    dirty.add(k)
                new, outs = step(old, v, t)
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            if new is not old:
                if new is None:
                    states.pop(k, None)
                    expires.pop(k, None)
                else:
                    states[k] = new
                dirty.add(k)
            if ttl is not None and new is not None and t + ttl > expires.get(k, MIN_TIME):
                expires[k] = t + ttl
                dirty.add(k)
            if self.coalesce:
                if outs:
                    latest.pop(k, None)  # re-inserted: keys come out in the order of their last output
                    latest[k] = (outs[-1], t, o)
                continue
            for out in outs:
                keys.append(k)
                values.append(out)
                times.append(t)
                offsets.append(o)
        for k, (out, t, o) in latest.items():
            keys.append(k)
            values.append(out)
            times.append(t)
            offsets.append(o)
        if self._late:
            ctx.count_late(self.name, self._late)
        if ttl is not None and self.wm >= self._sweep_at:
            self._forget()
        self.emit(Batch(keys, values, times, offsets), ctx)

    def _keyed(self, batch: Batch, ctx: TaskContext) -> Iterator[tuple[Any, Any, int, int]]:
        """(key, value, time, offset) of each record that is not late; merged per key with `combine`."""
        ttl, key_fn, combine = self.ttl_ms, self.key_fn, self.combine
        groups: dict[Any, list[Any]] = {}
        for v, t, o in zip(batch.values, batch.timestamps, batch.offsets, strict=True):
            if ttl is not None:
                if t + ttl <= self.wm:
                    self._late += 1
                    continue
                if t > self.wm:
                    self.wm = t
            try:
                k = _hashable(key_fn(v))
                if combine is None:
                    hash(k)
                else:
                    g = groups.get(k)
                    if g is None:
                        groups[k] = [v, t, o]
                    else:
                        g[0], g[1], g[2] = combine(g[0], v), max(g[1], t), o
                    continue
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            yield k, v, t, o
        for k, (v, t, o) in groups.items():
            yield k, v, t, o

    def _forget(self) -> None:
        """Drop the states whose time is up; looked at again after another tenth of the ttl."""
        assert self.ttl_ms is not None
        for k in [k for k, x in self.expires.items() if x <= self.wm]:
            del self.expires[k]
            self.states.pop(k, None)
            self.dirty.add(k)
        self._sweep_at = self.wm + max(1, self.ttl_ms // 10)


class Table:
    """A keyed table fed by a topic: the latest value per key, read in full on start.

    Used by `Stream.enrich` for lookup joins; rows that arrive later are joined from then on.
    """

    def __init__(self, name: str, topic: str, *, key: Fn | None = None, value: Fn | None = None) -> None:
        self.name = name
        self.topic = topic
        self.key_fn = key
        self.value_fn = value
        self.rows: dict[Any, Any] = {}
        self.positions: dict[int, int] = {}

    def apply(self, keys: list[Any], values: list[Any]) -> list[tuple[int, Exception]]:
        """Apply rows (a None value deletes its key); returns the rows that failed, with why."""
        failed: list[tuple[int, Exception]] = []
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            try:
                key = _hashable(self.key_fn(v)) if self.key_fn else k
                row = self.value_fn(v) if self.value_fn else v
            except Exception as exc:  # a malformed row is a dead letter; the key's old row stays
                failed.append((i, exc))
                continue
            if key is None:
                continue
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row
        return failed

    def get(self, key: Any, default: Any = None) -> Any:
        return self.rows.get(key, default)


class Enrich(Node):
    """Joins each record with the row of a table that its key names (a lookup join)."""

    kind = "enrich"

    def __init__(self, name: str, table: Table, key: Fn, join: Callable[[Any, Any], Any], how: str) -> None:
        super().__init__(name)
        if how not in ("left", "inner"):
            raise PipelineError(f"enrich {name!r}: how must be 'left' or 'inner', not {how!r}")
        self.table, self.key_fn, self.join, self.how = table, key, join, how

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        rows = self.table.rows
        inner = self.how == "inner"
        out: list[Any] = []
        keep: list[bool] = []
        for v, o, t in zip(batch.values, batch.offsets, batch.timestamps, strict=True):
            try:
                row = rows.get(_hashable(self.key_fn(v)))
                if row is None and inner:
                    keep.append(False)
                    out.append(None)
                    continue
                out.append(self.join(v, row))
                keep.append(True)
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                keep.append(False)
                out.append(None)
        self.emit(Batch(batch.keys, out, batch.timestamps, batch.offsets).select(keep), ctx)


def _emit_order(touched: Any) -> tuple[int, str]:
    """Sort key of a touched window, (key, start), or of a touched session key."""
    if type(touched) is tuple and len(touched) == 2 and type(touched[1]) is int:
        return touched[1], repr(touched[0])
    return 0, repr(touched)
