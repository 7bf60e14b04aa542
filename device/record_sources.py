"""The daemon's record sources (log files, journal, syslog) with their pipelines.

Kept apart from device/daemon.py, which owns the camera path: this class opens each
record source named in the config that a pipeline reads, builds its pipelines, runs one
scoring thread per source (device/record_worker.py), and answers the daemon's questions
for state, stats, supervision and Home Assistant in the daemon's own terms.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from device.audio.config import AudioSourceConfig
from device.audio.record_source import AudioRecordSource
from device.audio.stream import AudioSourceStats
from device.config import DeviceConfig, Source
from device.errors import ConfigError
from device.homeassistant import PipelineInfo
from device.logs.config import JournalSourceConfig, LogFileSourceConfig, SyslogSourceConfig
from device.logs.journal import JournalStats
from device.logs.syslog import SyslogStats
from device.logs.tail import TailStats
from device.mqtt.payloads import (
    PipelineState,
    PipelineStats,
    SourceState,
    SourceStats,
    SourceStatus,
)
from device.record_worker import RecordHost, RecordPipeline, RecordSource, RecordWorker
from device.sensors.config import (
    HostMetricsSourceConfig,
    MqttSensorSourceConfig,
    SensorFileSourceConfig,
)
from device.sensors.factory import build_sensor_source
from device.sensors.reading import SensorSourceStats

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5.0
LOG_SOURCE_TYPES = (LogFileSourceConfig, JournalSourceConfig, SyslogSourceConfig)
SENSOR_SOURCE_TYPES = (SensorFileSourceConfig, MqttSensorSourceConfig, HostMetricsSourceConfig)
RECORD_SOURCE_TYPES = (*LOG_SOURCE_TYPES, *SENSOR_SOURCE_TYPES, AudioSourceConfig)

#: Builds the pipeline ``name`` from its config table (the daemon's builder).
PipelineBuilder = Callable[[str], RecordPipeline]


@dataclass(frozen=True)
class SourceSnapshot:
    """A record source's counters in the daemon's terms."""

    records: int
    dropped: int
    restarts: int
    queue_depth: int
    status: SourceStatus
    detail: str


def snapshot(stats: object) -> SourceSnapshot:
    """Map each source's own stats onto the figures the state and stats topics carry."""
    if isinstance(stats, TailStats):
        return SourceSnapshot(stats.lines, 0, 0, stats.queue_depth, stats.status, "")
    if isinstance(stats, JournalStats):
        status: SourceStatus = "reconnecting" if stats.status == "restarting" else stats.status
        return SourceSnapshot(
            stats.lines, 0, stats.restarts, stats.queue_depth, status, stats.detail
        )
    if isinstance(stats, SensorSourceStats):
        return SourceSnapshot(
            stats.readings, stats.dropped, stats.connects, stats.queue_depth, stats.status,
            stats.detail,
        )  # fmt: skip
    if isinstance(stats, AudioSourceStats):
        return SourceSnapshot(
            stats.chunks, stats.dropped_chunks, stats.reconnects, stats.queue_depth,
            stats.status, stats.detail or stats.last_error,
        )  # fmt: skip
    if isinstance(stats, SyslogStats):
        received = stats.udp_messages + stats.tcp_messages
        return SourceSnapshot(received, stats.dropped, 0, stats.queue_depth, stats.status, "")
    raise TypeError(f"unknown record source stats {type(stats).__name__}")


def _one_sample_rate(source: str, pipelines: Sequence[RecordPipeline]) -> int:
    """The rate an audio source is opened at: its pipelines' models' (the stream
    resamples whatever the input delivers to it once, not once per pipeline)."""
    rates = {p.name: int(getattr(p, "sample_rate", 0)) for p in pipelines}
    if len(set(rates.values())) != 1 or 0 in rates.values():
        raise ConfigError(
            f"source {source}: its pipelines need different sample rates {rates}; give each "
            "rate its own [sources.NAME] (two sources may read the same device or file)"
        )
    return next(iter(rates.values()))


