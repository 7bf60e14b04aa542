"""Device configuration: TOML validated by pydantic.

Unknown keys are errors (``extra="forbid"``): a typo in a threshold name must not
silently leave the default in force. Errors name the file, the key path and what was
expected. Secrets can come from the environment so the TOML can be world-readable.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from device.audio.config import AudioSourceConfig, KeywordPipelineConfig
from device.errors import ConfigError
from device.logs.config import (
    LOG_SOURCE_KINDS,
    JournalSourceConfig,
    LogFileSourceConfig,
    SyslogSourceConfig,
)
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.detection_config import DetectionPipelineConfig
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.runtime import EdgeTpuMode
from device.sensors.config import (
    HostMetricsSourceConfig,
    MqttSensorSourceConfig,
    SensorAnomalyPipelineConfig,
    SensorFileSourceConfig,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def hostname_id() -> str:
    """The host name, reduced to what a topic level and a config name allow."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", os.uname().nodename)[:64].strip("-")
    return name or "edgewatch"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSection(_Section):
    #: The device's id in every MQTT topic; defaults to the host name.
    id: Name = Field(default_factory=hostname_id)
    #: Where the daemon keeps what must survive restarts (event seq numbers).
    state_dir: Path = Path("/var/lib/edgewatch")
    groups: tuple[Name, ...] = ()


class TlsSection(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Skips host name verification; only for brokers with self-signed test certificates.
    insecure: bool = False


class MqttSection(_Section):
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    prefix: str = Field("edgewatch", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]*$")
    username: str | None = None
    #: Prefer password_env: the environment variable that holds the password.
    password: str | None = None
    password_env: str | None = "EDGEWATCH_MQTT_PASSWORD"
    keepalive_s: int = Field(30, ge=5, le=3600)
    #: MQTT 5 unless the broker lacks it: 3.1.1 clients cannot ask the broker for a
    #: large receive window, so a burst can overflow a stock mosquitto's queue for them.
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    tls: TlsSection | None = None
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    def resolved_password(self) -> str | None:
        if self.password_env and os.environ.get(self.password_env):
            return os.environ[self.password_env]
        return self.password


class RuntimeSection(_Section):
    threads: int = Field(2, ge=1, le=64)
    #: "auto": use the Edge TPU for bundles built for it, else CPU with one log line;
    #: "required": refuse to start without it; "off": never try.
    edgetpu: EdgeTpuMode = "auto"
    #: When set, only bundles signed by this Ed25519 key are loaded.
    public_key: Path | None = None
    max_model_mb: float = Field(64.0, gt=0)


class StatsSection(_Section):
    interval_s: float = Field(30.0, ge=1.0)
    #: A thermal-zone file in millidegrees Celsius (Linux); reported as temperature_c in
    #: stats when readable, left out when not (containers, most non-Pi machines).
    temperature_file: Path | None = Path("/sys/class/thermal/thermal_zone0/temp")


class HomeAssistantSection(_Section):
    """MQTT discovery: Home Assistant creates the device and its entities by itself."""

    enabled: bool = True
    #: Home Assistant's discovery prefix (its MQTT integration's setting).
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_/-]*$")


class PrometheusSection(_Section):
    """An optional scrape endpoint with the stats topic's figures (prometheus_client)."""

    #: None (the default): no endpoint.
    port: int | None = Field(None, ge=1, le=65535)
    #: Loopback by default: the endpoint has no authentication; "0.0.0.0" to scrape
    #: from the network.
    bind: str = "127.0.0.1"


class OutboxSection(_Section):
    """The durable event spool (SQLite, WAL) between the pipelines and the broker.

    Every event is committed to ``<state_dir>/outbox.sqlite`` before it is published and
    deleted when the broker acknowledges it (device/outbox.py says what survives what).
    The bounds exist because a Pi's SD card is small and an outage can last days; what
    happens when one is reached is a choice, not an accident, and every drop is counted
    in stats (``spool_dropped``).
    """

    enabled: bool = True
    #: Events kept at most; beyond it ``when_full`` decides which one goes.
    max_events: int = Field(100_000, ge=1)
    #: Topic and payload bytes kept at most (the file itself is somewhat larger).
    max_mb: float = Field(64.0, gt=0)
    #: Events older than this are discarded unsent (counted); 0 keeps them forever.
    max_age_s: float = Field(7 * 24 * 3600.0, ge=0)
    #: "drop-oldest": make room by discarding the oldest spooled event (recent events
    #: matter most to a live view); "drop-newest": keep history, refuse the new event.
    when_full: Literal["drop-oldest", "drop-newest"] = "drop-oldest"
    #: SQLite's synchronous level: "normal" survives a crash of the process (SIGKILL,
    #: OOM) but a power cut can take the last events; "full" fsyncs every event.
    synchronous: Literal["normal", "full"] = "normal"
    #: Events kept in memory while the database cannot be written (disk full, read-only,
    #: I/O errors); they are written as soon as it can be. 0: drop them at once.
    memory_events: int = Field(10_000, ge=0)


