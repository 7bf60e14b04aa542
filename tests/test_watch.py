"""edgewatch watch: JSON lines and the live view, against a real broker."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from rich.console import Console

from device.mqtt.payloads import Event, PipelineStats, SourceStats, Stats
from device.mqtt.publisher import MqttPublisher
from device.mqtt.subscriber import Received
from device.mqtt.topics import Topics
from device.watch import BrokerAddress, WatchModel, parse_broker, run_watch
from tests.conftest import Broker
from tests.test_mqtt_publisher import PREFIX, make_event, make_state, section


@contextmanager
def watching(broker: Broker, as_json: bool, console: Console) -> Iterator[threading.Event]:
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run_watch(broker.host, broker.port, PREFIX, None, as_json, stop_event=stop,
                      console=console, refresh_s=0.05)
        )
    )
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert result == [0]


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def publisher(mosquitto: Broker) -> Iterator[MqttPublisher]:
    pub = MqttPublisher(section(mosquitto.port), Topics(PREFIX, "pi-watch"))
    pub.start()
    assert pub.wait_connected(5)
    yield pub
    pub.stop()


def test_json_mode_prints_one_valid_line_per_event(
    mosquitto: Broker, publisher: MqttPublisher
) -> None:
    out = io.StringIO()
    with watching(mosquitto, as_json=True, console=Console(file=out)):
        # Events are not retained: publish until the watcher shows it is subscribed.
        seq = 0
        while not out.getvalue() and seq < 200:
            publisher.publish_event(make_event("pi-watch", "cam", seq, "warmup"))
            seq += 1
            time.sleep(0.05)
        publisher.publish_stats(_stats())  # not an event: must not be printed
        for label in ("circle", "square", "triangle"):
            publisher.publish_event(make_event("pi-watch", "cam", seq, label))
            seq += 1
        assert _until(lambda: "triangle" in out.getvalue())
    lines = out.getvalue().splitlines()
    events = [Event.model_validate(json.loads(line)) for line in lines]
    assert [e.label for e in events[-3:]] == ["circle", "square", "triangle"]
    assert all(e.device == "pi-watch" for e in events)
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_live_view_shows_devices_and_events(mosquitto: Broker, publisher: MqttPublisher) -> None:
    publisher.publish_state(make_state("pi-watch", version="4.5.6"))
    # A terminal console so that Live draws while running (and records what it drew).
    console = Console(record=True, file=io.StringIO(), width=220, force_terminal=True)
    with watching(mosquitto, as_json=False, console=console):
        seq = 0
        while "hexagon" not in console.export_text(clear=False) and seq < 100:
            publisher.publish_event(make_event("pi-watch", "cam", seq, "hexagon"))
            seq += 1
            time.sleep(0.1)
    text = console.export_text()
    assert "pi-watch" in text and "hexagon" in text
    assert "4.5.6" in text  # from the retained state
    assert "online" in text


def test_model_renders_stats_seq_and_availability() -> None:
    model = WatchModel()
    now = time.time()
    model.update(Received("p/pi-a/availability", "pi-a", "availability", "offline", now))
    model.update(Received("p/pi-a/stats", "pi-a", "stats", _stats(), now))
    for seq in (1, 3):
        event = make_event("pi-a", "cam", seq, "star")
        model.seq.observe("pi-a", "cam", seq)
        model.update(Received("p/pi-a/events/cam", "pi-a", "event", event, now))
    console = Console(record=True, file=io.StringIO(), width=200)
    console.print(model.render(now))
    text = console.export_text()
    assert "offline" in text and "star" in text
    assert "cam 12.5" in text  # source fps from stats
    # device, source, received 2, last seq 3, one gap (seq 2), no duplicates
    assert re.search(r"pi-a\s*│\s*cam\s*│\s*2\s*│\s*3\s*│\s*1\s*│\s*0\s*│", text)


def test_parse_broker() -> None:
    assert parse_broker("broker.lan") == BrokerAddress("broker.lan", 1883)
    assert parse_broker("10.0.0.2:8883") == BrokerAddress("10.0.0.2", 8883)
    assert parse_broker("[::1]:1884") == BrokerAddress("::1", 1884)
    with pytest.raises(ValueError, match="port"):
        parse_broker("host:http")


def _stats() -> Stats:
    return Stats(
        device="pi-a", at=time.time(), uptime_s=5.0,
        sources=(SourceStats(name="cam", fps=12.5, frames=60, dropped=0, reconnects=0,
                             queue_depth=0),),
        pipelines=(PipelineStats(name="shapes", inferences=60, inference_ms_p50=7.0,
                                 inference_ms_p99=9.0, events=2),),
        cpu_percent=20.0, memory_rss_mb=80.0, publish_queue=0,
    )
