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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from affluent.core.errors import ConfigError, TerminalError
from affluent.core.operators import Batch
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
    for marker in folder.glob("[0-9]*.json"):  # flush markers; a crashed compaction's compact-*.json is not one
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
    tz: the time zone of the date=/hour= folders; schema: a pyarrow schema (default: inferred per flush);
    with a schema, a row's keys that it does not name are left out.
    columns_of: (values, event times) -> {column: list}, the rows of a whole batch at once, in place of
    `row`: a batch then becomes a table with no Python object per row (see `write_batch`).
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
        columns_of: Callable[[list[Any], list[int]], dict[str, list[Any]]] | None = None,
    ) -> None:
        if columns_of is not None and (row is not None or time_ms is not None):
            raise ConfigError(f"lake {dataset!r}: columns_of makes the rows from values and event times; it takes no row or time_ms")
        self.root = Path(root)
        self.dataset = dataset
        self.path = dataset_path(root, dataset)
        self.name = name or f"lake-{dataset}"
        self.row = row
        self.time_ms = time_ms
        self.columns_of = columns_of
        self.schema = schema
        self.tz = ZoneInfo(tz)
        self.seq = 0
        self.offsets: dict[str, int] = {}
        #: per date/hour: (rows, their 'topic:partition' (one for all of them, or one each), their offsets),
        #: so that a flush can drop rows already in the lake
        self._buffer: dict[tuple[str, str], list[tuple[pa.Table, str | list[str], Sequence[int]]]] = {}
        self._warned = False
        #: files of a flush that failed half-way, to delete before the next one reuses its sequence number
        self._orphans: list[Path] = []
        self.rows_written = 0
        self.files_written = 0
        self._quarters: dict[int, tuple[str, str]] = {}

    def open(self) -> None:
        (self.path / COMMITS).mkdir(parents=True, exist_ok=True)
        with dataset_lock(self.path):
            self.seq, self.offsets = _recover(self.path)
        self._buffer.clear()

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
        rows: list[Any] = []
        times: list[int] = []
        parts: list[tuple[str, str]] = []
        tps: list[str] = []
        offsets: list[int] = []
        for r in records:
            tp = f"{r.topic}:{r.partition}"
            if self._in_lake(tp, r.offset):
                continue
            if r.offset < 0:
                self._warn_no_offset()
            row = self.row(r) if self.row is not None else r.value
            if self.columns_of is None and not isinstance(row, dict):
                raise ConfigError(f"lake {self.dataset!r} takes dict rows, got {type(row).__name__}")
            ms = self.time_ms(r) if self.time_ms is not None else r.timestamp_ms
            parts.append(self._partition_of(ms))
            rows.append(row)
            times.append(ms)
            tps.append(tp)
            offsets.append(r.offset)
        if not rows:
            return
        table = self._table(pa.Table.from_pylist, rows) if self.columns_of is None else self._table(pa.Table.from_pydict, self.columns_of(rows, times))
        self._add(table, parts, tps, offsets)

    def write_batch(self, batch: Batch, topic: str, partition: int) -> None:
        """Take a whole batch of one topic partition: with `columns_of`, as columns straight from the
        values (the rows of one date and hour, nearly every batch, are checked for the partition once)."""
        if self.columns_of is None or not batch.values:
            super().write_batch(batch, topic, partition)
            return
        tp = f"{topic}:{partition}"
        values, times, offsets = batch.values, batch.timestamps, batch.offsets
        if min(offsets) < 0:
            self._warn_no_offset()
        if min(offsets) <= self.offsets.get(tp, -1):  # some may be in the lake already
            batch = batch.select([not self._in_lake(tp, o) for o in offsets])
            values, times, offsets = batch.values, batch.timestamps, batch.offsets
            if not values:
                return
        first = self._partition_of(min(times))
        # a date/hour folder holds one span of time: rows between two of its times are in it too
        parts = [first] * len(times) if first == self._partition_of(max(times)) else [self._partition_of(t) for t in times]
        self._add(self._table(pa.Table.from_pydict, self.columns_of(values, times)), parts, tp, offsets)

    def _in_lake(self, tp: str, offset: int) -> bool:
        """The record at `offset` of topic partition `tp` is in the lake already (replayed after a crash)."""
        return 0 <= offset <= self.offsets.get(tp, -1)

    def _warn_no_offset(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "lake %s: records without a source offset (window results) cannot be deduplicated after a crash; "
                "write them to a topic and feed the lake from that topic",
                self.dataset,
            )

    def _partition_of(self, ms: Any) -> tuple[str, str]:
        try:
            return self._partition(int(ms))
        except (OverflowError, OSError, ValueError) as exc:
            raise ConfigError(f"lake {self.dataset!r}: event time {ms!r} has no date ({exc})") from exc

    def _table(self, make: Callable[..., pa.Table], rows: Any) -> pa.Table:
        # convert now, so that a row of the wrong type fails this write (a dead letter), never a flush
        try:
            table = make(rows, schema=self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"lake {self.dataset!r}: a row does not fit the dataset's schema ({exc})") from exc
        if self.schema is None:
            self.schema = table.schema  # the first rows fix the columns; later rows must fit them
        return table

    def _add(self, table: pa.Table, parts: list[tuple[str, str]], tps: str | list[str], offsets: Sequence[int]) -> None:
        """Buffer the rows of `table` by date and hour, with where each came from."""
        if parts and parts.count(parts[0]) == len(parts):  # one date and hour, nearly every batch
            self._buffer.setdefault(parts[0], []).append((table, tps, offsets))
            return
        groups: dict[tuple[str, str], list[int]] = {}
        for i, part in enumerate(parts):
            groups.setdefault(part, []).append(i)
        for part, idx in groups.items():
            self._buffer.setdefault(part, []).append((table.take(idx), tps if type(tps) is str else [tps[i] for i in idx], [offsets[i] for i in idx]))

    def discard(self) -> None:
        self._buffer.clear()

    def flush(self) -> None:
        if not self._buffer:
            return
        with dataset_lock(self.path):
            for f in list(self._orphans):  # raises (a transient OSError) until the disk takes the deletion
                f.unlink(missing_ok=True)
                self._orphans.remove(f)
            # what another writer (or a compaction) committed since we opened: rows at or below it are in the lake already
            self.seq, on_disk = _load_commits(self.path)
            for k, v in on_disk.items():
                self.offsets[k] = max(self.offsets.get(k, -1), v)
            committed = self.offsets
            seq = self.seq + 1
            rows = 0
            offsets = dict(committed)
            written: list[Path] = []
            try:
                for (date, hour), parts in sorted(self._buffer.items()):
                    kept: list[pa.Table] = []
                    for table, tps, offs in parts:
                        if type(tps) is str and min(offs) > committed.get(tps, -1):  # one topic partition, none in the lake yet
                            offsets[tps] = max(offsets.get(tps, -1), max(offs))
                            kept.append(table)
                            continue
                        each = [tps] * len(offs) if type(tps) is str else tps
                        keep = [o < 0 or o > committed.get(tp, -1) for tp, o in zip(each, offs, strict=True)]
                        for tp, o, new in zip(each, offs, keep, strict=True):
                            if new and o > offsets.get(tp, -1):
                                offsets[tp] = o
                        kept.append(table if all(keep) else table.filter(pa.array(keep)))
                    table = pa.concat_tables(kept) if len(kept) > 1 else kept[0]
                    if not table.num_rows:
                        continue
                    folder = self.path / f"date={date}" / f"hour={hour}"
                    folder.mkdir(parents=True, exist_ok=True)
                    path = folder / f"part-{seq:010d}-{uuid.uuid4().hex[:8]}.parquet"
                    written.append(path)
                    _write_table(path, table)
                    rows += table.num_rows
                if rows:
                    _atomic_write(self.path / COMMITS / f"{seq:010d}.json", orjson.dumps({"seq": seq, "offsets": offsets, "rows": rows}))
            except BaseException:
                # e.g. a full disk: these files have no commit marker; they go before the next flush writes
                self._orphans.extend(written)
                for tmp in self.path.glob("date=*/hour=*/.tmp-*"):
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                raise
            if rows:
                self.seq, self.offsets = seq, offsets
                self.rows_written += rows
                self.files_written += len(written)
        self._buffer.clear()

    def close(self) -> None:
        self._buffer.clear()


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


