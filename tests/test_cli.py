"""The console script: one-line errors, exit codes, and the commands that need no broker."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from converters.bundle_writer import write_bundle
from device.bundle.reader import read_bundle
from device.cli import main
from device.config import load_config
from tests.conftest import Broker

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def config_for(tmp_path: Path, bundle: Path, video: str = "clip.mp4", extra: str = "") -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f"""
[device]
id = "cli-test"
state_dir = "state"

[sources.front]
file = "{video}"

[pipelines.shapes]
source = "front"
model = "{bundle}"
{extra}
"""
    )
    return path


def test_check_config_accepts_a_good_config(
    tmp_path: Path, int8_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_for(tmp_path, int8_bundle)
    assert main(["check-config", str(path), "--no-sources"]) == 0
    out = capsys.readouterr().out
    assert "config is valid" in out
    assert "smoke test passed" in out


def test_check_config_reports_a_missing_video(
    tmp_path: Path, int8_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_for(tmp_path, int8_bundle, video="missing.mp4")
    assert main(["check-config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "ERR sources.front" in out and "missing.mp4" in out


def test_unknown_key_is_one_line_naming_file_and_key(tmp_path: Path, int8_bundle: Path) -> None:
    path = config_for(tmp_path, int8_bundle, extra="treshold = 0.5")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "pipelines.shapes.treshold: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_threshold_for_a_label_the_model_lacks(
    tmp_path: Path, int8_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_for(tmp_path, int8_bundle, extra="thresholds = { unicorn = 0.5 }")
    assert main(["check-config", str(path), "--no-sources"]) == 1
    assert "unicorn" in capsys.readouterr().out


def test_bundle_of_the_wrong_task_is_refused(
    tmp_path: Path, int8_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = read_bundle(int8_bundle)
    other = bundle.manifest.model_copy(update={"task": "audio-classification"})
    wrong = tmp_path / "audio.ewm"
    write_bundle(wrong, other, bundle.model_bytes)
    assert main(["check-config", str(config_for(tmp_path, wrong)), "--no-sources"]) == 1
    assert "needs a image-classification model" in capsys.readouterr().out


def test_run_refuses_a_tampered_bundle_before_starting(tmp_path: Path, int8_bundle: Path) -> None:
    with zipfile.ZipFile(int8_bundle) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    model = bytearray(members["model.tflite"])
    model[-10] ^= 0x55
    members["model.tflite"] = bytes(model)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    tampered = tmp_path / "tampered.ewm"
    tampered.write_bytes(buffer.getvalue())
    result = run_cli("run", "--config", str(config_for(tmp_path, tampered)))
    assert result.returncode == 2
    assert "the bundle was altered" in result.stderr


def test_keys_generate_writes_a_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", str(tmp_path / "keys")]) == 0
    assert (tmp_path / "keys" / "edgewatch-signing.key").stat().st_mode & 0o777 == 0o600
    assert "verification key" in capsys.readouterr().out
    assert main(["keys", "generate", str(tmp_path / "keys")]) == 2


def test_evaluate_json_through_the_cli(
    trained_model_dir: Path, int8_bundle: Path, tmp_path: Path
) -> None:
    from tests.helpers_models import write_image_folder

    write_image_folder(tmp_path / "data", per_class=5, size=32, seed=5)
    result = run_cli("evaluate", str(int8_bundle), str(tmp_path / "data"), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["samples"] == 20
    assert 0.0 <= document["accuracy"] <= 1.0


def test_an_unknown_task_lists_the_tasks(tmp_path: Path) -> None:
    result = run_cli("train", "pose-estimation", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "invalid choice: 'pose-estimation'" in result.stderr
    assert "object-detection" in result.stderr and "audio-classification" in result.stderr


def test_detection_training_on_a_plain_folder_says_what_it_needs(tmp_path: Path) -> None:
    result = run_cli("train", "object-detection", str(tmp_path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "an object-detection folder holds images/" in result.stderr


def test_convert_all_levels_writes_bundles_and_a_parity_table(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shapes.ewm"
    result = run_cli("convert", str(trained_model_dir), "--quant", "all", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for level in ("float32", "float16", "dynamic", "int8", "edgetpu"):
        bundle = read_bundle(tmp_path / f"shapes-{level}.ewm")
        assert bundle.manifest.quantization == level
    table = (tmp_path / "shapes.parity.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "float32", "float16", "dynamic", "int8", "edgetpu",
    ]  # fmt: skip
    assert "edgetpu_compiler was not found" in result.stderr


def test_watch_json_streams_events_from_a_device_config(
    mosquitto: Broker, tmp_path: Path, int8_bundle: Path
) -> None:
    from device.mqtt.publisher import MqttPublisher
    from device.mqtt.topics import Topics
    from tests.test_mqtt_publisher import make_event

    config = config_for(tmp_path, int8_bundle).read_text()
    config += f'\n[mqtt]\nhost = "127.0.0.1"\nport = {mosquitto.port}\nprefix = "site-a"\n'
    (tmp_path / "device.toml").write_text(config)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "device.cli", "watch", "--config", str(tmp_path / "device.toml"),
         "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    publisher = MqttPublisher(
        load_config(tmp_path / "device.toml").mqtt, Topics("site-a", "cli-test")
    )
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        time.sleep(2.0)  # the watcher subscribes
        for seq in range(3):
            publisher.publish_event(make_event("cli-test", "front", seq))
        time.sleep(1.5)
    finally:
        publisher.stop()
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=15)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert [line["seq"] for line in lines] == [0, 1, 2], err
    assert {line["device"] for line in lines} == {"cli-test"}
    assert watcher.returncode in (0, 130)
