"""A keyed stateful step: `step(state, value, timestamp_ms) -> (new state, outputs)` per key.

The core offers windows and dedupe; a rule such as "one open restock request per shelf until its
stock recovers" needs state that lives as long as the rule says, not as long as a window or a
TTL. This step keeps one JSON state per key, in memory per input partition, and hands the keys it
changed to the checkpoint like the core's stateful operators do: on the embedded log the new
states commit in the same transaction as the outputs and the input offsets, so after a crash or a
restart the step resumes with exactly the state that matches what it had emitted.

It is generic (nothing here knows about stock); it is a candidate for the core as
`Stream.stateful_flat_map(name=, key=, step=)`.

>>> from affluent.core.pipeline import Pipeline
>>> p = Pipeline("counts")
>>> def count(state, value, ts):
...     n = (state or 0) + 1
...     return n, [{"key": value["k"], "n": n}]
>>> s = keyed_state(p.topic("in"), name="count", key=lambda v: v["k"], step=count)
>>> _ = s.to_topic("out")
>>> "keyed_state count" in p.describe()
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from affluent.core.errors import PipelineError
from affluent.core.log import StateChange
from affluent.core.operators import Batch, Fn, Node
from affluent.core.pipeline import Stream

if TYPE_CHECKING:
    from affluent.core.runtime import TaskContext

#: (state or None, value, event time ms) -> (new state or None to forget the key, output values)
Step = Callable[[Any, Any, int], tuple[Any, list[Any]]]


class KeyedState(Node):
    """Runs `step` over each record with the state of its key; outputs are keyed by that key.

    `step` must not change the state it is given in place: it returns a new state (or the same
    object when nothing changed, or None to forget the key). A step that raises dead-letters the
    record and leaves the key's state as it was.
    """

    kind = "keyed_state"
    stateful = True

    def __init__(self, name: str, key: Fn, step: Step) -> None:
        super().__init__(name)
        self.key_fn = key
        self.step = step
        self.states: dict[int, dict[str, Any]] = {}
        self.dirty: dict[int, set[str]] = {}

    def open_partition(self, partition: int, state: dict[bytes, bytes], now_wall_ms: int) -> None:
        self.states[partition] = {orjson.loads(k): orjson.loads(v) for k, v in state.items()}
        self.dirty[partition] = set()

    def state_changes(self) -> list[StateChange]:
        out: list[StateChange] = []
        for p, keys in self.dirty.items():
            states = self.states[p]
            for k in keys:
                v = states.get(k)
                out.append(StateChange(self.store, p, orjson.dumps(k), None if v is None else orjson.dumps(v)))
            keys.clear()
        return out

    def state_of(self, key: str, partition: int = 0) -> Any:
        return self.states.get(partition, {}).get(key)

    def process(self, batch: Batch, ctx: TaskContext) -> None:
        p = ctx.partition
        if p not in self.states:
            self.open_partition(p, {}, ctx.now_wall_ms)
        states, dirty = self.states[p], self.dirty[p]
        step, key_fn = self.step, self.key_fn
        keys: list[Any] = []
        values: list[Any] = []
        times: list[int] = []
        offsets: list[int] = []
        for v, t, o in zip(batch.values, batch.timestamps, batch.offsets, strict=True):
            try:
                k = key_fn(v)
                if type(k) is not str:
                    raise TypeError(f"a state key must be a string, not {type(k).__name__}")
                old = states.get(k)
                new, outs = step(old, v, t)
            except Exception as exc:
                ctx.dead_letter(self.name, v, o, exc, timestamp_ms=t)
                continue
            if new is not old:
                if new is None:
                    states.pop(k, None)
                else:
                    states[k] = new
                dirty.add(k)
            for out in outs:
                keys.append(k)
                values.append(out)
                times.append(t)
                offsets.append(o)
        self.emit(Batch(keys, values, times, offsets), ctx)


def keyed_state(stream: Stream, *, name: str, key: Fn, step: Step) -> Stream:
    """Hang a `KeyedState` step under `stream`; returns the stream of its outputs."""
    if any(n.name == name for n in stream.pipeline.nodes()):
        raise PipelineError(f"pipeline {stream.pipeline.name!r} has two steps named {name!r}; step names must be unique")
    node = KeyedState(name, key, step)
    stream.node.children.append(node)
    return Stream(stream.pipeline, node)


class DropRepeats:
    """A `KeyedState` step that drops a record whose id was among the last `window` ids of its key.

    For at-least-once sources (MQTT QoS 1): a redelivered message has the id of a message already
    seen from the same device, and it comes back soon, within the broker's in-flight limit. The
    state is bounded (`window` ids per key, ordered by event time) and needs no TTL, so a burst of
    old event times (a backfill) cannot expire what a redelivery must be checked against. A record
    older than everything remembered for its key is let through: losing a late reading would be
    worse than the rare repeat.

    >>> step = DropRepeats(id=lambda v: v["id"], window=2).step
    >>> s, out = step(None, {"id": "a"}, 1); s, len(out)
    ([[1, 'a']], 1)
    >>> s, out = step(s, {"id": "a"}, 1); len(out)
    0
    >>> s, _ = step(s, {"id": "b"}, 2); s, _ = step(s, {"id": "c"}, 3); s
    [[2, 'b'], [3, 'c']]
    """

    def __init__(self, *, id: Fn, window: int = 64) -> None:
        if window < 1:
            raise PipelineError(f"the repeat window must hold at least one id, not {window}")
        self.id_fn = id
        self.window = window

    def step(self, state: list[list[Any]] | None, value: Any, ts: int) -> tuple[list[list[Any]] | None, list[Any]]:
        rid = self.id_fn(value)
        if state is None:
            return [[ts, rid]], [value]
        if any(e[1] == rid for e in state):
            return state, []
        if len(state) >= self.window and ts < state[0][0]:
            return state, [value]
        new = [*state, [ts, rid]]
        if ts < state[-1][0]:
            new.sort(key=lambda e: e[0])
        return new[-self.window :], [value]
