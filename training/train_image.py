"""`edgewatch train image-classification`: a folder of labelled images → a model folder.

The output is the trained-model folder that ``edgewatch convert`` reads
(``converters.model_dir``). Every image goes through the device's own resize and
normalisation, augmentation happens in the input pipeline only, and the saved model is
always float32 whatever precision training used, so the converter sees a plain graph.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    INFO_FILE,
    MODEL_FILE,
    REPORT_DIR,
    SampleSet,
    TrainedModelInfo,
    write_info,
    write_samples,
)
from device.bundle.manifest import ImagePreprocessing
from device.errors import EdgewatchError
from device.preprocessing.image import normalise
from training.augment import Augmentation
from training.datasets.image_folder import ImageDataset, load_image_dataset
from training.report import ReportPaths, compute_metrics, write_report
from training.tf_setup import DeviceInfo, configure_devices, import_keras

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Color = Literal["rgb", "grey"]
#: Enough int8 calibration samples for stable activation ranges, small enough to ship.
CALIBRATION_SAMPLES = 300
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ImageTrainOptions:
    """Everything that shapes a training run; recorded in the model's provenance."""

    epochs: int = 30
    batch_size: int = 32
    seed: int = 0
    input_size: int = 96
    alpha: float = 0.5
    color: Color = "rgb"
    pretrained: Literal["imagenet"] | None = None
    patience: int = 5
    #: Epochs before early stopping watches (and best weights are kept): in the first
    #: epochs BatchNorm's moving statistics still lag the weights, so an early, nearly
    #: uniform model can have the lowest validation loss without being any good.
    warmup_epochs: int = 3
    learning_rate: float = 1e-3
    reduce_lr_on_plateau: bool = True
    dropout: float = 0.2
    #: Separable blocks of the from-scratch MobileNet (see training.models.mobilenet).
    blocks: int = 10
    #: How blocks halve the resolution (see training.models.mobilenet.Downsample).
    downsample: Literal["maxpool", "stride"] = "maxpool"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augmentation: Augmentation | None = field(default_factory=Augmentation)
    class_weights: bool = True
    mixed_precision: bool = True
    #: Model name in the bundle; defaults to the data folder's name.
    name: str | None = None
    version: str = "1"
    #: Show a progress bar (only when stderr is a terminal).
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}"),
            (self.learning_rate > 0, f"learning rate must be positive, got {self.learning_rate}"),
            (self.color in ("rgb", "grey"), f"color must be rgb or grey, got {self.color!r}"),
        )
        for ok, message in checks:
            if not ok:
                raise EdgewatchError(message)

    def preprocessing(self) -> ImagePreprocessing:
        """What the device will do to a frame: resize, colour, and map 0..255 to -1..1."""
        return ImagePreprocessing(
            width=self.input_size,
            height=self.input_size,
            color=self.color,
            scale=1.0 / 127.5,
            offset=-1.0,
        )


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    model_path: Path
    info_path: Path
    epochs_run: int
    test_accuracy: float
    labels: tuple[str, ...]
    device: DeviceInfo
    report: ReportPaths


def model_name(options: ImageTrainOptions, data_dir: Path) -> str:
    if options.name:
        return options.name
    cleaned = _NAME_CHARS.sub("-", data_dir.resolve().name).strip("-._")
    return cleaned or "image-classifier"


