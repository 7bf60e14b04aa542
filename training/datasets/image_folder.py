"""Reading an image-classification folder: ``DIR/<label>/*.{jpg,jpeg,png,bmp,pgm}``.

Images are decoded with OpenCV and resized by the device's own
``device.preprocessing.image.resize_frame``, so the uint8 arrays training sees are the
ones a Pi would compute from the same picture; normalisation happens later, with the
device's ``normalise``. Labels are the sub-folder names in alphabetical order, and the
train/validation/test split is stratified and a pure function of the file names and the
seed, so re-running with the same seed holds out the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converters.calibration import IMAGE_EXTENSIONS, list_images
from converters.model_dir import SampleSet
from device.bundle.manifest import ImagePreprocessing
from device.errors import DatasetError
from device.preprocessing.image import channels, resize_frame

log = logging.getLogger(__name__)

UInt8Array = np.ndarray[Any, np.dtype[np.uint8]]
#: Folder names that mean "nothing of interest here"; they never become events.
BACKGROUND_NAMES = frozenset({"background", "_background_", "none", "_none_"})
_LAYOUT_HINT = "expected DIR/<label>/<image files>, one sub-folder per class"


@dataclass(frozen=True)
class FolderIndex:
    """The labels of a dataset folder and the image files of each, before decoding."""

    root: Path
    labels: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]

    def counts(self) -> dict[str, int]:
        return {label: len(paths) for label, paths in zip(self.labels, self.files, strict=True)}


@dataclass(frozen=True)
class LabelledImages:
    """Decoded, resized images with their label indices and the files they came from."""

    labels: tuple[str, ...]
    samples: SampleSet
    files: tuple[Path, ...]
    #: Files that could not be decoded and were left out.
    skipped: tuple[Path, ...]


@dataclass(frozen=True)
class ImageDataset:
    """A split image-classification dataset, ready for training."""

    root: Path
    labels: tuple[str, ...]
    preprocessing: ImagePreprocessing
    train: SampleSet
    val: SampleSet
    test: SampleSet
    train_files: tuple[Path, ...]
    val_files: tuple[Path, ...]
    test_files: tuple[Path, ...]
    skipped: tuple[Path, ...]

    @property
    def background_labels(self) -> tuple[str, ...]:
        return background_labels(self.labels)


def background_labels(labels: Sequence[str]) -> tuple[str, ...]:
    return tuple(label for label in labels if label.lower() in BACKGROUND_NAMES)


def scan_folder(root: Path, min_classes: int = 2) -> FolderIndex:
    """List labels and image files, refusing layouts that cannot be a dataset."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist; {_LAYOUT_HINT}")
    if not root.is_dir():
        raise DatasetError(f"{root} is a file, not a dataset folder; {_LAYOUT_HINT}")
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        loose = list_images(root)
        detail = f" (it holds {len(loose)} loose images)" if loose else ""
        raise DatasetError(f"{root} has no label sub-folders{detail}; {_LAYOUT_HINT}")
    empty = []
    files = []
    for class_dir in class_dirs:
        images = tuple(sorted(list_images(class_dir)))
        if not images:
            empty.append(class_dir.name)
        files.append(images)
    if empty:
        raise DatasetError(
            f"label folder(s) {', '.join(empty)} in {root} hold no images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder(s)"
        )
    if len(class_dirs) < min_classes:
        raise DatasetError(
            f"{root} has {len(class_dirs)} class ({class_dirs[0].name}); a classifier needs "
            f"at least {min_classes}: add one sub-folder of images per class"
        )
    return FolderIndex(
        root=root, labels=tuple(p.name for p in class_dirs), files=tuple(files)
    )


