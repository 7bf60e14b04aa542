"""MqttPublisher against a real mosquitto: availability, will, retained state, offline start."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device.config import MqttSection
from device.mqtt.client_options import RECEIVE_MAXIMUM, make_client, with_receive_maximum
from device.mqtt.payloads import Event, ModelRef, PipelineState, SourceState, State
from device.mqtt.publisher import MqttPublisher
from device.mqtt.subscriber import EventSubscriber, Received
from device.mqtt.topics import Topics
from tests.conftest import Broker, free_port, wait_for_port

PREFIX = "ewtest"
MODEL = ModelRef(name="shapes", version="3", sha256="ab" * 32)


def make_event(device: str, source: str, seq: int, label: str = "circle") -> Event:
    now = time.time()
    return Event(
        device=device, source=source, seq=seq, event_id=f"e{seq}", type="instant",
        captured_at=now - 0.01, published_at=now, latency_ms=10.0, model=MODEL,
        task="image-classification", label=label, score=0.9, top_score=0.9,
        pipeline="shapes",
    )


def make_state(device: str, version: str = "0.1.0") -> State:
    now = time.time()
    return State(
        device=device, software_version=version, started_at=now, updated_at=now,
        sources=(SourceState(name="cam", kind="camera", status="running"),),
        pipelines=(PipelineState(name="shapes", source="cam", task="image-classification",
                                 model=MODEL, runtime="litert", edgetpu=False, threads=2),),
    )


def section(port: int, **overrides: object) -> MqttSection:
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": port, "prefix": PREFIX, "keepalive_s": 5,
        "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "password_env": None,
    }
    values.update(overrides)
    return MqttSection.model_validate(values)


def retained(broker_port: int, device: str, kind: str, timeout: float = 5.0) -> Received:
    """The retained message of one kind for a device, as a fresh subscriber sees it."""
    with EventSubscriber("127.0.0.1", broker_port, prefix=PREFIX, device=device) as sub:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = sub.get(timeout=0.2)
            if message is not None and message.kind == kind:
                return message
    raise AssertionError(f"no retained {kind} for {device} within {timeout}s")


def _retained_other(broker_port: int, device: str, timeout: float = 3.0) -> list[Received]:
    """Every retained message of kind "other" a fresh subscriber gets within ``timeout``."""
    got = []
    with EventSubscriber("127.0.0.1", broker_port, prefix=PREFIX, device=device) as sub:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = sub.get(timeout=0.2)
            if message is not None and message.kind == "other":
                got.append(message)
    return got


def test_online_and_state_retained_then_offline_after_stop(mosquitto: Broker) -> None:
    publisher = MqttPublisher(section(mosquitto.port), Topics(PREFIX, "pi-1"))
    publisher.start()
    assert publisher.wait_connected(5)
    publisher.publish_state(make_state("pi-1", version="9.9.9"))

    assert retained(mosquitto.port, "pi-1", "availability").payload == "online"
    state = retained(mosquitto.port, "pi-1", "state").payload
    assert isinstance(state, State) and state.software_version == "9.9.9"

    publisher.stop()
    assert not publisher.connected
    assert retained(mosquitto.port, "pi-1", "availability").payload == "offline"
    stats = publisher.stats
    assert stats.acked == stats.published >= 3  # online, state, offline
    assert stats.dropped == 0 and stats.pending == 0


WILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from device.config import MqttSection
    from device.mqtt.publisher import MqttPublisher
    from device.mqtt.topics import Topics
    config = MqttSection(host="127.0.0.1", port=int(sys.argv[1]), keepalive_s=5,
                         prefix=sys.argv[2], password_env=None)
    publisher = MqttPublisher(config, Topics(sys.argv[2], "pi-doomed"))
    publisher.start()
    if not publisher.wait_connected(10):
        sys.exit(3)
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    time.sleep(60)
    """
)


