"""Detection data: boxes.csv errors that name the row, generated scenes with exact boxes,
augmentation that moves boxes with the pixels, heatmap targets and the split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.detection_samples import (
    DetectionSamples,
    read_detection_samples,
    write_detection_samples,
)
from device.detection.objects import NormBox
from device.errors import DatasetError
from training.datasets.boxes import (
    load_box_folder,
    read_box_image,
    scan_box_folder,
    write_box_subset,
)
from training.detection_augment import AugmentedSample, BoxAugmentation, mosaic
from training.detection_targets import heatmap_targets
from training.synthetic.detection_scenes import (
    render_detection_scene,
    write_detection_folder,
)
from training.train_detection import split_names

HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax"


def make_folder(root: Path, rows: list[str], images: dict[str, tuple[int, int]]) -> Path:
    """DIR/images/<name> (grey noise of the given (width, height)) and DIR/boxes.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in images.items():
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        assert cv2.imwrite(str(root / "images" / name), pixels)
    (root / "boxes.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return make_folder(
        tmp_path / "good",
        ["a.png,64,48,cat,4,4,20,20", "a.png,64,48,dog,30,10,60,40", "b.png,32,32,cat,0,0,32,32"],
        {"a.png": (64, 48), "b.png": (32, 32), "empty_scene.png": (40, 30)},
    )


def test_a_good_folder_reads_with_normalised_boxes_and_negatives(good: Path) -> None:
    folder = load_box_folder(good)
    assert folder.classes == ("cat", "dog")
    assert [image.name for image in folder.images] == ["a.png", "b.png", "empty_scene.png"]
    assert folder.negatives == 1 and folder.box_count == 3
    first = folder.images[0]
    assert first.size == (64, 48)
    assert [b.line for b in first.boxes] == [2, 3]
    assert first.boxes[1].box == NormBox(30 / 64, 10 / 48, 60 / 64, 40 / 48)
    assert folder.images[2].boxes == () and folder.images[2].size is None
    assert read_box_image(folder.images[2]).shape == (30, 40, 3)


def test_the_label_list_fixes_the_class_order(good: Path) -> None:
    assert scan_box_folder(good, ["dog", "cat", "bird"]).classes == ("dog", "cat", "bird")
    # The bundle's labels include the background; it is not a class of the data.
    assert scan_box_folder(good, ["background", "cat", "dog"]).classes == ("cat", "dog")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["a.png,64,48,cat,4,4,20,20", "missing.png,64,48,cat,1,1,5,5"],
         r"line 3: images/missing\.png does not exist; add the image or delete its rows"),
        (["a.png,64,48,cat,4,4,70,20"], r"line 2: box .* not inside the 64x48 image"),
        (["a.png,64,48,cat,-1,4,20,20"], r"line 2: box .* not inside"),
        (["a.png,64,48,cat,20,4,20,20"], r"line 2: .*0 <= xmin < xmax <= width"),
        (["a.png,64,48,cat,4,30,20,10"], r"line 2: box"),
        (["a.png,64,48,cat,four,4,20,20"], r"line 2: xmin 'four' is not a number"),
        (["a.png,64,48,cat,4,4,nan,20"], r"line 2: xmax 'nan' is not a number"),
        (["a.png,64.5,48,cat,4,4,20,20"], r"line 2: width '64.5' must be a whole number"),
        (["a.png,64,48,cat,4,4,20"], r"line 2: 7 columns, expected 8"),
        (["a.png,64,48,,4,4,20,20"], r"line 2: the class is empty"),
        (["a.png,64,48,background,4,4,20,20"], r"line 2: class 'background' is reserved"),
        (["../a.png,64,48,cat,4,4,20,20"], r"line 2: filename '\.\./a\.png' must name a file"),
        (["a.png,64,48,cat,4,4,20,20", "a.png,60,48,cat,4,4,20,20"],
         r"line 3: a\.png is 60x48 here but 64x48 on line 2"),
    ],
)  # fmt: skip
def test_bad_rows_are_refused_naming_the_line(
    tmp_path: Path, rows: list[str], message: str
) -> None:
    root = make_folder(tmp_path / "bad", rows, {"a.png": (64, 48)})
    with pytest.raises(DatasetError, match=message):
        load_box_folder(root)