class _Rate:
    """Records per second over the last few seconds."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque()

    def per_second(self, total: int) -> float:
        now = time.monotonic()
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        first_time, first_total = self._samples[0]
        span = now - first_time
        return (total - first_total) / span if span > 0 else 0.0


class RecordSources:
    """Every record source of the config that a pipeline reads, with its worker."""

    def __init__(self, config: DeviceConfig, host: RecordHost, build: PipelineBuilder) -> None:
        self._host = host
        self.workers: dict[str, RecordWorker] = {}
        self._kinds: dict[str, str] = {}
        self._rates: dict[str, _Rate] = {}
        for name, source in config.sources.items():
            if not isinstance(source, RECORD_SOURCE_TYPES):
                continue
            users = [p for p, cfg in config.pipelines.items() if cfg.source == name]
            if not users:
                log.warning("source %s is configured but no pipeline uses it; not opened", name)
                continue
            factories = [partial(build, pipeline) for pipeline in users]
            pipelines = [factory() for factory in factories]
            opened: RecordSource
            if isinstance(source, LOG_SOURCE_TYPES):
                opened = source.open(name, config.device.state_dir)
            elif isinstance(source, AudioSourceConfig):
                opened = AudioRecordSource(name, source, _one_sample_rate(name, pipelines))
            else:
                opened = build_sensor_source(
                    name, source, state_dir=config.device.state_dir, mqtt=config.mqtt
                )
            self.workers[name] = RecordWorker(name, opened, pipelines, list(factories), host)
            self._kinds[name] = source.kind
            self._rates[name] = _Rate()

    @staticmethod
    def reads(source: Source) -> bool:
        return isinstance(source, RECORD_SOURCE_TYPES)

    @property
    def pipelines(self) -> list[RecordPipeline]:
        return [p for worker in self.workers.values() for p in worker.pipelines]

    def start(self) -> None:
        for worker in self.workers.values():
            worker.source.start()
            worker.start()

    def stop(self) -> None:
        """Stop scoring (flushing open events), then the sources (saving positions)."""
        for worker in self.workers.values():
            worker.join(timeout_s=5.0)
        for worker in self.workers.values():
            worker.source.stop()

    def all_ended(self) -> bool:
        return all(worker.ended and not worker.alive for worker in self.workers.values())

    # -- supervision ------------------------------------------------------------------

    def supervise(self, deadline_s: float) -> None:
        supervisor = self._host.supervisor
        for worker in self.workers.values():
            hung = worker.running
            if hung is not None and worker.clock.running_for() > deadline_s:
                part = f"pipeline:{worker.pipelines[hung].name}"
                supervisor.failed(part, f"scoring has not returned for {deadline_s:g} s")
                if supervisor.due(part) and self._rebuild(worker, hung, part):
                    worker.start()  # a new thread; the stuck one is abandoned
                continue
            if not worker.alive and not worker.ended:
                part = f"source:{worker.source_name}"
                if supervisor.due(part):
                    worker.start()
                    supervisor.restarted(part)
                continue
            for index in sorted(worker.down):
                part = f"pipeline:{worker.pipelines[index].name}"
                if supervisor.due(part):
                    self._rebuild(worker, index, part)

    def _rebuild(self, worker: RecordWorker, index: int, part: str) -> bool:
        supervisor = self._host.supervisor
        supervisor.restarted(part)
        try:
            worker.rebuild(index)
        except Exception as exc:  # noqa: BLE001 - reported and retried on the backoff
            supervisor.failed(part, f"rebuilding the pipeline failed: {exc}")
            return False
        return True

    # -- what the state and stats topics show ---------------------------------------------

    def source_states(self, enabled: Callable[[str], bool]) -> list[SourceState]:
        states = []
        for name, worker in self.workers.items():
            snap = snapshot(worker.source.stats())
            states.append(
                SourceState(
                    name=name,
                    kind=self._kinds[name],
                    status=snap.status,
                    detail=snap.detail,
                    enabled=enabled(name),
                )
            )
        return states

    def source_stats(self, enabled: Callable[[str], bool]) -> list[SourceStats]:
        figures = []
        for name, worker in self.workers.items():
            snap = snapshot(worker.source.stats())
            figures.append(
                SourceStats(
                    name=name,
                    fps=round(self._rates[name].per_second(worker.records), 2),
                    frames=snap.records,
                    dropped=snap.dropped,
                    reconnects=snap.restarts,
                    queue_depth=snap.queue_depth,
                    enabled=enabled(name),
                )
            )
        return figures

    def pipeline_states(self) -> list[PipelineState]:
        return [p.state for p in self.pipelines]

    def pipeline_stats(self, events: dict[str, int]) -> list[PipelineStats]:
        figures = []
        for pipeline in self.pipelines:
            latency = pipeline.latency.summary()
            figures.append(
                PipelineStats(
                    name=pipeline.name,
                    inferences=pipeline.inferences,
                    inference_ms_p50=round(latency.p50_ms, 4),
                    inference_ms_p99=round(latency.p99_ms, 4),
                    events=events.get(pipeline.name, 0),
                    gated=pipeline.gated,
                )
            )
        return figures

    def entity_infos(self) -> Sequence[PipelineInfo]:
        return [PipelineInfo(name=p.name, source=p.source, reportable=p.reportable)
                for p in self.pipelines]  # fmt: skip
