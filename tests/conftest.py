"""Shared fixtures: a real mosquitto broker on a free port, temporary state folders."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.helpers_sensors import Trained


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    config_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def start_mosquitto(tmp: Path, port: int | None = None) -> Broker:
    """A stock mosquitto (default limits) listening on loopback only."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed; `make test` installs it with apt-get")
    port = port or free_port()
    config = tmp / f"mosquitto-{port}.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        process.kill()
        raise
    return Broker("127.0.0.1", port, process, config)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    broker = start_mosquitto(tmp_path)
    try:
        yield broker
    finally:
        broker.process.terminate()
        try:
            broker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            broker.process.kill()


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained shapes model for the whole session (training takes seconds)."""
    from tests.helpers_models import make_trained_model_dir

    return make_trained_model_dir(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def int8_bundle(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model converted to int8, the level a Pi runs."""
    from converters.convert import convert_model

    out = tmp_path_factory.mktemp("bundles") / "shapes-int8.ewm"
    convert_model(trained_model_dir, "int8", out)
    return out


@pytest.fixture(scope="session")
def sensor_model(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A sensor-anomaly model (generated pump signal) and its int8 bundle."""
    from tests.helpers_sensors import train_sensor_model

    return train_sensor_model(tmp_path_factory.mktemp("sensor-model"))


@pytest.fixture(scope="session")
def keyword_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny keyword model (yes, stop, left, _unknown_, _silence_) trained on espeak-ng
    speech and generated noise; the folder it was trained on is its parent's ``data``."""
    from tests.helpers_audio import make_keyword_model_dir
    from training.synthetic.speech import espeak_available

    if not espeak_available():
        pytest.fail("espeak-ng is not installed; `make test` installs it with apt-get")
    return make_keyword_model_dir(tmp_path_factory.mktemp("keywords"))


@pytest.fixture(scope="session")
def keyword_bundle(keyword_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The keyword model converted to int8."""
    from converters.convert import convert_model

    out = tmp_path_factory.mktemp("audio-bundles") / "keywords-int8.ewm"
    convert_model(keyword_model_dir, "int8", out)
    return out


@pytest.fixture(scope="session")
def shape_crop_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 classifier of shape crops (tests/helpers_crops.py), for chained pipelines."""
    from tests.helpers_crops import make_shape_crop_bundle

    return make_shape_crop_bundle(tmp_path_factory.mktemp("crop-model"))


@pytest.fixture(scope="session")
def detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny shapes detector (tests/helpers_detection.py) converted to int8."""
    from converters.convert import convert_model
    from tests.helpers_detection import synthetic_detector

    found = synthetic_detector(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "shapes-detector" / "shapes-detector-int8.ewm"
    if not out.is_file():
        convert_model(found.model_dir, "int8", out)
    return out
