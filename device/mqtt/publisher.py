"""The daemon's MQTT side: availability, retained state, events and stats.

The daemon must keep running when the broker is away (a Pi boots before the broker, a
broker restarts for an upgrade), so nothing here blocks on the network or raises
because of it: :meth:`MqttPublisher.start` returns at once and paho retries in its own
thread with the configured backoff.

While disconnected, QoS 1 messages wait in this class's own in-memory backlog, bounded
by ``max_queued`` (default 10,000) so a long outage cannot eat the Pi's memory; what
does not fit is dropped and counted in :class:`PublisherStats`. They are handed to paho
only once the broker has accepted the connection, never before: paho 2.x lets a
``publish()`` from another thread slip onto a socket it has just opened, ahead of its
own CONNECT, and a broker rightly drops such a connection (amqtt even leaves it hanging).
The backlog dies with the process: durable on-disk spooling of events is a later
issue. QoS 0 stats published while disconnected are simply lost, which is what QoS 0
means.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from device.config import MqttSection
from device.mqtt.client_options import AttemptLog, make_client
from device.mqtt.payloads import Event, State, Stats
from device.mqtt.topics import OFFLINE, ONLINE, Topics

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 10_000

#: Called with (topic, payload) for messages on a subscribed topic.
MessageHandler = Callable[[str, bytes], None]


@dataclass(frozen=True)
class PublisherStats:
    """Counters since start; ``pending`` is QoS 1 messages not yet acknowledged."""

    connected: bool
    connects: int
    #: Accepted: handed to paho, or kept for the broker while disconnected.
    published: int
    #: QoS 1 messages the broker acknowledged with success.
    acked: int
    #: QoS 1 messages the broker refused (MQTT 5 reason code, e.g. not authorised).
    refused: int
    #: Not accepted: the offline queue was full, or QoS 0 while disconnected.
    dropped: int
    pending: int


class MqttPublisher:
    """Publishes one device's messages under ``topics``; safe to call from any thread."""

    def __init__(
        self,
        config: MqttSection,
        topics: Topics,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        log_every_s: float = 30.0,
    ) -> None:
        self._config = config
        self._topics = topics
        client_id = config.client_id or f"edgewatch-{topics.device}"
        self._client = make_client(client_id, config=config, role="publisher")
        self._max_queued = max_queued
        # The broker publishes this if the device vanishes without a DISCONNECT.
        self._client.will_set(topics.availability, OFFLINE, qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish
        self._attempts = AttemptLog(
            f"MQTT broker {config.host}:{config.port} not reachable", log_every_s
        )

        self._lock = threading.Condition()
        self._connected = threading.Event()
        # Serialises hand-overs to paho with the flush in on_connect, so the backlog
        # goes out first and in order. Never held while waiting on the network.
        self._send_lock = threading.RLock()
        self._backlog: deque[tuple[str, bytes, int, bool]] = deque()
        self._started = False
        self._stopping = False
        self._last_state: bytes | None = None
        self._subscriptions: dict[str, MessageHandler] = {}
        # mid -> qos for messages whose on_publish has not come yet, and mids whose
        # on_publish came before publish() returned (paho's thread can be that quick).
        self._unacked: dict[int, int] = {}
        self._early: dict[int, bool] = {}
        self._connects = 0
        self._published = 0
        self._acked = 0
        self._refused = 0
        self._dropped = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; never raises for an unreachable broker."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(
            self._config.host, self._config.port, keepalive=self._config.keepalive_s
        )
        self._client.loop_start()
        log.info(
            "MQTT publisher for %s connecting to %s:%d",
            self._topics.device,
            self._config.host,
            self._config.port,
        )

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Announce "offline", wait for unacknowledged QoS 1 messages, disconnect.

        A clean shutdown sends DISCONNECT, so the broker does not publish the will;
        hence the explicit "offline". Messages still unacknowledged after ``timeout``
        are lost (and logged).
        """
        if not self._started or self._stopping:
            return
        self._stopping = True
        if self.connected:
            self.publish_raw(self._topics.availability, OFFLINE.encode(), qos=1, retain=True)
            deadline = time.monotonic() + timeout
            with self._lock:
                while self._pending_qos1() and self.connected:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(min(remaining, 0.1))
                left = self._pending_qos1()
            if left:
                log.warning("MQTT publisher stopped with %d message(s) unacknowledged", left)
        else:
            log.warning(
                "MQTT publisher stopped while disconnected; %d queued message(s) lost",
                self._pending_qos1(),
            )
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    # -- publishing ------------------------------------------------------------------

    def publish_event(self, event: Event) -> None:
        self.publish_raw(self._topics.events(event.source), event.to_bytes(), qos=1)

    def publish_state(self, state: State) -> None:
        """Retained; remembered so every reconnect restores it on the broker."""
        payload = state.to_bytes()
        with self._lock:
            self._last_state = payload
        self.publish_raw(self._topics.state, payload, qos=1, retain=True)

    def publish_stats(self, stats: Stats) -> None:
        self.publish_raw(self._topics.stats, stats.to_bytes(), qos=0)

    def publish_raw(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Send one message, or keep it for the next connection; False (and counted as
        dropped) if it could not be accepted."""
        with self._send_lock:
            if not self._connected.is_set():
                return self._keep(topic, payload, qos, retain)
            return self._hand_to_paho(topic, payload, qos, retain)

    def _keep(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        full = self._max_queued > 0 and len(self._backlog) >= self._max_queued
        if qos == 0 or full:
            with self._lock:
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning(
                    "MQTT publish to %s dropped while disconnected (%s); %d dropped so far",
                    topic,
                    "QoS 0" if qos == 0 else f"backlog full at {self._max_queued}",
                    dropped,
                )
            return False
        self._backlog.append((topic, payload, qos, retain))
        with self._lock:
            self._published += 1
        return True

    def _hand_to_paho(
        self, topic: str, payload: bytes, qos: int, retain: bool, kept: bool = False
    ) -> bool:
        """``kept``: a message from the backlog, already counted as published."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        accepted = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
        )
        with self._lock:
            if not accepted:
                self._dropped += 1
                dropped = self._dropped
            else:
                self._published += 0 if kept else 1
                dropped = 0
                if info.mid in self._early:
                    self._count_ack(qos, self._early.pop(info.mid))
                else:
                    self._unacked[info.mid] = qos
        if dropped and (dropped == 1 or dropped % 1000 == 0):
            log.warning(
                "MQTT publish to %s dropped (%s); %d dropped so far",
                topic,
                mqtt.error_string(info.rc),
                dropped,
            )
        return accepted

    @property
    def stats(self) -> PublisherStats:
        with self._lock:
            return PublisherStats(
                connected=self.connected,
                connects=self._connects,
                published=self._published,
                acked=self._acked,
                refused=self._refused,
                dropped=self._dropped,
                pending=self._pending_qos1(),
            )

    # -- subscriptions ---------------------------------------------------------------

    def subscribe(self, topic: str, callback: MessageHandler) -> None:
        """Deliver messages on ``topic`` (QoS 1) to ``callback``, across reconnects.

        The callback runs on paho's network thread: keep it short. Its exceptions are
        logged, never allowed to kill that thread.
        """

        def deliver(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            try:
                callback(message.topic, bytes(message.payload))
            except Exception:  # a handler bug must not stop publishing
                log.exception("handler for MQTT topic %s failed", message.topic)

        with self._lock:
            self._subscriptions[topic] = callback
        self._client.message_callback_add(topic, deliver)
        if self.connected:
            self._client.subscribe(topic, qos=1)

    # -- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self._attempts.failed(f"broker refused the connection ({reason})")
            return
        self._attempts.succeeded()
        with self._lock:
            self._connects += 1
            state = self._last_state
            topics = list(self._subscriptions)
        log.info("MQTT publisher connected to %s:%d", self._config.host, self._config.port)
        with self._send_lock:
            self._hand_to_paho(self._topics.availability, ONLINE.encode(), qos=1, retain=True)
            if state is not None:
                self._hand_to_paho(self._topics.state, state, qos=1, retain=True)
            kept = len(self._backlog)
            while self._backlog:
                self._hand_to_paho(*self._backlog.popleft(), kept=True)
            self._connected.set()
        if kept:
            log.info("sent %d message(s) kept while the broker was away", kept)
        for topic in topics:
            client.subscribe(topic, qos=1)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        with self._send_lock:
            was_connected = self._connected.is_set()
            self._connected.clear()
        with self._lock:
            self._lock.notify_all()
        if was_connected and not self._stopping:
            log.warning(
                "MQTT publisher lost the broker (%s); queueing QoS 1 messages until it is back",
                reason,
            )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempts.failed("connection failed")

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        ok = not reason.is_failure
        if not ok:
            log.warning("broker refused an MQTT message (%s); check the broker's ACL", reason)
        with self._lock:
            if mid in self._unacked:
                self._count_ack(self._unacked.pop(mid), ok)
            else:
                self._early[mid] = ok
            self._lock.notify_all()

    def _pending_qos1(self) -> int:
        """QoS 1 messages not yet acknowledged: with paho, or kept for the broker."""
        return sum(1 for qos in self._unacked.values() if qos > 0) + len(self._backlog)

    def _count_ack(self, qos: int, ok: bool) -> None:
        if qos == 0:
            return
        if ok:
            self._acked += 1
        else:
            self._refused += 1
