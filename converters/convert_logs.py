"""`edgewatch convert` for log-anomaly (next-event) models.

The same steps as for images (converters/convert.py), with what a next-event model needs
instead of pixels: the representative data for int8 are real event-id windows (the
model folder's calibration.npz, or windows computed from ``--calibration DIR`` with the
model's own vocabulary), the input stays int32 event ids at every level (only the float
activations and weights are quantized), and parity is measured where it matters for
anomaly detection: besides top-1 accuracy and agreement, the share of held-out events on
which Keras and the bundle take the same top-g decision.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle_writer import load_private_key, model_file_entry, write_bundle
from converters.convert import (
    ConversionResult,
    _edgetpu_build,
    _EdgeTpuBuild,
    _self_check,
    golden_pair,
)
from converters.keras_to_tflite import (
    FULL_INTEGER_LEVELS,
    import_tensorflow,
    load_keras_model,
    to_tflite,
)
from converters.log_folder import NORMAL_FILE, load_log_folder, ranks, read_sessions
from converters.model_dir import CALIBRATION_FILE, HELDOUT_FILE, MODEL_FILE, TrainedModelInfo
from converters.parity import LATENCY_REPEATS, LevelParity
from converters.sequence_samples import WindowSet, read_windows
from device.bundle.manifest import (
    SCHEMA_VERSION,
    LogPreprocessing,
    Manifest,
    NextEventDecoding,
    QuantMode,
    Thresholds,
)
from device.errors import DatasetError
from device.pipelines.log_events import EventMapper, session_windows, stream_windows
from device.runtime import ModelRuntime

log = logging.getLogger(__name__)

CALIBRATION_LIMIT = 300
#: Held-out windows measured through the runtime (one invoke each, as the device's
#: single-history path).
PARITY_LIMIT = 2000
#: Below this decision agreement the conversion warns: the int8 model would flag
#: noticeably other events than the Keras model.
AGREEMENT_WARNING = 0.99


@dataclass(frozen=True)
class LogParity:
    """What a level costs a next-event model, beyond LevelParity's classifier figures."""

    level: QuantMode
    top_g: int
    reference_hit_rate: float
    bundle_hit_rate: float
    #: Share of held-out events given the same "within top-g" verdict by Keras and bundle.
    decision_agreement: float
    samples: int


def log_parts(info: TrainedModelInfo) -> tuple[LogPreprocessing, NextEventDecoding]:
    spec, decoding = info.preprocessing, info.decoding
    if not isinstance(spec, LogPreprocessing) or not isinstance(decoding, NextEventDecoding):
        raise DatasetError(
            f"model_info.json of {info.name} does not describe a next-event log model; "
            "re-run `edgewatch train log-anomaly`"
        )
    return spec, decoding


def calibration_windows(
    model_dir: Path, spec: LogPreprocessing, calibration_dir: Path | None, seed: int = 0
) -> list[np.ndarray[Any, np.dtype[np.int32]]]:
    """Batch-of-one int32 windows: from ``calibration_dir`` (logs or sessions, read with the
    model's vocabulary) when given, else the model folder's calibration.npz."""
    if calibration_dir is not None:
        x = _windows_from_folder(calibration_dir, spec)
    else:
        x = read_windows(model_dir / CALIBRATION_FILE, spec.history, spec.classes).x
    if len(x) == 0:
        raise DatasetError(
            "no calibration windows: int8 conversion needs real event sequences; pass "
            "--calibration DIR with normal logs, or keep calibration.npz in the model folder"
        )
    if len(x) > CALIBRATION_LIMIT:
        chosen = np.sort(np.random.default_rng(seed).choice(len(x), CALIBRATION_LIMIT, False))
        x = x[chosen]
    return [row[np.newaxis, :].astype(np.int32) for row in x]


def _windows_from_folder(directory: Path, spec: LogPreprocessing) -> np.ndarray[Any, Any]:
    mapper = EventMapper(spec)
    parts: list[np.ndarray[Any, Any]] = []
    if spec.input_format == "sessions":
        for session in read_sessions(directory / NORMAL_FILE):
            ids = [mapper.event_id(e) for e in session]
            parts.append(session_windows(ids, spec.history, spec.boundary)[0])
    else:
        for f in load_log_folder(directory):
            ids = [mapper.line_id(text) for text in f.lines]
            parts.append(stream_windows(ids, spec.history)[0])
    return np.concatenate(parts) if parts else np.empty((0, spec.history), np.int32)


