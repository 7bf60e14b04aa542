"""Synthetic "shapes" data drawn with OpenCV.

Tests, the demo and benchmarks need image-classification data and a video
with known ground truth, without downloading anything and without depending on
TensorFlow.  This module draws simple filled shapes (circle, square, triangle)
on a textured background:

* :func:`render_scene` makes one still image plus its label and bounding box;
* :func:`write_image_folder` writes a folder-per-class dataset
  (``out_dir/<label>/<label>_<i>.<ext>``), the project's image-classification
  dataset format;
* :func:`write_shapes_video` writes a video in which shapes appear, drift across
  a static background and disappear following a script, and returns the
  per-frame ground truth (:class:`VideoTruth`).

Stills and video frames share the same drawing helpers (background texture,
colour choice, shape geometry, sensor noise), so a classifier trained on the
stills recognises the shapes in the video when both are resized to the same
input size.

Everything is deterministic given a seed (or a :class:`numpy.random.Generator`)
so tests can compare exact arrays and benchmarks are reproducible.

Sizes are ``(width, height)`` in pixels, the OpenCV convention; the returned
images have numpy shape ``(height, width, 3)`` in BGR channel order.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "SHAPE_LABELS",
    "Appearance",
    "Box",
    "Scene",
    "VideoTruth",
    "default_demo_script",
    "render_scene",
    "write_image_folder",
    "write_shapes_video",
]

logger = logging.getLogger(__name__)

SHAPE_LABELS: tuple[str, ...] = ("background", "circle", "square", "triangle")
"""Class names; index 0 is the "nothing here" class used between appearances."""

BACKGROUND_LABEL = SHAPE_LABELS[0]
_SHAPES: tuple[str, ...] = SHAPE_LABELS[1:]

Box = tuple[float, float, float, float]
"""Normalised ``(xmin, ymin, xmax, ymax)``, each in ``[0, 1]``."""

FloatImage = npt.NDArray[np.float32]
UInt8Image = npt.NDArray[np.uint8]

# Fraction of the frame's short side used as the shape's nominal size for
# stills; wide so the classifier sees varied scales.
_SCENE_SCALE_RANGE = (0.25, 0.60)
# Fraction of the frame height for video shapes: large enough that, once the
# frame is resized to a classifier's input, the shape looks like a still.
_VIDEO_SCALE_RANGE = (0.40, 0.55)
# Minimum Euclidean BGR distance between a shape and the background under it,
# so shapes are never camouflaged.
_MIN_CONTRAST = 110.0
# ... and a minimum brightness difference, so shapes stay visible to models that
# (or cameras that) work in greyscale.
_MIN_LUMA_CONTRAST = 40.0
_LUMA_BGR = np.array([0.114, 0.587, 0.299])
# Per-frame Gaussian sensor noise (grey levels); applied to stills too so the
# two look alike.
_SENSOR_NOISE_SIGMA = 2.0
# Drawing with sub-pixel precision makes slow motion smooth instead of jumpy.
_SHIFT_BITS = 4
_SHIFT_SCALE = float(1 << _SHIFT_BITS)
_MIN_SIDE = 16

_VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
_IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "bmp"})


@dataclass(frozen=True, eq=False)
class Scene:
    """One rendered still: the image, its class label and the shape's box.

    ``eq`` is disabled because comparing numpy arrays with ``==`` is
    element-wise; compare ``scene.image`` with :func:`numpy.array_equal`.
    """

    image: UInt8Image
    """BGR ``uint8`` image of shape ``(height, width, 3)``."""
    label: str
    box: Box | None
    """Normalised box of the shape, ``None`` for ``"background"``."""


@dataclass(frozen=True)
class Appearance:
    """A shape that is visible in a video during ``[start_s, end_s)``."""

    label: str
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        """Reject scripts that cannot be rendered, at construction time."""
        if self.label not in _SHAPES:
            raise ValueError(f"Appearance label must be one of {_SHAPES}, got {self.label!r}")
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise ValueError(f"Appearance times must be finite: {self}")
        if self.start_s < 0 or self.end_s <= self.start_s:
            raise ValueError(f"Appearance needs 0 <= start_s < end_s: {self}")

    def active_at(self, t_s: float) -> bool:
        """Whether the shape is on screen at time ``t_s`` (half-open interval)."""
        return self.start_s <= t_s < self.end_s


@dataclass(frozen=True)
class VideoTruth:
    """Ground truth of a video written by :func:`write_shapes_video`.

    Frame ``i`` is shown at ``i / fps`` seconds; an appearance covers the
    frames whose time falls in its half-open ``[start_s, end_s)`` interval.
    """

    fps: float
    frame_count: int
    size: tuple[int, int]
    """``(width, height)`` in pixels."""
    appearances: tuple[Appearance, ...]
    """Sorted by start time, non-overlapping."""
    frame_boxes: tuple[Box | None, ...]
    """Normalised box of the visible shape for every frame (``None`` if none)."""

    @property
    def duration_s(self) -> float:
        """Length of the video in seconds."""
        return self.frame_count / self.fps

    def appearance_at(self, frame_index: int) -> Appearance | None:
        """The appearance visible in ``frame_index``, or ``None``."""
        self._check_index(frame_index)
        return _active_appearance(self.appearances, frame_index / self.fps)

    def label_at(self, frame_index: int) -> str:
        """Class label of ``frame_index``: the shape's, else ``"background"``."""
        appearance = self.appearance_at(frame_index)
        return BACKGROUND_LABEL if appearance is None else appearance.label

    def box_at(self, frame_index: int) -> Box | None:
        """Normalised box of the shape in ``frame_index``, or ``None``."""
        self._check_index(frame_index)
        return self.frame_boxes[frame_index]

    def _check_index(self, frame_index: int) -> None:
        """Fail loudly instead of silently answering for a non-existent frame."""
        if not 0 <= frame_index < self.frame_count:
            raise IndexError(f"frame_index {frame_index} outside [0, {self.frame_count})")


