"""Shelf readings over MQTT: the topic of each reading, and a simulator -> broker publisher.

Topic layout (one level per routing key, lowercase, no leading slash)::

    wh/{store}/{zone}/stock-sensor/{device_id}/telemetry     e.g. wh/paris-12/shelf-2/stock-sensor/paris-12-gta6/telemetry

The zone is the shelf sensor (shelf-1..4); the payload is the reading's JSON, published with QoS 1.

>>> telemetry_topic({"store_id": "paris-12", "sensor_id": "shelf-2", "device_id": "paris-12-gta6"})
'wh/paris-12/shelf-2/stock-sensor/paris-12-gta6/telemetry'
"""

from __future__ import annotations

import threading
import time
from typing import Any

from affluent.sources.iot import MqttPublisher, SimulatorSource

TOPIC_FILTER = "wh/+/+/stock-sensor/+/telemetry"


def telemetry_topic(reading: dict[str, Any]) -> str:
    return f"wh/{reading['store_id']}/{reading['sensor_id']}/stock-sensor/{reading['device_id']}/telemetry"


def publish_simulation(
    source: SimulatorSource,
    publisher: MqttPublisher,
    *,
    duration_s: float | None = None,
    max_readings: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run the simulator and publish its readings until it is done, `duration_s` passes or `stop` is set."""
    stop = stop or threading.Event()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    sent = 0
    source.open(None)
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            polled = source.poll()
            values = [r.value for r in polled.records]
            if max_readings is not None:
                values = values[: max_readings - sent]
            sent += publisher.publish_many((telemetry_topic(v), v) for v in values)
            if polled.done or (max_readings is not None and sent >= max_readings):
                break
            wait = polled.wait_s if deadline is None else min(polled.wait_s, max(0.0, deadline - time.monotonic()))
            stop.wait(wait)
    finally:
        source.close()
    return sent
