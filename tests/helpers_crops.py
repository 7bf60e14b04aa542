"""A crop classifier for chained-pipeline tests: shapes cut by the device's own crop code
from tiled generated scenes, trained by the session once (``shape_crop_bundle``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from device.detection.crops import CropSettings, crop
from device.detection.objects import NormBox
from training.synthetic.shapes import render_scene

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
TILE = 96
LABELS = ("background", "circle", "square", "triangle")
#: How the test classifier's training crops and the pipeline's crops are cut.
CROP = CropSettings(margin=0.15, aspect=1.0, min_size=8)


def tiled_scene(
    rng: np.random.Generator, labels: tuple[str, ...]
) -> tuple[UInt8Image, list[tuple[NormBox, str, int]]]:
    """Four stills in a 2x2 grid; (frame-normalised box, label, tile) of each shape."""
    tiles = []
    truth: list[tuple[NormBox, str, int]] = []
    for index, label in enumerate(labels):
        scene = render_scene(rng, (TILE, TILE), label)
        tiles.append(scene.image)
        if scene.box is not None:
            col, row = index % 2, index // 2
            x0, y0, x1, y1 = scene.box
            box = NormBox((col + x0) / 2, (row + y0) / 2, (col + x1) / 2, (row + y1) / 2)
            truth.append((box, label, index))
    frame = np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])
    return np.ascontiguousarray(frame), truth



def render_crop(rng: np.random.Generator, size: int, label: str) -> UInt8Image:
    """A training image for the crop classifier, cut by the device's crop code from a
    tiled scene like the test's: the box of a shape, or (background) a random square
    inside a tile without one. Neighbouring tiles show at a crop's margin, as they do
    in the test scenes."""
    labels = [str(v) for v in rng.choice(LABELS, size=4)]
    slot = int(rng.integers(4))
    labels[slot] = label
    frame, truth = tiled_scene(rng, tuple(labels))
    if label == "background":
        side = float(rng.uniform(0.25, 0.6)) / 2.0
        x, y = (float(v) for v in rng.uniform(0.0, 0.5 - side, size=2))
        col, row = slot % 2, slot // 2
        box = NormBox(col / 2 + x, row / 2 + y, col / 2 + x + side, row / 2 + y + side)
    else:
        box = next(b for b, lb, index in truth if index == slot)
    cut = crop(frame, box, CROP)
    assert cut is not None
    return cut.image



def make_shape_crop_bundle(work: Path) -> Path:
    """Train the crop classifier (about half a minute) and convert it to int8."""
    from converters.convert import convert_model
    from tests.helpers_models import make_trained_model_dir, plain_cnn

    model_dir = make_trained_model_dir(
        work, size=32, per_class=200, epochs=20, seed=0, render=render_crop,
        name="shape-crops", architecture=plain_cnn,
    )  # fmt: skip
    return convert_model(model_dir, "int8", work / "shape-crops-int8.ewm").out
