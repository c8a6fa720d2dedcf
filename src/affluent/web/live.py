"""Live updates: channels that notice what changed in the log and the serving store, and a hub that
pushes each change once to every subscribed page (server-sent events).

One poller (one thread, every `interval_s`) asks each channel for its new state. A channel reads only
when its input moved: a keyed table when the serving store's `data_version` changed, a feed when its
topics' end offsets grew. What a channel sends is encoded once and shared by every subscriber, so 50
pages cost 50 queue puts, not 50 queries. A new subscriber first gets each channel's current state
(`snapshot`), then the changes (`delta`) in order: both come from the event loop, so none is missed
or applied out of order. A subscriber that falls `queue_size` messages behind is dropped; its browser
reconnects and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from affluent.core.records import Record
from affluent.web.queries import Queries

log = logging.getLogger("affluent.web")

Row = dict[str, Any]


@dataclass(slots=True)
class Changes:
    """What moved since the previous poll."""

    serving: bool
    topics: frozenset[str]
    first: bool = False


class Channel(ABC):
    """One stream of updates that pages subscribe to by name."""

    name: str

    @abstractmethod
    def snapshot(self) -> Any:
        """The current state, sent to a new subscriber."""

    @abstractmethod
    def compute(self, q: Queries, changes: Changes) -> tuple[Any, Any] | None:
        """(new state, delta to send) when something changed, else None. Runs in the poller thread."""

    @abstractmethod
    def apply(self, state: Any) -> None:
        """Adopt the state `compute` returned (on the event loop, between two sends)."""

    def topics(self) -> Sequence[str]:
        """Topics whose growth this channel follows."""
        return ()


class KeyedRows(Channel):
    """Rows of a serving-store query, keyed: deltas carry the rows that changed and the keys that went."""

    def __init__(self, name: str, query: Callable[[Queries], list[Row]], key: Sequence[str]) -> None:
        self.name = name
        self.query = query
        self.key = tuple(key)
        self.rows: dict[str, Row] = {}

    def _key(self, row: Row) -> str:
        return "|".join(str(row[k]) for k in self.key)

    def snapshot(self) -> Any:
        return {"key": self.key, "rows": list(self.rows.values())}

    def compute(self, q: Queries, changes: Changes) -> tuple[Any, Any] | None:
        if not (changes.serving or changes.first):
            return None
        new = {self._key(r): r for r in self.query(q)}
        upsert = [r for k, r in new.items() if self.rows.get(k) != r]
        delete = [k for k in self.rows if k not in new]
        if not upsert and not delete:
            return None
        return new, {"key": self.key, "upsert": upsert, "delete": delete}

    def apply(self, state: Any) -> None:
        self.rows = state


class Feed(Channel):
    """New records of some topics, each rendered as an item; a new subscriber gets the last `keep`."""

    def __init__(self, name: str, topics: Sequence[str], render: Callable[[Record], Row | None], keep: int = 50) -> None:
        self.name = name
        self._topics = tuple(topics)
        self.render = render
        self.items: deque[Row] = deque(maxlen=keep)
        self.offsets: dict[str, dict[int, int]] = {}

    def topics(self) -> Sequence[str]:
        return self._topics

    def snapshot(self) -> Any:
        return {"items": list(self.items)}

    def compute(self, q: Queries, changes: Changes) -> tuple[Any, Any] | None:
        moved = [t for t in self._topics if t in changes.topics or changes.first]
        if not moved:
            return None
        offsets = dict(self.offsets)
        records: list[Record] = []
        for t in moved:
            if t not in offsets:  # the first look: the last few records only
                records.extend(q.tail(t, self.items.maxlen or 50))
                offsets[t] = {p: e for p, e in q.log.end_offsets(t).items()} if q.log.topic_exists(t) else {}
            else:
                got, offsets[t] = q.since(t, offsets[t])
                records.extend(got)
        records.sort(key=lambda r: r.timestamp_ms)
        items = [i for i in (self.render(r) for r in records) if i is not None]
        if not items and offsets == self.offsets:
            return None
        return (offsets, items), {"items": items}

    def apply(self, state: Any) -> None:
        self.offsets, items = state
        self.items.extend(items)


class Computed(Channel):
    """A whole value recomputed each poll (small things: the apps' states); sent when it differs."""

    def __init__(self, name: str, compute: Callable[[Queries], Any]) -> None:
        self.name = name
        self.fn = compute
        self.value: Any = None

    def snapshot(self) -> Any:
        return self.value

    def compute(self, q: Queries, changes: Changes) -> tuple[Any, Any] | None:
        value = self.fn(q)
        return None if value == self.value else (value, value)

    def apply(self, state: Any) -> None:
        self.value = state


def frame(channel: str, kind: str, data: Any) -> bytes:
    """One server-sent event."""
    return b"event: " + channel.encode() + b"\ndata: " + orjson.dumps({"kind": kind, "data": data}) + b"\n\n"


@dataclass(eq=False)
class Subscriber:
    channels: frozenset[str]
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=Hub.queue_size))
    dropped: bool = False


