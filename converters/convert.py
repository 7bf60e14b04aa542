"""`edgewatch convert`: a trained-model folder → a checked, optionally signed .ewm bundle.

The order of work is chosen so that mistakes surface early and a bad bundle never
survives: inputs the user controls (signing key, calibration folder) are read before
the slow conversion; after writing, the bundle is read back and loaded exactly as the
device would load it, and deleted if the device would refuse it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle_writer import load_private_key, model_file_entry, write_bundle
from converters.calibration import calibration_samples, representative_inputs
from converters.edgetpu import EdgeTpuReport, edgetpu_report
from converters.keras_to_tflite import (
    FULL_INTEGER_LEVELS,
    import_tensorflow,
    load_keras_model,
    to_tflite,
)
from converters.model_dir import MODEL_FILE, TrainedModelInfo, image_spec, read_info
from converters.parity import HeldoutSet, LevelParity, measure_level, reference_heldout
from device.bundle.manifest import (
    SCHEMA_VERSION,
    ClassificationDecoding,
    GoldenPair,
    Manifest,
    QuantMode,
    Thresholds,
)
from device.bundle.reader import read_bundle
from device.errors import BundleError, EdgeTpuUnavailableError
from device.runtime import ModelRuntime, load_for_manifest, quantize

log = logging.getLogger(__name__)

#: Golden-output tolerance for float outputs. float16 and dynamic-range models may run
#: reduced-precision kernels on ARM (XNNPack uses fp16 arithmetic where the CPU has it),
#: so they get more room than float32; all three stay far below a changed top-1.
FLOAT_TOLERANCE: dict[QuantMode, float] = {"float32": 1e-4, "float16": 1e-2, "dynamic": 1e-2}
#: Golden-output tolerance for int8 outputs, in quantization steps: kernels may round
#: differently on another CPU (and on the Edge TPU), by a step or so.
INT8_TOLERANCE_STEPS: dict[QuantMode, float] = {"int8": 2.0, "edgetpu": 3.0}


@dataclass(frozen=True)
class ConversionResult:
    """What `edgewatch convert` produced and measured."""

    out: Path
    manifest: Manifest
    parity: LevelParity
    edgetpu_report: EdgeTpuReport | None
    report_paths: tuple[Path, ...]
    #: Things the user should know that did not stop the conversion.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class _EdgeTpuBuild:
    """The model bytes to ship at an int8/edgetpu level and the report about them."""

    model_bytes: bytes
    compiled: bool
    report: EdgeTpuReport
    warnings: tuple[str, ...]


def golden_pair(
    runtime: ModelRuntime, sample: np.ndarray[Any, Any], level: QuantMode
) -> GoldenPair:
    """Record one input (already normalised, batch of one) and the model's native output."""
    native_input = quantize(sample, runtime.inputs[0])
    output = runtime.invoke_native([native_input])[0]
    out_spec = runtime.outputs[0]
    if out_spec.quantized:
        tolerance = INT8_TOLERANCE_STEPS.get(level, 2.0) * out_spec.scale + 1e-6
    else:
        tolerance = FLOAT_TOLERANCE.get(level, 1e-4)
    return GoldenPair(
        input_b64=GoldenPair.encode(native_input),
        output_b64=GoldenPair.encode(output),
        tolerance=tolerance,
    )


def _edgetpu_build(int8_bytes: bytes, level: QuantMode) -> _EdgeTpuBuild:
    """Check the op table and, at the edgetpu level, compile when the compiler exists."""
    notes: list[str] = []
    if level != "edgetpu":
        report = edgetpu_report(int8_bytes, run_compiler=False)
        model_bytes, compiled = int8_bytes, False
    else:
        with tempfile.TemporaryDirectory(prefix="edgewatch-edgetpu-") as tmp:
            report = edgetpu_report(int8_bytes, run_compiler=True, workdir=Path(tmp))
            result = report.compiler
            if result is not None and result.returncode == 0 and result.compiled_path:
                compiled_path = Path(result.compiled_path)
                model_bytes, compiled = compiled_path.read_bytes(), True
                # The temporary folder is gone once we return; name the file only.
                report = dataclasses.replace(
                    report, compiler=dataclasses.replace(result, compiled_path=compiled_path.name)
                )
            else:
                model_bytes, compiled = int8_bytes, False
        if result is None:
            notes.append(
                "edgetpu_compiler was not found on PATH, so the bundle holds the full-int8 "
                "model (edgetpu=false), which runs on the CPU; install the Edge TPU compiler "
                "(x86-64 Linux, package edgetpu-compiler) and convert again to use a Coral"
            )
        elif not compiled:
            notes.append(
                f"edgetpu_compiler failed (exit {result.returncode}), so the bundle holds the "
                "full-int8 model (edgetpu=false); the compiler log is in the Edge TPU report"
            )
    if report.unsupported:
        names = sorted({op.op_name for op in report.unsupported})
        notes.append(
            f"{len(report.unsupported)} op(s) cannot run on the Edge TPU ({', '.join(names)}); "
            "they and the ops after them would run on the CPU"
        )
    for note in notes:
        log.warning("%s", note)
    return _EdgeTpuBuild(model_bytes, compiled, report, tuple(notes))


