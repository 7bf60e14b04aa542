"""Decoding a centroid heatmap, mapping a region back to the frame, matching, manifests.

No model is needed here: heatmaps are written by hand (or drawn at random and checked
against scipy's connected-component labelling), so every expected object is known.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from converters.detection_metrics import (
    SweepPoint,
    TruthBox,
    best_threshold,
    detection_metrics,
    match_image,
    threshold_sweep,
)
from device.bundle.manifest import (
    ClassificationDecoding,
    GoldenPair,
    HeatmapDecoding,
    ImagePreprocessing,
    Manifest,
    ModelFile,
    TensorSpec,
)
from device.detection.decode import HeatmapDecoder, decode_heatmap, softmax_cells
from device.detection.detector import crop_region, halve_large, to_frame
from device.detection.objects import DetectedObject, NormBox
from training.synthetic.detection_scenes import render_detection_scene

LABELS = ("background", "cat", "dog")


def grid_with(cells: dict[tuple[int, int], tuple[int, float]], shape=(6, 8)) -> np.ndarray:
    """A probability grid: background 1 everywhere except the given (row, col) cells,
    which hold probability p for their class and 1 - p for the background."""
    rows, cols = shape
    grid = np.zeros((rows, cols, len(LABELS)), dtype=np.float32)
    grid[..., 0] = 1.0
    for (row, col), (label, p) in cells.items():
        grid[row, col, 0] = 1.0 - p
        grid[row, col, label] = p
    return grid


def decode(grid: np.ndarray, thresholds=(1.0, 0.5, 0.5), box_scale: float = 1.0):
    return decode_heatmap(grid, LABELS, thresholds, background_index=0, box_scale=box_scale)


def test_all_background_gives_nothing() -> None:
    assert decode(grid_with({})) == []


def test_one_blob_is_one_object_with_weighted_centroid_and_cell_extent() -> None:
    grid = grid_with({(2, 3): (1, 0.9), (2, 4): (1, 0.6), (3, 3): (1, 0.6)})
    (obj,) = decode(grid)
    assert obj.label == "cat"
    assert obj.score == pytest.approx(0.9)
    assert obj.box_is_estimate
    # Extent: columns 3..4, rows 2..3 of an 8x6 grid.
    assert (obj.box.x_min, obj.box.x_max) == pytest.approx((3 / 8, 5 / 8))
    assert (obj.box.y_min, obj.box.y_max) == pytest.approx((2 / 6, 4 / 6))
    total = 0.9 + 0.6 + 0.6
    cx = (0.9 * 3.5 + 0.6 * 4.5 + 0.6 * 3.5) / total / 8
    cy = (0.9 * 2.5 + 0.6 * 2.5 + 0.6 * 3.5) / total / 6
    assert obj.centroid == pytest.approx((cx, cy))
    # The weighted centre leans toward the strongest cell, unlike the box's middle.
    assert obj.centroid != pytest.approx(obj.box.centroid)


def test_diagonal_neighbours_join_and_separate_blobs_do_not() -> None:
    grid = grid_with({(1, 1): (1, 0.8), (2, 2): (1, 0.7), (4, 6): (1, 0.95)})
    objects = decode(grid)
    assert [round(o.score, 2) for o in objects] == [0.95, 0.8]  # best first
    assert len(objects) == 2


def test_each_label_has_its_own_threshold() -> None:
    grid = grid_with({(1, 1): (1, 0.6), (4, 5): (2, 0.6)})
    assert [o.label for o in decode(grid, (1.0, 0.7, 0.5))] == ["dog"]
    assert [o.label for o in decode(grid, (1.0, 0.5, 0.7))] == ["cat"]
    assert decode(grid, (1.0, 0.7, 0.7)) == []
    # Exactly at the threshold counts.
    assert len(decode(grid, (1.0, 0.6, 0.6))) == 2


def test_background_never_becomes_an_object_even_at_threshold_zero() -> None:
    objects = decode(grid_with({(0, 0): (1, 0.9)}), (0.0, 0.5, 0.5))
    assert [o.label for o in objects] == ["cat"]


def test_a_cell_speaks_for_its_most_probable_label_only() -> None:
    grid = grid_with({})
    grid[2, 2] = (0.15, 0.45, 0.40)
    objects = decode(grid, (1.0, 0.3, 0.3))
    assert [o.label for o in objects] == ["cat"]


def test_box_scale_grows_about_the_middle_and_clips_to_the_frame() -> None:
    (inside,) = decode(grid_with({(2, 3): (1, 0.9)}), box_scale=3.0)
    assert inside.box.width == pytest.approx(3 / 8)
    assert inside.box.centroid == pytest.approx((3.5 / 8, 2.5 / 6))
    (corner,) = decode(grid_with({(0, 0): (1, 0.9)}), box_scale=3.0)
    assert (corner.box.x_min, corner.box.y_min) == (0.0, 0.0)
    assert corner.box.x_max == pytest.approx(2 / 8)


def test_decoding_matches_an_independent_labelling_on_random_grids() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        logits = rng.normal(0.0, 2.0, size=(7, 9, 3)).astype(np.float32)
        grid = softmax_cells(logits)
        objects = decode(grid, (1.0, 0.45, 0.45))
        best = np.argmax(grid[..., 1:], axis=2) + 1
        expected = []
        for k in (1, 2):
            mask = (grid[..., k] >= 0.45) & (best == k)
            components, count = ndimage.label(mask, structure=np.ones((3, 3)))
            for index in range(1, count + 1):
                cells = components == index
                weights = grid[..., k][cells]
                ys, xs = np.nonzero(cells)
                expected.append((
                    LABELS[k], float(weights.max()),
                    float(((xs + 0.5) * weights).sum() / weights.sum() / 9),
                    float(((ys + 0.5) * weights).sum() / weights.sum() / 7),
                ))  # fmt: skip
        got = sorted((o.label, o.score, *o.centroid) for o in objects)
        assert len(got) == len(expected)
        for g, e in zip(got, sorted(expected), strict=True):
            assert g[0] == e[0]
            assert g[1:] == pytest.approx(e[1:], abs=1e-5)


def test_decoder_applies_softmax_to_logits() -> None:
    decoding = HeatmapDecoding(stride=8, background_label="background", apply_softmax=True)
    decoder = HeatmapDecoder(LABELS, decoding, [1.0, 0.5, 0.5])
    logits = np.zeros((1, 4, 4, 3), dtype=np.float32)
    logits[0, 1, 2] = (0.0, 5.0, 0.0)
    probabilities, objects = decoder(logits)
    assert probabilities.shape == (4, 4, 3)
    assert probabilities.sum(axis=2) == pytest.approx(np.ones((4, 4)))
    assert [o.label for o in objects] == ["cat"]
    assert objects[0].score == pytest.approx(np.exp(5) / (np.exp(5) + 2))


def test_wrong_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="probability grid"):
        decode(np.zeros((4, 4, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="one threshold per label"):
        decode(grid_with({}), (0.5, 0.5))


def test_detected_object_centre_must_be_normalised() -> None:
    box = NormBox(0.1, 0.1, 0.3, 0.3)
    assert DetectedObject("cat", 0.9, box).centroid == pytest.approx((0.2, 0.2))
    assert DetectedObject("cat", 0.9, box, center=(0.15, 0.12)).centroid == (0.15, 0.12)
    with pytest.raises(ValueError, match="normalised point"):
        DetectedObject("cat", 0.9, box, center=(1.2, 0.5))


# -- regions of interest ------------------------------------------------------------------


def test_a_small_region_grows_to_the_minimum_and_the_model_aspect() -> None:
    crop = crop_region(NormBox(0.45, 0.45, 0.5, 0.5), (640, 480), (96, 96))
    assert crop is not None
    width, height = crop.x1 - crop.x0, crop.y1 - crop.y0
    assert width == pytest.approx(height, abs=1)  # square like the model's input
    assert height >= 0.5 * 480 - 1
    # Centred on the region.
    assert (crop.x0 + crop.x1) / 2 == pytest.approx(0.475 * 640, abs=1)
    assert (crop.y0 + crop.y1) / 2 == pytest.approx(0.475 * 480, abs=1)


def test_a_crop_may_take_the_frames_aspect_instead_of_the_models() -> None:
    """A stretch model saw whole 16:9 frames squeezed into its square input: a 16:9 crop
    squeezes objects the same way (a square crop would show them 16/9 wider)."""
    crop = crop_region(NormBox(0.45, 0.45, 0.5, 0.5), (1280, 720), (96, 96), aspect=1280 / 720)
    assert crop is not None
    assert (crop.x1 - crop.x0, crop.y1 - crop.y0) == (640, 360)
    tall = crop_region(NormBox(0.45, 0.1, 0.5, 0.6), (640, 480), (96, 96), aspect=640 / 480)
    assert tall is not None
    assert (tall.x1 - tall.x0) / (tall.y1 - tall.y0) == pytest.approx(4 / 3, rel=0.01)
    assert tall.y0 <= 0.1 * 480 and tall.y1 >= 0.6 * 480


def test_a_small_crop_grows_to_whole_multiples_of_the_input_where_that_is_cheaper() -> None:
    """640x480 and a 96x96 stretch model: the minimum crop (320x240) becomes 384x288,
    four by three input sizes, with the frame's aspect still; where the next multiple
    is over half as large again, or outside the frame, the crop stays as it was."""
    small = crop_region(NormBox(0.45, 0.45, 0.5, 0.5), (640, 480), (96, 96), aspect=4 / 3)
    assert small is not None
    assert (small.x1 - small.x0, small.y1 - small.y0) == (384, 288)
    assert (small.x0 + small.x1) / 2 == pytest.approx(0.475 * 640, abs=1)
    # A square model's crops: multiples of 96 on both sides.
    square = crop_region(NormBox(0.45, 0.45, 0.5, 0.5), (640, 480), (96, 96))
    assert square is not None
    assert (square.x1 - square.x0, square.y1 - square.y0) == (384, 384)
    # 400x300 needed: the next multiple (768x576) does not fit the frame.
    larger = crop_region(NormBox(0.2, 0.2, 0.825, 0.825), (640, 480), (96, 96), aspect=4 / 3,
                         margin=0.0)  # fmt: skip
    assert larger is not None
    assert (larger.x1 - larger.x0, larger.y1 - larger.y0) == (400, 300)
    # 1080p: 1536x864 is the first multiple with the frame's aspect, 2.6 times the
    # 960x540 needed.
    full_hd = crop_region(NormBox(0.45, 0.45, 0.5, 0.5), (1920, 1080), (96, 96), aspect=16 / 9)
    assert full_hd is not None
    assert (full_hd.x1 - full_hd.x0, full_hd.y1 - full_hd.y0) == (960, 540)


def test_a_whole_multiple_crop_resizes_to_the_average_of_each_block() -> None:
    """What makes the whole-multiple crop worth having: the area resize of a 384x288
    crop to 96x96 is each 4x3 block's mean, the filter whole frames get."""
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (288, 384, 3), dtype=np.uint8)
    resized = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA).astype(float)
    means = crop.reshape(96, 3, 96, 4, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(resized - means).max() <= 0.5


def test_crops_large_enough_to_halve_have_even_sides_where_the_frame_allows() -> None:
    """Even sides let ``halve_large`` average 2x2 blocks; an odd frame side that the
    crop spans whole stays as it is."""
    regions = (NormBox(0.1, 0.2, 0.77, 0.79), NormBox(0.21, 0.1, 0.853, 0.77),
               NormBox(0.0, 0.33, 0.701, 0.98))  # fmt: skip
    for region in regions:
        crop = crop_region(region, (640, 480), (96, 96), aspect=4 / 3, margin=0.0)
        assert crop is not None
        assert (crop.x1 - crop.x0) % 2 == 0 and (crop.y1 - crop.y0) % 2 == 0, crop
        assert crop.y1 - crop.y0 >= 288  # large enough to be halved for a 96x96 input
        assert crop.x0 <= region.x_min * 640 and crop.x1 >= region.x_max * 640
        assert crop.y0 <= region.y_min * 480 and crop.y1 >= region.y_max * 480
    spanning = crop_region(NormBox(0.0, 0.3, 1.0, 0.5), (641, 1001), (96, 96), margin=0.0)
    assert spanning is not None
    assert (spanning.x0, spanning.x1) == (0, 641)


def test_a_large_crop_is_halved_by_2x2_blocks_before_its_resize() -> None:
    """410x308 for a 96x96 input is halved (still 2.1 and 1.6 input sizes across and
    down); the result is each 2x2 block's mean, and the resize that follows gives the
    one area resize of the crop, except where an input pixel's edge cuts a block on a
    sharp edge of the scene: a fraction of a grey level on average."""
    scene = render_detection_scene(np.random.default_rng(3), (410, 308), scale_range=(0.3, 0.5))
    crop = scene.image
    halved = halve_large(crop, (96, 96))
    assert halved.shape == (154, 205, 3)
    means = crop.reshape(154, 2, 205, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(halved.astype(float) - means).max() <= 0.5
    direct = cv2.resize(crop, (96, 96), interpolation=cv2.INTER_AREA).astype(int)
    after = cv2.resize(halved, (96, 96), interpolation=cv2.INTER_AREA).astype(int)
    moved = np.abs(direct - after)
    assert moved.mean() < 0.75 and np.percentile(moved, 99) <= 4, (moved.mean(), moved.max())


def test_crops_too_small_odd_or_in_whole_blocks_are_not_halved() -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    for height, width in ((240, 320), (288, 384), (309, 411), (300, 400)):
        crop = image[:height, :width]
        kept = halve_large(crop, (96, 96))
        # 320x240 halved would be under 1.5 input sizes down; 384x288 is 4x3 whole
        # blocks; 411x309 is odd. 400x300 is halved: 200x150 is still 2.1 x 1.6 sizes.
        assert kept.shape == ((150, 200, 3) if width == 400 else crop.shape)


def test_a_region_at_the_edge_is_shifted_inside_the_frame() -> None:
    crop = crop_region(NormBox(0.95, 0.0, 1.0, 0.05), (640, 480), (96, 96))
    assert crop is not None
    assert crop.x1 == 640 and crop.y0 == 0
    assert crop.x1 - crop.x0 == pytest.approx(crop.y1 - crop.y0, abs=1)


def test_a_region_covering_most_of_the_frame_means_the_whole_frame() -> None:
    assert crop_region(NormBox(0.05, 0.05, 0.95, 0.95), (640, 480), (96, 96)) is None


def test_the_crop_always_holds_the_region_inside_the_frame() -> None:
    rng = np.random.default_rng(3)
    crops = 0
    for _ in range(500):
        x0, x1 = sorted(rng.uniform(0.0, 1.0, 2))
        y0, y1 = sorted(rng.uniform(0.0, 1.0, 2))
        width, height = ((640, 480), (1280, 720), (480, 640), (200, 150))[int(rng.integers(4))]
        crop = crop_region(NormBox(x0, y0, x1, y1), (width, height), (96, 96))
        if crop is None:
            continue
        crops += 1
        assert 0 <= crop.x0 < crop.x1 <= width and 0 <= crop.y0 < crop.y1 <= height
        assert crop.x0 <= x0 * width + 1 and crop.x1 >= x1 * width - 1
        assert crop.y0 <= y0 * height + 1 and crop.y1 >= y1 * height - 1
    assert crops > 100


def test_a_wide_model_gets_a_wide_crop() -> None:
    crop = crop_region(NormBox(0.4, 0.4, 0.5, 0.5), (1280, 720), (160, 96))
    assert crop is not None
    assert (crop.x1 - crop.x0) / (crop.y1 - crop.y0) == pytest.approx(160 / 96, rel=0.02)


def test_objects_found_in_a_crop_map_back_to_the_frame() -> None:
    region = NormBox(0.5, 0.25, 1.0, 0.75)
    found = DetectedObject("cat", 0.8, NormBox(0.0, 0.5, 0.5, 1.0), center=(0.2, 0.6))
    mapped = to_frame(found, region)
    assert (mapped.box.x_min, mapped.box.y_min, mapped.box.x_max, mapped.box.y_max) == (
        pytest.approx((0.5, 0.5, 0.75, 0.75))
    )
    assert mapped.centroid == pytest.approx((0.6, 0.55))
    assert (mapped.label, mapped.score, mapped.box_is_estimate) == ("cat", 0.8, True)


# -- matching and metrics -------------------------------------------------------------------


def obj(label: str, score: float, x: float, y: float) -> DetectedObject:
    box = NormBox(max(0.0, x - 0.05), max(0.0, y - 0.05), min(1.0, x + 0.05), min(1.0, y + 0.05))
    return DetectedObject(label, score, box, center=(x, y))


def truth(label: str, x0: float, y0: float, x1: float, y1: float) -> TruthBox:
    return TruthBox(label, NormBox(x0, y0, x1, y1))


def test_matching_is_one_to_one_and_best_score_first() -> None:
    truths = [truth("cat", 0.0, 0.0, 0.5, 0.5)]
    predictions = [obj("cat", 0.6, 0.2, 0.2), obj("cat", 0.9, 0.3, 0.3)]
    match = match_image(predictions, truths)
    assert match.pairs == ((1, 0),)
    assert match.false_positives == (0,)
    assert match.false_negatives == ()


def test_a_prediction_matches_only_its_own_class_with_its_centroid_inside() -> None:
    truths = [truth("cat", 0.0, 0.0, 0.4, 0.4)]
    wrong_class = match_image([obj("dog", 0.9, 0.2, 0.2)], truths)
    outside = match_image([obj("cat", 0.9, 0.5, 0.5)], truths)
    for match in (wrong_class, outside):
        assert match.pairs == () and match.false_positives == (0,)
        assert match.false_negatives == (0,)


def test_the_nearest_of_several_containing_boxes_is_taken() -> None:
    truths = [truth("cat", 0.0, 0.0, 1.0, 1.0), truth("cat", 0.3, 0.3, 0.5, 0.5)]
    match = match_image([obj("cat", 0.9, 0.42, 0.42)], truths)
    assert match.pairs == ((0, 1),)
    assert match.false_negatives == (0,)


def test_strict_core_needs_the_centroid_in_the_middle_of_the_box() -> None:
    truths = [truth("cat", 0.0, 0.0, 0.4, 0.4)]
    near_edge = [obj("cat", 0.9, 0.05, 0.05)]
    assert match_image(near_edge, truths).pairs == ((0, 0),)
    assert match_image(near_edge, truths, core=0.5).pairs == ()


def test_iou_matching_uses_the_boxes() -> None:
    truths = [truth("cat", 0.1, 0.1, 0.3, 0.3)]
    exact = DetectedObject("cat", 0.9, NormBox(0.1, 0.1, 0.3, 0.3), box_is_estimate=False)
    shifted = DetectedObject("cat", 0.9, NormBox(0.2, 0.2, 0.4, 0.4), box_is_estimate=False)
    assert match_image([exact], truths, by="iou").pairs == ((0, 0),)
    assert match_image([shifted], truths, by="iou").pairs == ()


def test_metrics_count_per_class_and_overall() -> None:
    results = [
        ([obj("cat", 0.9, 0.2, 0.2), obj("dog", 0.8, 0.8, 0.8)], [truth("cat", 0, 0, 0.4, 0.4)]),
        ([], [truth("dog", 0.5, 0.5, 1, 1), truth("cat", 0, 0, 0.2, 0.2)]),
        ([obj("dog", 0.7, 0.7, 0.7)], [truth("dog", 0.5, 0.5, 1, 1)]),
    ]
    metrics = detection_metrics(results, ("cat", "dog"))
    cat, dog = metrics.per_class
    assert (cat.true_positives, cat.false_positives, cat.false_negatives) == (1, 0, 1)
    assert (dog.true_positives, dog.false_positives, dog.false_negatives) == (1, 1, 1)
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 4)
    assert metrics.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert metrics.images == 3
    assert metrics.to_dict()["per_class"][1]["support"] == 2


def test_sweep_recall_falls_as_the_threshold_rises() -> None:
    grid = grid_with({(1, 1): (1, 0.55), (4, 6): (1, 0.85)})
    truths = [[truth("cat", 0.0, 0.0, 0.4, 0.5), truth("cat", 0.7, 0.6, 1.0, 1.0)]]
    sweep = threshold_sweep([grid], truths, LABELS, 0, thresholds=(0.5, 0.6, 0.9))
    assert [p.recall for p in sweep] == [1.0, 0.5, 0.0]


def test_best_threshold_stays_near_the_middle_unless_clearly_worse() -> None:
    sweep = ((0.25, 0.93), (0.3, 0.9), (0.4, 0.9), (0.5, 0.89), (0.6, 0.9), (0.7, 0.4))
    points = [SweepPoint(t, 1.0, 1.0, f1) for t, f1 in sweep]
    assert best_threshold(points).threshold == 0.25
    assert best_threshold(points, tolerance=0.05).threshold == 0.5
    assert best_threshold(points, tolerance=0.035).threshold == 0.6
    assert best_threshold(points, tolerance=0.05, prefer=0.35).threshold == 0.4


# -- the manifest ---------------------------------------------------------------------------


def detection_manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "boxes",
        "version": "1",
        "task": "object-detection",
        "created_at": datetime.now(timezone.utc),
        "model": ModelFile(sha256=hashlib.sha256(b"m").hexdigest(), size=1),
        "inputs": (TensorSpec(name="in", shape=(1, 96, 96, 3), dtype="int8", scale=0.0078),),
        "outputs": (TensorSpec(name="out", shape=(1, 12, 12, 3), dtype="int8", scale=0.1),),
        "labels": LABELS,
        "preprocessing": ImagePreprocessing(width=96, height=96),
        "decoding": HeatmapDecoding(stride=8, background_label="background", box_scale=2.0),
        "quantization": "int8",
        "golden": GoldenPair(input_b64="", output_b64=""),
    }
    fields.update(changes)
    return Manifest(**fields)