class Hub:
    """Polls the channels and fans their changes out to subscribers."""

    queue_size = 512

    def __init__(self, queries: Queries, channels: Iterable[Channel], *, interval_s: float = 0.2) -> None:
        self.q = queries
        self.channels = {c.name: c for c in channels}
        self.topics = sorted({t for c in self.channels.values() for t in c.topics()})
        self.interval_s = interval_s
        self.subscribers: set[Subscriber] = set()
        self._version = -2
        self._ends: dict[str, int] = {}
        self._first = True
        self._poller = ThreadPoolExecutor(1, thread_name_prefix="live-poller")
        self._closed = False
        self.sent = 0

    # -- polling (a worker thread reads; the loop applies and sends) ------------------------------------------
    def _changes(self) -> Changes:
        version = self.q.serving_version()
        ends = self.q.ends(self.topics)
        moved = frozenset(t for t, e in ends.items() if self._ends.get(t) != e)
        changes = Changes(serving=version != self._version, topics=moved, first=self._first)
        self._version, self._ends, self._first = version, ends, False
        return changes

    def _poll(self) -> list[tuple[Channel, Any, Any]]:
        changes = self._changes()
        out = []
        for c in self.channels.values():
            try:
                got = c.compute(self.q, changes)
            except Exception as exc:  # one channel's failure (a table being created) must not stop the others
                log.warning("live channel %s: %s", c.name, exc)
                if changes.serving:
                    self._version = -2  # read again next time
                continue
            if got is not None:
                out.append((c, *got))
        return out

    async def poll_once(self) -> None:
        # always the same thread: `data_version` compares commits seen by one connection, a thread's own
        polled = await asyncio.get_running_loop().run_in_executor(self._poller, self._poll)
        for channel, state, delta in polled:
            channel.apply(state)
            self.publish(frame(channel.name, "delta", delta), channel.name)

    async def run(self) -> None:
        while not self._closed:
            try:
                await self.poll_once()
            except Exception as exc:  # a busy disk: the next poll tries again
                log.warning("live updates: %s", exc)
            await asyncio.sleep(self.interval_s)

    # -- fan-out --------------------------------------------------------------------------------------------
    def publish(self, message: bytes, channel: str) -> None:
        for sub in list(self.subscribers):
            if channel not in sub.channels or sub.dropped:
                continue
            try:
                sub.queue.put_nowait(message)
                self.sent += 1
            except asyncio.QueueFull:  # too slow: drop it, its browser reconnects from a snapshot
                sub.dropped = True
                self.subscribers.discard(sub)
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.get_nowait()
                    sub.queue.put_nowait(None)

    def subscribe(self, channels: Iterable[str]) -> Subscriber:
        wanted = frozenset(c for c in channels if c in self.channels)
        sub = Subscriber(wanted)
        for name in sorted(wanted):
            sub.queue.put_nowait(frame(name, "snapshot", self.channels[name].snapshot()))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def close(self) -> None:
        self._closed = True
        for sub in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                sub.queue.put_nowait(None)
        self.subscribers.clear()
        self._poller.shutdown(wait=False)

    async def stream(self, sub: Subscriber, *, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
        """The bytes of one SSE response: snapshots, then deltas, with keep-alive comments."""
        yield b"retry: 1000\n\n"
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(sub.queue.get(), keepalive_s)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if msg is None:
                    return
                yield msg
        finally:
            self.unsubscribe(sub)


__all__ = ["Changes", "Channel", "Computed", "Feed", "Hub", "KeyedRows", "Subscriber", "frame"]
