"""The README's two commands: the main job (`affluent up`, offline) and the test command CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from affluent.core.sqlite_log import SQLiteLog

ROOT = Path(__file__).resolve().parents[2]
AFFLUENT = Path(sys.executable).with_name("affluent")


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README.md must start with a sh code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_the_run_and_test_commands() -> None:
    run, test = _readme_commands()[:2]
    assert run.endswith("affluent up")
    assert "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci  # CI runs the README's test command, not a copy of it


def test_affluent_up_offline_runs_every_app(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFLUENT__")}
    cmd = [str(AFFLUENT), "up", "--offline", "--duration", "8", "--quiet", "--port", "0"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "offline" in r.stdout.lower()  # says plainly that it is not live data
    assert "dashboard: http://127.0.0.1:" in r.stdout  # and where to look
    log = SQLiteLog(tmp_path / ".affluent" / "affluent.db")
    try:
        counts = {t.name: t.records for t in log.list_topics()}
    finally:
        log.close()
    assert counts.get("stock.readings", 0) > 0, counts
    for app in ("bikes",):
        if (ROOT / "src" / "affluent" / "apps" / app).exists():
            assert any(name.startswith(f"{app}.") and n > 0 for name, n in counts.items()), counts
