"""Sinks: where a pipeline's results leave the log (lake, serving store, ...).

The runtime calls `write` while it processes a batch and `flush` just before it commits the
checkpoint, so a sink sees every record at least once. A sink makes that effectively once by
writing idempotently: upserts keyed by what the record is (a window, a station, an offer), never
blind appends or counter increments.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from affluent.core.records import Record


class Sink(ABC):
    name: str = "sink"

    def open(self) -> None:  # noqa: B027 - optional hook
        """Connect, create tables."""

    @abstractmethod
    def write(self, records: list[Record]) -> None:
        """Take records; they may be buffered until `flush`."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable. Called before each checkpoint commit."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""
