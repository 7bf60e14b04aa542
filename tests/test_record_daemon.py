"""Record sources in the running daemon: a CSV of sensor readings followed like a log,
scored by a sensor-anomaly model, published as start/end events with their window, and
shown in the state and stats like a camera."""

from __future__ import annotations

import threading
from pathlib import Path

from device.config import load_config
from device.daemon import Daemon
from device.mqtt.payloads import Event, State, Stats
from tests.conftest import Broker
from tests.helpers_mqtt import Probe
from tests.helpers_sensors import Trained
from training.synthetic.signals import generate_series, spread_anomalies, write_series_csv

BASE = "edgewatch/pi1"


def _config(tmp_path: Path, port: int, csv: Path, bundle: Path) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(
        f"""
[device]
id = "pi1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {port}

[stats]
interval_s = 1

[sources.pump]
kind = "sensor-file"
paths = ["{csv}"]
start_at = "beginning"
poll_interval_s = 0.05

[pipelines.pump-watch]
task = "sensor-anomaly"
source = "pump"
model = "{bundle}"
"""
    )
    return path


def test_a_sensor_file_becomes_anomaly_events(
    mosquitto: Broker, sensor_model: Trained, tmp_path: Path
) -> None:
    series = generate_series(700, spread_anomalies(700, ["spike"], lead=450, spacing=1), seed=8)
    csv = write_series_csv(tmp_path / "pump.csv", series)
    config = load_config(_config(tmp_path, mosquitto.port, csv, sensor_model.bundle))
    daemon = Daemon(config)
    probe = Probe(mosquitto.host, mosquitto.port, f"{BASE}/#")
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        started = probe.wait_for(lambda m: m.topic == f"{BASE}/events/pump", 30)
        assert started is not None, "no anomaly event from the sensor file"
        ended = probe.wait_for(
            lambda m: m.topic == f"{BASE}/events/pump"
            and Event.model_validate_json(m.payload).type == "end",
            30,
        )
        assert ended is not None
        stats = probe.wait_for(
            lambda m: m.topic == f"{BASE}/stats"
            and Stats.model_validate_json(m.payload).sources[0].frames >= 700,
            20,
        )
        assert stats is not None, "the stats never counted every reading"
    finally:
        daemon.stop()
        runner.join(15)
        probe.close()
    events = [
        Event.model_validate_json(m.payload)
        for m in probe.messages
        if m.topic == f"{BASE}/events/pump"
    ]
    assert [e.type for e in events] == ["start", "end"]  # one spike, one event
    start = events[0]
    assert start.task == "sensor-anomaly" and start.pipeline == "pump-watch"
    assert start.sensor is not None and start.sensor.series == "pump"
    assert start.sensor.start <= float(series.timestamps[450]) <= events[1].sensor.end  # type: ignore[union-attr]
    assert start.score >= start.sensor.threshold
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 2))

    states = [State.model_validate_json(m.payload) for m in probe.messages
              if m.topic == f"{BASE}/state"]  # fmt: skip
    assert states[-1].sources[0].kind == "sensor-file"
    assert states[-1].pipelines[0].task == "sensor-anomaly"
    figures = Stats.model_validate_json(stats.payload)
    assert figures.pipelines[0].name == "pump-watch" and figures.pipelines[0].events >= 1
    assert not runner.is_alive()
