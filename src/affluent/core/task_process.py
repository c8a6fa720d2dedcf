"""A source or a pipeline in a process of its own (`Source.own_process`, `Pipeline(own_process=True)`).

Heavy work (a big file parsed and appended at full speed, a lake writing Parquet) then uses another
core, instead of taking turns with the other tasks at Python's one interpreter lock. The child is a
fresh interpreter (`python -m affluent.core.task_process`), never a fork of this threaded process,
and it never runs the user's `__main__` again. It reads its task (pickled) on stdin, opens the log,
and runs a `SourceTask` or a `PipelineTask` under the lease this process holds, exactly as a thread
would: what it reads, makes and commits goes into the log in the same checkpoints. Only a log that a
child can open and commit to under this process's lease can do this (`Log.for_child`: the embedded
log; a Kafka producer's lease stays in its process).

It reports on its own stdout, a JSON line every REPORT_S (what the task prints goes to stderr). Lines
on its stdin ask a pipeline to treat its input as bounded or ended, and "stop" asks the task to stop
as a thread's would (its last checkpoint committed). A child whose stdin ends without "stop", or whose
parent is gone, exits at once, as if killed: the parent's successor takes over from the last
checkpoint. Ctrl+C in a terminal reaches the parent, which stops the child.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import AffluentError, FencedError, TaskProcessError
from affluent.core.log import Log
from affluent.core.metrics import METRICS, Metrics
from affluent.core.pipeline import Pipeline, SourceBinding

log = logging.getLogger("affluent.runtime")

REPORT_S = 0.05
#: a child asked to stop has this long to commit and end before it is killed
STOP_S = 15.0


def _sent(task: SourceBinding | Pipeline) -> SourceBinding | Pipeline:
    """What the child gets: a source, or a pipeline without its sources (they run in this process)."""
    if isinstance(task, SourceBinding):
        return task
    alone = copy.copy(task)
    alone.sources = []
    return alone


def can_run_apart(task: SourceBinding | Pipeline, log_: Log) -> str | None:
    """Why `task` cannot run in a process of its own (then it runs in a thread), or None when it can."""
    if log_.for_child() is None:
        return f"the log {log_.url} keeps its leases in this process"
    kind = type(task.source) if isinstance(task, SourceBinding) else type(task)
    if kind.__module__ == "__main__":
        return "its class is defined in __main__, which another interpreter cannot import"
    try:
        pickled = pickle.dumps(_sent(task))
    except Exception as exc:  # a lambda as key function, a local function as a step
        return f"it cannot be pickled ({exc})"
    if b"__main__" in pickled:
        return "it refers to a function or class of __main__, which another interpreter cannot import"
    return None


class _Apart:
    """A task run by a child process: started again with backoff when it dies (killed, out of memory),
    from the last committed checkpoint; a terminal error in the child ends the task."""

    kind = ""

    def __init__(self, name: str, task: SourceBinding | Pipeline, log_: Log, options: dict[str, Any], max_backoff_s: float) -> None:
        self.name = name
        opened = log_.for_child()
        if opened is None:
            raise TaskProcessError(f"{self.kind} {name}: the log {log_.url} keeps its leases in this process")
        # pickled now, before this process uses it (opens the sources); the child loads it once it
        # has this process's import path (a script's folder, a test's)
        self._args = pickle.dumps((sys.path, pickle.dumps((self.kind, _sent(task), opened, options, os.getpid()))))
        self.max_backoff_s = max_backoff_s
        self.status = "created"
        self.error: str | None = None
        #: times the child was started again after it died
        self.restarts = 0
        #: the child's peak resident memory, MB (its last report)
        self.peak_rss_mb = 0.0
        #: the running child's process id
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: IO[bytes] | None = None
        self._control_lock = threading.Lock()
        #: set at each of the child's reports: a runtime waiting for the end of the input shares its own
        #: here, and asks again
        self.progress = threading.Event()

    def _hello(self) -> list[bytes]:
        """Control lines a new child gets right after its task (what it was told before it started)."""
        return []

    def _send(self, line: bytes) -> None:
        with self._control_lock:
            if self._control is not None and not self._control.closed:
                try:
                    self._control.write(line)
                    self._control.flush()
                except (BrokenPipeError, OSError):
                    pass  # the child died: a new one is told at its start

    def _apply(self, report: dict[str, Any]) -> None:
        raise NotImplementedError

    def _terminal(self) -> BaseException:
        return TaskProcessError(f"{self.kind} {self.name}: {self.error}")

    def _died(self) -> None:
        """Count a child that ended with no word (killed): it is started again."""

    def _starting(self) -> None:
        """A new child starts: its counts start from zero."""

    def _stopping(self, stop: threading.Event) -> bool:
        return stop.is_set()

    def request_stop(self) -> None:
        """Ask the running child to stop (its last checkpoint committed); killed if it has not in STOP_S."""
        with self._control_lock:
            control, proc = self._control, self._proc
            if control is None or control.closed or proc is None:
                return
            with contextlib.suppress(OSError):
                control.write(b"stop\n")
                control.close()

        def kill_if_running() -> None:
            if proc.poll() is None:
                proc.kill()

        timer = threading.Timer(STOP_S, kill_if_running)
        timer.daemon = True
        timer.start()

    def run(self, stop: threading.Event) -> None:
        backoff = 1.0
        # the child imports affluent as this process does, whatever put it on the path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        while not self._stopping(stop):
            self._starting()
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "affluent.core.task_process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            assert proc.stdin is not None and proc.stdout is not None
            self.pid = proc.pid
            try:
                proc.stdin.write(struct.pack("<Q", len(self._args)) + self._args)
                with self._control_lock:  # what it was told before it started, then what it is told as it runs
                    proc.stdin.write(b"".join(self._hello()))
                    proc.stdin.flush()
                    self._control, self._proc = proc.stdin, proc
                if self._stopping(stop):
                    self.request_stop()
                self._relay(proc.stdout, stop)
            except OSError:
                pass  # the child died before it read its task: started again below
            finally:
                with self._control_lock:
                    self._control = self._proc = None
                for f in (proc.stdin, proc.stdout):
                    with contextlib.suppress(OSError):
                        f.close()
                try:
                    proc.wait(STOP_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self.status in ("done", "stopped"):
                return
            if self.status in ("failed", "fenced"):
                raise self._terminal()
            if self._stopping(stop):
                break
            if time.monotonic() - started > self.max_backoff_s:
                backoff = 1.0  # it had run well for a while: a new fault starts a new series
            self.restarts += 1
            self.status = "restarting"
            self.error = f"its process ended (exit code {proc.returncode}); it starts again from the last checkpoint"
            self._died()
            log.error("%s %s: %s, in %.1f s", self.kind, self.name, self.error, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        if self.status not in ("failed", "fenced"):
            self.status = "stopped"

    def _relay(self, reports: IO[bytes], stop: threading.Event) -> None:
        """Apply the child's reports until it ends; ask it to stop once it should."""
        for line in reports:
            try:
                report = orjson.loads(line)
            except orjson.JSONDecodeError:  # never from the child's reports, which have a channel of their own
                log.warning("%s %s: its process wrote %r", self.kind, self.name, line[:200])
                continue
            self.status, self.error = report["status"], report["error"]
            self.peak_rss_mb = report["peak_rss_mb"]
            if report.get("loaded", True):
                self._apply(report)
            self.progress.set()
            if self._stopping(stop):
                self.request_stop()


