"""Turning an image into a model input, exactly as the manifest describes it.

Training imports these functions for its data pipeline, so a model never sees pixels
prepared differently on the Pi than on the workstation (a test proves it). Frames are
BGR uint8, the way OpenCV decodes them.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from device.bundle.manifest import ImagePreprocessing

# OpenCV's stubs type images loosely; uint8 is what it hands back for 8-bit input.
UInt8Image = np.ndarray[Any, Any]
FloatTensor = np.ndarray[Any, np.dtype[np.float32]]


def resize_frame(frame: UInt8Image, spec: ImagePreprocessing) -> UInt8Image:
    """Resize and convert colour; the cheap-to-share part that a capture thread can do."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if spec.resize == "center-crop":
        height, width = frame.shape[:2]
        target_ratio = spec.width / spec.height
        if width / height > target_ratio:
            new_width = max(1, round(height * target_ratio))
            left = (width - new_width) // 2
            frame = frame[:, left : left + new_width]
        else:
            new_height = max(1, round(width / target_ratio))
            top = (height - new_height) // 2
            frame = frame[top : top + new_height]
    # INTER_AREA is the right filter for shrinking, which is nearly always the case here.
    resized = cv2.resize(frame, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    if spec.color == "rgb":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    elif spec.color == "grey":
        resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)[..., np.newaxis]
    return np.asarray(resized, dtype=np.uint8)


def normalise(
    pixels: UInt8Image, spec: ImagePreprocessing, out: FloatTensor | None = None
) -> FloatTensor:
    """uint8 HxWxC → float32 HxWxC with the manifest's scale and offset.

    ``out`` lets the daemon reuse one buffer per pipeline instead of allocating a
    frame-sized array for every frame.
    """
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, np.float32(spec.scale), out=out, dtype=np.float32)
    np.add(out, np.float32(spec.offset), out=out)
    return out


def channels(spec: ImagePreprocessing) -> int:
    return 1 if spec.color == "grey" else 3


def frame_to_input(frame: UInt8Image, spec: ImagePreprocessing) -> FloatTensor:
    """A whole frame → a batch-of-one float input tensor."""
    return normalise(resize_frame(frame, spec), spec)[np.newaxis, ...]
