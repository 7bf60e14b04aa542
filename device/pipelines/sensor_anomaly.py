"""Sensor anomaly detection: readings in, scored windows out, one event per anomalous
stretch.

Each series of the source (a file, an MQTT topic, the host) gets its own
``SeriesWindower`` (device/sensors/windows.py: resampling, filling, scaling, windows) and
its own ``EventTracker``. Every completed window goes through the model (an autoencoder:
its output is its reconstruction of the window) and is scored by
``device.sensors.scoring.window_scores``; a window at or above the threshold is
anomalous.

Debouncing counts *windows*, not seconds: the tracker runs on each series' window
ordinal as its timeline, so ``min_windows`` anomalous windows in a row start an event
and ``end_after_windows`` windows below the threshold end it, whatever the sample rate
(the default, two windows' length, keeps a spike crossing the window one event).
Transitions are then given the data's own times: the window that caused them, and for
the end the span of the whole stretch.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle.manifest import ReconstructionDecoding, SensorPreprocessing
from device.bundle.reader import Bundle
from device.config import EventSection
from device.errors import BundleTaskError, ModelMismatchError
from device.latency import LatencySummary, LatencyWindow
from device.mqtt.payloads import SensorWindow
from device.pipelines.lifecycle import EventTracker, Transition, TransitionType
from device.runtime import ModelRuntime
from device.sensors.config import SensorAnomalyPipelineConfig
from device.sensors.reading import Reading
from device.sensors.windows import SeriesWindower, Window

log = logging.getLogger(__name__)

TASK = "sensor-anomaly"
LABEL = "anomaly"
#: Column layouts whose mapping to the model's columns is remembered.
MAX_COLUMN_LAYOUTS = 256
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class SensorWindowResult:
    """One scored window."""

    pipeline: str
    source: str
    series: str
    #: Ordinal of the window in its series.
    index: int
    #: Times (data time, Unix s) of the window's first and last sample.
    window_start: float
    window_end: float
    score: float
    threshold: float
    anomalous: bool
    #: Values in the window that were filled in (missing in the data).
    filled: int
    #: When the reading that completed the window was received (Unix s).
    received_at: float
    #: Invoke + score, in milliseconds.
    inference_ms: float


@dataclass(frozen=True)
class SensorTransition:
    """One change in an anomaly event's life, with everything its MQTT ``Event`` needs.

    ``score`` is the causing window's score for start and update, the stretch's highest
    for end. ``window_start``/``window_end`` are the causing window's times for start and
    update, and the stretch's span (first anomalous window's start to last anomalous
    window's end) for end. ``duration_s`` runs from the stretch's start to
    ``window_end``.
    """

    type: TransitionType
    pipeline: str
    source: str
    series: str
    event_id: str
    label: str
    score: float
    top_score: float
    threshold: float
    window_start: float
    window_end: float
    #: Data time of the event's first anomalous window's first sample.
    started_at: float
    duration_s: float
    #: Data time of the window that caused this transition (for end, the quiet window
    #: that closed it): the event's capture time.
    captured_at: float
    #: The model's window length in samples.
    samples: int

    def sensor_window(self) -> SensorWindow:
        """The ``sensor`` extra of the wire ``Event``."""
        return SensorWindow(
            series=self.series,
            start=self.window_start,
            end=self.window_end,
            samples=self.samples,
            threshold=self.threshold,
        )


@dataclass(frozen=True)
class SensorPipelineStats:
    """Counters for the stats message."""

    #: Windows scored.
    inferences: int
    anomalous_windows: int
    transitions: int
    #: Windows not scored because too much of them was filled in.
    skipped_windows: int
    #: Readings that lacked a column the model needs (or were filtered out by series).
    unmatched_readings: int
    #: Samples older than their series' previous one, dropped.
    out_of_order: int
    series: int
    latency: LatencySummary


class _Series:
    """A series' windower, tracker and the times its open event needs (private)."""

    __slots__ = ("last_anomalous_end", "pending_starts", "stretch_start", "tracker", "windower")

    def __init__(self, windower: SeriesWindower, tracker: EventTracker) -> None:
        self.windower = windower
        self.tracker = tracker
        #: Window ordinal → window start, for anomalous windows not yet in an event.
        self.pending_starts: dict[int, float] = {}
        self.stretch_start = 0.0
        self.last_anomalous_end = 0.0