class ProcessSourceTask(_Apart):
    """A `SourceTask` in a child process; the runtime reads its status, counts and errors as a thread's."""

    kind = "source"

    def __init__(self, binding: SourceBinding, log_: Log, *, metrics: Metrics | None = None, **options: Any) -> None:
        """options: `SourceTask`'s own (lease, dead-letter topic, pipeline...), handed to it in the child."""
        super().__init__(binding.source.name, binding, log_, options, options.get("max_backoff_s", 30.0))
        self.binding = binding
        self.pipeline: str | None = options.get("pipeline")
        self.metrics = metrics or METRICS
        #: records appended, by this task's children all together
        self.records_out = 0
        self._before = 0
        self.last_event_ms: int | None = None
        self.polls = 0

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        except TaskProcessError:
            self.metrics.inc("affluent_source_errors_total", source=self.name, kind="terminal")
            raise

    def _died(self) -> None:
        self.metrics.inc("affluent_source_errors_total", source=self.name, kind="error")

    def _starting(self) -> None:
        self._before = self.records_out

    def _apply(self, report: dict[str, Any]) -> None:
        records_out = self._before + report["records_out"]
        if records_out > self.records_out:
            self.metrics.inc("affluent_source_records_total", records_out - self.records_out, source=self.name)
        self.records_out = records_out
        self.last_event_ms, self.polls = report["last_event_ms"], report["polls"]
        self.metrics.set("affluent_source_last_poll_ms", now_ms(), source=self.name)


