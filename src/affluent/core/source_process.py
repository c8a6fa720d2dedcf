"""A source in a process of its own, for a source that declares `Source.own_process`.

A heavy reader (a big file parsed and appended at full speed) then uses another core than the
pipelines, instead of taking turns with them at Python's one interpreter lock. The child is a fresh
interpreter (`python -m affluent.core.source_process`), never a fork of this threaded process, and it
never runs the user's `__main__` again. It reads its source, the log's URL and its options (pickled)
on stdin, opens the log, and runs a `SourceTask` under the pipeline's lease, exactly as a thread
would: records and position commit together. It reports its status on stdout, a JSON line every
0.1 s. Closing its stdin asks it to stop; a child whose parent is gone stops too.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import IO, Any

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import SourceProcessError
from affluent.core.log import Log
from affluent.core.metrics import METRICS, Metrics
from affluent.core.pipeline import SourceBinding

log = logging.getLogger("affluent.runtime")

REPORT_S = 0.1


def can_run_apart(b: SourceBinding) -> str | None:
    """Why `b` cannot run in a process of its own (then it runs in a thread), or None when it can."""
    if type(b.source).__module__ == "__main__":
        return "its class is defined in __main__, which another interpreter cannot import"
    try:
        pickle.dumps(b)
    except Exception as exc:  # a lambda as key function
        return f"it cannot be pickled ({exc})"
    return None


class ProcessSourceTask:
    """Runs a `SourceTask` in a child process; the runtime reads its status, counts and errors as a
    thread's. A child that dies (killed, out of memory) is started again with backoff, from the last
    committed position; a terminal error in the child ends this task."""

    def __init__(self, binding: SourceBinding, log_: Log, *, metrics: Metrics | None = None, **options: Any) -> None:
        """options: `SourceTask`'s own (lease, dead-letter topic, pipeline...), handed to it in the child."""
        self.binding = binding
        self.log_url = log_.url
        self.options = options
        self.pipeline: str | None = options.get("pipeline")
        self.max_backoff_s: float = options.get("max_backoff_s", 30.0)
        self.metrics = metrics or METRICS
        self.status = "created"
        self.error: str | None = None
        self.records_out = 0
        self.last_event_ms: int | None = None
        self.polls = 0
        #: times the child was started again after it died
        self.restarts = 0
        #: the child's peak resident memory, MB (its last report)
        self.peak_rss_mb = 0.0

    def run(self, stop: threading.Event) -> None:
        name = self.binding.source.name
        backoff = 1.0
        while not stop.is_set():
            args = pickle.dumps((self.binding, self.log_url, self.options, os.getpid()))
            proc = subprocess.Popen([sys.executable, "-m", "affluent.core.source_process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(struct.pack("<Q", len(args)) + args)
                proc.stdin.flush()
                self._relay(proc.stdout, proc.stdin, stop)
            except (BrokenPipeError, OSError):
                pass  # the child died before it read its arguments: started again below
            finally:
                for f in (proc.stdin, proc.stdout):
                    try:
                        f.close()
                    except OSError:
                        pass
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if self.status in ("done", "stopped"):
                return
            if self.status == "failed":
                self.metrics.inc("affluent_source_errors_total", source=name, kind="terminal")
                raise SourceProcessError(f"source {name}: {self.error}")
            if stop.is_set():
                break
            self.restarts += 1
            self.status = "restarting"
            self.error = f"its process ended (exit code {proc.returncode}); it starts again from the last committed position"
            self.metrics.inc("affluent_source_errors_total", source=name, kind="error")
            log.error("source %s: %s, in %.1f s", name, self.error, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        self.status = "stopped"

    def _relay(self, reports: IO[bytes], control: IO[bytes], stop: threading.Event) -> None:
        """Apply the child's reports until it ends; ask it to stop (close its stdin) once `stop` is set."""
        name = self.binding.source.name
        for line in reports:
            report = orjson.loads(line)
            added = report["records_out"] - self.records_out
            if added > 0:
                self.metrics.inc("affluent_source_records_total", added, source=name)
            self.records_out = report["records_out"]
            self.last_event_ms, self.polls = report["last_event_ms"], report["polls"]
            self.status, self.error = report["status"], report["error"]
            self.peak_rss_mb = report["peak_rss_mb"]
            self.metrics.set("affluent_source_last_poll_ms", now_ms(), source=name)
            if stop.is_set() and not control.closed:
                control.close()


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_exactly(n: int) -> bytes:
    parts = []
    while n:
        part = os.read(0, n)
        if not part:
            raise SystemExit("affluent.core.source_process: stdin ended before the source's arguments")
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def main() -> None:
    """The child: run the source given on stdin until it is done, asked to stop, or orphaned."""
    from affluent.core.errors import TerminalError
    from affluent.core.log import open_log
    from affluent.core.runtime import SourceTask, tune_process

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tune_process()
    (size,) = struct.unpack("<Q", _read_exactly(8))
    binding, url, options, parent = pickle.loads(_read_exactly(size))
    task = SourceTask(binding, open_log(url), **options)
    stop = threading.Event()
    out = sys.stdout.buffer

    def report() -> None:
        fields = {"status": task.status, "error": task.error, "records_out": task.records_out, "last_event_ms": task.last_event_ms, "polls": task.polls}
        out.write(orjson.dumps({**fields, "peak_rss_mb": _peak_rss_mb()}) + b"\n")
        out.flush()

    def watch_parent() -> None:
        os.read(0, 1)  # EOF: the parent closed it, or is gone (a raw read: no lock held at exit)
        stop.set()

    def reporter() -> None:
        while not stop.wait(REPORT_S):
            if os.getppid() != parent:
                stop.set()
            report()

    threading.Thread(target=watch_parent, daemon=True).start()
    ticker = threading.Thread(target=reporter, daemon=True)
    ticker.start()
    try:
        task.run(stop)
    except TerminalError as exc:
        task.status, task.error = "failed", str(exc)
    finally:
        stop.set()
        ticker.join()
        try:
            report()
        except BrokenPipeError:
            pass


if __name__ == "__main__":
    main()
