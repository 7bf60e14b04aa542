"""A push killed at each step of the install: the device always boots a valid model.

The daemon runs as its own process with ``EDGEWATCH_FAULT_AT`` naming a step; it SIGKILLs
itself there (no cleanup, no flush), exactly as a power cut would. Then it starts again:
it must serve a model that verifies (the old one, or the new one once ``state.json`` was
renamed), say which on models/status, and leave no half-written file behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device.bundle.reader import read_bundle
from device.modelstore.faults import FAULT_ENV, FAULT_STEPS
from device.modelstore.store import ModelStore
from tests.conftest import Broker
from tests.helpers_modelstore import (
    Daemons,
    scene_video,
    variant,
    wait_events,
    wait_status,
    write_device_config,
)
from tests.helpers_mqtt import Probe

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scene_video(tmp_path_factory)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    with Daemons() as running:
        yield running


@pytest.mark.parametrize("step", FAULT_STEPS)
def test_killed_at_each_step_boots_with_a_valid_model(
    step: str,
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    newer = variant(int8_bundle, tmp_path / "v2.ewm", version="0.2.0")
    config = write_device_config(tmp_path, mosquitto.port, video, int8_bundle)
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    process = subprocess.Popen(
        [sys.executable, "-m", "device.cli", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), FAULT_ENV: step},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_status(probe, lambda s: bool(s.models) and s.models[0].active is not None, 60)
        # The whole bundle in one message: the protocol's other form.
        probe.publish("edgewatch/cam1/models/push", newer.read_bytes())
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert f"{FAULT_ENV}={step}" in process.stderr.read().decode()

    probe.clear()
    restarted_at = time.time()
    running = daemons.start(config)
    status = wait_status(probe, lambda s: s.at >= restarted_at and bool(s.models))
    expected = "0.2.0" if step == "after-rename" else "0.1.0"
    active = status.models[0].active
    assert active is not None and active.version == expected
    assert running.daemon.pipelines[0].model.version == expected
    wait_events(probe, 2)  # and it serves

    store = ModelStore(tmp_path / "state-cam1" / "models")
    state = store.read("tiny-shapes")
    assert state is not None and state.active_record is not None
    read_bundle(store.path_of("tiny-shapes", state.active_record))  # verifies
    leftovers = [
        p.name
        for p in (tmp_path / "state-cam1" / "models" / "tiny-shapes").iterdir()
        if ".incoming-" in p.name or ".tmp-" in p.name
    ]
    assert leftovers == []
    named = {v.file_name for v in state.versions}
    folder = store.path_of("tiny-shapes", state.active_record).parent
    on_disk = {p.name for p in folder.glob("*.ewm")}
    assert on_disk == named  # no orphan bundle from the interrupted install
    running.stop()
    probe.close()
