"""Keyword spotting on a stream: audio chunks in, one detection per spoken keyword out.

Audio arrives in chunks of any size (``AudioChunk`` from device/audio/stream.py). The
shared feature code turns it into frames; every ``hop_ms`` a window of the model's
length (one second for Speech Commands models) ends, and:

1. **Gate**: a window whose loudest frame is below ``gate_db`` dBFS is not inferred; it
   counts as silence (all-zero scores). A quiet room costs almost nothing.
2. **Inference** through the runtime (int8 quantization handled there), softmax when
   the bundle says its output holds logits.
3. **Smoothing**: the scores of the last ``smoothing_windows`` windows are averaged, so
   one odd window neither starts nor breaks a detection.
4. **Patience**: a label must lead the smoothed scores, at or above its threshold and
   not being a background label (``_silence_``, ``_unknown_``) or an ignored one, in
   ``patience`` consecutive windows.
5. **Location**: a word stays inside a sliding window for several hops (a 0.4 s word in
   a 1 s window: every window that ends 0.4 to 1 s after the word began), so the
   detection is held until the label stops leading (at most one window length) and then
   reported once, with the window at the score-weighted centre of that run: where the
   word is, not where it was first noticed. Reports therefore come up to one window
   length after the word.
6. **Cooldown**: after a label was reported it is not reported again for ``cooldown_s``
   of stream time (an echo, or a word said slowly, is one detection).

Times come from the stream's sample count, never from processing time, so a file read
faster than real time gives the same detections as the live microphone would. A chunk
flagged ``discontinuity`` (overrun, reconnect, dropped chunk) restarts windows and
smoothing, so no window glues together audio that was not contiguous.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from device.audio.config import KeywordPipelineConfig
from device.audio.features import FeatureExtractor, StreamingFeatures
from device.audio.stream import AudioChunk
from device.bundle.manifest import AudioPreprocessing, ClassificationDecoding
from device.bundle.reader import Bundle
from device.errors import BundleTaskError, ConfigError, ModelMismatchError, SourceError
from device.latency import LatencySummary, LatencyWindow
from device.runtime import ModelRuntime

log = logging.getLogger(__name__)

TASK = "audio-classification"
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
#: Frame energies are kept for this many window lengths (a held detection's window is
#: at most one window length old).
ENERGY_WINDOWS = 3
#: A window's noise floor is this percentile of its frame energies; frames this many dB
#: above it are sound (speech) when locating a keyword inside its window.
NOISE_FLOOR_PERCENTILE = 20.0
SPEECH_ABOVE_FLOOR_DB = 10.0


@dataclass(frozen=True)
class KeywordDetection:
    """One keyword heard once."""

    pipeline: str
    source: str
    event_id: str
    label: str
    #: The best smoothed score of the run that made the detection.
    score: float
    #: The best single-window score in that run.
    peak_score: float
    #: The window the keyword is in: seconds on the stream's sample timeline
    #: (``AudioChunk.start_sample / sample_rate``) of its first and last sample.
    window_start_s: float
    window_end_s: float
    #: The same window as Unix times (the source's timeline).
    started_at: float
    ended_at: float
    #: Where the sound is inside that window (stream seconds): frames clearly above the
    #: window's noise floor. The keyword's own extent when it is the only sound there.
    speech_start_s: float
    speech_end_s: float
    #: Stream time at which the detection was decided (the end of the last window seen).
    decided_s: float
    #: Windows in the run (consecutive windows in which the label led).
    windows: int


@dataclass(frozen=True)
class KeywordStats:
    """Counters for the stats message."""

    #: Windows completed (inferred + gated).
    windows: int
    inferences: int
    #: Windows skipped by the silence gate.
    gated: int
    detections: int
    #: Audio processed, in seconds.
    audio_s: float
    #: Processing time (features + inference + decisions) over audio time; 0.02 means
    #: a second of audio costs 20 ms of one core.
    real_time_factor: float
    feature_s: float
    inference_s: float
    #: Per inferred window (features of its hop excluded).
    latency: LatencySummary


class _Run:
    """Consecutive windows in which one label led the smoothed scores."""

    __slots__ = ("count", "ends", "first_end", "label", "peak", "reported", "score", "weights")

    def __init__(self, label: str) -> None:
        self.label = label
        self.count = 0
        self.score = 0.0
        self.peak = 0.0
        self.reported = False
        self.first_end = 0
        self.ends: list[int] = []
        self.weights: list[float] = []


class KeywordPipeline:
    """One keyword/sound classifier on one audio source; not thread-safe (one inference
    thread calls ``process``; ``stats`` may be read from another)."""

    #: Config keys a reload applies without reloading the model.
    LIVE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"threshold", "thresholds", "ignore_labels", "events"}
    )

    def __init__(
        self,
        name: str,
        config: KeywordPipelineConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
    ) -> None:
        bundle.require_task(TASK)
        manifest = bundle.manifest
        spec, decoding = manifest.preprocessing, manifest.decoding
        if not isinstance(spec, AudioPreprocessing) or not isinstance(
            decoding, ClassificationDecoding
        ):
            raise BundleTaskError(f"{manifest.model_ref} is not an audio classifier")
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = manifest
        self.runtime = runtime
        self.spec: AudioPreprocessing = spec
        self.labels: tuple[str, ...] = manifest.labels
        self._softmax = decoding.apply_softmax
        self._background = decoding.background_labels
        self._check_model()
        self.extractor = FeatureExtractor(spec)
        self._features = StreamingFeatures(self.extractor)
        self.window_frames = spec.frames
        self.hop_frames = self._hop_frames(config.events.hop_ms)
        self.thresholds: dict[str, float] = {}
        self.reportable: tuple[str, ...] = ()
        self._apply_config(config)
        coefficients = spec.coefficients
        self._history: FloatArray = np.zeros((0, coefficients), dtype=np.float32)
        # Frame energies (dBFS) of the last ENERGY_WINDOWS windows, for the gate and for
        # locating the speech inside a reported window; _energy[0] is frame _energy_first.
        self._energy: FloatArray = np.zeros(0, dtype=np.float32)
        self._energy_first = 0
        self._input: FloatArray = np.zeros((1, *spec.input_shape), dtype=np.float32)
        self._smoothing: deque[FloatArray] = deque(maxlen=config.events.smoothing_windows)
        self._zero_scores: FloatArray = np.zeros(len(self.labels), dtype=np.float32)
        self._run: _Run | None = None
        self._cooldown_until: dict[str, int] = {}
        # Sample of frame 0 of the current segment, and a (sample, Unix time) anchor.
        self._origin = 0
        self._anchor_sample = 0
        self._anchor_time = 0.0
        self._next_sample: int | None = None
        self.latency = LatencyWindow()
        self._windows = 0
        self._inferences = 0
        self._gated = 0
        self._detections = 0
        self._audio_samples = 0
        self._busy_s = 0.0
        self._feature_s = 0.0
        self._inference_s = 0.0
        self.last_scores: FloatArray | None = None
        log.info(
            "pipeline %s: %s on source %s, %d-frame windows every %d frames (%.0f ms), "
            "gate %s dBFS, reporting %s",
            name, manifest.model_ref, config.source, self.window_frames, self.hop_frames,
            config.events.hop_ms, config.events.gate_db, list(self.reportable),
        )  # fmt: skip

    # -- construction ---------------------------------------------------------------------

    def _check_model(self) -> None:
        inputs, outputs = self.runtime.inputs, self.runtime.outputs
        expected = (1, *self.spec.input_shape)
        if len(inputs) != 1 or tuple(inputs[0].shape) != expected:
            raise ModelMismatchError(
                f"{self.manifest.model_ref}: input is {[list(i.shape) for i in inputs]} but "
                f"its audio preprocessing makes {list(expected)}; rebuild the bundle"
            )
        if int(np.prod(outputs[0].shape)) != len(self.labels):
            raise ModelMismatchError(
                f"{self.manifest.model_ref}: output 0 has shape {list(outputs[0].shape)} "
                f"but the manifest lists {len(self.labels)} labels; rebuild the bundle"
            )

    def _hop_frames(self, hop_ms: float) -> int:
        frame_ms = 1000.0 * self.spec.hop_length / self.spec.sample_rate
        frames = hop_ms / frame_ms
        if frames < 1 or abs(frames - round(frames)) > 1e-6:
            raise ConfigError(
                f"pipelines.{self.name}.events.hop_ms is {hop_ms:g}, which is not a whole "
                f"multiple of model {self.manifest.model_ref}'s frame hop ({frame_ms:g} ms)"
            )
        return round(frames)

    def _apply_config(self, config: KeywordPipelineConfig) -> None:
        valid = ", ".join(self.labels)
        for key, names in (
            ("thresholds", tuple(config.thresholds)),
            ("ignore_labels", config.ignore_labels),
        ):
            for label in names:
                if label not in self.labels:
                    raise ConfigError(
                        f"pipelines.{self.name}.{key} names label {label!r}, which model "
                        f"{self.manifest.model_ref} does not have; its labels are: {valid}"
                    )
        thresholds = {}
        for label in self.labels:
            if label in config.thresholds:
                thresholds[label] = config.thresholds[label]
            elif config.threshold is not None:
                thresholds[label] = config.threshold
            else:
                thresholds[label] = self.manifest.thresholds.for_label(label)
        reportable = tuple(
            label
            for label in self.labels
            if label not in self._background and label not in config.ignore_labels
        )
        self._threshold_array = np.array([thresholds[x] for x in self.labels], dtype=np.float32)
        self._reportable_mask = np.array([x in reportable for x in self.labels], dtype=bool)
        self.thresholds = thresholds
        self.reportable = reportable

    def check_config(self, config: KeywordPipelineConfig) -> None:
        """ConfigError if ``reconfigure(config)`` would be refused; changes nothing."""
        self._hop_frames(config.events.hop_ms)
        missing = [x for x in (*config.thresholds, *config.ignore_labels) if x not in self.labels]
        if missing:
            raise ConfigError(
                f"pipelines.{self.name} names label(s) {missing} that model "
                f"{self.manifest.model_ref} lacks; its labels are: {', '.join(self.labels)}"
            )

    def reconfigure(self, config: KeywordPipelineConfig) -> None:
        """Apply new thresholds, ignored labels, smoothing, patience, cooldown and gate
        without reloading the model; ConfigError (nothing changed) for a label the model
        lacks or a hop that does not fit its frames."""
        hop_frames = self._hop_frames(config.events.hop_ms)
        self._apply_config(config)
        self.config = config
        if hop_frames != self.hop_frames or (
            self._smoothing.maxlen != config.events.smoothing_windows
        ):
            self.hop_frames = hop_frames
            self._smoothing = deque(maxlen=config.events.smoothing_windows)
            self._run = None

    def set_threshold(self, label: str, value: float) -> None:
        self.reconfigure(
            self.config.model_copy(update={"thresholds": {**self.config.thresholds, label: value}})
        )

    # -- per chunk --------------------------------------------------------------------------

    def process(self, chunk: AudioChunk) -> list[KeywordDetection]:
        """Feed one chunk; returns the detections it completes (usually none)."""
        started = time.perf_counter()
        samples = chunk.samples
        if samples.ndim != 1:
            raise SourceError(
                f"pipeline {self.name}: audio chunks must be mono, got shape {samples.shape}"
            )
        if chunk.sample_rate != self.spec.sample_rate:
            raise SourceError(
                f"pipeline {self.name}: source {chunk.source} delivers {chunk.sample_rate} Hz "
                f"but model {self.manifest.model_ref} needs {self.spec.sample_rate} Hz; open "
                "the source with the model's sample rate (AudioStream resamples)"
            )
        detections: list[KeywordDetection] = []
        if chunk.discontinuity or chunk.start_sample != self._next_sample:
            if self._next_sample is not None and not chunk.discontinuity:
                log.debug("pipeline %s: chunk at sample %d, expected %d; restarting",
                          self.name, chunk.start_sample, self._next_sample)  # fmt: skip
            detections += self._restart(chunk.start_sample)
        self._anchor_sample = chunk.start_sample
        self._anchor_time = chunk.timeline
        self._next_sample = chunk.start_sample + samples.shape[0]
        self._audio_samples += samples.shape[0]
        block = self._features.push(samples)
        self._feature_s += time.perf_counter() - started
        if len(block):
            detections += self._windows_of(block.first_frame, block.features, block.energy_db)
        self._busy_s += time.perf_counter() - started
        self._detections += len(detections)
        return detections

    def flush(self) -> list[KeywordDetection]:
        """Report a detection still being held (end of a file, shutdown, model swap)."""
        detections = self._finish_run()
        self._run = None
        self._detections += len(detections)
        return detections

    def _restart(self, start_sample: int) -> list[KeywordDetection]:
        detections = self._finish_run()
        self._run = None
        self._features.reset()
        self._history = self._history[:0]
        self._energy = self._energy[:0]
        self._energy_first = 0
        self._smoothing.clear()
        self._origin = start_sample
        return detections

    def _windows_of(
        self, first_frame: int, features: FloatArray, energy: FloatArray
    ) -> list[KeywordDetection]:
        history = np.concatenate([self._history, features]) if len(self._history) else features
        if len(self._energy) == 0:
            self._energy_first = first_frame
        self._energy = np.concatenate([self._energy, energy]) if len(self._energy) else energy
        base = first_frame - len(self._history)  # frame number of history[0]
        done = first_frame + len(features)
        width, hop = self.window_frames, self.hop_frames
        # Windows start at multiples of the hop; those that end within this block are due.
        earliest = max(0, first_frame - width + 1)
        start = -(-earliest // hop) * hop
        detections: list[KeywordDetection] = []
        while start + width <= done:
            rows = slice(start - base, start - base + width)
            loudest = float(self._energy_of(start, start + width).max())
            detections += self._window(start, history[rows], loudest)
            start += hop
        keep = width - 1
        self._history = np.array(history[-keep:]) if keep else history[:0]
        surplus = len(self._energy) - ENERGY_WINDOWS * width
        if surplus > 0:
            self._energy = np.array(self._energy[surplus:])
            self._energy_first += surplus
        return detections

    def _energy_of(self, first: int, end: int) -> FloatArray:
        """Energies of frames ``first`` to ``end`` (exclusive) that are still kept."""
        lo = max(0, first - self._energy_first)
        return self._energy[lo : max(lo, end - self._energy_first)]

    def _speech_span(self, start_sample: int, end_sample: int) -> tuple[int, int]:
        """Where the sound is inside a window: from the first to the last frame at least
        SPEECH_ABOVE_FLOOR_DB above the window's quieter frames (its noise floor). The
        whole window when nothing stands out or its frames are no longer kept."""
        hop = self.spec.hop_length
        first = (start_sample - self._origin) // hop
        levels = self._energy_of(first, first + self.window_frames)
        if len(levels) < self.window_frames:
            return start_sample, end_sample
        floor = float(np.percentile(levels, NOISE_FLOOR_PERCENTILE))
        loud = np.flatnonzero(levels >= floor + SPEECH_ABOVE_FLOOR_DB)
        if loud.size == 0:
            return start_sample, end_sample
        return (
            start_sample + int(loud[0]) * hop,
            start_sample + int(loud[-1]) * hop + self.spec.n_fft,
        )

    def _window(
        self, start_frame: int, rows: FloatArray, loudest_db: float
    ) -> list[KeywordDetection]:
        self._windows += 1
        gate = self.config.events.gate_db
        if gate is not None and loudest_db < gate:
            self._gated += 1
            scores = self._zero_scores
        else:
            began = time.perf_counter()
            self._input[0, :, :, 0] = rows
            scores = self.runtime.invoke([self._input])[0].reshape(-1)
            if self._softmax:
                scores = _softmax(scores)
            elapsed = time.perf_counter() - began
            self._inference_s += elapsed
            self.latency.add(elapsed * 1000.0)
            self._inferences += 1
        self.last_scores = scores
        self._smoothing.append(scores)
        smoothed = np.mean(np.stack(self._smoothing), axis=0)
        top = int(np.argmax(smoothed))
        leads = bool(self._reportable_mask[top] and smoothed[top] >= self._threshold_array[top])
        end_sample = self._origin + start_frame * self.spec.hop_length + self.spec.clip_samples
        detections: list[KeywordDetection] = []
        label = self.labels[top] if leads else None
        run = self._run
        if run is not None and run.label != label:
            detections += self._finish_run()
            run = self._run = None
        if label is None:
            return detections
        if run is None:
            run = self._run = _Run(label)
            run.first_end = end_sample
        run.count += 1
        run.score = max(run.score, float(smoothed[top]))
        raw = float(scores[top])
        run.peak = max(run.peak, raw)
        run.ends.append(end_sample)
        run.weights.append(raw)
        events = self.config.events
        if run.count == events.patience and end_sample < self._cooldown_until.get(label, -1):
            run.reported = True  # heard again within the cooldown: not a new keyword
        held = end_sample - run.first_end
        if run.count >= events.patience and not run.reported and held >= self.spec.clip_samples:
            detections += self._finish_run()
        return detections

    def _finish_run(self) -> list[KeywordDetection]:
        """Report the current run if it earned a detection and has not reported yet."""
        run = self._run
        if run is None or run.reported or run.count < self.config.events.patience:
            return []
        run.reported = True
        sample_rate = self.spec.sample_rate
        weights = np.asarray(run.weights, dtype=np.float64)
        ends = np.asarray(run.ends, dtype=np.float64)
        centre = float(np.average(ends, weights=weights)) if weights.sum() > 0 else ends[-1]
        # The window on the hop grid nearest the weighted centre.
        step = self.hop_frames * self.spec.hop_length
        end_sample = int(run.ends[0] + round((centre - run.ends[0]) / step) * step)
        start_sample = end_sample - self.spec.clip_samples
        speech_start, speech_end = self._speech_span(start_sample, end_sample)
        decided = run.ends[-1]
        self._cooldown_until[run.label] = decided + int(self.config.events.cooldown_s * sample_rate)
        return [
            KeywordDetection(
                pipeline=self.name,
                source=self.config.source,
                event_id=str(uuid.uuid4()),
                label=run.label,
                score=run.score,
                peak_score=run.peak,
                window_start_s=start_sample / sample_rate,
                window_end_s=end_sample / sample_rate,
                started_at=self._time_of(start_sample),
                ended_at=self._time_of(end_sample),
                speech_start_s=speech_start / sample_rate,
                speech_end_s=speech_end / sample_rate,
                decided_s=decided / sample_rate,
                windows=run.count,
            )
        ]

    def _time_of(self, sample: int) -> float:
        return self._anchor_time + (sample - self._anchor_sample) / self.spec.sample_rate

    def stats(self) -> KeywordStats:
        audio_s = self._audio_samples / self.spec.sample_rate
        return KeywordStats(
            windows=self._windows,
            inferences=self._inferences,
            gated=self._gated,
            detections=self._detections,
            audio_s=audio_s,
            real_time_factor=self._busy_s / audio_s if audio_s > 0 else 0.0,
            feature_s=self._feature_s,
            inference_s=self._inference_s,
            latency=self.latency.summary(),
        )


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - np.max(logits)
    exp = np.exp(shifted)
    return np.asarray(exp / np.sum(exp), dtype=np.float32)
