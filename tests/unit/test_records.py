"""The record batch codec (`affluent.core.records`) and how the SQLite log uses it."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from affluent.core import records as rec_mod
from affluent.core.errors import LogCorruptError
from affluent.core.log import OutgoingBatch, TopicConfig, partition_for
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import (
    FLAG_HEADERS,
    FLAG_KEYS,
    MAGIC,
    DecodeFailure,
    Record,
    RecordBatch,
    ValueDecoder,
    batch_count,
    batch_parts,
    decode_batch,
    decode_values,
    encode_values,
    raw_values,
)
from affluent.core.runtime import PipelineTask
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import read_topic

HEADER = struct.Struct("<4sB3xIIII")


def encode_batch(*args: Any, **kwargs: Any) -> bytes:
    """The stored blob: `batch_parts` joined."""
    return b"".join(batch_parts(*args, **kwargs))


VALUES = [
    {"station_id": "42", "bikes": 3, "ratio": 0.25, "ok": True, "none": None},
    [1, "two", 3.5, [4, {"five": 5}]],
    'héllo ✓ "quoted" \\ back',
    12345678901234567,
    -0.5,
    None,
    False,
    {},
    [],
]


def _decode(blob: bytes, **kw: object) -> RecordBatch:
    return decode_batch(blob, topic="t", partition=3, base_offset=100, **kw)  # type: ignore[arg-type]


def test_round_trip_keys_values_times_headers() -> None:
    n = len(VALUES)
    keys = [f"k{i}" if i % 3 else None for i in range(n)]
    times = [0, -1, 1, 2**62, 1_700_000_000_000, 5, 5, 7, 9]
    headers = [{"h": str(i), "ü": "✓"} if i % 2 else None for i in range(n)]
    blob = encode_batch(encode_values(VALUES), times, keys, headers)
    assert blob[:4] == MAGIC
    assert batch_count(blob) == n
    b = _decode(blob)
    assert (b.topic, b.partition, b.base_offset, len(b), b.next_offset) == ("t", 3, 100, n, 100 + n)
    assert b.values == VALUES
    assert b.keys == keys
    assert b.timestamps == times
    assert b.headers == headers
    assert b.failures == []
    recs = b.records()
    assert [(r.value, r.key, r.timestamp_ms, r.headers, r.topic, r.partition, r.offset) for r in recs] == [
        (VALUES[i], keys[i], times[i], headers[i], "t", 3, 100 + i) for i in range(n)
    ]
    assert raw_values(blob) == [orjson.dumps(v) for v in VALUES]


def test_no_keys_and_no_headers_are_not_stored() -> None:
    blob = encode_batch([b"1", b"2"], [1, 2], [None, None], [None, {}])
    flags = HEADER.unpack_from(blob)[1]
    assert flags & FLAG_KEYS == 0 and flags & FLAG_HEADERS == 0
    b = _decode(blob)
    assert b.keys == [None, None]
    assert b.headers is None
    assert [r.headers for r in b.records()] == [None, None]
    with_keys = encode_batch([b"1"], [1], ["k"], [{"a": "b"}])
    assert HEADER.unpack_from(with_keys)[1] == FLAG_KEYS | FLAG_HEADERS


def test_empty_batch() -> None:
    b = _decode(encode_batch([], []))
    assert len(b) == 0 and b.values == [] and b.records() == []


def test_encode_refuses_mismatched_columns() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        encode_batch([b"1", b"2"], [1])


def test_json_fast_path_decodes_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def one_by_one(*a: object) -> None:
        raise AssertionError("a valid batch must not be decoded value by value")

    monkeypatch.setattr(rec_mod, "_decode_each", one_by_one)
    blob = encode_batch(encode_values(range(1000)), list(range(1000)))
    assert _decode(blob).values == list(range(1000))


def test_one_invalid_value_is_reported_and_the_others_decoded() -> None:
    raw = [b'{"a":1}', b"{not json", b'"ok"', b"", b"[1,2]"]
    b = _decode(encode_batch(raw, [10, 20, 30, 40, 50], ["a", "b", "c", "d", "e"]))
    assert [f.index for f in b.failures] == [1, 3]
    assert [f.raw for f in b.failures] == [b"{not json", b""]
    assert all(f.error.startswith("invalid JSON") for f in b.failures)
    assert [r.value for r in b.records()] == [{"a": 1}, None, "ok", None, [1, 2]]
    assert [r.key for r in b.records()] == ["a", "b", "c", "d", "e"]


def test_values_not_known_to_be_json_are_decoded_one_by_one() -> None:
    # invalid values that would re-pair into a valid array of the right length: b"1,2", b"[3", b"4]" -> [1, 2, [3, 4]]
    b = _decode(encode_batch([b"1,2", b"[3", b"4]"], [1, 2, 3], checked=False))
    assert [f.index for f in b.failures] == [0, 1, 2]
    assert [r.value for r in b.records()] == [None, None, None]


def test_values_stored_one_per_record_are_decoded_each_on_its_own() -> None:
    """A backend keeping a record per value (Kafka): values that would re-pair into a valid array fail alone."""
    values, failures = decode_values([b'{"a": 1}', b"1,2", b"[3", b"4]", b'"x"'])
    assert values == [{"a": 1}, None, None, None, "x"]
    assert [f.index for f in failures] == [1, 2, 3] and all("invalid JSON" in f.error for f in failures)

    class Point(msgspec.Struct):
        x: int

    typed, bad = decode_values([b'{"x": 1}', b'{"x": "no"}', b'{"x": 3, "y": 0}'], decoder=ValueDecoder(Point))
    assert typed == [Point(1), None, Point(3)]
    assert [f.index for f in bad] == [1] and "does not match the schema" in bad[0].error


def test_text_and_bytes_formats() -> None:
    raw = ["héllo".encode(), b"\xff\xfe not utf8", b""]
    blob = encode_batch(raw, [1, 2, 3])
    assert _decode(blob, value_format="bytes").values == raw
    assert _decode(blob, value_format="text").values == ["héllo", "\ufffd\ufffd not utf8", ""]


def test_tail_from_and_head_keep_columns_and_failures_aligned() -> None:
    raw = [b"0", b"bad", b"2", b"3", b"oops", b"5"]
    b = _decode(encode_batch(raw, [10, 11, 12, 13, 14, 15], [f"k{i}" for i in range(6)], [{"i": str(i)} for i in range(6)]))
    t = b.tail_from(103)
    assert (t.base_offset, t.values, t.keys, t.timestamps) == (103, [3, None, 5], ["k3", "k4", "k5"], [13, 14, 15])
    assert t.headers == [{"i": "3"}, {"i": "4"}, {"i": "5"}]
    assert [(f.index, f.raw) for f in t.failures] == [(1, b"oops")]
    assert [r.offset for r in t.records()] == [103, 104, 105]
    assert b.tail_from(100) is b and b.tail_from(50) is b
    h = b.head(3)
    assert (h.values, h.keys, h.timestamps) == ([0, None, 2], ["k0", "k1", "k2"], [10, 11, 12])
    assert [f.index for f in h.failures] == [1]
    assert b.head(6) is b


def _flip(blob: bytes, i: int) -> bytes:
    out = bytearray(blob)
    out[i] ^= 0x5A
    return bytes(out)


def _sample_blob() -> bytes:
    return encode_batch(encode_values([{"a": i} for i in range(4)]), [1, 2, 3, 4], ["x", None, "y", "z"], [None, {"h": "1"}, None, None])


def test_any_flipped_byte_of_the_body_is_detected() -> None:
    blob = _sample_blob()
    for i in range(HEADER.size, len(blob)):
        with pytest.raises(LogCorruptError) as err:
            _decode(_flip(blob, i))
        assert "topic 't' partition 3 batch at offset 100" in str(err.value)
        assert "checksum" in str(err.value)


def test_a_damaged_magic_or_checksum_is_detected() -> None:
    blob = _sample_blob()
    for i in (0, 1, 2, 3):
        with pytest.raises(LogCorruptError, match="bad magic"):
            _decode(_flip(blob, i))
    for i in (12, 13, 14, 15):  # the crc itself
        with pytest.raises(LogCorruptError, match="checksum"):
            _decode(_flip(blob, i))


@pytest.mark.parametrize("field,offset,value", [("flags", 4, FLAG_KEYS | FLAG_HEADERS), ("count", 8, 5), ("keys_len", 16, 7)])
def test_a_damaged_header_field_is_detected(field: str, offset: int, value: int) -> None:
    blob = bytearray(encode_batch(encode_values([{"a": i} for i in range(4)]), [1, 2, 3, 4], ["x", None, "y", "z"]))
    blob[offset] = value
    with pytest.raises(LogCorruptError):
        _decode(bytes(blob))


@pytest.mark.parametrize("cut", [0, 3, HEADER.size - 1])
def test_truncated_header(cut: int) -> None:
    with pytest.raises(LogCorruptError, match=r"topic 't' partition 3 batch at offset 100: truncated"):
        _decode(_sample_blob()[:cut])


def test_truncated_body() -> None:
    blob = _sample_blob()
    for cut in (HEADER.size, HEADER.size + 5, len(blob) // 2, len(blob) - 1):
        with pytest.raises(LogCorruptError, match="offset 100"):
            _decode(blob[:cut])


def test_truncated_body_without_checksum() -> None:
    blob = _sample_blob()
    for cut in (HEADER.size + 5, len(blob) - 1):
        with pytest.raises(LogCorruptError, match="offset 100"):
            _decode(blob[:cut], verify=False)


def test_partition_for_is_stable_and_in_range() -> None:
    assert partition_for("anything", 1) == 0
    assert partition_for(None, 4, fallback=6) == 2
    ps = [partition_for(f"key-{i}", 8) for i in range(200)]
    assert all(0 <= p < 8 for p in ps)
    assert ps == [partition_for(f"key-{i}", 8) for i in range(200)]
    assert len(set(ps)) == 8
    # crc32, not Python's salted hash: the same in every process
    import zlib

    assert partition_for("station-7", 5) == zlib.crc32(b"station-7") % 5


def test_outgoing_batch_of_and_extend() -> None:
    out = OutgoingBatch.of([Record(value=1, key="a", timestamp_ms=5), Record(value=2, timestamp_ms=6, headers={"h": "x"})])
    assert (out.keys, out.values, out.timestamps, out.headers) == (["a", None], [1, 2], [5, 6], [None, {"h": "x"}])
    out.extend(["b"], [3], [7])
    assert (out.keys, out.values, out.timestamps, len(out)) == (["a", None, "b"], [1, 2, 3], [5, 6, 7], 3)
    assert out.headers == [None, {"h": "x"}, None]
    assert OutgoingBatch.of([Record(value=1)]).headers is None


# -- through the SQLite log -------------------------------------------------------------------------------------


READERS = ["read", "iter_batches"]


def _read_all(log: SQLiteLog, how: str, topic: str, partition: int, offset: int) -> list[RecordBatch]:
    if how == "read":
        return log.read(topic, partition, offset, max_records=10**6)
    return list(log.iter_batches(topic, partition, offset, max_records=10**6))


def _damage(log: SQLiteLog, base_offset: int, fn: object) -> None:
    """Rewrite the stored bytes of one batch in its segment file (the file ends where they end)."""
    conn = log._conn()
    (topic_id, partition, segment, position, size) = conn.execute(
        "SELECT topic_id, partition, segment, position, size FROM batches WHERE base_offset=?", (base_offset,)
    ).fetchone()
    path = log.segments.path(topic_id, partition, segment)
    with path.open("r+b") as f:
        f.seek(position)
        damaged = fn(f.read(size))  # type: ignore[operator]
        f.seek(position)
        f.write(damaged)
        f.truncate()


@pytest.mark.parametrize("how", READERS)
def test_a_flipped_byte_in_a_stored_blob_names_topic_partition_and_offset(log: SQLiteLog, how: str) -> None:
    log.create_topic("readings", TopicConfig(partitions=2))
    log.append("readings", [Record(value={"i": i}) for i in range(5)], partition=1)
    log.append("readings", [Record(value={"i": i}) for i in range(5, 8)], partition=1)
    _damage(log, 5, lambda blob: _flip(blob, len(blob) - 3))
    # the undamaged batch still reads
    assert [r.value["i"] for b in log.read("readings", 1, 0, max_records=5) for r in b.records()] == [0, 1, 2, 3, 4]
    with pytest.raises(LogCorruptError) as err:
        _read_all(log, how, "readings", 1, 6)
    assert "topic 'readings' partition 1 batch at offset 5" in str(err.value)


@pytest.mark.parametrize("how", READERS)
def test_a_truncated_stored_blob_is_detected(log: SQLiteLog, how: str) -> None:
    log.create_topic("t")
    log.append("t", [Record(value={"i": i}) for i in range(5)])
    _damage(log, 0, lambda blob: blob[: len(blob) - 7])
    with pytest.raises(LogCorruptError, match="topic 't' partition 0 batch at offset 0"):
        _read_all(log, how, "t", 0, 0)


@pytest.mark.parametrize("how", READERS)
def test_a_damaged_stored_header_is_detected(log: SQLiteLog, how: str) -> None:
    log.create_topic("t")
    log.append("t", [Record(value={"i": i}, key="k") for i in range(5)])
    _damage(log, 0, lambda blob: blob[:8] + bytes([blob[8] ^ 0x01]) + blob[9:])
    with pytest.raises(LogCorruptError, match="topic 't' partition 0 batch at offset 0"):
        _read_all(log, how, "t", 0, 0)


@pytest.mark.parametrize("how", READERS)
def test_invalid_raw_values_are_reported_by_the_log(log: SQLiteLog, how: str) -> None:
    log.create_topic("t")
    log.append("t", OutgoingBatch(keys=[None] * 3, values=[b"1,2", b"[3", b"4]"], timestamps=[1, 2, 3], raw=True))
    batches = _read_all(log, how, "t", 0, 0)
    assert [f.index for b in batches for f in b.failures] == [0, 1, 2]


def test_raw_batch_with_one_invalid_json_value(log: SQLiteLog, tmp_path: Path) -> None:
    log.create_topic("feed", TopicConfig(partitions=1))
    log.append("feed", [Record(value={"n": 0})])
    raw = OutgoingBatch(keys=["a", "b", "c"], values=[b'{"n": 1}', b'{"n": 2', b'{"n": 3}'], timestamps=[11, 12, 13], raw=True)
    assert log.append("feed", raw) == {0: (1, 3)}
    (batch,) = log.read("feed", 0, 1)
    assert batch.values[0] == {"n": 1} and batch.values[2] == {"n": 3}
    assert batch.failures == [DecodeFailure(1, b'{"n": 2', batch.failures[0].error)]
    assert "invalid JSON" in batch.failures[0].error
    # a pipeline dead-letters it with where it came from, and goes on
    p = Pipeline("copy")
    p.topic("feed").map(lambda v: v["n"] * 10, name="x10").to_topic("out")
    metrics = Metrics()
    task = PipelineTask(p, log, metrics=metrics)
    task.open()
    while task.poll_once():
        pass
    task.commit()
    task.close()
    assert [r.value for r in read_topic(log, "out")] == [0, 10, 30]
    (dead,) = read_topic(log, "copy.dlq")
    assert dead.value["topic"] == "feed"
    assert dead.value["partition"] == 0
    assert dead.value["offset"] == 2
    assert dead.value["value"] == '{"n": 2'
    assert dead.value["step"] == "feed.decode"
    assert dead.value["error_type"] == "DecodeError"
    assert dead.value["error"].startswith("invalid JSON")
    assert dead.timestamp_ms == 12
    assert metrics.get("affluent_dead_letters_total", pipeline="copy") == 1


# -- values from outside, stored as lines and checked when read ------------------------------------------------------------
class Reading(msgspec.Struct):
    sensor: str
    qty: int


LINES = [b'{"sensor":"s%d","qty":%d}' % (i % 7, i) for i in range(40)]


def _chunks(blob: bytes, chunk: int, start: int | None = None, decoder: ValueDecoder | None = None) -> list[RecordBatch]:
    return list(rec_mod.decode_chunks(blob, topic="t", partition=0, base_offset=100, start_offset=start, chunk=chunk, decoder=decoder))


def test_raw_values_are_stored_as_lines_unchecked_and_read_in_chunks_of_any_size() -> None:
    times = list(range(1000, 1040))
    blob = encode_batch(LINES, times, checked=False)
    assert HEADER.unpack_from(blob)[1] == rec_mod.FLAG_LINES
    assert blob.endswith(b"\n".join(LINES) + b"\n")  # no lengths, no copy per value: the lines as they came
    assert raw_values(blob) == LINES
    assert _decode(blob).values == [orjson.loads(v) for v in LINES]
    for chunk in (1, 3, 7, 512):
        for start in (None, 100, 101, 117, 139):
            for decoder in (None, ValueDecoder(Reading)):
                got = _chunks(blob, chunk, start, decoder)
                first = (start or 100) - 100
                assert [b.base_offset for b in got] == [100 + first + sum(len(g) for g in got[:i]) for i in range(len(got))]
                assert [v if decoder is None else msgspec.to_builtins(v) for b in got for v in b.values] == [orjson.loads(v) for v in LINES[first:]]
                assert [t for b in got for t in b.timestamps] == times[first:]
                assert all(not b.failures for b in got)


@pytest.mark.parametrize("typed", [False, True])
def test_lines_that_are_not_one_value_each_are_dead_letters_even_when_together_they_parse(typed: bool) -> None:
    """Read as one array, b'1,"' and b'"' make [1, ","]; b'[1' b'2]' b'3,4' make [[1,2],3,4]: as many
    values as lines, each one wrong. The reader's markers tell, and each bad line is its own failure."""
    good = [b'{"sensor":"a","qty":1}', b'{"sensor":"b","qty":2}']
    sneaky = [b'{"sensor":"x","qty":3},"', b'"', b'[{"sensor":"y","qty":4}', b'{"sensor":"z","qty":5}]', b'{"sensor":"v","qty":6},{"sensor":"w","qty":7}']
    values = [good[0], *sneaky, good[1]]
    decoder = ValueDecoder(Reading) if typed else None
    (b,) = _chunks(encode_batch(values, [0] * len(values), checked=False), 512, None, decoder)
    assert [f.index for f in b.failures] == [1, 2, 3, 4, 5]
    assert [f.raw for f in b.failures] == sneaky
    got = [b.values[0], b.values[6]]
    assert [msgspec.to_builtins(v) for v in got] == [{"sensor": "a", "qty": 1}, {"sensor": "b", "qty": 2}]


