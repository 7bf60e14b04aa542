"""Cutting a detected object out of its frame for a second model.

A chained pipeline (a face detector, then an identity classifier) runs its second model
on each detected box. What that model needs is decided here, once, for the device and
for training alike (training/synthetic/face_scenes.py cuts its identity examples with
these functions, so a classifier learns from crops made exactly as the device makes
them):

* a relative **margin** around the box: detectors, a centroid detector above all, give
  boxes that are tight or rough, and a classifier trained on whole pictures wants some
  context;
* an optional **aspect** (width / height; 1.0 is square): a classifier stretches its
  input to a fixed size, so a crop with the aspect of its training images keeps the
  object's proportions. The shorter side grows, centred on the box, never the longer
  one shrinks, so nothing of the object is lost;
* **clamping** to the frame: a crop that sticks out is moved back inside (keeping its
  size and so its aspect; it still holds the whole box, which lies in the frame), and
  only a crop larger than the frame is cut;
* a **minimum size**: a box whose shorter side covers fewer frame pixels than this holds
  too little detail to classify and is skipped (the caller counts it).

A crop is a view into the frame (numpy slicing), never a copy: the second model's
resize reads it directly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.detection.objects import NormBox

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
#: Float slack when turning box edges into whole pixels (0.25 * 400 is 100, not 100.0001).
_EPS = 1e-6


@dataclass(frozen=True)
class CropSettings:
    """How a detected box becomes a crop (see the module docstring)."""

    #: Added on each side, as a share of the box's own width (left, right) and height
    #: (top, bottom): 0.1 makes a 100 px box a 120 px crop.
    margin: float = 0.1
    #: Width / height of the crop (1.0: square); None keeps the box's own aspect.
    aspect: float | None = None
    #: Boxes whose shorter side is under this many frame pixels are skipped.
    min_size: int = 16

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0.0):
            raise ValueError(f"crop margin must be a finite number >= 0, got {self.margin}")
        if self.aspect is not None and not (math.isfinite(self.aspect) and self.aspect > 0.0):
            raise ValueError(f"crop aspect must be a positive number, got {self.aspect}")
        if self.min_size < 1:
            raise ValueError(f"crop min_size must be at least 1 pixel, got {self.min_size}")


@dataclass(frozen=True)
class PixelBox:
    """A rectangle of frame pixels: columns x0..x1-1, rows y0..y1-1 (slice bounds)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def to_norm(self, width: int, height: int) -> NormBox:
        """The same rectangle, normalised to a width x height frame."""
        return NormBox(self.x0 / width, self.y0 / height, self.x1 / width, self.y1 / height)


@dataclass(frozen=True, eq=False)
class Crop:
    """A crop of a frame: the pixels (a view, not a copy) and where they came from."""

    image: UInt8Image
    box: PixelBox


def box_pixels(box: NormBox, width: int, height: int) -> tuple[float, float, float, float]:
    """The box in frame pixel coordinates (x0, y0, x1, y1), unrounded."""
    return box.x_min * width, box.y_min * height, box.x_max * width, box.y_max * height


def box_min_side(box: NormBox, width: int, height: int) -> float:
    """The box's shorter side in pixels of a width x height frame."""
    return min(box.width * width, box.height * height)


def crop_region(box: NormBox, width: int, height: int, settings: CropSettings) -> PixelBox | None:
    """Where to cut ``box`` out of a width x height frame; None when it is too small.

    The region always holds the whole box, lies inside the frame and has at least one
    pixel on each side.
    """
    if width < 1 or height < 1:
        raise ValueError(f"a frame needs at least one pixel, got {width}x{height}")
    if box_min_side(box, width, height) < settings.min_size:
        return None
    x0, y0, x1, y1 = box_pixels(box, width, height)
    # Whole pixels that cover the box: the crop must hold all of them.
    need_x = (math.floor(x0 + _EPS), math.ceil(x1 - _EPS))
    need_y = (math.floor(y0 + _EPS), math.ceil(y1 - _EPS))
    grow = 1.0 + 2.0 * settings.margin
    crop_w = max(need_x[1] - need_x[0], math.ceil((x1 - x0) * grow - _EPS))
    crop_h = max(need_y[1] - need_y[0], math.ceil((y1 - y0) * grow - _EPS))
    if settings.aspect is not None:
        # Grow the short side; sizes are whole pixels, so the aspect holds to one pixel.
        crop_w = max(crop_w, round(crop_h * settings.aspect))
        crop_h = max(crop_h, round(crop_w / settings.aspect))
    left, right = _place((x0 + x1) / 2.0, crop_w, need_x, width)
    top, bottom = _place((y0 + y1) / 2.0, crop_h, need_y, height)
    return PixelBox(left, top, right, bottom)


def _place(centre: float, size: int, need: tuple[int, int], limit: int) -> tuple[int, int]:
    """``size`` pixels centred on ``centre``, covering ``need``, moved inside
    [0, limit) and cut only when longer than ``limit``."""
    if size >= limit:
        return 0, limit
    low = round(centre - size / 2.0)
    # Cover the box even where rounding pushed the window a pixel off it.
    low = max(need[1] - size, min(low, need[0]))
    low = min(max(low, 0), limit - size)
    return low, low + size


def crop(frame: UInt8Image, box: NormBox, settings: CropSettings) -> Crop | None:
    """The pixels of ``box`` (with margin and aspect) in ``frame``, as a view; None
    when the box is smaller than ``settings.min_size``."""
    height, width = frame.shape[:2]
    region = crop_region(box, width, height, settings)
    if region is None:
        return None
    return Crop(frame[region.y0 : region.y1, region.x0 : region.x1], region)
