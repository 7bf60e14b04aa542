"""Fashion-MNIST (idx files) exported as an image-classification folder.

Benchmarks train on a real dataset through exactly the path a user's folder takes, so
instead of a special loader the idx files are written out as PNGs under
``OUT/<class>/``. The Debian package ``dataset-fashion-mnist`` installs the gzipped idx
files under ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from device.errors import DatasetError

log = logging.getLogger(__name__)

#: Fashion-MNIST's classes in label-index order, spelled as folder names.
FASHION_MNIST_LABELS: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
#: Where the Debian package puts the files; EDGEWATCH_FASHION_MNIST overrides it.
DEBIAN_LOCATION = Path("/usr/share/datasets/fashion-mnist")
Split = Literal["train", "test"]
_PREFIX: dict[str, str] = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class IdxArrays:
    images: np.ndarray[Any, np.dtype[np.uint8]]
    labels: np.ndarray[Any, np.dtype[np.uint8]]


def default_idx_dir() -> Path:
    return Path(os.environ.get("EDGEWATCH_FASHION_MNIST", str(DEBIAN_LOCATION)))


def read_idx(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Read an idx file (optionally gzipped) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise DatasetError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} is truncated: header promises {expected} bytes, file holds "
            f"{len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(idx_dir: Path, stem: str) -> Path:
    for candidate in (idx_dir / f"{stem}.gz", idx_dir / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"{idx_dir} has no {stem}(.gz); install the Debian package dataset-fashion-mnist "
        "or point EDGEWATCH_FASHION_MNIST at a folder holding the idx files"
    )


def read_split(idx_dir: Path, split: Split) -> IdxArrays:
    prefix = _PREFIX[split]
    images = read_idx(_find(idx_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(idx_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{idx_dir}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_LABELS):
        raise DatasetError(f"{idx_dir}: label {int(labels.max())} is not a Fashion-MNIST class")
    return IdxArrays(images=images, labels=labels)


def export_idx_dataset(
    idx_dir: Path,
    out_dir: Path,
    limit_per_class: int | None = None,
    split: Split = "train",
) -> dict[str, int]:
    """Write the first ``limit_per_class`` images of each class as ``OUT/<class>/*.png``.

    Returns the number of images written per class. Taking the first images in file
    order keeps a small export a prefix of a larger one.
    """
    if limit_per_class is not None and limit_per_class < 1:
        raise DatasetError(f"limit_per_class must be at least 1, got {limit_per_class}")
    arrays = read_split(Path(idx_dir), split)
    counts = dict.fromkeys(FASHION_MNIST_LABELS, 0)
    for index, (image, label_index) in enumerate(zip(arrays.images, arrays.labels, strict=True)):
        label = FASHION_MNIST_LABELS[int(label_index)]
        if limit_per_class is not None and counts[label] >= limit_per_class:
            continue
        # Folders are made on first use: an empty class folder would not be a dataset.
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        path = out_dir / label / f"{split}_{index:05d}.png"
        if not cv2.imwrite(str(path), image):
            raise DatasetError(f"cannot write {path}; is the output folder writable?")
        counts[label] += 1
    log.info("exported %d Fashion-MNIST %s images to %s", sum(counts.values()), split, out_dir)
    return counts
