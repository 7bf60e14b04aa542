"""A centroid heatmap (per-cell class probabilities) → the objects in it.

One function, used by the device's ``Detector`` and by evaluation and training alike,
so an F1 printed on the workstation is computed from exactly the objects a Pi would
publish. The rule (see ``HeatmapDecoding`` in the manifest): per label, the cells at
or above that label's threshold (and for which it is the most probable label besides
the background) that touch, diagonals included, form one object; its
score is the highest probability among them, its centroid their probability-weighted
centre, its box their extent (grown by ``box_scale`` about its middle), flagged as an
estimate. Connected components come from OpenCV, the sums from ``np.bincount``: a
12x12 grid decodes in tens of microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from device.bundle.manifest import HeatmapDecoding
from device.detection.objects import DetectedObject, NormBox

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


def softmax_cells(logits: np.ndarray[Any, Any]) -> FloatArray:
    """Softmax over the last axis (the classes of each cell)."""
    values = np.asarray(logits, dtype=np.float32)
    shifted = values - np.max(values, axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted, axis=-1, keepdims=True)
    return np.asarray(shifted, dtype=np.float32)


def decode_heatmap(
    probabilities: np.ndarray[Any, Any],
    labels: Sequence[str],
    thresholds: Sequence[float] | np.ndarray[Any, Any],
    *,
    background_index: int,
    box_scale: float = 1.0,
) -> list[DetectedObject]:
    """Objects of one (rows, cols, classes) probability grid, best score first.

    ``thresholds`` holds one value per channel (the background's is ignored); a cell
    belongs to label k when its probability for k is at or above ``thresholds[k]`` and
    k is the cell's most probable label besides the background (so one spot never
    becomes two objects of different labels).
    """
    grid = np.asarray(probabilities, dtype=np.float32)
    if grid.ndim == 4 and grid.shape[0] == 1:
        grid = grid[0]
    if grid.ndim != 3 or grid.shape[2] != len(labels):
        raise ValueError(
            f"expected a (rows, cols, {len(labels)}) probability grid, got {list(grid.shape)}"
        )
    limits = np.asarray(thresholds, dtype=np.float32)
    if limits.shape != (len(labels),):
        raise ValueError(f"need one threshold per label ({len(labels)}), got {limits.shape}")
    classes = grid.shape[2]
    peaks = grid.reshape(-1, classes).max(axis=0)
    candidates = [int(k) for k in np.flatnonzero(peaks >= limits) if int(k) != background_index]
    objects: list[DetectedObject] = []
    best: np.ndarray[Any, Any] | None = None
    if len(candidates) > 1:
        # A cell speaks for one label at most: its most probable one besides background.
        others = grid.copy()
        others[..., background_index] = -1.0
        best = np.argmax(others, axis=2)
    for k in candidates:
        channel = grid[..., k]
        mask = channel >= limits[k]
        if best is not None:
            mask &= best == k
        objects.extend(_components(channel, mask, labels[k], box_scale))
    objects.sort(key=lambda obj: obj.score, reverse=True)
    return objects


def _components(
    channel: FloatArray, mask: np.ndarray[Any, np.dtype[np.bool_]], label: str, box_scale: float
) -> list[DetectedObject]:
    rows, cols = channel.shape
    count, components, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    flat = components.ravel()
    inside = np.flatnonzero(flat > 0)
    ids = flat[inside].astype(np.intp)
    weights = channel.ravel()[inside].astype(np.float64)
    cell_y, cell_x = np.divmod(inside, cols)
    total = np.bincount(ids, weights, minlength=count)
    cells = np.bincount(ids, minlength=count).astype(np.float64)
    # A zero threshold admits zero-probability cells; weigh them equally then.
    uniform = total <= 0.0
    weighted_x = np.bincount(ids, weights * (cell_x + 0.5), minlength=count)
    weighted_y = np.bincount(ids, weights * (cell_y + 0.5), minlength=count)
    plain_x = np.bincount(ids, cell_x + 0.5, minlength=count)
    plain_y = np.bincount(ids, cell_y + 0.5, minlength=count)
    denominator = np.where(uniform, cells, total)
    centre_x = np.where(uniform, plain_x, weighted_x) / np.maximum(denominator, 1e-12) / cols
    centre_y = np.where(uniform, plain_y, weighted_y) / np.maximum(denominator, 1e-12) / rows
    scores = np.zeros(count, dtype=np.float64)
    np.maximum.at(scores, ids, weights)
    found = []
    for index in range(1, count):
        left, top, width, height = (int(v) for v in stats[index, :4])
        box = _grown_box(
            left / cols, top / rows, (left + width) / cols, (top + height) / rows, box_scale
        )
        found.append(
            DetectedObject(
                label=label,
                score=float(scores[index]),
                box=box,
                box_is_estimate=True,
                center=(_clip(float(centre_x[index])), _clip(float(centre_y[index]))),
            )
        )
    return found


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))


def _grown_box(x0: float, y0: float, x1: float, y1: float, scale: float) -> NormBox:
    if scale != 1.0:
        mid_x, mid_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        half_w, half_h = (x1 - x0) * scale / 2.0, (y1 - y0) * scale / 2.0
        x0, x1, y0, y1 = mid_x - half_w, mid_x + half_w, mid_y - half_h, mid_y + half_h
    return NormBox(_clip(x0), _clip(y0), _clip(x1), _clip(y1))


class HeatmapDecoder:
    """A detector's output tensor → (probabilities, objects), with fixed labels, decoding
    and thresholds. The converter's parity check, evaluation and the device's
    ``Detector`` all decode through this class."""

    def __init__(
        self,
        labels: Sequence[str],
        decoding: HeatmapDecoding,
        thresholds: Sequence[float] | np.ndarray[Any, Any],
    ) -> None:
        self.labels = tuple(labels)
        self.decoding = decoding
        self.background_index = self.labels.index(decoding.background_label)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)

    def probabilities(self, output: np.ndarray[Any, Any]) -> FloatArray:
        """(rows, cols, classes) probabilities of one float (dequantized) output."""
        grid = np.asarray(output, dtype=np.float32)
        if grid.ndim == 4:
            grid = grid[0]
        return softmax_cells(grid) if self.decoding.apply_softmax else grid

    def __call__(self, output: np.ndarray[Any, Any]) -> tuple[FloatArray, list[DetectedObject]]:
        probabilities = self.probabilities(output)
        objects = decode_heatmap(
            probabilities,
            self.labels,
            self.thresholds,
            background_index=self.background_index,
            box_scale=self.decoding.box_scale,
        )
        return probabilities, objects
