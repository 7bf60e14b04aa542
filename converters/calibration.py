"""Representative inputs for int8 calibration, prepared the way the device prepares frames.

Int8 ranges are fixed at conversion time from these samples, so they must go through
the device's own resize and normalisation (``device.preprocessing.image``); any other
path would calibrate for inputs the device never produces. Training imports
``list_images`` and ``IMAGE_EXTENSIONS`` from here so both agree on what an image is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converters.model_dir import CALIBRATION_FILE, SampleSet, read_samples
from device.bundle.manifest import ImagePreprocessing
from device.errors import DatasetError
from device.preprocessing.image import normalise, resize_frame

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".pgm")
DEFAULT_LIMIT = 300


def list_images(directory: Path) -> list[Path]:
    """Every image below ``directory``, sorted so runs over the same folder agree."""
    if not directory.is_dir():
        raise DatasetError(f"{directory} is not a directory of images")
    found = [
        path
        for path in directory.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    return sorted(found, key=lambda path: path.relative_to(directory).as_posix())


def _reading_order(count: int, limit: int, seed: int) -> list[int]:
    # A seeded shuffle rather than the first N: sorted order groups images by class
    # folder, and the first 300 would often cover only one or two classes.
    if count <= limit:
        return list(range(count))
    return [int(i) for i in np.random.default_rng(seed).permutation(count)]


def load_calibration_images(
    directory: Path, spec: ImagePreprocessing, limit: int = DEFAULT_LIMIT, seed: int = 0
) -> SampleSet:
    """Read up to ``limit`` readable images, resized as the device resizes camera frames.

    Unreadable files are skipped (and counted in a warning) without using up the limit;
    the result keeps the folder's sorted order, so it depends only on the folder's
    contents, ``limit`` and ``seed``.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    paths = list_images(directory)
    frames: dict[int, np.ndarray[Any, np.dtype[np.uint8]]] = {}
    unreadable: list[Path] = []
    for index in _reading_order(len(paths), limit, seed):
        if len(frames) == limit:
            break
        # IMREAD_COLOR gives BGR for colour, grey and paletted files alike, which is what
        # the device's capture path hands to resize_frame.
        image = cv2.imread(str(paths[index]), cv2.IMREAD_COLOR)
        if image is None:
            unreadable.append(paths[index])
            continue
        frames[index] = resize_frame(np.asarray(image, dtype=np.uint8), spec)
    if unreadable:
        log.warning(
            "skipped %d unreadable image(s) in %s, e.g. %s",
            len(unreadable),
            directory.name,
            unreadable[0].relative_to(directory).as_posix(),
        )
    if not frames:
        raise DatasetError(
            f"{directory} holds no readable images; calibration needs a folder with "
            f"images ({', '.join(IMAGE_EXTENSIONS)}), in subfolders or not, that look "
            "like what the camera will see"
        )
    log.info("loaded %d calibration images from %s", len(frames), directory.name)
    return SampleSet(x=np.stack([frames[i] for i in sorted(frames)]).astype(np.uint8), y=None)


def calibration_samples(
    model_dir: Path,
    spec: ImagePreprocessing,
    calibration_dir: Path | None = None,
    limit: int = DEFAULT_LIMIT,
    seed: int = 0,
) -> SampleSet:
    """Images from ``calibration_dir`` when given, else the model folder's calibration.npz."""
    if calibration_dir is not None:
        return load_calibration_images(calibration_dir, spec, limit=limit, seed=seed)
    samples = read_samples(model_dir / CALIBRATION_FILE)
    expected = (spec.height, spec.width)
    if samples.x.ndim != 4 or samples.x.shape[1:3] != expected:
        raise DatasetError(
            f"{model_dir / CALIBRATION_FILE} holds inputs of shape {samples.x.shape[1:]}, "
            f"but the model's preprocessing is {spec.width}x{spec.height}; re-run "
            "`edgewatch train` or pass --calibration DIR"
        )
    if len(samples) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
        samples = SampleSet(x=samples.x[chosen], y=None)
    return samples


def representative_inputs(
    samples: SampleSet, spec: ImagePreprocessing
) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    """Batch-of-one float inputs, normalised by the device's own function."""
    return [normalise(frame, spec)[np.newaxis, ...] for frame in samples.x]
