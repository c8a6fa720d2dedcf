"""Record what any source fetched, and play it back: at its original pace, N× faster, or at once.

This is how apps run offline and how tests stay deterministic. A recording is JSON lines:

    {"affluent_recording": 1, "source": "<name>", "started_ms": <wall ms>}
    {"wall_ms": <when this poll happened>, "records": [{"k": key, "v": value, "t": event ms, "h": headers}, ...]}
    ...
"""

from __future__ import annotations

import functools
import gzip
import itertools
import math
import os
import shutil
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import IO, Any

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import ConfigError
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll

FORMAT_VERSION = 1
#: a recording at least this big, played as fast as possible, is played in a process of its own
PROCESS_BYTES = 64 << 20


def unpack_recording(packed: Traversable, data_dir: str | os.PathLike[str]) -> Path:
    """A gzipped recording shipped in a package, unpacked once into `data_dir`/recordings (replays read plain lines)."""
    name = packed.name.removesuffix(".gz")
    target = Path(data_dir) / "recordings" / name
    stamp = target.with_suffix(".source")
    with resources.as_file(packed) as src:
        mark = f"{src.stat().st_size}:{src.stat().st_mtime_ns}"
        if target.exists() and stamp.exists() and stamp.read_text() == mark:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, target)
        stamp.write_text(mark)
    return target


