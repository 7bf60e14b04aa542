"""`edgewatch convert` for sensor-anomaly models: Keras autoencoder → checked .ewm bundle.

The image path's order of work, with what is particular to an anomaly model:

* Int8 ranges are calibrated on the training windows kept in ``calibration.npz`` (or
  windows cut from ``--calibration DIR/*.csv`` by the device's windowing code).
* The threshold is calibrated again, with the same rule (``model_info.json``'s
  quantile and margin), on the *converted* model's scores of those windows, computed
  through the device runtime: quantization shifts scores a little, and the device
  compares the scores it computes, not the Keras model's.
* Parity on the held-out (normal) validation windows: "accuracy" is the share of
  windows judged normal, by the Keras model with its threshold and by the bundle with
  its own; "agreement" is the share where both judge alike. The score correlation and
  the median relative score difference go into the parity report beside them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle_writer import load_private_key, model_file_entry, write_bundle
from converters.convert import (
    ConversionResult,
    _edgetpu_build,
    _self_check,
    _write_parity,
    golden_pair,
)
from converters.keras_to_tflite import (
    FULL_INTEGER_LEVELS,
    import_tensorflow,
    load_keras_model,
    to_tflite,
)
from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    MODEL_FILE,
    AnomalyCalibration,
    TrainedModelInfo,
    read_info,
    read_windows,
)
from converters.parity import LATENCY_REPEATS, LevelParity
from device.bundle.manifest import (
    SCHEMA_VERSION,
    Manifest,
    QuantMode,
    ReconstructionDecoding,
    SensorPreprocessing,
)
from device.errors import DatasetError
from device.runtime import ModelRuntime, quantize
from device.sensors.scoring import calibrate_threshold, window_scores
from device.sensors.series import read_csv_series
from device.sensors.windows import window_arrays

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
#: Windows used as the int8 representative set (activation ranges settle well before).
REPRESENTATIVE_WINDOWS = 500


@dataclasses.dataclass(frozen=True)
class SensorParity:
    """How the converted model's scores compare with the Keras model's."""

    keras_threshold: float
    bundle_threshold: float
    #: Pearson correlation of the scores on the held-out windows.
    score_correlation: float
    #: Median over held-out windows of |bundle - keras| / keras.
    median_relative_difference: float
    heldout_windows: int
    calibration_windows: int


def _spec_of(info: TrainedModelInfo) -> tuple[SensorPreprocessing, AnomalyCalibration]:
    spec, rule = info.preprocessing, info.anomaly
    if not isinstance(spec, SensorPreprocessing) or rule is None:
        raise DatasetError(f"{info.name} is not a sensor-anomaly model folder")
    return spec, rule


def calibration_windows(
    model_dir: Path, spec: SensorPreprocessing, calibration_dir: Path | None
) -> FloatArray:
    """The model folder's calibration windows, or those of ``calibration_dir/*.csv``."""
    if calibration_dir is None:
        windows = read_windows(model_dir / CALIBRATION_FILE)
    else:
        paths = sorted(calibration_dir.glob("*.csv"))
        if not paths:
            raise DatasetError(f"{calibration_dir} holds no *.csv files to calibrate with")
        parts = []
        for path in paths:
            series = read_csv_series(path)
            missing = [n for n in spec.column_names if n not in series.columns]
            if missing:
                raise DatasetError(f"{path.name} lacks the model's columns {missing}")
            indices = [series.columns.index(n) for n in spec.column_names]
            parts.append(window_arrays(spec, series.timestamps, series.values[:, indices]).data)
        windows = np.concatenate(parts)
        if not len(windows):
            raise DatasetError(f"{calibration_dir} gives no complete window")
    expected = (spec.window, len(spec.columns))
    if windows.shape[1:] != expected:
        raise DatasetError(
            f"calibration windows are {windows.shape[1:]}, the model takes {expected}; "
            "re-run `edgewatch train sensor-anomaly`"
        )
    return windows


def runtime_scores(runtime: ModelRuntime, windows: FloatArray) -> FloatArray:
    """Scores through the device's own path: one window per invoke, float in and out."""
    scores = np.empty(len(windows), dtype=np.float32)
    for index in range(len(windows)):
        batch = windows[index : index + 1]
        output = runtime.invoke([batch])[0]
        scores[index] = window_scores(batch, output)[0]
    return scores


def _keras_scores(model: Any, windows: FloatArray) -> FloatArray:
    """The Keras model's scores; it takes a batch of one (see training.models.autoencoder)."""
    outputs = [np.asarray(model(windows[i : i + 1], training=False)) for i in range(len(windows))]
    return window_scores(windows, np.concatenate(outputs))


