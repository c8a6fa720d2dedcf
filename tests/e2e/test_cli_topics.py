"""`affluent topics ...` run as a real command, on an embedded log in a temporary folder."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from affluent.core.log import TopicConfig
from affluent.core.records import Record
from affluent.core.sqlite_log import SQLiteLog
from affluent.testing import read_topic

AFFLUENT = Path(sys.executable).parent / "affluent"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def flat_err(self) -> str:
        """stderr with rich's line wrapping undone."""
        return " ".join(self.err.split())


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an `affluent` command whose log is tmp_path/log.db."""
    if not AFFLUENT.exists():
        pytest.skip(f"{AFFLUENT} is not installed (pip install -e '.[dev]')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT__")}
    env.update({"AFFLUENT__LOG__URL": f"sqlite:///{tmp_path / 'log.db'}", "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    return env


@pytest.fixture
def cli(tmp_path: Path, cli_env: dict[str, str]) -> object:
    env = cli_env

    def run(*args: str, stdin: str | None = None) -> Result:
        r = subprocess.run(
            [str(AFFLUENT), "topics", *args], input=stdin if stdin is not None else "", capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
        )
        return Result(r.returncode, r.stdout, r.stderr)

    return run


def _log(tmp_path: Path) -> SQLiteLog:
    return SQLiteLog(tmp_path / "log.db")


def _rows(table: str) -> list[list[str]]:
    """The cells of a rich table's body rows."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in table.splitlines() if line.startswith("│")]


def test_topics_create_produce_tail_describe_list_delete(cli: object, tmp_path: Path) -> None:
    run = cli  # type: ignore[assignment]
    r = run("list")
    assert (r.code, r.out.strip()) == (0, "no topics yet")

    r = run("create", "stations", "--partitions", "2", "--retention-ms", "3600000")
    assert r.code == 0, r.err
    assert r.out.strip() == "created topic stations (2 partitions)"
    assert _log(tmp_path).describe_topic("stations").config == TopicConfig(partitions=2, retention_ms=3_600_000)

    r = run("create", "stations")
    assert r.code == 1 and "error: topic 'stations' already exists" in r.flat_err and "Traceback" not in r.err

    lines = '{"station_id": "s1", "bikes": 3}\n{"station_id": "s2", "bikes": 0}\n\n{"station_id": "s1", "bikes": 2}\n'
    r = run("produce", "stations", "--key-field", "station_id", stdin=lines)
    assert r.code == 0, r.err
    assert r.out.strip() == "appended 3 records to stations"

    r = run("tail", "stations", "--from-beginning")
    assert r.code == 0, r.err
    docs = [orjson.loads(line) for line in r.out.splitlines()]
    stored = read_topic(_log(tmp_path), "stations")
    assert [(d["partition"], d["offset"], d["key"], d["value"], d["timestamp_ms"]) for d in docs] == [
        (x.partition, x.offset, x.key, x.value, x.timestamp_ms) for x in stored
    ]
    assert sorted((d["key"], d["value"]["bikes"]) for d in docs) == [("s1", 2), ("s1", 3), ("s2", 0)]
    assert [d["value"]["bikes"] for d in docs if d["key"] == "s1"] == [3, 2]  # a key's records stay in order
    assert all(d["timestamp_ms"] > 1_600_000_000_000 for d in docs)

    r = run("tail", "stations", "-n", "1", "--raw")
    assert r.code == 0, r.err
    last_of_each = {x.partition: x.value for x in stored}
    assert [orjson.loads(line) for line in r.out.splitlines()] == list(last_of_each.values())

    r = run("produce", "notes", "--create", '{"text": "hello"}', "[1, 2]", "--key", "k")
    assert (r.code, r.out.strip()) == (0, "appended 2 records to notes")
    assert [(x.key, x.value) for x in _log(tmp_path).iter_records("notes", 0)] == [("k", {"text": "hello"}), ("k", [1, 2])]

    info = _log(tmp_path).describe_topic("stations")
    busy = max(info.partitions, key=lambda p: p.records)
    _log(tmp_path).commit("bikes", {("stations", busy.partition): 1})
    r = run("describe", "stations")
    assert r.code == 0, r.err
    assert "stations  partitions=2 retention=1 h retention_bytes=- format=json" in r.out
    rows = _rows(r.out)
    assert sorted((row[0], row[1], row[2], row[3]) for row in rows if len(row) == 7) == sorted(
        (str(p.partition), "0", str(p.end_offset), str(p.records)) for p in info.partitions
    )
    # the group's committed offset and lag, and no worker owns the partition
    assert ["bikes", str(busy.partition), "1", str(busy.end_offset - 1), "-"] in rows

    r = run("list")
    assert r.code == 0, r.err
    assert sorted((row[0], row[1], row[2], row[4], row[5]) for row in _rows(r.out)) == [
        ("notes", "1", "2", "7 d", "json"),
        ("stations", "2", "3", "1 h", "json"),
    ]

    r = run("delete", "stations", "--yes")
    assert (r.code, r.out.strip()) == (0, "deleted topic stations")
    assert [t.name for t in _log(tmp_path).list_topics()] == ["notes"]


