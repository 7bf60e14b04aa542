"""Commands over a real mosquitto against a running daemon: every command, and every
kind of bad request, answered on its result topic while events keep flowing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.commands import MAX_SNAPSHOT_BYTES, encode_snapshot
from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import CommandResult, Event, State, Stats
from tests.conftest import Broker, start_mosquitto
from tests.helpers_mqtt import Message, Probe
from tests.test_daemon import write_config
from training.synthetic.shapes import Appearance, write_shapes_video

BASE = "edgewatch/cam1"
SCRIPT = (Appearance("circle", 0.5, 2.5), Appearance("square", 3.0, 5.0))


@dataclass
class Running:
    daemon: Daemon
    thread: threading.Thread
    probe: Probe
    config_path: Path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("commands")
    video = tmp / "scene.mp4"
    write_shapes_video(video, seed=3, size=(128, 128), fps=10, script=SCRIPT, duration_s=6.0)
    broker: Broker = start_mosquitto(tmp)
    config_path = write_config(tmp, broker.port, video, loop=True, fps=10)
    daemon = Daemon(load_config(config_path), realtime=True, config_path=config_path)
    thread = threading.Thread(target=daemon.run, daemon=True)
    probe = Probe(broker.host, broker.port, f"{BASE}/#")
    thread.start()
    try:
        assert probe.wait_for(lambda m: m.topic == f"{BASE}/state", 15)
        yield Running(daemon, thread, probe, config_path)
    finally:
        daemon.stop()
        thread.join(10)
        probe.close()
        broker.process.terminate()
        broker.process.wait(5)


def command(
    running: Running, name: str, payload: bytes | str, timeout: float = 10.0
) -> CommandResult:
    """Publish one raw command payload and return its result."""
    start = len(running.probe.messages)
    running.probe.publish(f"{BASE}/cmd/{name}", payload)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in running.probe.messages[start:]:
            if message.topic == f"{BASE}/cmd/{name}/result":
                return CommandResult.model_validate_json(message.payload)
        time.sleep(0.05)
    raise AssertionError(f"no result for {name}")


def send(running: Running, name: str, document: dict[str, object]) -> CommandResult:
    request_id = f"r{time.monotonic_ns()}"
    result = command(running, name, json.dumps({**document, "request_id": request_id}))
    assert result.request_id == request_id
    return result


def is_event(message: Message) -> bool:
    return message.topic == f"{BASE}/events/desk"


def test_bad_commands_get_error_results_and_the_daemon_goes_on(running: Running) -> None:
    cases: list[tuple[str, bytes | str, str]] = [
        ("threshold", b"{not json", "not valid JSON"),
        ("threshold", b"\xff\xfe", "not valid JSON"),
        ("threshold", "[1, 2]", "JSON object"),
        ("threshold", '{"label": "circle", "threshold": "high"}', "threshold"),
        ("threshold", '{"label": "circle", "threshold": 1.5}', "less than or equal to 1"),
        ("threshold", '{"label": "circle"}', "threshold: Field required"),
        ("threshold", '{"label": "unicorn", "threshold": 0.5}', "unknown label 'unicorn'"),
        ("threshold", '{"label": "circle", "threshold": 0.5, "pipeline": "x"}', "pipeline"),
        ("enable", '{"source": 7}', "source"),
        ("disable", '{"source": "garden"}', "unknown source 'garden'; known: desk"),
        ("snapshot", '{"source": "garden"}', "unknown source 'garden'"),
        ("snapshot", '{"source": "desk", "quality": 5}', "quality"),
        ("state", '{"verbose": true}', "verbose: unknown key"),
        ("explode", "{}", "unknown command 'explode'"),
    ]
    for name, payload, reason in cases:
        result = command(running, name, payload)
        assert not result.ok, (name, payload)
        assert result.error is not None and reason in result.error, (reason, result.error)
        assert result.device == "cam1" and result.command == name
    # A request id survives an otherwise invalid payload.
    bad = command(running, "threshold", '{"request_id": "abc", "threshold": "x"}')
    assert not bad.ok and bad.request_id == "abc"

    assert running.thread.is_alive()
    running.probe.clear()
    assert running.probe.wait_for(is_event, 15), "no event after the bad commands"
    assert send(running, "state", {}).ok


def test_threshold_sets_the_label_threshold(running: Running) -> None:
    pipeline = running.daemon.pipelines[0].pipeline
    result = send(running, "threshold", {"label": "square", "threshold": 0.75})
    assert result.ok and result.error is None
    assert result.data == {"label": "square", "threshold": 0.75, "pipelines": ["shapes"]}
    assert pipeline.thresholds["square"] == pytest.approx(0.75)
    assert pipeline.thresholds["circle"] == pytest.approx(0.6)  # the others are kept
    result = send(running, "threshold", {"label": "square", "threshold": 0.6, "pipeline": "shapes"})
    assert result.ok and pipeline.thresholds["square"] == pytest.approx(0.6)


def test_snapshot_publishes_a_bounded_jpeg_of_the_latest_frame(running: Running) -> None:
    result = send(running, "snapshot", {"source": "desk", "max_width": 64})
    assert result.ok, result.error
    assert result.data["topic"] == f"{BASE}/snapshot/desk"
    jpeg = running.probe.wait_for(lambda m: m.topic == f"{BASE}/snapshot/desk", 5)
    assert jpeg is not None and jpeg.payload[:2] == b"\xff\xd8"
    assert len(jpeg.payload) == result.data["bytes"] <= MAX_SNAPSHOT_BYTES
    image = cv2.imdecode(np.frombuffer(jpeg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (64, 64, 3)  # the 128 px frame, scaled to max_width


def test_encode_snapshot_stays_under_the_size_bound() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    snapshot = encode_snapshot(noise, max_width=1280, quality=95, max_bytes=40_000)
    assert len(snapshot.jpeg) <= 40_000
    assert snapshot.quality < 95 or snapshot.width < 1280
    assert cv2.imdecode(np.frombuffer(snapshot.jpeg, np.uint8), cv2.IMREAD_COLOR) is not None


def test_state_reports_the_device_and_republishes_it(running: Running) -> None:
    running.probe.clear()
    result = send(running, "state", {})
    assert result.ok
    assert result.data["device"] == "cam1"
    assert result.data["thresholds"] == {"shapes": running.daemon.pipelines[0].pipeline.thresholds}
    retained = running.probe.wait_for(lambda m: m.topic == f"{BASE}/state", 5)
    assert retained is not None
    assert State.model_validate_json(retained.payload).pipelines[0].name == "shapes"


def test_disable_stops_inference_and_enable_resumes_it(running: Running) -> None:
    result = send(running, "disable", {"source": "desk"})
    assert result.ok and result.data == {"source": "desk", "enabled": False}
    state = running.probe.wait_for(
        lambda m: (
            m.topic == f"{BASE}/state"
            and not State.model_validate_json(m.payload).sources[0].enabled
        ),
        5,
    )
    assert state is not None, "state did not show the source disabled"
    inferences = running.daemon.pipelines[0].pipeline.stats().inferences
    time.sleep(0.5)  # a frame already inside the pipeline may finish
    settled = running.daemon.pipelines[0].pipeline.stats().inferences
    running.probe.clear()
    time.sleep(2.0)
    assert running.daemon.pipelines[0].pipeline.stats().inferences == settled
    assert settled - inferences <= 1
    events = [Event.model_validate_json(m.payload) for m in running.probe.messages if is_event(m)]
    assert all(e.type == "end" for e in events)  # only what was open, ended
    stats = running.daemon.stats()
    assert isinstance(stats, Stats) and stats.sources[0].enabled is False

    assert send(running, "enable", {"source": "desk"}).ok
    assert running.probe.wait_for(is_event, 15), "no event after enable"
    assert running.daemon.pipelines[0].pipeline.stats().inferences > settled


def test_reload_applies_live_keys_and_names_the_rest(running: Running) -> None:
    path = running.config_path
    original = path.read_text()
    try:
        edited = original.replace(
            "threshold = 0.6", "threshold = 0.7\nthresholds = { square = 0.9 }"
        )
        edited = edited.replace("interval_s = 1", "interval_s = 2")
        edited = edited.replace("min_frames = 3", "min_frames = 2")
        edited = edited.replace("reconnect_max_s = 1.0", "reconnect_max_s = 2.0", 1)
        path.write_text(edited)
        result = send(running, "reload", {})
        assert result.ok, result.error
        assert set(result.data["applied"]) == {  # type: ignore[arg-type]
            "pipelines.shapes.threshold",
            "pipelines.shapes.thresholds",
            "pipelines.shapes.events",
            "stats",
        }
        assert result.data["restart_required"] == ["mqtt"]
        pipeline = running.daemon.pipelines[0].pipeline
        assert pipeline.thresholds["circle"] == pytest.approx(0.7)
        assert pipeline.thresholds["square"] == pytest.approx(0.9)
        assert pipeline.tracker.config.min_frames == 2
        assert running.daemon.config.stats.interval_s == 2

        path.write_text(edited.replace("square = 0.9", "unicorn = 0.9"))
        refused = send(running, "reload", {})
        assert not refused.ok and refused.error is not None and "unicorn" in refused.error
        assert pipeline.thresholds["square"] == pytest.approx(0.9)  # nothing changed

        path.write_text("[device\n")
        broken = send(running, "reload", {})
        assert not broken.ok and broken.error is not None and "not valid TOML" in broken.error
    finally:
        path.write_text(original)
    restored = send(running, "reload", {})
    assert restored.ok and running.daemon.pipelines[0].pipeline.thresholds["square"] == 0.6
    assert running.thread.is_alive()