def read_image(path: Path) -> UInt8Array | None:
    """Decode an image file as BGR uint8, or None when it is not a readable image."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image, dtype=np.uint8)


def load_images(
    index: FolderIndex,
    spec: ImagePreprocessing,
    label_order: Sequence[str] | None = None,
) -> LabelledImages:
    """Decode and resize every file of ``index``; unreadable files are skipped and counted.

    ``label_order`` maps folder names onto someone else's label indices (a model's,
    when evaluating); by default the folder's own alphabetical labels are used.
    """
    labels = tuple(label_order) if label_order is not None else index.labels
    unknown = [label for label in index.labels if label not in labels]
    if unknown:
        raise DatasetError(
            f"{index.root} has label folder(s) {unknown} that the model does not know; "
            f"folder labels: {list(index.labels)}, model labels: {list(labels)}"
        )
    height, width, depth = spec.height, spec.width, channels(spec)
    total = sum(len(paths) for paths in index.files)
    x = np.empty((total, height, width, depth), dtype=np.uint8)
    y = np.empty((total,), dtype=np.int64)
    kept: list[Path] = []
    skipped: list[Path] = []
    empty_after_skip = []
    for label, paths in zip(index.labels, index.files, strict=True):
        before = len(kept)
        for path in paths:
            image = read_image(path)
            if image is None:
                skipped.append(path)
                continue
            x[len(kept)] = resize_frame(image, spec)
            y[len(kept)] = labels.index(label)
            kept.append(path)
        if len(kept) == before:
            empty_after_skip.append(label)
    if skipped:
        log.warning(
            "skipped %d unreadable image file(s) in %s, e.g. %s",
            len(skipped), index.root, skipped[0].name,
        )
    if empty_after_skip:
        raise DatasetError(
            f"no readable images for label(s) {', '.join(empty_after_skip)} in {index.root} "
            f"({len(skipped)} unreadable file(s), e.g. {skipped[0]}); replace the broken files"
        )
    count = len(kept)
    return LabelledImages(
        labels=labels,
        samples=SampleSet(x=x[:count], y=y[:count]),
        files=tuple(kept),
        skipped=tuple(skipped),
    )


@dataclass(frozen=True)
class _SplitIndices:
    train: np.ndarray[Any, np.dtype[np.int64]]
    val: np.ndarray[Any, np.dtype[np.int64]]
    test: np.ndarray[Any, np.dtype[np.int64]]


def stratified_split(
    y: np.ndarray[Any, np.dtype[np.int64]],
    labels: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> _SplitIndices:
    """Split sample indices per class; each class is shuffled by its own seeded generator.

    A generator per class (seeded with ``[seed, class index]``) keeps a class's split
    unchanged when another class gains or loses images.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DatasetError(
            f"validation ({val_fraction}) and test ({test_fraction}) fractions must be "
            "non-negative and leave room for training (sum below 1)"
        )
    parts: dict[str, list[np.ndarray[Any, np.dtype[np.int64]]]] = {
        "train": [], "val": [], "test": []
    }
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    for class_index, label in enumerate(labels):
        members = np.flatnonzero(y == class_index).astype(np.int64)
        if members.size == 0:
            continue
        if members.size < needed:
            raise DatasetError(
                f"label {label!r} has {members.size} image(s); at least {needed} are needed "
                "(one each for training, validation and test): add images"
            )
        shuffled = np.random.default_rng([seed, class_index]).permutation(members)
        n_test = max(1, round(members.size * test_fraction)) if test_fraction > 0 else 0
        n_val = max(1, round(members.size * val_fraction)) if val_fraction > 0 else 0
        n_val = min(n_val, members.size - n_test - 1)
        parts["test"].append(shuffled[:n_test])
        parts["val"].append(shuffled[n_test : n_test + n_val])
        parts["train"].append(shuffled[n_test + n_val :])

    def join(key: str) -> np.ndarray[Any, np.dtype[np.int64]]:
        return np.sort(np.concatenate(parts[key])) if parts[key] else np.empty(0, np.int64)

    return _SplitIndices(train=join("train"), val=join("val"), test=join("test"))


def load_image_dataset(
    root: Path,
    spec: ImagePreprocessing,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> ImageDataset:
    """Scan, decode, resize and split a folder for training."""
    index = scan_folder(root, min_classes=2)
    log.info("dataset %s: %s", index.root, index.counts())
    images = load_images(index, spec)
    y = images.samples.y
    assert y is not None  # load_images always labels its samples
    split = stratified_split(y, images.labels, val_fraction, test_fraction, seed)

    def subset(indices: np.ndarray[Any, np.dtype[np.int64]]) -> SampleSet:
        return SampleSet(x=images.samples.x[indices], y=y[indices])

    def names(indices: np.ndarray[Any, np.dtype[np.int64]]) -> tuple[Path, ...]:
        return tuple(images.files[i] for i in indices)

    return ImageDataset(
        root=index.root,
        labels=images.labels,
        preprocessing=spec,
        train=subset(split.train),
        val=subset(split.val),
        test=subset(split.test),
        train_files=names(split.train),
        val_files=names(split.val),
        test_files=names(split.test),
        skipped=images.skipped,
    )


def load_labelled_folder(
    root: Path, spec: ImagePreprocessing, label_order: Sequence[str] | None = None
) -> LabelledImages:
    """Every readable image of a folder, unsplit (for evaluation; one class is enough)."""
    return load_images(scan_folder(root, min_classes=1), spec, label_order)
