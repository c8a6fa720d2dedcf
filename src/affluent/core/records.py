"""Records and the binary layout of a stored record batch.

A batch is columnar: one list each of keys, values, event times and headers. The log stores a
whole batch as one blob (as Kafka does), and the runtime hands whole batches to operators, so
that per-record Python work happens only where user logic needs it.

Blob layout (little endian), version 1::

    header   magic "AFB1" | flags u8 | pad 3 | count u32 | crc32 u32 | keys_len u32 | headers_len u32
             flags: 1 keys, 2 headers, 4 split (values not all valid JSON), 8 lines
    times    count × int64      event time, UTC epoch ms
    lengths  count × uint32     byte length of each encoded value (absent with FLAG_LINES)
    keys     JSON array of str|null        (absent unless FLAG_KEYS)
    headers  JSON array of object|null     (absent unless FLAG_HEADERS)
    values   b"[" v0 b"," v1 ... b"]"      a JSON array when every value is JSON
             v0 b"\n" v1 b"\n" ... b"\n"   with FLAG_LINES: values from outside, one per line, unchecked

crc32 covers the header (but its own field) and everything after it. Values are kept as a JSON array so that a batch of JSON
values decodes in one `orjson.loads` call; the lengths let a batch with one bad value fall back to
decoding value by value, so that only that value is dead-lettered.

Values from outside (raw lines) are stored as lines, not checked when appended: checking means
parsing them, and the reader parses them anyway. A reader decodes a run of lines in one call as
the array ``[v0,N,v1,N,...,vn,N]``, where N is a random number of its own: only when every odd
item is N is each line exactly one value (a line that is not one value, or two lines that are
halves of one, shift or swallow an N). Otherwise it decodes line by line.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from isal.isal_zlib import crc32  # zlib's crc32, ~4x as fast

from affluent.core.errors import LogCorruptError

MAGIC = b"AFB1"
FLAG_KEYS = 1
FLAG_HEADERS = 2
FLAG_SPLIT = 4  # values are not all valid JSON: decode them one by one
FLAG_LINES = 8  # values are lines, checked when read
_HEADER = struct.Struct("<4sB3xIIII")
_EMPTY_ARRAY = b"[]"

Headers = dict[str, str]


@dataclass(slots=True)
class Record:
    """One record: what a source emits and what `tail` shows."""

    value: Any
    key: str | None = None
    timestamp_ms: int = 0
    headers: Headers | None = None
    topic: str = ""
    partition: int = 0
    offset: int = -1


@dataclass(slots=True)
class DecodeFailure:
    """A stored value that is not valid for the topic's format."""

    index: int
    raw: bytes
    error: str


@dataclass(slots=True)
class RecordBatch:
    """Records of one topic partition with consecutive offsets, in columns."""

    topic: str
    partition: int
    base_offset: int
    keys: list[str | None]
    values: list[Any]
    timestamps: list[int]
    headers: list[Headers | None] | None = None
    # Values that failed to decode: their slot in `values` holds None.
    failures: list[DecodeFailure] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def next_offset(self) -> int:
        return self.base_offset + len(self.timestamps)

    def records(self) -> list[Record]:
        hs = self.headers or [None] * len(self)
        bad = {f.index for f in self.failures}
        return [
            Record(
                value=self.values[i] if i not in bad else None,
                key=self.keys[i],
                timestamp_ms=self.timestamps[i],
                headers=hs[i],
                topic=self.topic,
                partition=self.partition,
                offset=self.base_offset + i,
            )
            for i in range(len(self))
        ]

    def tail_from(self, offset: int) -> RecordBatch:
        """The part of this batch at and after `offset`."""
        skip = offset - self.base_offset
        if skip <= 0:
            return self
        return RecordBatch(
            self.topic,
            self.partition,
            offset,
            self.keys[skip:],
            self.values[skip:],
            self.timestamps[skip:],
            self.headers[skip:] if self.headers is not None else None,
            [DecodeFailure(f.index - skip, f.raw, f.error) for f in self.failures if f.index >= skip],
        )

    def head(self, n: int) -> RecordBatch:
        if n >= len(self):
            return self
        return RecordBatch(
            self.topic,
            self.partition,
            self.base_offset,
            self.keys[:n],
            self.values[:n],
            self.timestamps[:n],
            self.headers[:n] if self.headers is not None else None,
            [f for f in self.failures if f.index < n],
        )