def test_invalid_json_is_refused_and_nothing_is_appended(cli: object, tmp_path: Path) -> None:
    _log(tmp_path).create_topic("t")
    r = cli("produce", "t", stdin='{"ok": 1}\n{"broken": \n{"ok": 3}\n')  # type: ignore[operator]
    assert r.code == 1
    assert "Traceback" not in r.err
    assert re.search(r"error: line 2 is not valid JSON \(.*\): '\{\"broken\": ?'; nothing was appended", r.flat_err), r.err
    assert _log(tmp_path).describe_topic("t").records == 0
    assert r.out == ""


def test_invalid_json_names_its_line_number(cli: object, tmp_path: Path) -> None:
    _log(tmp_path).create_topic("t")
    r = cli("produce", "t", stdin='{"ok": 1}\n\n{"broken": \n')  # type: ignore[operator]
    assert r.code == 1
    assert "line 3" in r.flat_err


def test_an_error_message_with_brackets_is_printed_as_is(cli: object, tmp_path: Path) -> None:
    _log(tmp_path).create_topic("t")
    r = cli("produce", "t", stdin="[/x]\n")  # type: ignore[operator]
    assert r.code == 1
    assert "Traceback" not in r.err
    assert "'[/x]'" in r.err


@pytest.mark.parametrize("args", [("tail", "nope"), ("describe", "nope"), ("produce", "nope", "1")], ids=["tail", "describe", "produce"])
def test_unknown_topic_errors_cleanly(cli: object, tmp_path: Path, args: tuple[str, ...]) -> None:
    _log(tmp_path).create_topic("nopes")
    r = cli(*args)  # type: ignore[operator]
    assert r.code != 0
    assert "Traceback" not in r.err
    assert "error: unknown topic 'nope'; did you mean nopes? (create it with `affluent topics create nope`)" in r.flat_err
    assert r.out == ""
    assert [t.name for t in _log(tmp_path).list_topics()] == ["nopes"]


@pytest.mark.parametrize(
    "args", [("create", "t", "--partitions", "100000"), ("create", "t", "--partitions", "0"), ("tail", "t", "-n", "-5"), ("tail", "t", "-n", "0")]
)
def test_absurd_numbers_are_refused(cli: object, args: tuple[str, ...]) -> None:
    r = cli(*args)  # type: ignore[operator]
    assert r.code == 2 and "Invalid value" in r.flat_err, r
    assert "t" not in cli("list").out.split()  # type: ignore[operator]


def test_bad_topic_name(cli: object, tmp_path: Path) -> None:
    r = cli("create", "bad name")  # type: ignore[operator]
    assert r.code == 1 and "error: bad topic name 'bad name'" in r.flat_err and "Traceback" not in r.err
    assert _log(tmp_path).list_topics() == []


def test_tail_follow_prints_new_records_until_interrupted(cli_env: dict[str, str], tmp_path: Path) -> None:
    lg = _log(tmp_path)
    lg.create_topic("live")
    lg.append("live", [Record(value={"n": 0}, key="a", timestamp_ms=1)])
    proc = subprocess.Popen(
        [str(AFFLUENT), "topics", "tail", "live", "--follow"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=cli_env
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        first = orjson.loads(lines.get(timeout=30))
        assert (first["offset"], first["key"], first["value"]) == (0, "a", {"n": 0})
        lg.append("live", [Record(value={"n": 1}, key="b", timestamp_ms=2), Record(value={"n": 2}, key="c", timestamp_ms=3)])
        more = [orjson.loads(lines.get(timeout=30)) for _ in range(2)]
        assert [(d["offset"], d["key"], d["value"], d["timestamp_ms"]) for d in more] == [(1, "b", {"n": 1}, 2), (2, "c", {"n": 2}, 3)]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err
