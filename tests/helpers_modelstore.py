"""What the model-store tests share: bundle variants, a device config, a running daemon.

Variants are re-written from the session's real int8 bundle with the converter's own
bundle writer (another version string, another task, a lying preprocessing, a signature),
so every pushed bundle is a real TFLite model in a real .ewm.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from converters.bundle_writer import load_private_key, write_bundle
from device.bundle.reader import MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME, read_bundle
from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import Event, ModelsStatus, PushProgress
from tests.helpers_mqtt import Message, Probe
from training.synthetic.shapes import Appearance, write_shapes_video

SCRIPT = (
    Appearance("circle", 0.5, 2.5),
    Appearance("square", 3.0, 5.0),
    Appearance("triangle", 5.5, 7.5),
)


_VIDEOS: dict[int, Path] = {}


def scene_video(factory: pytest.TempPathFactory) -> Path:
    """8 s of shapes at 20 fps, 128x128: long enough to push during, cheap to decode.
    Written once per session (keyed by the session's temp factory)."""
    key = id(factory)
    if key not in _VIDEOS:
        path = factory.mktemp("scene") / "scene.mp4"
        write_shapes_video(path, seed=5, size=(128, 128), fps=20, script=SCRIPT, duration_s=8.0)
        _VIDEOS[key] = path
    return _VIDEOS[key]


def variant(
    src: Path,
    dst: Path,
    *,
    sign_key: Path | None = None,
    **updates: Any,
) -> Path:
    """``src`` re-written with manifest fields replaced (version, task, preprocessing...)
    and signed with ``sign_key`` when given."""
    bundle = read_bundle(src)
    manifest = bundle.manifest.model_copy(update=updates)
    key = load_private_key(sign_key) if sign_key is not None else None
    return write_bundle(dst, manifest, bundle.model_bytes, key)


def tampered(src: Path, dst: Path) -> Path:
    """The bundle with one byte of model.tflite changed and everything else kept (the
    manifest, and its signature if any, now describe another model)."""
    members: dict[str, bytes] = {}
    with zipfile.ZipFile(src) as archive:
        for name in archive.namelist():
            members[name] = archive.read(name)
    model = bytearray(members[MODEL_NAME])
    model[len(model) // 2] ^= 0xFF
    members[MODEL_NAME] = bytes(model)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in (MANIFEST_NAME, MODEL_NAME, SIGNATURE_NAME):
            if name in members:
                archive.writestr(name, members[name])
    dst.write_bytes(buffer.getvalue())
    return dst


def write_device_config(
    directory: Path,
    port: int,
    video: Path,
    model: Path,
    *,
    device_id: str = "cam1",
    groups: tuple[str, ...] = (),
    public_key: Path | None = None,
    loop: bool = True,
    fps: float = 20.0,
    models: dict[str, float] | None = None,
) -> Path:
    """A device config whose pipeline reports often: any non-background label at any
    score, updates every 0.2 s, so events flow steadily through a push."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{device_id}.toml"
    key_line = f'public_key = "{public_key}"' if public_key else ""
    group_list = ", ".join(f'"{g}"' for g in groups)
    model_keys = {
        "progress_interval_s": 0.2,
        "store_poll_s": 0.3,
        "health_window_s": 1.0,
        "health_min_inferences": 10,
        **(models or {}),
    }
    models_section = "\n".join(f"{key} = {value}" for key, value in model_keys.items())
    path.write_text(
        f"""
[device]
id = "{device_id}"
state_dir = "{directory / ("state-" + device_id)}"
groups = [{group_list}]

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[runtime]
threads = 1
{key_line}

[stats]
interval_s = 1

[homeassistant]
enabled = false

[models]
{models_section}

[sources.desk]
file = "{video}"
loop = {"true" if loop else "false"}
fps = {fps}
queue_size = 16

[pipelines.shapes]
source = "desk"
model = "{model}"
threshold = 0.0

[pipelines.shapes.events]
min_frames = 1
end_after_s = 0.3
update_interval_s = 0.2
"""
    )
    return path


@dataclass
class RunningDaemon:
    daemon: Daemon
    thread: threading.Thread

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "daemon did not stop"


class Daemons:
    """Starts daemons in-process (realtime: a paced camera-like file); stops them all on
    exit, whatever the test did."""

    def __init__(self) -> None:
        self.running: list[RunningDaemon] = []

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        for entry in self.running:
            if entry.thread.is_alive():
                entry.stop()

    def start(self, config_path: Path) -> RunningDaemon:
        daemon = Daemon(load_config(config_path), realtime=True, config_path=config_path)
        thread = threading.Thread(target=daemon.run, name="daemon-under-test")
        thread.start()
        entry = RunningDaemon(daemon, thread)
        self.running.append(entry)
        return entry


def status_of(message: Message) -> ModelsStatus:
    return ModelsStatus.model_validate_json(message.payload)


def wait_status(
    probe: Probe, predicate: Callable[[ModelsStatus], bool], timeout: float = 20.0
) -> ModelsStatus:
    found = probe.wait_for(
        lambda m: m.topic.endswith("/models/status") and predicate(status_of(m)), timeout
    )
    assert found is not None, "no models/status message matched in time"
    return status_of(found)


def events_in(probe: Probe) -> list[Event]:
    return [
        Event.model_validate_json(m.payload) for m in probe.messages if "/events/" in m.topic
    ]


def progress_in(probe: Probe) -> list[PushProgress]:
    return [
        PushProgress.model_validate_json(m.payload)
        for m in probe.messages
        if m.topic.endswith("/models/push/progress")
    ]


def wait_events(probe: Probe, count: int, timeout: float = 20.0) -> list[Event]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = events_in(probe)
        if len(events) >= count:
            return events
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} events within {timeout} s")


def assert_contiguous(events: list[Event]) -> None:
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat in seq: {seqs}"