def _default(obj: Any) -> Any:
    to_builtins = getattr(_msgspec(), "to_builtins", None)
    if to_builtins is not None:
        return to_builtins(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} as JSON")


def _msgspec() -> Any:
    try:
        import msgspec
    except ImportError:  # pragma: no cover - a core dependency
        return None
    return msgspec


def dumps(value: Any) -> bytes:
    """JSON bytes of a value: dicts, lists, dataclasses, datetimes, msgspec Structs."""
    return orjson.dumps(value, default=_default)


def encode_values(values: Iterable[Any]) -> list[bytes]:
    """Serialise Python values as JSON, one bytes object each."""
    return [orjson.dumps(v, default=_default) for v in values]


class Lines(Sequence[bytes]):
    """Values as lines of text in one bytes object, each line ending in a line break: what a source
    reading text hands over, appended as it is, with no bytes object per value (made on first use)."""

    __slots__ = ("_values", "block", "n")

    def __init__(self, block: bytes, count: int | None = None) -> None:
        if block[-1:] not in (b"", b"\n"):
            raise ValueError("lines end with a line break")
        self.block = block
        self.n = block.count(b"\n") if count is None else count
        self._values: list[bytes] | None = None

    @classmethod
    def of(cls, values: Sequence[bytes]) -> Lines:
        return cls(b"\n".join(values) + b"\n" if values else b"", len(values))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if self._values is None:
            self._values = self.block.split(b"\n")[:-1]
        return self._values[i]

    def runs(self, max_records: int, max_bytes: int) -> list[Lines]:
        """Split into runs of at most `max_records` lines and about `max_bytes` bytes, at line ends."""
        block, end = self.block, len(self.block)
        if self.n <= max_records and end <= max_bytes:
            return [self]
        out = []
        pos = 0
        step = max_bytes
        while pos < end:
            cut = block.index(b"\n", min(pos + step, end) - 1) + 1
            k = block.count(b"\n", pos, cut)
            if k > max_records:  # short lines: fewer bytes
                step = max(1, step * max_records // k)
                continue
            out.append(Lines(block[pos:cut], k))
            pos = cut
        return out


def batch_parts(
    raw_values: Sequence[bytes],
    timestamps: Sequence[int],
    keys: Sequence[str | None] | None = None,
    headers: Sequence[Headers | None] | None = None,
    *,
    checked: bool = True,
) -> list[bytes]:
    """Pack already-serialised values with their keys, times and headers into a blob, as the parts to
    write one after another (`b"".join` of them is the blob; the log writes them without that copy).

    checked: affluent encoded the values, so each is one valid JSON value. Values from outside (raw
    lines, produced bytes) are stored as lines, checked by the readers (see the module's docstring);
    those with a line break in them are checked here, on the very bytes stored, and when one is not
    valid JSON the batch is marked split: readers decode value by value, dead-lettering only the bad ones.
    """
    count = len(raw_values)
    if len(timestamps) != count:
        raise ValueError("timestamps and values differ in length")
    flags = 0
    lengths = b""
    section: list[bytes] = []
    if type(raw_values) is Lines and count:
        flags, section = FLAG_LINES, [raw_values.block]  # readers check the values: see the module's docstring
    elif count and not checked:
        section = [b"\n".join(raw_values), b"\n"]
        if section[0].count(b"\n") == count - 1:
            flags = FLAG_LINES
    if not flags:  # affluent's own values, or values with line breaks in them: checked now
        lengths_a = array("I", map(len, raw_values))
        array_section = _json_array(raw_values)
        flags = 0 if checked or _each_one_value(array_section, raw_values, lengths_a) else FLAG_SPLIT
        lengths, section = lengths_a.tobytes(), [array_section]
    keys_blob = b""
    if keys is not None and (keys if type(keys) is list else list(keys)).count(None) != count:
        flags |= FLAG_KEYS
        keys_blob = orjson.dumps(list(keys))
    headers_blob = b""
    if headers is not None and any(headers):
        flags |= FLAG_HEADERS
        headers_blob = orjson.dumps(list(headers))
    if type(timestamps) is list and count and timestamps.count(timestamps[0]) == count:  # one time: a poll's "now"
        times = (array("q", timestamps[:1]) * count).tobytes()
    else:
        times = array("q", timestamps).tobytes()
    head = _HEADER.pack(MAGIC, flags, count, 0, len(keys_blob), len(headers_blob))
    parts = [head[16:], times, lengths, keys_blob, headers_blob, *section]
    crc = crc32(head[:12])
    for part in parts:
        crc = crc32(part, crc)
    return [head[:12], struct.pack("<I", crc), *parts]


def _json_array(values: Sequence[bytes]) -> bytes:
    """b"[v0,v1,...]" in one copy of the values."""
    if not values:
        return _EMPTY_ARRAY
    edged = list(values)
    edged[0] = b"[" + edged[0]
    edged[-1] = edged[-1] + b"]"
    return b",".join(edged)


_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])


