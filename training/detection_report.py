"""Detection reports: metrics, a threshold sweep, training curves and annotated pictures.

Training (the Keras model on the test split) and ``edgewatch evaluate`` (a bundle
through the device's ``Detector``) write the same files, so their figures compare:

- ``report.json`` / ``report.md``: precision, recall, F1 per class and overall, how
  predictions were matched, and why IoU figures are or are not given;
- ``threshold_sweep.png``: precision, recall and F1 against the threshold, with the
  threshold in use marked: the figure to read before changing a threshold in config;
- ``training_curves.png`` (training only): loss and validation F1 per epoch;
- ``predictions.png`` and ``samples/*.png``: pictures with the ground truth (green
  box; red when missed) and each prediction's centroid (cyan when it matched, red for a
  false positive) with its estimated box, errors first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converters.detection_metrics import DetectionMetrics, SweepPoint, TruthBox, match_image
from device.detection.objects import DetectedObject

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "training_curves.png"
SWEEP_PNG = "threshold_sweep.png"
MONTAGE_PNG = "predictions.png"
SAMPLES_DIR = "samples"
#: Annotated pictures written (errors first).
MAX_SAMPLES = 12
_TILE = 256
_GREEN, _RED, _CYAN, _WHITE = (60, 200, 60), (40, 40, 230), (230, 200, 40), (255, 255, 255)
IOU_NOTE_ESTIMATES = (
    "IoU metrics are not given: this model's decoding (centroid heatmap) estimates boxes "
    "from the cells that fired, it does not regress them, so predictions are matched by "
    "centroid (a prediction counts when its centroid falls inside a ground-truth box of "
    "its class)."
)


@dataclass(frozen=True, eq=False)
class AnnotatedImage:
    """One picture with what was there and what was found."""

    name: str
    image_bgr: np.ndarray[Any, Any]
    truths: tuple[TruthBox, ...]
    predictions: tuple[DetectedObject, ...]


@dataclass(frozen=True)
class DetectionReportPaths:
    directory: Path
    json: Path
    markdown: Path
    sweep_png: Path | None
    curves_png: Path | None
    montage_png: Path | None
    samples: tuple[Path, ...]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_detections(sample: AnnotatedImage, size: int = _TILE) -> np.ndarray[Any, Any]:
    """The picture scaled to fit ``size`` x ``size``, with truths and predictions drawn."""
    height, width = sample.image_bgr.shape[:2]
    scale = size / max(width, height)
    view = cv2.resize(
        sample.image_bgr,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    if view.ndim == 2:
        view = cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)
    view_h, view_w = view.shape[:2]
    match = match_image(sample.predictions, sample.truths)
    matched_truths = {t for _, t in match.pairs}
    matched_predictions = {p for p, _ in match.pairs}
    for index, truth in enumerate(sample.truths):
        x0, y0, x1, y1 = truth.box.to_pixels(view_w, view_h)
        colour = _GREEN if index in matched_truths else _RED
        cv2.rectangle(view, (x0, y0), (x1 - 1, y1 - 1), colour, 2)
        cv2.putText(view, truth.label, (x0 + 2, min(view_h - 2, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)  # fmt: skip
    for index, obj in enumerate(sample.predictions):
        colour = _CYAN if index in matched_predictions else _RED
        x0, y0, x1, y1 = obj.box.to_pixels(view_w, view_h)
        cv2.rectangle(view, (x0, y0), (x1 - 1, y1 - 1), colour, 1)
        cx, cy = round(obj.centroid[0] * view_w), round(obj.centroid[1] * view_h)
        cv2.circle(view, (cx, cy), 5, colour, -1, cv2.LINE_AA)
        cv2.circle(view, (cx, cy), 5, _WHITE, 1, cv2.LINE_AA)
        cv2.putText(view, f"{obj.label} {obj.score:.2f}", (x0 + 2, max(10, y0 + 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)  # fmt: skip
    return np.asarray(view, dtype=np.uint8)


def thumbnail(image_bgr: np.ndarray[Any, Any], size: int = _TILE) -> np.ndarray[Any, Any]:
    """A copy no larger than ``size`` on its long side: what a report draws on, so an
    evaluation over thousands of photos does not keep them all in memory."""
    height, width = image_bgr.shape[:2]
    scale = size / max(width, height)
    if scale >= 1.0:
        return np.array(image_bgr, copy=True)
    shrunk = cv2.resize(
        image_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )  # fmt: skip
    return np.asarray(shrunk, dtype=np.uint8)


def _pick_samples(samples: Sequence[AnnotatedImage], limit: int) -> list[AnnotatedImage]:
    """Images with mistakes first (most first), then correct ones, in input order."""

    def mistakes(sample: AnnotatedImage) -> int:
        match = match_image(sample.predictions, sample.truths)
        return len(match.false_positives) + len(match.false_negatives)

    ranked = sorted(range(len(samples)), key=lambda i: (-mistakes(samples[i]), i))
    return [samples[i] for i in ranked[:limit]]


def _write_samples(
    directory: Path, samples: Sequence[AnnotatedImage]
) -> tuple[Path | None, tuple[Path, ...]]:
    chosen = _pick_samples(samples, MAX_SAMPLES)
    if not chosen:
        return None, ()
    folder = directory / SAMPLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tiles: list[np.ndarray[Any, Any]] = []
    paths: list[Path] = []
    for sample in chosen:
        drawn = draw_detections(sample)
        stem = Path(sample.name).stem or "image"
        path = folder / f"{stem}.png"
        cv2.imwrite(str(path), drawn)
        paths.append(path)
        tile = np.zeros((_TILE, _TILE, 3), dtype=np.uint8)
        tile[: drawn.shape[0], : drawn.shape[1]] = drawn
        tiles.append(tile)
    columns = min(4, len(tiles))
    while len(tiles) % columns:
        tiles.append(np.zeros((_TILE, _TILE, 3), dtype=np.uint8))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    montage = directory / MONTAGE_PNG
    cv2.imwrite(str(montage), np.vstack(rows))
    return montage, tuple(paths)


def plot_sweep(points: Sequence[SweepPoint], chosen: float, path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        thresholds = [p.threshold for p in points]
        for key, style in (("precision", "--"), ("recall", ":"), ("f1", "-")):
            ax.plot(thresholds, [getattr(p, key) for p in points], style, marker="o",
                    markersize=3, label=key)  # fmt: skip
        ax.axvline(chosen, color="grey", linewidth=1, label=f"threshold {chosen:.2f}")
        ax.set_xlabel("threshold")
        ax.set_ylim(0.0, 1.02)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_curves(history: Mapping[str, Sequence[float]], path: Path) -> Path | None:
    """Loss (training, validation) and validation F1 per epoch."""
    if not history.get("loss"):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for key, style in (("loss", "-"), ("val_loss", "--")):
            if history.get(key):
                values = history[key]
                axes[0].plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    marker="o",
                    markersize=3,
                    label="validation" if key != "loss" else "training",
                )
        if history.get("val_f1"):
            values = history["val_f1"]
            axes[1].plot(range(1, len(values) + 1), values, "-", marker="o", markersize=3,
                         label="validation F1 (threshold 0.5)")  # fmt: skip
            axes[1].set_ylim(0.0, 1.02)
        for ax, name in zip(axes, ("weighted cell loss", "F1"), strict=True):
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _markdown(
    title: str,
    metrics: DetectionMetrics,
    extra: Mapping[str, Any],
    *,
    iou_note: str,
    iou: DetectionMetrics | None,
    paths: Mapping[str, Path | None],
) -> str:
    overall = metrics.overall
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in extra.items()]
    lines += [
        f"- **images**: {metrics.images}",
        f"- **precision** {overall.precision:.4f}, **recall** {overall.recall:.4f}, "
        f"**F1** {overall.f1:.4f} (matched by {metrics.by})",
        "",
        "| class | precision | recall | F1 | objects | TP | FP | FN |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in (*metrics.per_class, overall):
        lines.append(
            f"| {c.label} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} "
            f"| {c.true_positives} | {c.false_positives} | {c.false_negatives} |"
        )
    lines += ["", iou_note]
    if iou is not None:
        lines.append(
            f"IoU >= 0.5: precision {iou.precision:.4f}, recall {iou.recall:.4f}, F1 {iou.f1:.4f}"
        )
    captions = {
        SWEEP_PNG: "threshold sweep",
        CURVES_PNG: "training curves",
        MONTAGE_PNG: "predictions (green: ground truth, red box: missed; dot: centroid, "
        "cyan matched, red false positive)",
    }
    for name, caption in captions.items():
        if paths.get(name) is not None:
            lines += ["", f"![{caption}]({name})", "", f"*{caption}*"]
    return "\n".join(lines) + "\n"


def write_detection_report(
    directory: Path,
    metrics: DetectionMetrics,
    title: str,
    *,
    samples: Sequence[AnnotatedImage] = (),
    sweep: Sequence[SweepPoint] = (),
    threshold: float | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
    iou: DetectionMetrics | None = None,
    iou_note: str = IOU_NOTE_ESTIMATES,
    extra: Mapping[str, Any] | None = None,
) -> DetectionReportPaths:
    """Write the report files (see the module docstring) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    details = dict(extra or {})
    sweep_png = None
    if sweep:
        sweep_png = plot_sweep(
            sweep, threshold if threshold is not None else 0.5, directory / SWEEP_PNG, title
        )
    curves_png = plot_curves(history, directory / CURVES_PNG) if history else None
    montage, sample_paths = _write_samples(directory, samples)
    document: dict[str, Any] = {
        "title": title,
        **details,
        **metrics.to_dict(),
        "iou_note": iou_note,
        "iou_metrics": iou.to_dict() if iou is not None else None,
        "threshold": threshold,
        "threshold_sweep": [asdict(point) for point in sweep],
        "samples": [path.relative_to(directory).as_posix() for path in sample_paths],
    }
    if history:
        document["history"] = {k: [float(v) for v in vs] for k, vs in history.items()}
    json_path = directory / REPORT_JSON
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    markdown = _markdown(title, metrics, details, iou_note=iou_note, iou=iou, paths={
        SWEEP_PNG: sweep_png, CURVES_PNG: curves_png, MONTAGE_PNG: montage,
    })  # fmt: skip
    md_path = directory / REPORT_MD
    md_path.write_text(markdown, encoding="utf-8")
    log.info("detection report written to %s", directory)
    return DetectionReportPaths(
        directory=directory,
        json=json_path,
        markdown=md_path,
        sweep_png=sweep_png,
        curves_png=curves_png,
        montage_png=montage,
        samples=sample_paths,
    )