def test_a_typed_line_of_another_shape_is_a_dead_letter_with_its_reason() -> None:
    values = [b'{"sensor":"a","qty":1}', b"17", b'{"sensor":"b"}', b'{"sensor":"c","qty":3}']
    (b,) = _chunks(encode_batch(values, [0] * 4, checked=False), 512, None, ValueDecoder(Reading))
    assert [(f.index, f.error.split(":")[0]) for f in b.failures] == [(1, "does not match the schema"), (2, "does not match the schema")]
    assert "Expected `object`, got `int`" in b.failures[0].error and "missing required field `qty`" in b.failures[1].error
    assert [v.qty for i, v in enumerate(b.values) if i in (0, 3)] == [1, 3]


def test_raw_values_with_line_breaks_in_them_are_checked_when_appended() -> None:
    values = [b'{\n  "sensor": "a",\n  "qty": 1\n}', b'{"sensor":"b","qty":2}']
    blob = encode_batch(values, [0, 0], checked=False)
    assert HEADER.unpack_from(blob)[1] & rec_mod.FLAG_LINES == 0
    assert _decode(blob).values == [{"sensor": "a", "qty": 1}, {"sensor": "b", "qty": 2}]
    assert raw_values(blob) == values


def test_a_batch_of_lines_that_lost_a_line_break_is_corrupt() -> None:
    blob = encode_batch(LINES[:3], [0] * 3, checked=False)
    cut = blob.replace(b"}\n{", b"}{", 1)
    with pytest.raises(LogCorruptError, match="does not hold its 3 lines"):
        rec_mod.decode_batch(cut, topic="t", partition=0, base_offset=0, verify=False)