def default_demo_script() -> tuple[Appearance, ...]:
    """About 20 s: a circle, a square and a triangle with background between."""
    return (
        Appearance("circle", 2.0, 6.0),
        Appearance("square", 8.0, 12.0),
        Appearance("triangle", 14.0, 18.0),
    )


# --------------------------------------------------------------------------
# Shared drawing helpers (stills and video must look alike).
# --------------------------------------------------------------------------


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    """Validate a ``(width, height)`` pair; tiny frames cannot hold a shape."""
    width, height = int(size[0]), int(size[1])
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise ValueError(f"size must be at least {_MIN_SIDE}x{_MIN_SIDE}, got {size}")
    return width, height


def _textured_background(rng: np.random.Generator, width: int, height: int) -> FloatImage:
    """A background that is not trivially flat.

    A random colour gradient, low-frequency colour blotches, a few faint
    blurred lines/blobs and fine grain: a classifier must look for the shape,
    not for "any non-flat pixel".
    """
    c0 = rng.uniform(30.0, 225.0, size=3)
    c1 = rng.uniform(30.0, 225.0, size=3)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    proj = math.cos(theta) * xs / width + math.sin(theta) * ys / height
    span = float(proj.max() - proj.min()) or 1.0
    proj = (proj - proj.min()) / span
    img = (c0 + (c1 - c0) * proj[..., None]).astype(np.float32)

    coarse = rng.normal(0.0, 12.0, size=(4, 4, 3)).astype(np.float32)
    img += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

    overlay = img.copy()
    short = min(width, height)
    for _ in range(int(rng.integers(2, 5))):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(float(c) for c in rng.uniform(0.0, 255.0, size=3))
        cv2.line(overlay, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (
            max(1, int(rng.uniform(0.03, 0.12) * short)),
            max(1, int(rng.uniform(0.03, 0.12) * short)),
        )
        colour = tuple(float(c) for c in rng.uniform(0.0, 255.0, size=3))
        cv2.ellipse(overlay, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    blurred = np.asarray(cv2.GaussianBlur(overlay, (0, 0), 1.5), dtype=np.float32)
    alpha = float(rng.uniform(0.12, 0.28))
    img = (alpha * blurred + (1.0 - alpha) * img).astype(np.float32)

    img += rng.normal(0.0, 3.0, size=img.shape).astype(np.float32)
    out: FloatImage = np.clip(img, 0.0, 255.0).astype(np.float32)
    return out


def _circumradius(label: str, nominal: float) -> float:
    """Radius of the circle enclosing the shape at any rotation."""
    if label == "circle":
        return nominal / 2.0
    if label == "square":
        return nominal / math.sqrt(2.0)
    return nominal / math.sqrt(3.0)  # equilateral triangle with side `nominal`


def _outline(label: str, nominal: float, angle: float) -> npt.NDArray[np.float64]:
    """Shape vertices relative to its centre (``(N, 2)``, x/y in pixels).

    ``nominal`` is the circle's diameter, the square's side or the
    triangle's side.  Circles are approximated by a polygon only for extents.
    """
    if label == "circle":
        r = nominal / 2.0
        return np.array([[-r, -r], [r, -r], [r, r], [-r, r]], dtype=np.float64)
    if label == "square":
        r = _circumradius(label, nominal)
        phases = angle + math.pi / 4.0 + np.arange(4) * (math.pi / 2.0)
    elif label == "triangle":
        r = _circumradius(label, nominal)
        phases = angle - math.pi / 2.0 + np.arange(3) * (2.0 * math.pi / 3.0)
    else:
        raise ValueError(f"not a shape label: {label!r}")
    return np.stack([r * np.cos(phases), r * np.sin(phases)], axis=1)


def _draw_shape(
    canvas: FloatImage,
    label: str,
    *,
    centre: tuple[float, float],
    nominal: float,
    angle: float,
    colour: tuple[float, float, float],
) -> Box:
    """Fill the shape into ``canvas`` in place; return its normalised box."""
    height, width = canvas.shape[:2]
    cx, cy = centre
    if label == "circle":
        r = nominal / 2.0
        cv2.circle(
            canvas,
            (round(cx * _SHIFT_SCALE), round(cy * _SHIFT_SCALE)),
            round(r * _SHIFT_SCALE),
            colour,
            -1,
            cv2.LINE_AA,
            _SHIFT_BITS,
        )
        x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
    else:
        pts = _outline(label, nominal, angle) + np.array([cx, cy])
        fixed = np.round(pts * _SHIFT_SCALE).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], colour, cv2.LINE_AA, _SHIFT_BITS)
        x0, y0 = (float(v) for v in pts.min(axis=0))
        x1, y1 = (float(v) for v in pts.max(axis=0))
    # OpenCV puts pixel centres at integer coordinates; a frame spans
    # [-0.5, size - 0.5], hence the +0.5 when normalising.
    return (
        _clip01((x0 + 0.5) / width),
        _clip01((y0 + 0.5) / height),
        _clip01((x1 + 0.5) / width),
        _clip01((y1 + 0.5) / height),
    )


