"""The public names: exported from `affluent` itself, listed here so that a change to them is deliberate."""

from __future__ import annotations

import subprocess
import sys

import affluent

PUBLIC = [
    "AffluentError",
    "Aggregate",
    "Batch",
    "ConfigError",
    "Count",
    "FencedError",
    "First",
    "HoppingWindow",
    "JsonLinesSource",
    "KafkaLog",
    "Last",
    "Lines",
    "Log",
    "Max",
    "Mean",
    "Min",
    "ParquetLakeSink",
    "Pipeline",
    "PipelineAlreadyRunningError",
    "PipelineError",
    "Record",
    "Reduce",
    "ReplaySource",
    "Runtime",
    "SQLiteLog",
    "ServingSink",
    "SessionWindow",
    "Settings",
    "Sink",
    "Source",
    "SourcePoll",
    "Stream",
    "Sum",
    "TerminalError",
    "TopicConfig",
    "TransientError",
    "TumblingWindow",
    "col",
    "now_ms",
    "open_log",
]


def test_the_public_names_are_these() -> None:
    assert affluent.__all__ == PUBLIC


def test_every_public_name_resolves_to_its_definition() -> None:
    for name in PUBLIC:
        obj = getattr(affluent, name)
        assert getattr(obj, "__name__", name) == name, name


def test_importing_affluent_loads_nothing_else() -> None:
    code = "import sys, affluent; print(sorted(m for m in sys.modules if m.startswith('affluent')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['affluent']"
