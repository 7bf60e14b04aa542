"""Generated sensor series with known anomalies: seasonal signal plus noise, and injected
spikes, drifts and flat-lines.

Tests and the docs' examples need sensor data whose anomalies are known exactly,
without downloading anything. A series is a daily-like cycle (a sine of ``period``
samples plus its second harmonic, so the cycle is not symmetric) with Gaussian noise;
anomalies are then written over stretches of it:

* **spike**: one to three samples jump by several amplitudes (a glitch, a surge);
* **drift**: the level ramps away linearly over the stretch (a sensor losing its
  calibration, a slow leak), then is corrected;
* **flatline**: the value freezes at what it was when the stretch began, without
  noise (a stuck sensor, a dead feed repeating its last value).

Everything is a function of the seed. ``write_series_csv`` writes the dataset format
of ``edgewatch train sensor-anomaly`` (``timestamp,value[,value...]``), and
``write_labels`` writes NAB's ``labels/combined_windows.json`` for evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

AnomalyKind = Literal["spike", "drift", "flatline"]
Float64Array = np.ndarray[Any, np.dtype[np.float64]]

#: 2024-01-01T00:00:00Z: generated series start here unless told otherwise.
DEFAULT_START = 1_704_067_200.0


@dataclass(frozen=True)
class Anomaly:
    """An injected anomaly over samples ``start`` to ``end`` (exclusive)."""

    kind: AnomalyKind
    start: int
    end: int


@dataclass(frozen=True)
class SignalShape:
    """The normal behaviour of a generated series."""

    period: int = 48
    amplitude: float = 10.0
    level: float = 50.0
    noise: float = 0.6
    #: Second-harmonic share of the amplitude (0: a pure sine).
    harmonic: float = 0.35


@dataclass(frozen=True)
class GeneratedSeries:
    timestamps: Float64Array
    #: Shape (samples, columns).
    values: Float64Array
    columns: tuple[str, ...]
    anomalies: tuple[Anomaly, ...]
    interval_s: float

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    def anomaly_windows(self, pad: int = 0) -> list[tuple[float, float]]:
        """Each anomaly as (first, last) timestamp, widened by ``pad`` samples a side."""
        last = len(self) - 1
        return [
            (
                float(self.timestamps[max(0, a.start - pad)]),
                float(self.timestamps[min(last, a.end - 1 + pad)]),
            )
            for a in self.anomalies
        ]


def seasonal(
    length: int,
    shape: SignalShape,
    rng: np.random.Generator,
    columns: int = 1,
) -> Float64Array:
    """Normal data: (length, columns); each column its own phase and noise."""
    t = np.arange(length, dtype=np.float64)
    out = np.empty((length, columns), dtype=np.float64)
    for column in range(columns):
        phase = rng.uniform(0.0, 2.0 * math.pi)
        angle = 2.0 * math.pi * t / shape.period + phase
        cycle = np.sin(angle) + shape.harmonic * np.sin(2.0 * angle + 0.5)
        noise = rng.normal(0.0, shape.noise, size=length)
        out[:, column] = shape.level + shape.amplitude * cycle + noise
    return out


def inject(
    values: Float64Array,
    anomalies: Sequence[Anomaly],
    shape: SignalShape,
    rng: np.random.Generator,
) -> Float64Array:
    """A copy of ``values`` with every anomaly written over its stretch (all columns)."""
    out = values.copy()
    for anomaly in anomalies:
        span = slice(anomaly.start, anomaly.end)
        length = anomaly.end - anomaly.start
        if anomaly.kind == "spike":
            sign = rng.choice([-1.0, 1.0])
            out[span] += sign * rng.uniform(4.0, 6.0) * shape.amplitude
        elif anomaly.kind == "drift":
            ramp = np.linspace(0.0, 2.5 * shape.amplitude, length)
            out[span] += ramp[:, np.newaxis]
        elif anomaly.kind == "flatline":
            out[span] = out[anomaly.start]
        else:
            raise ValueError(f"unknown anomaly kind {anomaly.kind!r}")
    return out


def generate_series(
    length: int,
    anomalies: Sequence[Anomaly] = (),
    *,
    seed: int = 0,
    shape: SignalShape | None = None,
    columns: int = 1,
    interval_s: float = 60.0,
    start: float = DEFAULT_START,
) -> GeneratedSeries:
    """A seasonal series of ``length`` samples with ``anomalies`` injected."""
    shape = shape or SignalShape()
    for anomaly in anomalies:
        if not 0 <= anomaly.start < anomaly.end <= length:
            raise ValueError(f"{anomaly} does not fit in {length} samples")
    rng = np.random.default_rng(seed)
    values = inject(seasonal(length, shape, rng, columns), anomalies, shape, rng)
    names = ("value",) if columns == 1 else tuple(f"value_{i + 1}" for i in range(columns))
    return GeneratedSeries(
        timestamps=start + interval_s * np.arange(length, dtype=np.float64),
        values=values,
        columns=names,
        anomalies=tuple(anomalies),
        interval_s=interval_s,
    )


def spread_anomalies(
    length: int,
    kinds: Sequence[AnomalyKind],
    *,
    lead: int,
    spacing: int,
    duration: int = 40,
) -> list[Anomaly]:
    """One anomaly of each kind, the first after ``lead`` samples, ``spacing`` apart
    (spikes last 1 to 3 samples, the others ``duration``)."""
    anomalies = []
    at = lead
    for index, kind in enumerate(kinds):
        span = 1 + index % 3 if kind == "spike" else duration
        if at + span > length:
            raise ValueError(f"{len(kinds)} anomalies do not fit in {length} samples")
        anomalies.append(Anomaly(kind, at, at + span))
        at += spacing
    return anomalies


def iso(timestamp: float) -> str:
    """NAB's timestamp format (UTC, no offset)."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def write_series_csv(path: Path, series: GeneratedSeries) -> Path:
    """``timestamp,value[,value...]`` with a header, timestamps as NAB writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(("timestamp", *series.columns))]
    for timestamp, row in zip(series.timestamps.tolist(), series.values.tolist(), strict=True):
        lines.append(",".join((iso(timestamp), *(f"{v:.4f}" for v in row))))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_labels(root: Path, windows: dict[str, list[tuple[float, float]]]) -> Path:
    """``root/labels/combined_windows.json``: relative CSV path → [[start, end], ...]."""
    document = {
        name: [[f"{iso(a)}.000000", f"{iso(b)}.000000"] for a, b in spans]
        for name, spans in sorted(windows.items())
    }
    path = root / "labels" / "combined_windows.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path
