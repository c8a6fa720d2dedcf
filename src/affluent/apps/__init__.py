"""The ready-made apps. Each is a package `affluent.apps.<name>` that provides:

- `pipelines(settings, *, offline) -> list[Pipeline]`: its pipelines with their sources bound;
- `run_command` and `analyze_command`: typer commands for `affluent run <name>` and `affluent analyze <name>`;
- optionally `commands`: a typer app mounted as `affluent <name> ...`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

APPS: dict[str, str] = {
    "stock": "affluent.apps.stock",
    "bikes": "affluent.apps.bikes",
    "jobs": "affluent.apps.jobs",
    "crypto": "affluent.apps.crypto",
}


def load_app(name: str) -> ModuleType:
    return importlib.import_module(APPS[name])


def available_apps() -> dict[str, ModuleType]:
    out = {}
    for name in APPS:
        try:
            out[name] = load_app(name)
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith(APPS[name]):
                raise
    return out
