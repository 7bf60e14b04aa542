"""`edgewatch evaluate`: a bundle's accuracy on a labelled folder, measured the device's way.

The bundle is read and verified with the device's reader, loaded with the device's
runtime (tensor check and golden smoke test included), and every image is resized,
normalised and invoked exactly as the daemon does it. So the number printed here is
the number a Pi would get on the same pictures. TensorFlow is never imported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from device.bundle.manifest import ImagePreprocessing, Manifest
from device.bundle.reader import read_bundle
from device.errors import BundleTaskError
from device.preprocessing.image import normalise
from device.runtime import load_for_manifest
from training.datasets.image_folder import load_labelled_folder
from training.report import ClassificationMetrics, ReportPaths, compute_metrics, write_report

log = logging.getLogger(__name__)

TASK = "image-classification"


@dataclass(frozen=True)
class EvaluationResult:
    bundle: Path
    data_dir: Path
    model: str
    version: str
    quantization: str
    metrics: ClassificationMetrics
    mean_invoke_ms: float
    skipped_files: int
    threads: int
    report: ReportPaths | None = None
    #: What one sample is, for the summary line.
    unit: str = "images"

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "bundle": self.bundle.name,
            "data_dir": self.data_dir.name,
            "model": self.model,
            "version": self.version,
            "quantization": self.quantization,
            "threads": self.threads,
            "mean_invoke_ms": self.mean_invoke_ms,
            "skipped_files": self.skipped_files,
            **self.metrics.to_dict(),
        }
        if self.report is not None:
            document["report"] = str(self.report.directory)
        return document

    def render_text(self) -> str:
        m = self.metrics
        width = max([len("label"), *(len(label) for label in m.labels)])
        lines = [
            f"{self.model}@{self.version} ({self.quantization}) on {self.data_dir.name}: "
            f"accuracy {m.accuracy:.2%} over {m.samples} {self.unit}, macro F1 {m.macro_f1:.3f}",
            f"mean invoke {self.mean_invoke_ms:.2f} ms with {self.threads} thread(s)"
            + (f"; {self.skipped_files} unreadable file(s) skipped" if self.skipped_files else ""),
            "",
            f"{'label':<{width}}  precision  recall     F1  support",
        ]
        for c in m.per_class:
            lines.append(
                f"{c.label:<{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:5.3f}  "
                f"{c.support:7d}"
            )
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        cell = max(5, *(len(str(v)) + 1 for v in m.confusion.ravel()))
        short = [label[: cell - 1] for label in m.labels]
        lines.append(" " * width + "".join(f"{s:>{cell}}" for s in short))
        for label, row in zip(m.labels, m.confusion, strict=True):
            lines.append(f"{label:<{width}}" + "".join(f"{int(v):>{cell}}" for v in row))
        if self.report is not None:
            lines += ["", f"report: {self.report.directory}"]
        return "\n".join(lines)


def _softmax(scores: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    shifted = scores - np.max(scores, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / np.sum(exp, axis=-1, keepdims=True), dtype=np.float32)


def _image_preprocessing(manifest: Manifest) -> ImagePreprocessing:
    if manifest.task != TASK or not isinstance(manifest.preprocessing, ImagePreprocessing):
        raise BundleTaskError(
            f"bundle {manifest.model_ref} is a {manifest.task} model; "
            f"`edgewatch evaluate` with an image folder needs an {TASK} model"
        )
    return manifest.preprocessing


def evaluate_bundle(
    bundle_path: Path,
    data_dir: Path,
    threads: int = 2,
    public_key: Ed25519PublicKey | None = None,
    out_dir: Path | None = None,
) -> EvaluationResult:
    """Run every image of ``data_dir`` through the bundle the way the daemon would."""
    bundle_path = Path(bundle_path)
    data_dir = Path(data_dir)
    bundle = read_bundle(bundle_path, public_key=public_key)
    manifest = bundle.manifest
    if manifest.task == "audio-classification":
        from training.evaluate_audio import evaluate_audio_bundle

        return evaluate_audio_bundle(bundle_path, bundle, data_dir, threads=threads,
                                     out_dir=out_dir)  # fmt: skip
    spec = _image_preprocessing(manifest)
    parts = manifest.classifier_parts()
    softmax = parts is not None and parts[1].apply_softmax
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads=threads, edgetpu="auto")
    images = load_labelled_folder(data_dir, spec, label_order=manifest.labels)
    y_true = images.samples.y
    assert y_true is not None
    predicted = np.empty(len(images.samples), dtype=np.int64)
    invoke_s = 0.0
    for index, pixels in enumerate(images.samples.x):
        tensor = normalise(pixels, spec)[np.newaxis, ...]
        start = time.perf_counter()
        scores = runtime.invoke([tensor])[0]
        invoke_s += time.perf_counter() - start
        if softmax:
            scores = _softmax(scores)
        predicted[index] = int(np.argmax(scores.reshape(-1)))
    metrics = compute_metrics(y_true, predicted, manifest.labels)
    mean_ms = invoke_s * 1000.0 / max(1, len(predicted))
    report = None
    if out_dir is not None:
        report = write_report(
            Path(out_dir),
            metrics,
            title=f"{manifest.model_ref} ({manifest.quantization}) on {data_dir.name}",
            extra={"bundle": bundle_path.name, "data": data_dir.name,
                   "mean invoke ms": round(mean_ms, 3), "threads": threads},
        )
    log.info("%s: accuracy %.4f on %d images", manifest.model_ref, metrics.accuracy,
             metrics.samples)
    return EvaluationResult(
        bundle=bundle_path,
        data_dir=data_dir,
        model=manifest.name,
        version=manifest.version,
        quantization=manifest.quantization,
        metrics=metrics,
        mean_invoke_ms=mean_ms,
        skipped_files=len(images.skipped),
        threads=threads,
        report=report,
    )
