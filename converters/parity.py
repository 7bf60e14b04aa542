"""How much a conversion level costs: Keras vs converted model on the same held-out data.

The converted model is measured through ``device.runtime.ModelRuntime``, the path the
device itself takes (float input → the runtime quantizes → invoke → dequantize), so
the figures in a bundle's manifest describe what the device will actually compute,
not what an idealised float pipeline would.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from converters.calibration import calibration_samples, representative_inputs
from converters.keras_to_tflite import FULL_INTEGER_LEVELS, load_keras_model, to_tflite
from converters.model_dir import HELDOUT_FILE, MODEL_FILE, image_spec, read_info, read_samples
from device.bundle.manifest import ImagePreprocessing, LevelMetrics, QuantMode
from device.errors import DatasetError
from device.preprocessing.image import normalise
from device.runtime import ModelRuntime, quantize

log = logging.getLogger(__name__)

LATENCY_REPEATS = 30


@dataclass(frozen=True)
class LevelParity:
    """One row of the parity table: a level's size, accuracy and agreement with Keras."""

    level: QuantMode
    size_bytes: int
    reference_accuracy: float
    bundle_accuracy: float
    top1_agreement: float
    invoke_ms_p50: float
    samples: int

    def to_metrics(self, dataset: str = HELDOUT_FILE) -> LevelMetrics:
        return LevelMetrics(
            dataset=dataset,
            samples=self.samples,
            reference_accuracy=self.reference_accuracy,
            bundle_accuracy=self.bundle_accuracy,
            top1_agreement=self.top1_agreement,
            invoke_ms=self.invoke_ms_p50,
        )


@dataclass(frozen=True)
class HeldoutSet:
    """Held-out inputs, normalised once, with labels and the Keras model's top-1."""

    inputs: np.ndarray[Any, np.dtype[np.float32]]
    labels: np.ndarray[Any, np.dtype[np.int64]]
    reference_top1: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def reference_accuracy(self) -> float:
        return float(np.mean(self.reference_top1 == self.labels))

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def reference_heldout(model: Any, model_dir: Path, spec: ImagePreprocessing) -> HeldoutSet:
    """Run the Keras model once on heldout.npz; every level is compared to this.

    Inputs are normalised by the device's own function, so Keras and the converted
    model see identical tensors.
    """
    samples = read_samples(model_dir / HELDOUT_FILE)
    if samples.y is None or len(samples) == 0:
        raise DatasetError(
            f"{model_dir / HELDOUT_FILE} holds no labelled samples; parity needs them "
            "(re-run `edgewatch train`)"
        )
    inputs = np.stack([normalise(frame, spec) for frame in samples.x]).astype(np.float32)
    scores = np.asarray(model.predict(inputs, batch_size=64, verbose=0))
    return HeldoutSet(
        inputs=inputs,
        labels=samples.y,
        reference_top1=np.argmax(scores, axis=-1).astype(np.int64),
    )


def measure_level(
    model_bytes: bytes, level: QuantMode, heldout: HeldoutSet, threads: int = 2
) -> LevelParity:
    """Accuracy, agreement and latency of a converted model through the device runtime."""
    runtime = ModelRuntime(model_bytes, threads=threads, edgetpu="off")
    top1 = np.empty(len(heldout), dtype=np.int64)
    for index in range(len(heldout)):
        scores = runtime.invoke([heldout.inputs[index : index + 1]])[0]
        top1[index] = int(np.argmax(scores))
    native = [quantize(heldout.inputs[:1], runtime.inputs[0])]
    runtime.invoke_native(native)  # warm-up: first invoke pays for lazy kernel setup
    latency = statistics.median(runtime.timed_invoke_ms(native, repeats=LATENCY_REPEATS))
    return LevelParity(
        level=level,
        size_bytes=len(model_bytes),
        reference_accuracy=heldout.reference_accuracy,
        bundle_accuracy=float(np.mean(top1 == heldout.labels)),
        top1_agreement=float(np.mean(top1 == heldout.reference_top1)),
        invoke_ms_p50=float(latency),
        samples=len(heldout),
    )


def render_parity_table(
    rows: Sequence[LevelParity], metric: str = "acc", agreement: str = "top-1 agree"
) -> str:
    """A markdown table, one row per level, with size relative to the first row.

    ``metric`` and ``agreement`` name the figures (a detector's are F1 and per-cell
    agreement)."""
    base = rows[0].size_bytes if rows else 0
    lines = [
        f"| level | size (KiB) | vs first | Keras {metric} | bundle {metric} | {agreement} "
        "| invoke p50 (ms) | samples |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row.size_bytes / base if base else 0.0
        lines.append(
            f"| {row.level} | {row.size_bytes / 1024:.1f} | {ratio:.2f}x "
            f"| {row.reference_accuracy:.3f} | {row.bundle_accuracy:.3f} "
            f"| {row.top1_agreement:.3f} | {row.invoke_ms_p50:.3f} | {row.samples} |"
        )
    return "\n".join(lines)


def parity_report(
    model_dir: Path,
    levels: Sequence[QuantMode],
    calibration_dir: Path | None = None,
    threads: int = 2,
) -> list[LevelParity]:
    """Convert a trained-model folder at several levels and measure each one.

    The edgetpu row measures the full-int8 model on the CPU: the Edge TPU executes the
    same integer arithmetic, and a compiled model cannot run without the accelerator.
    """
    info = read_info(model_dir)
    spec = image_spec(info)
    model = load_keras_model(model_dir / MODEL_FILE)
    heldout = reference_heldout(model, model_dir, spec)
    representative = None
    if any(level in FULL_INTEGER_LEVELS for level in levels):
        samples = calibration_samples(model_dir, spec, calibration_dir)
        representative = representative_inputs(samples, spec)
    rows: list[LevelParity] = []
    for level in tqdm(levels, desc="levels", unit="level", disable=None):
        model_bytes = to_tflite(model, level, representative)
        row = measure_level(model_bytes, level, heldout, threads=threads)
        log.info(
            "%s: %d bytes, accuracy %.3f (Keras %.3f), agreement %.3f",
            level,
            row.size_bytes,
            row.bundle_accuracy,
            row.reference_accuracy,
            row.top1_agreement,
        )
        rows.append(row)
    return rows
