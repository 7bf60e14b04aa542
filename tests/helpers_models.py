"""A tiny trained-model folder for tests, built without the training package.

Tests of the converter, evaluation, benchmarks and the daemon need a real trained
Keras model in the converters/model_dir.py layout. Building one here, from generated
shapes and a few seconds of training, keeps those tests independent of training/'s
own evolution while exercising exactly the folder contract `edgewatch train` writes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    MODEL_FILE,
    SampleSet,
    TrainedModelInfo,
    write_info,
    write_samples,
)
from device.bundle.manifest import ImagePreprocessing
from device.preprocessing.image import normalise, resize_frame

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("background", "circle", "square", "triangle")
#: Share of each class kept out of training for heldout.npz.
HELDOUT_SHARE = 0.25


def _draw_fallback(rng: np.random.Generator, size: int, label: str) -> np.ndarray[Any, Any]:
    """Simple shapes on a noisy background, for when training.synthetic is absent."""
    image = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
    half = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(half, size - half, size=2))
    if label == "circle":
        cv2.circle(image, (cx, cy), half, colour, -1)
    elif label == "square":
        cv2.rectangle(image, (cx - half, cy - half), (cx + half, cy + half), colour, -1)
    elif label == "triangle":
        points = np.array([[cx, cy - half], [cx - half, cy + half], [cx + half, cy + half]])
        cv2.fillPoly(image, [points.astype(np.int32)], colour)
    return image


def render_image(rng: np.random.Generator, size: int, label: str) -> np.ndarray[Any, Any]:
    """One BGR image of ``label`` at twice ``size`` (the device path shrinks it)."""
    try:
        from training.synthetic.shapes import render_scene
    except ImportError:
        return _draw_fallback(rng, size * 2, label)
    return render_scene(rng, (size * 2, size * 2), label).image


def write_image_folder(directory: Path, per_class: int, size: int = 32, seed: int = 1) -> int:
    """A `DIR/<label>/*.png` dataset; returns the number of images written."""
    rng = np.random.default_rng(seed)
    for label in LABELS:
        (directory / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            path = directory / label / f"{label}_{index}.png"
            if not cv2.imwrite(str(path), render_image(rng, size, label)):
                raise OSError(f"could not write {path}")
    return per_class * len(LABELS)


def _tiny_cnn(size: int, classes: int) -> Any:
    """Edge TPU-friendly ops only: Conv, DepthwiseConv, ReLU6, GAP, Dense, Softmax.

    Wide enough (about 18k weights) that int8 weights visibly shrink the file, which
    a test checks; small enough to train in seconds on two cores.
    """
    import keras

    layers = keras.layers

    def separable(filters: int, stride: int) -> list[Any]:
        return [
            layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.8),
            layers.ReLU(6.0),
            layers.Conv2D(filters, 1, use_bias=False),
            layers.BatchNormalization(momentum=0.8),
            layers.ReLU(6.0),
        ]

    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False),
            layers.BatchNormalization(momentum=0.8),
            layers.ReLU(6.0),
            *separable(32, 1),
            *separable(64, 2),
            *separable(64, 1),
            layers.GlobalAveragePooling2D(),
            layers.Dense(128, activation="relu"),
            layers.Dense(classes),
            layers.Softmax(),
        ]
    )


Renderer = Callable[[np.random.Generator, int, str], np.ndarray[Any, Any]]


def plain_cnn(size: int, classes: int) -> Any:
    """Four plain convolutions with max-pooling, no BatchNorm: for a few epochs on a few
    hundred images it learns shapes more reliably than ``_tiny_cnn`` (whose BatchNorm
    statistics still lag after 8 epochs). Conv, MaxPool, GAP, Dense, Softmax: int8- and
    Edge TPU-friendly."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(64, activation="relu"),
            layers.Dense(classes),
            layers.Softmax(),
        ]
    )


def make_trained_model_dir(
    tmp_dir: Path,
    size: int = 32,
    per_class: int = 60,
    epochs: int = 8,
    seed: int = 0,
    render: Renderer = render_image,
    name: str = "tiny-shapes",
    architecture: Callable[[int, int], Any] = _tiny_cnn,
) -> Path:
    """Generate shapes, train a tiny CNN and write a complete trained-model folder.

    Returns ``tmp_dir / "model"`` holding model.keras, model_info.json, heldout.npz and
    calibration.npz. Accuracy on the held-out quarter is well above chance (0.25):
    about 0.55-0.7 with the defaults (32 px shapes on texture are hard for 8 epochs).
    ``render`` draws one BGR image of a label (any size; the device's resize applies),
    e.g. crops of shapes for a classifier that runs behind a detector.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    spec = ImagePreprocessing(width=size, height=size, color="rgb")
    rng = np.random.default_rng(seed)
    frames: list[np.ndarray[Any, Any]] = []
    labels: list[int] = []
    for _ in range(per_class):
        for class_index, label in enumerate(LABELS):
            frames.append(resize_frame(render(rng, size, label), spec))
            labels.append(class_index)
    x = np.stack(frames).astype(np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    split = len(x) - max(len(LABELS), round(len(x) * HELDOUT_SHARE))

    keras.utils.set_random_seed(seed)
    model = architecture(size, len(LABELS))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    inputs = np.stack([normalise(frame, spec) for frame in x])
    model.fit(inputs[:split], y[:split], epochs=epochs, batch_size=32, verbose=0)
    heldout_accuracy = float(model.evaluate(inputs[split:], y[split:], verbose=0)[1])
    log.info("tiny model heldout accuracy %.3f", heldout_accuracy)

    out = tmp_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    write_samples(out / HELDOUT_FILE, SampleSet(x=x[split:], y=y[split:]))
    write_samples(out / CALIBRATION_FILE, SampleSet(x=x[:split][:100], y=None))
    write_info(
        out,
        TrainedModelInfo(
            name=name,
            version="0.1.0",
            task="image-classification",
            labels=LABELS,
            preprocessing=spec,
            background_labels=("background",),
            outputs_probabilities=True,
            default_threshold=0.5,
            heldout_accuracy=heldout_accuracy,
            provenance={"dataset": "generated shapes", "epochs": str(epochs), "seed": str(seed)},
        ),
    )
    return out