def _clip01(v: float) -> float:
    """Clamp to ``[0, 1]`` (guards against float round-off at the edges)."""
    return min(1.0, max(0.0, v))


def _contrasting_colour(
    rng: np.random.Generator, reference: npt.NDArray[np.floating]
) -> tuple[float, float, float]:
    """A random BGR colour clearly distinct from ``reference`` (mean BGR).

    Random rather than fixed per class so the classifier has to learn the
    geometry, not the colour.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(3)
    ref_luma = float(ref @ _LUMA_BGR)
    for _ in range(128):
        candidate = rng.uniform(0.0, 255.0, size=3)
        if (
            float(np.linalg.norm(candidate - ref)) >= _MIN_CONTRAST
            and abs(float(candidate @ _LUMA_BGR) - ref_luma) >= _MIN_LUMA_CONTRAST
        ):
            return (float(candidate[0]), float(candidate[1]), float(candidate[2]))
    inverse = np.where(ref < 128.0, 255.0, 0.0)  # always >= 128 per channel away
    return (float(inverse[0]), float(inverse[1]), float(inverse[2]))


def _region_mean(
    img: FloatImage, x0: float, y0: float, x1: float, y1: float
) -> npt.NDArray[np.float64]:
    """Mean BGR of the pixels in a (pixel-coordinate) rectangle."""
    height, width = img.shape[:2]
    xa = min(max(math.floor(x0), 0), width - 1)
    ya = min(max(math.floor(y0), 0), height - 1)
    xb = min(max(math.ceil(x1) + 1, xa + 1), width)
    yb = min(max(math.ceil(y1) + 1, ya + 1), height)
    mean: npt.NDArray[np.float64] = img[ya:yb, xa:xb].reshape(-1, 3).mean(axis=0, dtype=np.float64)
    return mean


def _add_sensor_noise(rng: np.random.Generator, img: FloatImage) -> UInt8Image:
    """Per-frame Gaussian noise, then quantise like a camera would."""
    noisy = img + rng.normal(0.0, _SENSOR_NOISE_SIGMA, size=img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Stills
# --------------------------------------------------------------------------


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    label: str | None = None,
    *,
    scale_range: tuple[float, float] = _SCENE_SCALE_RANGE,
) -> Scene:
    """Render one still: a textured background and, unless background, one shape.

    Args:
        rng: Source of all randomness; the same generator state gives the
            same scene.
        size: ``(width, height)`` in pixels.
        label: One of :data:`SHAPE_LABELS`; ``None`` picks one uniformly.
        scale_range: Shape size as a fraction of the short side (circle
            diameter / square side / triangle side).

    Returns:
        A :class:`Scene` whose box is ``None`` for ``"background"``.  The shape
        is fully inside the frame with a random contrasting colour, position
        and (square/triangle) rotation.
    """
    width, height = _check_size(size)
    if label is None:
        label = SHAPE_LABELS[int(rng.integers(0, len(SHAPE_LABELS)))]
    if label not in SHAPE_LABELS:
        raise ValueError(f"label must be one of {SHAPE_LABELS}, got {label!r}")
    lo, hi = scale_range
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1: {scale_range}")

    canvas = _textured_background(rng, width, height)
    box: Box | None = None
    if label != BACKGROUND_LABEL:
        nominal = float(rng.uniform(lo, hi)) * min(width, height)
        angle = 0.0 if label == "circle" else float(rng.uniform(0.0, 2.0 * math.pi))
        rel = _outline(label, nominal, angle)
        (min_x, min_y), (max_x, max_y) = rel.min(axis=0), rel.max(axis=0)
        # Keep the whole shape inside: extents between pixel 0 and size - 1.
        cx = _uniform_or_mid(rng, -float(min_x), width - 1.0 - float(max_x))
        cy = _uniform_or_mid(rng, -float(min_y), height - 1.0 - float(max_y))
        reference = _region_mean(canvas, cx + min_x, cy + min_y, cx + max_x, cy + max_y)
        colour = _contrasting_colour(rng, reference)
        box = _draw_shape(
            canvas, label, centre=(cx, cy), nominal=nominal, angle=angle, colour=colour
        )
    image = _add_sensor_noise(rng, canvas)
    return Scene(image=image, label=label, box=box)


def _uniform_or_mid(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in ``[lo, hi]``; the midpoint when the range is empty."""
    if hi <= lo:
        return (lo + hi) / 2.0
    return float(rng.uniform(lo, hi))


