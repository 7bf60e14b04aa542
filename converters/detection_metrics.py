"""Detection precision, recall and F1: predictions matched one-to-one to ground truth.

Matching is greedy by score, one to one, within a class: the best-scored prediction
takes a still unmatched ground-truth box first. ``by="centroid"`` (the rule for a
centroid detector, whose boxes are estimates) matches a prediction to a box when the
prediction's centroid falls inside the box (or, stricter, inside its middle ``core``
share: large boxes make "anywhere inside" lenient, so reports add the figure for the
middle half), choosing the box whose centre is nearest when several contain it;
``by="iou"`` (for detectors that regress real boxes) needs an intersection over union
of at least ``iou_threshold`` and takes the best overlap.
Unmatched predictions are false positives, unmatched boxes false negatives.

Training (validation F1 each epoch, the threshold choice), the converter's parity
check and ``edgewatch evaluate`` all count through this module; it lives in
converters/ because the converter needs it and the arrows point training → converters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from device.detection.decode import decode_heatmap
from device.detection.objects import DetectedObject, NormBox

MatchBy = Literal["centroid", "iou"]
#: The ``core`` of the stricter centroid figure reports add: the middle half of a box.
STRICT_CORE = 0.5
#: Thresholds tried when choosing one on validation data, and in report sweeps.
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.2 + 0.05 * i, 2) for i in range(15))


@dataclass(frozen=True)
class TruthBox:
    """One ground-truth object, normalised to its image."""

    label: str
    box: NormBox


@dataclass(frozen=True)
class ImageMatch:
    """How one image's predictions and ground truth paired up (indices into each)."""

    pairs: tuple[tuple[int, int], ...]
    false_positives: tuple[int, ...]
    false_negatives: tuple[int, ...]


def _inside(point: tuple[float, float], box: NormBox, core: float) -> bool:
    """Whether ``point`` lies in ``box`` shrunk about its centre to ``core`` of its size."""
    cx, cy = box.centroid
    half_w, half_h = box.width * core / 2.0, box.height * core / 2.0
    return abs(point[0] - cx) <= half_w + 1e-12 and abs(point[1] - cy) <= half_h + 1e-12


def match_image(
    predictions: Sequence[DetectedObject],
    truths: Sequence[TruthBox],
    by: MatchBy = "centroid",
    iou_threshold: float = 0.5,
    core: float = 1.0,
) -> ImageMatch:
    """Pair predictions with ground truth (see the module docstring). ``core`` < 1
    makes centroid matching stricter: the centroid must fall in the middle ``core``
    share of the box's width and height."""
    order = sorted(range(len(predictions)), key=lambda i: predictions[i].score, reverse=True)
    taken: set[int] = set()
    pairs: list[tuple[int, int]] = []
    unmatched: list[int] = []
    for p in order:
        prediction = predictions[p]
        best: int | None = None
        best_key = -np.inf
        for t, truth in enumerate(truths):
            if t in taken or truth.label != prediction.label:
                continue
            if by == "centroid":
                if not _inside(prediction.centroid, truth.box, core):
                    continue
                tx, ty = truth.box.centroid
                px, py = prediction.centroid
                key = -((tx - px) ** 2 + (ty - py) ** 2)
            else:
                key = prediction.box.iou(truth.box)
                if key < iou_threshold:
                    continue
            if key > best_key:
                best, best_key = t, key
        if best is None:
            unmatched.append(p)
        else:
            taken.add(best)
            pairs.append((p, best))
    missed = tuple(t for t in range(len(truths)) if t not in taken)
    return ImageMatch(tuple(pairs), tuple(sorted(unmatched)), missed)


@dataclass(frozen=True)
class ClassCounts:
    label: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        present = self.true_positives + self.false_negatives
        return self.true_positives / present if present else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    @property
    def support(self) -> int:
        return self.true_positives + self.false_negatives

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
            "true_positives": self.true_positives,
            "false_positives": self.false_positives,
            "false_negatives": self.false_negatives,
        }


