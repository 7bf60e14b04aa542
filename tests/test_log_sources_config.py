"""Log sources in the device config: parsed by kind, checked by check-config, and
refused where a pipeline cannot read them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from device.check import check_config
from device.config import CameraSource, load_config
from device.errors import ConfigError
from device.logs.config import JournalSourceConfig, LogFileSourceConfig, SyslogSourceConfig
from device.sensors.config import SensorFileSourceConfig

BASE = """
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


def test_sources_are_told_apart_by_kind_and_camera_is_the_default(tmp_path: Path) -> None:
    text = BASE + """
[sources.app]
kind = "logfile"
paths = ["logs/app*.log", "/var/log/auth.log"]
start_at = "beginning"

[sources.journal]
kind = "journal"
units = ["ssh.service"]

[sources.net]
kind = "syslog"
udp_port = 5514
tcp_port = 0

[sources.pump]
kind = "sensor-file"
paths = ["data/pump-*.csv"]
"""
    config = load_config(write(tmp_path, text))
    pump = config.sources["pump"]
    assert isinstance(pump, SensorFileSourceConfig)
    assert pump.paths == (str(tmp_path / "data/pump-*.csv"),)
    assert isinstance(config.sources["front"], CameraSource)  # no kind: a camera
    app = config.sources["app"]
    assert isinstance(app, LogFileSourceConfig)
    # Relative patterns resolve against the config's folder, like every other path.
    assert app.paths == (str(tmp_path / "logs/app*.log"), "/var/log/auth.log")
    assert isinstance(config.sources["journal"], JournalSourceConfig)
    assert isinstance(config.sources["net"], SyslogSourceConfig)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[sources.app]\nkind = "logfile"\n', "sources.app.paths: Field required"),
        ('[sources.app]\nkind = "logfile"\npaths = ["a.log"]\npoll = 1\n', "sources.app.poll"),
        ('[sources.app]\nkind = "printer"\n', "sources.app"),
        ('[sources.net]\nkind = "syslog"\nudp_port = 70000\n', "sources.net.udp_port"),
        ('[sources.net]\nkind = "syslog"\nudp_port = \"five\"\n', "sources.net.udp_port"),
    ],
)
def test_bad_log_source_tables_name_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, BASE + "\n" + extra))
    assert expected in str(caught.value)


def test_an_image_pipeline_cannot_read_a_log_source(tmp_path: Path) -> None:
    text = BASE.replace('source = "front"', 'source = "app"') + (
        '\n[sources.app]\nkind = "logfile"\npaths = ["a.log"]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert "reads camera sources, but source 'app' is a logfile source" in str(caught.value)


def test_check_config_reports_each_log_source(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "app.log").write_text("started\n")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        text = BASE + f"""
[sources.app]
kind = "logfile"
paths = ["logs/*.log"]

[sources.later]
kind = "logfile"
paths = ["nothing-yet/*.log"]

[sources.journal]
kind = "journal"
command = ["no-such-journalctl", "-f"]

[sources.net]
kind = "syslog"
udp_port = 0
tcp_port = {taken}
"""
        report = check_config(write(tmp_path, text), open_sources=True)
    lines = {line.subject: line for line in report.lines}
    assert lines["sources.app"].ok and "1 file(s) match" in lines["sources.app"].detail
    assert lines["sources.later"].ok and "no file matches yet" in lines["sources.later"].detail
    assert not lines["sources.journal"].ok
    assert "no-such-journalctl is not installed" in lines["sources.journal"].detail
    assert not lines["sources.net"].ok and f"tcp 127.0.0.1:{taken}" in lines["sources.net"].detail
