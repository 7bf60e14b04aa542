"""Rollback: automatic after a failed health watch, and by hand with `edgewatch models`.

The unhealthy model is real: the session's trained network with its last layer's weights
zeroed, so it answers the same thing whatever it sees (an output collapse), converted by
the real converter (so its golden pair passes: only live input shows the problem).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.cli import main
from tests.conftest import Broker
from tests.helpers_modelstore import (
    Daemons,
    assert_contiguous,
    events_in,
    scene_video,
    variant,
    wait_events,
    wait_status,
    write_device_config,
)
from tests.helpers_mqtt import Probe
from training.push import EXIT_OK, PushOptions, push_bundle

NAME = "tiny-shapes"
OPTIONS = PushOptions(timeout_s=30.0, progress=False)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scene_video(tmp_path_factory)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    with Daemons() as running:
        yield running


@pytest.fixture(scope="module")
def collapsed_bundle(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from converters.convert import convert_model

    work = tmp_path_factory.mktemp("collapsed")
    shutil.copytree(trained_model_dir, work / "model")
    model = keras.models.load_model(work / "model" / "model.keras")
    last = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    kernel, bias = last.get_weights()
    last.set_weights([np.zeros_like(kernel), np.array([0.0, 2.0, 0.5, 0.1], dtype=bias.dtype)])
    model.save(work / "model" / "model.keras")
    converted = convert_model(work / "model", "float32", work / "constant.ewm")
    return variant(converted.out, work / "constant-0.9.ewm", version="0.9.0")


def test_an_output_collapse_is_rolled_back_automatically(
    mosquitto: Broker,
    int8_bundle: Path,
    collapsed_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
) -> None:
    config = write_device_config(
        tmp_path, mosquitto.port, video, int8_bundle,
        models={"health_window_s": 3.0, "health_min_inferences": 20},
    )  # fmt: skip
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    running = daemons.start(config)
    wait_status(probe, lambda s: bool(s.models) and s.models[0].active is not None)

    outcome = push_bundle(
        collapsed_bundle.read_bytes(), mosquitto.host, mosquitto.port, device="cam1",
        options=OPTIONS,
    )  # fmt: skip
    assert outcome.exit_code == EXIT_OK, outcome  # verified and smoke-tested: installed
    watching = wait_status(probe, lambda s: s.models[0].active.version == "0.9.0")  # type: ignore[union-attr]
    assert watching.models[0].active.health == "watching"  # type: ignore[union-attr]

    rolled = wait_status(
        probe, lambda s: s.models[0].active.origin == "rollback", timeout=30  # type: ignore[union-attr]
    )
    active = rolled.models[0].active
    assert active is not None and active.origin == "rollback"
    last = rolled.models[0].history[-1]
    assert last.action == "rolled-back" and "output collapse" in last.reason
    assert running.daemon.pipelines[0].model.version == "0.1.0"
    state = running.daemon.store.read(NAME)
    assert state is not None and state.active_record is not None
    assert state.active_record.version == "0.1.0"

    count = len(events_in(probe))
    wait_events(probe, count + 3)  # the old model serves on
    running.stop()
    events = [e for e in events_in(probe) if e.pipeline == "shapes"]
    assert_contiguous(events)
    assert events[-1].model.version == "0.1.0"
    probe.close()


def test_models_rollback_and_activate_apply_to_a_running_daemon(
    mosquitto: Broker,
    int8_bundle: Path,
    video: Path,
    daemons: Daemons,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    newer = variant(int8_bundle, tmp_path / "v2.ewm", version="0.2.0")
    config = write_device_config(tmp_path, mosquitto.port, video, int8_bundle)
    probe = Probe(mosquitto.host, mosquitto.port, "edgewatch/cam1/#")
    running = daemons.start(config)
    wait_status(probe, lambda s: bool(s.models) and s.models[0].active is not None)
    assert push_bundle(newer.read_bytes(), mosquitto.host, mosquitto.port, device="cam1",
                       options=OPTIONS).exit_code == EXIT_OK  # fmt: skip
    capsys.readouterr()

    assert main(["models", "rollback", NAME, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "the running daemon" in out and "serves it" in out, out
    assert running.daemon.pipelines[0].model.version == "0.1.0"
    status = wait_status(probe, lambda s: s.models[0].active.origin == "rollback")  # type: ignore[union-attr]
    assert status.models[0].active.version == "0.1.0"  # type: ignore[union-attr]

    assert main(["models", "activate", NAME, "0.2.0", "--config", str(config)]) == 0
    assert "serves it" in capsys.readouterr().out
    assert running.daemon.pipelines[0].model.version == "0.2.0"
    wait_status(probe, lambda s: s.models[0].active.origin == "activate")  # type: ignore[union-attr]

    # A stored version that the pipeline cannot run (it verifies, but its input does not
    # fit) is refused live by the daemon, which keeps serving what it serves.
    store = running.daemon.store
    manifest = read_bundle(newer).manifest
    wide = manifest.preprocessing.model_copy(update={"width": 48, "height": 48})
    misfit = variant(newer, tmp_path / "misfit.ewm", version="0.3.0", preprocessing=wide)
    assert main(["models", "list", "--config", str(config)]) == 0
    capsys.readouterr()
    store.install(NAME, misfit.read_bytes(), read_bundle(misfit).manifest, "push")
    assert main(["models", "activate", NAME, "0.3.0", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "could not apply" in out and "still serves 0.2.0" in out, out
    assert "wrong input shape" in out
    assert running.daemon.pipelines[0].model.version == "0.2.0"
    # A damaged file is refused by the command itself, before any daemon sees it.
    path = store.path_of(NAME, store.resolve(NAME, "0.1.0"))
    path.write_bytes(path.read_bytes()[:-50])
    assert main(["models", "activate", NAME, "0.1.0", "--config", str(config)]) == 2
    assert "not a zip archive" in capsys.readouterr().err

    assert main(["models", "list", "--config", str(config)]) == 0
    assert "daemon running (pid" in capsys.readouterr().out
    count = len(events_in(probe))
    wait_events(probe, count + 2)
    running.stop()
    assert_contiguous([e for e in events_in(probe) if e.pipeline == "shapes"])
    assert read_bundle(newer).manifest.version == "0.2.0"
    probe.close()
