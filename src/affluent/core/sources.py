"""Sources: what polls or subscribes to the outside world and appends records to a topic.

A source is polled by the runtime in its own thread. Each poll returns records and a position;
the runtime appends the records and saves the position in one transaction, so a restarted source
resumes exactly where its last appended records end. Transient errors (HTTP 429/5xx, timeouts)
are retried with backoff; a source never takes the rest of the runtime down with it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from affluent.core.records import Record


@dataclass(slots=True)
class SourcePoll:
    """What one poll produced.

    records: new records (event time in `timestamp_ms`; 0 means "now").
    raw: values already serialised as JSON (bytes), appended as they are, keyless and timed "now":
        the fast path of a source that reads text, with no Python object per record (`Lines` holds
        them as one bytes object). Each is checked to be one JSON value when it is read; one that is
        not reaches the pipeline's dead-letter topic with its reason.
    wait_s: how long to wait before the next poll (a feed's ttl, a simulator's period).
    position: JSON-able resume point saved with the records, handed back to `open` after a restart.
    done: the source has nothing more to give (a replay that reached its end).
    """

    records: list[Record] = field(default_factory=list)
    raw: Sequence[bytes] | None = None
    wait_s: float = 0.0
    position: Any = None
    done: bool = False


class Source(ABC):
    """Base class of every source. Subclasses set `name` and implement `poll`."""

    name: str = "source"
    #: "live" (the real feed), "replay" (a recording) or "simulator"
    mode: str = "live"
    #: why the source runs in this mode, when it is not the one asked for (shown to users)
    note: str | None = None
    #: True when event times follow a clock of the source's own that may run ahead of the wall clock
    #: (a replay faster than recorded): the pipeline's bound on event times ahead of now does not apply.
    simulated_clock: bool = False
    #: run in a process of its own (it must pickle): a heavy reader then uses another core than the
    #: pipelines, instead of taking turns with them at Python's one interpreter lock
    own_process: bool = False

    def open(self, position: Any | None) -> None:  # noqa: B027 - optional hook
        """Prepare to poll, resuming from `position` (None on a first start)."""

    @abstractmethod
    def poll(self) -> SourcePoll:
        """Fetch what is new. May raise TransientError (retried) or TerminalError (the source stops)."""

    def committed(self, position: Any | None) -> None:  # noqa: B027 - optional hook
        """The records of the last poll, and `position`, are now durable: acknowledge them upstream."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    @property
    def offline(self) -> bool:
        """True when the source reads a recording or a simulator rather than the live world."""
        return self.mode != "live"

    def describe(self) -> str:
        return self.name