class ModelsSection(_Section):
    """The on-device model store, pushes over MQTT, hot swap and the health watch.

    See docs/models.md for what each step does and docs/configuration.md for the keys.
    """

    #: Accept bundles on the push topics (the device's own and its groups').
    accept_push: bool = True
    #: Versions kept per model in the store (the active one and the latest previous ones).
    keep_versions: int = Field(3, ge=1, le=100)
    #: History entries kept per model (state.json and the models/status topic).
    history: int = Field(20, ge=1, le=1000)
    #: Pushes reassembled at the same time; more are refused until one finishes.
    max_transfers: int = Field(2, ge=1, le=16)
    #: A push without a new chunk for this long is deleted.
    transfer_expire_s: float = Field(600.0, gt=0)
    #: At most one progress message per push this often (repeats and completion always).
    progress_interval_s: float = Field(0.5, ge=0.0)
    #: How often a running daemon looks for `edgewatch models activate/rollback` changes.
    store_poll_s: float = Field(1.0, gt=0.0, le=60.0)
    #: Longest wait for the inference thread to take a swapped pipeline.
    swap_timeout_s: float = Field(10.0, gt=0.0)
    #: Health watch after a swap: how long, and at least how many inferences.
    health_window_s: float = Field(30.0, ge=0.0)
    health_min_inferences: int = Field(20, ge=1)
    #: Unhealthy when the median inference time exceeds factor x the previous model's
    #: median + slack.
    health_latency_factor: float = Field(4.0, ge=1.0)
    health_latency_slack_ms: float = Field(5.0, ge=0.0)
    #: Inference errors tolerated during the watch (0: the first one rolls back).
    health_max_errors: int = Field(0, ge=0)


class ExamplesSection(_Section):
    """Hard examples kept for retraining and pulled by `edgewatch collect`.

    Kept in ``<device.state_dir>/examples/``; see docs/configuration.md and
    docs/retraining.md for what is kept and why.
    """

    enabled: bool = True
    #: Bounds of the store; the oldest examples go first.
    max_items: int = Field(500, ge=1, le=100_000)
    max_mb: float = Field(50.0, gt=0.0)
    #: One example's JPEG never exceeds this (quality, then size, are lowered to fit).
    max_item_kb: int = Field(256, ge=16, le=4096)
    #: Frames wider than this are scaled down before encoding.
    max_width: int = Field(640, ge=16, le=4096)
    jpeg_quality: int = Field(90, ge=10, le=95)
    #: Keep a frame whose top label is reportable and scores within this much below its
    #: threshold ("low-confidence"); 0 turns it off.
    low_confidence_margin: float = Field(0.15, ge=0.0, le=1.0)
    #: Keep a confident frame whose top label differs from the previous confident
    #: frame's, when that one is at most this many seconds older ("disputed"); 0: off.
    dispute_window_s: float = Field(2.0, ge=0.0)
    #: At most one automatically kept example per pipeline this often (`keep` is exempt).
    min_interval_s: float = Field(30.0, ge=0.0)
    #: Examples waiting for JPEG encoding and the disk; when full, new ones are dropped.
    queue_size: int = Field(4, ge=1, le=64)


class SupervisionSection(_Section):
    """Restarts of failed sources and hung pipelines."""

    #: An inference running longer than this is declared hung and its pipeline restarted.
    inference_deadline_s: float = Field(10.0, gt=0.0)
    #: Backoff between restarts of a failing source or pipeline.
    restart_min_s: float = Field(1.0, gt=0.0)
    restart_max_s: float = Field(60.0, gt=0.0)


