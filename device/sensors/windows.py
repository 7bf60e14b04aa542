"""Samples → grid steps → scaled sliding windows: the one implementation of sensor
preprocessing, used by training, evaluation and the device.

The steps, in order (parameters from the manifest's ``SensorPreprocessing``):

1. **Resampling** (``interval_s`` set): samples fall into grid cells centred on the
   grid points, ``[(k - 1/2) * interval_s, (k + 1/2) * interval_s)``, so a sensor that
   reports every interval with some jitter puts one sample in each; a cell's step is
   the mean of its samples per column (NaNs ignored), timed at its grid point
   ``k * interval_s``. A cell is complete when a
   sample of a later cell arrives, so a step is one interval late at most. Empty cells
   between two samples are missing steps; up to ``max_gap_steps`` of them are filled
   (step 2), a longer gap restarts the window, so no window spans an outage. A sample
   older than the open cell is dropped (counted ``out_of_order``). Without
   ``interval_s`` every sample is one step (a sample older than the previous one is
   dropped).
2. **Filling**: a missing value (NaN) takes its column's last value; before the first
   value of a column there is nothing to fill with and the step is dropped.
3. **Scaling**: each column becomes ``(x - mean) / std``.
4. **Windowing**: ``window`` consecutive steps make a window; after the first, one
   completes every ``hop`` steps. A window in which more than ``max_filled_fraction``
   of the values were filled in is not handed out (counted ``skipped_windows``).

Training runs the very same objects over a whole file (``window_arrays``), so a window
the device scores is bit for bit the window the model was trained and calibrated on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle.manifest import SensorColumn, SensorPreprocessing

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Float64Array = np.ndarray[Any, np.dtype[np.float64]]

#: The smallest std a column is scaled by, relative to its mean's magnitude (and at
#: least STD_FLOOR_ABS): a column constant in training must not divide by zero.
STD_FLOOR_REL = 1e-3
STD_FLOOR_ABS = 1e-6


@dataclass(frozen=True, slots=True)
class Step:
    """One grid step of a series: its time and one value per column (NaN: missing)."""

    timestamp: float
    values: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class Window:
    """``window`` consecutive scaled steps of one series, ready for the model."""

    series: str
    #: Times of the first and last step.
    start: float
    end: float
    #: Shape (window, columns), float32, z-scored.
    data: FloatArray
    #: Values in the window that were filled in (missing in the data).
    filled: int
    #: Ordinal of the window in its series (counts on across restarts).
    index: int


@dataclass(frozen=True)
class WindowerStats:
    steps: int
    windows: int
    skipped_windows: int
    filled_values: int
    out_of_order: int
    #: Gaps longer than ``max_gap_steps`` (each restarts the window).
    restarts: int


class Resampler:
    """Samples → steps on the grid of ``interval_s`` (or one step per sample)."""

    def __init__(self, spec: SensorPreprocessing) -> None:
        self.interval = spec.interval_s
        self.max_gap = spec.max_gap_steps
        self.columns = len(spec.columns)
        self._cell: int | None = None
        self._sums = [0.0] * self.columns
        self._counts = [0] * self.columns
        self._last_time: float | None = None
        self.out_of_order = 0
        #: Set when the last push crossed a gap longer than ``max_gap_steps``.
        self.gap_restart = False

    def push(self, timestamp: float, values: Sequence[float]) -> list[Step]:
        """The steps this sample completes (usually none or one); afterwards
        ``gap_restart`` says whether a gap longer than ``max_gap_steps`` lies between
        the last returned step and the cell the sample opened."""
        self.gap_restart = False
        if self.interval is None:
            if self._last_time is not None and timestamp < self._last_time:
                self.out_of_order += 1
                return []
            self._last_time = timestamp
            return [Step(timestamp, tuple(float(v) for v in values))]
        cell = math.floor(timestamp / self.interval + 0.5)
        if self._cell is None:
            self._open(cell, values)
            return []
        if cell < self._cell:
            self.out_of_order += 1
            return []
        if cell == self._cell:
            self._add(values)
            return []
        steps = [self._close()]
        empty = cell - self._cell - 1
        if empty > self.max_gap:
            self.gap_restart = True
        else:
            nan = tuple(math.nan for _ in range(self.columns))
            steps.extend(Step((self._cell + n) * self.interval, nan) for n in range(1, empty + 1))
        self._open(cell, values)
        return steps

    def _open(self, cell: int, values: Sequence[float]) -> None:
        self._cell = cell
        self._sums = [0.0] * self.columns
        self._counts = [0] * self.columns
        self._add(values)

    def _add(self, values: Sequence[float]) -> None:
        for index, value in enumerate(values):
            if not math.isnan(value):
                self._sums[index] += value
                self._counts[index] += 1

    def _close(self) -> Step:
        assert self._cell is not None and self.interval is not None
        values = tuple(
            s / c if c else math.nan for s, c in zip(self._sums, self._counts, strict=True)
        )
        return Step(self._cell * self.interval, values)


class SeriesWindower:
    """One series' samples → scaled windows; not thread-safe (one per series)."""

    def __init__(self, spec: SensorPreprocessing, series: str = "") -> None:
        self.spec = spec
        self.series = series
        self.resampler = Resampler(spec)
        width = len(spec.columns)
        self._scaling = [(c.mean, c.std) for c in spec.columns]
        self._last_valid: list[float | None] = [None] * width
        self._buffer = np.zeros((spec.window, width), dtype=np.float32)
        self._times = np.zeros(spec.window, dtype=np.float64)
        self._filled = np.zeros(spec.window, dtype=np.int32)
        self._head = 0
        self._size = 0
        self._since_window = 0
        #: The buffer has not yet given a window since it was (re)started.
        self._fresh = True
        self._next_index = 0
        self._max_filled = math.floor(spec.max_filled_fraction * spec.window * width)
        self._steps = 0
        self._windows = 0
        self._skipped = 0
        self._filled_values = 0
        self._restarts = 0

    def push(self, timestamp: float, values: Sequence[float]) -> list[Window]:
        """Feed one sample (values in the manifest's column order); returns the windows
        it completes."""
        steps = self.resampler.push(timestamp, values)
        windows: list[Window] = []
        for step in steps:
            window = self._add_step(step)
            if window is not None:
                windows.append(window)
        if self.resampler.gap_restart:
            # The long gap lies between the step just closed and the open cell.
            self._restart()
        return windows

    def _restart(self) -> None:
        self._size = 0
        self._head = 0
        self._since_window = 0
        self._fresh = True
        self._restarts += 1

    def _add_step(self, step: Step) -> Window | None:
        filled = 0
        scaled: list[float] = []
        for index, value in enumerate(step.values):
            if math.isnan(value):
                last = self._last_valid[index]
                if last is None:
                    return None
                value = last  # noqa: PLW2901 (the filled value replaces the missing one)
                filled += 1
            else:
                self._last_valid[index] = value
            mean, std = self._scaling[index]
            # float64 arithmetic, rounded to float32 once, as training's arrays are.
            scaled.append((value - mean) / std)
        self._steps += 1
        self._filled_values += filled
        self._buffer[self._head] = scaled
        self._times[self._head] = step.timestamp
        self._filled[self._head] = filled
        self._head = (self._head + 1) % self.spec.window
        self._size = min(self._size + 1, self.spec.window)
        self._since_window += 1
        if self._size < self.spec.window:
            return None
        if not self._fresh and self._since_window < self.spec.hop:
            return None
        self._fresh = False
        self._since_window = 0
        return self._emit()

    def _emit(self) -> Window | None:
        index = self._next_index
        self._next_index += 1
        filled = int(self._filled.sum())
        if filled > self._max_filled:
            self._skipped += 1
            return None
        head = self._head
        data = np.concatenate((self._buffer[head:], self._buffer[:head]))
        self._windows += 1
        return Window(
            series=self.series,
            start=float(self._times[head % self.spec.window]),
            end=float(self._times[(head - 1) % self.spec.window]),
            data=data,
            filled=filled,
            index=index,
        )

    def stats(self) -> WindowerStats:
        return WindowerStats(
            steps=self._steps,
            windows=self._windows,
            skipped_windows=self._skipped,
            filled_values=self._filled_values,
            out_of_order=self.resampler.out_of_order,
            restarts=self._restarts,
        )


