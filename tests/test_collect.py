"""The retraining loop end to end: a real daemon keeps examples, `edgewatch collect`
pulls them over a real mosquitto into a training folder, and the device forgets them.

The daemon runs in-process on the demo's shapes model and a generated looping video;
automatic keeping is off in the shared daemon so the store holds exactly what each test
keeps by command (one test runs a daemon with automatic keeping on).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.commands import CommandError
from device.config import load_config
from device.daemon import Daemon
from device.examples.service import ExampleService
from device.examples.wire import ExampleMessage
from device.mqtt.payloads import CommandResult
from tests.conftest import Broker, free_port, start_mosquitto
from tests.helpers_mqtt import Probe
from tests.test_daemon import DEMO_BUNDLE, write_config
from training.collect import (
    CSV_FIELDS,
    BrokerUnreachableError,
    CollectError,
    CollectOptions,
    DeviceSilentError,
    collect_examples,
)
from training.datasets.image_folder import load_labelled_folder, scan_folder
from training.synthetic.shapes import Appearance, write_shapes_video

REPO = Path(__file__).resolve().parent.parent
BASE = "edgewatch/cam1"
SCRIPT = (Appearance("circle", 0.5, 2.5), Appearance("square", 3.0, 5.0))
MANUAL_ONLY = """
[examples]
low_confidence_margin = 0
dispute_window_s = 0
max_width = 96
"""


@dataclass
class Running:
    daemon: Daemon
    examples: ExampleService
    probe: Probe
    broker: Broker

    def options(self, out: Path, **overrides: object) -> CollectOptions:
        options = CollectOptions(
            device="cam1",
            out=out,
            host=self.broker.host,
            port=self.broker.port,
            timeout_s=10.0,
            progress=False,
        )
        return replace(options, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    write_shapes_video(path, seed=3, size=(128, 128), fps=10, script=SCRIPT, duration_s=6.0)
    return path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, video: Path) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("collect")
    broker = start_mosquitto(tmp)
    config_path = write_config(tmp, broker.port, video, loop=True, fps=10)
    config_path.write_text(config_path.read_text() + MANUAL_ONLY)
    daemon = Daemon(load_config(config_path), realtime=True, config_path=config_path)
    assert daemon.examples is not None
    thread = threading.Thread(target=daemon.run, daemon=True)
    probe = Probe(broker.host, broker.port, f"{BASE}/#")
    thread.start()
    try:
        assert probe.wait_for(lambda m: m.topic == f"{BASE}/state", 15)
        assert daemon.examples is not None
        yield Running(daemon, daemon.examples, probe, broker)
        assert thread.is_alive(), "the daemon died during the tests"
    finally:
        daemon.stop()
        thread.join(10)
        probe.close()
        broker.process.terminate()
        broker.process.wait(5)


@pytest.fixture
def device(running: Running) -> Running:
    """The shared daemon with an empty store."""
    store = running.examples.store
    store.remove([m.id for m in store.examples()])
    running.probe.clear()
    return running


def command(running: Running, name: str, payload: str | dict[str, object]) -> CommandResult:
    """Publish one command (raw text or a JSON object) and return its result."""
    request_id = f"t{time.monotonic_ns()}"
    if isinstance(payload, dict):
        payload = json.dumps({**payload, "request_id": request_id})
    start = len(running.probe.messages)
    running.probe.publish(f"{BASE}/cmd/{name}", payload)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for message in running.probe.messages[start:]:
            if message.topic == f"{BASE}/cmd/{name}/result":
                return CommandResult.model_validate_json(message.payload)
        time.sleep(0.05)
    raise AssertionError(f"no result for {name}")


def keep(running: Running, count: int) -> list[str]:
    ids = []
    for index in range(count):
        result = command(running, "keep", {"source": "desk", "note": f"kept {index}"})
        assert result.ok, result.error
        assert isinstance(result.data["id"], str)
        ids.append(result.data["id"])
    return ids


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "collected.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_keep_over_mqtt_stores_the_latest_frame_with_its_prediction(device: Running) -> None:
    result = command(device, "keep", {"source": "desk", "note": "the porch light was on"})
    assert result.ok, result.error
    meta = device.examples.store.get(str(result.data["id"]))
    assert meta is not None
    assert meta.reason == "command" and meta.note == "the porch light was on"
    assert meta.source == "desk" and meta.pipeline == "shapes" and meta.kind == "image"
    assert meta.label in ("background", "circle", "square", "triangle")
    assert meta.model.name == "shapes" and meta.threshold == pytest.approx(0.6)
    assert result.data["label"] == meta.label and result.data["stored"] == 1
    assert time.time() - meta.captured_at < 5
    jpeg = device.examples.store.read(meta.id)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None  # max_width 96 scales the 128 px frame down
    assert image.shape == (96, 96, 3) == (meta.height, meta.width, 3)


def test_collect_writes_a_training_folder_and_the_device_forgets_it(
    device: Running, tmp_path: Path
) -> None:
    ids = keep(device, 3)
    out = tmp_path / "dataset"
    # Two per command: the client pages through the store with the `after` cursor.
    report = collect_examples(device.options(out, batch=2))
    assert sorted(report.saved) == sorted(ids)
    assert report.forgotten == 3 and report.remaining == 0 and report.already_present == 0
    assert device.examples.store.examples() == []  # `forget` removed them on the device

    rows = csv_rows(out)
    assert [row["id"] for row in rows] == sorted(ids)
    assert tuple(rows[0]) == CSV_FIELDS
    for row in rows:
        path = out / row["file"]
        assert path == out / row["label"] / f"{row['id']}.jpg" and path.is_file()
        assert row["reason"] == "command" and row["note"].startswith("kept ")
        assert row["model"] == "shapes" and row["source"] == "desk" and row["pipeline"] == "shapes"
        assert row["captured_at"].endswith("Z") and 0.0 <= float(row["score"]) <= 1.0
    # The image-folder loader reads the folder as it stands, with the model's labels.
    spec = read_bundle(DEMO_BUNDLE).manifest
    images = load_labelled_folder(out, spec.preprocessing, label_order=spec.labels)
    assert len(images.files) == 3 and not images.skipped
    assert set(scan_folder(out, min_classes=1).labels) == {row["label"] for row in rows}

    again = collect_examples(device.options(out))
    assert again.received == 0 and again.saved == ()


def test_collect_skips_what_the_folder_has_and_can_leave_examples_on_the_device(
    device: Running, tmp_path: Path
) -> None:
    ids = keep(device, 2)
    out = tmp_path / "dataset"
    first = collect_examples(device.options(out, keep_on_device=True))
    assert sorted(first.saved) == sorted(ids) and first.forgotten == 0
    assert len(device.examples.store.examples()) == 2

    # Labelling: the first image was really a triangle.
    row = csv_rows(out)[0]
    moved = out / "triangle" / f"{row['id']}.jpg"
    moved.parent.mkdir(exist_ok=True)
    (out / row["file"]).rename(moved)

    second = collect_examples(device.options(out, keep_on_device=True))
    assert second.saved == () and second.already_present == 2
    # This time the device forgets them; nothing is written twice, even the moved one.
    third = collect_examples(device.options(out))
    assert third.saved == () and third.already_present == 2 and third.forgotten == 2
    assert device.examples.store.examples() == []
    assert len(csv_rows(out)) == 2
    assert sorted(p.name for p in out.rglob("*.jpg")) == sorted(f"{i}.jpg" for i in ids)
    assert not (out / row["file"]).exists() and moved.is_file()


def test_collect_command_line_pages_exits_and_reports(device: Running, tmp_path: Path) -> None:
    ids = keep(device, 2)
    out = tmp_path / "dataset"

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "device.cli", "collect", "--device", "cam1", "--out",
             str(out), "--broker", device.broker.address, "--timeout", "10", *extra],
            check=False,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip

    first = cli("--max", "1")
    assert first.returncode == 0, first.stderr
    assert "saved 1 new example(s)" in first.stdout and "1 example(s) remain" in first.stdout
    assert [m.id for m in device.examples.store.examples()] == [max(ids)]
    second = cli()
    assert second.returncode == 0 and "saved 1 new example(s)" in second.stdout
    assert device.examples.store.examples() == []
    empty = cli()
    assert empty.returncode == 1 and "no examples to collect" in empty.stdout
    assert sorted(p.stem for p in out.rglob("*.jpg")) == sorted(ids)


def test_collect_publishes_bounded_typed_messages(device: Running) -> None:
    keep(device, 3)
    result = command(device, "collect", {"max_items": 2})
    assert result.ok, result.error
    assert result.data["sent"] == 2 and result.data["remaining"] == 1
    topic = f"{BASE}/examples/{result.request_id}"
    assert result.data["topic"] == topic
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = [m for m in device.probe.messages if m.topic == topic]
        if len(messages) == 2:
            break
        time.sleep(0.05)
    parsed = [ExampleMessage.model_validate_json(m.payload) for m in messages]
    assert [(p.index, p.count) for p in parsed] == [(0, 2), (1, 2)]
    assert parsed[1].example.id == result.data["last_id"]
    for message in parsed:
        data = message.data_bytes()  # size and sha256 match the sidecar
        assert data[:2] == b"\xff\xd8" and message.device == "cam1"
    rest = command(device, "collect", {"after": result.data["last_id"]})
    assert rest.ok and rest.data["sent"] == 1 and rest.data["remaining"] == 0
    nothing = command(device, "collect", {"after": rest.data["last_id"]})
    assert nothing.ok and nothing.data["sent"] == 0 and nothing.data["remaining"] == 0
    # Forgetting what exists and what does not: both answered, nothing raised.
    ids = [m.id for m in device.examples.store.examples()]
    forgot = command(device, "forget", {"ids": [*ids, "20200101T000000000Z-abcdef"]})
    assert forgot.ok and forgot.data == {"forgotten": 3, "unknown": 1, "stored": 0}


def test_collect_leaves_out_an_example_damaged_on_the_device(device: Running) -> None:
    damaged, whole = keep(device, 2)
    meta = device.examples.store.get(damaged)
    assert meta is not None
    path = device.examples.store.root / meta.file_name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55  # a flipped bit on the SD card
    path.write_bytes(bytes(data))
    result = command(device, "collect", {})
    assert result.ok and result.data["sent"] == 1 and result.data["damaged"] == 1
    assert result.data["last_id"] == whole and result.data["stored"] == 1


def test_malformed_example_commands_get_error_results(device: Running) -> None:
    keep(device, 1)
    too_many = json.dumps({"ids": [f"id{i}" for i in range(1001)]})
    cases: list[tuple[str, str, str]] = [
        ("keep", '{"source": "garden"}', "unknown source 'garden'"),
        ("keep", '{"source": 7}', "source"),
        ("keep", json.dumps({"source": "desk", "note": "x" * 501}), "note"),
        ("keep", '{"source": "desk", "pipeline": "faces"}', "does not run on source"),
        ("keep", "[]", "JSON object"),
        ("collect", "{}", "request_id: Field required"),
        ("collect", '{"request_id": "a/b/#"}', "request_id: String should match"),
        ("collect", '{"request_id": "r1", "max_items": 1000000}', "less than or equal to 500"),
        ("collect", '{"request_id": "r1", "max_items": "5"}', "max_items"),
        ("collect", '{"request_id": "r1", "max_items": 0}', "greater than or equal to 1"),
        ("collect", '{"request_id": "r1", "after": "../../etc"}', "after"),
        ("forget", "{}", "ids: Field required"),
        ("forget", '{"ids": "abc"}', "ids"),
        ("forget", '{"ids": ["../../seq.json"]}', "String should match"),
        ("forget", too_many, "at most 1000"),
        ("forget", "{not json", "not valid JSON"),
    ]
    for name, payload, reason in cases:
        result = command(device, name, payload)
        assert not result.ok, (name, payload)
        assert result.error is not None and reason in result.error, (reason, result.error)
    assert len(device.examples.store.examples()) == 1  # nothing was published or removed
    assert not [m for m in device.probe.messages if "/examples/" in m.topic]
    assert command(device, "state", {}).ok


def test_collect_says_what_is_wrong_without_broker_or_device(
    running: Running, tmp_path: Path
) -> None:
    out = tmp_path / "dataset"
    nobody = running.options(out, port=free_port(), timeout_s=2.0)
    with pytest.raises(BrokerUnreachableError, match="cannot reach the MQTT broker"):
        collect_examples(nobody)
    ghost = running.options(out, device="ghost", timeout_s=1.0)
    with pytest.raises(DeviceSilentError, match="device ghost did not answer `collect`"):
        collect_examples(ghost)
    with pytest.raises(CollectError, match="never connected"):
        collect_examples(ghost)


def test_collect_stops_at_once_when_the_broker_goes_away(tmp_path: Path) -> None:
    broker = start_mosquitto(tmp_path)
    options = CollectOptions(
        device="cam9", out=tmp_path / "out", port=broker.port, host=broker.host,
        timeout_s=30.0, progress=False,
    )  # fmt: skip
    killer = threading.Timer(0.5, broker.process.kill)
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(BrokerUnreachableError, match=r"connection to the broker .* was lost"):
            collect_examples(options)
    finally:
        killer.join()
        broker.process.wait(5)
    assert time.monotonic() - started < 5.0  # not the 30 s timeout


def test_the_daemon_keeps_low_confidence_frames_by_itself(video: Path, tmp_path: Path) -> None:
    """Threshold 0.999 makes the model's confident frames (about 0.99) low-confidence:
    the daemon keeps some, rate-limited, without any command."""
    port = free_port()  # no broker needed: the store is on disk
    config_path = write_config(tmp_path, port, video)
    text = config_path.read_text().replace("threshold = 0.6", "threshold = 0.999")
    extra = "\n[examples]\nlow_confidence_margin = 0.5\nmin_interval_s = 0.3\n"
    config_path.write_text(text + extra)
    daemon = Daemon(load_config(config_path), realtime=False)
    assert daemon.examples is not None
    daemon.run()  # to the end of the (non-looping) video
    metas = daemon.examples.store.examples()
    assert metas, "no example kept"
    for meta in metas:
        assert meta.reason == "low-confidence" and meta.label in ("circle", "square")
        assert 0.499 <= meta.score < 0.999 and meta.threshold == pytest.approx(0.999)
    times = [m.captured_at for m in metas]
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(times))
    stats = daemon.examples.stats()
    assert stats.recorder.kept == len(metas) and stats.recorder.detector.rate_limited > 0
    # The store survives the daemon: a restart lists the same examples.
    reopened = Daemon(load_config(config_path), realtime=False)
    assert reopened.examples is not None and reopened.examples.store.examples() == metas


def test_a_device_without_examples_refuses_the_commands(video: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, free_port(), video)
    config_path.write_text(config_path.read_text() + "\n[examples]\nenabled = false\n")
    daemon = Daemon(load_config(config_path), realtime=False)
    assert daemon.examples is None
    with pytest.raises(CommandError, match="enabled = false"):
        daemon.keep_example("desk", None, None)
    assert not (tmp_path / "state" / "examples").exists()


def test_collect_imports_no_tensorflow() -> None:
    code = (
        "import sys, training.collect, device.cli; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)