def write_image_folder(
    out_dir: Path,
    per_class: int,
    seed: int,
    size: tuple[int, int] = (96, 96),
    *,
    labels: Sequence[str] = SHAPE_LABELS,
    ext: str = "png",
) -> dict[str, int]:
    """Write a folder-per-class dataset: ``out_dir/<label>/<label>_<i>.<ext>``.

    Each image gets its own generator seeded from ``(seed, label, i)``, so an
    image does not change when ``per_class`` or ``labels`` change; that keeps
    small test datasets a prefix of larger benchmark ones.

    Returns:
        Number of images written per label.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    ext = ext.lower().lstrip(".")
    if ext not in _IMAGE_EXTS:
        raise ValueError(f"ext must be one of {sorted(_IMAGE_EXTS)}, got {ext!r}")
    labels = tuple(labels)
    for label in labels:
        if label not in SHAPE_LABELS:
            raise ValueError(f"label must be one of {SHAPE_LABELS}, got {label!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate labels: {labels}")

    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    for label in labels:
        class_dir = out_dir / label
        class_dir.mkdir(parents=True, exist_ok=True)
        label_index = SHAPE_LABELS.index(label)
        for i in range(per_class):
            rng = np.random.default_rng([seed, label_index, i])
            scene = render_scene(rng, size, label)
            path = class_dir / f"{label}_{i}.{ext}"
            if not cv2.imwrite(str(path), scene.image):
                raise OSError(f"cv2.imwrite failed for {path}")
        counts[label] = per_class
    logger.info(
        "wrote %d synthetic images (%s) to %s",
        sum(counts.values()),
        ", ".join(f"{k}={v}" for k, v in counts.items()),
        out_dir,
    )
    return counts


# --------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Track:
    """How one appearance is drawn: geometry at its start and end."""

    appearance: Appearance
    nominal: float
    start_centre: tuple[float, float]
    end_centre: tuple[float, float]
    start_angle: float
    end_angle: float
    colour: tuple[float, float, float]

    def pose(self, t_s: float) -> tuple[tuple[float, float], float]:
        """Centre and angle at time ``t_s`` (linear interpolation)."""
        a = self.appearance
        p = min(1.0, max(0.0, (t_s - a.start_s) / (a.end_s - a.start_s)))
        cx = self.start_centre[0] + p * (self.end_centre[0] - self.start_centre[0])
        cy = self.start_centre[1] + p * (self.end_centre[1] - self.start_centre[1])
        angle = self.start_angle + p * (self.end_angle - self.start_angle)
        return (cx, cy), angle


def _active_appearance(appearances: Sequence[Appearance], t_s: float) -> Appearance | None:
    """The appearance on screen at ``t_s``; used by writer and truth alike."""
    for appearance in appearances:
        if appearance.active_at(t_s):
            return appearance
    return None


def _validate_script(script: Sequence[Appearance]) -> tuple[Appearance, ...]:
    """Sort by start time and reject overlaps, naming the offending pair."""
    ordered = tuple(sorted(script, key=lambda a: (a.start_s, a.end_s)))
    for prev, cur in itertools.pairwise(ordered):
        if cur.start_s < prev.end_s:
            raise ValueError(f"overlapping appearances: {prev} and {cur}")
    return ordered


def _plan_track(
    rng: np.random.Generator,
    appearance: Appearance,
    background: FloatImage,
) -> _Track:
    """Choose size, path, rotation and colour for one appearance.

    The shape drifts horizontally across most of the frame (direction random)
    with a little vertical drift and, for square/triangle, a little rotation.
    Positions keep the shape's enclosing circle inside the frame so it stays
    fully visible whatever its rotation.
    """
    height, width = background.shape[:2]
    nominal = float(rng.uniform(*_VIDEO_SCALE_RANGE)) * height
    radius = _circumradius(appearance.label, nominal)
    x_lo, x_hi = radius, width - 1.0 - radius
    y_lo, y_hi = radius, height - 1.0 - radius
    if x_hi < x_lo:
        x_lo = x_hi = (width - 1.0) / 2.0
    if y_hi < y_lo:
        y_lo = y_hi = (height - 1.0) / 2.0
    x_span = x_hi - x_lo
    xs = (
        x_lo + float(rng.uniform(0.0, 0.2)) * x_span,
        x_hi - float(rng.uniform(0.0, 0.2)) * x_span,
    )
    if rng.random() < 0.5:
        xs = (xs[1], xs[0])
    y0 = _uniform_or_mid(rng, y_lo, y_hi)
    y1 = min(y_hi, max(y_lo, y0 + float(rng.uniform(-0.1, 0.1)) * height))
    if appearance.label == "circle":
        a0 = a1 = 0.0
    else:
        a0 = float(rng.uniform(0.0, 2.0 * math.pi))
        a1 = a0 + float(rng.uniform(-0.4, 0.4))
    reference = _region_mean(
        background,
        min(xs) - radius,
        min(y0, y1) - radius,
        max(xs) + radius,
        max(y0, y1) + radius,
    )
    return _Track(
        appearance=appearance,
        nominal=nominal,
        start_centre=(xs[0], y0),
        end_centre=(xs[1], y1),
        start_angle=a0,
        end_angle=a1,
        colour=_contrasting_colour(rng, reference),
    )


def write_shapes_video(
    path: Path,
    seed: int,
    size: tuple[int, int] = (160, 120),
    fps: float = 10,
    script: Sequence[Appearance] | None = None,
    *,
    duration_s: float | None = None,
) -> VideoTruth:
    """Write a video where shapes appear, drift and disappear per ``script``.

    The background is a static textured scene (same generator as stills) with
    slight per-frame sensor noise, so "background" frames are close to, but not
    bit-identical with, each other, like a real fixed camera.

    Args:
        path: Output file; ``.mp4`` uses fourcc ``mp4v``, ``.avi`` ``MJPG``.
        seed: Seeds everything (background, tracks, noise).
        size: ``(width, height)`` in pixels.
        fps: Frames per second.
        script: Non-overlapping appearances; ``None`` means
            :func:`default_demo_script`.
        duration_s: Video length; default is the last appearance's end plus
            2 s.

    Returns:
        The :class:`VideoTruth` (labels and boxes per frame).

    Raises:
        ValueError: Overlapping appearances, unknown extension, bad fps or a
            duration shorter than the script.
        OSError: OpenCV could not open a writer for ``path`` (missing codec or
            unwritable location).
    """
    path = Path(path)
    width, height = _check_size(size)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    fourcc_code = _VIDEO_FOURCC.get(path.suffix.lower())
    if fourcc_code is None:
        raise ValueError(
            f"unsupported video extension {path.suffix!r}; use one of {sorted(_VIDEO_FOURCC)}"
        )
    appearances = _validate_script(default_demo_script() if script is None else script)
    last_end = max((a.end_s for a in appearances), default=0.0)
    if duration_s is None:
        duration_s = last_end + 2.0
    if duration_s < last_end:
        raise ValueError(f"duration_s={duration_s} ends before the script ({last_end} s)")
    frame_count = max(1, round(duration_s * fps))

    rng = np.random.default_rng(seed)
    background = _textured_background(rng, width, height)
    tracks = {a: _plan_track(rng, a, background) for a in appearances}

    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter.fourcc(*fourcc_code)
    writer = cv2.VideoWriter(str(path), fourcc, float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(
            f"cv2.VideoWriter could not open {path} with fourcc {fourcc_code!r} "
            f"({width}x{height} @ {fps} fps); is the codec available in this "
            "OpenCV build and the directory writable?"
        )
    boxes: list[Box | None] = []
    try:
        for index in range(frame_count):
            t_s = index / fps
            appearance = _active_appearance(appearances, t_s)
            frame = background.copy()
            box: Box | None = None
            if appearance is not None:
                track = tracks[appearance]
                centre, angle = track.pose(t_s)
                box = _draw_shape(
                    frame,
                    appearance.label,
                    centre=centre,
                    nominal=track.nominal,
                    angle=angle,
                    colour=track.colour,
                )
            boxes.append(box)
            writer.write(_add_sensor_noise(rng, frame))
    finally:
        writer.release()

    logger.info(
        "wrote synthetic video %s: %d frames at %s fps, %dx%d, %d appearance(s)",
        path,
        frame_count,
        fps,
        width,
        height,
        len(appearances),
    )
    return VideoTruth(
        fps=float(fps),
        frame_count=frame_count,
        size=(width, height),
        appearances=appearances,
        frame_boxes=tuple(boxes),
    )
