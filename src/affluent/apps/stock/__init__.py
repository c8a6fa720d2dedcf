"""Warehouse shelf sensors -> low-stock alerts -> restock requests, and StockNow's questions answered.

`affluent run stock` runs the pipelines (simulated sensors, or MQTT with `--mqtt URL`);
`affluent analyze stock` answers the batch questions over the lake;
`affluent stock simulate` generates a simulated period fast; `affluent stock publish` feeds an MQTT broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from affluent.apps.stock.cli import analyze_command, commands, run_command

if TYPE_CHECKING:
    from affluent.config import Settings
    from affluent.core.pipeline import Pipeline

__all__ = ["analyze_command", "commands", "pipelines", "run_command"]


def pipelines(settings: Settings, *, offline: bool) -> list[Pipeline]:
    """The stock pipelines ("stock" and "stock-lake") as configured by `settings.stock`."""
    from affluent.apps.stock.pipeline import pipelines as build

    return build(settings, offline=offline)
