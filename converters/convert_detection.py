"""`edgewatch convert` for object detectors (centroid heatmap models).

The same steps as for image classifiers (``converters.convert``): int8 ranges are
calibrated on images prepared by the device's own resize and normalisation (the model
folder's ``calibration.npz``, or ``--calibration DIR``, e.g. a detection folder's
``images/``), and each level is measured on the held-out images through the device
runtime. What is measured differs: a detector is judged by the objects it finds, so
the parity figures are detection F1 (centroid matching, ``training``'s rule,
re-implemented nowhere: the decoding is the device's ``HeatmapDecoder``) for the Keras
model and for the bundle, and the share of cells whose most probable label is the same
in both (in ``top1_agreement``).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle_writer import load_private_key, model_file_entry, write_bundle
from converters.calibration import calibration_samples, representative_inputs
from converters.convert import (
    ConversionResult,
    _edgetpu_build,
    _EdgeTpuBuild,
    _self_check,
    _write_parity,
    golden_pair,
)
from converters.detection_metrics import TruthBox, detection_metrics
from converters.detection_samples import DetectionSamples, read_detection_samples
from converters.keras_to_tflite import (
    FULL_INTEGER_LEVELS,
    import_tensorflow,
    load_keras_model,
    to_tflite,
)
from converters.model_dir import HELDOUT_FILE, MODEL_FILE, TrainedModelInfo, image_spec
from converters.parity import LATENCY_REPEATS, LevelParity
from device.bundle.manifest import (
    SCHEMA_VERSION,
    HeatmapDecoding,
    Manifest,
    QuantMode,
    Thresholds,
)
from device.detection.decode import HeatmapDecoder
from device.detection.objects import DetectedObject
from device.errors import DatasetError
from device.preprocessing.image import normalise
from device.runtime import ModelRuntime, quantize

log = logging.getLogger(__name__)

PARITY_DATASET = "heldout.npz (detection F1, centroid matching; agreement: per cell)"


@dataclass(frozen=True, eq=False)
class DetectionHeldout:
    """Held-out inputs (normalised once), their boxes and the Keras model's answers."""

    inputs: np.ndarray[Any, np.dtype[np.float32]]
    samples: DetectionSamples
    reference_cells: np.ndarray[Any, np.dtype[np.int64]]
    reference_f1: float

    def __len__(self) -> int:
        return len(self.samples)


def heatmap_decoding(info: TrainedModelInfo) -> HeatmapDecoding:
    if not isinstance(info.decoding, HeatmapDecoding):
        raise DatasetError(
            f"model {info.name} has no centroid-heatmap decoding in its model_info.json; "
            "retrain it with `edgewatch train object-detection`"
        )
    return info.decoding


def _f1(
    decoder: HeatmapDecoder,
    outputs: list[np.ndarray[Any, Any]],
    samples: DetectionSamples,
    labels: tuple[str, ...],
) -> float:
    decoded: list[list[DetectedObject]] = [decoder(output)[1] for output in outputs]
    truths = [tuple(TruthBox(labels[c], box) for c, box in boxes) for boxes in samples.truths]
    objects = tuple(label for label in labels if label != decoder.decoding.background_label)
    return detection_metrics(zip(decoded, truths, strict=True), objects).f1


def _decoder(info: TrainedModelInfo) -> HeatmapDecoder:
    decoding = heatmap_decoding(info)
    limits = [info.default_threshold] * len(info.labels)
    return HeatmapDecoder(info.labels, decoding, limits)


def reference_heldout(model: Any, model_dir: Path, info: TrainedModelInfo) -> DetectionHeldout:
    """Run the Keras model once on the held-out images; every level is compared to it."""
    spec = image_spec(info)
    samples = read_detection_samples(model_dir / HELDOUT_FILE, len(info.labels))
    if len(samples) == 0:
        raise DatasetError(
            f"{model_dir / HELDOUT_FILE} holds no images; parity needs them (re-run "
            "`edgewatch train object-detection` with a test split)"
        )
    inputs = np.stack([normalise(frame, spec) for frame in samples.x]).astype(np.float32)
    outputs = np.asarray(model.predict(inputs, batch_size=64, verbose=0), dtype=np.float32)
    decoder = _decoder(info)
    return DetectionHeldout(
        inputs=inputs,
        samples=samples,
        reference_cells=np.argmax(outputs, axis=-1).astype(np.int64),
        reference_f1=_f1(decoder, list(outputs), samples, info.labels),
    )


