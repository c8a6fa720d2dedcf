"""The stock pipelines, as a diagram::

    shelf sensors (simulator | MQTT)
        └─> stock.readings
              ├─ pipeline "stock":  check ─x─> stock.dlq (bad readings, with the reason)
              │                       └─ [MQTT: drop redeliveries]
              │                            ├─ alert filter ─> stock.alerts
              │                            ├─ serving table stock_shelves (each shelf's latest reading)
              │                            └─ restock handler ─> stock.restock
              │                                 └─ serving table stock_restock (each shelf's last request, open or closed)
              │                                 (an alert opens one request per shelf, a recovered reading closes it)
              └─ pipeline "stock-lake": checked readings ─> lake dataset stock_readings (date=/hour=, UTC)

The lake has a pipeline of its own so that it can commit (write Parquet files) every
`stock.lake_commit_s` seconds, while alerts and restock requests go out within a fraction of a
second. It runs in a process of its own, on another core. It skips the readings that "stock"
dead-letters, without dead-lettering them twice.
"""

from __future__ import annotations

import functools
import logging
import operator
import random
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from affluent.analytics.base import parse_when
from affluent.apps.stock.keyed_state import DropRepeats, keyed_state
from affluent.apps.stock.readings import (
    LAKE_SCHEMA,
    check_readings,
    checked_or_none,
    event_time_ms,
    lake_columns,
    reading_id,
    shelf_columns,
    shelf_key,
    source_key,
)
from affluent.apps.stock.restock import RestockRule
from affluent.apps.stock.simulator import StockSimulator
from affluent.config import Settings, StockSettings, lake_path, serving_path
from affluent.core.clock import DEFAULT_MAX_EVENT_AHEAD_MS
from affluent.core.errors import ConfigError
from affluent.core.expr import col
from affluent.core.log import Log, TopicConfig
from affluent.core.metrics import Metrics
from affluent.core.pipeline import Pipeline, Stream
from affluent.core.records import Record
from affluent.core.runtime import Runtime
from affluent.core.sources import Source
from affluent.sinks.lake import ParquetLakeSink
from affluent.sinks.serving import ServingSink
from affluent.sources.iot import MqttSource, SimulatorSource

log = logging.getLogger("affluent.apps.stock")

READINGS = "stock.readings"
ALERTS = "stock.alerts"
RESTOCK = "stock.restock"
DATASET = "stock_readings"

SHELF_COLUMNS = {
    "store_id": "VARCHAR",
    "product_id": "VARCHAR",
    "sensor_id": "VARCHAR",
    "quantity": "BIGINT",
    "threshold": "BIGINT",
    "alert": "BOOLEAN",
    "ts_ms": "BIGINT",
    "lat": "DOUBLE",
    "lon": "DOUBLE",
}
RESTOCK_COLUMNS = {
    "store_id": "VARCHAR",
    "product_id": "VARCHAR",
    "request_id": "VARCHAR",
    "status": "VARCHAR",
    "high_priority": "BOOLEAN",
    "season": "VARCHAR",
    "missing_quantity": "BIGINT",
    "quantity": "BIGINT",
    "threshold": "BIGINT",
    "opened_ms": "BIGINT",
    "updated_ms": "BIGINT",
}


def store_tz(cfg: StockSettings) -> ZoneInfo:
    try:
        return ZoneInfo(cfg.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"stock.timezone {cfg.timezone!r} is not a known time zone (e.g. Europe/Paris)") from exc


def simulator_source(cfg: StockSettings, *, name: str = "stock-simulator") -> SimulatorSource:
    """The shelf-sensor simulator configured by `cfg` (seed, stores, period, speed, start, end)."""
    tz = store_tz(cfg)
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1 << 31)
    if cfg.stores < 1:
        raise ConfigError(f"stock.stores must be at least 1, not {cfg.stores}")
    if not cfg.period_s > 0:
        raise ConfigError(f"stock.period_s must be positive, not {cfg.period_s}")
    if not cfg.speed > 0:
        raise ConfigError(f"stock.speed must be positive (or inf), not {cfg.speed}")
    model = StockSimulator(seed=seed, stores=cfg.stores, period_s=cfg.period_s, tz=cfg.timezone)
    start = parse_when(cfg.start, tz) if cfg.start else None
    end = parse_when(cfg.end, tz, end=True) if cfg.end else None
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"stock.end ({cfg.end}) must come after stock.start ({cfg.start})")
    # a saved position is resumed only by a simulator of the same stores, period and seed
    fingerprint = {"seed": cfg.seed, "stores": cfg.stores, "period_ms": model.period_ms, "start": start}
    return SimulatorSource(model, name=name, speed=cfg.speed, start_ms=start, end_ms=end, fingerprint=fingerprint)


def _ts_or_none(v: Any) -> int | None:
    return event_time_ms(v) if isinstance(v, dict) and isinstance(v.get("timestamp"), str) else None


def mqtt_source(cfg: StockSettings, url: str, *, name: str = "stock-mqtt") -> MqttSource:
    """Shelf readings published on an MQTT broker (`wh/{store}/{zone}/stock-sensor/{device}/telemetry`, QoS 1)."""
    return MqttSource(url, topic_filter=cfg.mqtt_topic, name=name, client_id=f"affluent-{name}", key=source_key, timestamp_ms=_ts_or_none)