def test_will_marks_device_offline_when_process_is_killed(mosquitto: Broker) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(
        [sys.executable, "-c", WILL_SCRIPT, str(mosquitto.port), PREFIX],
        stdout=subprocess.PIPE, env=env, cwd=root,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"ready"
        assert retained(mosquitto.port, "pi-doomed", "availability").payload == "online"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=5)
        # The broker sees the socket close at once and publishes the will.
        assert retained(mosquitto.port, "pi-doomed", "availability").payload == "offline"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _persistent_broker(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    """mosquitto with on-disk persistence, so a subscriber's session outlives a restart."""
    (tmp / "store").mkdir(exist_ok=True)
    config = tmp / "persistent.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp / 'store'}/\n"
        # Started as root, mosquitto would drop to a user that cannot write in tmp.
        f"user {getpass.getuser()}\n"
    )
    process = subprocess.Popen(["mosquitto", "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _SessionSubscriber:
    """A subscriber whose MQTT 5 session (and subscription) survives disconnects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.payloads: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = make_client("ew-session-sub", config=None, role="test")
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=properties)
        self.client.loop_start()

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_start_without_broker_does_not_raise_and_queued_events_arrive(tmp_path: Path) -> None:
    port = free_port()
    # Leave a subscriber's session on the broker's disk, then take the broker away.
    broker = _persistent_broker(tmp_path, port)
    session = _SessionSubscriber(port)
    session.connect()
    session.client.subscribe(f"{PREFIX}/pi-late/events/#", qos=1)
    assert session.subscribed.wait(5)
    session.disconnect()
    _stop(broker)

    publisher = MqttPublisher(section(port), Topics(PREFIX, "pi-late"))
    publisher.start()  # nothing listens: must not raise
    try:
        assert not publisher.wait_connected(0.5)
        for seq in range(3):
            publisher.publish_event(make_event("pi-late", "cam", seq))
        assert publisher.stats.published == 3 and publisher.stats.acked == 0

        broker = _persistent_broker(tmp_path, port)
        try:
            assert publisher.wait_connected(10)
            deadline = time.monotonic() + 10
            while publisher.stats.acked < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.stats.acked >= 3  # 3 events (+ online)

            session.connect()
            deadline = time.monotonic() + 10
            while len(session.payloads) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            session.disconnect()
            seqs = [Event.model_validate_json(p).seq for p in session.payloads]
            assert seqs == [0, 1, 2]
        finally:
            _stop(broker)
    finally:
        publisher.stop()


def test_offline_queue_is_bounded_and_drops_are_counted() -> None:
    publisher = MqttPublisher(section(free_port()), Topics(PREFIX, "pi-full"), max_queued=5)
    publisher.start()
    try:
        for seq in range(8):
            publisher.publish_event(make_event("pi-full", "cam", seq))
        stats = publisher.stats
        assert (stats.published, stats.dropped, stats.connected) == (5, 3, False)
    finally:
        publisher.stop()


def test_subscriptions_and_online_come_back_after_a_broker_restart(tmp_path: Path) -> None:
    port = free_port()
    broker = _persistent_broker(tmp_path, port)
    publisher = MqttPublisher(section(port), Topics(PREFIX, "pi-cmd"))
    got: list[bytes] = []
    publisher.subscribe(f"{PREFIX}/pi-cmd/cmd/#", lambda topic, payload: got.append(payload))
    status_topic = f"{PREFIX}/pi-cmd/models/status"
    publisher.start()
    try:
        assert publisher.wait_connected(5)
        publisher.publish_retained(status_topic, b'{"active": "v2"}')
        _stop(broker)
        deadline = time.monotonic() + 5
        while publisher.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not publisher.connected
        (tmp_path / "store" / "mosquitto.db").unlink(missing_ok=True)  # forget all sessions
        broker = _persistent_broker(tmp_path, port)
        assert publisher.wait_connected(10)
        assert retained(port, "pi-cmd", "availability").payload == "online"
        # Retained messages other than state (models/status) are restored too.
        status = [m for m in _retained_other(port, "pi-cmd") if m.topic == status_topic]
        assert status and status[-1].payload == b'{"active": "v2"}'
        sender = make_client("ew-cmd-sender", config=None, role="test")
        sender.connect("127.0.0.1", port)
        sender.loop_start()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            sender.publish(f"{PREFIX}/pi-cmd/cmd/ping", b"hello", qos=1).wait_for_publish(2)
            time.sleep(0.1)
        sender.disconnect()
        sender.loop_stop()
        assert got and got[0] == b"hello"
    finally:
        publisher.stop()
        _stop(broker)


def test_every_connect_announces_the_receive_maximum() -> None:
    """The subscriber-loss fix must survive callers that pass their own properties."""
    own = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    own.SessionExpiryInterval = 60
    merged = with_receive_maximum(own)
    assert getattr(merged, "ReceiveMaximum") == RECEIVE_MAXIMUM  # noqa: B009 (dynamic)
    assert getattr(merged, "SessionExpiryInterval") == 60  # noqa: B009
    assert getattr(with_receive_maximum(None), "ReceiveMaximum") == RECEIVE_MAXIMUM  # noqa: B009
    assert make_client("ew-x", config=None, role="test").protocol == mqtt.MQTTv5
