"""An identity dataset from an ORL folder, cut the way the device cuts detected faces.

ORL (``DIR/sNN/*.pgm``) is already an image-classification folder, and
``edgewatch train image-classification`` reads it as it stands (docs/real-data.md).
Behind a face detector, though, the identity model does not see ORL's studio
pictures: it sees crops of a camera frame around a detected box, with a margin, some
background in the corners and a box that is a little off. ``write_identity_folder``
therefore writes, for each person:

* ``holdout`` pictures set aside (``DIR/heldout/<person>/``, the original files),
  which neither model of the face example trains on: face scenes made from them are
  the end-to-end test;
* the other pictures as they are (``DIR/train/<person>/``), plus ``variants`` crops of
  each: the picture pasted into a generated scene (face_scenes.py), its box jittered
  by up to ``jitter`` of its size, cut with ``device.detection.crops`` and the chained
  pipeline's own crop settings.

The split is seeded per person, so it does not change when people are added. Variants
of one picture all stay on the training side of this split; the training command's
own validation/test split does mix them, so its test accuracy is optimistic; the
held-out pictures give the honest figure.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from device.detection.crops import CropSettings, crop
from device.detection.objects import NormBox
from device.errors import DatasetError
from training.datasets.image_folder import scan_folder
from training.synthetic.face_scenes import SceneOptions, paste
from training.synthetic.face_sprites import OrlFaces
from training.synthetic.shapes import _add_sensor_noise, _textured_background

log = logging.getLogger(__name__)

TRAIN_DIR = "train"
HELDOUT_DIR = "heldout"


@dataclass(frozen=True)
class IdentitySplit:
    """Where ``write_identity_folder`` put things, and which pictures went where."""

    train_dir: Path
    heldout_dir: Path
    #: (person, original file) of the pictures trained on and of those held out.
    train_files: tuple[tuple[str, Path], ...]
    heldout_files: tuple[tuple[str, Path], ...]
    images_written: int


def split_people(
    root: Path, holdout: int, seed: int
) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(train, held out) pictures of every person; ``holdout`` of each held out."""
    index = scan_folder(Path(root), min_classes=2)
    train: list[tuple[str, Path]] = []
    heldout: list[tuple[str, Path]] = []
    for person_index, (person, files) in enumerate(zip(index.labels, index.files, strict=True)):
        if len(files) <= holdout:
            raise DatasetError(
                f"{person} in {root} has {len(files)} picture(s); holding out {holdout} "
                "leaves none to train on: lower holdout or add pictures"
            )
        order = np.random.default_rng([seed, person_index]).permutation(len(files))
        held = set(order[:holdout].tolist())
        for position, path in enumerate(files):
            (heldout if position in held else train).append((person, path))
    return train, heldout


def jittered_box(
    rng: np.random.Generator, box: tuple[int, int, int, int], width: int, height: int,
    jitter: float,
) -> NormBox:  # fmt: skip
    """``box`` moved and resized by up to ``jitter`` of its size, as a detector errs."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    dx, dy = rng.uniform(-jitter, jitter, size=2) * (bw, bh)
    grow = 1.0 + float(rng.uniform(-jitter, jitter))
    cx, cy = (x0 + x1) / 2.0 + dx, (y0 + y1) / 2.0 + dy
    half_w, half_h = bw * grow / 2.0, bh * grow / 2.0
    return NormBox(
        min(1.0, max(0.0, (cx - half_w) / width)),
        min(1.0, max(0.0, (cy - half_h) / height)),
        min(1.0, max(0.0, (cx + half_w) / width)),
        min(1.0, max(0.0, (cy + half_h) / height)),
    )


def write_identity_folder(
    orl_root: Path,
    out_dir: Path,
    crop_settings: CropSettings,
    *,
    holdout: int = 1,
    variants: int = 3,
    jitter: float = 0.08,
    seed: int = 0,
    scene: SceneOptions | None = None,
) -> IdentitySplit:
    """Write ``out_dir/train/<person>/`` and ``out_dir/heldout/<person>/`` (see the
    module docstring)."""
    if holdout < 0 or variants < 0 or not 0.0 <= jitter < 0.5:
        raise ValueError("holdout and variants must be >= 0 and jitter in [0, 0.5)")
    scene = scene or SceneOptions()
    train, heldout = split_people(orl_root, holdout, seed)
    out_dir = Path(out_dir)
    written = 0
    for person, path in heldout:
        target = out_dir / HELDOUT_DIR / person
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
    faces = OrlFaces(train)
    width, height = scene.size
    lo, hi = scene.scale_range
    for number, (person, path) in enumerate(train):
        target = out_dir / TRAIN_DIR / person
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)
        written += 1
        for variant in range(variants):
            rng = np.random.default_rng([seed, number, variant])
            sprite = faces.sprite_of(rng, person, path)
            face_h = round(float(rng.uniform(lo, hi)) * height)
            face_w = round(sprite.alpha.shape[1] * face_h / sprite.alpha.shape[0])
            pixels = cv2.resize(sprite.image, (face_w, face_h), interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(sprite.alpha, (face_w, face_h), interpolation=cv2.INTER_AREA)
            frame = _add_sensor_noise(rng, _textured_background(rng, width, height))
            x = int(rng.integers(0, width - face_w + 1))
            y = int(rng.integers(0, height - face_h + 1))
            box = paste(frame, np.asarray(pixels), np.asarray(alpha, dtype=np.float32), x, y)
            cut = crop(frame, jittered_box(rng, box, width, height, jitter), crop_settings)
            if cut is None:
                continue
            out = target / f"{path.stem}_crop{variant}.png"
            if not cv2.imwrite(str(out), cut.image):
                raise OSError(f"could not write {out}")
            written += 1
    log.info(
        "identity folder %s: %d people, %d images to train on, %d held out",
        out_dir, len({p for p, _ in train}), written, len(heldout),
    )  # fmt: skip
    return IdentitySplit(
        train_dir=out_dir / TRAIN_DIR,
        heldout_dir=out_dir / HELDOUT_DIR,
        train_files=tuple(train),
        heldout_files=tuple(heldout),
        images_written=written,
    )
