"""Config errors name the file, the key and what was expected; secrets come from the env."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.config import load_config, redact_url
from device.errors import ConfigError

MINIMAL = """
[device]
id = "pi1"
state_dir = "state"

[sources.front]
file = "clip.mp4"

[pipelines.people]
source = "front"
model = "models/people.ewm"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_minimal_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.device.id == "pi1"
    assert config.sources["front"].file == tmp_path / "clip.mp4"
    assert config.pipelines["people"].model == tmp_path / "models" / "people.ewm"
    assert config.device.state_dir == tmp_path / "state"
    assert config.mqtt.port == 1883 and config.runtime.edgetpu == "auto"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "\n[mqtt]\nprot = 1884\n", "mqtt.prot: unknown key"),
        (MINIMAL.replace('file = "clip.mp4"', 'file = "clip.mp4"\nfsp = 3'), "sources.front.fsp"),
        (MINIMAL + "\n[mqtt]\nport = 99999\n", "mqtt.port: Input should be less than or equal"),
        (MINIMAL + "\n[runtime]\nthreads = 'two'\n", "runtime.threads"),
        (MINIMAL + '\n[runtime]\nedgetpu = "yes"\n', "runtime.edgetpu"),
        (MINIMAL.replace('source = "front"', 'source = "back"'), "'back', which is not a"),
        (MINIMAL.replace('file = "clip.mp4"', 'file = "a.mp4"\ndevice = 0'), "exactly one of"),
        (MINIMAL.replace('file = "clip.mp4"', 'url = "ftp://x"'), "url must start with"),
        (MINIMAL.replace('id = "pi1"', 'id = "pi/1"'), "device.id"),
        ("[device]\nid = \n", "not valid TOML"),
    ],
)
def test_invalid_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert expected in message


def test_config_without_pipelines_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no pipelines configured"):
        load_config(write(tmp_path, '[device]\nid = "x"\n'))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_password_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = MINIMAL + '\n[mqtt]\nusername = "pi1"\npassword_env = "MY_BROKER_PASSWORD"\n'
    config = load_config(write(tmp_path, text))
    assert config.mqtt.resolved_password() is None
    monkeypatch.setenv("MY_BROKER_PASSWORD", "s3cret")
    assert config.mqtt.resolved_password() == "s3cret"


def test_stream_credentials_are_redacted() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5/stream") == "rtsp://***@10.0.0.5/stream"
