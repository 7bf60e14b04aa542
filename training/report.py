"""Classification reports: metrics, confusion matrix and training curves, as files.

Training (Keras predictions on the test split) and evaluation (a bundle's predictions
through the device runtime) report the same way, so their numbers can be compared
side by side. Metrics are computed with numpy alone; plots use matplotlib's Agg backend
so reports render on a headless workstation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.errors import DatasetError

log = logging.getLogger(__name__)

IntArray = np.ndarray[Any, np.dtype[np.int64]]
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "training_curves.png"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }


@dataclass(frozen=True)
class ClassificationMetrics:
    """Top-1 metrics; ``confusion[i, j]`` counts samples of label i predicted as j."""

    labels: tuple[str, ...]
    accuracy: float
    per_class: tuple[ClassMetrics, ...]
    confusion: IntArray
    samples: int

    @property
    def macro_f1(self) -> float:
        supported = [m.f1 for m in self.per_class if m.support > 0]
        return float(np.mean(supported)) if supported else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "samples": self.samples,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": [m.to_dict() for m in self.per_class],
            "confusion_matrix": self.confusion.tolist(),
        }


@dataclass(frozen=True)
class ReportPaths:
    directory: Path
    json: Path
    markdown: Path
    confusion_png: Path
    curves_png: Path | None


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0


def compute_metrics(
    y_true: Sequence[int] | np.ndarray[Any, Any],
    y_pred: Sequence[int] | np.ndarray[Any, Any],
    labels: Sequence[str],
) -> ClassificationMetrics:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    true = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    n = len(labels)
    if true.shape != pred.shape:
        raise DatasetError(f"{true.size} true labels but {pred.size} predictions")
    for name, values in (("true", true), ("predicted", pred)):
        if values.size and (values.min() < 0 or values.max() >= n):
            raise DatasetError(f"a {name} label index is outside the {n} labels")
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    per_class = []
    for i, label in enumerate(labels):
        tp = float(confusion[i, i])
        precision = _ratio(tp, float(confusion[:, i].sum()))
        recall = _ratio(tp, float(confusion[i, :].sum()))
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class.append(ClassMetrics(label, precision, recall, f1, int(confusion[i, :].sum())))
    return ClassificationMetrics(
        labels=tuple(labels),
        accuracy=_ratio(float(np.trace(confusion)), float(true.size)),
        per_class=tuple(per_class),
        confusion=confusion,
        samples=int(true.size),
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: ClassificationMetrics, path: Path, title: str) -> Path:
    """A confusion matrix with counts in the cells, rows normalised for the colour only."""
    plt = _pyplot()
    n = len(metrics.labels)
    side = min(16.0, max(4.5, 0.6 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    try:
        rows = metrics.confusion.sum(axis=1, keepdims=True)
        shade = np.divide(
            metrics.confusion, np.maximum(rows, 1), dtype=np.float64
        )
        ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(n), labels=metrics.labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=metrics.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}\naccuracy {metrics.accuracy:.1%} on {metrics.samples} samples")
        font = max(6, 12 - n // 3)
        for i in range(n):
            for j in range(n):
                count = int(metrics.confusion[i, j])
                ax.text(
                    j, i, str(count), ha="center", va="center", fontsize=font,
                    color="white" if shade[i, j] > 0.5 else "black",
                )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_history(history: Mapping[str, Sequence[float]], path: Path) -> Path | None:
    """Loss and accuracy per epoch, training against validation; None without history."""
    if not history.get("loss"):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = history.get(key)
                if values:
                    epochs = range(1, len(values) + 1)
                    name = "validation" if key.startswith("val_") else "training"
                    ax.plot(epochs, values, style, marker="o", markersize=3, label=name)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _markdown(
    title: str, metrics: ClassificationMetrics, extra: Mapping[str, Any], curves: bool
) -> str:
    lines = [f"# {title}", ""]
    for key, value in extra.items():
        lines.append(f"- **{key}**: {value}")
    lines += [
        f"- **accuracy**: {metrics.accuracy:.4f} ({metrics.samples} samples)",
        f"- **macro F1**: {metrics.macro_f1:.4f}",
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in metrics.per_class:
        lines.append(
            f"| {m.label} | {m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} | {m.support} |"
        )
    lines += ["", f"![confusion matrix]({CONFUSION_PNG})"]
    if curves:
        lines += ["", f"![training curves]({CURVES_PNG})"]
    return "\n".join(lines) + "\n"


def write_report(
    directory: Path,
    metrics: ClassificationMetrics,
    title: str,
    history: Mapping[str, Sequence[float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ReportPaths:
    """Write report.json, report.md, the confusion PNG and (with a history) the curves."""
    directory.mkdir(parents=True, exist_ok=True)
    details = dict(extra or {})
    confusion_png = plot_confusion(metrics, directory / CONFUSION_PNG, title)
    curves_png = plot_history(history, directory / CURVES_PNG) if history else None
    document: dict[str, Any] = {"title": title, **details, **metrics.to_dict()}
    if history:
        document["history"] = {k: [float(v) for v in vs] for k, vs in history.items()}
    json_path = directory / REPORT_JSON
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    md_path = directory / REPORT_MD
    md_path.write_text(_markdown(title, metrics, details, curves_png is not None), "utf-8")
    log.info("report written to %s", directory)
    return ReportPaths(
        directory=directory,
        json=json_path,
        markdown=md_path,
        confusion_png=confusion_png,
        curves_png=curves_png,
    )
