"""EventSubscriber: typed messages, no loss under a burst, sequence checking."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.mqtt.payloads import Event, State
from device.mqtt.publisher import MqttPublisher
from device.mqtt.subscriber import EventSubscriber, Received, SeqTracker, parse_message
from device.mqtt.topics import Topics
from tests.conftest import Broker
from tests.test_mqtt_publisher import PREFIX, make_event, make_state, section

BURST = 5000


def _collect_events(sub: EventSubscriber, count: int, timeout: float) -> list[Received]:
    events: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        message = sub.get(timeout=0.2)
        if message is not None and message.kind == "event":
            events.append(message)
    return events


def test_burst_from_a_fast_publisher_arrives_complete(mosquitto: Broker) -> None:
    """5,000 QoS 1 events in one burst, faster than a Python client can parse them.

    The publisher is a raw paho client with no in-flight limit, so the broker receives
    the burst at once and must buffer it for the subscriber; a default paho subscriber
    loses a third or more of such a burst to mosquitto's queue limit.
    """
    payloads = [make_event("pi-burst", "cam", seq).to_bytes() for seq in range(BURST)]
    with EventSubscriber(mosquitto.host, mosquitto.port, prefix=PREFIX) as sub:
        assert sub.wait_subscribed(5)
        raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ew-burst")
        raw.max_inflight_messages_set(0)  # unlimited: a true burst
        raw.connect(mosquitto.host, mosquitto.port)
        raw.loop_start()
        started = time.monotonic()
        infos = [raw.publish(f"{PREFIX}/pi-burst/events/cam", p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(30)
        events = _collect_events(sub, BURST, timeout=30)
        elapsed = time.monotonic() - started
        raw.disconnect()
        raw.loop_stop()

        assert len(events) == BURST, f"received {len(events)} of {BURST}"
        assert [m.payload.seq for m in events if isinstance(m.payload, Event)] == list(
            range(BURST)
        )
        (status,) = sub.seq.snapshot()
        assert (status.received, status.gaps, status.duplicates) == (BURST, 0, 0)
        assert sub.stats.invalid == 0
        assert elapsed < 30  # typically 1-2 s on loopback


def test_events_through_the_publisher_arrive_complete_and_in_order(mosquitto: Broker) -> None:
    publisher = MqttPublisher(section(mosquitto.port), Topics(PREFIX, "pi-pub"))
    with EventSubscriber(mosquitto.host, mosquitto.port, prefix=PREFIX, device="pi-pub") as sub:
        assert sub.wait_subscribed(5)
        publisher.start()
        assert publisher.wait_connected(5)
        for seq in range(BURST):
            publisher.publish_event(make_event("pi-pub", "cam", seq))
        events = _collect_events(sub, BURST, timeout=30)
        publisher.stop()
    assert len(events) == BURST
    assert sub.seq.total_gaps() == 0 and sub.seq.total_duplicates() == 0
    assert publisher.stats.acked >= BURST and publisher.stats.dropped == 0


def test_messages_are_typed_and_bad_payloads_are_counted(mosquitto: Broker) -> None:
    with EventSubscriber(mosquitto.host, mosquitto.port, prefix=PREFIX) as sub:
        assert sub.wait_subscribed(5)
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ew-typed")
        sender.connect(mosquitto.host, mosquitto.port)
        sender.loop_start()
        sends = [
            (f"{PREFIX}/pi-t/events/cam", b"{not json"),
            (f"{PREFIX}/pi-t/events/cam", b'{"schema": 1, "device": "pi-t"}'),
            (f"{PREFIX}/pi-t/availability", b"online"),
            (f"{PREFIX}/pi-t/state", make_state("pi-t").to_bytes()),
            (f"{PREFIX}/pi-t/events/cam", make_event("pi-t", "cam", 7, "square").to_bytes()),
            (f"{PREFIX}/pi-t/models/status", b"\x00raw"),
        ]
        for topic, payload in sends:
            sender.publish(topic, payload, qos=1).wait_for_publish(5)
        received: list[Received] = []
        deadline = time.monotonic() + 5
        while len(received) < 4 and time.monotonic() < deadline:
            message = sub.get(timeout=0.2)
            if message is not None:
                received.append(message)
        sender.disconnect()
        sender.loop_stop()
        assert [m.kind for m in received] == ["availability", "state", "event", "other"]
        assert received[0].payload == "online"
        assert isinstance(received[1].payload, State)
        assert isinstance(received[2].payload, Event) and received[2].payload.label == "square"
        assert received[3].payload == b"\x00raw"
        assert {m.device for m in received} == {"pi-t"}
        assert sub.stats.invalid == 2
        assert sub.connected


def test_subscriber_stops_cleanly_and_can_start_without_a_broker() -> None:
    sub = EventSubscriber("127.0.0.1", 1, prefix=PREFIX)  # nothing listens on port 1
    sub.start()
    assert not sub.wait_subscribed(0.3)
    threads_before = threading.active_count()
    sub.stop()
    assert not sub.connected
    assert threading.active_count() <= threads_before


def test_seq_tracker_counts_gaps_duplicates_and_late_arrivals() -> None:
    tracker = SeqTracker()
    for seq in (10, 11, 14, 12, 12, 15):
        tracker.observe("pi", "cam", seq)
    tracker.observe("pi", "mic", 0)
    cam, mic = tracker.snapshot()
    assert (cam.source, cam.received, cam.last_seq) == ("cam", 6, 15)
    assert (cam.gaps, cam.duplicates, cam.reordered) == (1, 1, 1)  # 13 missing, 12 twice
    assert (mic.gaps, mic.duplicates) == (0, 0)


def test_parse_message_ignores_foreign_topics() -> None:
    assert parse_message(PREFIX, "other/pi/state", b"{}") is None
    assert parse_message(PREFIX, f"{PREFIX}/group/g1/models/push", b"") is None
