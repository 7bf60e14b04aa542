"""Training a detector on generated scenes; its int8 bundle finds shapes it never saw.

One tiny FOMO-style model (64x64 input, 8x8 grid, trained for seconds on two cores)
is trained on generated scenes of circles and triangles, converted to a
full-int8 bundle and evaluated through the device's Detector on scenes generated with
other seeds. Its F1 must be far above what guessing achieves on the same scenes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.convert import convert_model
from converters.detection_metrics import TruthBox, detection_metrics
from converters.detection_samples import read_detection_samples
from converters.model_dir import read_info
from device.bundle.manifest import HeatmapDecoding
from device.cli import main
from device.detection.objects import DetectedObject, NormBox
from tests.helpers_detection import CLASSES, OPTIONS, SyntheticDetector, synthetic_detector
from training.datasets.boxes import scan_box_folder
from training.evaluate_detection import evaluate_detection_bundle
from training.synthetic.detection_scenes import write_detection_folder
from training.train_detection import split_names

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDetector:
    return synthetic_detector(tmp_path_factory)


@pytest.fixture(scope="module")
def detector_int8(detector: SyntheticDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("detector-int8") / "shapes-int8.ewm"
    convert_model(detector.model_dir, "int8", out)
    return out


def guessing_f1(data_dir: Path, seed: int = 0) -> float:
    """F1 of a guesser that knows how many objects each scene holds and places that
    many random centroids with random classes: what "chance" means here."""
    folder = scan_box_folder(data_dir)
    rng = np.random.default_rng(seed)
    pairs = []
    for image in folder.images:
        guesses = []
        for _ in image.boxes:
            x, y = rng.uniform(0.0, 1.0, 2)
            label = CLASSES[int(rng.integers(len(CLASSES)))]
            guesses.append(DetectedObject(label, 1.0, NormBox(x, y, x, y)))
        pairs.append((guesses, [TruthBox(b.label, b.box) for b in image.boxes]))
    return detection_metrics(pairs, CLASSES).f1


@pytest.mark.slow
def test_training_writes_a_detector_model_folder(detector: SyntheticDetector) -> None:
    out = detector.model_dir
    for name in ("model.keras", "model_info.json", "heldout.npz", "calibration.npz",
                 "heldout_files.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    info = read_info(out)
    assert info.task == "object-detection"
    assert info.labels == ("background", *CLASSES)
    assert isinstance(info.decoding, HeatmapDecoding)
    assert info.decoding.stride == 8 and info.decoding.apply_softmax
    assert 1.0 <= info.decoding.box_scale <= 10.0
    assert info.preprocessing.width == 64 and info.preprocessing.resize == "stretch"
    assert 0.2 <= info.default_threshold <= 0.9
    # The held-out images are the seeded split's test files, and none was trained on.
    names = [image.name for image in scan_box_folder(detector.data_dir).images]
    split = split_names(names, OPTIONS.val_fraction, OPTIONS.test_fraction, OPTIONS.seed)
    listed = (out / "heldout_files.txt").read_text().split()
    assert tuple(listed) == split.test and not set(listed) & set(split.train)
    heldout = read_detection_samples(out / "heldout.npz", len(info.labels))
    assert len(heldout) == len(listed) and heldout.x.shape[1:] == (64, 64, 3)
    assert sum(len(t) for t in heldout.truths) > len(listed) / 2  # 0..3 objects a scene


@pytest.mark.slow
def test_training_report_has_curves_sweep_and_pictures(detector: SyntheticDetector) -> None:
    report = detector.model_dir / "report"
    document = json.loads((report / "report.json").read_text())
    info = read_info(detector.model_dir)
    assert document["matching"] == "centroid" and document["iou_metrics"] is None
    assert "centroid" in document["iou_note"]
    assert len(document["history"]["loss"]) == int(info.provenance["epochs_run"])
    assert len(document["history"]["val_f1"]) == len(document["history"]["loss"])
    assert document["threshold"] == info.default_threshold
    assert len(document["threshold_sweep"]) >= 10
    assert float(info.provenance["heldout_f1"]) == pytest.approx(document["f1"], abs=1e-4)
    for name in ("training_curves.png", "threshold_sweep.png", "predictions.png",
                 *document["samples"]):  # fmt: skip
        assert (report / name).read_bytes()[:8] == PNG_MAGIC, name
        assert cv2.imread(str(report / name)) is not None
    assert "| all |" in (report / "report.md").read_text()


@pytest.mark.slow
def test_int8_bundle_finds_shapes_it_never_saw(
    detector: SyntheticDetector, detector_int8: Path, tmp_path: Path
) -> None:
    evaluation = evaluate_detection_bundle(detector_int8, detector.unseen_dir,
                                           out_dir=tmp_path / "report")  # fmt: skip
    chance = guessing_f1(detector.unseen_dir)
    summary = evaluation.render_text()
    assert evaluation.metrics.images == 60
    assert evaluation.f1 >= 0.7, summary
    assert evaluation.f1 >= chance + 0.5, (chance, summary)
    assert evaluation.metrics.precision >= 0.6 and evaluation.metrics.recall >= 0.6, summary
    for counts in evaluation.metrics.per_class:
        assert counts.support > 5 and counts.f1 > chance, summary
    assert evaluation.iou_metrics is None
    assert "estimates" in summary
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["f1"] == pytest.approx(evaluation.f1)
    assert (tmp_path / "report" / "predictions.png").read_bytes()[:8] == PNG_MAGIC
    assert 0 < len(report["samples"]) <= 12


@pytest.mark.slow
def test_cli_trains_and_evaluates_a_detector(
    detector: SyntheticDetector, detector_int8: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    data = tmp_path / "small"
    write_detection_folder(data, 30, seed=8, size=(64, 64))
    code = main(["train", "object-detection", str(data), "--out", str(tmp_path / "model"),
                 "--epochs", "2", "--input-size", "32", "--seed", "1", "--name", "cli-det",
                 "--labels", "circle,square,triangle", "--alpha", "0.35"])  # fmt: skip
    assert code == 0
    assert "F1" in capsys.readouterr().out
    info = read_info(tmp_path / "model")
    assert info.name == "cli-det" and info.provenance["epochs_run"] == "2"
    assert info.preprocessing.width == 32
    assert info.provenance["alpha"] == "0.35"  # it used to be dropped for detection

    code = main(["evaluate", str(detector_int8), str(detector.unseen_dir), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["matching"] == "centroid" and document["images"] == 60
    assert 0.0 < document["f1"] <= 1.0


def test_cli_names_the_row_of_an_unknown_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_detection_folder(data, 6, seed=2, size=(64, 64))
    lines = (data / "boxes.csv").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if ",circle," in line)
    code = main(["train", "object-detection", str(data), "--out", str(tmp_path / "out"),
                 "--labels", "square,triangle"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert f"boxes.csv line {row + 1}: unknown class 'circle'" in error
    assert not (tmp_path / "out").exists()


def test_cli_refuses_image_network_flags_a_task_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse takes every train flag for every task; one the task would drop is an
    error naming it, before any data is read."""
    out = tmp_path / "o"
    cases = [
        (["object-detection", "--blocks", "6"], "--blocks: object-detection"),
        (["object-detection", "--pretrained", "imagenet"], "--pretrained: object-detection"),
        (["audio-classification", "--alpha", "0.5", "--color", "grey"],
         "--alpha, --color: audio-classification"),
        (["sensor-anomaly", "--input-size", "64"], "--input-size: sensor-anomaly"),
    ]  # fmt: skip
    for (task, *flags), message in cases:
        code = main(["train", task, str(tmp_path / "missing"), "--out", str(out), *flags])
        assert code == 2, flags
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_cli_refuses_an_input_size_off_the_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "object-detection", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--input-size", "100"])  # fmt: skip
    assert code == 2
    assert "multiple of 8" in capsys.readouterr().err