def class_weight_table(y: np.ndarray[Any, np.dtype[np.int64]], classes: int) -> FloatArray:
    """Inverse-frequency weights, mean 1 over samples, so rare classes count as much."""
    counts = np.bincount(y, minlength=classes).astype(np.float32)
    weights = np.zeros(classes, dtype=np.float32)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def training_batches(
    samples: SampleSet,
    spec: ImagePreprocessing,
    *,
    batch_size: int,
    seed: int,
    augmentation: Augmentation | None,
    weights: FloatArray | None,
) -> Iterator[tuple[FloatArray, np.ndarray[Any, Any], FloatArray]]:
    """An endless stream of (normalised x, y, sample weight) batches, epoch after epoch.

    One sequential generator makes the batch order and augmentation draws a function of
    the seed alone, however Keras prefetches. Every batch is full (the last one of an
    epoch wraps around), because Keras fixes the batch dimension from the first batches.
    """
    assert samples.y is not None
    count = len(samples)
    size = min(batch_size, count)
    steps = math.ceil(count / size)
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        order = np.concatenate([order, order[: steps * size - count]])
        rng = np.random.default_rng([seed, epoch, 1])
        for step in range(steps):
            chosen = np.sort(order[step * size : (step + 1) * size])
            x = samples.x[chosen]
            if augmentation is not None:
                x = augmentation.apply(x, rng)
            y = samples.y[chosen]
            w = weights[y] if weights is not None else np.ones(len(y), dtype=np.float32)
            yield normalise(x, spec), y, w.astype(np.float32)
        epoch += 1


