"""A trained detector converted at every level, and the device's Detector and bench on it.

The model is the generated-scenes detector of ``tests/helpers_detection.py`` (trained
once per session). ``edgewatch convert --quant all`` writes the five bundles with the
int8 ranges calibrated on a detection folder's images; each must load on the device
runtime, keep the Keras model's F1, and the int8 model must be all Edge TPU ops.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from converters.edgetpu import edgetpu_report
from converters.model_dir import read_info
from device.bench_detection import run_detection_bench
from device.bundle.reader import read_bundle
from device.cli import main
from device.detection.detector import Detector, crop_region, halve_large
from device.detection.motion import GateDecision
from device.detection.objects import NormBox
from device.errors import BundleTaskError, ConfigError
from device.pipelines.detection import DetectionPipeline
from device.pipelines.detection_config import DetectionPipelineConfig
from device.preprocessing.image import frame_to_input
from device.runtime import load_for_manifest
from device.sources.camera import Frame
from tests.helpers_detection import SyntheticDetector, synthetic_detector
from training.datasets.boxes import iter_box_images, scan_box_folder
from training.evaluate_detection import evaluate_detection_bundle
from training.synthetic.shapes import Appearance, write_shapes_video

LEVELS = ("float32", "float16", "dynamic", "int8", "edgetpu")
EDGETPU_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "ADD"}


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDetector:
    return synthetic_detector(tmp_path_factory)


@pytest.fixture(scope="module")
def bundles(detector: SyntheticDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgewatch convert --quant all`, calibrated on a detection folder's images."""
    out = tmp_path_factory.mktemp("detector-bundles")
    code = main(
        [
            "convert",
            str(detector.model_dir),
            "--quant",
            "all",
            "--out",
            str(out / "shapes.ewm"),
            "--calibration",
            str(detector.unseen_dir / "images"),
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_every_level_is_a_valid_detection_bundle(
    detector: SyntheticDetector, bundles: Path
) -> None:
    info = read_info(detector.model_dir)
    for level in LEVELS:
        bundle = read_bundle(bundles / f"shapes-{level}.ewm")
        manifest = bundle.manifest
        assert manifest.task == "object-detection" and manifest.quantization == level
        assert manifest.decoding == info.decoding
        assert manifest.labels == info.labels
        assert manifest.thresholds.default == info.default_threshold
        assert manifest.outputs[0].shape == (1, 8, 8, 3)
        integer = level in ("int8", "edgetpu")
        assert manifest.inputs[0].dtype == ("int8" if integer else "float32")
        if integer:
            assert manifest.provenance["calibration"] == "images"
        assert manifest.metrics is not None
        # Quantization may move a detection, not the model's behaviour.
        assert manifest.metrics.bundle_accuracy == pytest.approx(
            manifest.metrics.reference_accuracy, abs=0.1
        ), level
        assert manifest.metrics.top1_agreement > 0.95, level
    table = (bundles / "shapes.parity.md").read_text()
    assert "Keras F1" in table and "cell agree" in table


@pytest.mark.slow
def test_the_int8_detector_is_all_edge_tpu_ops(bundles: Path) -> None:
    bundle = read_bundle(bundles / "shapes-int8.ewm")
    report = edgetpu_report(bundle.model_bytes, run_compiler=False)
    assert report.all_supported, report.render_text()
    assert {op.op_name for op in report.ops} == EDGETPU_OPS
    written = (bundles / "shapes-int8.edgetpu.txt").read_text()
    assert f"{len(report.ops)} ops, {len(report.ops)} supported, 0 unsupported" in written
    for name in EDGETPU_OPS:
        assert f"\n{name} " in written
    assert (bundles / "shapes-edgetpu.edgetpu.txt").is_file()


@pytest.fixture(scope="module")
def int8_detector(bundles: Path) -> Detector:
    return Detector.load(read_bundle(bundles / "shapes-int8.ewm"), threads=2)


@pytest.fixture(scope="module")
def unseen(detector: SyntheticDetector) -> list[tuple[np.ndarray, list[tuple[str, NormBox]]]]:
    folder = scan_box_folder(detector.unseen_dir)
    return [
        (frame, [(b.label, b.box) for b in image.boxes]) for image, frame in iter_box_images(folder)
    ]


@pytest.mark.slow
def test_capture_thread_preprocessing_gives_the_same_objects(
    int8_detector: Detector, unseen: list
) -> None:
    found = 0
    for frame, _ in unseen[:20]:
        direct = int8_detector.detect(frame)
        handed = int8_detector.detect(frame, tensor=int8_detector.preprocess(frame))
        assert direct.objects == handed.objects and direct.region is None
        assert np.array_equal(direct.probabilities, handed.probabilities)
        found += len(direct.objects)
    assert found > 10


@pytest.mark.slow
def test_the_lookup_table_path_equals_normalise_then_quantize(
    int8_detector: Detector, unseen: list
) -> None:
    """The int8 input goes through a 256-entry table; the long way gives the same output."""
    frame = unseen[0][0]
    result = int8_detector.detect(frame)
    runtime = int8_detector.runtime
    output = runtime.invoke([frame_to_input(frame, int8_detector.spec)])[0]
    probabilities, _ = int8_detector.output_to_objects(output)
    assert np.array_equal(probabilities, result.probabilities)


@pytest.mark.slow
def test_a_region_of_interest_finds_the_object_in_full_frame_coordinates(
    int8_detector: Detector, unseen: list
) -> None:
    """Four unseen scenes side by side make a frame twice the size; the region of one
    object is cropped at that scene's own scale and mapped back to the big frame."""
    tried = hits = 0
    for start in range(0, 40, 4):
        quad = unseen[start : start + 4]
        top = np.hstack([quad[0][0], quad[1][0]])
        frame = np.vstack([top, np.hstack([quad[2][0], quad[3][0]])])
        for index, (_, objects) in enumerate(quad):
            dx, dy = (index % 2) * 0.5, (index // 2) * 0.5
            for label, box in objects:
                placed = NormBox(dx + box.x_min / 2, dy + box.y_min / 2,
                                 dx + box.x_max / 2, dy + box.y_max / 2)  # fmt: skip
                result = int8_detector.detect(frame, region=placed)
                assert result.region is not None
                assert result.region.x_min <= placed.x_min and result.region.x_max >= placed.x_max
                tried += 1
                hits += any(
                    o.label == label
                    and placed.x_min <= o.centroid[0] <= placed.x_max
                    and placed.y_min <= o.centroid[1] <= placed.y_max
                    for o in result.objects
                )
    assert tried > 20
    assert hits / tried >= 0.6, (hits, tried)


@pytest.mark.slow
def test_region_crops_take_the_shape_whole_frames_reach_the_model_in(
    int8_detector: Detector,
) -> None:
    """The shapes detector stretches whole frames to its square input, so a crop has
    the frame's aspect (16:9 here); a center-crop model's crops have its own."""
    assert int8_detector.spec.resize == "stretch"
    region = NormBox(0.45, 0.45, 0.5, 0.5)
    crop = int8_detector.region_crop((1280, 720), region)
    assert crop is not None
    assert (crop.x1 - crop.x0) / (crop.y1 - crop.y0) == pytest.approx(16 / 9, rel=0.01)
    centred = Detector(
        int8_detector.manifest.model_copy(update={"preprocessing": int8_detector.spec.model_copy(
            update={"resize": "center-crop"})}),
        int8_detector.runtime,
    )  # fmt: skip
    square = centred.region_crop((1280, 720), region)
    assert square is not None
    assert square.x1 - square.x0 == pytest.approx(square.y1 - square.y0, abs=1)


@pytest.mark.slow
def test_a_large_crop_reaches_the_model_halved_by_2x2_blocks(int8_detector: Detector) -> None:
    """A region whose crop is over three input sizes on both sides, and no whole
    multiple of them: the model gets the crop averaged over 2x2 blocks, then resized,
    and the objects are placed back in the frame through the crop's full extent."""
    rng = np.random.default_rng(8)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    cv2.circle(frame, (300, 250), 60, (20, 200, 240), -1)
    region = NormBox(0.3, 0.3, 0.695, 0.695)  # about 253x190 pixels, 380x286 with margins
    crop = int8_detector.region_crop((640, 480), region)
    assert crop is not None
    view = frame[crop.y0 : crop.y1, crop.x0 : crop.x1]
    spec = int8_detector.spec
    halved = halve_large(view, (spec.width, spec.height))
    assert halved.shape[:2] == (view.shape[0] // 2, view.shape[1] // 2)
    got = int8_detector.detect(frame, region)
    expected = int8_detector.detect(view, tensor=int8_detector.preprocess(halved))
    assert got.region == crop.normalised(640, 480)
    np.testing.assert_array_equal(got.probabilities, expected.probabilities)


@pytest.mark.slow
def test_a_gated_pipeline_grows_motion_regions_by_the_configured_margin_once(
    bundles: Path, tmp_path: Path
) -> None:
    """The gate grows the moving regions' union by ``region_margin``; the crop the model
    then sees adds no margin of its own (it used to add another quarter on each side,
    so a margin of 0.1 became 0.1 + 0.3 and crops over twice the area asked for)."""
    bundle_path = bundles / "shapes-int8.ewm"
    bundle = read_bundle(bundle_path)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    config = DetectionPipelineConfig.model_validate(
        {"source": "cam", "model": str(bundle_path), "motion": {"region_margin": 0.1}}
    )
    pipeline = DetectionPipeline("shapes", config, bundle, runtime)
    decisions: list[GateDecision] = []
    decide = pipeline.gate.decide

    def recorded(*args: Any, **kwargs: Any) -> GateDecision:
        decisions.append(decide(*args, **kwargs))
        return decisions[-1]

    pipeline.gate.decide = recorded  # type: ignore[method-assign]
    size = (512, 384)
    video = tmp_path / "crossing.avi"
    write_shapes_video(video, seed=4, size=size, fps=10, script=[Appearance("circle", 1.0, 4.0)],
                       duration_s=5.0)  # fmt: skip
    spec = pipeline.detector.spec
    checked = doubled = 0
    capture = cv2.VideoCapture(str(video))
    for index in itertools.count():
        ok, image = capture.read()
        if not ok:
            break
        pipeline.process(Frame("cam", index, index / 10, image, None, index / 10))
        decision = decisions[-1]
        if not decision.run or decision.region is None:
            continue
        assert pipeline.last_result is not None
        expected = crop_region(decision.region, size, (spec.width, spec.height), margin=0.0,
                               aspect=size[0] / size[1])  # fmt: skip
        seen = pipeline.last_result.region
        assert seen == (None if expected is None else expected.normalised(*size)), index
        twice = crop_region(decision.region, size, (spec.width, spec.height),
                            aspect=size[0] / size[1])  # fmt: skip
        checked += 1
        doubled += twice != expected
    capture.release()
    assert checked >= 10, "the crossing gave too few region runs to judge"
    assert doubled >= checked // 2, "a second margin would not have changed these crops"


@pytest.mark.slow
def test_thresholds_follow_the_precedence_and_refuse_unknown_labels(
    bundles: Path, unseen: list
) -> None:
    bundle = read_bundle(bundles / "shapes-int8.ewm")
    default = bundle.manifest.thresholds.default
    detector = Detector.load(bundle, threads=1, thresholds={"circle": 0.9}, threshold=0.3)
    assert detector.thresholds == {"circle": 0.9, "triangle": 0.3}
    detector.set_thresholds({})
    assert set(detector.thresholds.values()) == {default}
    detector.set_thresholds({}, default=1.0)
    frames = [frame for frame, objects in unseen[:15]]
    assert all(all(o.score >= 1.0 for o in detector.detect(frame).objects) for frame in frames)
    with pytest.raises(ConfigError, match="detects only circle, triangle"):
        detector.set_thresholds({"background": 0.5})
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
        detector.set_thresholds({"circle": 1.5})


@pytest.mark.slow
def test_float_and_int8_bundles_agree_on_unseen_scenes(
    detector: SyntheticDetector, bundles: Path
) -> None:
    f1 = {
        level: evaluate_detection_bundle(bundles / f"shapes-{level}.ewm", detector.unseen_dir).f1
        for level in ("float32", "int8")
    }
    assert f1["int8"] == pytest.approx(f1["float32"], abs=0.08)


def test_a_classifier_bundle_is_not_a_detector(int8_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleTaskError, match="object-detection"):
        Detector.load(read_bundle(int8_bundle))
    with pytest.raises(BundleTaskError, match="object-detection"):
        evaluate_detection_bundle(int8_bundle, tmp_path)


@pytest.mark.slow
def test_bench_measures_raw_and_daemon_paths(
    bundles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_detection_bench(bundles / "shapes-int8.ewm", threads=2, frames=40)
    assert result.frames == 40
    assert 0 < result.raw_invoke_ms_p50 <= result.raw_invoke_ms_p99
    assert result.path_ms_p50 > 0 and result.region_ms_p50 > 0
    assert result.naive_fps > 0 and result.daemon_fps > 0
    assert result.objects_per_frame >= 0
    code = main(["bench", str(bundles / "shapes-int8.ewm"), "--frames", "20", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["quantization"] == "int8" and document["frames"] == 20
