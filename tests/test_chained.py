"""Chained pipelines: crops of detected boxes, and a real classifier run on each.

The classifier is a tiny CNN trained here on crops of generated shapes, cut by the
device's own crop code (as the face example's identity data is), and converted to
int8, the level a Pi runs. Scenes are 2x2 tiles of generated stills, so every box's
truth is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from pydantic import ValidationError

from device.bundle.reader import Bundle, read_bundle
from device.config import ClassificationPipeline as PipelineConfig
from device.config import RuntimeSection
from device.detection.crops import CropSettings, PixelBox, crop, crop_region
from device.detection.objects import DetectedObject, NormBox
from device.errors import ConfigError
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.chained import CropClassifier
from device.pipelines.chained_frames import ChainedPipeline
from device.pipelines.classification import ClassificationPipeline
from device.pipelines.loaded import build_pipeline, load_model
from device.runtime import ModelRuntime
from device.sources.camera import Frame
from tests.helpers_crops import CROP, LABELS, tiled_scene

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]


def blank(width: int = 400, height: int = 300) -> UInt8Image:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# -- crop geometry ------------------------------------------------------------------------


def norm(x0: float, y0: float, x1: float, y1: float, w: int = 400, h: int = 300) -> NormBox:
    return NormBox(x0 / w, y0 / h, x1 / w, y1 / h)


def test_margin_grows_the_box_on_every_side() -> None:
    region = crop_region(norm(100, 100, 200, 150), 400, 300, CropSettings(margin=0.1))
    assert region == PixelBox(90, 95, 210, 155)


def test_a_box_at_the_edge_is_moved_inside_keeping_its_size() -> None:
    settings = CropSettings(margin=0.1)
    left = crop_region(norm(0, 100, 50, 200), 400, 300, settings)
    assert left == PixelBox(0, 90, 60, 210)  # 60 wide, as -5..55 would be
    bottom_right = crop_region(norm(350, 250, 400, 300), 400, 300, settings)
    assert bottom_right == PixelBox(340, 240, 400, 300)


def test_square_grows_the_short_side_around_the_centre() -> None:
    region = crop_region(norm(180, 100, 220, 200), 400, 300, CropSettings(0.0, aspect=1.0))
    assert region == PixelBox(150, 100, 250, 200)
    wide = crop_region(norm(100, 130, 300, 170), 400, 300, CropSettings(0.0, aspect=1.0))
    assert wide == PixelBox(100, 50, 300, 250)


def test_a_crop_larger_than_the_frame_is_cut_to_it() -> None:
    # 280 px tall and square: 280 wide fits, but with a 0.5 margin it is 560, > 400 and 300.
    region = crop_region(norm(60, 10, 340, 290), 400, 300, CropSettings(0.5, aspect=1.0))
    assert region == PixelBox(0, 0, 400, 300)


def test_random_boxes_are_always_kept_whole_inside_the_frame() -> None:
    rng = np.random.default_rng(7)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 500, size=2))
        x = np.sort(rng.uniform(0, 1, size=2))
        y = np.sort(rng.uniform(0, 1, size=2))
        box = NormBox(float(x[0]), float(y[0]), float(x[1]), float(y[1]))
        aspect = float(rng.choice([0.5, 0.82, 1.0, 1.7]))
        settings = CropSettings(margin=float(rng.uniform(0, 0.5)), aspect=aspect, min_size=1)
        region = crop_region(box, width, height, settings)
        if region is None:
            assert min(box.width * width, box.height * height) < 1
            continue
        assert 0 <= region.x0 < region.x1 <= width and 0 <= region.y0 < region.y1 <= height
        # The whole box (to the pixel) is inside.
        assert region.x0 <= box.x_min * width + 1e-6 and box.x_max * width <= region.x1 + 1e-6
        assert region.y0 <= box.y_min * height + 1e-6 and box.y_max * height <= region.y1 + 1e-6
        if region.width < width and region.height < height:
            # Not cut by the frame: the aspect holds to a pixel.
            w, h = region.width, region.height
            assert abs(w - h * aspect) <= 1.0 or abs(h - w / aspect) <= 1.0, (w, h, aspect)


def test_a_crop_is_a_view_of_the_frame_not_a_copy() -> None:
    frame = blank()
    cut = crop(frame, norm(100, 100, 200, 150), CROP)
    assert cut is not None
    assert np.shares_memory(cut.image, frame) and cut.image.base is not None
    assert np.array_equal(cut.image, frame[cut.box.y0 : cut.box.y1, cut.box.x0 : cut.box.x1])


def test_boxes_under_the_minimum_size_are_not_cropped() -> None:
    frame = blank()
    settings = CropSettings(margin=0.5, min_size=16)
    assert crop(frame, norm(10, 10, 25, 100), settings) is None  # 15 px wide
    assert crop(frame, norm(10, 10, 26, 100), settings) is not None


@pytest.mark.parametrize(
    "kwargs", [{"margin": -0.1}, {"aspect": 0.0}, {"aspect": float("nan")}, {"min_size": 0}]
)
def test_bad_crop_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CropSettings(**kwargs)


# -- the config ---------------------------------------------------------------------------


WHO_TOML = """
[pipelines.who]
task = "image-classification"
input = "faces"
input_labels = ["face"]
model = "identity.ewm"
margin = 0.2
square = true
min_size = 20
threshold = 0.6
ignore_labels = ["s3"]
"""


def test_the_chained_table_parses_as_documented() -> None:
    table = tomllib.loads(WHO_TOML)["pipelines"]["who"]
    config = ChainedClassificationConfig.model_validate(table)
    assert config.input == "faces" and config.input_labels == ("face",)
    assert config.crop_aspect == 1.0 and config.min_size == 20 and config.margin == 0.2
    assert ChainedClassificationConfig(input="faces", model=Path("m.ewm")).crop_aspect is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"aspect": 0.8}, "disagree"),
        ({"input_labels": ["face", "face"]}, "twice"),
        ({"sourse": "camera"}, "Extra inputs"),
        ({"input": "bad name!"}, "pattern"),
        ({"thresholds": {"s1": 1.5}}, "between 0 and 1"),
        ({"margin": -1}, "greater than or equal"),
    ],
)
def test_bad_chained_tables_are_refused(change: dict[str, Any], message: str) -> None:
    table = tomllib.loads(WHO_TOML)["pipelines"]["who"] | change
    with pytest.raises(ValidationError, match=message):
        ChainedClassificationConfig.model_validate(table)


# -- a real classifier on the crops -------------------------------------------------------


@pytest.fixture(scope="module")
def crop_bundle(shape_crop_bundle: Path) -> Bundle:
    return read_bundle(shape_crop_bundle)


@pytest.fixture(scope="module")
def runtime(crop_bundle: Bundle) -> ModelRuntime:
    loaded = load_model("who", "cam", "image-classification", crop_bundle, RuntimeSection())
    return loaded.runtime


def test_a_chained_pipeline_loads_like_any_other(crop_bundle: Bundle) -> None:
    config = ChainedClassificationConfig(
        input="shapes", model=Path("shape-crops.ewm"), source="cam"
    )
    built = build_pipeline("who", config, crop_bundle, RuntimeSection(threads=1))
    assert built.state.name == "who" and built.state.source == "cam"
    assert built.model.name == "shape-crops"
    assert isinstance(built.pipeline, ChainedPipeline)
    assert built.pipeline.labels == ("background", "circle", "square", "triangle")
    assert built.pipeline.reportable == ("circle", "square", "triangle")


def classifier(bundle: Bundle, runtime: ModelRuntime, **overrides: Any) -> CropClassifier:
    settings: dict[str, Any] = {
        "input": "shapes",
        "input_labels": ["shape"],
        "model": "shape-crops.ewm",
        "margin": CROP.margin,
        "square": True,
        "min_size": CROP.min_size,
        "threshold": 0.4,
    }
    config = ChainedClassificationConfig.model_validate(settings | overrides)
    return CropClassifier("who", config, bundle, runtime)


def scene(seed: int) -> tuple[UInt8Image, list[tuple[NormBox, str, int]]]:
    """Test scene ``seed``: each shape once and one empty tile, in a seeded order."""
    rng = np.random.default_rng(seed)
    return tiled_scene(rng, tuple(str(v) for v in rng.permutation(LABELS)))


def shape_objects(
    truth: list[tuple[NormBox, str, int]], score: float = 0.9
) -> list[DetectedObject]:
    return [DetectedObject("shape", score, box, box_is_estimate=False) for box, _, _ in truth]


def test_each_detected_box_gets_the_second_models_label(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    who = classifier(crop_bundle, runtime)
    checked = reported = 0
    for seed in range(100, 108):
        frame, truth = scene(seed)
        objects = shape_objects(truth)
        results = who.classify(frame, objects)
        assert [r.object for r in results] == objects  # equal scores: detector order kept
        for result, (_, label, _) in zip(results, truth, strict=True):
            assert result.top_label == label, (seed, label, result.scores)
            assert result.label == (label if result.score >= 0.4 else None)
            assert result.scores.shape == (len(who.labels),)
            assert abs(float(result.scores.sum()) - 1.0) < 0.05
            assert result.crop.width == result.crop.height  # square = true
            checked += 1
            reported += result.label is not None
    stats = who.stats()
    assert stats.classified == checked == 24
    assert stats.reported == reported > 0
    assert stats.latency.count == checked and stats.latency.p50_ms > 0
    assert stats.skipped_small == stats.skipped_limit == stats.other_labels == 0


def test_a_box_on_empty_background_reports_nothing(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    who = classifier(crop_bundle, runtime)
    frame, truth = scene(100)
    (empty_tile,) = {0, 1, 2, 3} - {index for _, _, index in truth}
    col, row = empty_tile % 2, empty_tile // 2
    box = NormBox(col / 2 + 0.1, row / 2 + 0.1, col / 2 + 0.35, row / 2 + 0.35)
    (result,) = who.classify(frame, [DetectedObject("shape", 0.8, box)])
    assert result.top_label == "background" and result.label is None


def test_other_labels_small_boxes_and_the_frame_limit_are_counted(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    who = classifier(crop_bundle, runtime, max_objects=2, min_size=20)
    frame, truth = scene(101)
    small = DetectedObject("shape", 0.99, NormBox(0.5, 0.5, 0.55, 0.55))  # 9.6 px < 20
    car = DetectedObject("car", 0.99, truth[0][0])
    shapes = [
        DetectedObject("shape", s, box)
        for s, (box, _, _) in zip((0.5, 0.7, 0.6), truth, strict=True)
    ]
    results = who.classify(frame, [small, car, *shapes])
    # Highest detector score first; the small one takes no slot; the third shape is over.
    assert [r.object.score for r in results] == [0.7, 0.6]
    stats = who.stats()
    assert (stats.classified, stats.skipped_small, stats.skipped_limit, stats.other_labels) == (
        2, 1, 1, 1,
    )  # fmt: skip


def test_thresholds_and_ignored_labels_apply_to_crops(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    frame, truth = scene(102)
    objects = shape_objects(truth)
    strict = classifier(crop_bundle, runtime, threshold=1.0).classify(frame, objects)
    assert all(r.label is None for r in strict) and any(r.score < 1.0 for r in strict)
    ignoring = classifier(crop_bundle, runtime, ignore_labels=["circle"], threshold=0.0)
    by_truth = {
        label: r for (_, label, _), r in zip(truth, ignoring.classify(frame, objects), strict=True)
    }
    assert by_truth["circle"].top_label == "circle" and by_truth["circle"].label is None
    assert by_truth["square"].label == "square"
    assert "circle" not in ignoring.reportable
    with pytest.raises(ConfigError, match="does not have"):
        classifier(crop_bundle, runtime, thresholds={"face": 0.5})


def test_reconfigure_changes_crops_and_thresholds(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    who = classifier(crop_bundle, runtime)
    frame, truth = scene(103)
    obj = shape_objects(truth)[0]
    before = who.classify(frame, [obj])[0]
    who.reconfigure(who.config.model_copy(update={"square": False, "margin": 0.0}))
    after = who.classify(frame, [obj])[0]
    assert after.crop.width < before.crop.width or after.crop.height < before.crop.height
    with pytest.raises(ConfigError):
        who.reconfigure(who.config.model_copy(update={"ignore_labels": ("nobody",)}))
    assert who.config.margin == 0.0  # unchanged by the refused reload


def test_a_crop_classified_directly_equals_the_frame_pipeline_on_the_same_pixels(
    crop_bundle: Bundle, runtime: ModelRuntime
) -> None:
    """ImageClassifier (what crops use) and ClassificationPipeline (frames) agree."""
    frame, truth = scene(104)
    cut = crop(frame, truth[0][0], CROP)
    assert cut is not None
    config = PipelineConfig.model_validate({"source": "cam", "model": "m.ewm"})
    pipeline = ClassificationPipeline("frames", config, crop_bundle, runtime)
    whole = pipeline.infer(
        Frame(source="cam", index=0, captured_at=0.0, image=cut.image.copy(), tensor=None,
              timeline=0.0)
    )  # fmt: skip
    direct = pipeline.classify(cut.image)
    assert np.array_equal(whole.scores, direct.scores)
    assert whole.top_label == direct.top_label