@dataclass(frozen=True)
class WindowArrays:
    """A series' windows stacked: what training, calibration and evaluation use."""

    data: FloatArray
    starts: Float64Array
    ends: Float64Array
    filled: np.ndarray[Any, np.dtype[np.int32]]
    stats: WindowerStats

    def __len__(self) -> int:
        return int(self.data.shape[0])


def window_arrays(
    spec: SensorPreprocessing,
    timestamps: Float64Array,
    values: Float64Array,
    series: str = "",
) -> WindowArrays:
    """Every window of a whole series, made by the device's own ``SeriesWindower``.

    ``values`` holds one column per ``spec.columns`` entry, in that order.
    """
    windower = SeriesWindower(spec, series)
    windows: list[Window] = []
    for timestamp, row in zip(timestamps.tolist(), values.tolist(), strict=True):
        windows.extend(windower.push(timestamp, row))
    width = len(spec.columns)
    if windows:
        data = np.stack([w.data for w in windows]).astype(np.float32)
    else:
        data = np.zeros((0, spec.window, width), dtype=np.float32)
    return WindowArrays(
        data=data,
        starts=np.array([w.start for w in windows], dtype=np.float64),
        ends=np.array([w.end for w in windows], dtype=np.float64),
        filled=np.array([w.filled for w in windows], dtype=np.int32),
        stats=windower.stats(),
    )


def steps_of(
    spec: SensorPreprocessing, timestamps: Float64Array, values: Float64Array
) -> Float64Array:
    """The resampled step values of a whole series (NaN where missing), for fitting the
    scaling on exactly what the windows are made of."""
    resampler = Resampler(spec)
    rows: list[tuple[float, ...]] = []
    for timestamp, row in zip(timestamps.tolist(), values.tolist(), strict=True):
        rows.extend(step.values for step in resampler.push(timestamp, row))
    if not rows:
        return np.zeros((0, len(spec.columns)), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64)


def fit_columns(names: Sequence[str], steps: Float64Array) -> tuple[SensorColumn, ...]:
    """Mean and std per column over the training steps (NaN ignored), std floored."""
    columns = []
    for index, name in enumerate(names):
        column = steps[:, index]
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            raise ValueError(f"column {name!r} has no value to fit its scaling on")
        mean = float(np.mean(finite))
        std = float(np.std(finite))
        floor = max(STD_FLOOR_ABS, STD_FLOOR_REL * abs(mean))
        columns.append(SensorColumn(name=name, mean=mean, std=max(std, floor)))
    return tuple(columns)
