"""affluent's exception tree.

    AffluentError
    ├── TransientError              retry may succeed (HTTP 429/5xx, broker down, busy, full or read-only disk)
    │   ├── SourceUnavailableError
    │   ├── SinkUnavailableError    a sink's store cannot be written for now
    │   └── LogUnavailableError     the log cannot be written for now
    │       ├── LogBusyError
    │       └── LogFullError
    └── TerminalError               retrying will not help (bad config, schema mismatch, corruption)
        ├── ConfigError
        ├── TaskProcessError        a source or pipeline in a process of its own stopped on a terminal error
        ├── MissingDependencyError
        ├── LogError
        │   ├── UnknownTopicError
        │   ├── TopicExistsError
        │   ├── LogCorruptError
        │   └── FencedError         this process no longer holds the pipeline's lease
        │       └── PipelineAlreadyRunningError
        ├── PipelineError           a pipeline definition that cannot run
        └── RecordError             one bad record: dead-lettered, never raised out of a pipeline

Each error says what and where, so that a message alone is enough to act on.
"""

from __future__ import annotations


class AffluentError(Exception):
    """Root of every error affluent raises on purpose."""

    transient: bool = False


class TransientError(AffluentError):
    """Retrying later may succeed."""

    transient = True


class TerminalError(AffluentError):
    """Retrying will not help until something is changed."""


class SourceUnavailableError(TransientError):
    """A source could not be reached or answered with a retryable status."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SinkUnavailableError(TransientError):
    """A sink's store (disk, database) refused a write for a reason that may go away: full, read-only, busy."""


class LogUnavailableError(TransientError):
    """The log refused a write for a reason that may go away (a read-only or failing disk); nothing was committed."""


class LogBusyError(LogUnavailableError):
    """The log was locked by another writer for longer than the busy timeout."""


class LogFullError(LogUnavailableError):
    """The disk (or the database's size limit) is full; the failed write was rolled back."""


class ConfigError(TerminalError):
    """Invalid configuration."""


class TaskProcessError(TerminalError):
    """A source or pipeline running in a process of its own stopped on a terminal error (the message says which)."""


class MissingDependencyError(TerminalError):
    """An optional dependency is not installed; the message names the pip command."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f"the optional dependency {module!r} is not installed: run `pip install 'affluent[{extra}]'`")
        self.module = module
        self.extra = extra


class LogError(TerminalError):
    """A durable-log failure."""


class UnknownTopicError(LogError):
    def __init__(self, topic: str, known: list[str] | None = None) -> None:
        hint = ""
        if known:
            import difflib

            close = difflib.get_close_matches(topic, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known topics: {', '.join(sorted(known)[:10])}"
        super().__init__(f"unknown topic {topic!r}{hint} (create it with `affluent topics create {topic}`)")
        self.topic = topic


class TopicExistsError(LogError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists")
        self.topic = topic


class LogCorruptError(LogError):
    """Stored data failed a structural or checksum check."""


class FencedError(LogError):
    """This process no longer holds the pipeline's lease: it stopped here, or another process took it over."""


class PipelineAlreadyRunningError(FencedError):
    pass


class PipelineError(TerminalError):
    """A pipeline definition that cannot run."""


class RecordError(AffluentError):
    """One record could not be processed; it goes to the dead-letter topic."""
