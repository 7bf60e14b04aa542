"""Numeric series from MQTT topics: other devices' readings, Zigbee2MQTT, Tasmota...

One paho client whose network thread is this source's one thread: the message callback
parses the payload and offers the reading to the bounded queue; when the queue is full
the reading is dropped and counted (a sender cannot be slowed down). Payloads may be a
bare JSON number (``21.5``) or a JSON object whose values are picked by dot paths
(``{"temperature": 21.5, "battery": 97}``, ``{"ENERGY": {"Power": 12}}``). A payload that
is not UTF-8 JSON, too large, or has none of the fields as a number is counted as bad.

Each topic is its own series (``series_from = "topic"``), so the pipeline keeps one
window per sending device under a wildcard subscription; subscriptions are renewed on
every reconnection (clean session), and a broker that is down is retried with the
configured backoff.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from device.config import MqttSection
from device.mqtt.client_options import AttemptLog, make_client
from device.sensors.parse import JsonOptions, parse_json_text
from device.sensors.queue import ReadingQueue
from device.sensors.reading import Reading, SensorSourceStats, SourceStatus

log = logging.getLogger(__name__)

SeriesFrom = Literal["topic", "source"]


@dataclass(frozen=True)
class MqttSensorOptions:
    #: Topic filters (wildcards allowed).
    topics: tuple[str, ...]
    json: JsonOptions = field(default_factory=JsonOptions)
    qos: int = 0
    series_from: SeriesFrom = "topic"
    max_payload_bytes: int = 65_536
    queue_readings: int = 10_000
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if not self.topics or any(not t or "\x00" in t for t in self.topics):
            raise ValueError("an MQTT sensor source needs at least one (non-empty) topic")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.series_from not in ("topic", "source"):
            raise ValueError(f"series_from must be topic or source, got {self.series_from!r}")
        if self.max_payload_bytes < 1 or self.queue_readings < 1:
            raise ValueError("max_payload_bytes and queue_readings must be at least 1")


class MqttSensorSource:
    """Readings from MQTT messages (a ``SensorSource``); ``ack`` does nothing."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        options: MqttSensorOptions,
        *,
        config: MqttSection | None = None,
        client_id: str | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.options = options
        self._keepalive = config.keepalive_s if config is not None else options.keepalive_s
        client_id = client_id or f"edgewatch-sensor-{name}-{uuid.uuid4().hex[:8]}"
        self._client = make_client(client_id, config=config, role=f"sensor source {name}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._attempts = AttemptLog(f"sensor source {name}: MQTT broker {host}:{port}")
        self._queue = ReadingQueue(options.queue_readings)
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._status: SourceStatus = "starting"
        self._started = False
        self._readings = 0
        self._bad = 0
        self._missing = 0
        self._dropped = 0
        self._connects = 0
        self._detail = ""

    def start(self) -> None:
        """Connect in the background (retrying with backoff); returns at once."""
        if self._started:
            raise RuntimeError(f"sensor source {self.name} was already started")
        self._started = True
        self._client.connect_async(self.host, self.port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self, timeout_s: float = 2.0) -> None:
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self._queue.close(discard=True)
        self._subscribed.clear()
        self._status = "stopped"

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker granted every subscription (tests, start-up checks)."""
        return self._subscribed.wait(timeout)

    def get(self, timeout: float | None = None) -> Reading | None:
        return self._queue.get(timeout)

    def get_batch(self, max_readings: int, timeout: float | None = None) -> list[Reading]:
        return self._queue.get_batch(max_readings, timeout)

    def ack(self, readings: Reading | Sequence[Reading]) -> None:
        """Nothing to record: the broker keeps no position for a clean session."""

    def stats(self) -> SensorSourceStats:
        with self._lock:
            return SensorSourceStats(
                readings=self._readings,
                bad_records=self._bad,
                missing_values=self._missing,
                dropped=self._dropped,
                headers=0,
                queue_depth=len(self._queue),
                status=self._status,
                detail=self._detail or f"{self.host}:{self.port}",
                connects=self._connects,
            )

    # -- paho callbacks (its network thread) ------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._attempts.failed(f"broker refused the connection ({reason})")
            with self._lock:
                self._detail = f"refused: {reason}"
            return
        self._attempts.succeeded()
        with self._lock:
            self._connects += 1
            self._detail = ""
        self._status = "running"
        client.subscribe([(topic, self.options.qos) for topic in self.options.topics])
        log.info("sensor source %s: subscribed to %s", self.name, ", ".join(self.options.topics))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error("sensor source %s: subscription refused (%s); check the broker's ACL",
                      self.name, refused[0])  # fmt: skip
            with self._lock:
                self._detail = f"subscription refused: {refused[0]}"
            return
        self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._subscribed.clear()
        if self._started:
            self._status = "reconnecting"
            log.warning("sensor source %s: lost the broker (%s); reconnecting", self.name, reason)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._status = "reconnecting"
        self._attempts.failed("connection failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._take(message.topic, bytes(message.payload))
        except Exception:  # never let a bug here kill paho's network thread
            log.exception("sensor source %s: failed on a message", self.name)
            with self._lock:
                self._bad += 1

    def _take(self, topic: str, payload: bytes) -> None:
        now = time.time()
        record = None
        if len(payload) <= self.options.max_payload_bytes:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                record = parse_json_text(text, self.options.json)
        if record is None:
            with self._lock:
                self._bad += 1
                bad = self._bad
            if bad == 1 or bad % 100 == 0:
                log.warning("sensor source %s: ignored a payload on %s that holds no reading "
                            "(%d so far)", self.name, topic[:200], bad)  # fmt: skip
            return
        reading = Reading(
            source=self.name,
            series=topic if self.options.series_from == "topic" else self.name,
            timestamp=record.timestamp if record.timestamp is not None else now,
            values=record.values,
            columns=self.options.json.fields,
            received_at=now,
        )
        added = self._queue.offer(reading)
        with self._lock:
            if added:
                self._readings += 1
                self._missing += record.missing
            else:
                self._dropped += 1
