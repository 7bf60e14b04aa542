"""`edgewatch convert` for audio classifiers (keyword spotting, sound events).

The same steps as for images (converters/convert.py), with features instead of pixels:
the model folder's held-out and calibration sets already hold the model's input
features (computed by ``device.audio.features`` during training), and
``--calibration DIR`` takes real audio clips (any folder of WAV/FLAC/Ogg files, in
sub-folders or not), read, fitted to the window and turned into features by the
device's own code. Int8 ranges are therefore calibrated on exactly the features the
device will compute. Parity (Keras vs bundle on the held-out speakers) and the golden
pair are measured through the device runtime like every other task.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from converters.bundle_writer import load_private_key, write_bundle
from converters.convert import (
    ConversionResult,
    _build_manifest,
    _edgetpu_build,
    _EdgeTpuBuild,
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
    HELDOUT_SPEAKERS,
    MODEL_FILE,
    PARITY_CLIPS_KEY,
    FeatureSamples,
    TrainedModelInfo,
    read_feature_samples,
)
from converters.parity import HeldoutSet, measure_level
from device.audio.clips import AUDIO_EXTENSIONS, fit_clip, read_audio_file
from device.audio.features import FeatureExtractor
from device.bundle.manifest import AudioPreprocessing, QuantMode
from device.errors import DatasetError, SourceError
from device.runtime import ModelRuntime

log = logging.getLogger(__name__)

CALIBRATION_LIMIT = 300


def audio_spec(info: TrainedModelInfo) -> AudioPreprocessing:
    if not isinstance(info.preprocessing, AudioPreprocessing):
        raise DatasetError(f"model {info.name} has no audio preprocessing; retrain it")
    return info.preprocessing


def _check_shape(samples: FeatureSamples, spec: AudioPreprocessing, where: Path) -> None:
    expected = spec.input_shape
    if samples.x.ndim != 4 or tuple(samples.x.shape[1:]) != expected:
        raise DatasetError(
            f"{where} holds inputs of shape {list(samples.x.shape[1:])}, but the model's "
            f"audio preprocessing makes {list(expected)}; re-run `edgewatch train`"
        )


def calibration_features(
    directory: Path, spec: AudioPreprocessing, limit: int = CALIBRATION_LIMIT, seed: int = 0
) -> FeatureSamples:
    """Up to ``limit`` clips of ``directory`` (recursively) as model inputs; unreadable
    files are skipped and counted."""
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory of audio clips")
    paths = sorted(
        (p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS),
        key=lambda p: p.relative_to(directory).as_posix(),
    )
    order = np.random.default_rng(seed).permutation(len(paths)) if len(paths) > limit else range(
        len(paths)
    )
    extractor = FeatureExtractor(spec)
    chosen: dict[int, np.ndarray[Any, np.dtype[np.float32]]] = {}
    unreadable = 0
    for index in order:
        if len(chosen) == limit:
            break
        try:
            audio = read_audio_file(paths[int(index)], spec.sample_rate)
        except SourceError as exc:
            unreadable += 1
            log.debug("calibration: %s", exc)
            continue
        chosen[int(index)] = fit_clip(audio.samples, spec.clip_samples)
    if unreadable:
        log.warning("skipped %d unreadable audio file(s) in %s", unreadable, directory.name)
    if not chosen:
        raise DatasetError(
            f"{directory} holds no readable audio clips ({', '.join(AUDIO_EXTENSIONS)}); "
            "calibration needs recordings like the ones the device will hear"
        )
    clips = np.stack([chosen[i] for i in sorted(chosen)])
    log.info("calibrating on %d clips from %s", len(clips), directory.name)
    return FeatureSamples(x=extractor.clip_features(clips)[..., np.newaxis], y=None)


def convert_audio_model(
    model_dir: Path,
    info: TrainedModelInfo,
    level: QuantMode,
    out: Path,
    *,
    calibration_dir: Path | None = None,
    sign_key: Path | None = None,
    threads: int = 2,
) -> ConversionResult:
    """Convert, measure, write and self-check one audio bundle."""
    spec = audio_spec(info)
    signing_key = load_private_key(sign_key) if sign_key is not None else None
    representative = None
    calibration_name = ""
    if level in FULL_INTEGER_LEVELS:
        if calibration_dir is not None:
            calibration = calibration_features(calibration_dir, spec)
            calibration_name = calibration_dir.name
        else:
            calibration = read_feature_samples(model_dir / CALIBRATION_FILE)
            _check_shape(calibration, spec, model_dir / CALIBRATION_FILE)
            calibration_name = CALIBRATION_FILE
        representative = [sample[np.newaxis] for sample in calibration.x]

    tf = import_tensorflow()
    model = load_keras_model(model_dir / MODEL_FILE)
    heldout = _reference_heldout(model, model_dir, spec)
    tflite_bytes = to_tflite(model, level, representative)
    parity = measure_level(tflite_bytes, level, heldout, threads=threads)
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
    manifest = _build_manifest(
        info, level=level, model_bytes=model_bytes, runtime=runtime, golden=golden,
        parity=parity, edgetpu=build is not None and build.compiled, provenance=provenance,
    )  # fmt: skip
    write_bundle(out, manifest, model_bytes, signing_key=signing_key)
    report_paths = [out.with_name(f"{out.stem}.parity.json")]
    _write_parity(report_paths[0], manifest, parity)
    if build is not None:
        report_paths.append(out.with_name(f"{out.stem}.edgetpu.txt"))
        report_paths[1].write_text(build.report.render_text() + "\n", encoding="utf-8")
    public_key = signing_key.public_key() if signing_key is not None else None
    _self_check(out, public_key, threads)
    log.info("wrote %s (%s, %d bytes model, accuracy %.3f vs Keras %.3f)", out.name, level,
             len(model_bytes), parity.bundle_accuracy, parity.reference_accuracy)  # fmt: skip
    return ConversionResult(
        out=out,
        manifest=manifest,
        parity=parity,
        edgetpu_report=build.report if build is not None else None,
        report_paths=tuple(report_paths),
        warnings=(*(build.warnings if build is not None else ()), *_parity_warnings(info)),
    )


def _parity_warnings(info: TrainedModelInfo) -> tuple[str, ...]:
    """A model trained with no held-out speakers has its parity measured on clips it
    learnt from or stopped on: say so, so nobody reads it as accuracy on new voices."""
    judged = info.provenance.get(PARITY_CLIPS_KEY, HELDOUT_SPEAKERS)
    if judged == HELDOUT_SPEAKERS:
        return ()
    return (
        f"the accuracies above are on the model folder's {judged}, not on unheard "
        "speakers (it was trained with --test-fraction 0)",
    )


def _reference_heldout(model: Any, model_dir: Path, spec: AudioPreprocessing) -> HeldoutSet:
    """The Keras model's top-1 on the held-out features; every level is compared to it."""
    samples = read_feature_samples(model_dir / HELDOUT_FILE)
    if samples.y is None or len(samples) == 0:
        raise DatasetError(
            f"{model_dir / HELDOUT_FILE} holds no labelled samples; parity needs them "
            "(re-run `edgewatch train`)"
        )
    _check_shape(samples, spec, model_dir / HELDOUT_FILE)
    scores = np.asarray(model.predict(samples.x, batch_size=256, verbose=0))
    return HeldoutSet(
        inputs=samples.x,
        labels=samples.y,
        reference_top1=np.argmax(scores, axis=-1).astype(np.int64),
    )