def make_source(settings: Settings, *, offline: bool) -> Source:
    cfg = settings.stock
    if cfg.source.startswith("mqtt://"):
        if not offline:
            return mqtt_source(cfg, cfg.source)
        broker = cfg.source.split("@")[-1]  # never show credentials
        log.info("offline: the stock app runs its simulator instead of reading %s", broker)
        sim = simulator_source(cfg)
        sim.note = f"offline: runs the simulator instead of reading {broker}"
        return sim
    elif cfg.source != "simulator":
        shown = f"a {cfg.source.split('://')[0]}:// URL" if "://" in cfg.source else repr(cfg.source)  # never show credentials
        raise ConfigError(f"stock.source must be 'simulator' or an mqtt:// URL, not {shown}")
    return simulator_source(cfg)


def build_pipelines(
    source: Source,
    *,
    lake_root: str | Path,
    tz: ZoneInfo,
    redelivery_window: int | None = None,
    lake_commit_ms: int = 30_000,
    readings_config: TopicConfig | None = None,
    max_event_ahead_ms: int | None = DEFAULT_MAX_EVENT_AHEAD_MS,
    serving_db: str | Path | None = None,
) -> list[Pipeline]:
    """The "stock" and "stock-lake" pipelines fed by `source`.

    serving_db: the serving store that gets tables stock_shelves and stock_restock (None: no tables).

    redelivery_window: for at-least-once sources (MQTT QoS 1), drop a reading whose id is among the
    last `redelivery_window` ids of its device; None for sources that never repeat one (the simulator).
    """
    main = Pipeline("stock", max_event_ahead_ms=max_event_ahead_ms)
    # the key function runs in the source task, where raising would fail the whole poll
    readings = main.source(source, topic=READINGS, config=readings_config, key=source_key)
    checked = readings.batch_map(check_readings, name="check-reading").with_timestamp(event_time_ms, name="event-time")
    checked = _drop_redeliveries(checked, redelivery_window)
    checked.filter(col("alert"), name="alert-filter").to_topic(ALERTS)  # a checked reading's alert is a bool
    requests = keyed_state(checked, name="restock", key=shelf_key, step=RestockRule(tz).step)
    requests.to_topic(RESTOCK)
    if serving_db is not None:
        keys = ("store_id", "product_id")
        checked.to_sink(ServingSink(serving_db, "stock_shelves", key_columns=keys, columns=SHELF_COLUMNS, columns_of=shelf_columns))
        requests.to_sink(ServingSink(serving_db, "stock_restock", key_columns=keys, columns=RESTOCK_COLUMNS, row=_restock_row))

    # its own process: the lake's decoding and Parquet take another core than alerts and restock
    lake = Pipeline("stock-lake", commit_interval_ms=lake_commit_ms, max_event_ahead_ms=max_event_ahead_ms, own_process=True)
    # "stock" dead-letters undecodable readings; this pipeline skips them
    stored = lake.topic(READINGS, config=readings_config, dead_letters=False).batch_map(checked_or_none, name="check-reading")
    stored = stored.filter(_is_reading, name="checked-only").with_timestamp(event_time_ms, name="event-time")
    stored = _drop_redeliveries(stored, redelivery_window)
    stored.to_sink(ParquetLakeSink(lake_root, DATASET, columns_of=lake_columns, schema=LAKE_SCHEMA, tz="UTC"))
    return [main, lake]


def _restock_row(r: Record) -> dict[str, Any]:
    v = r.value
    row = {c: v.get(c) for c in RESTOCK_COLUMNS}
    opened = v.get("opened_at", v["timestamp"])  # a closing record carries its request's opening time
    row["opened_ms"] = event_time_ms({"timestamp": opened})
    row["updated_ms"] = r.timestamp_ms
    return row


#: the readings that `checked_or_none` let through (C-level: no Python call per reading)
_is_reading = functools.partial(operator.is_not, None)


def _device(v: dict[str, Any]) -> str:
    device = v.get("device_id")
    return device if type(device) is str else shelf_key(v)


def _drop_redeliveries(s: Stream, window: int | None) -> Stream:
    if window is None:
        return s
    return keyed_state(s, name="drop-redeliveries", key=_device, step=DropRepeats(id=reading_id, window=window).step)


def pipelines(settings: Settings, *, offline: bool) -> list[Pipeline]:
    """The stock app's pipelines as configured by `settings.stock` (used by `affluent up` and `affluent run stock`)."""
    cfg = settings.stock
    source = make_source(settings, offline=offline)
    # QoS 1 is at least once: drop redeliveries
    window = cfg.redelivery_window if isinstance(source, MqttSource) else None
    return build_pipelines(
        source,
        lake_root=lake_path(settings),
        tz=store_tz(cfg),
        redelivery_window=window,
        lake_commit_ms=max(1, int(cfg.lake_commit_s * 1000)),
        max_event_ahead_ms=settings.max_event_ahead_ms,
        serving_db=serving_path(settings),
    )


def run_to_end(pipes: list[Pipeline], log_: Log, *, timeout_s: float | None = None, metrics: Metrics | None = None) -> dict[str, int]:
    """Run `pipes` until every source is done and every pipeline has read all of its input, then stop.

    Stopping commits what was read (the lake included). Returns the records each stock topic gained
    in this run (none when the period was simulated before). For bounded runs: a simulated period
    (`stock.end`), a test.
    """

    def counts() -> dict[str, int]:
        return {t: log_.describe_topic(t).records if log_.topic_exists(t) else 0 for t in (READINGS, ALERTS, RESTOCK, "stock.dlq")}

    before = counts()
    rt = Runtime(log_, metrics=metrics or Metrics())
    for p in pipes:
        rt.add(p)
    rt.run_to_end(timeout_s=timeout_s)
    return {t: n - before[t] for t, n in counts().items()}
