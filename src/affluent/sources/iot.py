"""IoT sources: a clocked simulator of sensors, and an MQTT subscriber (QoS 1, persistent session).

`SimulatorSource` drives any `TickModel` (a model that makes the readings of one tick) on a
simulated clock: at real pace, `speed` times faster, or as fast as possible (`speed=math.inf`) to
generate a past period in seconds. It emits whole ticks in batches and saves the model's snapshot
with every poll, so a restarted source goes on where its appended records end.

`MqttSource` subscribes with QoS 1 on a persistent session and acknowledges a message only once
the records of the poll that returned it have been appended (acks go out at the next poll): a
crash before that makes the broker deliver it again, so downstream steps must be idempotent
(dedupe on the message's id). `MqttPublisher` publishes with QoS 1 and waits for the broker's acks.

paho-mqtt is optional: `pip install 'affluent[mqtt]'`.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from affluent.core.clock import now_ms
from affluent.core.errors import ConfigError, MissingDependencyError, SourceUnavailableError
from affluent.core.records import Record
from affluent.core.sources import Source, SourcePoll

log = logging.getLogger("affluent.sources.iot")

DAY_MS = 86_400_000
#: a simulator run as fast as possible that makes at least this many readings runs in a process of its own
PROCESS_READINGS = 200_000


# -- the simulator ----------------------------------------------------------------------------------
class TickModel(Protocol):
    """What `SimulatorSource` drives: one tick of readings at a time, with a JSON snapshot of its state."""

    period_ms: int
    readings_per_tick: int

    def reset(self, start_ms: int) -> None: ...

    def snapshot(self) -> Any: ...

    def restore(self, snap: Any) -> None: ...

    def records(self, seq: int, ts_ms: int) -> list[Record]: ...


class SimulatorSource(Source):
    """Runs a `TickModel` on a simulated clock.

    Tick `seq` has event time `start + seq × period` (ticks are numbered from the first start and the
    numbering goes on after restarts). The simulated clock runs `speed` times faster than the wall
    clock from where it (re)starts, and never ahead of the wall clock: readings from the future would
    be bogus. So `speed=math.inf` generates from `start_ms` up to now (or `end_ms`) as fast as
    possible, then goes on at real pace.

    start_ms: first tick's time; default now at real pace, or `backfill_ms` ago when accelerated.
    end_ms: no tick at or after it; the source is done when it gets there.
    fingerprint: what the saved position must match to be resumed (seed, stores, period...);
    a position made with another configuration is dropped and the model starts afresh.
    """

    mode = "simulator"

    def __init__(
        self,
        model: TickModel,
        *,
        name: str = "simulator",
        speed: float = 1.0,
        start_ms: int | None = None,
        end_ms: int | None = None,
        backfill_ms: int = 7 * DAY_MS,
        max_records_per_poll: int = 20_000,
        fingerprint: Any = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if not speed > 0:
            raise ConfigError(f"simulator speed must be positive, not {speed}")
        self.name = name
        self.model = model
        self.speed = speed
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.backfill_ms = backfill_ms
        self.max_records_per_poll = max_records_per_poll
        self.fingerprint = fingerprint
        self.clock = clock
        self.next_ms = 0
        self.seq = 0
        self._anchor_sim = 0
        self._anchor_wall = 0
        self.live = speed == 1.0 and start_ms is None

    @property
    def own_process(self) -> bool:  # type: ignore[override]
        """A long period simulated as fast as possible is CPU work: it runs beside the pipelines, on another core."""
        if not math.isinf(self.speed):
            return False
        if self.start_ms is None or self.end_ms is None:
            return True  # a backfill up to now, then real pace
        return (self.end_ms - self.start_ms) // self.model.period_ms * self.model.readings_per_tick >= PROCESS_READINGS

    def describe(self) -> str:
        pace = "real pace" if self.speed == 1 else ("as fast as possible" if math.isinf(self.speed) else f"{self.speed:g}x")
        return f"{self.name} (simulated, every {self.model.period_ms / 1000:g} s, {pace})"

    def _align(self, ms: int) -> int:
        p = self.model.period_ms
        return ms - ms % p

    def open(self, position: Any | None) -> None:
        now = self.clock()
        resumed = isinstance(position, dict) and position.get("fingerprint") == _jsonable(self.fingerprint)
        if resumed:
            assert isinstance(position, dict)
            self.model.restore(position["model"])
            self.next_ms, self.seq = int(position["next_ms"]), int(position["seq"])
            if self.live:
                # at real pace the sensors "were on" while affluent was down: skip the gap, keep the levels
                self.next_ms = max(self.next_ms, self._align(now))
        else:
            if position is not None:
                log.info("simulator %s: saved position made with other settings; starting afresh", self.name)
            start = self.start_ms
            if start is None:
                start = now if self.speed == 1.0 else now - self.backfill_ms
            self.next_ms = start if self.start_ms is not None else self._align(start)
            # sequence numbers go on across fresh starts: a consumer never sees one go backwards
            self.seq = int(position.get("seq", 0)) if isinstance(position, dict) else 0
            self.model.reset(self.next_ms)
        self._anchor_sim, self._anchor_wall = self.next_ms, now

    def sim_now(self) -> int:
        now = self.clock()
        if self.live or math.isinf(self.speed):
            return now
        return min(now, self._anchor_sim + int((now - self._anchor_wall) * self.speed))

    def _position(self) -> dict[str, Any]:
        return {"next_ms": self.next_ms, "seq": self.seq, "model": self.model.snapshot(), "fingerprint": _jsonable(self.fingerprint)}

    def poll(self) -> SourcePoll:
        period = self.model.period_ms
        if self.end_ms is not None and self.next_ms >= self.end_ms:
            return SourcePoll(position=self._position(), done=True)
        now_sim = self.sim_now()
        limit = now_sim if self.end_ms is None else min(now_sim, self.end_ms - 1)
        if self.next_ms > limit:
            return SourcePoll(wait_s=self._wait_s(now_sim))
        due = (limit - self.next_ms) // period + 1
        ticks = max(1, min(due, self.max_records_per_poll // max(1, self.model.readings_per_tick)))
        records: list[Record] = []
        for _ in range(ticks):
            records.extend(self.model.records(self.seq, self.next_ms))
            self.seq += 1
            self.next_ms += period
        done = self.end_ms is not None and self.next_ms >= self.end_ms
        wait = 0.0 if ticks < due or done else self._wait_s(now_sim)
        return SourcePoll(records=records, wait_s=wait, position=self._position(), done=done)

    def _wait_s(self, now_sim: int) -> float:
        wall_gap_ms = float(self.next_ms - self.clock())
        if not math.isinf(self.speed):
            wall_gap_ms = max(wall_gap_ms, max(self.next_ms - now_sim, 0) / self.speed)
        return min(max(wall_gap_ms / 1000, 0.001), 5.0)


def _jsonable(x: Any) -> Any:
    return orjson.loads(orjson.dumps(x))


# -- MQTT ----------------------------------------------------------------------------------------------
def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as exc:
        raise MissingDependencyError("paho-mqtt", "mqtt") from exc
    return mqtt


@dataclass(frozen=True, slots=True)
class MqttAddress:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never shows the password
        return f"mqtt://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttAddress:
    """'mqtt://[user[:password]@]host[:port]' -> MqttAddress.

    >>> parse_mqtt_url("mqtt://127.0.0.1:1884")
    MqttAddress(host='127.0.0.1', port=1884, username=None)
    >>> a = parse_mqtt_url("mqtt://bob:s3cret@broker")
    >>> str(a), a.username, "s3cret" in repr(a)
    ('mqtt://broker:1883', 'bob', False)
    """
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ConfigError(f"MQTT URL scheme {parts.scheme!r} is not supported: use mqtt://host:1883 (TLS is not supported yet)")
    if not parts.hostname:
        raise ConfigError("MQTT URL has no host: use mqtt://host:1883")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ConfigError(f"MQTT URL has a bad port: {exc}") from exc
    return MqttAddress(
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def decode_payload(payload: bytes) -> Any:
    """A message's JSON value; a payload that is not JSON becomes its text, for the dead-letter topic to show."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", "replace")