def test_a_detection_manifest_round_trips() -> None:
    manifest = detection_manifest()
    again = Manifest.model_validate_json(manifest.canonical_bytes())
    assert again == manifest
    parts = again.detector_parts()
    assert parts is not None and parts[1].kind == "centroid-heatmap"
    assert again.classifier_parts() is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outputs": (TensorSpec(name="o", shape=(1, 6, 6, 3), dtype="int8"),)}, "outputs"),
        ({"outputs": (TensorSpec(name="o", shape=(1, 12, 12, 2), dtype="int8"),)}, "outputs"),
        ({"decoding": HeatmapDecoding(stride=8, background_label="none")}, "background label"),
        ({"labels": ("background",), "outputs": (
            TensorSpec(name="o", shape=(1, 12, 12, 1), dtype="int8"),)}, "at least one class"),
        ({"decoding": ClassificationDecoding()}, "centroid-heatmap"),
        ({"task": "image-classification"}, "centroid-heatmap"),
        ({"preprocessing": ImagePreprocessing(width=96, height=96, resize="center-crop")},
         "stretch"),
    ],
)  # fmt: skip
def test_inconsistent_detection_manifests_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        detection_manifest(**changes)


def test_odd_input_sizes_round_the_grid_up() -> None:
    manifest = detection_manifest(
        preprocessing=ImagePreprocessing(width=100, height=60),
        inputs=(TensorSpec(name="in", shape=(1, 60, 100, 3), dtype="int8"),),
        outputs=(TensorSpec(name="out", shape=(1, 8, 13, 3), dtype="int8"),),
    )
    assert manifest.detector_parts() is not None
