"""Everything edgewatch puts on the wire, as pydantic models.

Subscribers (Home Assistant templates, Node-RED flows, scripts) depend on these field
names; change them only with a new ``schema`` number.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

EVENT_SCHEMA = 1
STATE_SCHEMA = 1
STATS_SCHEMA = 1
COMMAND_RESULT_SCHEMA = 1
MODELS_STATUS_SCHEMA = 1

EventType = Literal["start", "update", "end", "instant"]


class LogDetails(BaseModel):
    """What a log-anomaly event is about: the line, its template and the model's surprise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Where the line came from: the file path, "journal", or "udp:HOST:PORT"/"tcp:...".
    origin: str
    #: The line (cut at 2,000 characters; ``truncated`` says so).
    line: str
    truncated: bool = False
    #: The template's id in the model's vocabulary (0: a template the model never saw).
    template_id: int
    template: str | None = None
    #: Why it is anomalous: "unknown-template", "sequence", "parameter", ...
    reason: str
    #: -ln(probability the model gave this template next), in nats; None when unscored.
    surprise: float | None = None
    #: Rank of the template among the model's guesses (1 = expected); None when unscored.
    rank: int | None = None


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode("utf-8")


class ModelRef(_Wire):
    name: str
    version: str
    sha256: str


#: Where the bundle a model runs came from: the config file's ``model``, a push, or the
#: store's `activate`/`rollback` (by command line or by the health watch).
ModelOrigin = Literal["config", "push", "activate", "rollback"]
PushState = Literal["receiving", "verifying", "installed", "refused", "expired"]
HistoryAction = Literal["installed", "activated", "refused", "rolled-back"]


class PushChunk(_Wire):
    """The JSON header of one chunk of a pushed bundle (see docs/models.md, "Protocol").

    A chunk on ``.../models/push`` is ``b"EWC1"``, the header's length as 4 bytes big
    endian, this header as UTF-8 JSON, then the chunk's bytes.
    """

    #: The first 32 hex digits of the whole bundle's sha256.
    transfer_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    #: Where the chunk's bytes go in the bundle.
    offset: int = Field(ge=0)
    #: The whole bundle's size in bytes.
    size: int = Field(ge=1)
    #: The whole bundle's sha256 (64 hex digits).
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PushProgress(_Wire):
    """The device's answer to a push, QoS 1 on ``.../models/push/progress``."""

    device: str
    transfer_id: str
    sha256: str = ""
    #: Chunks received so far, of ``count``.
    received: int = 0
    count: int = 0
    #: The first few chunk indices still missing (at most 64), in order.
    missing: tuple[int, ...] = ()
    state: PushState
    #: Why a chunk or the bundle was refused, or the transfer expired; "" otherwise.
    reason: str = ""
    at: float


class ActiveModel(_Wire):
    version: str
    #: The model file's sha256, as events carry it in ``model.sha256``.
    sha256: str
    #: The whole bundle's sha256 (what a push's ``sha256`` is).
    bundle_sha256: str
    origin: ModelOrigin
    #: Unix time since which this version is active.
    since: float
    #: "watching" during the health watch after a swap, "healthy" after it, "" when the
    #: version has not been swapped in live by this daemon (boot).
    health: Literal["", "watching", "healthy"] = ""


class ModelHistoryEntry(_Wire):
    at: float
    action: HistoryAction
    version: str
    sha256: str = ""
    origin: ModelOrigin | None = None
    reason: str = ""


class ModelStatusEntry(_Wire):
    name: str
    #: The pipelines that run this model.
    pipelines: tuple[str, ...]
    active: ActiveModel | None
    #: Most recent last; bounded by ``models.history``.
    history: tuple[ModelHistoryEntry, ...] = ()


class LastPush(_Wire):
    transfer_id: str
    #: The whole bundle's sha256.
    sha256: str
    ok: bool
    reason: str = ""
    model: str = ""
    version: str = ""
    at: float


class ModelsStatus(_Wire):
    """Retained on ``<prefix>/<device>/models/status``: published at start and on every
    change (push installed or refused, activate, rollback, health verdict)."""

    schema_version: int = Field(MODELS_STATUS_SCHEMA, alias="schema")
    device: str
    at: float
    models: tuple[ModelStatusEntry, ...]
    last_push: LastPush | None = None


