"""Face-detection scenes: face pictures pasted onto generated backgrounds, exact boxes.

ORL has faces but no scenes, and a face detector must learn to find a face somewhere in
a frame. This module composes them: a textured background (the shapes module's, so
the detector meets the same clutter the shapes data has), a few distractors (plain
ellipses and rectangles, some skin-coloured, so "a blob" is not "a face"), then zero to
``max_faces`` face sprites at random scale and position, never overlapping, each one's
box taken from where its mask actually covers the scene.

``write_face_scenes`` writes the project's object-detection folder: ``DIR/images/*``
and ``DIR/boxes.csv`` (``filename,width,height,class,xmin,ymin,xmax,ymax``, pixels,
``xmax``/``ymax`` exclusive, class ``face``). A scene without faces is an image with no
row: a negative. Beside them, ``DIR/identities.csv`` says whose face each box is
(``filename,xmin,ymin,xmax,ymax,identity``), which evaluating a chained pipeline needs
and the detector ignores.

Each scene has its own generator (``[seed, index]``), so the first N scenes of a larger
set are the N scenes of a smaller one.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.synthetic.face_sprites import FaceSource, FaceSprite
from training.synthetic.shapes import _add_sensor_noise, _textured_background

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatImage = np.ndarray[Any, np.dtype[np.float32]]

FACE_CLASS = "face"
BOXES_FILE = "boxes.csv"
IDENTITIES_FILE = "identities.csv"
IMAGES_DIR = "images"
BOXES_HEADER = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
IDENTITIES_HEADER = ("filename", "xmin", "ymin", "xmax", "ymax", "identity")
#: Alpha at or above which a sprite pixel counts as face (the box's edge).
_BOX_ALPHA = 0.5
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class FaceBox:
    """One pasted face: pixel box (x1, y1 exclusive) and identity."""

    x0: int
    y0: int
    x1: int
    y1: int
    identity: str


@dataclass(frozen=True)
class SceneOptions:
    """What scenes look like."""

    #: (width, height) in pixels.
    size: tuple[int, int] = (320, 240)
    max_faces: int = 3
    #: Share of scenes with no face at all.
    empty_share: float = 0.15
    #: Face height as a share of the frame height.
    scale_range: tuple[float, float] = (0.18, 0.6)
    #: Distractor blobs per scene, at most.
    max_distractors: int = 3

    def __post_init__(self) -> None:
        width, height = self.size
        lo, hi = self.scale_range
        if width < 32 or height < 32:
            raise ValueError(f"scenes need at least 32x32 pixels, got {self.size}")
        if self.max_faces < 0 or not 0.0 <= self.empty_share <= 1.0:
            raise ValueError("max_faces must be >= 0 and empty_share in 0..1")
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1, got {self.scale_range}")


@dataclass(frozen=True, eq=False)
class FaceScene:
    """A composed scene: the picture, the background it was pasted on, the faces."""

    image: UInt8Image
    #: The same scene before any face was pasted (for checking boxes).
    background: UInt8Image
    faces: tuple[FaceBox, ...]


@dataclass(frozen=True)
class SceneSetSummary:
    """What ``write_face_scenes`` wrote."""

    out_dir: Path
    images: int
    faces: int
    empty_images: int
    identities: tuple[str, ...]


def _face_count(rng: np.random.Generator, options: SceneOptions) -> int:
    if options.max_faces == 0 or rng.random() < options.empty_share:
        return 0
    # One face most often, more now and then: a doorway camera, not a crowd.
    weights = np.array([0.5**k for k in range(options.max_faces)])
    return 1 + int(rng.choice(options.max_faces, p=weights / weights.sum()))


def _draw_distractors(rng: np.random.Generator, canvas: FloatImage, count: int) -> None:
    height, width = canvas.shape[:2]
    for _ in range(count):
        colour = (
            tuple(float(v) for v in rng.uniform(60, 230, size=3))
            if rng.random() < 0.5
            else (float(rng.uniform(90, 190)), float(rng.uniform(130, 220)), 230.0)
        )
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (
            int(rng.uniform(0.04, 0.15) * height),
            int(rng.uniform(0.05, 0.2) * height),
        )
        if rng.random() < 0.6:
            cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            corner = (centre[0] + axes[0], centre[1] + axes[1])
            cv2.rectangle(canvas, centre, corner, colour, -1)


def _scaled(sprite: FaceSprite, height: int) -> tuple[UInt8Image, FloatImage]:
    src_h, src_w = sprite.alpha.shape
    width = max(1, round(src_w * height / src_h))
    interpolation = cv2.INTER_AREA if height < src_h else cv2.INTER_LINEAR
    image = cv2.resize(sprite.image, (width, height), interpolation=interpolation)
    alpha = cv2.resize(sprite.alpha, (width, height), interpolation=interpolation)
    return np.asarray(image, dtype=np.uint8), np.asarray(alpha, dtype=np.float32)


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in placed)


def paste(
    canvas: UInt8Image, image: UInt8Image, alpha: FloatImage, x: int, y: int
) -> tuple[int, int, int, int]:
    """Alpha-blend a sprite into ``canvas`` at (x, y), in place; returns the box of the
    pixels where its alpha is at least one half (x1, y1 exclusive)."""
    height, width = alpha.shape
    region = canvas[y : y + height, x : x + width]
    weight = alpha[..., np.newaxis]
    blended = region.astype(np.float32) * (1.0 - weight) + image.astype(np.float32) * weight
    region[:] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    rows = np.flatnonzero((alpha >= _BOX_ALPHA).any(axis=1))
    cols = np.flatnonzero((alpha >= _BOX_ALPHA).any(axis=0))
    return x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1


def render_face_scene(
    rng: np.random.Generator, source: FaceSource, options: SceneOptions | None = None
) -> FaceScene:
    """One scene; faces lie wholly inside the frame and never overlap."""
    options = options or SceneOptions()
    width, height = options.size
    canvas = _textured_background(rng, width, height)
    _draw_distractors(rng, canvas, int(rng.integers(0, options.max_distractors + 1)))
    background = _add_sensor_noise(rng, canvas)
    image = background.copy()
    placed: list[tuple[int, int, int, int]] = []
    faces: list[FaceBox] = []
    lo, hi = options.scale_range
    for _ in range(_face_count(rng, options)):
        sprite = source.sprite(rng)
        face_h = max(8, round(float(rng.uniform(lo, hi)) * height))
        pixels, alpha = _scaled(sprite, min(face_h, height))
        face_w = alpha.shape[1]
        if face_w > width:
            continue
        for _try in range(_PLACEMENT_TRIES):
            x = int(rng.integers(0, width - face_w + 1))
            y = int(rng.integers(0, height - alpha.shape[0] + 1))
            if not _overlaps((x, y, x + face_w, y + alpha.shape[0]), placed):
                break
        else:
            continue  # no room left for a face this size
        placed.append((x, y, x + face_w, y + alpha.shape[0]))
        x0, y0, x1, y1 = paste(image, pixels, alpha, x, y)
        faces.append(FaceBox(x0, y0, x1, y1, sprite.identity))
    return FaceScene(image=image, background=background, faces=tuple(faces))


def write_face_scenes(
    out_dir: Path,
    source: FaceSource,
    count: int,
    seed: int = 0,
    options: SceneOptions | None = None,
    *,
    ext: str = "jpg",
) -> SceneSetSummary:
    """Write ``count`` scenes as an object-detection folder (see the module docstring)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    options = options or SceneOptions()
    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    width, height = options.size
    digits = max(5, math.ceil(math.log10(count + 1)))
    faces = empty = 0
    identities: set[str] = set()
    with (
        (out_dir / BOXES_FILE).open("w", newline="", encoding="utf-8") as boxes_file,
        (out_dir / IDENTITIES_FILE).open("w", newline="", encoding="utf-8") as ids_file,
    ):
        boxes = csv.writer(boxes_file)
        ids = csv.writer(ids_file)
        boxes.writerow(BOXES_HEADER)
        ids.writerow(IDENTITIES_HEADER)
        for index in range(count):
            scene = render_face_scene(np.random.default_rng([seed, index]), source, options)
            name = f"scene_{index:0{digits}d}.{ext}"
            path = images_dir / name
            if not cv2.imwrite(str(path), scene.image):
                raise OSError(f"could not write {path}")
            for face in scene.faces:
                boxes.writerow(
                    (name, width, height, FACE_CLASS, face.x0, face.y0, face.x1, face.y1)
                )
                ids.writerow((name, face.x0, face.y0, face.x1, face.y1, face.identity))
                identities.add(face.identity)
            faces += len(scene.faces)
            empty += not scene.faces
    log.info("wrote %d scenes (%d faces, %d without) to %s", count, faces, empty, out_dir)
    return SceneSetSummary(
        out_dir=out_dir,
        images=count,
        faces=faces,
        empty_images=empty,
        identities=tuple(sorted(identities)),
    )


def read_identities(out_dir: Path) -> dict[str, list[FaceBox]]:
    """``identities.csv`` of a scene folder: the faces of each image file."""
    faces: dict[str, list[FaceBox]] = {}
    with (Path(out_dir) / IDENTITIES_FILE).open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            box = FaceBox(
                int(row["xmin"]), int(row["ymin"]), int(row["xmax"]), int(row["ymax"]),
                row["identity"],
            )  # fmt: skip
            faces.setdefault(row["filename"], []).append(box)
    return faces
