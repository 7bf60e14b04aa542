"""Boxes → the per-cell training target of a centroid heatmap detector.

FOMO's idea: instead of regressing boxes, classify each cell of a coarse grid (1/8 of
the input) as "the centre of an object of class k" or background. Here the cells whose
centres fall in the middle ``core`` share of a box (and always the cell holding the
box's centre) are that box's object cells, so a large object gets a blob the decoder
can size, and a small one a single cell. Smaller boxes are drawn last and win where
objects overlap. Object cells weigh ``object_weight`` in the loss, because a frame has
far more background cells than object cells; cells of ignored regions weigh 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from device.detection.objects import NormBox
from training.detection_augment import ClassBox

IntGrid = np.ndarray[Any, np.dtype[np.int32]]
FloatGrid = np.ndarray[Any, np.dtype[np.float32]]


def _cell_range(low: float, high: float, cells: int) -> tuple[int, int]:
    """Cells whose centres (i + 0.5) / cells lie in [low, high]: [first, last + 1)."""
    first = max(0, int(np.ceil(low * cells - 0.5)))
    last = min(cells - 1, int(np.floor(high * cells - 0.5)))
    return first, last + 1


def heatmap_targets(
    boxes: Sequence[ClassBox],
    ignored: Sequence[NormBox],
    grid: tuple[int, int],
    *,
    core: float,
    object_weight: float,
) -> tuple[IntGrid, FloatGrid]:
    """(class per cell, 0 = background; loss weight per cell) for a (rows, cols) grid."""
    rows, cols = grid
    labels = np.zeros((rows, cols), dtype=np.int32)
    weights = np.ones((rows, cols), dtype=np.float32)
    for box in ignored:
        r0, r1 = _cell_range(box.y_min, box.y_max, rows)
        c0, c1 = _cell_range(box.x_min, box.x_max, cols)
        weights[r0:r1, c0:c1] = 0.0
    for label, box in sorted(boxes, key=lambda item: item[1].area, reverse=True):
        cx, cy = box.centroid
        half_w, half_h = box.width * core / 2.0, box.height * core / 2.0
        r0, r1 = _cell_range(cy - half_h, cy + half_h, rows)
        c0, c1 = _cell_range(cx - half_w, cx + half_w, cols)
        labels[r0:r1, c0:c1] = label
        weights[r0:r1, c0:c1] = object_weight
        row = min(rows - 1, int(cy * rows))
        col = min(cols - 1, int(cx * cols))
        labels[row, col] = label
        weights[row, col] = object_weight
    return labels, weights
