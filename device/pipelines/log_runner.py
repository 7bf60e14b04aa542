"""A log-anomaly pipeline as the daemon drives it (device/record_worker.py).

``LogAnomalyPipeline`` scores lines; this adapter turns the reportable anomalies of a
batch into event drafts (one ``instant`` event per anomalous line, label ``anomaly``)
carrying the line, its template and the model's surprise, and counts what the stats
topic shows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from device.bundle.reader import Bundle
from device.config import RuntimeSection
from device.latency import LatencyWindow
from device.logs.record import LogLine
from device.mqtt.payloads import LogDetails, PipelineState
from device.pipelines.loaded import load_model
from device.pipelines.log_anomaly import LogAnomalyPipeline, LogScore
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.record_worker import EventDraft

LABEL = "anomaly"
#: Longest line carried in an event; the rest is cut (``truncated`` says so).
MAX_EVENT_LINE = 2000


class LogAnomalyRunner:
    """Implements device.record_worker.RecordPipeline for log-anomaly models."""

    def __init__(self, pipeline: LogAnomalyPipeline, state: PipelineState) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.source = pipeline.config.source
        self.model = state.model
        self.state = state
        self.latency = LatencyWindow()
        self.inferences = 0
        self.gated = 0  # every line / reading is scored
        self.reportable: tuple[str, ...] = (LABEL,)

    def handle(self, records: Sequence[LogLine]) -> list[EventDraft]:
        scores = self.pipeline.process_batch(records)
        self.inferences += len(scores)
        return [draft(score) for score in scores if score.report]

    def flush(self, now: float) -> list[EventDraft]:
        del now  # anomalies are instant events: nothing stays open
        return []


def draft(score: LogScore) -> EventDraft:
    line = score.line
    text = line.text
    details = LogDetails(
        origin=line.origin,
        line=text[:MAX_EVENT_LINE],
        truncated=line.truncated or len(text) > MAX_EVENT_LINE,
        template_id=score.template_id,
        template=score.template,
        reason=score.reason,
        surprise=None if score.surprise is None else round(score.surprise, 4),
        rank=score.rank,
    )
    return EventDraft(
        event_id=uuid.uuid4().hex,
        type="instant",
        label=LABEL,
        score=score.score,
        top_score=score.score,
        captured_at=line.received_at,
        log=details,
    )


def build_log_runner(
    name: str, config: LogAnomalyPipelineConfig, bundle: Bundle, runtime_cfg: RuntimeSection
) -> LogAnomalyRunner:
    """Load and smoke-test the bundle, then the pipeline over it."""
    loaded = load_model(name, config.source, config.task, bundle, runtime_cfg)
    return LogAnomalyRunner(LogAnomalyPipeline(name, config, bundle, loaded.runtime), loaded.state)
