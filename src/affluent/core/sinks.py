"""Sinks: where a pipeline's results leave the log (lake, serving store, ...).

The runtime calls `write` while it processes a batch and `flush` just before it commits the
checkpoint, so a sink sees every record at least once. A sink makes that effectively once by
writing idempotently: upserts keyed by what the record is (a window, a station, an offer), never
blind appends or counter increments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from affluent.core.records import Record

if TYPE_CHECKING:
    from affluent.core.operators import Batch


class Sink(ABC):
    name: str = "sink"
    #: several workers may write it at once (keyed upserts into a shared store); a sink that is not
    #: (a lake of numbered commits) keeps its pipeline in one worker at a time
    shared_writes: bool = False

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create tables.

        A store that is down raises TransientError (or OSError): the pipeline closes its sinks and opens
        them again before it reads, with back-off, while the other pipelines go on.
        """

    @abstractmethod
    def write(self, records: list[Record]) -> None:
        """Take records; they may be buffered until `flush`.

        All or nothing: a write that raises has taken none of its records (the runtime then writes
        them one by one and dead-letters those that fail), so check and convert before buffering.
        """

    def write_batch(self, batch: Batch, topic: str, partition: int) -> None:
        """Take a batch of the pipeline (parallel lists of keys, values, times and offsets) as it comes.

        A sink that can use the columns as they are (a lake table, an upsert of each key's last row)
        overrides this and skips making a record per record. Same contract as `write`.
        """
        self.write(batch.records(topic, partition))

    def discard(self) -> None:  # noqa: B027 - optional hook
        """Forget what was written since the last flush: the runtime goes back to its last checkpoint
        and will write those records again."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable. Called before each checkpoint commit.

        A fault that may go away (a full or read-only disk, a busy store) raises OSError or a
        TransientError: the runtime goes back to its last checkpoint and retries.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. What was written but not flushed is dropped: the runtime flushes before
        each checkpoint, and a process that lost its lease must write nothing more."""
