"""Config sections for sensor sources and the sensor-anomaly pipeline.

These are pydantic models in the style of ``device/config.py`` (frozen, unknown keys
refused) so that the daemon's config can take them into its ``Source`` and ``Pipeline``
unions, keyed by ``kind`` and ``task``; docs/sensors.md lists every key. So that
``device/config.py`` can import this module, nothing here imports ``device.config`` (or
anything that does) at module level; ``device/sensors/factory.py`` builds the sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.logs.tail import StartAt, TailOptions
from device.sensors.filetail import SensorFileOptions
from device.sensors.host import ALL_METRICS, HostMetricsOptions, Metric
from device.sensors.parse import CsvOptions, JsonOptions

if TYPE_CHECKING:
    from device.sensors.mqtt_source import MqttSensorOptions

#: The same rule as ``device.config.NAME_PATTERN`` (a test keeps them equal).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SensorFileSourceConfig(_Section):
    """CSV or JSON Lines files followed like ``tail -F`` (device/sensors/filetail.py)."""

    kind: Literal["sensor-file"] = "sensor-file"
    #: Glob patterns or paths.
    paths: tuple[str, ...] = Field(min_length=1)
    format: Literal["csv", "jsonl"] = "csv"
    #: CSV: field separator; the timestamp field (index or header name; None: no time,
    #: the time of reading is used); the value columns (None: all but the timestamp).
    delimiter: str = Field(",", min_length=1, max_length=1)
    timestamp_column: int | str | None = 0
    columns: tuple[str, ...] | None = None
    header: Literal["auto", "yes", "no"] = "auto"
    #: JSONL: dot paths of the values, and of the timestamp.
    fields: tuple[str, ...] = ("value",)
    timestamp_field: str | None = "timestamp"
    series_from: Literal["source", "file"] = "source"
    #: Without a saved position: "end" reads only new rows, "beginning" the whole file.
    start_at: StartAt = "end"
    poll_interval_s: float = Field(0.5, gt=0.0)
    queue_readings: int = Field(10_000, ge=1)

    def options(self) -> SensorFileOptions:
        return SensorFileOptions(
            format=self.format,
            csv=CsvOptions(
                delimiter=self.delimiter,
                timestamp_column=self.timestamp_column,
                columns=self.columns,
                header=self.header,
            ),
            json=JsonOptions(fields=self.fields, timestamp_field=self.timestamp_field),
            series_from=self.series_from,
            queue_readings=self.queue_readings,
        )

    def tail_options(self) -> TailOptions:
        return TailOptions(start_at=self.start_at, poll_interval_s=self.poll_interval_s)


class MqttSensorSourceConfig(_Section):
    """Readings published by other devices (device/sensors/mqtt_source.py)."""

    kind: Literal["sensor-mqtt"] = "sensor-mqtt"
    topics: tuple[str, ...] = Field(min_length=1)
    fields: tuple[str, ...] = ("value",)
    timestamp_field: str | None = "timestamp"
    qos: Literal[0, 1, 2] = 0
    series_from: Literal["topic", "source"] = "topic"
    #: Another broker than the daemon's own ([mqtt] host/port; its TLS and credentials
    #: are used for either).
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    max_payload_bytes: int = Field(65_536, ge=1)
    queue_readings: int = Field(10_000, ge=1)

    def options(self) -> MqttSensorOptions:
        # Imported here: the MQTT source needs device.config, which imports this module.
        from device.sensors.mqtt_source import MqttSensorOptions

        return MqttSensorOptions(
            topics=self.topics,
            json=JsonOptions(fields=self.fields, timestamp_field=self.timestamp_field),
            qos=self.qos,
            series_from=self.series_from,
            max_payload_bytes=self.max_payload_bytes,
            queue_readings=self.queue_readings,
        )


class HostMetricsSourceConfig(_Section):
    """This machine's temperature, load, CPU, memory and disk (device/sensors/host.py)."""

    kind: Literal["host-metrics"] = "host-metrics"
    interval_s: float = Field(5.0, gt=0.0)
    metrics: tuple[Metric, ...] = ALL_METRICS
    disk_path: Path = Path("/")
    temperature_file: Path | None = Path("/sys/class/thermal/thermal_zone0/temp")
    series: str | None = None
    queue_readings: int = Field(1_000, ge=1)

    def options(self) -> HostMetricsOptions:
        return HostMetricsOptions(
            interval_s=self.interval_s,
            metrics=self.metrics,
            disk_path=self.disk_path,
            temperature_file=self.temperature_file,
            series=self.series,
            queue_readings=self.queue_readings,
        )


SensorSourceConfig = SensorFileSourceConfig | MqttSensorSourceConfig | HostMetricsSourceConfig


class SensorAnomalyPipelineConfig(_Section):
    """A sensor-anomaly model over the series of one sensor source."""

    task: Literal["sensor-anomaly"] = "sensor-anomaly"
    source: Name
    model: Path
    #: Overrides the bundle's calibrated threshold (same units: the window's MSE).
    threshold: float | None = Field(None, gt=0.0)
    #: Model column → reading column, where the names differ (a univariate model takes
    #: a univariate series whatever its column is called).
    columns: dict[str, str] = Field(default_factory=dict)
    #: Only these series (fnmatch patterns); empty: every series of the source.
    series: tuple[str, ...] = ()
    #: Series tracked at once (each holds one window); the least recently seen goes.
    max_series: int = Field(1_000, ge=1)
    #: Consecutive anomalous windows before an event starts (a spike is in every window
    #: that holds it, so this filters blips of a window or two at the cost of
    #: ``min_windows - 1`` steps of delay).
    min_windows: int = Field(4, ge=1)
    #: Windows below the threshold before the event ends (None: two windows' length,
    #: ``2 * ceil(window / hop)``, so a spike crossing the window, and anomalies closer
    #: together than a window, are one event).
    end_after_windows: int | None = Field(None, ge=1)
    #: An update every this many anomalous windows while an event lasts (0: none).
    update_every_windows: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _columns(self) -> SensorAnomalyPipelineConfig:
        if any(not k or not v for k, v in self.columns.items()):
            raise ValueError("columns maps non-empty model column names to reading columns")
        return self