def _each_one_value(section: bytes, raw_values: Sequence[bytes], lengths: array[int]) -> bool:
    """Whether every value is exactly one valid JSON value: the array parses into slices of their lengths."""
    try:
        if array("I", map(len, _RAW_ARRAY.decode(section))) == lengths:
            return True
    except msgspec.DecodeError:
        pass
    loads = orjson.loads  # values with surrounding whitespace: the slices are shorter, each may still be valid
    try:
        for v in raw_values:
            loads(v)
    except orjson.JSONDecodeError:
        return False
    return True


def batch_count(blob: bytes) -> int:
    return int(_HEADER.unpack_from(blob)[2])


@dataclass(slots=True)
class _Blob:
    flags: int
    count: int
    times: list[int]
    lengths: array[int]  # empty with FLAG_LINES
    keys: list[str | None] | None
    headers: list[Headers | None] | None
    blob: bytes
    start: int  # where the values begin in `blob`

    @property
    def values(self) -> memoryview:
        return memoryview(self.blob)[self.start :]


def _open_blob(blob: bytes, where: str, verify: bool) -> _Blob:
    """Check a stored batch and split it into its sections; LogCorruptError says what is wrong."""
    if len(blob) < _HEADER.size:
        raise LogCorruptError(f"{where}: truncated batch header ({len(blob)} bytes)")
    magic, flags, count, crc, keys_len, headers_len = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise LogCorruptError(f"{where}: bad magic {magic!r}")
    view = memoryview(blob)
    body = view[_HEADER.size :]
    if verify and crc32(body, crc32(view[16 : _HEADER.size], crc32(view[:12]))) != crc:
        raise LogCorruptError(f"{where}: checksum mismatch, the stored batch is damaged")
    lines = flags & FLAG_LINES != 0
    fixed = 8 * count if lines else 12 * count
    if len(body) < fixed + keys_len + headers_len + (count if lines else 2):
        raise LogCorruptError(f"{where}: batch shorter than its {count} records")
    times = array("q")
    times.frombytes(body[: 8 * count])
    lengths = array("I")
    lengths.frombytes(body[8 * count : fixed])
    pos = fixed
    try:
        keys = orjson.loads(body[pos : pos + keys_len]) if flags & FLAG_KEYS else None
        pos += keys_len
        headers = orjson.loads(body[pos : pos + headers_len]) if flags & FLAG_HEADERS else None
        pos += headers_len
    except orjson.JSONDecodeError as exc:
        raise LogCorruptError(f"{where}: damaged keys or headers ({exc})") from exc
    start = _HEADER.size + pos
    if lines:
        if blob[-1:] != b"\n":  # and its reader counts the lines
            raise LogCorruptError(f"{where}: values section does not hold its {count} lines")
    elif len(blob) - start != sum(lengths) + max(count - 1, 0) + 2:
        raise LogCorruptError(f"{where}: values section does not match its {count} lengths")
    if (keys is not None and len(keys) != count) or (headers is not None and len(headers) != count):
        raise LogCorruptError(f"{where}: keys or headers do not match its {count} records")
    return _Blob(flags, count, times.tolist(), lengths, keys, headers, blob, start)


def decode_batch(
    blob: bytes,
    *,
    topic: str,
    partition: int,
    base_offset: int,
    value_format: str = "json",
    verify: bool = True,
) -> RecordBatch:
    """Unpack a blob made by `batch_parts`; JSON values are decoded in one call."""
    b = _open_blob(blob, f"topic {topic!r} partition {partition} batch at offset {base_offset}", verify)
    failures: list[DecodeFailure] = []
    if b.flags & FLAG_LINES:
        (part,) = _line_chunks(b, topic, partition, base_offset, 0, b.count, None)
        values, failures = part.values, part.failures
    elif value_format == "json":
        values, failures = _decode_section(b.values, b.lengths, None, b.flags & FLAG_SPLIT != 0)
    else:
        raw = _split(b.values, b.lengths)
        values = [r.decode("utf-8", "replace") for r in raw] if value_format == "text" else raw
    keys: list[str | None] = b.keys if b.keys is not None else [None] * b.count
    return RecordBatch(topic, partition, base_offset, keys, values, b.times, b.headers, failures)