def _measure(
    model_bytes: bytes,
    level: QuantMode,
    *,
    heldout: WindowSet,
    reference: np.ndarray[Any, Any],
    top_g: int,
    threads: int,
) -> tuple[LevelParity, LogParity]:
    assert heldout.y is not None
    runtime = ModelRuntime(model_bytes, threads=threads, edgetpu="off")
    outputs = np.stack(
        [runtime.invoke([heldout.x[i : i + 1]])[0].reshape(-1) for i in range(len(heldout))]
    )
    ref_ranks = ranks(reference, heldout.y)
    got_ranks = ranks(outputs, heldout.y)
    runtime.invoke_native([heldout.x[:1]])  # warm-up: the first invoke sets kernels up
    latency = statistics.median(runtime.timed_invoke_ms([heldout.x[:1]], LATENCY_REPEATS))
    parity = LevelParity(
        level=level,
        size_bytes=len(model_bytes),
        reference_accuracy=float(np.mean(ref_ranks == 1)),
        bundle_accuracy=float(np.mean(got_ranks == 1)),
        top1_agreement=float(np.mean(np.argmax(outputs, 1) == np.argmax(reference, 1))),
        invoke_ms_p50=float(latency),
        samples=len(heldout),
    )
    decisions = LogParity(
        level=level,
        top_g=top_g,
        reference_hit_rate=float(np.mean(ref_ranks <= top_g)),
        bundle_hit_rate=float(np.mean(got_ranks <= top_g)),
        decision_agreement=float(np.mean((ref_ranks <= top_g) == (got_ranks <= top_g))),
        samples=len(heldout),
    )
    return parity, decisions


def convert_log_model(
    model_dir: Path,
    info: TrainedModelInfo,
    level: QuantMode,
    out: Path,
    *,
    calibration_dir: Path | None = None,
    sign_key: Path | None = None,
    threads: int = 2,
) -> ConversionResult:
    """Convert, measure, write and self-check one log-anomaly bundle."""
    spec, decoding = log_parts(info)
    signing_key = load_private_key(sign_key) if sign_key is not None else None
    representative = None
    if level in FULL_INTEGER_LEVELS:
        representative = calibration_windows(model_dir, spec, calibration_dir)
    tf = import_tensorflow()
    model = load_keras_model(model_dir / MODEL_FILE)
    heldout = read_windows(model_dir / HELDOUT_FILE, spec.history, spec.classes)
    if heldout.y is None or len(heldout) == 0:
        raise DatasetError(f"{model_dir / HELDOUT_FILE} holds no held-out windows; re-run "
                           "`edgewatch train log-anomaly`")  # fmt: skip
    if len(heldout) > PARITY_LIMIT:
        heldout = WindowSet(heldout.x[:PARITY_LIMIT], heldout.y[:PARITY_LIMIT])
    reference = np.asarray(model.predict(heldout.x, batch_size=1024, verbose=0))
    tflite_bytes = to_tflite(model, level, representative)
    parity, decisions = _measure(tflite_bytes, level, heldout=heldout, reference=reference,
                                 top_g=decoding.top_g, threads=threads)  # fmt: skip
    runtime = ModelRuntime(tflite_bytes, threads=threads, edgetpu="off")
    golden = golden_pair(runtime, heldout.x[:1], level)
    warnings: list[str] = []
    model_bytes = tflite_bytes
    build: _EdgeTpuBuild | None = None
    if level in FULL_INTEGER_LEVELS:
        build = _edgetpu_build(tflite_bytes, level)  # logs its own warnings
        model_bytes = build.model_bytes
    if decisions.decision_agreement < AGREEMENT_WARNING:
        warnings.append(
            f"at {level} the bundle's top-{decoding.top_g} verdict differs from the Keras "
            f"model's on {1 - decisions.decision_agreement:.2%} of held-out events"
        )
    provenance = {
        **info.provenance,
        "source_model": f"{info.name}@{info.version}",
        "converter": "edgewatch convert",
        "tensorflow": str(tf.__version__),
        "top_g_agreement": f"{decisions.decision_agreement:.4f}",
    }
    if representative is not None:
        provenance["calibration"] = calibration_dir.name if calibration_dir else CALIBRATION_FILE
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=info.name,
        version=info.version,
        task="log-anomaly",
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
        metrics=parity.to_metrics(dataset=f"{HELDOUT_FILE} (next-event top-1)"),
        golden=golden,
        provenance=provenance,
    )
    write_bundle(out, manifest, model_bytes, signing_key=signing_key)
    report = out.with_name(f"{out.stem}.parity.json")
    report.write_text(
        json.dumps(
            {"model": manifest.model_ref, "sha256": manifest.model.sha256,
             **asdict(parity), **asdict(decisions)}, indent=2,
        ) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    _self_check(out, signing_key.public_key() if signing_key is not None else None, threads)
    for warning in warnings:
        log.warning("%s", warning)
    if build is not None:
        warnings += build.warnings
    log.info(
        "wrote %s (%s, %d bytes model): top-%d verdicts agree with Keras on %.4f of %d "
        "held-out events", out.name, level, len(model_bytes), decoding.top_g,
        decisions.decision_agreement, decisions.samples,
    )  # fmt: skip
    return ConversionResult(
        out=out,
        manifest=manifest,
        parity=parity,
        edgetpu_report=build.report if build is not None else None,
        report_paths=(report,),
        warnings=tuple(warnings),
    )
