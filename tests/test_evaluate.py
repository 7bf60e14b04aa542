"""`edgewatch evaluate` on a real float32 bundle, through the device's runtime."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from device.errors import BundleTaskError, DatasetError
from device.preprocessing.image import normalise
from training.datasets.image_folder import load_labelled_folder
from training.evaluate import EvaluationResult, evaluate_bundle
from training.synthetic.shapes import SHAPE_LABELS, write_image_folder
from training.train_image import ImageTrainOptions, train_image_classifier

pytestmark = pytest.mark.slow

OPTIONS = ImageTrainOptions(
    epochs=3, batch_size=16, seed=0, input_size=32, alpha=0.25, blocks=4,
    learning_rate=3e-3, augmentation=None, progress=False, name="shapes-eval",
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(bundle, model folder, evaluation folder) for a tiny model converted to float32."""
    root = tmp_path_factory.mktemp("evaluate")
    write_image_folder(root / "train", per_class=12, seed=5)
    write_image_folder(root / "eval", per_class=5, seed=6)
    model_dir = root / "model"
    train_image_classifier(root / "train", model_dir, OPTIONS)
    from converters.convert import convert_model

    out = root / "shapes.ewm"
    convert_model(model_dir, "float32", out)
    return out, model_dir, root / "eval"


def test_evaluate_matches_the_keras_model(bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    bundle_path, model_dir, eval_dir = bundle
    result = evaluate_bundle(bundle_path, eval_dir, threads=1, out_dir=tmp_path / "report")
    assert isinstance(result, EvaluationResult)
    assert result.metrics.samples == 4 * 5
    assert result.metrics.labels == SHAPE_LABELS
    assert result.mean_invoke_ms > 0

    # A float32 bundle must predict what the Keras model predicts on the same pixels.
    from training.tf_setup import import_keras

    keras = import_keras()
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    spec = OPTIONS.preprocessing()
    images = load_labelled_folder(eval_dir, spec)
    keras_pred = np.argmax(model.predict(normalise(images.samples.x, spec), verbose=0), -1)
    keras_accuracy = float(np.mean(keras_pred == images.samples.y))
    assert result.accuracy == pytest.approx(keras_accuracy)

    document = json.loads(json.dumps(result.to_dict()))
    assert document["samples"] == 20 and document["quantization"] == "float32"
    assert np.array(document["confusion_matrix"]).sum() == 20
    text = result.render_text()
    assert "accuracy" in text and "triangle" in text
    assert result.report is not None
    assert result.report.confusion_png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_folder_label_is_a_clear_error(
    bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_image_folder(data, per_class=1, seed=0, labels=("circle",))
    (data / "hexagon").mkdir()
    cv2.imwrite(str(data / "hexagon" / "h.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DatasetError, match="hexagon") as caught:
        evaluate_bundle(bundle[0], data)
    assert "circle" in str(caught.value) and "triangle" in str(caught.value)


def test_one_class_folder_is_enough_to_evaluate(
    bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data = tmp_path / "only-squares"
    write_image_folder(data, per_class=3, seed=2, labels=("square",))
    result = evaluate_bundle(bundle[0], data)
    assert result.metrics.samples == 3
    square = result.metrics.per_class[SHAPE_LABELS.index("square")]
    assert square.support == 3


def test_evaluate_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, training.evaluate; "
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_non_bundle_task_is_refused(bundle: tuple[Path, Path, Path]) -> None:
    from device.bundle.reader import read_bundle
    from training.evaluate import _image_preprocessing

    manifest = read_bundle(bundle[0]).manifest
    wrong = manifest.model_copy(update={"task": "object-detection"})
    with pytest.raises(BundleTaskError, match="object-detection"):
        _image_preprocessing(wrong)