class Box(_Wire):
    """Normalised box, 0..1 of the frame's width and height."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


class SensorWindow(_Wire):
    """What a sensor-anomaly event is about: a stretch of one series.

    For start and update, ``start``/``end`` are the times of the first and last sample
    of the window that caused the message, and the event's ``score`` is that window's
    anomaly score; for end, they span the whole anomalous stretch (first anomalous
    window's start to last anomalous window's end) and ``score`` is its highest.
    """

    series: str
    start: float
    end: float
    #: Samples in one window (the model's window length).
    samples: int
    #: Score at or above which a window is anomalous (same units as ``score``).
    threshold: float


class SnapshotRef(_Wire):
    """A JPEG of the event's best sighting, published just before the event (raw bytes,
    QoS 1, retained) on ``<prefix>/<device>/events/<source>/snapshot``."""

    topic: str
    bytes: int
    width: int
    height: int
    #: Capture time of the frame it shows.
    captured_at: float


class AudioWindow(_Wire):
    """Where in a source's audio a detection was heard (Unix times, seconds).

    A keyword detection is an ``instant`` event: its ``captured_at`` is the end of this
    window, ``score`` the smoothed score, ``top_score`` the best single window and
    ``duration_s`` the length of the sound inside the window.
    """

    #: The model window the keyword is in: its first and last sample.
    start: float
    end: float
    #: The sound inside that window (frames clearly above the window's noise floor).
    speech_start: float
    speech_end: float
    #: The window's start on the source's sample timeline (seconds since it started):
    #: exact even where the Unix times were re-anchored to the clock.
    offset_s: float
    #: Consecutive windows in which the label led (more: said longer or louder).
    windows: int


class Event(_Wire):
    """One detection event, QoS 1 on ``<prefix>/<device>/events/<source>``."""

    schema_version: int = Field(EVENT_SCHEMA, alias="schema")
    device: str
    source: str
    #: Per source, strictly increasing, persisted across restarts.
    seq: int
    #: Identifies the thing the event is about: start, updates and end share it.
    event_id: str
    type: EventType
    #: Unix time (s) at which the frame/window that produced this event was captured.
    captured_at: float
    #: Unix time (s) at which the event was committed to the outbox (or handed to the MQTT
    #: client when the outbox is off); an event sent after an outage keeps this time.
    published_at: float
    #: published_at - captured_at in milliseconds.
    latency_ms: float
    model: ModelRef
    task: str
    label: str
    #: The score of this frame (start/update) or the best score of the event (end).
    score: float
    top_score: float
    #: For start/update/end: seconds since the event started.
    duration_s: float = 0.0
    box: Box | None = None
    #: object-detection events: the configured zones the object's centre is in.
    zones: tuple[str, ...] | None = None
    #: object-detection events: the snapshot sent with this event, if one was.
    snapshot: SnapshotRef | None = None
    sensor: SensorWindow | None = None
    #: audio-classification events: the window the sound was heard in.
    audio: AudioWindow | None = None
    pipeline: str
    #: log-anomaly events: the line and why it is anomalous.
    log: LogDetails | None = None


SourceStatus = Literal["starting", "running", "reconnecting", "stopped", "failed"]


class SourceState(_Wire):
    name: str
    kind: str
    status: SourceStatus
    detail: str = ""
    #: False after a `disable` command: frames are read but not inferred.
    enabled: bool = True


class PipelineState(_Wire):
    name: str
    source: str
    task: str
    model: ModelRef
    runtime: str
    edgetpu: bool
    threads: int


class DegradedPart(_Wire):
    """A source or pipeline that failed and is being restarted (see device/supervision.py)."""

    #: "source:<name>" or "pipeline:<name>".
    part: str
    detail: str
    restarts: int


class State(_Wire):
    """Retained on ``<prefix>/<device>/state``: what the device is and runs now."""

    schema_version: int = Field(STATE_SCHEMA, alias="schema")
    device: str
    software_version: str
    started_at: float
    updated_at: float
    groups: tuple[str, ...] = ()
    sources: tuple[SourceState, ...]
    pipelines: tuple[PipelineState, ...]
    #: Parts that failed and are being restarted; empty when everything runs.
    degraded: tuple[DegradedPart, ...] = ()


class SourceStats(_Wire):
    name: str
    fps: float
    frames: int
    #: Dropped because inference fell behind (the oldest waiting frame goes).
    dropped: int
    #: Skipped by the fps cap before any decoding (gated, not lost).
    skipped: int = 0
    reconnects: int
    queue_depth: int
    enabled: bool = True


class CropCounts(_Wire):
    """A chained pipeline's crops since it was built: what its input found, and what
    became of each object."""

    #: Crops the second model ran on, and those whose label was reported.
    classified: int
    reported: int
    #: Objects of the labels it crops whose box was under ``min_size`` pixels.
    skipped_small: int
    #: Objects beyond ``max_objects`` in their frame.
    skipped_limit: int
    #: Objects of labels it does not crop (``input_labels``).
    other_labels: int


class PipelineStats(_Wire):
    name: str
    inferences: int
    inference_ms_p50: float
    inference_ms_p99: float
    events: int
    #: Frames (or audio windows) not inferred because nothing moved (or it was silent):
    #: gated, not lost. ``inferences`` counts the rest.
    gated: int = 0
    #: Chained pipelines only (None for the rest): what became of the input's objects.
    crops: CropCounts | None = None


class Stats(_Wire):
    """Published every stats interval on ``<prefix>/<device>/stats``."""

    schema_version: int = Field(STATS_SCHEMA, alias="schema")
    device: str
    at: float
    uptime_s: float
    sources: tuple[SourceStats, ...]
    pipelines: tuple[PipelineStats, ...]
    cpu_percent: float
    memory_rss_mb: float
    publish_queue: int
    #: Events in the durable outbox not yet acknowledged by the broker.
    spool_depth: int = 0
    #: Events the outbox discarded since start (full or too old; see [outbox]).
    spool_dropped: int = 0
    #: Age in seconds of the oldest spooled event; None when the spool is empty.
    spool_oldest_age_s: float | None = None
    #: SoC temperature where the kernel exposes it (a Pi does), else absent/null.
    temperature_c: float | None = None
    #: Hard examples stored for `edgewatch collect` (absent when [examples] is off).
    examples_stored: int | None = None
    #: Examples chosen but not kept since start (writer queue full, or write failed).
    examples_dropped: int | None = None


class CommandResult(_Wire):
    """The reply to a command, QoS 1 on ``<prefix>/<device>/cmd/<name>/result``."""

    schema_version: int = Field(COMMAND_RESULT_SCHEMA, alias="schema")
    device: str
    command: str
    #: Echoed from the command so a caller can match replies to requests.
    request_id: str | None = None
    ok: bool
    #: Why the command failed (invalid payload, unknown source, ...); None when ok.
    error: str | None = None
    at: float
    #: Command-specific result (see docs/home-assistant.md for each command).
    data: dict[str, JsonValue] = Field(default_factory=dict)