class SensorAnomalyPipeline:
    """One sensor-anomaly model over the readings of one source; not thread-safe (the
    daemon's inference thread calls ``process``; ``set_threshold`` swaps one float)."""

    def __init__(
        self,
        name: str,
        config: SensorAnomalyPipelineConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
    ) -> None:
        bundle.require_task(TASK)
        manifest = bundle.manifest
        spec, decoding = manifest.preprocessing, manifest.decoding
        if not isinstance(spec, SensorPreprocessing) or not isinstance(
            decoding, ReconstructionDecoding
        ):
            raise BundleTaskError(f"{manifest.model_ref} is not a sensor-anomaly model")
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = manifest
        self.runtime = runtime
        self.spec: SensorPreprocessing = spec
        self.decoding: ReconstructionDecoding = decoding
        self._check_tensors()
        self.threshold = config.threshold if config.threshold is not None else decoding.threshold
        self._input = np.empty((1, spec.window, len(spec.columns)), dtype=np.float32)
        self._scratch = np.empty_like(self._input)
        in_spec, out_spec = runtime.inputs[0], runtime.outputs[0]
        self._native = np.empty(in_spec.shape, dtype=np.dtype(in_spec.dtype))
        self._in_quant = in_spec if in_spec.quantized else None
        self._out_quant = out_spec if out_spec.quantized else None
        limits = np.iinfo(self._native.dtype) if self._in_quant is not None else None
        self._clip = (limits.min, limits.max) if limits is not None else (0, 0)
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self._column_maps: dict[tuple[str, ...], tuple[int, ...] | None] = {}
        self._evicted_ends: list[SensorTransition] = []
        self._events = self._event_section(config)
        self.latency = LatencyWindow()
        self._inferences = 0
        self._anomalous = 0
        self._transitions = 0
        self._unmatched = 0
        self._evicted_skipped = 0
        self._evicted_out_of_order = 0
        self.last_results: list[SensorWindowResult] = []
        log.info(
            "pipeline %s: %s on source %s, window %d x %s every %d step(s), threshold %.4g",
            name,
            manifest.model_ref,
            config.source,
            spec.window,
            list(spec.column_names),
            spec.hop,
            self.threshold,
        )

    # -- construction -------------------------------------------------------------------

    def _check_tensors(self) -> None:
        expected = (1, self.spec.window, len(self.spec.columns))
        for kind, specs in (("input", self.runtime.inputs), ("output", self.runtime.outputs)):
            shape = tuple(specs[0].shape)
            if math.prod(shape) != math.prod(expected) or len(specs) != 1:
                raise ModelMismatchError(
                    f"{self.manifest.model_ref}: {kind} is {list(shape)}, but the manifest's "
                    f"window makes {list(expected)}; rebuild the bundle"
                )

    def _event_section(self, config: SensorAnomalyPipelineConfig) -> EventSection:
        end_after = config.end_after_windows or 2 * math.ceil(self.spec.window / self.spec.hop)
        # Window ordinals are the trackers' timeline: "seconds" below count windows.
        return EventSection(
            min_frames=config.min_windows,
            end_after_s=float(end_after),
            update_interval_s=float(config.update_every_windows),
        )

    def reconfigure(self, config: SensorAnomalyPipelineConfig) -> None:
        """Apply a reloaded config's threshold, filters and debounce without reloading
        the model (the model, source and task need a restart)."""
        self.config = config
        self.threshold = (
            config.threshold if config.threshold is not None else self.decoding.threshold
        )
        self._events = self._event_section(config)
        self._column_maps.clear()
        for state in self._series.values():
            state.tracker.config = self._events

    def set_threshold(self, value: float) -> None:
        """The threshold, until the next reload or restart (the ``threshold`` command)."""
        if not value > 0:
            raise ValueError(f"a sensor-anomaly threshold must be positive, got {value}")
        self.reconfigure(self.config.model_copy(update={"threshold": value}))

    # -- per reading ----------------------------------------------------------------------

    def infer(self, reading: Reading) -> list[SensorWindowResult]:
        """Feed one reading; returns the windows it completed, scored."""
        values = self._model_values(reading)
        if values is None:
            return []
        state = self._state_for(reading.series)
        windows = state.windower.push(reading.timestamp, values)
        return [self._score(window, reading) for window in windows]

    def process(self, readings: Sequence[Reading]) -> list[SensorTransition]:
        """Feed readings in order; returns the event transitions to publish."""
        transitions: list[SensorTransition] = []
        results: list[SensorWindowResult] = []
        for reading in readings:
            for result in self.infer(reading):
                results.append(result)
                transitions.extend(self._track(result))
        transitions.extend(self._evicted_ends)
        self._evicted_ends = []
        self.last_results = results
        self._transitions += len(transitions)
        return transitions

    def flush(self, now: float | None = None) -> list[SensorTransition]:
        """End every open event (end of a file, shutdown, model swap)."""
        transitions: list[SensorTransition] = []
        for series, state in self._series.items():
            transitions.extend(self._flush_series(series, state, now))
        self._transitions += len(transitions)
        return transitions

    def _flush_series(
        self, series: str, state: _Series, now: float | None
    ) -> list[SensorTransition]:
        at = state.last_anomalous_end if now is None else now
        out = [
            self._convert(series, state, transition, window_end=state.last_anomalous_end,
                          captured_at=at)
            for transition in state.tracker.flush(now=0.0)
        ]  # fmt: skip
        state.pending_starts.clear()
        return out

    def _model_values(self, reading: Reading) -> tuple[float, ...] | None:
        if self.config.series and not any(
            fnmatch.fnmatchcase(reading.series, pattern) for pattern in self.config.series
        ):
            self._unmatched += 1
            return None
        indices = self._column_maps.get(reading.columns, ())
        if indices == ():
            indices = self._resolve_columns(reading.columns)
            if len(self._column_maps) >= MAX_COLUMN_LAYOUTS:
                self._column_maps.clear()
            self._column_maps[reading.columns] = indices
        if indices is None:
            self._unmatched += 1
            return None
        return tuple(reading.values[i] for i in indices)

    def _resolve_columns(self, columns: tuple[str, ...]) -> tuple[int, ...] | None:
        wanted = [self.config.columns.get(name, name) for name in self.spec.column_names]
        if all(name in columns for name in wanted):
            return tuple(columns.index(name) for name in wanted)
        if len(wanted) == 1 and len(columns) == 1:
            return (0,)
        log.warning(
            "pipeline %s: readings with columns %s lack the model's %s; they are ignored "
            "(map names with the pipeline's `columns`)",
            self.name,
            list(columns),
            wanted,
        )
        return None

    def _state_for(self, series: str) -> _Series:
        state = self._series.get(series)
        if state is not None:
            self._series.move_to_end(series)
            return state
        state = _Series(SeriesWindower(self.spec, series), EventTracker(self._events))
        self._series[series] = state
        while len(self._series) > self.config.max_series:
            old, evicted = self._series.popitem(last=False)
            stats = evicted.windower.stats()
            self._evicted_skipped += stats.skipped_windows
            self._evicted_out_of_order += stats.out_of_order
            if evicted.tracker.open_labels:
                # Its event ends now rather than never (process() hands the end out).
                log.info("pipeline %s: series %s forgotten with an open event", self.name, old)
                self._evicted_ends.extend(self._flush_series(old, evicted, None))
        return state

    def _invoke(self, window: Window) -> float:
        """Quantize into a reused buffer, invoke, dequantize, score: ``runtime.invoke``
        and ``window_scores`` with the same arithmetic, minus their allocations (a
        window costs a few microseconds of model and would otherwise cost ten times
        that in small-array overhead)."""
        x, buf = self._input, self._scratch
        x[0] = window.data
        quant = self._in_quant
        if quant is None:
            self._native[...] = x.reshape(self._native.shape)
        else:
            np.divide(x, quant.scale, out=buf)
            np.round(buf, out=buf)
            buf += quant.zero_point
            np.clip(buf, self._clip[0], self._clip[1], out=buf)
            self._native[...] = buf.reshape(self._native.shape)
        output = self.runtime.invoke_native([self._native])[0].reshape(x.shape)
        if self._out_quant is None:
            np.subtract(x, output, out=buf)
        else:
            np.subtract(output, self._out_quant.zero_point, out=buf, dtype=np.float32)
            buf *= np.float32(self._out_quant.scale)
            np.subtract(x, buf, out=buf)
        flat = buf.reshape(-1)
        return float(np.dot(flat, flat)) / flat.size

    def _score(self, window: Window, reading: Reading) -> SensorWindowResult:
        start = time.perf_counter()
        score = self._invoke(window)
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.latency.add(elapsed_ms)
        self._inferences += 1
        anomalous = score >= self.threshold
        if anomalous:
            self._anomalous += 1
        return SensorWindowResult(
            pipeline=self.name,
            source=reading.source,
            series=window.series,
            index=window.index,
            window_start=window.start,
            window_end=window.end,
            score=score,
            threshold=self.threshold,
            anomalous=anomalous,
            filled=window.filled,
            received_at=reading.received_at,
            inference_ms=elapsed_ms,
        )

    # -- events ---------------------------------------------------------------------------

    def _track(self, result: SensorWindowResult) -> list[SensorTransition]:
        state = self._series[result.series]
        if not result.anomalous:
            state.pending_starts.clear()
        elif not state.tracker.open_labels:
            # A run that may start an event (at most min_windows long).
            state.pending_starts[result.index] = result.window_start
        scores = {LABEL: result.score} if result.anomalous else {}
        out = []
        for transition in state.tracker.observe(scores, float(result.index)):
            if transition.type == "start":
                state.stretch_start = state.pending_starts.get(
                    int(transition.started_at), result.window_start
                )
                state.pending_starts.clear()
            if transition.type == "end":
                converted = self._convert(
                    result.series, state, transition, window_end=state.last_anomalous_end,
                    captured_at=result.window_end,
                )  # fmt: skip
            else:
                converted = self._convert(
                    result.series, state, transition, window_end=result.window_end,
                    captured_at=result.window_end, window_start=result.window_start,
                )  # fmt: skip
            out.append(converted)
        if result.anomalous:
            state.last_anomalous_end = result.window_end
        return out

    def _convert(
        self,
        series: str,
        state: _Series,
        transition: Transition,
        *,
        window_end: float,
        captured_at: float,
        window_start: float | None = None,
    ) -> SensorTransition:
        return SensorTransition(
            type=transition.type,
            pipeline=self.name,
            source=self.config.source,
            series=series,
            event_id=transition.event_id,
            label=transition.label,
            score=transition.score,
            top_score=transition.top_score,
            threshold=self.threshold,
            window_start=state.stretch_start if window_start is None else window_start,
            window_end=window_end,
            started_at=state.stretch_start,
            duration_s=max(0.0, window_end - state.stretch_start),
            captured_at=captured_at,
            samples=self.spec.window,
        )

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> SensorPipelineStats:
        skipped = self._evicted_skipped
        out_of_order = self._evicted_out_of_order
        for state in self._series.values():
            counters = state.windower.stats()
            skipped += counters.skipped_windows
            out_of_order += counters.out_of_order
        return SensorPipelineStats(
            inferences=self._inferences,
            anomalous_windows=self._anomalous,
            transitions=self._transitions,
            skipped_windows=skipped,
            unmatched_readings=self._unmatched,
            out_of_order=out_of_order,
            series=len(self._series),
            latency=self.latency.summary(),
        )
