"""Held-out images of an object-detection model folder, with their boxes.

A detector's ``heldout.npz`` holds what the classification layout holds (``x``: uint8
NHWC images already resized by the device's own preprocessing) plus the ground truth
as flat arrays, because images hold any number of boxes and npz files take no
pickled lists: ``box_image`` (which image), ``box_class`` (index into the model's
labels, background excluded, so 1..) and ``boxes`` (normalised x_min, y_min, x_max,
y_max). ``calibration.npz`` keeps the classification layout (``x`` only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.detection.objects import NormBox
from device.errors import DatasetError

UInt8Array = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class DetectionSamples:
    """Resized images and, per image, its boxes as (label index, NormBox)."""

    x: UInt8Array
    truths: tuple[tuple[tuple[int, NormBox], ...], ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def write_detection_samples(path: Path, samples: DetectionSamples) -> None:
    image_index = [i for i, boxes in enumerate(samples.truths) for _ in boxes]
    classes = [label for boxes in samples.truths for label, _ in boxes]
    coords = [
        (box.x_min, box.y_min, box.x_max, box.y_max) for boxes in samples.truths for _, box in boxes
    ]
    np.savez_compressed(
        path,
        x=samples.x.astype(np.uint8),
        box_image=np.asarray(image_index, dtype=np.int64),
        box_class=np.asarray(classes, dtype=np.int64),
        boxes=np.asarray(coords, dtype=np.float64).reshape(-1, 4),
    )


def read_detection_samples(path: Path, classes: int) -> DetectionSamples:
    """The samples of ``path``; ``classes`` counts the model's labels (with background)."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; re-run `edgewatch train object-detection`")
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.uint8)
            image_index = np.asarray(data["box_image"], dtype=np.int64)
            box_class = np.asarray(data["box_class"], dtype=np.int64)
            boxes = np.asarray(data["boxes"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"{path} is not the held-out file of a detector ({exc}); re-run "
            "`edgewatch train object-detection`"
        ) from exc
    count = len(image_index)
    if (
        x.ndim != 4
        or boxes.shape != (count, 4)
        or box_class.shape != (count,)
        or (count and (image_index.min() < 0 or image_index.max() >= len(x)))
        or (count and (box_class.min() < 1 or box_class.max() >= classes))
    ):
        raise DatasetError(f"{path} holds inconsistent boxes; re-run `edgewatch train`")
    truths: list[list[tuple[int, NormBox]]] = [[] for _ in range(len(x))]
    for image, label, (x0, y0, x1, y1) in zip(image_index, box_class, boxes, strict=True):
        truths[int(image)].append((int(label), NormBox(float(x0), float(y0), float(x1), float(y1))))
    return DetectionSamples(x=x, truths=tuple(tuple(t) for t in truths))
