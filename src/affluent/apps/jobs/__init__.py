"""Job offers, live from the France Travail API: every offer once, categorised and counted per territory.

- `affluent run jobs [--since 48h] [--interval-s 60] [--offline]`: a backfill, then incremental
  searches; the latest state of each offer, and counts per département, commune, grand domaine,
  contract, experience, qualification and sector, per day, in the serving store;
- `affluent analyze jobs [--since --until] [--json]`: answers over the lake;
- `affluent jobs referentials [--refresh]`: the API's referentials in use.

Without credentials, offline, or when the API refuses them at startup, the pipelines replay a
bundled recording of generated offers, and say so.
"""

from __future__ import annotations

from affluent.apps.jobs.app import pipelines
from affluent.apps.jobs.cli import analyze_command, commands, run_command

__all__ = ["analyze_command", "commands", "pipelines", "run_command"]
