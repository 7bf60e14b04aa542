"""Receiving edgewatch's messages as typed objects: ``edgewatch watch``, tests, push client.

paho calls back on its network thread; anything slow there delays PUBACKs and, on a
stock broker, eventually costs messages. So the callback only parses and enqueues, never
raises (a bad payload is counted and logged), and consumers read a thread-safe queue at
their own pace.

Sequence checking lives here too because every consumer wants it: the design promises a
per-source monotonic ``seq`` precisely so that a subscriber can see loss and duplicates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ValidationError

from device.config import MqttSection
from device.mqtt.client_options import AttemptLog, make_client
from device.mqtt.payloads import Event, State, Stats
from device.mqtt.topics import parse_device_topic

log = logging.getLogger(__name__)

Kind = Literal["event", "state", "stats", "availability", "other"]
Payload = Event | State | Stats | str | bytes

#: Missing seq numbers remembered per source (so a late arrival is not a duplicate).
MAX_TRACKED_MISSING = 10_000


@dataclass(frozen=True)
class Received:
    """One message, parsed: ``payload`` is an Event/State/Stats, the availability
    string, or the raw bytes of topics edgewatch does not model here."""

    topic: str
    device: str
    kind: Kind
    payload: Payload
    #: Unix time at which the callback saw the message.
    received_at: float


@dataclass(frozen=True)
class SeqStatus:
    device: str
    source: str
    received: int
    last_seq: int
    #: Seq numbers skipped and not (yet) seen.
    gaps: int
    duplicates: int
    #: Arrived after a higher seq (filled a gap late).
    reordered: int


@dataclass
class _SourceSeq:
    received: int = 0
    last_seq: int = -1
    missing: set[int] = field(default_factory=set)
    untracked_missing: int = 0
    duplicates: int = 0
    reordered: int = 0


class SeqTracker:
    """Gaps and duplicates per (device, source) from ``Event.seq``; thread-safe.

    The first seq seen from a source is the baseline (a subscriber joins mid-stream). A
    seq at or below the highest seen counts as a duplicate unless it fills a gap. A
    device that lost its state folder restarts its numbering; that shows as duplicates.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[tuple[str, str], _SourceSeq] = {}

    def observe(self, device: str, source: str, seq: int) -> None:
        with self._lock:
            entry = self._sources.setdefault((device, source), _SourceSeq())
            entry.received += 1
            if entry.last_seq < 0:
                entry.last_seq = seq
            elif seq > entry.last_seq:
                skipped = range(entry.last_seq + 1, seq)
                room = MAX_TRACKED_MISSING - len(entry.missing)
                entry.missing.update(skipped[:room])
                entry.untracked_missing += max(0, len(skipped) - room)
                entry.last_seq = seq
            elif seq in entry.missing:
                entry.missing.discard(seq)
                entry.reordered += 1
            else:
                entry.duplicates += 1

    def snapshot(self) -> tuple[SeqStatus, ...]:
        with self._lock:
            return tuple(
                SeqStatus(
                    device,
                    source,
                    e.received,
                    e.last_seq,
                    len(e.missing) + e.untracked_missing,
                    e.duplicates,
                    e.reordered,
                )
                for (device, source), e in sorted(self._sources.items())
            )

    def total_gaps(self) -> int:
        return sum(status.gaps for status in self.snapshot())

    def total_duplicates(self) -> int:
        return sum(status.duplicates for status in self.snapshot())


@dataclass(frozen=True)
class SubscriberStats:
    connected: bool
    received: int
    invalid: int
    #: Parsed but not queued because the consumer fell ``max_queue`` behind.
    overflowed: int


