"""affluent: live open data, from public feeds to maps, charts, alerts and answers.

The public names, imported on first use (importing `affluent` loads nothing else)::

    from affluent import Pipeline, TumblingWindow, Count, col
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # pipelines and their steps
    "Pipeline": "affluent.core.pipeline",
    "Stream": "affluent.core.pipeline",
    "TumblingWindow": "affluent.core.windows",
    "HoppingWindow": "affluent.core.windows",
    "SessionWindow": "affluent.core.windows",
    "Aggregate": "affluent.core.aggregates",
    "Count": "affluent.core.aggregates",
    "Sum": "affluent.core.aggregates",
    "Mean": "affluent.core.aggregates",
    "Min": "affluent.core.aggregates",
    "Max": "affluent.core.aggregates",
    "First": "affluent.core.aggregates",
    "Last": "affluent.core.aggregates",
    "Reduce": "affluent.core.aggregates",
    "col": "affluent.core.expr",
    # running them
    "Runtime": "affluent.core.runtime",
    "now_ms": "affluent.core.clock",
    # records, the log, sources and sinks
    "Record": "affluent.core.records",
    "Log": "affluent.core.log",
    "TopicConfig": "affluent.core.log",
    "open_log": "affluent.core.log",
    "SQLiteLog": "affluent.core.sqlite_log",
    "KafkaLog": "affluent.core.kafka_log",
    "Source": "affluent.core.sources",
    "SourcePoll": "affluent.core.sources",
    "Lines": "affluent.core.records",
    "Sink": "affluent.core.sinks",
    "Batch": "affluent.core.operators",
    "ParquetLakeSink": "affluent.sinks.lake",
    "ServingSink": "affluent.sinks.serving",
    "ReplaySource": "affluent.sources.replay",
    "JsonLinesSource": "affluent.sources.files",
    # errors
    "AffluentError": "affluent.core.errors",
    "TransientError": "affluent.core.errors",
    "TerminalError": "affluent.core.errors",
    "ConfigError": "affluent.core.errors",
    "PipelineError": "affluent.core.errors",
    "FencedError": "affluent.core.errors",
    "PipelineAlreadyRunningError": "affluent.core.errors",
    # settings
    "Settings": "affluent.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'affluent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
