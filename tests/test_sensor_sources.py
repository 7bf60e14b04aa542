"""Sensor sources on real files, a real broker and this machine's own /proc."""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from device.config import MqttSection
from device.logs.tail import TailOptions
from device.sensors.config import (
    NAME_PATTERN,
    HostMetricsSourceConfig,
    MqttSensorSourceConfig,
    SensorFileSourceConfig,
)
from device.sensors.factory import build_sensor_source
from device.sensors.filetail import SensorFileOptions, SensorFileSource
from device.sensors.host import HostMetricsOptions, HostMetricsSource
from device.sensors.mqtt_source import MqttSensorOptions, MqttSensorSource
from device.sensors.parse import CsvOptions, JsonOptions, parse_json_text, parse_timestamp
from device.sensors.reading import Reading, SensorSource
from tests.conftest import Broker, start_mosquitto
from tests.helpers_mqtt import Probe

FAST = TailOptions(start_at="beginning", poll_interval_s=0.02, checkpoint_interval_s=0.02)
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


def take(source: SensorSource, count: int, timeout_s: float = 10.0) -> list[Reading]:
    """Readings until ``count`` arrived (acknowledged as they come) or the deadline."""
    got: list[Reading] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        batch = source.get_batch(count - len(got), timeout=0.1)
        source.ack(batch)
        got.extend(batch)
    return got


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- parsing ---------------------------------------------------------------------------


def test_timestamps_numbers_and_iso_text() -> None:
    assert parse_timestamp("2024-01-01 00:00:00") == T0
    assert parse_timestamp("2024-01-01T00:00:00Z") == T0
    assert parse_timestamp("2024-01-01T01:00:00+01:00") == T0
    assert parse_timestamp("2014-04-10 07:15:00.000000") is not None
    assert parse_timestamp(T0) == T0
    assert parse_timestamp(str(int(T0 * 1000))) == T0  # milliseconds
    for bad in ("", "yesterday", "nan", True, None, [1]):
        assert parse_timestamp(bad) is None


def test_json_payloads_numbers_objects_and_bad_ones() -> None:
    options = JsonOptions(fields=("temp", "env.humidity"), timestamp_field="ts")
    text = '{"ts": "2024-01-01T00:00:00Z", "temp": 21.5, "env": {"humidity": "40"}}'
    record = parse_json_text(text, options)
    assert record is not None and record.timestamp == T0 and record.values == (21.5, 40.0)
    partial = parse_json_text('{"temp": 20, "env": {"humidity": "wet"}}', options)
    assert partial is not None and partial.missing == 1 and math.isnan(partial.values[1])
    single = JsonOptions(fields=("value",))
    bare = parse_json_text("17.25", single)
    assert bare is not None and bare.values == (17.25,) and bare.timestamp is None
    for bad in ("not json", "[1, 2]", '{"other": 1}', '{"value": true}', "NaN", '"text"',
                '{"value": 1, "timestamp": "soon"}'):  # fmt: skip
        assert parse_json_text(bad, single) is None, bad


# -- files -----------------------------------------------------------------------------

CSV_WITH_BAD_ROWS = """timestamp,temp,humidity
2024-01-01 00:00:00,20.5,40
2024-01-01 00:01:00,,41
2024-01-01 00:02:00,n/a,ERR
2024-01-01 00:03:00,21.0,not-a-number
garbage line without commas
yesterday,22.0,42

2024-01-01 00:04:00,21.5
2024-01-01 00:05:00,"21,75",43
"""


