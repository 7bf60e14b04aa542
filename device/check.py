"""`edgewatch check-config`: everything `run` would refuse, found without starting.

It validates the TOML, reads and verifies every bundle (signature when a key is set),
loads each model through the runtime with its smoke test, and, unless told not to,
opens each source once. It never connects to the broker: a broker that is down at boot
is normal, and the daemon waits for it.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

from device.audio.config import AudioSourceConfig, KeywordPipelineConfig
from device.bundle.reader import read_bundle
from device.bundle.signing import load_public_key
from device.config import CameraSource, ClassificationPipeline, DeviceConfig, Source, load_config
from device.errors import EdgewatchError
from device.logs.config import JournalSourceConfig, LogFileSourceConfig, SyslogSourceConfig
from device.pipelines.detection_config import DetectionPipelineConfig
from device.runtime import load_for_manifest
from device.sensors.config import (
    HostMetricsSourceConfig,
    MqttSensorSourceConfig,
    SensorFileSourceConfig,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckLine:
    subject: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class CheckReport:
    path: Path
    lines: tuple[CheckLine, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(line.ok for line in self.lines)

    def render(self) -> str:
        rows = [
            f"{'ok ' if line.ok else 'ERR'} {line.subject}: {line.detail}" for line in self.lines
        ]
        verdict = "config is valid" if self.ok else "config has problems"
        return "\n".join([f"{self.path}: {verdict}", *rows])


def check_config(path: Path, open_sources: bool = True) -> CheckReport:
    """Raises ConfigError for an invalid file; returns per-part results otherwise."""
    config = load_config(path)
    lines = [
        CheckLine(
            "config",
            True,
            f"device {config.device.id}, broker "
            f"{config.mqtt.host}:{config.mqtt.port}, prefix {config.mqtt.prefix}",
        )
    ]
    lines.extend(_check_models(config))
    if open_sources:
        lines.extend(_check_sources(config))
    return CheckReport(path=path, lines=tuple(lines))


def _check_models(config: DeviceConfig) -> list[CheckLine]:
    lines: list[CheckLine] = []
    try:
        key = load_public_key(config.runtime.public_key) if config.runtime.public_key else None
    except EdgewatchError as exc:
        return [CheckLine("runtime.public_key", False, str(exc))]
    max_bytes = int(config.runtime.max_model_mb * 1024 * 1024)
    for name, pipeline in config.pipelines.items():
        subject = f"pipelines.{name}"
        try:
            bundle = read_bundle(pipeline.model, public_key=key, max_model_bytes=max_bytes)
            bundle.require_task(pipeline.task)
            thresholds = (
                pipeline.thresholds
                if isinstance(
                    pipeline,
                    ClassificationPipeline | KeywordPipelineConfig | DetectionPipelineConfig,
                )
                else {}
            )
            unknown = sorted(set(thresholds) - set(bundle.manifest.labels))
            if unknown:
                raise EdgewatchError(
                    f"thresholds name labels the model does not have: {unknown}; "
                    f"its labels are {list(bundle.manifest.labels)}"
                )
            runtime = load_for_manifest(
                bundle.manifest, bundle.model_bytes, config.runtime.threads, config.runtime.edgetpu
            )
        except EdgewatchError as exc:
            lines.append(CheckLine(subject, False, str(exc)))
            continue
        manifest = bundle.manifest
        lines.append(
            CheckLine(
                subject,
                True,
                f"{manifest.model_ref} ({manifest.task}, {manifest.quantization}"
                f"{', signed' if bundle.signed else ''}) on {runtime.backend.name}, "
                "smoke test passed",
            )
        )
    return lines


def _describe_sensor_source(source: Source) -> str:
    """Sensor sources open lazily and retry by themselves; say what they will read."""
    if isinstance(source, SensorFileSourceConfig):
        matches = sum(len(glob.glob(pattern)) for pattern in source.paths)
        found = f"{matches} file(s) match" if matches else "no file matches yet"
        return f"{source.format} files {', '.join(source.paths)}: {found}"
    if isinstance(source, MqttSensorSourceConfig):
        return f"MQTT topics {', '.join(source.topics)}"
    if isinstance(source, HostMetricsSourceConfig):
        return f"host metrics {', '.join(source.metrics)} every {source.interval_s:g} s"
    return source.kind


def _check_audio_source(name: str, source: AudioSourceConfig) -> str:
    """Open it as the daemon would (a missing file or program, no PortAudio, an
    undecodable file are errors); a microphone not plugged in yet is retried by the
    daemon, so it is only reported. The rate is a placeholder: nothing is read."""
    from device.audio.inputs import import_portaudio, list_input_devices
    from device.audio.stream import AudioStream

    AudioStream(name, source, sample_rate=16_000).open_check()
    if source.device is None:
        return f"{source.describe()} opens"
    devices = list_input_devices(import_portaudio())
    return f"{source.describe()}; input devices here: {devices}"


def _check_sources(config: DeviceConfig) -> list[CheckLine]:
    from device.sources.camera import CameraStream

    lines: list[CheckLine] = []
    for name, source in config.sources.items():
        try:
            if isinstance(source, CameraSource):
                CameraStream(name, source).open_check()
                detail = f"{source.describe()} opens"
            elif isinstance(source, AudioSourceConfig):
                detail = _check_audio_source(name, source)
            elif isinstance(source, LogFileSourceConfig | JournalSourceConfig | SyslogSourceConfig):
                detail = source.check(name)
            else:
                detail = _describe_sensor_source(source)
        except EdgewatchError as exc:
            lines.append(CheckLine(f"sources.{name}", False, str(exc)))
            continue
        lines.append(CheckLine(f"sources.{name}", True, detail))
    return lines
