"""Faces to paste into generated scenes: real ones from an ORL folder, or drawn ones.

A sprite is a BGR face picture with an alpha mask (1 on the face, 0 outside, a soft
edge in between) and the identity it shows. Scenes (face_scenes.py) paste sprites onto
generated backgrounds; the identity dataset (training/datasets/face_identity.py) cuts
them out again the way the device does.

* ``OrlFaces`` reads an ORL-layout folder (``DIR/sNN/*.pgm``, grey 92x112; any
  ``DIR/<person>/<images>`` folder works). The mask is the ellipse inscribed in the
  picture, which keeps face and hair and drops the studio background's corners, and
  each paste gets a skin tint, a brightness/contrast change and maybe a mirror, so a
  detector does not learn "a grey rectangle".
* ``CartoonFaces`` draws faces with OpenCV (head ellipse, eyes, brows, nose, mouth,
  sometimes hair, all varied) for tests and machines without ORL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from device.errors import DatasetError
from training.datasets.image_folder import read_image, scan_folder

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatImage = np.ndarray[Any, np.dtype[np.float32]]

#: ORL's picture size (width, height); cartoon faces use the same, so one crop aspect
#: serves both.
ORL_SIZE = (92, 112)
#: Width / height of an ORL picture: the aspect identity crops should keep.
ORL_ASPECT = ORL_SIZE[0] / ORL_SIZE[1]
#: Skin tints (BGR multipliers of a grey picture), light to dark.
_SKIN_TINTS = np.array(
    [
        [0.80, 0.88, 1.00],
        [0.70, 0.82, 1.00],
        [0.62, 0.76, 0.95],
        [0.55, 0.68, 0.85],
        [0.48, 0.58, 0.72],
    ],
    dtype=np.float32,
)
#: Skin colours (BGR) of drawn faces.
_SKIN_COLOURS = np.array(
    [[189, 224, 255], [160, 200, 240], [130, 175, 225], [100, 140, 190], [60, 95, 140]],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class FaceSprite:
    """A face to paste: BGR pixels, a matching alpha mask in 0..1, and whose it is."""

    image: UInt8Image
    alpha: FloatImage
    identity: str
    #: The file it came from (None for a drawn face).
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.image.shape[:2] != self.alpha.shape or self.image.ndim != 3:
            raise ValueError(
                f"sprite image {self.image.shape} and alpha {self.alpha.shape} disagree"
            )


class FaceSource(Protocol):
    """Something that hands out face sprites."""

    def sprite(self, rng: np.random.Generator) -> FaceSprite: ...


def ellipse_alpha(width: int, height: int, feather: float = 1.0) -> FloatImage:
    """The ellipse inscribed in a width x height picture, with a soft edge."""
    mask = np.zeros((height, width), dtype=np.float32)
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    cv2.ellipse(mask, (centre, (float(width), float(height)), 0.0), 1.0, -1, cv2.LINE_AA)
    if feather > 0:
        mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), feather), dtype=np.float32)
    return mask


class OrlFaces:
    """Sprites from ORL-layout pictures: one sub-folder per person."""

    def __init__(self, files: Sequence[tuple[str, Path]]) -> None:
        if not files:
            raise DatasetError("no face pictures to paste: the face list is empty")
        self.files = tuple(files)
        self._cache: dict[Path, UInt8Image] = {}

    @classmethod
    def from_folder(cls, root: Path) -> OrlFaces:
        """Every picture of ``root/<person>/``; person = folder name."""
        index = scan_folder(Path(root), min_classes=1)
        files = [
            (person, path)
            for person, paths in zip(index.labels, index.files, strict=True)
            for path in paths
        ]
        log.info("face pictures: %d of %d people in %s", len(files), len(index.labels), root)
        return cls(files)

    @property
    def identities(self) -> tuple[str, ...]:
        return tuple(sorted({person for person, _ in self.files}))

    def _grey(self, path: Path) -> UInt8Image:
        cached = self._cache.get(path)
        if cached is None:
            image = read_image(path)
            if image is None:
                raise DatasetError(f"{path} is not a readable image; remove or replace it")
            cached = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
            self._cache[path] = cached
        return cached

    def sprite(self, rng: np.random.Generator) -> FaceSprite:
        person, path = self.files[int(rng.integers(len(self.files)))]
        return self.sprite_of(rng, person, path)

    def sprite_of(self, rng: np.random.Generator, person: str, path: Path) -> FaceSprite:
        """One picture as a sprite, with a random tint, exposure and mirror."""
        grey = self._grey(path).astype(np.float32)
        contrast = float(rng.uniform(0.8, 1.2))
        brightness = float(rng.uniform(-25.0, 25.0))
        grey = (grey - 128.0) * contrast + 128.0 + brightness
        tint = _SKIN_TINTS[int(rng.integers(len(_SKIN_TINTS)))]
        bgr = np.clip(grey[..., np.newaxis] * tint, 0.0, 255.0).astype(np.uint8)
        if rng.random() < 0.5:
            bgr = bgr[:, ::-1]
        height, width = grey.shape
        return FaceSprite(
            image=np.ascontiguousarray(bgr),
            alpha=ellipse_alpha(width, height),
            identity=person,
            path=path,
        )


class CartoonFaces:
    """Drawn faces, ORL-sized: varied enough that a detector must learn "a face"."""

    identity = "cartoon"

    def sprite(self, rng: np.random.Generator) -> FaceSprite:
        width, height = ORL_SIZE
        image = np.zeros((height, width, 3), dtype=np.float32)
        mask = np.zeros((height, width), dtype=np.float32)
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        skin = _SKIN_COLOURS[int(rng.integers(len(_SKIN_COLOURS)))] * rng.uniform(0.85, 1.1)
        skin_t = tuple(float(v) for v in np.clip(skin, 0, 255))
        head_axes = (width / 2.0 - 1.0, height / 2.0 - 1.0)
        cv2.ellipse(image, ((cx, cy), (2 * head_axes[0], 2 * head_axes[1]), 0.0), skin_t, -1)
        cv2.ellipse(mask, ((cx, cy), (2 * head_axes[0], 2 * head_axes[1]), 0.0), 1.0, -1)
        if rng.random() < 0.7:
            hair = tuple(float(v) for v in rng.uniform(10, 120, size=3))
            cv2.ellipse(
                image,
                (round(cx), round(cy)),
                (round(head_axes[0]), round(head_axes[1])),
                0.0,
                180.0,
                360.0,
                hair,
                -1,
            )
            # The face itself, in front of the hair.
            cv2.ellipse(
                image,
                ((cx, cy + height * 0.08), (width * 0.8, height * 0.8), 0.0),
                skin_t,
                -1,
            )
        eye_y = cy - height * rng.uniform(0.02, 0.1)
        eye_dx = width * rng.uniform(0.16, 0.22)
        eye_r = (width * rng.uniform(0.07, 0.11), height * rng.uniform(0.04, 0.07))
        iris = tuple(float(v) for v in rng.uniform(20, 140, size=3))
        for side in (-1.0, 1.0):
            centre = (cx + side * eye_dx, eye_y)
            cv2.ellipse(image, (centre, (2 * eye_r[0], 2 * eye_r[1]), 0.0), (245, 245, 245), -1)
            cv2.circle(image, (round(centre[0]), round(centre[1])), round(eye_r[1]), iris, -1)
            if rng.random() < 0.8:
                brow_y = round(eye_y - eye_r[1] - height * 0.05)
                cv2.line(
                    image,
                    (round(centre[0] - eye_r[0]), brow_y + int(rng.integers(-2, 3))),
                    (round(centre[0] + eye_r[0]), brow_y),
                    (40, 40, 60),
                    2,
                    cv2.LINE_AA,
                )
        nose_top, nose_bottom = eye_y + height * 0.06, cy + height * rng.uniform(0.1, 0.16)
        shade = tuple(float(v) * 0.7 for v in skin_t)
        cv2.line(
            image,
            (round(cx), round(nose_top)),
            (round(cx + width * rng.uniform(-0.04, 0.04)), round(nose_bottom)),
            shade,
            2,
            cv2.LINE_AA,
        )
        mouth_y = cy + height * rng.uniform(0.22, 0.3)
        mouth_w = width * rng.uniform(0.15, 0.28)
        lips = (70.0, 60.0, float(rng.uniform(140, 200)))
        if rng.random() < 0.6:  # a smile
            cv2.ellipse(
                image,
                (round(cx), round(mouth_y - height * 0.03)),
                (round(mouth_w), round(height * rng.uniform(0.03, 0.07))),
                0.0,
                10.0,
                170.0,
                lips,
                2,
                cv2.LINE_AA,
            )
        else:
            cv2.ellipse(
                image, ((cx, mouth_y), (2 * mouth_w, height * 0.05), 0.0), lips, -1, cv2.LINE_AA
            )
        alpha = np.asarray(cv2.GaussianBlur(mask, (0, 0), 1.0), dtype=np.float32)
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            pixels, alpha = pixels[:, ::-1], alpha[:, ::-1]
        return FaceSprite(
            image=np.ascontiguousarray(pixels),
            alpha=np.ascontiguousarray(alpha),
            identity=self.identity,
        )
