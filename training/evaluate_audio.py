"""`edgewatch evaluate` for audio classifiers: a bundle's accuracy on a clip folder.

The folder follows the Speech Commands conventions (``DIR/<label>/*.wav``): a folder
named like one of the bundle's labels holds that label's clips, any other word folder
counts as ``_unknown_`` when the bundle has that label (and is skipped, with a warning,
when it has not), ``_background_noise_`` is ignored. Each clip is read, fitted to the
model's window and turned into features by the device's own code
(``device.audio.features``, which gives the streaming path's exact features), then
invoked through the device runtime: the accuracy printed is the device's.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from device.audio.clips import fit_clip, list_audio_files, read_audio_file
from device.audio.features import FeatureExtractor
from device.bundle.manifest import AudioPreprocessing, ClassificationDecoding
from device.bundle.reader import Bundle
from device.errors import BundleTaskError, DatasetError, SourceError
from device.runtime import load_for_manifest
from training.datasets.speech_folder import BACKGROUND_NOISE, UNKNOWN
from training.evaluate import EvaluationResult, _softmax
from training.report import compute_metrics, write_report

log = logging.getLogger(__name__)


def labelled_clips(data_dir: Path, labels: tuple[str, ...]) -> list[tuple[Path, int]]:
    """(file, label index) for every clip of the folder, by the rules above."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a directory of labelled audio clips")
    found: list[tuple[Path, int]] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        if folder.name == BACKGROUND_NOISE or folder.name.startswith("."):
            continue
        if folder.name in labels:
            index = labels.index(folder.name)
        elif UNKNOWN in labels:
            index = labels.index(UNKNOWN)
        else:
            log.warning("folder %s is not one of the model's labels; skipped", folder.name)
            continue
        found.extend((path, index) for path in list_audio_files(folder))
    if not found:
        raise DatasetError(
            f"{data_dir} holds no audio clips in folders named like the model's labels "
            f"({', '.join(labels)})"
        )
    return found


def evaluate_audio_bundle(
    bundle_path: Path,
    bundle: Bundle,
    data_dir: Path,
    threads: int = 2,
    out_dir: Path | None = None,
) -> EvaluationResult:
    manifest = bundle.manifest
    spec, decoding = manifest.preprocessing, manifest.decoding
    if not isinstance(spec, AudioPreprocessing) or not isinstance(
        decoding, ClassificationDecoding
    ):
        raise BundleTaskError(f"bundle {manifest.model_ref} is not an audio classifier")
    data_dir = Path(data_dir)
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads=threads, edgetpu="auto")
    extractor = FeatureExtractor(spec)
    clips = labelled_clips(data_dir, manifest.labels)
    tensor = np.zeros((1, *spec.input_shape), dtype=np.float32)
    y_true: list[int] = []
    y_pred: list[int] = []
    skipped = 0
    invoke_s = 0.0
    for path, label in clips:
        try:
            audio = read_audio_file(path, spec.sample_rate)
        except SourceError as exc:
            skipped += 1
            log.debug("skipped %s", exc)
            continue
        tensor[0, :, :, 0] = extractor.clip_features(fit_clip(audio.samples, spec.clip_samples))
        start = time.perf_counter()
        scores = runtime.invoke([tensor])[0].reshape(-1)
        invoke_s += time.perf_counter() - start
        if decoding.apply_softmax:
            scores = _softmax(scores)
        y_true.append(label)
        y_pred.append(int(np.argmax(scores)))
    if skipped:
        log.warning("skipped %d unreadable audio file(s) in %s", skipped, data_dir.name)
    if not y_true:
        raise DatasetError(f"{data_dir} holds no readable audio clips")
    metrics = compute_metrics(y_true, y_pred, manifest.labels)
    mean_ms = invoke_s * 1000.0 / len(y_pred)
    report = None
    if out_dir is not None:
        report = write_report(
            Path(out_dir), metrics,
            title=f"{manifest.model_ref} ({manifest.quantization}) on {data_dir.name}",
            extra={"bundle": Path(bundle_path).name, "data": data_dir.name,
                   "mean invoke ms": round(mean_ms, 3), "threads": threads},
        )  # fmt: skip
    log.info("%s: accuracy %.4f on %d clips", manifest.model_ref, metrics.accuracy,
             metrics.samples)  # fmt: skip
    return EvaluationResult(
        bundle=Path(bundle_path),
        data_dir=data_dir,
        model=manifest.name,
        version=manifest.version,
        quantization=manifest.quantization,
        metrics=metrics,
        mean_invoke_ms=mean_ms,
        skipped_files=skipped,
        threads=threads,
        report=report,
        unit="clips",
    )