def test_an_unknown_class_names_the_row_and_the_known_ones(good: Path) -> None:
    with pytest.raises(DatasetError, match=r"line 3: unknown class 'dog'; the model knows cat"):
        scan_box_folder(good, ["background", "cat"])


def test_a_missing_or_wrong_header_is_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "h", [], {"a.png": (8, 8)})
    (root / "boxes.csv").write_text("a.png,8,8,cat,0,0,4,4\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 1: expected the header filename,width"):
        scan_box_folder(root)
    (root / "boxes.csv").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 1: .*got an empty file"):
        scan_box_folder(root)


def test_a_header_only_csv_has_no_boxes_to_learn(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "n", [], {"a.png": (8, 8)})
    with pytest.raises(DatasetError, match="has no boxes"):
        scan_box_folder(root)


def test_a_folder_without_the_layout_says_what_it_needs(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"has no boxes\.csv; an object-detection folder"):
        scan_box_folder(tmp_path)


def test_an_image_of_another_size_than_its_rows_state_names_the_row(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "s", ["x.png,64,48,cat,1,1,9,9"], {"x.png": (32, 32)})
    with pytest.raises(DatasetError, match=r"line 2: images/x\.png is 32x32, but boxes\.csv"):
        load_box_folder(root)


@pytest.mark.parametrize("content", [b"", b"not an image at all"])
def test_an_empty_or_unreadable_image_names_the_row(tmp_path: Path, content: bytes) -> None:
    root = make_folder(tmp_path / "u", ["x.png,64,48,cat,1,1,9,9"], {"x.png": (64, 48)})
    (root / "images" / "x.png").write_bytes(content)
    with pytest.raises(DatasetError, match=r"line 2: images/x\.png cannot be decoded"):
        load_box_folder(root)


def test_an_unreadable_negative_names_the_file(good: Path) -> None:
    (good / "images" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DatasetError, match=r"images/broken\.jpg \(an image without rows"):
        load_box_folder(good)


# -- generated scenes --------------------------------------------------------------------


def test_generated_folders_read_back_with_the_scenes_boxes(tmp_path: Path) -> None:
    scenes = write_detection_folder(tmp_path / "gen", 12, seed=4, size=(80, 60))
    folder = load_box_folder(tmp_path / "gen")
    assert len(folder.images) == 12
    for scene, image in zip(scenes, folder.images, strict=True):
        assert [o.label for o in scene.objects] == [b.label for b in image.boxes]
        for obj, row in zip(scene.objects, image.boxes, strict=True):
            got = (row.box.x_min, row.box.y_min, row.box.x_max, row.box.y_max)
            assert got == pytest.approx(obj.box, abs=1e-4)
    assert 0 < folder.negatives < 12  # 0..3 objects each: some scenes are empty
    # A second call with later indices makes other scenes, and the same call the same.
    again = write_detection_folder(tmp_path / "gen2", 12, seed=4, size=(80, 60))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(scenes, again, strict=True))


def test_generated_boxes_are_where_the_shapes_are() -> None:
    """The shapes' pixels, found by comparing with the same background without shapes,
    lie inside their boxes and reach each box's edges."""
    checked = 0
    for seed in range(12):
        scene = render_detection_scene(np.random.default_rng(seed), (128, 96), max_objects=3)
        plain = render_detection_scene(np.random.default_rng(seed), (128, 96), max_objects=0)
        difference = np.abs(scene.image.astype(np.int32) - plain.image.astype(np.int32))
        mask = difference.max(axis=2) > 30
        for obj in scene.objects:
            x0, y0, x1, y1 = (obj.box[0] * 128, obj.box[1] * 96, obj.box[2] * 128, obj.box[3] * 96)
            grown = mask[max(0, int(y0) - 2) : int(y1) + 3, max(0, int(x0) - 2) : int(x1) + 3]
            ys, xs = np.nonzero(grown)
            assert len(xs) > 20
            found = (
                xs.min() + max(0, int(x0) - 2),
                ys.min() + max(0, int(y0) - 2),
                xs.max() + max(0, int(x0) - 2) + 1,
                ys.max() + max(0, int(y0) - 2) + 1,
            )
            assert found == pytest.approx((x0, y0, x1, y1), abs=1.6)  # fmt: skip
            checked += 1
        outside = mask.copy()
        for obj in scene.objects:
            x0, y0, x1, y1 = (obj.box[0] * 128, obj.box[1] * 96, obj.box[2] * 128, obj.box[3] * 96)
            outside[max(0, int(y0) - 1) : int(y1) + 2, max(0, int(x0) - 1) : int(x1) + 2] = False
        assert outside.sum() == 0
    assert checked >= 10