class CameraSource(_Section):
    """An OpenCV capture: exactly one of device, file or url."""

    kind: Literal["camera"] = "camera"
    device: int | None = Field(None, ge=0)
    file: Path | None = None
    url: str | None = None
    #: For files: start again at the end instead of stopping.
    loop: bool = False
    #: Frame-rate cap; frames beyond it are skipped at capture, before any work is done.
    #: For files, also the pace at which frames are read (0 = as fast as possible).
    fps: float = Field(5.0, ge=0.0, le=120.0)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    #: Frames waiting for inference; when full the oldest is dropped (and counted).
    queue_size: int = Field(2, ge=1, le=64)

    @model_validator(mode="after")
    def _one_input(self) -> CameraSource:
        given = [k for k in ("device", "file", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a camera needs exactly one of device, file or url (got {given or 'none'})"
            )
        if self.url is not None and not re.match(r"^(rtsp|rtsps|http|https|rtmp)://", self.url):
            raise ValueError("url must start with rtsp://, rtsps://, http://, https:// or rtmp://")
        return self

    def describe(self) -> str:
        if self.device is not None:
            return f"camera device {self.device}"
        if self.file is not None:
            return f"file {self.file}"
        return f"stream {redact_url(self.url or '')}"


def _source_kind(value: object) -> str:
    """The union tag of a source table: its ``kind``, "camera" when absent (configs
    written before other kinds existed have none)."""
    if isinstance(value, dict):
        kind = value.get("kind", "camera")
        return kind if isinstance(kind, str) else "camera"
    return str(getattr(value, "kind", "camera"))


#: A ``[sources.NAME]`` table, keyed by ``kind`` (default "camera").
Source = Annotated[
    Annotated[CameraSource, Tag("camera")]
    | Annotated[LogFileSourceConfig, Tag("logfile")]
    | Annotated[JournalSourceConfig, Tag("journal")]
    | Annotated[SyslogSourceConfig, Tag("syslog")]
    | Annotated[SensorFileSourceConfig, Tag("sensor-file")]
    | Annotated[MqttSensorSourceConfig, Tag("sensor-mqtt")]
    | Annotated[HostMetricsSourceConfig, Tag("host-metrics")]
    | Annotated[AudioSourceConfig, Tag("audio")],
    Discriminator(_source_kind),
]
SENSOR_SOURCE_KINDS = ("sensor-file", "sensor-mqtt", "host-metrics")
SOURCE_KINDS = ("camera", *LOG_SOURCE_KINDS, *SENSOR_SOURCE_KINDS, "audio")


class EventSection(_Section):
    """Debounce: a thing in view is one event, not one a frame."""

    #: Consecutive frames at or above threshold before an event starts.
    min_frames: int = Field(2, ge=1)
    #: Seconds below threshold before the event ends.
    end_after_s: float = Field(2.0, ge=0.0)
    #: At most one update a this many seconds while an event lasts (0 = no updates).
    update_interval_s: float = Field(5.0, ge=0.0)


class ClassificationPipeline(_Section):
    task: Literal["image-classification"] = "image-classification"
    source: Name
    model: Path
    #: Overrides every threshold the bundle states (its default and per-label ones).
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    #: Per-label thresholds; override the bundle's.
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: Labels never reported (besides the bundle's background labels).
    ignore_labels: tuple[str, ...] = ()
    events: EventSection = Field(default_factory=EventSection)


def _pipeline_task(value: object) -> str:
    """The union tag of a pipeline table: its ``task``, image classification when absent;
    an image classifier with an ``input`` (another pipeline) instead of a ``source`` is
    a chained one."""
    if isinstance(value, dict):
        task = value.get("task", "image-classification")
        if task == "image-classification" and "input" in value:
            return "chained"
        return task if isinstance(task, str) else "image-classification"
    if isinstance(value, ChainedClassificationConfig):
        return "chained"
    return str(getattr(value, "task", "image-classification"))


#: A ``[pipelines.NAME]`` table, keyed by ``task`` (default "image-classification").
Pipeline = Annotated[
    Annotated[ClassificationPipeline, Tag("image-classification")]
    | Annotated[SensorAnomalyPipelineConfig, Tag("sensor-anomaly")]
    | Annotated[LogAnomalyPipelineConfig, Tag("log-anomaly")]
    | Annotated[KeywordPipelineConfig, Tag("audio-classification")]
    | Annotated[DetectionPipelineConfig, Tag("object-detection")]
    | Annotated[ChainedClassificationConfig, Tag("chained")],
    Discriminator(_pipeline_task),
]
PIPELINE_TASKS = (
    "image-classification", "sensor-anomaly", "log-anomaly", "audio-classification",
    "object-detection", "chained",
)  # fmt: skip
#: Pipelines that read frames from cameras (the rest read record sources).
FramePipelineConfig = ClassificationPipeline | DetectionPipelineConfig | ChainedClassificationConfig
#: The source kinds each pipeline task reads.
TASK_SOURCE_KINDS: dict[str, tuple[str, ...]] = {
    "image-classification": ("camera",),
    "sensor-anomaly": SENSOR_SOURCE_KINDS,
    "log-anomaly": LOG_SOURCE_KINDS,
    "audio-classification": ("audio",),
    "object-detection": ("camera",),
}


class DeviceConfig(_Section):
    device: DeviceSection = Field(default_factory=DeviceSection)
    mqtt: MqttSection = Field(default_factory=MqttSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    stats: StatsSection = Field(default_factory=StatsSection)
    homeassistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection)
    prometheus: PrometheusSection = Field(default_factory=PrometheusSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    models: ModelsSection = Field(default_factory=ModelsSection)
    examples: ExamplesSection = Field(default_factory=ExamplesSection)
    supervision: SupervisionSection = Field(default_factory=SupervisionSection)
    sources: dict[Name, Source] = Field(default_factory=dict)
    pipelines: dict[Name, Pipeline] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> DeviceConfig:
        for name, pipeline in list(self.pipelines.items()):
            if isinstance(pipeline, ChainedClassificationConfig):
                self.pipelines[name] = _chained_source(name, pipeline, self.pipelines)
        for name, pipeline in self.pipelines.items():
            if pipeline.source not in self.sources:
                raise ValueError(
                    f"pipelines.{name}.source is {pipeline.source!r}, which is not a "
                    f"configured source (have: {sorted(self.sources) or 'none'})"
                )
            kind = self.sources[pipeline.source].kind
            readable = TASK_SOURCE_KINDS[pipeline.task]
            if kind not in readable:
                raise ValueError(
                    f"pipelines.{name} is a {pipeline.task} pipeline, which reads "
                    f"{' or '.join(readable)} sources, but source {pipeline.source!r} is a "
                    f"{kind} source"
                )
        if not self.pipelines:
            raise ValueError("no pipelines configured; add at least one [pipelines.NAME]")
        return self


def _chained_source(
    name: str, pipeline: ChainedClassificationConfig, pipelines: dict[str, Pipeline]
) -> ChainedClassificationConfig:
    """The chained pipeline with its input's source filled in (checked: the input is an
    object-detection pipeline, and a ``source`` the user wrote agrees with it)."""
    upstream = pipelines.get(pipeline.input)
    if not isinstance(upstream, DetectionPipelineConfig):
        what = "not a configured pipeline" if upstream is None else f"a {upstream.task} pipeline"
        detectors = sorted(
            n for n, p in pipelines.items() if isinstance(p, DetectionPipelineConfig)
        )
        raise ValueError(
            f"pipelines.{name}.input is {pipeline.input!r}, which is {what}; a chained "
            f"pipeline classifies an object-detection pipeline's objects (have: "
            f"{detectors or 'none'})"
        )
    if pipeline.source and pipeline.source != upstream.source:
        raise ValueError(
            f"pipelines.{name}.source is {pipeline.source!r} but its input "
            f"{pipeline.input!r} reads {upstream.source!r}; leave source out"
        )
    return pipeline.model_copy(update={"source": upstream.source})


def redact_url(url: str) -> str:
    """Hide credentials in stream URLs before they reach logs or MQTT."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def load_config(path: Path) -> DeviceConfig:
    """Read and validate a config file; relative paths resolve against its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = DeviceConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from exc
    return _resolve_paths(config, path.resolve().parent)


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid config ({exc.error_count()} problem(s))"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see docs/configuration.md)"
        elif "input" in error and error["type"] not in ("missing",):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"  {location or '(top level)'}: {message}")
    return "\n".join(lines)


def _is_union_tag(part: object) -> bool:
    return part in (*SOURCE_KINDS, *PIPELINE_TASKS)


def _resolve_paths(config: DeviceConfig, base: Path) -> DeviceConfig:
    def resolve(value: Path | None) -> Path | None:
        if value is None or value.is_absolute():
            return value
        return base / value

    def resolve_source(source: Source) -> Source:
        if isinstance(source, CameraSource | AudioSourceConfig):
            return source.model_copy(update={"file": resolve(source.file)})
        if isinstance(source, LogFileSourceConfig | SensorFileSourceConfig):
            paths = tuple(str(resolve(Path(pattern))) for pattern in source.paths)
            return source.model_copy(update={"paths": paths})
        return source

    sources = {name: resolve_source(source) for name, source in config.sources.items()}
    pipelines = {
        name: pipeline.model_copy(update={"model": resolve(pipeline.model)})
        for name, pipeline in config.pipelines.items()
    }
    runtime = config.runtime.model_copy(update={"public_key": resolve(config.runtime.public_key)})
    device = config.device.model_copy(update={"state_dir": resolve(config.device.state_dir)})
    return config.model_copy(
        update={"sources": sources, "pipelines": pipelines, "runtime": runtime, "device": device}
    )
