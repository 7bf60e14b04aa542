"""Reading an object-detection folder: ``DIR/images/*`` and ``DIR/boxes.csv``.

``boxes.csv`` has the header ``filename,width,height,class,xmin,ymin,xmax,ymax`` and one
row per box, in the pixel coordinates of the image (the layout of the TensorFlow
Object Detection tutorials' CSV exports). An image in ``images/`` with no row is a
negative: a picture with nothing to find, which teaches the detector what not to fire
on. Every problem is a ``DatasetError`` that names the CSV line and says how to fix it,
because a detection dataset is usually assembled by hand or by a labelling tool's
export, and "row 318 is wrong" is what the person needs to hear.

Scanning (``scan_box_folder``) checks the CSV and that the files exist; decoding
(``read_box_image``) checks each image opens and has the size its rows state. Boxes
are kept normalised (``NormBox``), which a stretch resize leaves unchanged.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from converters.calibration import list_images
from device.detection.objects import NormBox
from device.errors import DatasetError

log = logging.getLogger(__name__)

CSV_NAME = "boxes.csv"
IMAGES_DIR = "images"
HEADER: tuple[str, ...] = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
#: The label of cells without an object centre; a class may not take this name.
BACKGROUND_LABEL = "background"
UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True)
class LabelledBox:
    """One row of boxes.csv."""

    label: str
    box: NormBox
    #: The row's line number in boxes.csv (the header is line 1).
    line: int


@dataclass(frozen=True)
class BoxImage:
    """One image of the folder with its boxes (none: a negative)."""

    #: The path below ``images/``, as boxes.csv writes it.
    name: str
    path: Path
    #: The size the rows state, (width, height); None for a negative.
    size: tuple[int, int] | None
    boxes: tuple[LabelledBox, ...]

    @property
    def first_line(self) -> int | None:
        return self.boxes[0].line if self.boxes else None

    def where(self) -> str:
        """How an error message points at this image."""
        if self.boxes:
            return f"{CSV_NAME} line {self.boxes[0].line}: {IMAGES_DIR}/{self.name}"
        return f"{IMAGES_DIR}/{self.name} (an image without rows, a negative)"


@dataclass(frozen=True)
class BoxFolder:
    """A scanned detection folder: its classes and images, sorted by name."""

    root: Path
    #: Object classes, in the order given (``labels``) or sorted.
    classes: tuple[str, ...]
    images: tuple[BoxImage, ...]

    @property
    def box_count(self) -> int:
        return sum(len(image.boxes) for image in self.images)

    @property
    def negatives(self) -> int:
        return sum(1 for image in self.images if not image.boxes)

    def subset(self, names: Sequence[str]) -> BoxFolder:
        """The same folder restricted to ``names`` (kept in folder order)."""
        chosen = set(names)
        return BoxFolder(self.root, self.classes, tuple(i for i in self.images if i.name in chosen))


def _number(text: str, column: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(
            f"{CSV_NAME} line {line}: {column} {text!r} is not a number; "
            "write pixel coordinates and sizes as plain numbers"
        )
    return value


def _size(text: str, column: str, line: int) -> int:
    value = _number(text, column, line)
    if value < 1 or value != int(value):
        raise DatasetError(
            f"{CSV_NAME} line {line}: {column} {text!r} must be a whole number of pixels "
            "(at least 1): the image's size"
        )
    return int(value)


def _image_name(text: str, line: int) -> str:
    name = text.strip()
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not name or name.startswith("/") or ".." in parts:
        raise DatasetError(
            f"{CSV_NAME} line {line}: filename {text!r} must name a file inside "
            f"{IMAGES_DIR}/ (a relative path, no '..')"
        )
    return "/".join(parts)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text; save it as UTF-8 CSV") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from exc
    rows: list[tuple[int, list[str]]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if row and any(cell.strip() for cell in row):
            rows.append((number, [cell.strip() for cell in row]))
    expected = ",".join(HEADER)
    if not rows or rows[0][0] != 1 or tuple(c.lower() for c in rows[0][1]) != HEADER:
        got = ",".join(rows[0][1]) if rows else "an empty file"
        raise DatasetError(
            f"{CSV_NAME} line 1: expected the header {expected}, got {got}; add that "
            "header line (columns in this order)"
        )
    return rows[1:]


def scan_box_folder(root: Path, labels: Sequence[str] | None = None) -> BoxFolder:
    """Parse boxes.csv and list the images; ``labels`` fixes the known classes."""
    root = Path(root)
    csv_path = root / CSV_NAME
    images_dir = root / IMAGES_DIR
    if not images_dir.is_dir() or not csv_path.is_file():
        missing = IMAGES_DIR + "/" if not images_dir.is_dir() else CSV_NAME
        raise DatasetError(
            f"{root} has no {missing}; an object-detection folder holds {IMAGES_DIR}/ "
            f"with the pictures and {CSV_NAME} ({','.join(HEADER)}), one row per box"
        )
    known = tuple(labels) if labels is not None else None
    if known is not None and BACKGROUND_LABEL in known:
        known = tuple(label for label in known if label != BACKGROUND_LABEL)
    sizes: dict[str, tuple[tuple[int, int], int]] = {}
    boxes: dict[str, list[LabelledBox]] = {}
    for line, row in _read_rows(csv_path):
        if len(row) != len(HEADER):
            raise DatasetError(
                f"{CSV_NAME} line {line}: {len(row)} columns, expected {len(HEADER)} "
                f"({','.join(HEADER)})"
            )
        name = _image_name(row[0], line)
        width, height = _size(row[1], "width", line), _size(row[2], "height", line)
        label = row[3]
        x0, y0, x1, y1 = (_number(row[i], HEADER[i], line) for i in range(4, 8))
        if not label:
            raise DatasetError(f"{CSV_NAME} line {line}: the class is empty; name the object")
        if label == BACKGROUND_LABEL:
            raise DatasetError(
                f"{CSV_NAME} line {line}: class {label!r} is reserved for places without "
                "objects; rename that class (images without objects need no rows at all)"
            )
        if known is not None and label not in known:
            raise DatasetError(
                f"{CSV_NAME} line {line}: unknown class {label!r}; the model knows "
                f"{', '.join(known)}. Fix the row, or leave that class out of the data"
            )
        if not (images_dir / name).is_file():
            raise DatasetError(
                f"{CSV_NAME} line {line}: {IMAGES_DIR}/{name} does not exist; add the image "
                "or delete its rows"
            )
        if name in sizes and sizes[name][0] != (width, height):
            first = sizes[name][1]
            raise DatasetError(
                f"{CSV_NAME} line {line}: {name} is {width}x{height} here but "
                f"{sizes[name][0][0]}x{sizes[name][0][1]} on line {first}; every row of an "
                "image must state its real size"
            )
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise DatasetError(
                f"{CSV_NAME} line {line}: box ({row[4]}, {row[5]}, {row[6]}, {row[7]}) is "
                f"not inside the {width}x{height} image or is empty; boxes need "
                "0 <= xmin < xmax <= width and 0 <= ymin < ymax <= height"
            )
        sizes.setdefault(name, ((width, height), line))
        box = NormBox(x0 / width, y0 / height, x1 / width, y1 / height)
        boxes.setdefault(name, []).append(LabelledBox(label, box, line))

    listed = {path.relative_to(images_dir).as_posix(): path for path in list_images(images_dir)}
    for name in boxes:
        listed.setdefault(name, images_dir / name)
    images = tuple(
        BoxImage(
            name=name,
            path=listed[name],
            size=sizes[name][0] if name in sizes else None,
            boxes=tuple(boxes.get(name, ())),
        )
        for name in sorted(listed)
    )
    if not images:
        raise DatasetError(f"{images_dir} holds no images; add the pictures {CSV_NAME} names")
    found = sorted({b.label for image in images for b in image.boxes})
    classes = known if known is not None else tuple(found)
    if not classes:
        raise DatasetError(
            f"{CSV_NAME} has no boxes; a detector needs at least one labelled object"
        )
    folder = BoxFolder(root=root, classes=classes, images=images)
    log.info(
        "%s: %d images (%d without objects), %d boxes, classes %s",
        root.name, len(images), folder.negatives, folder.box_count, ", ".join(classes),
    )  # fmt: skip
    return folder


def read_box_image(image: BoxImage) -> UInt8Image:
    """Decode one image (BGR, as the device's camera path delivers frames) and check
    it has the size its rows state."""
    try:
        raw = np.fromfile(image.path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{image.where()} cannot be read: {exc.strerror}") from exc
    decoded = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if decoded is None:
        raise DatasetError(
            f"{image.where()} cannot be decoded (empty, truncated or not an image); "
            "replace the file, or delete it and its rows"
        )
    height, width = decoded.shape[:2]
    if image.size is not None and image.size != (width, height):
        raise DatasetError(
            f"{image.where()} is {width}x{height}, but {CSV_NAME} states "
            f"{image.size[0]}x{image.size[1]}; fix the width and height (and the boxes, "
            "if the image was resized after labelling)"
        )
    return np.asarray(decoded, dtype=np.uint8)


def iter_box_images(folder: BoxFolder) -> Iterator[tuple[BoxImage, UInt8Image]]:
    """Every image of the folder decoded and checked, in folder order."""
    for image in folder.images:
        yield image, read_box_image(image)


def load_box_folder(root: Path, labels: Sequence[str] | None = None) -> BoxFolder:
    """Scan and decode every image once, so any bad file fails now, naming its row."""
    folder = scan_box_folder(root, labels)
    for _ in iter_box_images(folder):
        pass
    return folder


def write_box_subset(folder: BoxFolder, names: Sequence[str], out: Path) -> Path:
    """A detection folder at ``out`` holding only ``names`` of ``folder``: images linked
    (copied where links are refused) and their rows of boxes.csv, so a model folder's
    ``heldout_files.txt`` can be evaluated as a folder of its own."""
    chosen = folder.subset(names)
    images_dir = Path(out) / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    with (Path(out) / CSV_NAME).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for image in chosen.images:
            target = images_dir / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    target.symlink_to(image.path.resolve())
                except OSError:
                    shutil.copyfile(image.path, target)
            if image.size is None:
                continue
            width, height = image.size
            for row in image.boxes:
                b = row.box
                writer.writerow([
                    image.name, width, height, row.label,
                    f"{b.x_min * width:.10g}", f"{b.y_min * height:.10g}",
                    f"{b.x_max * width:.10g}", f"{b.y_max * height:.10g}",
                ])  # fmt: skip
    return Path(out)
