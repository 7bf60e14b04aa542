"""Generated object-detection scenes: 0..N OpenCV-drawn shapes with exact boxes.

Tests and the documentation's examples need detection data with known ground truth
and no download. Scenes use the drawing helpers of ``training.synthetic.shapes``
(textured background, contrasting colours, sub-pixel shapes, sensor noise), so a
detector trained here sees the same kind of pictures the classification stills and
the demo video show. Shapes never overlap (their enclosing circles keep a gap), so
every box is the whole, visible object.

``write_detection_folder`` writes the project's detection layout: ``DIR/images/*.png``
and ``DIR/boxes.csv`` (filename,width,height,class,xmin,ymin,xmax,ymax, pixels).
Everything is a function of the seed; scene ``i`` has its own generator, so a small
folder is a prefix of a larger one with the same seed.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from training.synthetic.shapes import (
    Box,
    UInt8Image,
    _add_sensor_noise,
    _check_size,
    _circumradius,
    _contrasting_colour,
    _draw_shape,
    _region_mean,
    _textured_background,
)

log = logging.getLogger(__name__)

DETECTION_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
#: Shape size (circle diameter, square or triangle side) as a share of the short side.
DEFAULT_SCALE_RANGE = (0.16, 0.32)
#: Free space between two shapes' enclosing circles, as a share of the short side.
_GAP = 0.04
_PLACEMENT_TRIES = 60


@dataclass(frozen=True)
class SceneObject:
    label: str
    box: Box
    """Normalised ``(xmin, ymin, xmax, ymax)``."""


@dataclass(frozen=True, eq=False)
class DetectionScene:
    """One generated picture (BGR uint8) and the objects drawn in it."""

    image: UInt8Image
    objects: tuple[SceneObject, ...]


def render_detection_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    *,
    max_objects: int = 3,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    classes: Sequence[str] = DETECTION_CLASSES,
) -> DetectionScene:
    """A textured background with 0..``max_objects`` shapes (uniform count).

    A shape that cannot be placed without overlapping the others after a few tries
    is left out, so crowded settings give slightly fewer objects than drawn.
    """
    width, height = _check_size(size)
    lo, hi = scale_range
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1: {scale_range}")
    if max_objects < 0:
        raise ValueError(f"max_objects must be >= 0, got {max_objects}")
    unknown = set(classes) - set(DETECTION_CLASSES)
    if not classes or unknown:
        raise ValueError(f"classes must be some of {DETECTION_CLASSES}, got {tuple(classes)}")
    canvas = _textured_background(rng, width, height)
    short = min(width, height)
    placed: list[tuple[float, float, float]] = []
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        label = str(classes[int(rng.integers(0, len(classes)))])
        nominal = float(rng.uniform(lo, hi)) * short
        radius = _circumradius(label, nominal)
        spot = _free_spot(rng, radius, placed, width=width, height=height, gap=_GAP * short)
        if spot is None:
            continue
        cx, cy = spot
        angle = 0.0 if label == "circle" else float(rng.uniform(0.0, 2.0 * math.pi))
        reference = _region_mean(canvas, cx - radius, cy - radius, cx + radius, cy + radius)
        box = _draw_shape(
            canvas,
            label,
            centre=(cx, cy),
            nominal=nominal,
            angle=angle,
            colour=_contrasting_colour(rng, reference),
        )
        placed.append((cx, cy, radius))
        objects.append(SceneObject(label, box))
    return DetectionScene(image=_add_sensor_noise(rng, canvas), objects=tuple(objects))


def _free_spot(
    rng: np.random.Generator,
    radius: float,
    placed: Sequence[tuple[float, float, float]],
    *,
    width: int,
    height: int,
    gap: float,
) -> tuple[float, float] | None:
    """A centre keeping the enclosing circle inside the frame and clear of the others."""
    x_lo, x_hi = radius, width - 1.0 - radius
    y_lo, y_hi = radius, height - 1.0 - radius
    if x_hi < x_lo or y_hi < y_lo:
        return None
    for _ in range(_PLACEMENT_TRIES):
        cx, cy = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi))
        if all(math.hypot(cx - x, cy - y) >= radius + r + gap for x, y, r in placed):
            return cx, cy
    return None


def write_detection_folder(
    out_dir: Path,
    count: int,
    seed: int,
    size: tuple[int, int] = (96, 96),
    *,
    max_objects: int = 3,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    classes: Sequence[str] = DETECTION_CLASSES,
    first_index: int = 0,
) -> list[DetectionScene]:
    """Write ``count`` scenes as ``out_dir/images/scene_<i>.png`` and ``boxes.csv``.

    Returns the scenes in file order. ``first_index`` numbers (and seeds) the scenes
    from there, so two calls with different ranges give disjoint, reproducible sets.
    """
    images = Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    width, height = _check_size(size)
    scenes: list[DetectionScene] = []
    rows: list[list[str]] = []
    for index in range(first_index, first_index + count):
        rng = np.random.default_rng([seed, index])
        scene = render_detection_scene(
            rng, (width, height), max_objects=max_objects, scale_range=scale_range,
            classes=classes,
        )  # fmt: skip
        name = f"scene_{index:05d}.png"
        if not cv2.imwrite(str(images / name), scene.image):
            raise OSError(f"could not write {images / name}")
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            rows.append([
                name, str(width), str(height), obj.label,
                f"{x0 * width:.3f}", f"{y0 * height:.3f}",
                f"{x1 * width:.3f}", f"{y1 * height:.3f}",
            ])  # fmt: skip
        scenes.append(scene)
    with (Path(out_dir) / "boxes.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"])
        writer.writerows(rows)
    log.info("wrote %d detection scenes (%d objects) to %s", count, len(rows), out_dir)
    return scenes