class RecordingSource(Source):
    """Wraps a source and appends every poll it makes to a recording file."""

    def __init__(self, inner: Source, path: str | os.PathLike[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.mode = inner.mode
        self.path = Path(path)
        self._file: IO[bytes] | None = None

    def open(self, position: Any | None) -> None:
        self.inner.open(position)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("ab")
        if fresh:
            self._write({"affluent_recording": FORMAT_VERSION, "source": self.inner.name, "started_ms": now_ms()})

    def _write(self, doc: Any) -> None:
        assert self._file is not None
        self._file.write(orjson.dumps(doc) + b"\n")
        self._file.flush()

    def poll(self) -> SourcePoll:
        result = self.inner.poll()
        if result.records:
            self._write(
                {
                    "wall_ms": now_ms(),
                    "records": [{"k": r.key, "v": r.value, "t": r.timestamp_ms, "h": r.headers} for r in result.records],
                }
            )
        return result

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.inner.close()

    def describe(self) -> str:
        return f"{self.inner.describe()} (recording to {self.path})"


class ReplaySource(Source):
    """Plays a recording back.

    speed: 1.0 keeps the original pace, 10 plays ten times faster, math.inf (or 0) as fast as possible.
    shift_to_now: move event times so that the recording's first poll happens now (a replay that looks live).
    loop: start again at the end (each loop shifted by the recording's length when shift_to_now).

    A recording of PROCESS_BYTES or more played as fast as possible runs in a process of its own and
    is read there one poll at a time, never whole in memory (a broken line is then found when it is
    reached, not here).
    """

    mode = "replay"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        shift_to_now: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ConfigError(f"no recording at {self.path}")
        header = self._header()
        self.name = name or f"replay-{header.get('source', self.path.stem)}"
        self.speed = math.inf if speed <= 0 else speed
        # played faster than recorded, times moved to now run ahead of the wall clock: a clock of its own
        self.simulated_clock = shift_to_now and self.speed != 1
        self.loop = loop
        self.shift_to_now = shift_to_now
        self.index = 0
        self.loops = 0
        self.shift_ms = 0
        self._polls: list[tuple[int, list[Record]]] | None = None if self.own_process else list(self._iter_polls())
        self._stream: Iterator[tuple[int, list[Record]]] | None = None
        self._last_wall = 0

    @property
    def own_process(self) -> bool:  # type: ignore[override]
        """A big recording played as fast as possible is CPU work: it runs beside the pipelines, on another core."""
        return math.isinf(self.speed) and self.path.stat().st_size >= PROCESS_BYTES

    @property
    def polls(self) -> list[tuple[int, list[Record]]]:
        """(wall ms, records) of each recorded poll."""
        if self._polls is None:
            self._polls = list(self._iter_polls())
        return self._polls

    def _header(self) -> dict[str, Any]:
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    try:
                        doc = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ConfigError(f"{self.path}:1: not a recording line ({exc})") from exc
                    if not isinstance(doc, dict) or "affluent_recording" not in doc:
                        raise ConfigError(f"{self.path}: not an affluent recording (no header line)")
                    return doc
        raise ConfigError(f"{self.path}: empty recording")

    def _iter_polls(self) -> Iterator[tuple[int, list[Record]]]:
        """The recorded polls, read from the file one at a time."""
        with self.path.open("rb") as f:
            lines = (line for line in f if line.strip())
            next(lines)  # the header, read already
            for lineno, line in enumerate(lines, 2):
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if not line.endswith(b"\n"):
                        return  # a recording cut off mid-line by a crash: keep what came before
                    raise ConfigError(f"{self.path}:{lineno}: not a recording line ({exc})") from exc
                yield int(doc["wall_ms"]), [Record(value=r["v"], key=r.get("k"), timestamp_ms=r.get("t") or 0, headers=r.get("h")) for r in doc["records"]]

    @functools.cached_property
    def _first_wall(self) -> int | None:
        """When the recording's first poll was made (read once: a stream would open the file for it)."""
        if self._polls is not None:
            return self._polls[0][0] if self._polls else None
        first = next(self._iter_polls(), None)
        return None if first is None else first[0]

    @property
    def duration_ms(self) -> int:
        return self.polls[-1][0] - self.polls[0][0] if self.polls else 0

    def open(self, position: Any | None) -> None:
        pos = position or {}
        self.index = int(pos.get("index", 0))
        self.loops = int(pos.get("loops", 0))
        self._stream = None
        if "shift_ms" in pos:
            self.shift_ms = int(pos["shift_ms"])
        elif self.shift_to_now and self._first_wall is not None:
            # the newest event of the first poll becomes now: later ones follow at the replay's pace, and
            # none runs ahead of the wall clock at real pace (an older feed file in that poll stays older)
            polls = self._polls if self._polls is not None else self._iter_polls()
            first = next((rs for _, rs in polls if any(r.timestamp_ms for r in rs)), [])
            self.shift_ms = now_ms() - max((r.timestamp_ms for r in first), default=self._first_wall or 0)

    def poll(self) -> SourcePoll:
        if self._polls is None:
            return self._stream_poll()
        if self.index >= len(self._polls):
            if not self.loop or not self._polls:
                return SourcePoll(done=True, position=self._position())
            self._next_loop(self.duration_ms)
        wall, recs = self._polls[self.index]
        self.index += 1
        wait = 0.0
        if self.index < len(self._polls) and math.isfinite(self.speed):
            wait = max(0.0, (self._polls[self.index][0] - wall) / 1000 / self.speed)
        done = self.index >= len(self._polls) and not self.loop
        return SourcePoll(records=self._shifted(recs), wait_s=wait, position=self._position(), done=done)

    def _stream_poll(self) -> SourcePoll:
        """A big recording at full speed: read one poll at a time from the file."""
        if self._stream is None:
            self._stream = itertools.islice(self._iter_polls(), self.index, None)
        got = next(self._stream, None)
        if got is None and self.loop and self._first_wall is not None:
            self._next_loop(self._last_wall - (self._first_wall or 0))
            self._stream = self._iter_polls()
            got = next(self._stream, None)
        if got is None:
            return SourcePoll(done=True, position=self._position())
        wall, recs = got
        self._last_wall = wall
        self.index += 1
        return SourcePoll(records=self._shifted(recs), position=self._position())

    def _next_loop(self, duration_ms: int) -> None:
        self.index = 0
        self.loops += 1
        if self.shift_to_now:
            self.shift_ms += duration_ms + 1000

    def _shifted(self, recs: list[Record]) -> list[Record]:
        if not self.shift_ms:
            return recs
        return [Record(value=r.value, key=r.key, timestamp_ms=r.timestamp_ms + self.shift_ms if r.timestamp_ms else 0, headers=r.headers) for r in recs]

    def close(self) -> None:
        self._stream = None  # its generator closes the file

    def _position(self) -> dict[str, int]:
        return {"index": self.index, "loops": self.loops, "shift_ms": self.shift_ms}

    def describe(self) -> str:
        pace = "as fast as possible" if math.isinf(self.speed) else f"{self.speed:g}x"
        return f"replay of {self.path.name} ({pace})"
