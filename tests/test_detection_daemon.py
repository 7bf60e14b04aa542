"""Object detection in the running daemon: a camera file with shapes crossing a still
scene, the session's tiny int8 detector, the motion gate, masks and zones, snapshots on
their own topic, and a chained classifier naming each detected box."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import Event
from tests.conftest import Broker
from tests.helpers_mqtt import Probe
from training.synthetic.shapes import Appearance, VideoTruth, write_shapes_video

BASE = "edgewatch/cam1"
FPS = 10.0
SIZE = (128, 128)
#: One circle (a class the session's detector knows) crossing the view between still
#: stretches.
SHAPE = "circle"
SCRIPT = (Appearance(SHAPE, 3.0, 7.0),)
DURATION_S = 20.0  # a still stretch after it: only keep-alives look there


@pytest.fixture(scope="module")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VideoTruth]:
    path = tmp_path_factory.mktemp("crossing") / "crossing.avi"
    truth = write_shapes_video(path, seed=3, size=SIZE, fps=FPS, script=SCRIPT,
                               duration_s=DURATION_S)  # fmt: skip
    return path, truth


def _config(tmp_path: Path, port: int, video: Path, detector: Path, extra: str = "") -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f"""
[device]
id = "cam1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[outbox]
enabled = false

[sources.desk]
file = "{video}"
fps = 0

[pipelines.shapes]
task = "object-detection"
source = "desk"
model = "{detector}"
threshold = 0.5

[pipelines.shapes.motion]
keepalive_s = 2.0

[pipelines.shapes.snapshot]
enabled = true
max_bytes = 4096
on = ["end"]

[pipelines.shapes.zones.left]
points = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]
{extra}
"""
    )
    return path


def _run(config_path: Path, broker: Broker) -> tuple[Daemon, Probe]:
    probe = Probe(broker.host, broker.port, f"{BASE}/#")
    daemon = Daemon(load_config(config_path), realtime=False)
    started = time.monotonic()
    daemon.run()  # returns when the file has been played
    assert time.monotonic() - started < 120
    time.sleep(1.0)  # the last messages reach the probe
    probe.close()
    return daemon, probe


def _events(probe: Probe, pipeline: str) -> list[Event]:
    return [
        event
        for m in probe.messages
        if m.topic == f"{BASE}/events/desk"
        and (event := Event.model_validate_json(m.payload)).pipeline == pipeline
    ]


def test_one_object_crossing_is_one_event_with_its_box_zones_and_snapshot(
    mosquitto: Broker, detector_bundle: Path, crossing: tuple[Path, VideoTruth], tmp_path: Path
) -> None:
    video, truth = crossing
    daemon, probe = _run(_config(tmp_path, mosquitto.port, video, detector_bundle), mosquitto)
    every = _events(probe, "shapes")
    seen = [(e.type, e.label, e.duration_s) for e in every]
    # The circle is one event. The session's tiny detector may also take part of it for
    # its other class for a frame or two: such an event must stay short.
    events = [e for e in every if e.label == SHAPE]
    kinds = [(e.type, e.label) for e in events if e.type != "update"]
    assert kinds == [("start", SHAPE), ("end", SHAPE)], seen
    others = [e for e in every if e.label != SHAPE and e.type == "end"]
    assert all(e.duration_s < 1.0 for e in others), seen
    start, end = events[0], events[-1]
    assert start.event_id == end.event_id and start.task == "object-detection"
    assert 2.0 <= end.duration_s <= 4.5  # in view for 4 s
    # Each box's centre lies inside the shape's true box in some frame of its path.
    boxes = [b for i in range(truth.frame_count) if (b := truth.box_at(i)) is not None]
    for event in (start, end):
        assert event.box is not None
        x = (event.box.xmin + event.box.xmax) / 2
        y = (event.box.ymin + event.box.ymax) / 2
        assert any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes), event.box
    assert start.zones is not None and end.zones is not None
    # The snapshot: on its own topic, before the end event, under the cap, a real JPEG.
    assert start.snapshot is None and end.snapshot is not None
    shots = [m for m in probe.messages if m.topic == f"{BASE}/events/desk/snapshot"]
    assert len(shots) == 1 + len(others) and end.snapshot.topic == shots[0].topic
    assert end.snapshot.bytes in [len(m.payload) for m in shots]
    assert all(len(m.payload) <= 4096 for m in shots)
    image = cv2.imdecode(np.frombuffer(shots[-1].payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.ndim == 3
    # The still stretches were gated: the model ran on far fewer frames than were read.
    stats = daemon.stats()
    figures = {p.name: p for p in stats.pipelines}["shapes"]
    assert figures.gated > 0 and figures.inferences > 0
    assert figures.gated + figures.inferences == truth.frame_count
    assert figures.inferences < truth.frame_count * 0.5


def test_a_mask_over_the_path_suppresses_the_object(
    mosquitto: Broker, detector_bundle: Path, crossing: tuple[Path, VideoTruth], tmp_path: Path
) -> None:
    video, _ = crossing
    mask = "masks = [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]"
    config = _config(tmp_path, mosquitto.port, video, detector_bundle).read_text()
    config = config.replace("threshold = 0.5\n", f"threshold = 0.5\n{mask}\n", 1)
    path = tmp_path / "masked.toml"
    path.write_text(config)
    daemon, probe = _run(path, mosquitto)
    assert _events(probe, "shapes") == []
    figures = {p.name: p for p in daemon.stats().pipelines}["shapes"]
    assert figures.inferences > 0  # the model looked (and found the circle, masked)


def test_a_chained_classifier_names_each_detected_box(
    mosquitto: Broker,
    detector_bundle: Path,
    shape_crop_bundle: Path,
    crossing: tuple[Path, VideoTruth],
    tmp_path: Path,
) -> None:
    video, _ = crossing
    chained = f"""
[pipelines.what]
task = "image-classification"
input = "shapes"
model = "{shape_crop_bundle}"
margin = 0.15
square = true
min_size = 8
threshold = 0.4
"""
    daemon, probe = _run(
        _config(tmp_path, mosquitto.port, video, detector_bundle, chained), mosquitto
    )
    named = [e for e in _events(probe, "what") if e.type != "update"]
    seen = [(e.type, e.label, e.score, e.duration_s) for e in named]
    # Every "what" event is the second model's verdict on a detected box's crop, with
    # the detector's box: labels of the crop classifier (it knows squares, the detector
    # does not), one event that lasts through the crossing, flickers short. Whether
    # each verdict is right is the crop classifier's own test (tests/test_chained.py).
    ends = [e for e in named if e.type == "end"]
    assert len(ends) == len([e for e in named if e.type == "start"]), seen
    assert {e.label for e in named} <= {"circle", "square", "triangle"}, seen
    longest = max(ends, key=lambda e: e.duration_s)
    assert longest.duration_s >= 2.5, seen
    assert sum(e.duration_s for e in ends if e is not longest) < longest.duration_s / 2, seen
    assert all(e.box is not None and e.task == "image-classification" for e in named)
    detected = [e for e in _events(probe, "shapes") if e.type == "start" and e.label == SHAPE]
    assert len(detected) == 1
    # The stats message says what became of the detector's objects.
    figures = {p.name: p for p in daemon.stats().pipelines}
    crops = figures["what"].crops
    assert figures["shapes"].crops is None and crops is not None
    assert crops.classified >= figures["what"].inferences > 0
    assert 0 < crops.reported <= crops.classified