def _build_manifest(
    info: TrainedModelInfo,
    *,
    level: QuantMode,
    model_bytes: bytes,
    runtime: ModelRuntime,
    golden: GoldenPair,
    parity: LevelParity,
    edgetpu: bool,
    provenance: dict[str, str],
) -> Manifest:
    return Manifest(
        schema_version=SCHEMA_VERSION,
        name=info.name,
        version=info.version,
        task=info.task,
        created_at=datetime.now(timezone.utc),
        model=model_file_entry(model_bytes),
        inputs=runtime.inputs,
        outputs=runtime.outputs,
        labels=info.labels,
        preprocessing=info.preprocessing,
        decoding=ClassificationDecoding(
            apply_softmax=not info.outputs_probabilities,
            background_labels=info.background_labels,
        ),
        thresholds=Thresholds(default=info.default_threshold),
        quantization=level,
        edgetpu=edgetpu,
        metrics=parity.to_metrics(),
        golden=golden,
        provenance=provenance,
    )


def _self_check(out: Path, public_key: Any, threads: int) -> None:
    """Load the written bundle the way a device would; delete it if that fails."""
    try:
        bundle = read_bundle(out, public_key=public_key)
        if bundle.manifest.edgetpu:
            try:
                load_for_manifest(bundle.manifest, bundle.model_bytes, threads, "required")
            except EdgeTpuUnavailableError:
                # A compiled model only runs with the accelerator; its tensors and golden
                # pair were taken from the int8 model it was compiled from.
                log.info("no Edge TPU here; the compiled model's smoke test runs on the device")
        else:
            load_for_manifest(bundle.manifest, bundle.model_bytes, threads, "off")
    except BundleError:
        out.unlink(missing_ok=True)
        log.error("the written bundle failed the device's checks and was deleted")
        raise


def _write_parity(path: Path, manifest: Manifest, parity: LevelParity) -> None:
    document = {
        "model": manifest.model_ref,
        "sha256": manifest.model.sha256,
        "edgetpu": manifest.edgetpu,
        **dataclasses.asdict(parity),
    }
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def convert_model(
    model_dir: Path,
    level: QuantMode,
    out: Path,
    *,
    calibration_dir: Path | None = None,
    sign_key: Path | None = None,
    threads: int = 2,
) -> ConversionResult:
    """Convert, measure, write and self-check one bundle; see the module docstring."""
    info = read_info(model_dir)
    if info.task == "audio-classification":
        from converters.convert_audio import convert_audio_model

        return convert_audio_model(
            model_dir, info, level, out, calibration_dir=calibration_dir, sign_key=sign_key,
            threads=threads,
        )  # fmt: skip
    if info.task == "sensor-anomaly":
        from converters.sensor_convert import convert_sensor_model

        return convert_sensor_model(
            model_dir, level, out, calibration_dir=calibration_dir, sign_key=sign_key,
            threads=threads,
        )  # fmt: skip
    if info.task == "object-detection":
        from converters.convert_detection import convert_detection_model

        return convert_detection_model(
            model_dir, info, level, out, calibration_dir=calibration_dir, sign_key=sign_key,
            threads=threads,
        )  # fmt: skip
    if info.task == "log-anomaly":
        from converters.convert_logs import convert_log_model

        return convert_log_model(
            model_dir, info, level, out, calibration_dir=calibration_dir, sign_key=sign_key,
            threads=threads,
        )  # fmt: skip
    spec = image_spec(info)
    signing_key = load_private_key(sign_key) if sign_key is not None else None
    representative = None
    calibration_name = ""
    if level in FULL_INTEGER_LEVELS:
        samples = calibration_samples(model_dir, spec, calibration_dir)
        representative = representative_inputs(samples, spec)
        calibration_name = calibration_dir.name if calibration_dir else "calibration.npz"

    tf = import_tensorflow()
    model = load_keras_model(model_dir / MODEL_FILE)
    heldout: HeldoutSet = reference_heldout(model, model_dir, spec)
    tflite_bytes = to_tflite(model, level, representative)
    parity = measure_level(tflite_bytes, level, heldout, threads=threads)

    runtime = ModelRuntime(tflite_bytes, threads=threads, edgetpu="off")
    golden = golden_pair(runtime, heldout.inputs[:1], level)
    build: _EdgeTpuBuild | None = None
    model_bytes = tflite_bytes
    if level in FULL_INTEGER_LEVELS:
        build = _edgetpu_build(tflite_bytes, level)
        model_bytes = build.model_bytes
        # The size users care about is the shipped file's (a compiled model is larger).
        parity = dataclasses.replace(parity, size_bytes=len(model_bytes))

    provenance = {
        **info.provenance,
        "source_model": f"{info.name}@{info.version}",
        "converter": "edgewatch convert",
        "tensorflow": str(tf.__version__),
    }
    if calibration_name:
        provenance["calibration"] = calibration_name
    manifest = _build_manifest(
        info,
        level=level,
        model_bytes=model_bytes,
        runtime=runtime,
        golden=golden,
        parity=parity,
        edgetpu=build is not None and build.compiled,
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
    log.info(
        "wrote %s (%s, %d bytes model, accuracy %.3f vs Keras %.3f)",
        out.name,
        level,
        len(model_bytes),
        parity.bundle_accuracy,
        parity.reference_accuracy,
    )
    return ConversionResult(
        out=out,
        manifest=manifest,
        parity=parity,
        edgetpu_report=build.report if build is not None else None,
        report_paths=tuple(report_paths),
        warnings=build.warnings if build is not None else (),
    )
