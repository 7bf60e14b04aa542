"""Training an image classifier end to end on generated shapes, and its dataset checks."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from converters.model_dir import read_info, read_samples
from device.errors import DatasetError, EdgewatchError
from device.preprocessing.image import frame_to_input, normalise
from training.datasets.fashion_mnist import FASHION_MNIST_LABELS, export_idx_dataset
from training.datasets.image_folder import load_image_dataset, scan_folder
from training.report import compute_metrics
from training.synthetic.shapes import SHAPE_LABELS, write_image_folder
from training.train_image import ImageTrainOptions, TrainResult, train_image_classifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Tiny but learnable: a 5-block MobileNet at 32 px learns the shapes in about a dozen
#: epochs on 2 CPU cores; the warm-up keeps early stopping from restoring epoch 1.
TINY = ImageTrainOptions(
    epochs=12, batch_size=16, seed=0, input_size=32, alpha=0.25, blocks=5,
    learning_rate=3e-3, patience=12, warmup_epochs=8, augmentation=None, progress=False,
)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_image_folder(root, per_class=30, seed=1)
    return root


@pytest.fixture(scope="module")
def trained(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("model")
    return train_image_classifier(shapes_dir, out, TINY)


@pytest.mark.slow
def test_training_writes_a_complete_model_folder(trained: TrainResult) -> None:
    out = trained.out_dir
    for name in ("model.keras", "model_info.json", "heldout.npz", "calibration.npz"):
        assert (out / name).is_file(), name
    info = read_info(out)
    assert info.labels == SHAPE_LABELS
    assert info.background_labels == ("background",)
    assert info.preprocessing.width == info.preprocessing.height == 32
    assert info.preprocessing.scale == pytest.approx(1 / 127.5)
    assert info.preprocessing.offset == -1.0
    assert info.provenance["seed"] == "0"
    assert info.provenance["epochs_run"] == str(trained.epochs_run)
    assert info.heldout_accuracy == pytest.approx(trained.test_accuracy)
    heldout = read_samples(out / "heldout.npz")
    assert heldout.x.shape[1:] == (32, 32, 3) and heldout.x.dtype == np.uint8
    assert heldout.y is not None and set(heldout.y.tolist()) == {0, 1, 2, 3}
    calibration = read_samples(out / "calibration.npz")
    assert 0 < len(calibration) <= 300 and calibration.y is None


@pytest.mark.slow
def test_report_files_are_valid(trained: TrainResult) -> None:
    report = trained.report
    assert report.curves_png is not None
    for png in (report.confusion_png, report.curves_png):
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert cv2.imread(str(png)) is not None
    document = json.loads(report.json.read_text())
    assert document["labels"] == list(SHAPE_LABELS)
    assert len(document["history"]["loss"]) == trained.epochs_run
    assert np.array(document["confusion_matrix"]).sum() == document["samples"]
    assert "| circle |" in report.markdown.read_text()


@pytest.mark.slow
def test_accuracy_is_clearly_above_chance(trained: TrainResult) -> None:
    # Four classes: chance is 0.25. The budget is tiny, so the bar is modest.
    assert trained.test_accuracy >= 0.45, trained.report.json.read_text()


@pytest.mark.slow
def test_saved_model_is_float32_without_preprocessing_layers(trained: TrainResult) -> None:
    from training.tf_setup import import_keras

    keras = import_keras()
    model = keras.models.load_model(trained.model_path, compile=False)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not {"Rescaling", "Normalization", "RandomFlip", "RandomRotation"} & kinds
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)
    assert model.output_shape == (None, len(SHAPE_LABELS))


def test_split_is_deterministic_and_stratified(shapes_dir: Path) -> None:
    spec = TINY.preprocessing()
    first = load_image_dataset(shapes_dir, spec, seed=3)
    again = load_image_dataset(shapes_dir, spec, seed=3)
    other = load_image_dataset(shapes_dir, spec, seed=4)
    assert first.test_files == again.test_files and first.val_files == again.val_files
    assert first.train_files == again.train_files
    assert first.test_files != other.test_files
    everything = set(first.train_files) | set(first.val_files) | set(first.test_files)
    assert len(everything) == 4 * 30
    assert first.test.y is not None
    assert np.bincount(first.test.y).tolist() == [4, 4, 4, 4]  # round(30 * 0.15) each
    assert np.array_equal(first.test.x, again.test.x)


def test_training_and_device_preprocessing_agree(shapes_dir: Path) -> None:
    spec = TINY.preprocessing()
    dataset = load_image_dataset(shapes_dir, spec, seed=0)
    path = dataset.train_files[5]
    training_input = normalise(dataset.train.x[5], spec)
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert frame is not None
    device_input = frame_to_input(np.asarray(frame, dtype=np.uint8), spec)[0]
    assert np.array_equal(training_input, device_input)


def _tiny_folder(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            cv2.imwrite(str(root / label / f"{i}.png"), image)
    return root


def test_dataset_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no label sub-folders"):
        scan_folder(tmp_path / "empty")
    one = _tiny_folder(tmp_path / "one", {"cat": 3})
    with pytest.raises(DatasetError, match="at least 2"):
        scan_folder(one)
    hollow = _tiny_folder(tmp_path / "hollow", {"cat": 3, "dog": 3})
    (hollow / "bird").mkdir()
    with pytest.raises(DatasetError, match="bird"):
        scan_folder(hollow)


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _tiny_folder(tmp_path / "data", {"cat": 4, "dog": 4})
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    dataset = load_image_dataset(root, TINY.preprocessing(), seed=0)
    assert [p.name for p in dataset.skipped] == ["broken.png"]
    assert len(dataset.train) + len(dataset.val) + len(dataset.test) == 8
    # A class left with nothing readable is an error that names the class.
    for image in (root / "dog").iterdir():
        image.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="dog"):
        load_image_dataset(root, TINY.preprocessing(), seed=0)


def test_metrics_match_hand_computation() -> None:
    metrics = compute_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], ["a", "b", "c"])
    assert metrics.accuracy == pytest.approx(0.6)
    a, b, c = metrics.per_class
    assert (a.precision, a.recall, a.support) == (0.5, 0.5, 2)
    assert b.precision == pytest.approx(2 / 3) and b.recall == 1.0
    assert c.f1 == 0.0 and c.support == 1
    assert metrics.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_export_writes_an_image_folder(tmp_path: Path) -> None:
    images = np.arange(6 * 28 * 28, dtype=np.uint32).reshape(6, 28, 28) % 256
    labels = np.array([0, 9, 0, 9, 0, 3])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "out"
    counts = export_idx_dataset(tmp_path, out, limit_per_class=2, split="test")
    assert counts[FASHION_MNIST_LABELS[0]] == 2 and counts["ankle_boot"] == 2
    assert counts["dress"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["ankle_boot", "dress", "t-shirt_top"]
    first = cv2.imread(str(out / "t-shirt_top" / "test_00000.png"), cv2.IMREAD_GRAYSCALE)
    assert first is not None and np.array_equal(first, images[0].astype(np.uint8))
    assert scan_folder(out).labels == ("ankle_boot", "dress", "t-shirt_top")


def test_pretrained_fails_fast_offline() -> None:
    from training.models.mobilenet import (
        MobileNetSpec,
        build_mobilenet,
        imagenet_weights_cached,
    )

    if imagenet_weights_cached(0.35, 96):
        pytest.skip("ImageNet weights are cached here; the offline path cannot be exercised")
    start = time.monotonic()
    with pytest.raises(EdgewatchError, match="could not download ImageNet weights"):
        build_mobilenet(MobileNetSpec(num_classes=2, input_size=96, alpha=0.35,
                                      pretrained="imagenet"))
    assert time.monotonic() - start < 40


def test_pretrained_rejects_unsupported_settings() -> None:
    from training.models.mobilenet import MobileNetSpec

    with pytest.raises(EdgewatchError, match=r"alpha 0\.25"):
        MobileNetSpec(num_classes=2, input_size=96, alpha=0.25, pretrained="imagenet")


@pytest.mark.slow
def test_cli_passes_given_flags_and_the_options_defaults(shapes_dir: Path, tmp_path: Path) -> None:
    """`edgewatch train image-classification`: the flags given reach the options, and
    those left out take ImageTrainOptions' defaults (the CLI restates none)."""
    from device.cli import main

    out = tmp_path / "model"
    code = main(["train", "image-classification", str(shapes_dir), "--out", str(out),
                 "--epochs", "1", "--input-size", "32", "--blocks", "5", "--color", "grey",
                 "--model-version", "1"])  # fmt: skip
    assert code == 0
    info = read_info(out)
    defaults = ImageTrainOptions()
    assert info.preprocessing.width == 32 and info.preprocessing.color == "grey"
    assert info.provenance["alpha"] == str(defaults.alpha)
    assert info.provenance["blocks"] == "5"