def _progress_callback(keras: Any, epochs: int, steps: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    class Progress(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        """One bar per run over all batches, with the latest epoch's metrics."""

        def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
            # disable=None: a bar only on a terminal; logs get one line per epoch instead.
            self.bar = tqdm(
                total=epochs * steps, unit="batch", desc="training",
                disable=None if enabled else True, leave=True,
            )

        def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
            self.bar.update(1)
            if logs:
                self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.3f}")

        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            text = ", ".join(f"{k} {v:.4f}" for k, v in sorted((logs or {}).items())
                             if isinstance(v, float))
            self.bar.set_description(f"epoch {epoch + 1}/{epochs}")
            log.info("epoch %d/%d: %s", epoch + 1, epochs, text)

        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            self.bar.close()

    return Progress()


def _build(keras: Any, options: ImageTrainOptions, classes: int, name: str) -> Any:
    from training.models.mobilenet import MobileNetSpec, build_mobilenet

    spec = MobileNetSpec(
        num_classes=classes,
        input_size=options.input_size,
        channels=1 if options.color == "grey" else 3,
        alpha=options.alpha,
        dropout=options.dropout,
        pretrained=options.pretrained,
        blocks=options.blocks,
        downsample=options.downsample,
    )
    return build_mobilenet(spec, name=_NAME_CHARS.sub("_", name))


def _float32_copy(
    keras: Any, trained: Any, options: ImageTrainOptions, classes: int, name: str
) -> Any:
    """The same weights in a float32 graph: mixed precision must not reach the converter.

    Under mixed_float16 the variables are float32 already, so they carry over as they are.
    """
    keras.mixed_precision.set_global_policy("float32")
    model = _build(keras, options, classes, name)
    model.set_weights(trained.get_weights())
    return model


def predict_labels(model: Any, x: FloatArray, batch_size: int) -> np.ndarray[Any, Any]:
    if len(x) == 0:
        return np.empty(0, dtype=np.int64)
    scores = model.predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(np.argmax(scores, axis=-1), dtype=np.int64)


def train_image_classifier(
    data_dir: Path, out_dir: Path, options: ImageTrainOptions | None = None
) -> TrainResult:
    """Train, test on the held-out split and write the trained-model folder."""
    options = options or ImageTrainOptions()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    spec = options.preprocessing()
    dataset = load_image_dataset(
        data_dir, spec, options.val_fraction, options.test_fraction, options.seed
    )
    keras = import_keras()
    device = configure_devices(options.seed, mixed_precision=options.mixed_precision)
    name = model_name(options, data_dir)
    try:
        model, history = _fit(keras, dataset, options, name)
        if device.mixed_precision:
            model = _float32_copy(keras, model, options, len(dataset.labels), name)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return _write_outputs(
        model, history=history, dataset=dataset, options=options, device=device, name=name,
        out_dir=out_dir,
    )


def _fit(
    keras: Any, dataset: ImageDataset, options: ImageTrainOptions, name: str
) -> tuple[Any, dict[str, list[float]]]:
    classes = len(dataset.labels)
    train, spec = dataset.train, dataset.preprocessing
    assert train.y is not None and dataset.val.y is not None
    model = _build(keras, options, classes, name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    weights = class_weight_table(train.y, classes) if options.class_weights else None
    batch = min(options.batch_size, len(train))
    steps = math.ceil(len(train) / batch)
    has_val = len(dataset.val) > 0
    monitor = "val_loss" if has_val else "loss"
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=options.patience, restore_best_weights=True,
            start_from_epoch=min(options.warmup_epochs, options.epochs - 1),
        ),
        _progress_callback(keras, options.epochs, steps, options.progress),
    ]
    if options.reduce_lr_on_plateau:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(1, options.patience // 2),
            min_lr=options.learning_rate / 100,
        ))
    log.info(
        "training %s on %d images (%d validation, %d test), %d classes, %d steps/epoch",
        name, len(train), len(dataset.val), len(dataset.test), classes, steps,
    )
    fitted = model.fit(
        training_batches(
            train, spec, batch_size=batch, seed=options.seed,
            augmentation=options.augmentation, weights=weights,
        ),
        steps_per_epoch=steps,
        epochs=options.epochs,
        validation_data=(normalise(dataset.val.x, spec), dataset.val.y) if has_val else None,
        callbacks=callbacks,
        # The generator shuffles itself (seeded); Keras cannot shuffle a stream anyway.
        shuffle=False,
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return model, history


def _write_outputs(
    model: Any,
    *,
    history: dict[str, list[float]],
    dataset: ImageDataset,
    options: ImageTrainOptions,
    device: DeviceInfo,
    name: str,
    out_dir: Path,
) -> TrainResult:
    spec = dataset.preprocessing
    test = dataset.test
    assert test.y is not None
    predicted = predict_labels(model, normalise(test.x, spec), options.batch_size)
    metrics = compute_metrics(test.y, predicted, dataset.labels)
    epochs_run = len(history.get("loss", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    model.save(model_path)
    provenance = {
        "data_dir": dataset.root.resolve().name,
        "train_samples": str(len(dataset.train)),
        "val_samples": str(len(dataset.val)),
        "test_samples": str(len(test)),
        "skipped_files": str(len(dataset.skipped)),
        "epochs_requested": str(options.epochs),
        "epochs_run": str(epochs_run),
        "seed": str(options.seed),
        "architecture": "mobilenet-v2-imagenet" if options.pretrained else "mobilenet-v1-lite",
        "alpha": str(options.alpha),
        "input_size": str(options.input_size),
        "blocks": str(options.blocks),
        "downsample": options.downsample,
        "tensorflow": device.tensorflow_version,
        "keras": device.keras_version,
        "trained_on": device.describe(),
    }
    info = TrainedModelInfo(
        name=name,
        version=options.version,
        task="image-classification",
        labels=dataset.labels,
        preprocessing=spec,
        background_labels=dataset.background_labels,
        outputs_probabilities=True,
        heldout_accuracy=metrics.accuracy if metrics.samples else None,
        provenance=provenance,
    )
    write_info(out_dir, info)
    write_samples(out_dir / HELDOUT_FILE, test)
    write_samples(out_dir / CALIBRATION_FILE, _calibration(dataset.train, options.seed))
    report = write_report(
        out_dir / REPORT_DIR,
        metrics,
        title=f"{name} {options.version}: Keras model on the test split",
        history=history,
        extra={"data": dataset.root.resolve().name, "epochs run": epochs_run,
               "seed": options.seed, "trained on": device.describe()},
    )
    log.info("test accuracy %.3f after %d epochs; model folder %s",
             metrics.accuracy, epochs_run, out_dir)
    return TrainResult(
        out_dir=out_dir,
        model_path=model_path,
        info_path=out_dir / INFO_FILE,
        epochs_run=epochs_run,
        test_accuracy=metrics.accuracy,
        labels=dataset.labels,
        device=device,
        report=report,
    )


def _calibration(train: SampleSet, seed: int) -> SampleSet:
    """Up to CALIBRATION_SAMPLES training images, a seeded random subset in file order."""
    count = min(CALIBRATION_SAMPLES, len(train))
    chosen = np.sort(np.random.default_rng([seed, 2]).choice(len(train), count, replace=False))
    return SampleSet(x=train.x[chosen], y=None)