def decode_chunks(
    blob: bytes,
    *,
    topic: str,
    partition: int,
    base_offset: int,
    start_offset: int | None = None,
    value_format: str = "json",
    chunk: int | None = None,
    verify: bool = True,
    decoder: ValueDecoder | None = None,
) -> Iterator[RecordBatch]:
    """Like `decode_batch`, but decodes `chunk` records at a time, from `start_offset` on.

    A few hundred decoded dicts stay in the CPU cache and in memory the allocator reuses; a whole
    8,192-record batch of them does not (512 by default). A decoder's Structs are a few fields each:
    it decodes up to `decoder.chunk` at a time.
    """
    if chunk is None:
        chunk = 512 if decoder is None else decoder.chunk
    if value_format != "json":
        yield decode_batch(blob, topic=topic, partition=partition, base_offset=base_offset, value_format=value_format, verify=verify).tail_from(
            start_offset or base_offset
        )
        return
    b = _open_blob(blob, f"topic {topic!r} partition {partition} batch at offset {base_offset}", verify)
    count, lengths, values_blob = b.count, b.lengths, b.values
    first = max(0, (start_offset or base_offset) - base_offset)
    if b.flags & FLAG_LINES:
        yield from _line_chunks(b, topic, partition, base_offset, first, chunk, decoder)
        return
    split = b.flags & FLAG_SPLIT != 0
    # byte position of value i: 1 for "[", the values before it and their commas
    start = 1 + sum(lengths[:first]) + first
    for i in range(first, count, chunk):
        j = min(i + chunk, count)
        end = start + sum(lengths[i:j]) + (j - i - 1)
        section = b"".join((b"[", values_blob[start:end], b"]"))
        start = end + 1
        values, failures = _decode_section(section, lengths[i:j], decoder, split)
        yield RecordBatch(
            topic,
            partition,
            base_offset + i,
            b.keys[i:j] if b.keys is not None else [None] * (j - i),
            values,
            b.times[i:j],
            b.headers[i:j] if b.headers is not None else None,
            failures,
        )


def _decode_section(section: memoryview | bytes, lengths: array[int], decoder: ValueDecoder | None, split: bool) -> tuple[list[Any], list[DecodeFailure]]:
    """Decode a JSON array of values in one call, or value by value when that is not safe or fails."""
    if not split:
        try:
            values = decoder.decode_many(bytes(section)) if decoder is not None else orjson.loads(section)
            if len(values) == len(lengths):
                return values, []
        except ValueError:  # orjson's and msgspec's decode errors are ValueErrors
            pass
    return _decode_each(section, lengths, decoder.decode_one if decoder is not None else None)


