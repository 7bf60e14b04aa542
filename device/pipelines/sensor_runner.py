"""A sensor-anomaly pipeline as the daemon drives it (device/record_worker.py).

``SensorAnomalyPipeline`` windows the readings and debounces anomalous stretches into
start/update/end transitions; this adapter turns those into event drafts carrying the
``sensor`` window (series, window times, threshold) and keeps the counts the stats topic
shows.
"""

from __future__ import annotations

from collections.abc import Sequence

from device.bundle.reader import Bundle
from device.config import RuntimeSection
from device.latency import LatencyWindow
from device.mqtt.payloads import PipelineState
from device.pipelines.loaded import load_model
from device.pipelines.sensor_anomaly import LABEL, SensorAnomalyPipeline, SensorTransition
from device.record_worker import EventDraft
from device.sensors.config import SensorAnomalyPipelineConfig
from device.sensors.reading import Reading


class SensorAnomalyRunner:
    """Implements device.record_worker.RecordPipeline for sensor-anomaly models."""

    def __init__(self, pipeline: SensorAnomalyPipeline, state: PipelineState) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.source = pipeline.config.source
        self.model = state.model
        self.state = state
        self.latency = LatencyWindow()
        self.inferences = 0
        self.gated = 0  # every line / reading is scored
        self.reportable: tuple[str, ...] = (LABEL,)

    def handle(self, records: Sequence[Reading]) -> list[EventDraft]:
        transitions = self.pipeline.process(records)
        self.inferences += len(self.pipeline.last_results)
        return [draft(t) for t in transitions]

    def flush(self, now: float) -> list[EventDraft]:
        return [draft(t) for t in self.pipeline.flush(now)]


def draft(transition: SensorTransition) -> EventDraft:
    return EventDraft(
        event_id=transition.event_id,
        type=transition.type,
        label=transition.label,
        score=transition.score,
        top_score=transition.top_score,
        captured_at=transition.captured_at,
        duration_s=transition.duration_s,
        sensor=transition.sensor_window(),
    )


def build_sensor_runner(
    name: str, config: SensorAnomalyPipelineConfig, bundle: Bundle, runtime_cfg: RuntimeSection
) -> SensorAnomalyRunner:
    """Load and smoke-test the bundle, then the pipeline over it."""
    loaded = load_model(name, config.source, config.task, bundle, runtime_cfg)
    pipeline = SensorAnomalyPipeline(name, config, bundle, loaded.runtime)
    return SensorAnomalyRunner(pipeline, loaded.state)