# -- augmentation --------------------------------------------------------------------------

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def painted(boxes: list[NormBox], size: tuple[int, int] = (200, 150)) -> np.ndarray:
    """A dark picture with each box filled in its own pure colour."""
    width, height = size
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    for box, colour in zip(boxes, COLOURS, strict=False):
        x0, y0, x1, y1 = box.to_pixels(width, height)
        image[y0:y1, x0:x1] = colour
    return image


def colour_extent(image: np.ndarray, colour: tuple[int, int, int]) -> tuple[float, ...] | None:
    """Normalised extent of the pixels mostly of ``colour`` (resampling blurs edges, so
    a pixel counts when it is nearer the colour than the background)."""
    target = np.array(colour, dtype=np.float32)
    distance = np.linalg.norm(image.astype(np.float32) - target, axis=2)
    background = np.linalg.norm(image.astype(np.float32) - 40.0, axis=2)
    ys, xs = np.nonzero(distance < background)
    if len(xs) == 0:
        return None
    height, width = image.shape[:2]
    return (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)


def check_boxes(sample: AugmentedSample, out: tuple[int, int], tolerance_px: float) -> int:
    for label, box in sample.boxes:
        extent = colour_extent(sample.image, COLOURS[label])
        assert extent is not None
        got = (box.x_min, box.y_min, box.x_max, box.y_max)
        tolerance = (tolerance_px / out[0], tolerance_px / out[1]) * 2
        for g, e, t in zip(got, extent, tolerance, strict=True):
            assert abs(g - e) <= t, (got, extent)
    return len(sample.boxes)


def test_augmentation_moves_the_boxes_with_the_pixels() -> None:
    boxes = [
        NormBox(0.1, 0.2, 0.35, 0.6),
        NormBox(0.5, 0.1, 0.9, 0.4),
        NormBox(0.45, 0.65, 0.7, 0.95),
    ]
    image = painted(boxes)
    augmentation = BoxAugmentation(
        min_scale=0.5,
        max_scale=1.6,
        max_shift=0.3,
        max_brightness=0.0,
        max_contrast=0.0,
        max_saturation=0.0,
    )
    rng = np.random.default_rng(11)
    out = (96, 80)
    kept = flipped = ignored = 0
    for _ in range(150):
        sample = augmentation.apply(image, list(enumerate(boxes)), out, rng)
        assert sample.image.shape == (80, 96, 3)
        kept += check_boxes(sample, out, tolerance_px=1.5)
        ignored += len(sample.ignored)
        # A box off the picture is neither kept nor ignored; one cut to less than half
        # is ignored, never kept.
        assert len(sample.boxes) + len(sample.ignored) <= 3
        left = colour_extent(sample.image, COLOURS[0])
        if left is not None and any(label == 0 for label, _ in sample.boxes):
            flipped += left[0] > 0.5
    assert kept > 250 and ignored > 5 and flipped > 10


def test_colour_jitter_leaves_the_geometry_alone() -> None:
    boxes = [NormBox(0.2, 0.2, 0.6, 0.7)]
    image = painted(boxes, (100, 100))
    augmentation = BoxAugmentation(min_scale=1.0, max_scale=1.0, max_aspect=0.0, max_shift=0.0,
                                   flip_horizontal=False)  # fmt: skip
    rng = np.random.default_rng(2)
    changed = 0
    for _ in range(20):
        sample = augmentation.apply(image, [(0, boxes[0])], (100, 100), rng)
        ((label, box),) = sample.boxes
        assert box == pytest.approx(boxes[0]) and label == 0
        changed += not np.array_equal(sample.image, image)
    assert changed == 20


def test_a_mosaic_puts_each_picture_and_its_boxes_in_a_quarter() -> None:
    box = NormBox(13 / 64, 10 / 48, 51 / 64, 38 / 48)
    tiles = []
    for label in (0, 1, 2, 0):
        image = np.full((48, 64, 3), 40, dtype=np.uint8)
        image[10:38, 13:51] = COLOURS[label]
        tiles.append(AugmentedSample(image, ((label, box),), ()))
    combined = mosaic(tiles)
    assert combined.image.shape == (48, 64, 3)
    placed = [(b.x_min, b.y_min, b.x_max, b.y_max) for _, b in combined.boxes]
    quarter = (13 / 128, 10 / 96, 51 / 128, 38 / 96)
    assert placed[0] == pytest.approx(quarter)
    assert placed[3] == pytest.approx(tuple(v + 0.5 for v in quarter))
    for label, box in combined.boxes[1:3]:
        extent = colour_extent(combined.image, COLOURS[label])
        assert extent == pytest.approx((box.x_min, box.y_min, box.x_max, box.y_max), abs=0.04)


