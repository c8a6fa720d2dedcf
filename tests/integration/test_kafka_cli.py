"""The CLI on Kafka: `--log kafka://…` for any command, and a broker that is down at start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from affluent.core.log import open_log

AFFLUENT = Path(sys.executable).with_name("affluent")


def _affluent(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AFFLUENT), *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, env={"COLUMNS": "200", "PATH": ""})


def test_topics_commands_on_kafka(kafka_broker: Any, tmp_path: Path) -> None:
    url = kafka_broker.url
    r = _affluent("--log", url, "topics", "create", "readings", "--partitions", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _affluent("--log", url, "topics", "produce", "readings", cwd=tmp_path, stdin="".join(f'{{"shelf": "s{i}", "quantity": {i}}}\n' for i in range(9)))
    assert r.returncode == 0, r.stdout + r.stderr
    log = open_log(url)
    try:
        info = log.describe_topic("readings")
        assert info.config.partitions == 3 and info.records == 9
        got = sorted(r.value["quantity"] for p in range(3) for r in log.iter_records("readings", p))
        assert got == list(range(9))
        log.commit("readers", {("readings", p): 1 for p in range(3)})
    finally:
        log.close()
    r = _affluent("--log", url, "topics", "describe", "readings", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "partitions=3" in r.stdout
    assert "readers" in r.stdout  # the group and its lag
    assert not (tmp_path / ".affluent" / "affluent.db").exists(), "nothing went to the embedded log"


def test_a_broker_down_at_start_is_waited_for_in_one_line_a_try(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(AFFLUENT), "--log", "kafka://127.0.0.1:1?timeout_s=2&sasl.password=hunter2", "run", "stock", "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"COLUMNS": "400", "PATH": ""},
    )
    time.sleep(10)  # two tries (2 s each, 1 s apart) after the start-up, with room for a loaded machine
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    text = out + err
    assert text.count("waiting for the log:") >= 2, text
    assert "127.0.0.1:1" in text and "AFFLUENT__LOG__URL" in text
    assert "Traceback" not in text
    assert "hunter2" not in text
