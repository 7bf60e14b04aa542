"""Generated camera scenes with exact truth, for the motion, tracker, zone and snapshot tests.

Videos come from training/synthetic/shapes.py (textured background, sensor noise, MJPG
compression, shapes drifting across), read back through OpenCV like a camera file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.detection.objects import DetectedObject, NormBox
from training.synthetic.shapes import Appearance, VideoTruth, write_shapes_video

FPS = 10.0
T0 = 1000.0


@dataclass(frozen=True)
class Scene:
    frames: list[np.ndarray[Any, np.dtype[np.uint8]]]
    truth: VideoTruth

    def box(self, index: int) -> NormBox | None:
        box = self.truth.box_at(index)
        return None if box is None else NormBox(*box)

    def at(self, index: int) -> float:
        """The frame's timeline time."""
        return T0 + index / FPS


def make_scene(
    path: Path,
    seed: int,
    script: Sequence[Appearance],
    duration_s: float,
    size: tuple[int, int] = (320, 240),
) -> Scene:
    truth = write_shapes_video(path, seed, size=size, fps=FPS, script=script, duration_s=duration_s)
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(np.asarray(frame, dtype=np.uint8))
    capture.release()
    assert len(frames) == truth.frame_count, "the video did not read back whole"
    return Scene(frames, truth)


def contains(outer: NormBox, inner: NormBox, tolerance: float) -> bool:
    return (
        outer.x_min <= inner.x_min + tolerance
        and outer.y_min <= inner.y_min + tolerance
        and outer.x_max >= inner.x_max - tolerance
        and outer.y_max >= inner.y_max - tolerance
    )


def jittered(
    box: NormBox, label: str, rng: np.random.Generator, jitter: float, score: float | None = None
) -> DetectedObject:
    """A detection of ``box`` as a centroid detector gives it: edges off by up to
    ``jitter`` (fraction of the frame), a score between 0.5 and 0.95."""
    edges = np.array([box.x_min, box.y_min, box.x_max, box.y_max]) + rng.uniform(-jitter, jitter, 4)
    x0, y0, x1, y1 = (float(v) for v in np.clip(edges, 0.0, 1.0))
    noisy = NormBox(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    value = float(rng.uniform(0.5, 0.95)) if score is None else score
    return DetectedObject(label, value, noisy)