class EventSubscriber:
    """Subscribes to ``<prefix>/#`` (or ``<prefix>/<device>/#``) at QoS 1.

    ``config`` supplies TLS, credentials and backoff; host and port are given apart so
    that ``edgewatch watch --broker`` can point a device config's TLS at another broker.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "edgewatch",
        device: str | None = None,
        config: MqttSection | None = None,
        client_id: str | None = None,
        max_queue: int = 100_000,
        keepalive_s: int = 30,
    ) -> None:
        self._host = host
        self._port = port
        self._prefix = prefix
        self.topic_filter = f"{prefix}/{device}/#" if device else f"{prefix}/#"
        self._keepalive_s = config.keepalive_s if config else keepalive_s
        client_id = client_id or f"edgewatch-sub-{uuid.uuid4().hex[:10]}"
        self._client = make_client(client_id, config=config, role="subscriber")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._attempts = AttemptLog(f"MQTT broker {host}:{port} not reachable")
        self.messages: queue.Queue[Received] = queue.Queue(maxsize=max_queue)
        self.seq = SeqTracker()
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._received = 0
        self._invalid = 0
        self._overflowed = 0
        self._started = False

    def __enter__(self) -> EventSubscriber:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Connect in the background (retrying with backoff); returns at once."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        self._client.loop_start()

    def wait_subscribed(self, timeout: float) -> bool:
        """True once the broker granted the subscription (retained messages follow)."""
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def get(self, timeout: float | None = None) -> Received | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, limit: int = 10_000) -> list[Received]:
        """Whatever is queued now, without waiting (at most ``limit``)."""
        out: list[Received] = []
        while len(out) < limit:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                break
        return out

    @property
    def stats(self) -> SubscriberStats:
        with self._lock:
            return SubscriberStats(self.connected, self._received, self._invalid, self._overflowed)

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._subscribed.clear()

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
        self._connected.set()
        log.info("subscribed to %s on %s:%d", self.topic_filter, self._host, self._port)
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error(
                "broker refused the subscription to %s (%s); check its ACL",
                self.topic_filter,
                refused[0],
            )
            return
        self._subscribed.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if self._connected.is_set() and self._started:
            log.warning("subscriber lost the broker (%s); reconnecting", reason)
        self._connected.clear()
        self._subscribed.clear()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempts.failed("connection failed")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            received = parse_message(self._prefix, message.topic, bytes(message.payload))
        except (ValidationError, ValueError) as exc:
            with self._lock:
                self._invalid += 1
                invalid = self._invalid
            if invalid == 1 or invalid % 100 == 0:
                log.warning(
                    "ignored an invalid message on %s (%d so far): %s",
                    _safe_topic(message),
                    invalid,
                    _first_line(exc),
                )
            return
        except Exception:  # never let a parsing bug kill paho's network thread
            with self._lock:
                self._invalid += 1
            log.exception("could not handle a message on %s", _safe_topic(message))
            return
        if received is None:
            return
        if isinstance(received.payload, Event):
            self.seq.observe(received.payload.device, received.payload.source, received.payload.seq)
        with self._lock:
            self._received += 1
        try:
            self.messages.put_nowait(received)
        except queue.Full:
            with self._lock:
                self._overflowed += 1
                overflowed = self._overflowed
            if overflowed == 1 or overflowed % 1000 == 0:
                log.warning(
                    "subscriber queue full: the consumer is behind; %d message(s) "
                    "not queued so far",
                    overflowed,
                )


def parse_message(prefix: str, topic: str, payload: bytes) -> Received | None:
    """Type one message by its topic; None for topics outside the device layout.

    Raises ValidationError or ValueError for payloads that do not follow the contract.
    """
    parsed = parse_device_topic(prefix, topic)
    if parsed is None:
        return None
    device, rest = parsed
    now = time.time()
    kind: Kind
    value: Payload
    model: type[BaseModel] | None = None
    if rest.startswith("events/") and rest.endswith("/snapshot"):
        kind = "other"  # JPEG bytes of a detection event's best sighting
    elif rest.startswith("events/"):
        kind, model = "event", Event
    elif rest == "state":
        kind, model = "state", State
    elif rest == "stats":
        kind, model = "stats", Stats
    elif rest == "availability":
        kind = "availability"
    else:
        kind = "other"
    if model is not None:
        if not payload:
            raise ValueError(f"empty {kind} payload (a cleared retained message)")
        value = model.model_validate_json(payload)  # type: ignore[assignment]
    elif kind == "availability":
        value = payload.decode("utf-8")
    else:
        value = payload
    return Received(topic, device, kind, value, now)


def _safe_topic(message: mqtt.MQTTMessage) -> str:
    try:
        return message.topic
    except UnicodeDecodeError:
        return "(undecodable topic)"


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
