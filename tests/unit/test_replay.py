"""Recording any source's polls, and playing them back (affluent.sources.replay)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from affluent.core.errors import ConfigError
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll
from affluent.core.sqlite_log import SQLiteLog
from affluent.sources.replay import RecordingSource, ReplaySource
from affluent.testing import ListSource, read_topic, run_for, run_until

T0 = 1_700_000_000_000


def write_recording(path: Path, polls: list[tuple[int, list[dict[str, Any]]]], *, source: str = "feed") -> Path:
    lines = [orjson.dumps({"affluent_recording": 1, "source": source, "started_ms": polls[0][0] if polls else 0})]
    lines += [orjson.dumps({"wall_ms": wall, "records": recs}) for wall, recs in polls]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


POLLS = [
    (10_000, [{"k": "s1", "v": {"bikes": 3}, "t": T0, "h": {"etag": "1"}}, {"k": "s2", "v": {"bikes": 0}, "t": T0 + 5, "h": None}]),
    (12_000, [{"k": "s1", "v": {"bikes": 2}, "t": T0 + 2_000, "h": None}]),
    (12_500, [{"k": None, "v": [1, 2], "t": 0, "h": None}, {"k": "s3", "v": "x", "t": T0 + 2_600, "h": None}]),
]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "feed.jsonl", POLLS)


def drain(src: Source, limit: int = 100) -> list[SourcePoll]:
    out = []
    for _ in range(limit):
        r = src.poll()
        out.append(r)
        if r.done:
            break
    return out


def flat(polls: list[SourcePoll]) -> list[tuple[Any, Any, int, Any]]:
    return [(r.key, r.value, r.timestamp_ms, r.headers) for p in polls for r in p.records]


EXPECTED = [(r["k"], r["v"], r["t"], r["h"]) for _, recs in POLLS for r in recs]


# -- recording ----------------------------------------------------------------------------------------------------------------


class CountingSource(Source):
    """Two records per poll, an empty poll in between, done after 3 record polls."""

    name = "counter"
    mode = "simulator"

    def __init__(self) -> None:
        self.n = 0
        self.opened_with: Any = "never"
        self.closed = False

    def open(self, position: Any | None) -> None:
        self.opened_with = position
        self.n = int(position or 0)

    def poll(self) -> SourcePoll:
        self.n += 1
        if self.n % 2 == 0:
            return SourcePoll(records=[], wait_s=0.5, position=self.n)
        recs = [Record(value={"n": self.n, "j": j}, key=f"k{j}", timestamp_ms=T0 + self.n * 1000 + j, headers={"j": str(j)} if j else None) for j in range(2)]
        return SourcePoll(records=recs, wait_s=0.25, position=self.n, done=self.n >= 5)

    def close(self) -> None:
        self.closed = True


def test_recording_source_writes_what_the_inner_source_returns(tmp_path: Path) -> None:
    inner = CountingSource()
    rec = RecordingSource(inner, tmp_path / "rec" / "counter.jsonl")
    assert (rec.name, rec.offline) == ("counter", True)
    rec.open(None)
    assert inner.opened_with is None
    polls = drain(rec)
    rec.close()
    assert inner.closed
    assert [p.wait_s for p in polls] == [0.25, 0.5, 0.25, 0.5, 0.25]  # the inner source's answers, unchanged
    assert [p.position for p in polls] == [1, 2, 3, 4, 5]
    lines = [orjson.loads(line) for line in (tmp_path / "rec" / "counter.jsonl").read_bytes().splitlines()]
    assert lines[0]["affluent_recording"] == 1 and lines[0]["source"] == "counter"
    assert len(lines) == 4  # the header and the three polls that had records
    assert [[(r["k"], r["v"], r["t"], r["h"]) for r in line["records"]] for line in lines[1:]] == [
        [("k0", {"n": n, "j": 0}, T0 + n * 1000, None), ("k1", {"n": n, "j": 1}, T0 + n * 1000 + 1, {"j": "1"})] for n in (1, 3, 5)
    ]
    walls = [line["wall_ms"] for line in lines[1:]]
    assert walls == sorted(walls)
    # reopening appends to the same recording, without a second header
    again = RecordingSource(CountingSource(), tmp_path / "rec" / "counter.jsonl")
    again.open(4)
    again.poll()
    again.close()
    lines = (tmp_path / "rec" / "counter.jsonl").read_bytes().splitlines()
    assert len(lines) == 5 and b"affluent_recording" not in lines[-1]
    assert ReplaySource(tmp_path / "rec" / "counter.jsonl").polls[-1][1][0].value == {"n": 5, "j": 0}


def test_record_then_replay_round_trip(tmp_path: Path) -> None:
    rec = RecordingSource(CountingSource(), tmp_path / "c.jsonl")
    rec.open(None)
    original = drain(rec)
    rec.close()
    replay = ReplaySource(tmp_path / "c.jsonl", speed=math.inf)
    replay.open(None)
    played = drain(replay)
    assert flat(played) == flat(original)
    assert [len(p.records) for p in played] == [2, 2, 2]


# -- replaying --------------------------------------------------------------------------------------------------------------------


def test_replay_plays_polls_in_order(recording: Path) -> None:
    src = ReplaySource(recording, speed=math.inf)
    assert src.name == "replay-feed" and src.offline
    assert ReplaySource(recording, name="brest").name == "brest"
    src.open(None)
    polls = drain(src)
    assert [len(p.records) for p in polls] == [2, 1, 2]
    assert flat(polls) == EXPECTED
    assert [p.done for p in polls] == [False, False, True]
    assert [p.wait_s for p in polls] == [0.0, 0.0, 0.0]
    after = src.poll()
    assert after.done and after.records == []
    assert src.duration_ms == 2_500


@pytest.mark.parametrize(
    ("speed", "waits"), [(1.0, [2.0, 0.5, 0.0]), (4, [0.5, 0.125, 0.0]), (0.5, [4.0, 1.0, 0.0]), (math.inf, [0.0, 0.0, 0.0]), (0, [0.0, 0.0, 0.0])]
)
def test_replay_speed_scales_the_waits(recording: Path, speed: float, waits: list[float]) -> None:
    src = ReplaySource(recording, speed=speed)
    src.open(None)
    polls = drain(src)
    assert [p.wait_s for p in polls] == pytest.approx(waits)
    assert flat(polls) == EXPECTED


def test_replay_loop(recording: Path) -> None:
    src = ReplaySource(recording, speed=math.inf, loop=True)
    src.open(None)
    polls = [src.poll() for _ in range(7)]
    assert not any(p.done for p in polls)
    assert flat(polls) == EXPECTED + EXPECTED + EXPECTED[:2]
    assert polls[-1].position == {"index": 1, "loops": 2, "shift_ms": 0}


def test_shift_to_now_moves_event_times_to_now(recording: Path) -> None:
    src = ReplaySource(recording, speed=math.inf, shift_to_now=True)
    before = time.time_ns() // 1_000_000
    src.open(None)
    after = time.time_ns() // 1_000_000
    got = flat(drain(src))
    newest_of_first_poll = got[1][2]  # the first poll's newest event happens now; none is ahead of it
    assert before <= newest_of_first_poll <= after
    shift = newest_of_first_poll - (T0 + 5)
    assert [t for _, _, t, _ in got] == [t + shift if t else 0 for _, _, t, _ in EXPECTED]  # 0 (= "now") stays 0
    assert [(k, v) for k, v, _, _ in got] == [(k, v) for k, v, _, _ in EXPECTED]


def test_loop_with_shift_to_now_moves_each_loop_on(recording: Path) -> None:
    src = ReplaySource(recording, speed=math.inf, shift_to_now=True, loop=True)
    src.open(None)
    first_loop = flat([src.poll() for _ in range(3)])
    second_loop = flat([src.poll() for _ in range(3)])
    step = 2_500 + 1_000  # the recording's length, and a second
    assert [t + step if t else 0 for _, _, t, _ in first_loop] == [t for _, _, t, _ in second_loop]


def test_replay_resumes_from_a_saved_position(recording: Path) -> None:
    src = ReplaySource(recording, speed=math.inf, shift_to_now=True)
    src.open(None)
    first = src.poll()
    saved = orjson.loads(orjson.dumps(first.position))  # as the runtime stores it
    rest_here = flat(drain(src))
    later = ReplaySource(recording, speed=math.inf, shift_to_now=True)
    time.sleep(0.002)
    later.open(saved)
    assert flat(drain(later)) == rest_here  # same records, and the same shift as before the restart
    done = ReplaySource(recording)
    done.open({"index": 3, "loops": 0})
    p = done.poll()
    assert p.done and p.records == []


def test_a_recording_cut_mid_line_keeps_the_complete_polls(tmp_path: Path, recording: Path) -> None:
    data = recording.read_bytes()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(data[: len(data) - 25])  # the last line loses its end (and its newline)
    src = ReplaySource(cut, speed=math.inf)
    src.open(None)
    assert flat(drain(src)) == EXPECTED[:3]


def test_bad_recordings_are_refused_with_where(tmp_path: Path, recording: Path) -> None:
    with pytest.raises(ConfigError, match="no recording at"):
        ReplaySource(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="empty recording"):
        ReplaySource(empty)
    headless = tmp_path / "headless.jsonl"
    headless.write_bytes(b'{"wall_ms": 1, "records": []}\n')
    with pytest.raises(ConfigError, match="not an affluent recording"):
        ReplaySource(headless)
    lines = recording.read_bytes().splitlines(keepends=True)
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(lines[0] + lines[1] + b'{"wall_ms": 3, "recor\n' + lines[2])
    with pytest.raises(ConfigError, match=r"broken\.jsonl:3: not a recording line"):
        ReplaySource(broken)


def test_an_empty_recording_with_only_a_header(tmp_path: Path) -> None:
    src = ReplaySource(write_recording(tmp_path / "h.jsonl", []), loop=True)
    src.open(None)
    p = src.poll()
    assert p.done and p.records == []


# -- through the runtime ------------------------------------------------------------------------------------------------------------


def test_replay_feeds_a_pipeline_and_resumes_without_duplicates(log: SQLiteLog, recording: Path) -> None:
    def build() -> Pipeline:
        p = Pipeline("bikes")
        p.source(ReplaySource(recording, speed=math.inf), topic="status").map(lambda v: v, name="copy").to_topic("copy")
        return p

    got = run_until(build(), log, topic="copy", count=5, timeout_s=20)
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _, _ in EXPECTED]
    times = [r.timestamp_ms for r in read_topic(log, "status")]
    assert times[:3] == [T0, T0 + 5, T0 + 2_000] and times[4] == T0 + 2_600
    assert times[3] > T0 + 10_000_000  # event time 0 means "when appended"
    run_for(build(), log, 0.3)  # a restart: the replay resumes at its end
    assert len(read_topic(log, "status")) == 5
    assert len(read_topic(log, "copy")) == 5


def test_record_a_run_and_replay_it_elsewhere(tmp_path: Path) -> None:
    items = [Record(value={"i": i}, key=f"k{i % 2}", timestamp_ms=T0 + i) for i in range(7)]
    live = SQLiteLog(tmp_path / "live.db")
    p = Pipeline("rec")
    p.source(RecordingSource(ListSource(items, name="list", batch_size=3), tmp_path / "run.jsonl"), topic="t")
    run_until(p, live, topic="t", count=7, metrics=Metrics())
    offline = SQLiteLog(tmp_path / "offline.db")
    q = Pipeline("rep")
    q.source(ReplaySource(tmp_path / "run.jsonl", speed=math.inf), topic="t")
    run_until(q, offline, topic="t", count=7)
    assert [(r.key, r.value, r.timestamp_ms) for r in read_topic(offline, "t")] == [(r.key, r.value, r.timestamp_ms) for r in items]


def test_a_big_recording_at_full_speed_is_streamed_in_a_process_of_its_own(recording: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PROCESS_BYTES at full speed, polls are read one at a time (in the source's own process): the same
    records, resumes, loops and shifts as a replay held in memory."""
    import affluent.sources.replay as replay

    def played(src: ReplaySource, position: Any = None, polls: int | None = None) -> list[Any]:
        src.open(position)
        return flat(drain(src) if polls is None else [src.poll() for _ in range(polls)])

    held = [played(ReplaySource(recording, speed=math.inf)), played(ReplaySource(recording, speed=math.inf, loop=True, shift_to_now=True), polls=7)]
    monkeypatch.setattr(replay, "PROCESS_BYTES", 1)
    src = ReplaySource(recording, speed=math.inf)
    assert src.own_process and src._polls is None and not ReplaySource(recording, speed=2).own_process
    assert played(src) == held[0] == EXPECTED
    looped = played(ReplaySource(recording, speed=math.inf, loop=True, shift_to_now=True), polls=7)
    assert [(k, v) for k, v, _, _ in looped] == [(k, v) for k, v, _, _ in held[1]]

    def relative(rs: list[Any]) -> list[int]:  # shift_to_now starts each at its own now
        return [t - rs[0][2] if t else 0 for _, _, t, _ in rs]

    assert relative(looped) == relative(held[1])  # the second loop moved on by the recording's length, as in memory
    first = ReplaySource(recording, speed=math.inf)
    first.open(None)
    saved = orjson.loads(orjson.dumps(first.poll().position))
    assert played(ReplaySource(recording, speed=math.inf), saved) == EXPECTED[len(flat([_first_poll(recording)])) :]
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(recording.read_bytes()[:-25])
    assert played(ReplaySource(cut, speed=math.inf)) == EXPECTED[:3]


def _first_poll(recording: Path) -> SourcePoll:
    src = ReplaySource(recording, speed=math.inf)
    src.open(None)
    return src.poll()