def test_two_lines_that_are_halves_of_one_value_are_two_dead_letters() -> None:
    values = [b'{"sensor":"a","qty":1}', b"[1", b"2]", b'{"sensor":"b","qty":2}']
    for decoder in (None, ValueDecoder(Reading)):
        (b,) = _chunks(encode_batch(values, [0] * 4, checked=False), 512, None, decoder)
        assert len(b) == 4 and [f.raw for f in b.failures] == [b"[1", b"2]"]


def test_lines_split_into_runs_at_line_ends_within_both_limits() -> None:
    values = [b"%d" % (10**i) for i in range(12)] * 50  # lines of 2 to 13 bytes
    lines = rec_mod.Lines.of(values)
    assert len(lines) == 600 and lines[599] == values[599] and list(lines) == values
    for max_records, max_bytes in ((8, 1 << 20), (1000, 64), (7, 40), (600, 1 << 20), (1, 1)):
        runs = lines.runs(max_records, max_bytes)
        assert b"".join(r.block for r in runs) == lines.block
        assert sum(len(r) for r in runs) == 600 and all(r.block.count(b"\n") == len(r) <= max_records for r in runs)
        assert all(len(r.block) <= max_bytes + 14 for r in runs)  # the line that reaches the limit ends the run
    with pytest.raises(ValueError, match="line break"):
        rec_mod.Lines(b'{"a":1}')