def _line_chunks(b: _Blob, topic: str, partition: int, base_offset: int, first: int, chunk: int, decoder: ValueDecoder | None) -> Iterator[RecordBatch]:
    """The lines of `b` from line `first` on, in equal parts of at most about `chunk` lines (cut by size:
    where a line ends is found, not stored), so that no small last part is left over."""
    blob, end = b.blob, len(b.blob)
    pos = b.start
    for _ in range(first):
        pos = blob.index(b"\n", pos) + 1
    step = max(1, (end - pos) // max(1, -(-(b.count - first) // chunk)))
    i = first
    while pos < end:
        cut = blob.index(b"\n", min(pos + step, end) - 1) + 1
        values, failures = _decode_lines(blob[pos:cut], decoder)
        k = len(values)
        if i + k > b.count:
            break
        yield RecordBatch(
            topic,
            partition,
            base_offset + i,
            b.keys[i : i + k] if b.keys is not None else [None] * k,
            values,
            b.times[i : i + k],
            b.headers[i : i + k] if b.headers is not None else None,
            failures,
        )
        pos, i = cut, i + k
    if i != b.count:
        raise LogCorruptError(f"topic {topic!r} partition {partition} batch at offset {base_offset}: values section does not hold its {b.count} lines")


#: the reader's own marker between lines (see the module's docstring); never stored
_MARK = int.from_bytes(os.urandom(8)) >> 2 | 1 << 62
_MARKED = b",%d," % _MARK


def _decode_lines(lines: bytes, decoder: ValueDecoder | None) -> tuple[list[Any], list[DecodeFailure]]:
    """Decode lines (each ends in a line break) in one call when each is one value, else line by line."""
    decode_marked = orjson.loads if decoder is None else decoder.decode_marked
    if decode_marked is not None:
        marked = lines.replace(b"\n", _MARKED)
        count = (len(marked) - len(lines)) // (len(_MARKED) - 1)  # the lines (markers) in it
        try:
            items = decode_marked(b"".join((b"[", memoryview(marked)[:-1], b"]")))
            values = items[0::2]
            # every odd item is a marker, and all of them are: each line is one value
            if len(items) == 2 * count and items[1::2].count(_MARK) == count and (decoder is None or int not in set(map(type, values))):
                return values, []
        except ValueError:  # orjson's and msgspec's decode errors are ValueErrors
            pass
    return _decode_each_of(lines.split(b"\n")[:-1], orjson.loads if decoder is None else decoder.decode_one)


def raw_values(blob: bytes) -> list[bytes]:
    """The stored bytes of each value, undecoded."""
    b = _open_blob(blob, "a stored batch", verify=True)
    if b.flags & FLAG_LINES:
        return b.blob[b.start :].split(b"\n")[:-1]
    return _split(b.values, b.lengths)


def _split(values_blob: memoryview | bytes, lengths: array[int]) -> list[bytes]:
    out = []
    pos = 1
    for n in lengths:
        out.append(bytes(values_blob[pos : pos + n]))
        pos += n + 1
    return out


def _decode_each(
    values_blob: memoryview | bytes, lengths: array[int], decode_one: Callable[[bytes], Any] | None = None
) -> tuple[list[Any], list[DecodeFailure]]:
    return _decode_each_of(_split(values_blob, lengths), decode_one or orjson.loads)


def _decode_each_of(raws: Iterable[bytes], loads: Callable[[bytes], Any]) -> tuple[list[Any], list[DecodeFailure]]:
    values: list[Any] = []
    failures: list[DecodeFailure] = []
    for i, raw in enumerate(raws):
        try:
            values.append(loads(raw))
        except ValueError as exc:
            values.append(None)
            what = "invalid JSON" if isinstance(exc, orjson.JSONDecodeError) else "does not match the schema"
            failures.append(DecodeFailure(i, raw, f"{what}: {exc}"))
    return values, failures


class ValueDecoder:
    """Decodes JSON values into typed objects (msgspec Structs), reading only the fields they declare.

    Skipping the fields a pipeline does not use makes decoding several times faster than building
    dicts, and a value of the wrong shape becomes a dead letter that says which field is wrong.
    """

    #: records decoded at a time, at most (`decode_chunks`): a stored batch of lines is cut in equal
    #: parts of about 2,048 to 4,096 (or kept whole when smaller), about as many as the 2,000 records a
    #: pipeline processes at once (`runtime.PROCESS_RECORDS`) or more, so that it need not merge them
    chunk = 4096

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.decode_many: Callable[[bytes], list[Any]] = msgspec.json.Decoder(list[schema]).decode
        self.decode_one: Callable[[bytes], Any] = msgspec.json.Decoder(schema).decode
        #: lines with the reader's markers between them (see the module's docstring): for a Struct, whose
        #: values are never ints; another schema decodes lines one by one
        self.decode_marked: Callable[[bytes], list[Any]] | None = None
        if isinstance(schema, type) and issubclass(schema, msgspec.Struct):
            self.decode_marked = msgspec.json.Decoder(list[schema | int]).decode  # type: ignore[valid-type]

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its schema (a pipeline sent to a process of its own): the decoders are made again there."""
        return ValueDecoder, (self.schema,)


def decode_values(raw: Sequence[bytes], value_format: str = "json", decoder: ValueDecoder | None = None) -> tuple[list[Any], list[DecodeFailure]]:
    """Decode stored values one record each (backends that keep a record per value, such as Kafka)."""
    if value_format == "bytes":
        return list(raw), []
    if value_format == "text":
        return [v.decode("utf-8", "replace") for v in raw], []
    loads = decoder.decode_one if decoder is not None else orjson.loads
    try:  # each value on its own: one that is not valid JSON alone cannot pair with another
        return list(map(loads, raw)), []
    except ValueError:
        return _decode_each_of(raw, loads)
