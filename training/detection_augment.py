"""Augmentation for detection that moves the boxes with the pixels.

Each draw picks a crop window in normalised image coordinates (a random scale, a
small aspect change and a shift; a window larger than the image zooms out, with
replicated borders), optionally mirrors it, and jitters brightness, contrast and
saturation. The crop is resized with ``INTER_AREA``, the filter the device's own
``resize_frame`` uses, and the same window maps every box: ``(b - x0) / (x1 - x0)``.

A box cut by the window is kept (clipped) when at least ``min_visible`` of it is
still in the picture. Less than that, it becomes an *ignored* region: its cells
count neither as object nor as background, because a sliver of a raccoon is not
"nothing", and telling the model so would teach it to miss partly visible objects.

Like ``training.augment``, this lives outside the model: the exported graph holds only
the detector's own ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from device.detection.objects import NormBox
from device.errors import EdgewatchError

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
#: (class index, box) of one object.
ClassBox = tuple[int, NormBox]


@dataclass(frozen=True)
class AugmentedSample:
    image: UInt8Image
    boxes: tuple[ClassBox, ...]
    #: Regions of objects mostly cut away, whose cells training ignores.
    ignored: tuple[NormBox, ...]


@dataclass(frozen=True)
class BoxAugmentation:
    """Ranges of the random changes."""

    flip_horizontal: bool = True
    #: Crop window side, as a share of the image's (log-uniform): < 1 zooms in, > 1 out.
    min_scale: float = 0.6
    max_scale: float = 1.25
    #: Largest change of the window's aspect ratio, as a log factor.
    max_aspect: float = 0.2
    #: Largest shift of the window's centre, as a share of the image.
    max_shift: float = 0.2
    max_brightness: float = 0.2
    max_contrast: float = 0.25
    max_saturation: float = 0.35
    min_visible: float = 0.5
    #: Probability that a training picture is a 2x2 mosaic of four augmented ones
    #: (``mosaic``): more, smaller objects per picture, anywhere in the frame.
    mosaic: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.min_scale <= self.max_scale:
            raise EdgewatchError(
                f"augmentation scales need 0 < min <= max, got {self.min_scale}, {self.max_scale}"
            )
        if not 0.0 < self.min_visible <= 1.0:
            raise EdgewatchError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if not 0.0 <= self.mosaic <= 1.0:
            raise EdgewatchError(f"mosaic probability must be in [0, 1], got {self.mosaic}")

    def apply(
        self,
        image: UInt8Image,
        boxes: Sequence[ClassBox],
        out_size: tuple[int, int],
        rng: np.random.Generator,
    ) -> AugmentedSample:
        """A random view of ``image`` (HxWxC, any size) at ``out_size`` (width, height)."""
        scale = math.exp(rng.uniform(math.log(self.min_scale), math.log(self.max_scale)))
        aspect = rng.uniform(-self.max_aspect, self.max_aspect)
        width_share, height_share = scale * math.exp(aspect), scale * math.exp(-aspect)
        centre_x = 0.5 + rng.uniform(-self.max_shift, self.max_shift)
        centre_y = 0.5 + rng.uniform(-self.max_shift, self.max_shift)
        window = (
            centre_x - width_share / 2.0,
            centre_y - height_share / 2.0,
            centre_x + width_share / 2.0,
            centre_y + height_share / 2.0,
        )
        flip = self.flip_horizontal and bool(rng.random() < 0.5)
        pixels, used = crop_window(image, window, out_size)
        kept, ignored = map_boxes(boxes, used, self.min_visible)
        if flip:
            pixels = np.ascontiguousarray(pixels[:, ::-1], dtype=np.uint8)
            kept = [(label, mirror(box)) for label, box in kept]
            ignored = [mirror(box) for box in ignored]
        pixels = self._colour(pixels, rng)
        return AugmentedSample(pixels, tuple(kept), tuple(ignored))

    def _colour(self, image: UInt8Image, rng: np.random.Generator) -> UInt8Image:
        pixels = image.astype(np.float32)
        if pixels.shape[2] == 3 and self.max_saturation > 0:
            grey = pixels.mean(axis=2, keepdims=True)
            saturation = rng.uniform(1.0 - self.max_saturation, 1.0 + self.max_saturation)
            pixels = grey + (pixels - grey) * saturation
        mean = float(pixels.mean())
        contrast = rng.uniform(1.0 - self.max_contrast, 1.0 + self.max_contrast)
        brightness = rng.uniform(-self.max_brightness, self.max_brightness) * 255.0
        pixels = (pixels - mean) * contrast + mean + brightness
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def mosaic(tiles: Sequence[AugmentedSample]) -> AugmentedSample:
    """Four samples of equal size, each shrunk to a quarter, as one picture of that size:
    top-left, top-right, bottom-left, bottom-right, their boxes moved along."""
    if len(tiles) != 4:
        raise ValueError(f"a mosaic takes 4 samples, got {len(tiles)}")
    height, width = tiles[0].image.shape[:2]
    half_w, half_h = width // 2, height // 2
    canvas = np.empty_like(tiles[0].image)
    boxes: list[ClassBox] = []
    ignored: list[NormBox] = []
    cuts = ((0, 0, half_w, half_h), (half_w, 0, width, half_h),
            (0, half_h, half_w, height), (half_w, half_h, width, height))  # fmt: skip
    for tile, (x0, y0, x1, y1) in zip(tiles, cuts, strict=True):
        shrunk = cv2.resize(tile.image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
        canvas[y0:y1, x0:x1] = np.asarray(shrunk).reshape(y1 - y0, x1 - x0, -1)

        def place(box: NormBox, x0: int = x0, y0: int = y0, x1: int = x1, y1: int = y1) -> NormBox:
            return NormBox(
                (x0 + box.x_min * (x1 - x0)) / width, (y0 + box.y_min * (y1 - y0)) / height,
                (x0 + box.x_max * (x1 - x0)) / width, (y0 + box.y_max * (y1 - y0)) / height,
            )  # fmt: skip

        boxes.extend((label, place(box)) for label, box in tile.boxes)
        ignored.extend(place(box) for box in tile.ignored)
    return AugmentedSample(canvas, tuple(boxes), tuple(ignored))


def crop_window(
    image: UInt8Image,
    window: tuple[float, float, float, float],
    out_size: tuple[int, int],
) -> tuple[UInt8Image, tuple[float, float, float, float]]:
    """Crop normalised ``window`` (may reach outside the image: replicated borders) and
    resize it to ``out_size``; returns the pixels and the window actually cut, after
    rounding to whole pixels, so that boxes map exactly."""
    height, width = image.shape[:2]
    depth = image.shape[2] if image.ndim == 3 else 1
    x0 = math.floor(window[0] * width)
    y0 = math.floor(window[1] * height)
    x1 = max(x0 + 1, math.ceil(window[2] * width))
    y1 = max(y0 + 1, math.ceil(window[3] * height))
    pad_left, pad_top = max(0, -x0), max(0, -y0)
    pad_right, pad_bottom = max(0, x1 - width), max(0, y1 - height)
    source: np.ndarray[Any, Any] = image
    if pad_left or pad_top or pad_right or pad_bottom:
        source = cv2.copyMakeBorder(
            image, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE
        )
    crop = source[y0 + pad_top : y1 + pad_top, x0 + pad_left : x1 + pad_left]
    resized = cv2.resize(crop, out_size, interpolation=cv2.INTER_AREA)
    resized = np.asarray(resized, dtype=np.uint8).reshape(out_size[1], out_size[0], depth)
    used = (x0 / width, y0 / height, x1 / width, y1 / height)
    return resized, used


def map_boxes(
    boxes: Sequence[ClassBox],
    window: tuple[float, float, float, float],
    min_visible: float,
) -> tuple[list[ClassBox], list[NormBox]]:
    """Boxes in the coordinates of ``window``: kept (clipped) or ignored (see module)."""
    wx0, wy0, wx1, wy1 = window
    sx, sy = wx1 - wx0, wy1 - wy0
    kept: list[ClassBox] = []
    ignored: list[NormBox] = []
    for label, box in boxes:
        x0, x1 = (box.x_min - wx0) / sx, (box.x_max - wx0) / sx
        y0, y1 = (box.y_min - wy0) / sy, (box.y_max - wy0) / sy
        cx0, cx1 = min(1.0, max(0.0, x0)), min(1.0, max(0.0, x1))
        cy0, cy1 = min(1.0, max(0.0, y0)), min(1.0, max(0.0, y1))
        full = (x1 - x0) * (y1 - y0)
        visible = (cx1 - cx0) * (cy1 - cy0)
        if visible <= 0.0 or full <= 0.0:
            continue
        clipped = NormBox(cx0, cy0, cx1, cy1)
        if visible / full >= min_visible:
            kept.append((label, clipped))
        else:
            ignored.append(clipped)
    return kept, ignored


def mirror(box: NormBox) -> NormBox:
    return NormBox(1.0 - box.x_max, box.y_min, 1.0 - box.x_min, box.y_max)
