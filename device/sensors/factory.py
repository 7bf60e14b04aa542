"""Building a sensor source from its config section (device/sensors/config.py)."""

from __future__ import annotations

from pathlib import Path

from device.config import MqttSection
from device.sensors.config import (
    MqttSensorSourceConfig,
    SensorFileSourceConfig,
    SensorSourceConfig,
)
from device.sensors.filetail import SensorFileSource
from device.sensors.host import HostMetricsSource
from device.sensors.mqtt_source import MqttSensorSource
from device.sensors.reading import SensorSource


def build_sensor_source(
    name: str,
    config: SensorSourceConfig,
    *,
    state_dir: Path | None,
    mqtt: MqttSection | None,
) -> SensorSource:
    """The source a section describes. File positions go to
    ``<state_dir>/sensor-<name>.tail.json`` (None: not saved); an MQTT source uses
    ``mqtt`` for its broker, TLS and credentials unless the section names a broker."""
    if isinstance(config, SensorFileSourceConfig):
        state = state_dir / f"sensor-{name}.tail.json" if state_dir is not None else None
        return SensorFileSource(
            name, config.paths, state, config.options(), tail=config.tail_options()
        )
    if isinstance(config, MqttSensorSourceConfig):
        host = config.host or (mqtt.host if mqtt is not None else "localhost")
        port = config.port or (mqtt.port if mqtt is not None else 1883)
        return MqttSensorSource(name, host, port, config.options(), config=mqtt)
    return HostMetricsSource(name, config.options())