class ProcessPipelineTask(_Apart):
    """A `PipelineTask` in a child process, under the lease this process holds and renews; the
    runtime asks it what it asks a thread's task (status, caught up, end of input), and its counters
    (records in and out, dead letters, late records) add up in this process's metrics."""

    kind = "pipeline"

    def __init__(self, pipeline: Pipeline, log_: Log, *, metrics: Metrics | None = None, owner: str, max_backoff_s: float = 30.0) -> None:
        super().__init__(pipeline.name, pipeline, log_, {"owner": owner}, max_backoff_s)
        self.pipeline = pipeline
        self.log = log_
        self.owner = owner
        self.metrics = metrics or METRICS
        self.member: str | None = None
        self._lost: str | None = None
        #: records read, by this task's children all together (a restarted one reads some again)
        self.records_in = 0
        self._before = 0
        self.positions: dict[tuple[str, int], int] = {}
        self.ended = False
        self._caught_up = False
        self._bounded = False
        self.end_requested = False
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    @property
    def bounded(self) -> bool:
        return self._bounded

    @bounded.setter
    def bounded(self, value: bool) -> None:
        self._bounded = value
        if value:
            self._send(b"bounded\n")

    @property
    def lost(self) -> str | None:
        """Why this task lost its lease (set by the runtime's lease heartbeat): the child is stopped."""
        return self._lost

    @lost.setter
    def lost(self, why: str | None) -> None:
        self._lost = why
        if why is not None:
            self._send(b"lost\n")  # it writes nothing more, its sinks included
            self.request_stop()

    def request_end(self) -> None:
        self.end_requested = True
        self._send(b"end\n")

    def _hello(self) -> list[bytes]:
        return [b"bounded\n"] * self._bounded + [b"end\n"] * self.end_requested

    def caught_up(self) -> bool:
        """As `PipelineTask.caught_up`: the child said it had read all and committed what it made, and
        the input topics hold nothing past the positions it said (asked now)."""
        if self.status != "running" or not self._caught_up:
            return False
        ends: dict[str, dict[int, int]] = {}
        for (topic, part), pos in list(self.positions.items()):
            if pos < (ends.get(topic) or ends.setdefault(topic, self.log.end_offsets(topic))).get(part, pos):
                return False
        return True

    def _stopping(self, stop: threading.Event) -> bool:
        return stop.is_set() or self.lost is not None

    def _terminal(self) -> BaseException:
        if self.status == "fenced" or self._lost is not None:
            self.status, self.error = "fenced", self._lost or self.error or f"pipeline {self.name!r} lost its lease"
            return FencedError(self.error)
        return super()._terminal()

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            with contextlib.suppress(AffluentError):  # the child commits under the lease; it is let go once the child is gone
                self.log.release_lease(self.name, self.owner)
        if self._lost is not None:
            self.status, self.error = "fenced", self._lost
            raise FencedError(self._lost)

    def _died(self) -> None:
        self.metrics.inc("affluent_task_errors_total", pipeline=self.name, error="ProcessEnded")

    def _starting(self) -> None:
        self._before, self._counters = self.records_in, {}
        self._caught_up = self.ended = False  # until the new child says so

    def _apply(self, report: dict[str, Any]) -> None:
        self.records_in, self.ended, self._caught_up = self._before + report["records_in"], report["ended"], report["caught_up"]
        self.positions = {(t, p): pos for t, p, pos in report["positions"]}
        for name, labels, value in report["counters"]:
            key = (name, tuple(map(tuple, labels)))
            added = value - self._counters.get(key, 0.0)
            if added > 0:
                self.metrics.inc(name, added, **dict(key[1]))
            self._counters[key] = value


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_exactly(n: int) -> bytes:
    parts = []
    while n:
        part = os.read(0, n)
        if not part:
            raise SystemExit("affluent.core.task_process: stdin ended before the task")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


