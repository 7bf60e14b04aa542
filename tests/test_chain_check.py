"""The face recipe's end-to-end check (``check_chain``): a detector and a crop classifier
chained as the device chains them, counted against the scenes' truth.

The session's shapes detector (circles and triangles) stands in for the face detector
and the shapes crop classifier for the identity model; a shape's "identity" is its
class, on scenes the detector never trained on.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import pytest

from tests.helpers_crops import CROP
from tests.helpers_detection import CLASSES, synthetic_detector
from training.recipes.faces import check_chain, write_detector_crops
from training.synthetic.face_scenes import IDENTITIES_FILE, IMAGES_DIR


@pytest.fixture(scope="module")
def shape_scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The unseen shape scenes as a face-scene folder: identities.csv names each shape
    by its class. Returns the folder and the number of shapes."""
    unseen = synthetic_detector(tmp_path_factory).unseen_dir
    folder = tmp_path_factory.mktemp("shape-identities")
    (folder / IMAGES_DIR).symlink_to(unseen / IMAGES_DIR)
    with (unseen / "boxes.csv").open(newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    with (folder / IDENTITIES_FILE).open("w", newline="", encoding="utf-8") as target:
        writer = csv.writer(target)
        writer.writerow(["filename", "xmin", "ymin", "xmax", "ymax", "identity"])
        for row in rows:  # whole pixels, as face scenes have them: the box grows to them
            x0, y0 = (math.floor(float(row[k])) for k in ("xmin", "ymin"))
            x1, y1 = (math.ceil(float(row[k])) for k in ("xmax", "ymax"))
            writer.writerow([row["filename"], x0, y0, x1, y1, row["class"]])
    return folder, len(rows)


def test_the_chain_check_counts_what_the_device_would_report(
    detector_bundle: Path, shape_crop_bundle: Path, shape_scenes: tuple[Path, int], tmp_path: Path
) -> None:
    folder, shapes = shape_scenes
    check = check_chain(
        detector_bundle, shape_crop_bundle, folder, CROP, identity_threshold=0.4,
        input_labels=CLASSES,
    )  # fmt: skip
    assert check.images == len(list((folder / IMAGES_DIR).iterdir()))
    assert check.faces == shapes > 0
    assert check.named_right + check.named_wrong + check.unnamed == check.found <= check.faces
    assert check.found >= 0.8 * check.faces, check  # the detector finds most shapes
    # The crop classifier (trained on other renderings of the shapes, three classes) names
    # found shapes right well above chance.
    assert check.named_right > check.found / 3, check

    # Nothing passes an identity threshold of 1.0: every found shape is unnamed, and no
    # false detection is named either.
    strict = check_chain(
        detector_bundle, shape_crop_bundle, folder, CROP, identity_threshold=1.0,
        input_labels=CLASSES,
    )  # fmt: skip
    assert strict.found == check.found
    assert (strict.named_right, strict.named_wrong, strict.false_named) == (0, 0, 0)
    assert strict.unnamed == strict.found

    # Truth that names nobody the classifier knows: nothing can be named right.
    nobody = tmp_path / "nobody"
    nobody.mkdir()
    (nobody / IMAGES_DIR).symlink_to(folder / IMAGES_DIR)
    rows = (folder / IDENTITIES_FILE).read_text(encoding="utf-8").splitlines()
    renamed = [rows[0], *(row.rsplit(",", 1)[0] + ",nobody" for row in rows[1:])]
    (nobody / IDENTITIES_FILE).write_text("\n".join(renamed) + "\n", encoding="utf-8")
    strangers = check_chain(
        detector_bundle, shape_crop_bundle, nobody, CROP, identity_threshold=0.4,
        input_labels=CLASSES,
    )  # fmt: skip
    assert strangers.named_right == 0 and strangers.found == check.found
    assert strangers.named_wrong == check.named_right + check.named_wrong


def test_detector_crops_are_cut_from_the_detectors_boxes(
    detector_bundle: Path, shape_scenes: tuple[Path, int], tmp_path: Path
) -> None:
    folder, _ = shape_scenes
    train = tmp_path / "train"
    written = write_detector_crops(
        detector_bundle, folder, train, CROP, per_identity=4, input_labels=CLASSES
    )
    files = {label: sorted((train / label).glob("det_*.png")) for label in CLASSES}
    assert written == sum(len(f) for f in files.values())
    assert all(1 <= len(f) <= 4 for f in files.values()), files  # each class, capped
    for path in (p for f in files.values() for p in f):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert image is not None and image.ndim == 3
        height, width = image.shape[:2]
        assert abs(width - height) <= 1  # CROP's aspect 1.0: the device's own crop
        assert min(width, height) >= CROP.min_size
    # The same again writes the same files (a recipe run that stopped can restart).
    again = write_detector_crops(
        detector_bundle, folder, train, CROP, per_identity=4, input_labels=CLASSES
    )
    assert again == written
    assert {label: sorted((train / label).glob("det_*.png")) for label in CLASSES} == files
