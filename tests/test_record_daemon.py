"""Record sources in the running daemon: a CSV of sensor readings followed like a log,
scored by a sensor-anomaly model, published as start/end events with their window, and
shown in the state and stats like a camera."""

from __future__ import annotations

import threading
import time
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


def test_a_log_file_becomes_anomaly_events_and_a_restart_resumes(
    mosquitto: Broker, tmp_path: Path
) -> None:
    from converters.convert import convert_model
    from training.synthetic.logs import write_log_folder
    from training.train_logs import LogTrainOptions, train_log_anomaly

    write_log_folder(tmp_path / "train", files=2, lines=2000, seed=1)
    options = LogTrainOptions(epochs=8, history=6, seed=0, progress=False, name="shop")
    train_log_anomaly(tmp_path / "train", tmp_path / "model", options)
    bundle = convert_model(tmp_path / "model", "int8", tmp_path / "shop.ewm", threads=1).out
    generated = write_log_folder(tmp_path / "live", files=1, lines=1500, seed=2, anomalies=12)
    (log_name, log), = generated.items()
    log_path = tmp_path / "live" / log_name
    config_path = tmp_path / "logs.toml"
    config_path.write_text(
        f"""
[device]
id = "pi1"
state_dir = "{tmp_path / "state"}"

[mqtt]
host = "127.0.0.1"
port = {mosquitto.port}

[stats]
interval_s = 1

[sources.app]
kind = "logfile"
paths = ["{log_path}"]
start_at = "beginning"
poll_interval_s = 0.05

[pipelines.app-watch]
task = "log-anomaly"
source = "app"
model = "{bundle}"
max_reports_per_s = 0
"""
    )

    def run_once(expected_lines: int) -> list[Event]:
        """Run the daemon until it has read ``expected_lines`` new lines and two more
        stats rounds have passed; the events it published."""
        daemon = Daemon(load_config(config_path))
        probe = Probe(mosquitto.host, mosquitto.port, f"{BASE}/#")
        runner = threading.Thread(target=daemon.run, daemon=True)
        runner.start()

        def stats_after(count: int) -> int:
            return sum(1 for m in probe.messages if m.topic == f"{BASE}/stats") - count

        try:
            assert probe.wait_for(
                lambda m: m.topic == f"{BASE}/stats"
                and Stats.model_validate_json(m.payload).sources[0].frames >= expected_lines,
                30,
            ), "the daemon never read the whole file"
            seen = stats_after(0)
            deadline = time.monotonic() + 10
            while stats_after(seen) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            daemon.stop()
            runner.join(15)
            probe.close()
        return [Event.model_validate_json(m.payload) for m in probe.messages
                if m.topic == f"{BASE}/events/app"]  # fmt: skip

    events = run_once(len(log.lines))
    assert events, "no anomaly reported from a log with injected anomalies"
    text = log_path.read_text().splitlines()
    for event in events:
        assert event.task == "log-anomaly" and event.type == "instant"
        assert event.log is not None and event.log.origin == str(log_path)
        assert event.log.line in text and event.log.reason != "normal"
    reported = {text.index(e.log.line) for e in events if e.log is not None}
    caught = reported & log.anomalous_lines
    assert len(caught) >= len(log.anomalous_lines) // 2, (caught, log.anomalous_lines)
    assert len(reported - log.anomalous_lines) <= len(log.anomalous_lines)

    # Restarted, the daemon resumes after the last scored line: nothing is reported twice.
    assert run_once(0) == []
