"""Bike share, live from any GBFS feed (VéloZef Brest by default): full, empty and saturated stations, bike alerts, daily answers.

- `affluent run bikes [--feed URL|SYSTEM_ID] [--offline]`: station states, per-minute system counts,
  abandoned / reserved / disabled bikes and the top bikes by range, in the serving store;
- `affluent analyze bikes --day YYYY-MM-DD`: per station, hourly and daily mean bikes and docks
  available, minutes empty and minutes full (time-weighted, in the system's time zone);
- `affluent bikes systems [--country FR]`: known public GBFS systems.

Offline (or when the feed cannot be reached at startup) the pipelines replay a bundled recording
of a VéloZef-like feed, and say so.
"""

from __future__ import annotations

from affluent.apps.bikes.app import pipelines
from affluent.apps.bikes.cli import analyze_command, commands, run_command

__all__ = ["analyze_command", "commands", "pipelines", "run_command"]
