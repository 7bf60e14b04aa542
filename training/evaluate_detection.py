"""`edgewatch evaluate FILE.ewm DIR` for object detectors, measured the device's way.

The bundle is read and verified by the device's reader and run by the device's
``Detector`` (tensor check and golden smoke test included): each picture of
``DIR/images`` is decoded to BGR as a camera frame would be, resized, quantized,
invoked and decoded exactly as on a Pi, and the objects are matched to
``DIR/boxes.csv`` (``converters.detection_metrics``). Classes in the CSV that the
bundle does not know are an error naming the row. TensorFlow is never imported.

Matching is by centroid, the only fair rule for a centroid heatmap, whose boxes are
estimates; IoU figures are added only for a decoder that regresses real boxes, and
the report says which applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tqdm.auto import tqdm

from converters.detection_metrics import (
    DetectionMetrics,
    SweepPoint,
    TruthBox,
    detection_metrics,
    threshold_sweep,
)
from device.bundle.manifest import HeatmapDecoding
from device.bundle.reader import read_bundle
from device.detection.detector import Detector
from device.detection.objects import DetectedObject
from device.errors import BundleTaskError
from training.datasets.boxes import iter_box_images, scan_box_folder
from training.detection_report import (
    IOU_NOTE_ESTIMATES,
    AnnotatedImage,
    DetectionReportPaths,
    thumbnail,
    write_detection_report,
)

log = logging.getLogger(__name__)

TASK = "object-detection"
IOU_NOTE_BOXES = "Boxes are regressed by the model: IoU >= 0.5 figures are given too."


@dataclass(frozen=True)
class DetectionEvaluation:
    bundle: Path
    data_dir: Path
    model: str
    version: str
    quantization: str
    metrics: DetectionMetrics
    #: Matched by IoU >= 0.5; None when the bundle's boxes are estimates.
    iou_metrics: DetectionMetrics | None
    thresholds: dict[str, float]
    sweep: tuple[SweepPoint, ...]
    mean_invoke_ms: float
    mean_detect_ms: float
    threads: int
    report: DetectionReportPaths | None = None

    @property
    def f1(self) -> float:
        return self.metrics.f1

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "bundle": self.bundle.name,
            "data_dir": self.data_dir.name,
            "model": self.model,
            "version": self.version,
            "quantization": self.quantization,
            "threads": self.threads,
            "thresholds": self.thresholds,
            "mean_invoke_ms": self.mean_invoke_ms,
            "mean_detect_ms": self.mean_detect_ms,
            **self.metrics.to_dict(),
            "iou_metrics": self.iou_metrics.to_dict() if self.iou_metrics else None,
            "iou_note": IOU_NOTE_BOXES if self.iou_metrics else IOU_NOTE_ESTIMATES,
            "threshold_sweep": [
                {"threshold": p.threshold, "precision": p.precision, "recall": p.recall,
                 "f1": p.f1}
                for p in self.sweep
            ],
        }  # fmt: skip
        if self.report is not None:
            document["report"] = str(self.report.directory)
        return document

    def render_text(self) -> str:
        m = self.metrics
        overall = m.overall
        width = max(len("class"), *(len(c.label) for c in m.per_class))
        lines = [
            f"{self.model}@{self.version} ({self.quantization}) on {self.data_dir.name}: "
            f"precision {overall.precision:.3f}, recall {overall.recall:.3f}, "
            f"F1 {overall.f1:.3f} over {m.images} images ({overall.support} objects), "
            f"matched by {m.by}",
            f"mean invoke {self.mean_invoke_ms:.2f} ms, whole detect {self.mean_detect_ms:.2f} "
            f"ms with {self.threads} thread(s); thresholds "
            + ", ".join(f"{k} {v:.2f}" for k, v in self.thresholds.items()),
            "",
            f"{'class':<{width}}  precision  recall     F1  objects    TP    FP    FN",
        ]
        for c in (*m.per_class, overall):
            lines.append(
                f"{c.label:<{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:5.3f}  "
                f"{c.support:7d}  {c.true_positives:4d}  {c.false_positives:4d}  "
                f"{c.false_negatives:4d}"
            )
        lines.append("")
        if self.iou_metrics is not None:
            iou = self.iou_metrics
            lines.append(f"IoU >= 0.5: precision {iou.precision:.3f}, recall {iou.recall:.3f}, "
                         f"F1 {iou.f1:.3f}")  # fmt: skip
        else:
            lines.append("no IoU figures: this decoder's boxes are estimates (centroid heatmap)")
        if self.sweep:
            best = max(self.sweep, key=lambda p: p.f1)
            lines.append(f"best F1 over the threshold sweep: {best.f1:.3f} at {best.threshold:.2f}")
        if self.report is not None:
            lines += ["", f"report: {self.report.directory}"]
        return "\n".join(lines)


def evaluate_detection_bundle(
    bundle_path: Path,
    data_dir: Path,
    threads: int = 2,
    public_key: Ed25519PublicKey | None = None,
    out_dir: Path | None = None,
) -> DetectionEvaluation:
    """Run every image of ``data_dir`` through the bundle's ``Detector``."""
    bundle_path, data_dir = Path(bundle_path), Path(data_dir)
    bundle = read_bundle(bundle_path, public_key=public_key)
    manifest = bundle.manifest
    if manifest.task != TASK:
        raise BundleTaskError(
            f"bundle {manifest.model_ref} is a {manifest.task} model; this evaluation needs "
            f"an {TASK} model"
        )
    detector = Detector.load(bundle, threads=threads, edgetpu="auto")
    folder = scan_box_folder(data_dir, detector.object_labels)
    predictions: list[tuple[DetectedObject, ...]] = []
    truths: list[tuple[TruthBox, ...]] = []
    grids: list[np.ndarray[Any, Any]] = []
    samples: list[AnnotatedImage] = []
    invoke_ms = detect_ms = 0.0
    for image, frame in tqdm(iter_box_images(folder), total=len(folder.images),
                             desc="evaluating", unit="image", disable=None):  # fmt: skip
        result = detector.detect(frame)
        invoke_ms += result.invoke_ms
        detect_ms += result.inference_ms
        truth = tuple(TruthBox(b.label, b.box) for b in image.boxes)
        predictions.append(result.objects)
        truths.append(truth)
        grids.append(result.probabilities)
        if out_dir is not None:
            samples.append(AnnotatedImage(image.name, thumbnail(frame), truth, result.objects))
    pairs = list(zip(predictions, truths, strict=True))
    metrics = detection_metrics(pairs, detector.object_labels)
    # A centroid heatmap's boxes are always estimates; a decoder that regresses boxes
    # would give box_is_estimate=False objects, and IoU figures with them.
    estimates = isinstance(detector.decoding, HeatmapDecoding) or any(
        obj.box_is_estimate for objs in predictions for obj in objs
    )
    iou = None if estimates else detection_metrics(pairs, detector.object_labels, by="iou")
    labels = detector.labels
    sweep = threshold_sweep(
        grids, truths, labels, labels.index(detector.decoding.background_label),
        box_scale=detector.decoding.box_scale,
    )  # fmt: skip
    count = max(1, len(predictions))
    report = None
    if out_dir is not None:
        thresholds = set(detector.thresholds.values())
        report = write_detection_report(
            Path(out_dir),
            metrics,
            title=f"{manifest.model_ref} ({manifest.quantization}) on {data_dir.name}",
            samples=samples,
            sweep=sweep,
            threshold=thresholds.pop() if len(thresholds) == 1 else None,
            iou=iou,
            iou_note=IOU_NOTE_ESTIMATES if iou is None else IOU_NOTE_BOXES,
            extra={"bundle": bundle_path.name, "data": data_dir.name,
                   "thresholds": detector.thresholds, "threads": threads,
                   "mean invoke ms": round(invoke_ms / count, 3),
                   "mean detect ms": round(detect_ms / count, 3)},
        )  # fmt: skip
    log.info("%s: F1 %.4f (precision %.4f, recall %.4f) on %d images", manifest.model_ref,
             metrics.f1, metrics.precision, metrics.recall, metrics.images)  # fmt: skip
    return DetectionEvaluation(
        bundle=bundle_path,
        data_dir=data_dir,
        model=manifest.name,
        version=manifest.version,
        quantization=manifest.quantization,
        metrics=metrics,
        iou_metrics=iou,
        thresholds=dict(detector.thresholds),
        sweep=sweep,
        mean_invoke_ms=invoke_ms / count,
        mean_detect_ms=detect_ms / count,
        threads=threads,
        report=report,
    )
