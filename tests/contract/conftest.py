"""Fixtures of the log contract suite: one `log_backend` per implementation of `affluent.core.log.Log`.

Only the embedded SQLite backend exists today. A backend is described by a URL (so that other
processes can open the same log with `open_log(url)`) and a way to open a fresh client on it.
To add Kafka, add a param to `log_backend` that starts (or finds) a broker and skips, with the
reason, when none is available.
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


@pytest.fixture(params=["sqlite"])
def log_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogBackend]:
    if request.param == "sqlite":
        backend = LogBackend("sqlite", f"sqlite:///{tmp_path / 'contract' / 'log.db'}")
    else:  # pragma: no cover - future backends
        raise AssertionError(f"unknown backend {request.param}")
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