# -- checking the lake -----------------------------------------------------------------------------------------

_DATE_DIR = re.compile(r"^date=\d{4}-\d{2}-\d{2}$")
_HOUR_DIR = re.compile(r"^hour=([01]\d|2[0-3])$")


@dataclass(frozen=True, slots=True)
class LakeProblem:
    """One thing wrong in the lake: the file (or folder) and what is wrong with it.

    damaged: a Parquet file that cannot be read (what makes an analysis fail), not a leftover or a marker.
    """

    path: Path
    problem: str
    damaged: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_lake(root: str | os.PathLike[str], dataset: str | None = None, *, stats: dict[str, int] | None = None) -> list[LakeProblem]:
    """Verify every file of the lake (or of one dataset); the problems found, [] when all is well.

    - every Parquet file under date=/hour= (all that analyses read) opens: magic bytes and footer; its
      schema reads; each row group decodes, with as many rows as the footer says; a column has one type
      across a dataset's files;
    - every commit marker parses, with its sequence number (that of its name) and offsets;
    - nothing is left of a crashed write: no temporary file, no data file beyond the last commit marker,
      no unfinished compaction (analyses would read both the merged file and the files it replaces).

    `stats`, when given, receives counts: datasets, files, row_groups, rows, markers.
    Raises LakeError when there is no lake at `root` or no such dataset.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     (Path(root) / "ds" / "date=2026-03-10" / "hour=14").mkdir(parents=True)
    ...     _ = (Path(root) / "ds" / "date=2026-03-10" / "hour=14" / "part-0000000001-ab12cd34.parquet").write_bytes(b"PAR1")
    ...     [(p.path.name, p.problem.split(":")[0]) for p in check_lake(root)]
    [('_commits', 'missing'), ('part-0000000001-ab12cd34.parquet', 'not a readable Parquet file')]
    """
    root = Path(root)
    if not root.is_dir():
        raise LakeError(f"no lake at {root}")
    datasets = [dataset_path(root, dataset)] if dataset else sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    counts = stats if stats is not None else {}
    for k in ("datasets", "files", "row_groups", "rows", "markers"):
        counts.setdefault(k, 0)
    problems: list[LakeProblem] = []
    for ds in datasets:
        if not ds.is_dir():
            raise LakeError(f"no dataset {ds.name!r} in the lake at {root}")
        counts["datasets"] += 1
        problems += _check_dataset(ds, counts)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_dataset(ds: Path, counts: dict[str, int]) -> list[LakeProblem]:
    problems: list[LakeProblem] = []
    # what a writer changes (markers, temporary files, which files exist) is looked at under the dataset's lock,
    # so that a flush or a compaction under way is not taken for a crashed one; files are decoded after
    with contextlib.ExitStack() as locked:
        if (ds / COMMITS).is_dir():
            with contextlib.suppress(OSError):  # a read-only lake is checked without its lock
                locked.enter_context(dataset_lock(ds))
        last = _check_markers(ds, problems, counts)
        for tmp in sorted(ds.rglob(".tmp-*")):
            problems.append(LakeProblem(tmp, "temporary file left by a crashed write (the lake sink deletes it on its next open)"))
        files: list[Path] = []
        for folder in sorted(p for p in ds.glob("date=*/hour=*") if p.is_dir()):
            if not (_DATE_DIR.match(folder.parent.name) and _HOUR_DIR.match(folder.name)):
                problems.append(LakeProblem(folder, "not a date=YYYY-MM-DD/hour=HH folder"))
            for f in sorted(folder.glob("*.parquet")):
                if f.name.startswith(".tmp-"):
                    continue  # reported above
                files.append(f)
                m = _PART.match(f.name)
                if m is None:
                    problems.append(LakeProblem(f, "not a file the lake sink wrote (part-<sequence>-<id>.parquet), yet analyses read it"))
                elif last is not None and int(m.group(1)) > last:
                    problems.append(
                        LakeProblem(
                            f,
                            f"data file of an uncommitted flush (sequence {int(m.group(1))}, last commit {last}): "
                            "analyses read it; the lake sink deletes it on its next open",
                        )
                    )
    types: dict[str, dict[str, list[Path]]] = {}
    for f in files:
        try:
            problem, schema = _check_parquet(f, counts)
        except FileNotFoundError:
            continue  # compacted away since it was listed
        counts["files"] += 1
        if problem is not None:
            problems.append(LakeProblem(f, problem, damaged=True))
            continue
        assert schema is not None
        for fld in schema:
            if not pa.types.is_null(fld.type):
                types.setdefault(fld.name, {}).setdefault(str(fld.type), []).append(f)
    for column, by_type in sorted(types.items()):
        if len(by_type) < 2:
            continue
        usual = max(by_type, key=lambda t: len(by_type[t]))
        for t, paths in sorted(by_type.items()):
            if t != usual:
                for f in paths:
                    problems.append(LakeProblem(f, f"column {column!r} is {t} here but {usual} in {len(by_type[usual])} other file(s) of {ds.name}"))
    return sorted(problems, key=lambda p: str(p.path))  # stable: a file's problems stay in the order found