# -- heatmap targets, split, held-out file -----------------------------------------------------


def test_targets_mark_the_middle_of_each_box_and_ignore_cut_objects() -> None:
    big = NormBox(0.0, 0.0, 0.75, 0.75)  # 6x6 cells of an 8x8 grid
    small = NormBox(0.5, 0.5, 0.6, 0.6)  # inside big, centre cell (4, 4)
    labels, weights = heatmap_targets([(1, big), (2, small)], [NormBox(0.875, 0.0, 1.0, 0.25)],
                                      (8, 8), core=0.34, object_weight=7.0)  # fmt: skip
    assert labels[3, 3] == 1 and labels[2, 2] == 1 and labels[4, 4] == 2
    assert labels[0, 0] == 0 and labels[5, 5] == 0  # box edges are background
    assert weights[3, 3] == 7.0 and weights[0, 0] == 1.0
    assert weights[0, 7] == 0.0 and weights[1, 7] == 0.0 and weights[2, 7] == 1.0
    assert set(np.unique(labels)) == {0, 1, 2}


def test_a_tiny_box_still_gets_its_centre_cell() -> None:
    labels, _ = heatmap_targets([(1, NormBox(0.30, 0.60, 0.32, 0.62))], [], (4, 4),
                                core=0.3, object_weight=5.0)  # fmt: skip
    assert np.argwhere(labels == 1).tolist() == [[2, 1]]


def test_split_is_a_function_of_names_and_seed() -> None:
    names = [f"img_{i:03d}.jpg" for i in range(100)]
    split = split_names(names, 0.15, 0.2, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (65, 15, 20)
    assert not set(split.train) & set(split.test) and not set(split.val) & set(split.test)
    assert split == split_names(list(reversed(names)), 0.15, 0.2, seed=3)
    assert split.test != split_names(names, 0.15, 0.2, seed=4).test
    grown = split_names([*names, "new.jpg"], 0.15, 0.2, seed=3)
    assert len(set(grown.test) & set(split.test)) >= 18
    with pytest.raises(DatasetError, match="too few"):
        split_names(["a", "b"], 0.4, 0.4, seed=0)


def test_held_out_samples_round_trip(tmp_path: Path) -> None:
    x = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    truths = (((1, NormBox(0.1, 0.2, 0.3, 0.4)), (2, NormBox(0.5, 0.5, 1.0, 1.0))), ())
    write_detection_samples(tmp_path / "h.npz", DetectionSamples(x=x, truths=truths))
    back = read_detection_samples(tmp_path / "h.npz", classes=3)
    assert np.array_equal(back.x, x) and back.truths == truths
    with pytest.raises(DatasetError, match="inconsistent"):
        read_detection_samples(tmp_path / "h.npz", classes=2)


def test_a_subset_folder_holds_the_chosen_images_and_their_rows(good: Path, tmp_path: Path) -> None:
    folder = scan_box_folder(good)
    subset = load_box_folder(write_box_subset(folder, ["a.png", "empty_scene.png"], tmp_path / "s"))
    assert [image.name for image in subset.images] == ["a.png", "empty_scene.png"]
    assert [b.box for b in subset.images[0].boxes] == pytest.approx(
        [b.box for b in folder.images[0].boxes]
    )
    assert subset.negatives == 1


def test_grey_pictures_keep_their_single_channel() -> None:
    grey = np.full((60, 80, 1), 40, dtype=np.uint8)
    grey[10:30, 20:50] = 250
    box = NormBox(20 / 80, 10 / 60, 50 / 80, 30 / 60)
    rng = np.random.default_rng(0)
    samples = [BoxAugmentation().apply(grey, [(1, box)], (48, 40), rng) for _ in range(4)]
    assert all(s.image.shape == (40, 48, 1) for s in samples)
    assert mosaic(samples).image.shape == (40, 48, 1)
