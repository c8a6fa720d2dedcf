"""Files as sources: a JSON-lines file read once, from its start to its end."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

from affluent.core.errors import ConfigError
from affluent.core.records import Lines
from affluent.core.sources import Source, SourcePoll

_EMPTY_LINE = re.compile(b"\n\n")  # a regular expression finds it faster than `in`


class JsonLinesSource(Source):
    """The JSON values of a file, one per line, appended as they are.

    Lines are not parsed here (the fast path: no Python object per record). The log checks that each
    is one JSON value; a line that is not goes to the pipeline's dead-letter topic with the reason
    when it is read, and the others go on. Empty lines are skipped. Records are keyless (a `key`
    given to `Pipeline.source` parses them to key them) and timed when appended; a pipeline takes
    event time from a field with `with_timestamp`. A restart resumes after the last line appended.
    The source is done at the end of the file: run it with `Runtime.run_to_end`. A file of 64 MiB or
    more is read in a process of its own (`Source.own_process`), unless a key function that cannot be
    pickled keeps it in a thread.
    """

    mode = "file"
    #: a file at least this big is read in a process of its own (starting one costs about 0.15 s)
    PROCESS_BYTES = 64 << 20

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None, chunk_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.name = name or f"file-{self.path.stem}"
        self.chunk_bytes = chunk_bytes
        self._file: IO[bytes] | None = None
        self._position = 0

    @property
    def own_process(self) -> bool:  # type: ignore[override]
        """Parsing and appending a big file is CPU work: it runs beside the pipelines, on another core."""
        try:
            return self.path.stat().st_size >= self.PROCESS_BYTES
        except OSError:
            return False  # opening it says why

    def open(self, position: Any | None) -> None:
        try:
            self._file = self.path.open("rb")
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
        self._position = int(position or 0)
        self._file.seek(self._position)

    def poll(self) -> SourcePoll:
        assert self._file is not None, "open() first"
        block = self._file.read(self.chunk_bytes)
        full = len(block) == self.chunk_bytes
        if full and b"\n" not in block:  # a line longer than a chunk: read on to its end
            block += self._file.readline()
            full = False
        if full:  # up to its last line break: the line the chunk's end cuts is read again next time
            end = block.rindex(b"\n") + 1
            if end < len(block):
                self._file.seek(self._position + end)
                block = block[:end]
            self._position += end
        else:
            self._position += len(block)
            if block[-1:] not in (b"", b"\n"):
                block += b"\n"  # the file's last line, with no line break
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        empty_lines = _EMPTY_LINE.search(block) or block[:1] == b"\n"
        lines = Lines.of([line for line in block.split(b"\n")[:-1] if line]) if empty_lines else Lines(block)
        return SourcePoll(raw=lines, position=self._position, done=not full and not lines)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def describe(self) -> str:
        return f"{self.name} ({self.path})"