def test_csv_tail_counts_bad_rows_and_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "room.csv"
    path.write_text(CSV_WITH_BAD_ROWS)
    source = SensorFileSource("room", [path], None, tail=FAST)
    source.start()
    try:
        got = take(source, 4)
        assert [r.timestamp - T0 for r in got] == [0.0, 60.0, 180.0, 300.0]
        assert all(r.columns == ("temp", "humidity") for r in got)
        assert got[0].values == (20.5, 40.0)
        assert math.isnan(got[1].values[0]) and got[1].values[1] == 41.0
        assert got[2].values[0] == 21.0 and math.isnan(got[2].values[1])
        # A quoted field with the delimiter inside is one field (and not a number here).
        assert math.isnan(got[3].values[0]) and got[3].values[1] == 43.0
        assert all(r.series == "room" and r.source == "room" for r in got)
        # Rows appended while the source runs arrive too.
        with path.open("a") as handle:
            handle.write("2024-01-01 00:06:00,22.5,44\n")
        (late,) = take(source, 1)
        assert late.values == (22.5, 44.0)
        stats = source.stats()
        # all-missing row, no commas, bad timestamp, too few fields
        assert stats.bad_records == 4
        assert stats.missing_values == 3
        assert stats.headers == 1 and stats.readings == 5 and stats.status == "running"
    finally:
        source.stop()


def test_csv_tail_from_the_end_reads_the_header_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    state = tmp_path / "pump.state.json"
    rows = [f"2024-01-01 00:0{i}:00,{i}.0,{10 * i}.0" for i in range(3)]
    path.write_text("timestamp,pressure,flow\n" + "\n".join(rows) + "\n")
    options = TailOptions(start_at="end", poll_interval_s=0.02, checkpoint_interval_s=0.02)
    source = SensorFileSource("pump", [path], state, tail=options)
    source.start()
    try:
        assert wait_until(lambda: source.follower.stats().files_open == 1)
        with path.open("a") as handle:
            handle.write("2024-01-01 00:03:00,3.0,30.0\n")
        (reading,) = take(source, 1)
        # Started mid-file, the source took the column names from the file's first line.
        assert reading.columns == ("pressure", "flow") and reading.values == (3.0, 30.0)
    finally:
        source.stop()
    with path.open("a") as handle:
        handle.write("2024-01-01 00:04:00,4.0,40.0\n")
    again = SensorFileSource("pump", [path], state, tail=options)
    again.start()
    try:
        got = take(again, 1)
        assert [r.values for r in got] == [(4.0, 40.0)]
        assert again.get(timeout=0.3) is None  # nothing acknowledged is read twice
    finally:
        again.stop()