Fields = Callable[[], dict[str, Any]]
Commands = dict[bytes, Callable[[], None]]


def _source_child(spec: SourceBinding, log_: Log, metrics: Metrics, options: dict[str, Any]) -> tuple[Any, Fields, Commands]:
    """A source's task, what it reports, and the lines it takes (none: "stop" is enough)."""
    from affluent.core.runtime import SourceTask

    task = SourceTask(spec, log_, metrics=metrics, **options)

    def fields() -> dict[str, Any]:
        return {"records_out": task.records_out, "last_event_ms": task.last_event_ms, "polls": task.polls}

    return task, fields, {}


def _pipeline_child(spec: Pipeline, log_: Log, metrics: Metrics, options: dict[str, Any]) -> tuple[Any, Fields, Commands]:
    """A pipeline's task, what it reports, and the lines it takes."""
    from affluent.core.runtime import PipelineTask

    task = PipelineTask(spec, log_, metrics=metrics, owner=options["owner"], parent_lease=True)

    def fields() -> dict[str, Any]:
        positions = [[t, p, pos] for (t, p), pos in list(task.positions.items())]
        counters = [[name, labels, v] for name, kind, labels, v in metrics.samples() if kind == "counter"]
        # asked after the positions are taken: caught up now and still there, it was caught up at them
        caught_up = task.caught_up()
        return {"records_in": task.records_in, "ended": task.ended, "caught_up": caught_up, "positions": positions, "counters": counters}

    def bounded() -> None:
        task.bounded = True

    def lost() -> None:
        task.lost = "the process that started this one lost the pipeline's lease"

    return task, fields, {b"bounded": bounded, b"end": task.request_end, b"lost": lost, b"stop": task.request_stop}


def main() -> None:
    """The child: run the task given on stdin until it is done, asked to stop, or orphaned."""
    from affluent.core.errors import TerminalError
    from affluent.core.log import open_log
    from affluent.core.runtime import tune_process

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it: a Ctrl+C must not cut a checkpoint short
    # the reports have stdout to themselves; what the task prints goes to stderr
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tune_process()
    (size,) = struct.unpack("<Q", _read_exactly(8))
    path, pickled = pickle.loads(_read_exactly(size))
    sys.path[:] = path
    try:
        kind, spec, (url, log_options), options, parent = pickle.loads(pickled)
    except Exception as exc:  # a module the parent had and this interpreter cannot import: retrying will not help
        out.write(
            orjson.dumps({"status": "failed", "error": f"its process cannot load it: {type(exc).__name__}: {exc}", "peak_rss_mb": 0, "loaded": False}) + b"\n"
        )
        out.flush()
        return
    make = _source_child if kind == "source" else _pipeline_child
    task, fields, commands = make(spec, open_log(url, **log_options), Metrics(), options)
    stop = threading.Event()

    def orphaned() -> None:
        # as if killed: the parent's successor takes over from the last checkpoint, and nothing
        # written now could be told from what that successor writes
        os._exit(3)

    def report() -> None:
        out.write(orjson.dumps({"status": task.status, "error": task.error, "peak_rss_mb": _peak_rss_mb(), **fields()}) + b"\n")
        out.flush()

    def control() -> None:
        # lines from the parent (raw reads: no lock held at exit); EOF with no "stop": the parent is gone
        buf = b""
        while chunk := os.read(0, 4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line == b"stop":
                    stop.set()
                command = commands.get(line)
                if command is not None:
                    command()
                if stop.is_set():
                    return
        orphaned()

    def reporter() -> None:
        while not stop.wait(REPORT_S):
            if os.getppid() != parent:
                orphaned()
            try:
                report()
            except BrokenPipeError:
                orphaned()
            except Exception as exc:  # a busy disk while asking for the input's end: said at the next report
                log.warning("could not report: %s", exc)

    threading.Thread(target=control, daemon=True).start()
    ticker = threading.Thread(target=reporter, daemon=True)
    ticker.start()
    try:
        task.run(stop)
    except TerminalError as exc:
        if task.status not in ("failed", "fenced"):
            task.status, task.error = "failed", str(exc)
    except Exception:  # a pipeline's crash: its status and error say it
        pass
    finally:
        stop.set()
        ticker.join()
        try:
            report()
        except BrokenPipeError:
            pass


if __name__ == "__main__":
    main()
