"""`edgewatch demo`: the whole system in one process, on the embedded broker or mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from device.config import MqttSection
from device.mqtt.payloads import Event
from device.mqtt.subscriber import EventSubscriber
from tests.conftest import Broker, free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def run_demo(port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "device.cli", "demo", "--port", str(port), "--no-watch",
         "--duration", str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def events_until_exit(subscriber: EventSubscriber, process: subprocess.Popen[str]) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        message = subscriber.get(timeout=0.2)
        if message is not None and isinstance(message.payload, Event):
            events.append(message.payload)
    return events


def test_demo_starts_an_embedded_broker_and_publishes_events() -> None:
    port = free_port()
    process = run_demo(port, 14)
    try:
        wait_for_port("127.0.0.1", port, timeout_s=30)
        # amqtt speaks MQTT 3.1.1 only.
        config = MqttSection(protocol="3.1.1")
        with EventSubscriber("127.0.0.1", port, config=config) as subscriber:
            assert subscriber.wait_subscribed(10)
            events = events_until_exit(subscriber, process)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "embedded MQTT broker (amqtt)" in output
    # --no-watch prints the events its own watcher sees as JSON lines; that watcher
    # subscribes before the video starts, so it sees the first shape too.
    printed = [json.loads(line) for line in output.splitlines() if line.startswith('{"schema"')]
    starts = [event["label"] for event in printed if event["type"] == "start"]
    # The sample video shows a circle from 2 s to 6 s and a square from 8 s to 12 s.
    assert starts[:2] == ["circle", "square"], output
    # An outside subscriber (connecting a little later) gets the same events.
    assert {e.label for e in events if e.type == "start"} & {"circle", "square"}, output


def test_demo_uses_a_broker_that_already_listens(mosquitto: Broker) -> None:
    process = run_demo(mosquitto.port, 8)
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        assert subscriber.wait_subscribed(10)
        events = events_until_exit(subscriber, process)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "using the MQTT broker already listening" in output
    assert any(e.label == "circle" for e in events), output