@dataclass(frozen=True)
class DetectionMetrics:
    """Per-class counts and the overall (micro-averaged) figures of one run."""

    by: MatchBy
    per_class: tuple[ClassCounts, ...]
    images: int
    #: Centroid matching's box share (1: anywhere in the box).
    core: float = 1.0

    @property
    def overall(self) -> ClassCounts:
        return ClassCounts(
            "all",
            sum(c.true_positives for c in self.per_class),
            sum(c.false_positives for c in self.per_class),
            sum(c.false_negatives for c in self.per_class),
        )

    @property
    def precision(self) -> float:
        return self.overall.precision

    @property
    def recall(self) -> float:
        return self.overall.recall

    @property
    def f1(self) -> float:
        return self.overall.f1

    def to_dict(self) -> dict[str, Any]:
        overall = self.overall
        return {
            "matching": self.by,
            "matching_core": self.core,
            "images": self.images,
            "precision": overall.precision,
            "recall": overall.recall,
            "f1": overall.f1,
            "true_positives": overall.true_positives,
            "false_positives": overall.false_positives,
            "false_negatives": overall.false_negatives,
            "per_class": [c.to_dict() for c in self.per_class],
        }


def detection_metrics(
    results: Iterable[tuple[Sequence[DetectedObject], Sequence[TruthBox]]],
    labels: Sequence[str],
    by: MatchBy = "centroid",
    iou_threshold: float = 0.5,
    core: float = 1.0,
) -> DetectionMetrics:
    """Count matches over (predictions, ground truth) per image, for ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), 3), dtype=np.int64)
    images = 0
    for predictions, truths in results:
        images += 1
        match = match_image(predictions, truths, by, iou_threshold, core)
        for p, _ in match.pairs:
            counts[index[predictions[p].label], 0] += 1
        for p in match.false_positives:
            counts[index[predictions[p].label], 1] += 1
        for t in match.false_negatives:
            counts[index[truths[t].label], 2] += 1
    per_class = tuple(
        ClassCounts(label, int(c[0]), int(c[1]), int(c[2]))
        for label, c in zip(labels, counts, strict=True)
    )
    return DetectionMetrics(by=by, per_class=per_class, images=images, core=core)


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    precision: float
    recall: float
    f1: float


def threshold_sweep(
    probabilities: Sequence[np.ndarray[Any, Any]],
    truths: Sequence[Sequence[TruthBox]],
    labels: Sequence[str],
    background_index: int,
    *,
    box_scale: float = 1.0,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> tuple[SweepPoint, ...]:
    """Overall precision, recall and F1 at each threshold (one for every label), from
    per-image probability grids: the figures behind a threshold choice."""
    objects = [label for i, label in enumerate(labels) if i != background_index]
    points = []
    for threshold in thresholds:
        limits = np.full(len(labels), threshold, dtype=np.float32)
        decoded = [
            decode_heatmap(grid, labels, limits, background_index=background_index,
                           box_scale=box_scale)
            for grid in probabilities
        ]  # fmt: skip
        metrics = detection_metrics(zip(decoded, truths, strict=True), objects)
        points.append(SweepPoint(threshold, metrics.precision, metrics.recall, metrics.f1))
    return tuple(points)


def best_threshold(
    points: Sequence[SweepPoint], tolerance: float = 0.0, prefer: float = 0.5
) -> SweepPoint:
    """The threshold to use: among the points within ``tolerance`` of the highest F1,
    the one nearest ``prefer`` (the higher on a tie). With a small validation set, F1
    moves by a whole object's worth between thresholds; a tolerance of about one
    object keeps the threshold from wandering toward an extreme on such noise."""
    top = max(point.f1 for point in points)
    near = [point for point in points if point.f1 >= top - tolerance - 1e-9]
    return min(near, key=lambda point: (round(abs(point.threshold - prefer), 6), -point.threshold))