def _check_markers(ds: Path, problems: list[LakeProblem], counts: dict[str, int]) -> int | None:
    """Check the commit markers; the last committed sequence number, None when the markers cannot tell."""
    folder = ds / COMMITS
    if not folder.is_dir():
        if any(ds.glob("date=*/hour=*/*.parquet")):
            problems.append(LakeProblem(folder, "missing: no commit marker for the data files (the lake sink deletes them on its next open)"))
        return None
    last, damaged = 0, False
    for marker in sorted(folder.iterdir()):
        if marker.name == ".lock" or marker.name.startswith(".tmp-") or marker.is_dir():
            continue  # the lock file; temporary files are reported with the others
        counts["markers"] += 1
        try:
            doc = orjson.loads(marker.read_bytes())
        except (orjson.JSONDecodeError, OSError) as exc:
            problems.append(LakeProblem(marker, f"commit marker does not parse: {_first_line(exc)}"))
            damaged = True
            continue
        if marker.name.startswith("compact-") and marker.suffix == ".json":
            if isinstance(doc, dict) and isinstance(doc.get("file"), str) and isinstance(doc.get("replaces"), list):
                problems.append(
                    LakeProblem(marker, f"unfinished compaction of {len(doc['replaces'])} file(s) into {doc['file']}: analyses may read rows twice")
                )
            else:
                problems.append(LakeProblem(marker, "compaction marker without its file and replaced files"))
            continue
        if not re.fullmatch(r"\d{10}\.json", marker.name):
            problems.append(LakeProblem(marker, "unexpected file among the commit markers"))
            continue
        seq = doc.get("seq") if isinstance(doc, dict) else None
        offsets = doc.get("offsets", {}) if isinstance(doc, dict) else None
        if type(seq) is not int or seq != int(marker.stem):
            problems.append(LakeProblem(marker, f"commit marker has sequence number {seq!r}, not {int(marker.stem)} as its name says"))
            damaged = True
        elif not isinstance(offsets, dict) or not all(isinstance(k, str) and type(v) is int for k, v in offsets.items()):
            problems.append(LakeProblem(marker, "commit marker offsets are not a {'topic:partition': offset} map"))
        else:
            last = max(last, seq)
    return None if damaged else last


def _check_parquet(path: Path, counts: dict[str, int]) -> tuple[str | None, pa.Schema | None]:
    """(what is wrong with this Parquet file or None, its schema); FileNotFoundError when it is gone."""
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError (thrift), MemoryError (absurd sizes)...
        return f"not a readable Parquet file: {_first_line(exc)}", None
    try:
        try:
            schema = pf.schema_arrow
        except Exception as exc:
            return f"unreadable schema: {_first_line(exc)}", None
        meta = pf.metadata
        for i in range(meta.num_row_groups):
            try:
                table = pf.read_row_group(i)
            except FileNotFoundError:
                raise
            except Exception as exc:
                return f"row group {i + 1} of {meta.num_row_groups} does not decode: {_first_line(exc)}", schema
            counts["row_groups"] += 1
            counts["rows"] += table.num_rows
            if table.num_rows != meta.row_group(i).num_rows:
                return f"row group {i + 1} holds {table.num_rows} rows, its footer says {meta.row_group(i).num_rows}", schema
        return None, schema
    finally:
        pf.close()