def _correlation(a: FloatArray, b: FloatArray) -> float:
    if len(a) < 2 or float(np.std(a)) == 0.0 or float(np.std(b)) == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def convert_sensor_model(
    model_dir: Path,
    level: QuantMode,
    out: Path,
    *,
    calibration_dir: Path | None = None,
    sign_key: Path | None = None,
    threads: int = 2,
) -> ConversionResult:
    """Convert, recalibrate, measure, write and self-check one sensor-anomaly bundle."""
    info = read_info(model_dir)
    spec, rule = _spec_of(info)
    signing_key = load_private_key(sign_key) if sign_key is not None else None
    calibration = calibration_windows(model_dir, spec, calibration_dir)
    heldout = read_windows(model_dir / HELDOUT_FILE)
    representative = None
    if level in FULL_INTEGER_LEVELS:
        step = max(1, len(calibration) // REPRESENTATIVE_WINDOWS)
        representative = list(calibration[::step][:REPRESENTATIVE_WINDOWS])

    tf = import_tensorflow()
    model = load_keras_model(model_dir / MODEL_FILE)
    tflite_bytes = to_tflite(model, level, representative)
    runtime = ModelRuntime(tflite_bytes, threads=threads, edgetpu="off")
    bundle_threshold = calibrate_threshold(
        runtime_scores(runtime, calibration), rule.quantile, rule.margin
    )
    keras_heldout = _keras_scores(model, heldout)
    bundle_heldout = runtime_scores(runtime, heldout)
    keras_normal = keras_heldout < rule.threshold
    bundle_normal = bundle_heldout < bundle_threshold
    native = [quantize(heldout[:1], runtime.inputs[0])]
    runtime.invoke_native(native)
    latency = statistics.median(runtime.timed_invoke_ms(native, repeats=LATENCY_REPEATS))
    relative = np.abs(bundle_heldout - keras_heldout) / np.maximum(keras_heldout, 1e-9)
    sensor_parity = SensorParity(
        keras_threshold=rule.threshold,
        bundle_threshold=bundle_threshold,
        score_correlation=_correlation(keras_heldout, bundle_heldout),
        median_relative_difference=float(np.median(relative)),
        heldout_windows=len(heldout),
        calibration_windows=len(calibration),
    )
    parity = LevelParity(
        level=level,
        size_bytes=len(tflite_bytes),
        reference_accuracy=float(np.mean(keras_normal)),
        bundle_accuracy=float(np.mean(bundle_normal)),
        top1_agreement=float(np.mean(keras_normal == bundle_normal)),
        invoke_ms_p50=float(latency),
        samples=len(heldout),
    )
    golden = golden_pair(runtime, heldout[:1], level)
    model_bytes = tflite_bytes
    build = None
    if level in FULL_INTEGER_LEVELS:
        build = _edgetpu_build(tflite_bytes, level)
        model_bytes = build.model_bytes
        parity = dataclasses.replace(parity, size_bytes=len(model_bytes))

    provenance = {
        **info.provenance,
        "source_model": f"{info.name}@{info.version}",
        "converter": "edgewatch convert",
        "tensorflow": str(tf.__version__),
        "calibration": calibration_dir.name if calibration_dir else CALIBRATION_FILE,
        "keras_threshold": f"{rule.threshold:.6g}",
    }
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=info.name,
        version=info.version,
        task="sensor-anomaly",
        created_at=datetime.now(timezone.utc),
        model=model_file_entry(model_bytes),
        inputs=runtime.inputs,
        outputs=runtime.outputs,
        labels=info.labels,
        preprocessing=spec,
        decoding=ReconstructionDecoding(
            threshold=bundle_threshold,
            quantile=rule.quantile,
            margin=rule.margin,
            calibration_windows=len(calibration),
        ),
        quantization=level,
        edgetpu=build is not None and build.compiled,
        metrics=parity.to_metrics(dataset=f"{HELDOUT_FILE} (normal windows)"),
        golden=golden,
        provenance=provenance,
    )
    write_bundle(out, manifest, model_bytes, signing_key=signing_key)
    report_paths = [out.with_name(f"{out.stem}.parity.json")]
    _write_parity(report_paths[0], manifest, parity)
    document = json.loads(report_paths[0].read_text(encoding="utf-8"))
    document["sensor"] = dataclasses.asdict(sensor_parity)
    report_paths[0].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if build is not None:
        report_paths.append(out.with_name(f"{out.stem}.edgetpu.txt"))
        report_paths[1].write_text(build.report.render_text() + "\n", encoding="utf-8")

    public_key = signing_key.public_key() if signing_key is not None else None
    _self_check(out, public_key, threads)
    log.info(
        "wrote %s (%s, %d bytes model); threshold %.4g (Keras %.4g), score correlation %.4f",
        out.name, level, len(model_bytes), bundle_threshold, rule.threshold,
        sensor_parity.score_correlation,
    )  # fmt: skip
    return ConversionResult(
        out=out,
        manifest=manifest,
        parity=parity,
        edgetpu_report=build.report if build is not None else None,
        report_paths=tuple(report_paths),
        warnings=build.warnings if build is not None else (),
    )
