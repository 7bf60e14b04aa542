"""A keyword (audio-classification) pipeline as the daemon drives it
(device/record_worker.py).

``KeywordPipeline`` turns chunks of audio into one detection per spoken keyword; this
adapter makes each an ``instant`` event draft carrying the audio window, and exposes the
thresholds so that the ``set_threshold`` command and Home Assistant see its labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from device.audio.config import KeywordPipelineConfig
from device.audio.stream import AudioChunk
from device.audio.wire import audio_window
from device.bundle.reader import Bundle
from device.config import RuntimeSection
from device.latency import LatencyWindow
from device.mqtt.payloads import PipelineState
from device.pipelines.keyword import KeywordDetection, KeywordPipeline
from device.pipelines.loaded import load_model
from device.record_worker import EventDraft


class KeywordRunner:
    """Implements device.record_worker.RecordPipeline for audio-classification models."""

    def __init__(self, pipeline: KeywordPipeline, state: PipelineState) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.source = pipeline.config.source
        self.model = state.model
        self.state = state
        self.latency = LatencyWindow()
        #: The rate the source must deliver (the model's).
        self.sample_rate = pipeline.spec.sample_rate

    @property
    def inferences(self) -> int:
        return self.pipeline.stats().inferences

    @property
    def gated(self) -> int:
        return self.pipeline.stats().gated

    @property
    def labels(self) -> tuple[str, ...]:
        return self.pipeline.labels

    @property
    def reportable(self) -> tuple[str, ...]:
        return self.pipeline.reportable

    @property
    def thresholds(self) -> dict[str, float]:
        return self.pipeline.thresholds

    def set_threshold(self, label: str, value: float) -> None:
        self.pipeline.set_threshold(label, value)

    def handle(self, records: Sequence[AudioChunk]) -> list[EventDraft]:
        drafts: list[EventDraft] = []
        for chunk in records:
            drafts += [draft(d) for d in self.pipeline.process(chunk)]
        return drafts

    def flush(self, now: float) -> list[EventDraft]:
        del now  # a held detection ends at its own window, not at the flush
        return [draft(d) for d in self.pipeline.flush()]


def draft(detection: KeywordDetection) -> EventDraft:
    window = audio_window(detection)
    return EventDraft(
        event_id=detection.event_id,
        type="instant",
        label=detection.label,
        score=detection.score,
        top_score=detection.peak_score,
        captured_at=detection.ended_at,
        duration_s=max(0.0, window.speech_end - window.speech_start),
        audio=window,
    )


def build_keyword_runner(
    name: str, config: KeywordPipelineConfig, bundle: Bundle, runtime_cfg: RuntimeSection
) -> KeywordRunner:
    """Load and smoke-test the bundle, then the pipeline over it."""
    loaded = load_model(name, config.source, config.task, bundle, runtime_cfg)
    return KeywordRunner(KeywordPipeline(name, config, bundle, loaded.runtime), loaded.state)
