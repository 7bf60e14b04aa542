"""Training-time image augmentation, applied to uint8 batches in the input pipeline.

Augmentation lives here, outside the model, so the exported TFLite graph holds only the
classifier's own (Edge TPU-friendly) ops and the device never runs it. It works on the
resized uint8 images the device's preprocessing produced, and returns uint8 again, so the
device's ``normalise`` is applied to augmented and plain images alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

UInt8Batch = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random changes; the defaults are mild enough for most camera data."""

    flip_horizontal: bool = True
    max_rotation_deg: float = 10.0
    max_shift: float = 0.1
    max_zoom: float = 0.1
    max_brightness: float = 0.15
    max_contrast: float = 0.2

    def apply(self, batch: UInt8Batch, rng: np.random.Generator) -> UInt8Batch:
        """Augment each NHWC image independently with draws from ``rng``."""
        out = np.empty_like(batch)
        for i, image in enumerate(batch):
            out[i] = self._one(image, rng)
        return out

    def _one(self, image: UInt8Batch, rng: np.random.Generator) -> UInt8Batch:
        height, width, depth = image.shape
        angle = rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)
        zoom = rng.uniform(1.0 - self.max_zoom, 1.0 + self.max_zoom)
        shift_x, shift_y = rng.uniform(-self.max_shift, self.max_shift, size=2)
        matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, zoom)
        matrix[:, 2] += (shift_x * width, shift_y * height)
        # Replicated borders avoid black wedges that would be a shortcut for the model,
        # and unlike reflection they never mirror an object near the edge into a second,
        # partial copy that contradicts the label (one shape becoming two).
        warped = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ).reshape(height, width, depth)
        if self.flip_horizontal and rng.random() < 0.5:
            warped = warped[:, ::-1]
        pixels = warped.astype(np.float32)
        mean = float(pixels.mean())
        contrast = rng.uniform(1.0 - self.max_contrast, 1.0 + self.max_contrast)
        brightness = rng.uniform(-self.max_brightness, self.max_brightness) * 255.0
        pixels = (pixels - mean) * contrast + mean + brightness
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
