"""The lake: Parquet files partitioned `date=YYYY-MM-DD/hour=HH`, written atomically and exactly once.

Layout of one dataset::

    <root>/<dataset>/date=2026-03-10/hour=14/part-0000000042-<id>.parquet
    <root>/<dataset>/_commits/0000000042.json     {"seq": 42, "offsets": {"topic:partition": last offset}, ...}

A flush writes each file under a temporary name and renames it into place (readers never see half
a file), then writes the commit marker of that flush. Files whose sequence number is above the
last marker belong to a flush that crashed: they are deleted on the next open. The markers also
hold, per input topic partition, the last offset already in the lake, so records replayed after a
crash are skipped: exactly once, even though the lake is not in the log's transaction.

Feed a lake sink from a pipeline of its own with a long `commit_interval_ms` (say 30 s): files then
hold thousands of rows each, and `compact_lake` merges an hour's files into one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from affluent.core.errors import ConfigError, TerminalError
from affluent.core.records import Record
from affluent.core.sinks import Sink

log = logging.getLogger("affluent.lake")
_PART = re.compile(r"^part-(\d{10})-[0-9a-zA-Z]+\.parquet$")
COMMITS = "_commits"


class LakeError(TerminalError):
    pass


def dataset_path(root: str | os.PathLike[str], dataset: str) -> Path:
    if not dataset or "/" in dataset or dataset.startswith((".", "_")):
        raise ConfigError(f"bad lake dataset name {dataset!r}")
    return Path(root) / dataset


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _data_files(ds: Path) -> list[Path]:
    return [p for p in ds.glob("date=*/hour=*/*.parquet") if _PART.match(p.name)]


def _seq(p: Path) -> int:
    m = _PART.match(p.name)
    assert m is not None
    return int(m.group(1))


def _load_commits(ds: Path) -> tuple[int, dict[str, int]]:
    """Last committed sequence number and last offset per 'topic:partition'."""
    last = 0
    offsets: dict[str, int] = {}
    folder = ds / COMMITS
    if not folder.exists():
        return 0, {}
    for marker in folder.glob("*.json"):
        try:
            doc = orjson.loads(marker.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise LakeError(f"damaged lake commit marker {marker}: {exc}") from exc
        last = max(last, int(doc["seq"]))
        for k, v in doc.get("offsets", {}).items():
            offsets[k] = max(offsets.get(k, -1), int(v))
    return last, offsets


@contextlib.contextmanager
def dataset_lock(ds: Path) -> Iterator[None]:
    """Exclusive use of a dataset's files: one flush, recovery or compaction at a time, across processes."""
    (ds / COMMITS).mkdir(parents=True, exist_ok=True)
    with open(ds / COMMITS / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _recover(ds: Path) -> tuple[int, dict[str, int]]:
    """Delete what a crashed flush or compaction left behind; return the committed position."""
    last, offsets = _load_commits(ds)
    for f in _data_files(ds):
        if _seq(f) > last:
            f.unlink(missing_ok=True)
    for tmp in ds.glob("**/.tmp-*"):
        tmp.unlink(missing_ok=True)
    for marker in (ds / COMMITS).glob("compact-*.json") if (ds / COMMITS).exists() else ():
        doc = orjson.loads(marker.read_bytes())
        if (ds / doc["file"]).exists():  # the merged file made it: finish removing what it replaces
            for old in doc["replaces"]:
                (ds / old).unlink(missing_ok=True)
        marker.unlink()
    return last, offsets


class ParquetLakeSink(Sink):
    """Writes record values (dicts) as Parquet rows, partitioned by event date and hour.

    row: record -> dict (default: the value); time_ms: record -> event time (default: its timestamp);
    tz: the time zone of the date=/hour= folders; schema: a pyarrow schema (default: inferred per flush).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        dataset: str,
        *,
        name: str | None = None,
        row: Callable[[Record], dict[str, Any]] | None = None,
        time_ms: Callable[[Record], int] | None = None,
        schema: pa.Schema | None = None,
        tz: str = "UTC",
    ) -> None:
        self.root = Path(root)
        self.dataset = dataset
        self.path = dataset_path(root, dataset)
        self.name = name or f"lake-{dataset}"
        self.row = row
        self.time_ms = time_ms
        self.schema = schema
        self.tz = ZoneInfo(tz)
        self.seq = 0
        self.offsets: dict[str, int] = {}
        self._buffer: dict[tuple[str, str], list[pa.Table]] = {}
        self._warned = False
        self._pending: dict[str, int] = {}
        self.rows_written = 0
        self.files_written = 0
        self._quarters: dict[int, tuple[str, str]] = {}

    def open(self) -> None:
        (self.path / COMMITS).mkdir(parents=True, exist_ok=True)
        with dataset_lock(self.path):
            self.seq, self.offsets = _recover(self.path)
        self._buffer.clear()
        self._pending.clear()

    def _partition(self, ms: int) -> tuple[str, str]:
        # every zone offset is a whole number of quarter hours: one conversion per quarter hour of event time
        quarter = ms // 900_000
        hit = self._quarters.get(quarter)
        if hit is None:
            dt = datetime.fromtimestamp(quarter * 900, UTC).astimezone(self.tz)
            hit = self._quarters[quarter] = (dt.strftime("%Y-%m-%d"), dt.strftime("%H"))
            if len(self._quarters) > 4096:
                self._quarters.clear()
        return hit

    def write(self, records: list[Record]) -> None:
        rows: list[dict[str, Any]] = []
        parts: list[tuple[str, str]] = []
        pending: dict[str, int] = {}
        for r in records:
            tp = f"{r.topic}:{r.partition}"
            if 0 <= r.offset <= self.offsets.get(tp, -1):
                continue  # already in the lake: a replay after a crash
            if r.offset < 0 and not self._warned:
                self._warned = True
                log.warning(
                    "lake %s: records without a source offset (window results) cannot be deduplicated after a crash; "
                    "write them to a topic and feed the lake from that topic",
                    self.dataset,
                )
            row = self.row(r) if self.row is not None else r.value
            if not isinstance(row, dict):
                raise ConfigError(f"lake {self.dataset!r} takes dict rows, got {type(row).__name__}")
            ms = self.time_ms(r) if self.time_ms is not None else r.timestamp_ms
            parts.append(self._partition(int(ms)))
            rows.append(row)
            if r.offset > pending.get(tp, -1):
                pending[tp] = r.offset
        if not rows:
            return
        # convert now, so that a row of the wrong type fails this write (a dead letter), never a flush
        try:
            table = pa.Table.from_pylist(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"lake {self.dataset!r}: a row does not fit the dataset's schema ({exc})") from exc
        if self.schema is None:
            self.schema = table.schema  # the first rows fix the columns; later rows must fit them
        groups: dict[tuple[str, str], list[int]] = {}
        for i, part in enumerate(parts):
            groups.setdefault(part, []).append(i)
        for part, idx in groups.items():
            self._buffer.setdefault(part, []).append(table if len(idx) == len(rows) else table.take(idx))
        for k, v in pending.items():
            if v > self._pending.get(k, -1):
                self._pending[k] = v

    def discard(self) -> None:
        self._buffer.clear()
        self._pending.clear()

    def flush(self) -> None:
        if not self._buffer:
            return
        with dataset_lock(self.path):
            # what another writer (or a compaction) committed since we opened
            self.seq, on_disk = _load_commits(self.path)
            for k, v in on_disk.items():
                self.offsets[k] = max(self.offsets.get(k, -1), v)
            seq = self.seq + 1
            rows = 0
            for (date, hour), tables in sorted(self._buffer.items()):
                folder = self.path / f"date={date}" / f"hour={hour}"
                folder.mkdir(parents=True, exist_ok=True)
                table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
                _write_table(folder / f"part-{seq:010d}-{uuid.uuid4().hex[:8]}.parquet", table)
                rows += table.num_rows
                self.files_written += 1
            offsets = dict(self.offsets)
            for k, v in self._pending.items():
                offsets[k] = max(offsets.get(k, -1), v)
            _atomic_write(self.path / COMMITS / f"{seq:010d}.json", orjson.dumps({"seq": seq, "offsets": offsets, "rows": rows}))
            self.seq, self.offsets = seq, offsets
            self.rows_written += rows
        self._buffer.clear()
        self._pending.clear()

    def close(self) -> None:
        self.flush()


def compact_lake(root: str | os.PathLike[str], dataset: str | None = None) -> dict[str, int]:
    """Merge the files of each date/hour partition into one; returns counts of what was done."""
    root = Path(root)
    if not root.exists():
        raise LakeError(f"no lake at {root}")
    datasets = [dataset_path(root, dataset)] if dataset else [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]
    stats = {"datasets": 0, "partitions_compacted": 0, "files_before": 0, "files_after": 0}
    for ds in datasets:
        if not ds.exists():
            raise LakeError(f"no dataset {ds.name!r} in the lake at {root}")
        with dataset_lock(ds):
            _compact_dataset(ds, stats)
    return stats


def _compact_dataset(ds: Path, stats: dict[str, int]) -> None:
    last, offsets = _recover(ds)
    stats["datasets"] += 1
    groups: dict[Path, list[Path]] = {}
    for f in _data_files(ds):
        groups.setdefault(f.parent, []).append(f)
    for folder, files in sorted(groups.items()):
        stats["files_before"] += len(files)
        if len(files) < 2:
            stats["files_after"] += len(files)
            continue
        files.sort(key=_seq)
        tables = [pq.read_table(f) for f in files]
        merged = pa.concat_tables(tables, promote_options="permissive")
        name = f"part-{_seq(files[-1]):010d}-c{uuid.uuid4().hex[:8]}.parquet"
        marker = ds / COMMITS / f"compact-{uuid.uuid4().hex}.json"
        _atomic_write(marker, orjson.dumps({"file": str((folder / name).relative_to(ds)), "replaces": [str(f.relative_to(ds)) for f in files]}))
        _write_table(folder / name, merged)
        for f in files:
            f.unlink()
        marker.unlink()
        stats["partitions_compacted"] += 1
        stats["files_after"] += 1
    # fold the flush markers into one, keeping the committed position
    commits = sorted((ds / COMMITS).glob("[0-9]*.json"))
    if len(commits) > 1:
        _atomic_write(ds / COMMITS / f"{last:010d}.json", orjson.dumps({"seq": last, "offsets": offsets, "folded": len(commits)}))
        for c in commits:
            if c.name != f"{last:010d}.json":
                c.unlink()
