"""The daemon end to end: a generated video in, events out through a real mosquitto.

The model is the demo's bundled shapes classifier (trained by `make models` on
generated scenes); the video is generated here with known appearances, so the labels a
subscriber must receive are known exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import Event, State
from device.mqtt.subscriber import EventSubscriber, Received
from tests.conftest import Broker, free_port, start_mosquitto
from training.synthetic.shapes import Appearance, write_shapes_video

REPO = Path(__file__).resolve().parent.parent
DEMO_BUNDLE = REPO / "deploy" / "demo" / "models" / "shapes.ewm"
SCRIPT = (Appearance("circle", 1.0, 4.0), Appearance("square", 5.5, 8.5))

EVENT_FIELDS = {
    "schema", "device", "source", "seq", "event_id", "type", "captured_at", "published_at",
    "latency_ms", "model", "task", "label", "score", "top_score", "duration_s", "box",
    "pipeline", "log", "sensor", "audio", "zones", "snapshot",
}  # fmt: skip


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    write_shapes_video(path, seed=11, size=(128, 128), fps=10, script=SCRIPT, duration_s=10.0)
    return path


def write_config(
    directory: Path, broker_port: int, video: Path, *, loop: bool = False, fps: float = 0.0
) -> Path:
    assert DEMO_BUNDLE.is_file(), "the demo bundle is missing; rebuild it with `make models`"
    path = directory / "device.toml"
    path.write_text(
        f"""
[device]
id = "cam1"
state_dir = "{directory / "state"}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[stats]
interval_s = 1

[sources.desk]
file = "{video}"
loop = {"true" if loop else "false"}
fps = {fps}

[pipelines.shapes]
source = "desk"
model = "{DEMO_BUNDLE}"
threshold = 0.6

[pipelines.shapes.events]
min_frames = 3
end_after_s = 0.8
update_interval_s = 1.0
"""
    )
    return path


def collect(subscriber: EventSubscriber, until: float) -> list[Received]:
    got = []
    while time.monotonic() < until:
        message = subscriber.get(timeout=0.2)
        if message is not None:
            got.append(message)
    return got


def events_of(messages: list[Received]) -> list[Event]:
    return [m.payload for m in messages if isinstance(m.payload, Event)]


def run_daemon_to_end(config_path: Path, timeout_s: float = 60.0) -> Daemon:
    daemon = Daemon(load_config(config_path), realtime=False)
    started = time.monotonic()
    daemon.run()  # returns when the (non-looping) file has been played
    assert time.monotonic() - started < timeout_s
    return daemon


def test_subscriber_receives_the_right_labels_in_order(
    mosquitto: Broker, video: Path, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, mosquitto.port, video)
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        assert subscriber.wait_subscribed(5)
        run_daemon_to_end(config_path)
        messages = collect(subscriber, time.monotonic() + 1.5)

    events = events_of(messages)
    starts = [e for e in events if e.type == "start"]
    ends = [e for e in events if e.type == "end"]
    assert [e.label for e in starts] == ["circle", "square"]
    assert [e.label for e in ends] == ["circle", "square"]
    for start, end in zip(starts, ends, strict=True):
        assert start.event_id == end.event_id
        assert end.top_score >= 0.6
        assert 2.0 <= end.duration_s <= 3.5  # the shapes are in view for 3 s
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap either

    raw = [m for m in messages if m.kind == "event"]
    assert raw[0].topic == "edgewatch/cam1/events/desk"
    first = events[0]
    assert set(first.model_dump(by_alias=True)) == EVENT_FIELDS
    assert first.device == "cam1" and first.source == "desk" and first.pipeline == "shapes"
    assert first.task == "image-classification"
    assert first.model.name == "shapes" and len(first.model.sha256) == 64
    assert first.published_at >= first.captured_at

    states = [m.payload for m in messages if isinstance(m.payload, State)]
    assert states and states[0].pipelines[0].model == first.model
    availability = [m.payload for m in messages if m.kind == "availability"]
    assert availability[-1] == "offline"


def test_seq_keeps_increasing_across_restarts(
    mosquitto: Broker, video: Path, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, mosquitto.port, video)
    seen: list[int] = []
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        assert subscriber.wait_subscribed(5)
        for _ in range(2):
            run_daemon_to_end(config_path)
            seen += [e.seq for e in events_of(collect(subscriber, time.monotonic() + 1.0))]
    assert len(seen) >= 8
    assert seen == list(range(seen[0], seen[0] + len(seen)))


def test_daemon_waits_for_a_broker_that_is_down_at_start(video: Path, tmp_path: Path) -> None:
    port = free_port()
    config_path = write_config(tmp_path, port, video, loop=True, fps=10)
    daemon = Daemon(load_config(config_path), realtime=True)
    import threading

    runner = threading.Thread(target=daemon.run)
    runner.start()
    broker = None
    try:
        time.sleep(2.0)  # the daemon runs, retrying, with nothing listening
        assert runner.is_alive()
        broker = start_mosquitto(tmp_path, port)
        with EventSubscriber("127.0.0.1", port) as subscriber:
            assert subscriber.wait_subscribed(5)
            messages = collect(subscriber, time.monotonic() + 8.0)
        kinds = {m.kind for m in messages}
        assert "state" in kinds  # retained state re-published on connect
        assert any(isinstance(m.payload, Event) for m in messages)
        assert any(m.kind == "stats" for m in messages)
    finally:
        daemon.stop()
        runner.join(timeout=10)
        if broker is not None:
            broker.process.terminate()
            broker.process.wait(5)
    assert not runner.is_alive()


def test_sigterm_ends_open_events_and_goes_offline(
    mosquitto: Broker, video: Path, tmp_path: Path
) -> None:
    config_path = write_config(tmp_path, mosquitto.port, video, loop=True, fps=10)
    with EventSubscriber(mosquitto.host, mosquitto.port) as subscriber:
        assert subscriber.wait_subscribed(5)
        process = subprocess.Popen(
            [sys.executable, "-m", "device.cli", "run", "--config", str(config_path)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            messages: list[Received] = []
            while time.monotonic() < deadline and not any(
                isinstance(m.payload, Event) and m.payload.type == "start" for m in messages
            ):
                messages += collect(subscriber, time.monotonic() + 0.5)
            assert any(isinstance(m.payload, Event) for m in messages), "no event before SIGTERM"
            open_ids = {
                m.payload.event_id
                for m in messages
                if isinstance(m.payload, Event) and m.payload.type == "start"
            }
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
        messages += collect(subscriber, time.monotonic() + 1.0)
    ended = {m.payload.event_id for m in messages if isinstance(m.payload, Event)
             and m.payload.type == "end"}  # fmt: skip
    assert open_ids <= ended
    availability = [m.payload for m in messages if m.kind == "availability"]
    assert availability[-1] == "offline"