class MqttSource(Source):
    """Subscribes to `topic_filter` (QoS 1, persistent session) and returns the JSON messages.

    key / timestamp_ms: functions of a decoded value giving the record key and event time
    (when they raise or give None: no key, and event time = arrival).
    """

    mode = "live"

    def __init__(
        self,
        url: str,
        *,
        topic_filter: str,
        name: str = "mqtt",
        client_id: str | None = None,
        qos: int = 1,
        key: Callable[[Any], str | None] | None = None,
        timestamp_ms: Callable[[Any], int | None] | None = None,
        max_records_per_poll: int = 10_000,
        idle_wait_s: float = 0.1,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.address = parse_mqtt_url(url)
        self.name = name
        self.topic_filter = topic_filter
        self.client_id = client_id or f"affluent-{name}"
        self.qos = qos
        self.key = key
        self.timestamp_ms = timestamp_ms
        self.max_records_per_poll = max_records_per_poll
        self.idle_wait_s = idle_wait_s
        self.connect_timeout_s = connect_timeout_s
        self._queue: collections.deque[Any] = collections.deque()
        self._to_ack: list[Any] = []
        self._client: Any = None
        self._arrived = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._last_error: str | None = None
        self._opened_at = 0.0
        self.messages = 0

    def describe(self) -> str:
        return f"{self.name} ({self.address}, {self.topic_filter}, QoS {self.qos})"

    # -- paho callbacks (its network thread) --------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._last_error = f"broker refused the connection: {reason_code}"
            return
        self._connected.set()
        self._last_error = None
        client.subscribe(self.topic_filter, qos=self.qos)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self._last_error = f"broker refused the subscription to {self.topic_filter!r}: {reason_codes}"
        else:
            self._subscribed.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if reason_code.is_failure:
            self._last_error = f"disconnected from {self.address}: {reason_code}"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._queue.append(message)
        self._arrived.set()

    # -- Source ---------------------------------------------------------------------------------------
    def open(self, position: Any | None) -> None:
        mqtt = _paho()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,  # the broker keeps QoS 1 messages for us while we are away
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client = client
        self._opened_at = time.monotonic()
        client.connect_async(self.address.host, self.address.port, keepalive=30)
        client.loop_start()

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        return self._subscribed.wait(timeout_s)

    def _ack_previous(self) -> None:
        # the records of the previous poll were appended by the runtime before it polled again
        client = self._client
        for msg in self._to_ack:
            if msg.qos > 0:
                client.ack(msg.mid, msg.qos)
        self._to_ack = []

    def poll(self) -> SourcePoll:
        if self._client is None:
            self.open(None)
        self._ack_previous()
        q = self._queue
        if not q:
            # the acks just sent let the broker send more (it caps unacknowledged messages): wait for them here
            self._arrived.clear()
            if not q:
                self._arrived.wait(self.idle_wait_s)
        n = min(len(q), self.max_records_per_poll)
        if n == 0:
            if not self._connected.is_set() and time.monotonic() - self._opened_at > self.connect_timeout_s:
                raise SourceUnavailableError(self._last_error or f"cannot reach the MQTT broker at {self.address}", retry_after_s=2.0)
            return SourcePoll()
        msgs = [q.popleft() for _ in range(n)]
        records = []
        for m in msgs:
            value = decode_payload(m.payload)
            records.append(Record(value=value, key=_safe(self.key, value), timestamp_ms=_safe(self.timestamp_ms, value) or 0))
        self._to_ack = msgs
        self.messages += n
        return SourcePoll(records=records)

    def close(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            self._ack_previous()
            client.disconnect()
        finally:
            client.loop_stop()
            self._client = None


def _safe(fn: Callable[[Any], Any] | None, value: Any) -> Any:
    if fn is None:
        return None
    try:
        return fn(value)
    except Exception:
        return None


class MqttPublisher:
    """Publishes JSON messages with QoS 1 (at least once) and waits for the broker's acks.

    Use it as a context manager: `with MqttPublisher(url) as pub: pub.publish_many([(topic, value), ...])`.
    """

    def __init__(self, url: str, *, client_id: str | None = None, qos: int = 1, timeout_s: float = 30.0) -> None:
        self.address = parse_mqtt_url(url)
        self.client_id = client_id or f"affluent-publisher-{uuid.uuid4().hex[:8]}"
        self.qos = qos
        self.timeout_s = timeout_s
        self._client: Any = None
        self.published = 0

    def connect(self) -> MqttPublisher:
        mqtt = _paho()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        client.max_inflight_messages_set(1000)
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        try:
            client.connect(self.address.host, self.address.port, keepalive=30)
        except OSError as exc:
            raise SourceUnavailableError(f"cannot reach the MQTT broker at {self.address}: {exc}") from exc
        client.loop_start()
        self._client = client
        return self

    def publish_many(self, messages: Iterable[tuple[str, Any]]) -> int:
        """Publish (topic, value) pairs; values that are not bytes are sent as JSON. Returns how many."""
        if self._client is None:
            self.connect()
        infos = []
        for topic, value in messages:
            payload = value if isinstance(value, bytes) else orjson.dumps(value)
            infos.append(self._client.publish(topic, payload, qos=self.qos))
        deadline = time.monotonic() + self.timeout_s
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise SourceUnavailableError(f"the MQTT broker at {self.address} did not acknowledge a message in {self.timeout_s} s")
        self.published += len(infos)
        return len(infos)

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def __enter__(self) -> MqttPublisher:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
