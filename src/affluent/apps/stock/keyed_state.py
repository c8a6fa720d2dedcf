"""Keyed state for the stock app: `keyed_state()` over the core's `Stream.stateful`, and `DropRepeats`.

>>> from affluent.core.pipeline import Pipeline
>>> p = Pipeline("counts")
>>> def count(state, value, ts):
...     n = (state or 0) + 1
...     return n, [{"key": value["k"], "n": n}]
>>> s = keyed_state(p.topic("in"), name="count", key=lambda v: v["k"], step=count)
>>> _ = s.to_topic("out")
>>> "stateful count" in p.describe()
True
"""

from __future__ import annotations

from typing import Any

from affluent.core.errors import PipelineError
from affluent.core.operators import Fn
from affluent.core.pipeline import Stream
from affluent.core.stateful import KeyedStep as KeyedState
from affluent.core.stateful import Step

__all__ = ["DropRepeats", "KeyedState", "Step", "keyed_state"]


def keyed_state(stream: Stream, *, name: str, key: Fn, step: Step) -> Stream:
    """A `Stream.stateful` step under `stream`; returns the stream of its outputs."""
    return stream.stateful(step, key=key, name=name)


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
