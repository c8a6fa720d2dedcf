"""The environment for a benchmark's sides: Python reading affluent from compiled bytecode.

A user's Python does: pip compiles a package at install, and an editable install writes its bytecode at
the first import. A machine that turns bytecode caching off (PYTHONDONTWRITEBYTECODE=1) would instead
have every side, and every process a side starts, compile affluent's source again: about 0.1 s per
process, which no user waits for. There, the sides get a bytecode cache of their own, in a temporary
folder, filled before any side is timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def side_env(folder: Path) -> dict[str, str]:
    """os.environ for the sides; with bytecode caching off, a cache in `folder`, compiled now (not timed)."""
    env = dict(os.environ)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is None:
        return env
    env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    import affluent

    subprocess.run([sys.executable, "-m", "compileall", "-q", *affluent.__path__], env=env, check=True)
    print("bytecode caching is off here (PYTHONDONTWRITEBYTECODE): the sides read affluent compiled, as after an install", flush=True)
    return env
