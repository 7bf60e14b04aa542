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
The backlog dies with the process. QoS 0 stats published while disconnected are simply
lost, which is what QoS 0 means.

With an :class:`~device.outbox.Outbox` (the daemon's default), events take another
path: ``publish_event`` only commits the event to the on-disk spool and wakes a sender
thread, which hands spooled rows to paho in id order while connected, at most
``window`` unacknowledged at a time, and deletes a row when the broker's PUBACK for it
arrives. When the connection drops, the unacknowledged events are taken back out of
paho (``drop_out_messages``) so that paho does not re-send them on its own; on the next
connection the sender starts again from the oldest row still spooled. A message the
broker received but could not acknowledge before the link died is therefore sent twice;
subscribers drop such duplicates by ``seq`` (``SeqTracker`` in device/mqtt/subscriber.py
does). State, stats, availability and command results are not spooled: they describe
the present, and the retained ones are re-published on every connect anyway.
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
from device.outbox import Outbox

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 10_000
#: Spooled events handed to paho and not yet acknowledged, at most (bounds paho's memory;
#: paho itself keeps 20 on the wire and queues the rest in order).
DEFAULT_WINDOW = 1_000
#: Rows read from the outbox per hand-over (the send lock is held meanwhile).
SEND_BATCH = 200
#: The sender's idle tick: acknowledged rows are deleted and old ones expired at least
#: this often.
SENDER_IDLE_S = 0.5

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
    #: Events in the outbox not yet acknowledged (0 without an outbox).
    spool_depth: int = 0
    #: Events the outbox discarded (bounds, age, disk failures; see [outbox]).
    spool_dropped: int = 0
    #: Age of the oldest spooled event; None when empty or without an outbox.
    spool_oldest_age_s: float | None = None


class MqttPublisher:
    """Publishes one device's messages under ``topics``; safe to call from any thread.

    With ``outbox``, events go through it (see the module docstring) and the publisher
    owns it: :meth:`stop` closes it.
    """

    def __init__(
        self,
        config: MqttSection,
        topics: Topics,
        *,
        outbox: Outbox | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
        window: int = DEFAULT_WINDOW,
        log_every_s: float = 30.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._config = config
        self._topics = topics
        self._outbox = outbox
        self._window = window
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
        #: Retained messages restored on every (re)connect, latest payload per topic: a
        #: broker restarted without persistence has forgotten them.
        self._retained: dict[str, bytes] = {}
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
        # The outbox's sender (all under _lock): mid -> row id of spooled events with
        # paho on this connection, row ids acknowledged and not yet given back to the
        # outbox, the highest row id handed over on this connection, and whether rows
        # may be waiting beyond it.
        self._sender: threading.Thread | None = None
        self._sender_stop = False
        self._inflight_rows: dict[int, int] = {}
        self._acked_rows: list[int] = []
        self._cursor = 0
        self._more = True

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; never raises for an unreachable broker."""
        if self._started:
            return
        self._started = True
        if self._outbox is not None:
            self._sender = threading.Thread(
                target=self._send_spooled, name="mqtt-outbox-sender", daemon=True
            )
            self._sender.start()
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
        are lost (and logged). With an outbox, spooled events get that time to drain
        first; what is left stays in the outbox for the next start, which is closed.
        """
        if self._stopping:
            return
        if not self._started:
            self._close_outbox()
            return
        self._stopping = True
        deadline = time.monotonic() + timeout
        if self._outbox is not None:
            self._drain_outbox(deadline)
            # "offline" and command results get a moment of their own after a long drain.
            deadline = max(deadline, time.monotonic() + 1.0)
        if self.connected:
            self.publish_raw(self._topics.availability, OFFLINE.encode(), qos=1, retain=True)
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
        self._close_outbox()

    def _drain_outbox(self, deadline: float) -> None:
        """Give the sender until ``deadline`` to empty the outbox, then stop it."""
        outbox, sender = self._outbox, self._sender
        if outbox is None or sender is None:
            return
        with self._lock:
            while self.connected and (outbox.depth() or self._inflight_rows):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.1))
            self._sender_stop = True
            self._lock.notify_all()
        sender.join(timeout=5.0)

    def _close_outbox(self) -> None:
        if self._outbox is None:
            return
        with self._lock:
            acked, self._acked_rows = self._acked_rows, []
        self._outbox.ack(acked)
        left = self._outbox.depth()
        self._outbox.close()
        if left:
            log.info("%d event(s) stay in the outbox for the next start", left)

    # -- publishing ------------------------------------------------------------------

    def publish_event(self, event: Event) -> None:
        """QoS 1; with an outbox, returns once the event is committed to it."""
        topic, payload = self._topics.events(event.source), event.to_bytes()
        if self._outbox is None:
            self.publish_raw(topic, payload, qos=1)
            return
        row = self._outbox.put(topic, payload)
        with self._lock:
            if row is not None:
                self._published += 1
            self._more = True
            self._lock.notify_all()

    def publish_state(self, state: State) -> None:
        self.publish_retained(self._topics.state, state.to_bytes())

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """QoS 1, retained, and remembered so every reconnect restores it on the broker."""
        with self._lock:
            self._retained[topic] = payload
        self.publish_raw(topic, payload, qos=1, retain=True)

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
        spool = self._outbox.stats() if self._outbox is not None else None
        with self._lock:
            return PublisherStats(
                connected=self.connected,
                connects=self._connects,
                published=self._published,
                acked=self._acked,
                refused=self._refused,
                dropped=self._dropped,
                pending=self._pending_qos1(),
                spool_depth=spool.depth if spool else 0,
                spool_dropped=spool.dropped if spool else 0,
                spool_oldest_age_s=spool.oldest_age_s if spool else None,
            )

    # -- the outbox's sender (its own thread) ----------------------------------------

    def _send_spooled(self) -> None:
        """Hand spooled rows to paho in id order while connected; give PUBACKed rows
        back to the outbox for deletion. Runs until :meth:`stop`."""
        outbox = self._outbox
        assert outbox is not None
        while True:
            try:
                with self._lock:
                    idle = False
                    while not (self._sender_stop or self._acked_rows or self._can_send()):
                        if not self._lock.wait(SENDER_IDLE_S):
                            idle = True
                            break
                    acked, self._acked_rows = self._acked_rows, []
                    stop = self._sender_stop
                if acked:
                    outbox.ack(acked)
                if stop:
                    return
                if idle:
                    outbox.maintain()
                self._send_batch(outbox)
            except Exception:  # a bug here must not end event delivery for good
                log.exception("the outbox sender failed; retrying in a second")
                time.sleep(1.0)

    def _can_send(self) -> bool:
        """Under ``_lock``: connected, rows may wait, and the window has room."""
        return (
            self._more
            and self._connected.is_set()
            and len(self._inflight_rows) < self._window
        )

    def _send_batch(self, outbox: Outbox) -> None:
        # The send lock keeps on_connect/on_disconnect (which reset the cursor) from
        # running in the middle of a batch.
        with self._send_lock:
            with self._lock:
                if not self._can_send():
                    return
                room = self._window - len(self._inflight_rows)
                after = self._cursor
                # Cleared before reading: a put after the read sets it again.
                self._more = False
            limit = min(room, SEND_BATCH)
            rows = outbox.read(after, limit)
            if len(rows) == limit:
                with self._lock:
                    self._more = True
            for row in rows:
                info = self._client.publish(row.topic, row.payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    log.warning(
                        "MQTT client refused a spooled event (%s); retrying",
                        mqtt.error_string(info.rc),
                    )
                    with self._lock:
                        self._more = True
                    break
                # NO_CONN: paho keeps it; on_disconnect takes it back and the next
                # connection re-sends it from the outbox.
                with self._lock:
                    self._cursor = row.id
                    if info.mid in self._early:
                        self._row_done(row.id, self._early.pop(info.mid))
                    else:
                        self._inflight_rows[info.mid] = row.id

    def _row_done(self, row_id: int, ok: bool) -> None:
        """Under ``_lock``: the broker answered for a spooled row. A refusal (ACL) is
        final too: re-sending would only be refused again, forever."""
        self._acked_rows.append(row_id)
        if ok:
            self._acked += 1
        else:
            self._refused += 1
        self._lock.notify_all()

    def _take_back_spooled(self) -> None:
        """On disconnect: drop paho's unacknowledged messages, so that paho does not
        re-send spooled events on its own (the outbox re-sends them, oldest first), and
        keep the other QoS 1 messages for the next connection."""
        returned = self._client.drop_out_messages()
        with self._lock:
            others = []
            for message in returned:
                if message.mid in self._inflight_rows:
                    continue
                if self._unacked.pop(message.mid, None) is None:
                    continue
                others.append(
                    (message.topic, bytes(message.payload), message.qos, message.retain)
                )
            self._backlog.extendleft(reversed(others))
            self._inflight_rows.clear()
            self._early.clear()
            self._cursor = 0
            self._more = True
            self._lock.notify_all()

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

        self._client.message_callback_add(topic, deliver)
        with self._lock:
            self._subscriptions[topic] = callback
        # paho's own state, not ours: ours is set only at the end of on_connect, which
        # takes its list of topics at its start. A topic added in between would be
        # subscribed by neither; paho reports connected before on_connect runs, so here
        # it is subscribed (at worst twice, which the broker treats as one).
        if self._client.is_connected():
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
            retained = list(self._retained.items())
            topics = list(self._subscriptions)
        log.info("MQTT publisher connected to %s:%d", self._config.host, self._config.port)
        # Subscribe before announcing anything: the broker handles one client's packets
        # in order, so whoever sees "online" or the retained state can already reach the
        # command and push topics (a pusher waiting for models/status must not race us).
        for topic in topics:
            client.subscribe(topic, qos=1)
        with self._send_lock:
            self._hand_to_paho(self._topics.availability, ONLINE.encode(), qos=1, retain=True)
            for topic, payload in retained:
                self._hand_to_paho(topic, payload, qos=1, retain=True)
            kept = len(self._backlog)
            while self._backlog:
                self._hand_to_paho(*self._backlog.popleft(), kept=True)
            self._connected.set()
        if kept:
            log.info("sent %d message(s) kept while the broker was away", kept)
        if self._outbox is not None:
            with self._lock:
                self._more = True
                self._lock.notify_all()

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
            if self._outbox is not None:
                self._take_back_spooled()
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
            if mid in self._inflight_rows:
                self._row_done(self._inflight_rows.pop(mid), ok)
            elif mid in self._unacked:
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