def test_headerless_csv_and_a_header_that_lacks_the_columns(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("1704067200,1.5\n1704067260,2.5\n")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("timestamp,other\n2024-01-01 00:00:00,1\n")
    source = SensorFileSource(
        "plain", [plain], None, SensorFileOptions(series_from="file"), tail=FAST
    )
    source.start()
    try:
        got = take(source, 2)
        assert [(r.series, r.columns, r.values) for r in got] == [
            ("plain", ("value",), (1.5,)), ("plain", ("value",), (2.5,))
        ]
    finally:
        source.stop()
    picky = SensorFileSource(
        "picky", [wrong], None, SensorFileOptions(csv=CsvOptions(columns=("temp",))), tail=FAST
    )
    picky.start()
    try:
        assert wait_until(lambda: picky.stats().bad_records == 2)
        assert "lacks the columns ['temp']" in picky.stats().detail
        assert picky.get(timeout=0.1) is None
    finally:
        picky.stop()


def test_jsonl_tail(tmp_path: Path) -> None:
    path = tmp_path / "plant.jsonl"
    lines = [
        json.dumps({"timestamp": "2024-01-01T00:00:00Z", "sensors": {"temp": 20, "rh": 50}}),
        "{not json",
        json.dumps({"timestamp": T0 + 60, "sensors": {"temp": "21.5"}}),
        json.dumps({"timestamp": "later", "sensors": {"temp": 1, "rh": 1}}),
        json.dumps({"sensors": {}}),
        "",
        json.dumps({"timestamp": (T0 + 120) * 1000, "sensors": {"temp": 22, "rh": 52}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    options = SensorFileOptions(
        format="jsonl", json=JsonOptions(fields=("sensors.temp", "sensors.rh"))
    )
    source = SensorFileSource("plant", [path], None, options, tail=FAST)
    source.start()
    try:
        got = take(source, 3)
        assert [r.timestamp - T0 for r in got] == [0.0, 60.0, 120.0]
        assert got[0].values == (20.0, 50.0) and got[0].columns == ("sensors.temp", "sensors.rh")
        assert got[1].values[0] == 21.5 and math.isnan(got[1].values[1])
        stats = source.stats()
        assert stats.bad_records == 3 and stats.missing_values == 1
    finally:
        source.stop()


# -- MQTT ------------------------------------------------------------------------------


def test_mqtt_source_numbers_objects_bad_payloads_and_a_broker_restart(
    tmp_path: Path, mosquitto: Broker
) -> None:
    options = MqttSensorOptions(
        topics=("sensors/+/climate",),
        json=JsonOptions(fields=("temperature",), timestamp_field="time"),
        qos=1,
    )
    config = MqttSection(host=mosquitto.host, port=mosquitto.port, reconnect_min_s=0.2,
                         reconnect_max_s=0.5)  # fmt: skip
    source = MqttSensorSource("climate", mosquitto.host, mosquitto.port, options, config=config)
    source.start()
    probe = Probe(mosquitto.host, mosquitto.port)
    try:
        assert source.wait_subscribed(10)
        probe.publish("sensors/kitchen/climate", "21.5")
        probe.publish("sensors/garage/climate", json.dumps({"temperature": 4.25, "time": T0}))
        for bad in (b"\xff\xfe garbage", b"warm", b'{"humidity": 40}', b"[]",
                    b'{"temperature": 1, "time": "noon"}', b"9" * 70_000):  # fmt: skip
            probe.publish("sensors/attic/climate", bad)
        probe.publish("sensors/kitchen/climate", json.dumps({"temperature": "22"}))
        got = take(source, 3)
        assert [(r.series, r.values) for r in got] == [
            ("sensors/kitchen/climate", (21.5,)),
            ("sensors/garage/climate", (4.25,)),
            ("sensors/kitchen/climate", (22.0,)),
        ]
        assert got[1].timestamp == T0 and abs(got[0].timestamp - time.time()) < 30
        assert all(r.columns == ("temperature",) for r in got)
        assert wait_until(lambda: source.stats().bad_records == 6)

        # The broker goes away and comes back on the same port: the source reconnects
        # and subscribes again by itself.
        mosquitto.process.kill()
        mosquitto.process.wait(5)
        assert wait_until(lambda: source.stats().status == "reconnecting")
        (tmp_path / "again").mkdir()
        restarted = start_mosquitto(tmp_path / "again", mosquitto.port)
        try:
            assert wait_until(lambda: source.stats().connects == 2, 15)
            assert source.wait_subscribed(10)
            probe2 = Probe(restarted.host, restarted.port)
            probe2.publish("sensors/kitchen/climate", "23")
            (after,) = take(source, 1)
            assert after.values == (23.0,) and source.stats().status == "running"
            probe2.close()
        finally:
            restarted.process.kill()
            restarted.process.wait(5)
    finally:
        probe.close()
        source.stop()
    assert source.stats().status == "stopped"


def test_mqtt_source_drops_and_counts_when_the_consumer_falls_behind(mosquitto: Broker) -> None:
    options = MqttSensorOptions(topics=("load/#",), queue_readings=5, qos=1)
    source = MqttSensorSource("load", mosquitto.host, mosquitto.port, options)
    source.start()
    probe = Probe(mosquitto.host, mosquitto.port)
    try:
        assert source.wait_subscribed(10)
        for value in range(20):
            probe.publish("load/cpu", str(value))
        assert wait_until(lambda: source.stats().readings + source.stats().dropped == 20)
        stats = source.stats()
        assert stats.readings == 5 and stats.dropped == 15 and stats.queue_depth == 5
        assert [r.values[0] for r in take(source, 5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    finally:
        probe.close()
        source.stop()


# -- the host --------------------------------------------------------------------------


def test_host_metrics_are_real_and_sampled_at_the_rate(tmp_path: Path) -> None:
    thermal = tmp_path / "temp"
    thermal.write_text("48250\n")
    source = HostMetricsSource(
        "host", HostMetricsOptions(interval_s=0.05, temperature_file=thermal)
    )
    source.start()
    try:
        got = take(source, 6, timeout_s=5)
    finally:
        source.stop()
    assert len(got) == 6
    first = got[-1]
    assert first.columns == ("cpu_temp_c", "load1", "load5", "load15", "cpu_percent",
                             "mem_used_pct", "disk_used_pct")  # fmt: skip
    assert first.value("cpu_temp_c") == 48.2 or first.value("cpu_temp_c") == 48.3
    assert first.value("load1") == pytest.approx(os.getloadavg()[0], abs=2.0)
    assert 0.0 < first.value("mem_used_pct") < 100.0
    assert 0.0 <= first.value("disk_used_pct") <= 100.0
    assert all(0.0 <= r.value("cpu_percent") <= 100.0 for r in got[1:])
    spacing = [b.timestamp - a.timestamp for a, b in itertools.pairwise(got)]
    assert all(0.02 < gap < 0.5 for gap in spacing), spacing
    assert sum(spacing) / len(spacing) == pytest.approx(0.05, abs=0.03)


def test_host_metric_the_machine_lacks_is_missing(tmp_path: Path) -> None:
    source = HostMetricsSource(
        "host",
        HostMetricsOptions(interval_s=0.02, metrics=("cpu_temp_c", "load1"),
                           temperature_file=tmp_path / "no-such-zone"),
    )  # fmt: skip
    source.start()
    try:
        got = take(source, 3, timeout_s=5)
        assert all(math.isnan(r.values[0]) and r.values[1] >= 0 for r in got)
        assert source.stats().missing_values >= 3
    finally:
        source.stop()


# -- config ----------------------------------------------------------------------------


def test_config_sections_build_their_sources(tmp_path: Path) -> None:
    file_cfg = SensorFileSourceConfig(paths=(str(tmp_path / "*.csv"),), columns=("temp",))
    source = build_sensor_source("f", file_cfg, state_dir=tmp_path, mqtt=None)
    assert isinstance(source, SensorFileSource)
    assert source.options.csv.columns == ("temp",)
    mqtt_cfg = MqttSensorSourceConfig(topics=("a/#",), fields=("v",))
    mqtt_source = build_sensor_source("m", mqtt_cfg, state_dir=None,
                                      mqtt=MqttSection(host="broker", port=1884))  # fmt: skip
    assert isinstance(mqtt_source, MqttSensorSource) and (mqtt_source.host, mqtt_source.port) == (
        "broker", 1884)  # fmt: skip
    host = build_sensor_source("h", HostMetricsSourceConfig(interval_s=2), state_dir=None,
                               mqtt=None)  # fmt: skip
    assert isinstance(host, HostMetricsSource) and host.options.interval_s == 2
    with pytest.raises(ValidationError):
        SensorFileSourceConfig.model_validate({"paths": ["x"], "colums": ["typo"]})
    with pytest.raises(ValidationError):
        HostMetricsSourceConfig.model_validate({"metrics": ["gpu_temp"]})
    with pytest.raises(ValidationError):
        MqttSensorSourceConfig.model_validate({"topics": []})


def test_the_config_module_can_be_imported_by_device_config() -> None:
    """device/config.py will import the sections: they must not import it back."""
    import subprocess
    import sys

    check = "import sys, device.sensors.config; print('device.config' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.stdout.strip() == "False"
    from device.config import NAME_PATTERN as DEVICE_NAME_PATTERN

    assert NAME_PATTERN == DEVICE_NAME_PATTERN