def measure_detection_level(
    model_bytes: bytes,
    level: QuantMode,
    heldout: DetectionHeldout,
    info: TrainedModelInfo,
    threads: int = 2,
) -> LevelParity:
    """F1, per-cell agreement with Keras and latency, through the device runtime."""
    runtime = ModelRuntime(model_bytes, threads=threads, edgetpu="off")
    outputs = [runtime.invoke([heldout.inputs[i : i + 1]])[0][0] for i in range(len(heldout))]
    cells = np.argmax(np.stack(outputs), axis=-1)
    native = [quantize(heldout.inputs[:1], runtime.inputs[0])]
    runtime.invoke_native(native)  # warm-up
    latency = statistics.median(runtime.timed_invoke_ms(native, repeats=LATENCY_REPEATS))
    return LevelParity(
        level=level,
        size_bytes=len(model_bytes),
        reference_accuracy=heldout.reference_f1,
        bundle_accuracy=_f1(_decoder(info), outputs, heldout.samples, info.labels),
        top1_agreement=float(np.mean(cells == heldout.reference_cells)),
        invoke_ms_p50=float(latency),
        samples=len(heldout),
    )


def convert_detection_model(
    model_dir: Path,
    info: TrainedModelInfo,
    level: QuantMode,
    out: Path,
    *,
    calibration_dir: Path | None = None,
    sign_key: Path | None = None,
    threads: int = 2,
) -> ConversionResult:
    """Convert, measure, write and self-check one detector bundle."""
    spec = image_spec(info)
    decoding = heatmap_decoding(info)
    signing_key = load_private_key(sign_key) if sign_key is not None else None
    representative = None
    calibration_name = ""
    if level in FULL_INTEGER_LEVELS:
        samples = calibration_samples(model_dir, spec, calibration_dir)
        representative = representative_inputs(samples, spec)
        calibration_name = calibration_dir.name if calibration_dir else "calibration.npz"

    tf = import_tensorflow()
    model = load_keras_model(model_dir / MODEL_FILE)
    heldout = reference_heldout(model, model_dir, info)
    tflite_bytes = to_tflite(model, level, representative)
    parity = measure_detection_level(tflite_bytes, level, heldout, info, threads=threads)
    runtime = ModelRuntime(tflite_bytes, threads=threads, edgetpu="off")
    golden = golden_pair(runtime, heldout.inputs[:1], level)
    build: _EdgeTpuBuild | None = None
    model_bytes = tflite_bytes
    if level in FULL_INTEGER_LEVELS:
        build = _edgetpu_build(tflite_bytes, level)
        model_bytes = build.model_bytes
        parity = dataclasses.replace(parity, size_bytes=len(model_bytes))
    provenance = {
        **info.provenance,
        "source_model": f"{info.name}@{info.version}",
        "converter": "edgewatch convert",
        "tensorflow": str(tf.__version__),
    }
    if calibration_name:
        provenance["calibration"] = calibration_name
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=info.name,
        version=info.version,
        task="object-detection",
        created_at=datetime.now(timezone.utc),
        model=model_file_entry(model_bytes),
        inputs=runtime.inputs,
        outputs=runtime.outputs,
        labels=info.labels,
        preprocessing=spec,
        decoding=decoding,
        thresholds=Thresholds(default=info.default_threshold),
        quantization=level,
        edgetpu=build is not None and build.compiled,
        metrics=parity.to_metrics(PARITY_DATASET),
        golden=golden,
        provenance=provenance,
    )
    write_bundle(out, manifest, model_bytes, signing_key=signing_key)
    report_paths = [out.with_name(f"{out.stem}.parity.json")]
    _write_parity(report_paths[0], manifest, parity)
    if build is not None:
        report_paths.append(out.with_name(f"{out.stem}.edgetpu.txt"))
        report_paths[1].write_text(build.report.render_text() + "\n", encoding="utf-8")
    public_key = signing_key.public_key() if signing_key is not None else None
    _self_check(out, public_key, threads)
    log.info("wrote %s (%s, %d bytes model, F1 %.3f vs Keras %.3f)", out.name, level,
             len(model_bytes), parity.bundle_accuracy, parity.reference_accuracy)  # fmt: skip
    return ConversionResult(
        out=out,
        manifest=manifest,
        parity=parity,
        edgetpu_report=build.report if build is not None else None,
        report_paths=tuple(report_paths),
        warnings=build.warnings if build is not None else (),
    )
