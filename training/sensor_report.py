"""The report of a sensor-anomaly training run: curves, the score distribution and the
threshold, as JSON, Markdown and PNGs (``report/`` in the trained-model folder)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "curves.png"
SCORES_PNG = "scores.png"


@dataclass(frozen=True)
class SensorReportPaths:
    directory: Path
    json: Path
    markdown: Path
    curves_png: Path | None
    scores_png: Path | None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss(history: Mapping[str, Sequence[float]], path: Path) -> Path | None:
    """Training and validation loss (MSE, z units) per epoch, log scale."""
    if not history.get("loss"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for key, name, style in (("loss", "training", "-"), ("val_loss", "validation", "--")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3,
                        label=name)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("reconstruction MSE")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_scores(scores: np.ndarray[Any, Any], threshold: float, path: Path, title: str) -> Path:
    """Histogram of the calibration windows' scores with the threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        positive = np.asarray(scores, dtype=np.float64)
        positive = positive[positive > 0]
        top = max(float(positive.max()) if positive.size else threshold, threshold) * 1.2
        low = float(positive.min()) if positive.size else threshold / 100
        bins = np.geomspace(max(low, 1e-6), top, 60)
        ax.hist(positive, bins=bins, color="tab:blue", alpha=0.8, label="training windows")
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
        ax.set_xscale("log")
        ax.set_xlabel("anomaly score (window MSE)")
        ax.set_ylabel("windows")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def write_sensor_report(
    directory: Path,
    *,
    title: str,
    history: Mapping[str, Sequence[float]],
    scores: np.ndarray[Any, Any],
    threshold: float,
    details: Mapping[str, Any],
    plots: bool = True,
) -> SensorReportPaths:
    directory.mkdir(parents=True, exist_ok=True)
    curves = plot_loss(history, directory / CURVES_PNG) if plots else None
    histogram = plot_scores(scores, threshold, directory / SCORES_PNG, title) if plots else None
    quantiles = {
        f"p{q}": float(np.quantile(scores, q / 100)) for q in (50, 90, 99, 99.5, 99.9)
    }
    document = {
        "title": title,
        **details,
        "threshold": threshold,
        "score_quantiles": quantiles,
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
    }
    json_path = directory / REPORT_JSON
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    lines = [f"# {title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in details.items()]
    lines += [f"- **threshold**: {threshold:.6g}", ""]
    lines += ["| score quantile | value |", "|---|---:|"]
    lines += [f"| {key} | {value:.6g} |" for key, value in quantiles.items()]
    if histogram is not None:
        lines += ["", f"![scores]({SCORES_PNG})"]
    if curves is not None:
        lines += ["", f"![training curves]({CURVES_PNG})"]
    md_path = directory / REPORT_MD
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("report written to %s", directory)
    return SensorReportPaths(directory, json_path, md_path, curves, histogram)
