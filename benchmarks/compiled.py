"""The environment for a benchmark's sides: Python as a user runs it, with its bytecode cache on.

pip compiles a package at install, and an editable install writes its bytecode beside the sources at the
first import. A machine that turns bytecode caching off (PYTHONDONTWRITEBYTECODE=1) would instead have
every affluent process compile affluent's source again (about 0.1 s per process), which no user waits
for. There, the sides run without that setting, and affluent is compiled into its usual `__pycache__`
folders before any side is timed. The other sides' packages and the standard library were compiled at
their install: they are read as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys


def side_env() -> dict[str, str]:
    """os.environ for the sides, with bytecode caching on (affluent compiled now, not timed)."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is None:
        return env
    import affluent

    subprocess.run([sys.executable, "-m", "compileall", "-q", *affluent.__path__], env=env, check=True)
    print("bytecode caching is off here (PYTHONDONTWRITEBYTECODE): the sides run with it on, affluent compiled first", flush=True)
    return env
