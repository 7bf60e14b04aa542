"""`edgewatch train object-detection`: DIR/images + DIR/boxes.csv → a model folder.

The output is the trained-model folder ``edgewatch convert`` reads
(``converters.model_dir``), holding a FOMO-style centroid detector
(``training.models.fomo``). What the run does, and why:

* splits by file name (a seeded hash rank, so the same seed holds out the same files
  and adding images moves few others): test (``heldout.npz``, ``heldout_files.txt``),
  validation (early stopping, the threshold), training;
* every evaluated image goes through the device's own ``resize_frame`` (a stretch:
  normalised boxes stay valid) and ``normalise``; training images are augmented from
  a copy at twice the input size (``training.detection_augment``: crop, scale, flip,
  colour, boxes moved with the pixels), fresh every epoch;
* the loss is per-cell cross-entropy with object cells weighted up
  (``training.detection_targets``);
* each epoch the validation images are decoded with the device's own decoder and
  matched to their boxes (``converters.detection_metrics``): the progress bar and the
  curves show validation F1; the weights of the epoch with the lowest validation loss
  are kept, and training stops when it has not fallen for ``patience`` epochs;
* the detection threshold is the one with the best validation F1 (a sweep; within one
  object's worth of the best, the one nearest 0.5), stored as the bundle's default;
* the test split is reported with the same metrics and pictures as
  ``edgewatch evaluate`` (``training.detection_report``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from tqdm.auto import tqdm

from converters.detection_metrics import (
    STRICT_CORE,
    DetectionMetrics,
    SweepPoint,
    TruthBox,
    best_threshold,
    detection_metrics,
    match_image,
    threshold_sweep,
)
from converters.detection_samples import DetectionSamples, write_detection_samples
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
from device.bundle.manifest import HeatmapDecoding, ImagePreprocessing
from device.detection.decode import decode_heatmap, softmax_cells
from device.detection.objects import DetectedObject
from device.errors import DatasetError, EdgewatchError
from device.preprocessing.image import normalise, resize_frame
from training.datasets.boxes import BACKGROUND_LABEL, BoxFolder, iter_box_images, scan_box_folder
from training.detection_augment import BoxAugmentation, ClassBox, mosaic
from training.detection_report import AnnotatedImage, DetectionReportPaths, write_detection_report
from training.detection_targets import heatmap_targets
from training.models.fomo import STRIDE, FomoSpec
from training.tf_setup import DeviceInfo, configure_devices, import_keras

log = logging.getLogger(__name__)

UInt8Array = np.ndarray[Any, np.dtype[np.uint8]]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Color = Literal["rgb", "grey"]
CALIBRATION_SAMPLES = 300
HELDOUT_FILES = "heldout_files.txt"
#: Training images are kept at this multiple of the input size, so a zoomed-in crop
#: still has real pixels to resize down from.
CACHE_SCALE = 2
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DetectionTrainOptions:
    """Everything that shapes a training run; recorded in the model's provenance."""

    epochs: int = 80
    batch_size: int = 16
    seed: int = 0
    #: Square input side in pixels (a multiple of 8); the output grid is 1/8 of it.
    input_size: int = 96
    color: Color = "rgb"
    #: Width multiplier of the network (see training.models.fomo).
    alpha: float = 1.0
    context_blocks: int = 3
    learning_rate: float = 3e-3
    #: Epochs without a lower validation loss before training stops.
    patience: int = 20
    #: Epochs before the best weights are tracked (while BatchNorm's statistics settle).
    warmup_epochs: int = 5
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    #: Loss weight of an object cell against a background cell's 1 (raccoon set: 4
    #: beat 10 on two splits, with fewer fragments of one object firing on their own).
    object_weight: float = 4.0
    #: Share of a box's width and height, around its centre, marked as object cells.
    core: float = 0.3
    augmentation: BoxAugmentation | None = field(default_factory=BoxAugmentation)
    #: Augmented pictures an epoch shows at least: a small dataset is passed over
    #: several times per epoch, so validation (and its cost) comes every few hundred
    #: pictures rather than every few steps.
    min_epoch_images: int = 400
    #: The classes to expect, in this order; a row with another class is an error.
    labels: tuple[str, ...] | None = None
    #: Detection threshold stored in the bundle; None: the best on the validation split.
    threshold: float | None = None
    mixed_precision: bool = True
    name: str | None = None
    version: str = "1"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.min_epoch_images >= 1,
             f"min_epoch_images must be at least 1, got {self.min_epoch_images}"),
            (self.input_size >= 2 * STRIDE and self.input_size % STRIDE == 0,
             f"--input-size must be a multiple of {STRIDE} of at least {2 * STRIDE}, "
             f"got {self.input_size}"),
            (0.0 < self.core <= 1.0, f"core must be in (0, 1], got {self.core}"),
            (self.object_weight > 0, f"object weight must be positive, got {self.object_weight}"),
            (0.0 <= self.val_fraction < 1.0 and 0.0 <= self.test_fraction < 1.0
             and self.val_fraction + self.test_fraction < 1.0,
             "validation and test fractions must be in [0, 1) and sum below 1"),
            (self.threshold is None or 0.0 < self.threshold <= 1.0,
             f"threshold must be in (0, 1], got {self.threshold}"),
            (self.color in ("rgb", "grey"), f"color must be rgb or grey, got {self.color!r}"),
        )  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise EdgewatchError(message)

    def repeats(self, images: int) -> int:
        """Passes over ``images`` training pictures in one epoch."""
        return max(1, math.ceil(self.min_epoch_images / max(1, images)))

    def preprocessing(self) -> ImagePreprocessing:
        """Stretch to the input size (normalised boxes survive a stretch), -1..1."""
        return ImagePreprocessing(
            width=self.input_size, height=self.input_size, color=self.color,
            resize="stretch", scale=1.0 / 127.5, offset=-1.0,
        )  # fmt: skip

    def decoding(self) -> HeatmapDecoding:
        return HeatmapDecoding(
            stride=STRIDE,
            background_label=BACKGROUND_LABEL,
            apply_softmax=True,
            box_scale=round(min(10.0, max(1.0, 1.0 / self.core)), 3),
        )


@dataclass(frozen=True)
class SplitNames:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_names(
    names: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> SplitNames:
    """Test, validation and training names: ranked by a seeded hash of the name, so the
    split is a function of the names and the seed alone."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())
    count = len(ranked)
    n_test = round(count * test_fraction)
    n_val = round(count * val_fraction)
    if test_fraction > 0 and count >= 3:
        n_test = max(1, n_test)
    if val_fraction > 0 and count >= 3:
        n_val = max(1, n_val)
    if count - n_test - n_val < 1:
        raise DatasetError(
            f"{count} image(s) are too few to split into training, validation and test; "
            "add images or lower the fractions"
        )
    test = tuple(sorted(ranked[:n_test]))
    val = tuple(sorted(ranked[n_test : n_test + n_val]))
    train = tuple(sorted(ranked[n_test + n_val :]))
    return SplitNames(train=train, val=val, test=test)


@dataclass(frozen=True, eq=False)
class DetectionImages:
    """Decoded images of one split: device-resized pixels and their boxes."""

    names: tuple[str, ...]
    #: uint8 NHWC at the model's input size, from the device's resize_frame.
    x: UInt8Array
    #: The same pictures at CACHE_SCALE times the size (training split only).
    cache: UInt8Array | None
    truths: tuple[tuple[ClassBox, ...], ...]

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class DetectionTrainResult:
    out_dir: Path
    model_path: Path
    info_path: Path
    epochs_run: int
    best_epoch: int
    labels: tuple[str, ...]
    threshold: float
    test_metrics: DetectionMetrics
    val_f1: float
    split: SplitNames
    device: DeviceInfo
    report: DetectionReportPaths


def model_name(options: DetectionTrainOptions, data_dir: Path) -> str:
    if options.name:
        return options.name
    cleaned = _NAME_CHARS.sub("-", data_dir.resolve().name).strip("-._")
    return cleaned or "object-detector"


def _load_split(
    folder: BoxFolder,
    names: Sequence[str],
    labels: tuple[str, ...],
    spec: ImagePreprocessing,
    *,
    cache: bool,
    what: str,
    progress: bool,
) -> DetectionImages:
    wanted = folder.subset(names)
    index = {label: i for i, label in enumerate(labels)}
    cache_spec = spec.model_copy(
        update={"width": spec.width * CACHE_SCALE, "height": spec.height * CACHE_SCALE}
    )
    xs: list[UInt8Array] = []
    caches: list[UInt8Array] = []
    truths: list[tuple[ClassBox, ...]] = []
    images = iter_box_images(wanted)
    for image, frame in tqdm(
        images,
        total=len(wanted.images),
        desc=f"reading {what}",
        unit="image",
        disable=None if progress else True,
        leave=False,
    ):
        xs.append(resize_frame(frame, spec))
        if cache:
            caches.append(resize_frame(frame, cache_spec))
        truths.append(tuple((index[b.label], b.box) for b in image.boxes))
    channels = 1 if spec.color == "grey" else 3
    empty = np.zeros((0, spec.height, spec.width, channels), dtype=np.uint8)
    return DetectionImages(
        names=tuple(image.name for image in wanted.images),
        x=np.stack(xs).astype(np.uint8) if xs else empty,
        cache=np.stack(caches).astype(np.uint8) if caches else None,
        truths=tuple(truths),
    )


def training_batches(
    data: DetectionImages,
    spec: ImagePreprocessing,
    options: DetectionTrainOptions,
    grid: tuple[int, int],
) -> Iterator[tuple[FloatArray, np.ndarray[Any, Any], FloatArray]]:
    """An endless stream of (normalised x, cell classes, cell weights) batches.

    One sequential generator makes batch order and augmentation a function of the
    seed alone. Every batch is full (the last of an epoch wraps around).
    """
    count = len(data)
    size = min(options.batch_size, count)
    repeats = options.repeats(count)
    steps = math.ceil(count * repeats / size)
    out_size = (spec.width, spec.height)
    epoch = 0
    while True:
        order = np.concatenate([
            np.random.default_rng([options.seed, epoch, r]).permutation(count)
            for r in range(repeats)
        ])  # fmt: skip
        order = np.concatenate([order, order[: steps * size - len(order)]])
        rng = np.random.default_rng([options.seed, epoch, 1_000_003])
        for step in range(steps):
            chosen = order[step * size : (step + 1) * size]
            images = np.empty((size, spec.height, spec.width, data.x.shape[3]), np.uint8)
            classes = np.empty((size, *grid), dtype=np.int32)
            weights = np.empty((size, *grid), dtype=np.float32)
            for slot, i in enumerate(chosen):
                boxes: Sequence[ClassBox] = data.truths[i]
                ignored: Sequence[Any] = ()
                augmentation = options.augmentation
                if augmentation is not None and data.cache is not None:
                    cache = data.cache
                    if rng.random() < augmentation.mosaic:
                        others = rng.integers(0, count, size=3)
                        sample = mosaic([
                            augmentation.apply(cache[j], data.truths[j], out_size, rng)
                            for j in (i, *others)
                        ])  # fmt: skip
                    else:
                        sample = augmentation.apply(cache[i], boxes, out_size, rng)
                    images[slot], boxes, ignored = sample.image, sample.boxes, sample.ignored
                else:
                    images[slot] = data.x[i]
                classes[slot], weights[slot] = heatmap_targets(
                    boxes, ignored, grid, core=options.core, object_weight=options.object_weight
                )
            yield normalise(images, spec), classes, weights
        epoch += 1


def validation_arrays(
    data: DetectionImages, spec: ImagePreprocessing, options: DetectionTrainOptions,
    grid: tuple[int, int],
) -> tuple[FloatArray, np.ndarray[Any, Any], FloatArray]:  # fmt: skip
    targets = [
        heatmap_targets(t, (), grid, core=options.core, object_weight=options.object_weight)
        for t in data.truths
    ]
    return (
        normalise(data.x, spec),
        np.stack([t[0] for t in targets]),
        np.stack([t[1] for t in targets]).astype(np.float32),
    )


def truth_boxes(data: DetectionImages, labels: Sequence[str]) -> list[tuple[TruthBox, ...]]:
    return [tuple(TruthBox(labels[c], box) for c, box in t) for t in data.truths]


def predict_probabilities(model: Any, x: FloatArray, batch_size: int = 64) -> FloatArray:
    if len(x) == 0:
        return np.zeros((0, 1, 1, 1), dtype=np.float32)
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
    return softmax_cells(logits)


def decode_all(
    probabilities: FloatArray, labels: Sequence[str], threshold: float, box_scale: float
) -> list[list[DetectedObject]]:
    limits = np.full(len(labels), threshold, dtype=np.float32)
    return [
        decode_heatmap(grid, labels, limits, background_index=0, box_scale=box_scale)
        for grid in probabilities
    ]


def _fit_callbacks(
    keras: Any,
    *,
    val_x: FloatArray,
    val_truths: Sequence[Sequence[TruthBox]],
    labels: tuple[str, ...],
    options: DetectionTrainOptions,
    steps: int,
) -> tuple[Any, Any]:
    from training.train_image import _progress_callback

    objects = labels[1:]
    box_scale = options.decoding().box_scale

    class ValidationF1(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        """Validation F1 (threshold 0.5) in the logs; the weights of the epoch with the
        lowest validation loss kept; a stop after ``patience`` epochs without a lower one.

        Epochs are chosen by loss, not F1: the weighted cell loss averages thousands of
        cells and moves smoothly, while F1 over a few dozen validation objects jumps by
        a whole object's worth between epochs and would stop training on noise.
        """

        def on_train_begin(self, logs: Mapping[str, float] | None = None) -> None:
            self.best_loss = math.inf
            self.best_weights: list[Any] | None = None
            self.best_epoch = 0
            self.wait = 0

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if logs is None or len(val_x) == 0:
                return
            probabilities = predict_probabilities(self.model, val_x)
            decoded = decode_all(probabilities, labels, 0.5, box_scale)
            pairs = list(zip(decoded, val_truths, strict=True))
            logs["val_f1"] = detection_metrics(pairs, objects).f1
            logs["val_f1_mid"] = detection_metrics(pairs, objects, core=STRICT_CORE).f1
            if epoch + 1 < min(options.warmup_epochs, options.epochs):
                return
            loss = float(logs.get("val_loss", math.inf))
            if loss < self.best_loss:
                self.best_loss, self.best_epoch, self.wait = loss, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= options.patience:
                    self.model.stop_training = True

        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return ValidationF1(), _progress_callback(keras, options.epochs, steps, options.progress)


def train_detector(
    data_dir: Path, out_dir: Path, options: DetectionTrainOptions | None = None
) -> DetectionTrainResult:
    """Train, choose the threshold, test on the held-out split and write the folder."""
    options = options or DetectionTrainOptions()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    spec = options.preprocessing()
    folder = scan_box_folder(data_dir, options.labels)
    labels = (BACKGROUND_LABEL, *folder.classes)
    split = split_names(
        [image.name for image in folder.images], options.val_fraction, options.test_fraction,
        options.seed,
    )  # fmt: skip

    def load(names: Sequence[str], what: str, cache: bool = False) -> DetectionImages:
        return _load_split(
            folder, names, labels, spec, cache=cache, what=what, progress=options.progress
        )

    train = load(split.train, "training images", cache=options.augmentation is not None)
    val = load(split.val, "validation images")
    test = load(split.test, "test images")
    if not any(train.truths):
        raise DatasetError("the training split has no boxes; add labelled images")
    keras = import_keras()
    device = configure_devices(options.seed, mixed_precision=options.mixed_precision)
    name = model_name(options, data_dir)
    fomo = FomoSpec(
        num_classes=len(labels), input_width=spec.width, input_height=spec.height,
        channels=1 if spec.color == "grey" else 3, alpha=options.alpha,
        context_blocks=options.context_blocks,
    )  # fmt: skip
    try:
        model, history, best_epoch = _fit(
            keras, fomo, train=train, val=val, labels=labels, options=options, name=name
        )
        if device.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")
        # A fresh float32, uncompiled graph with the trained weights: no optimizer or
        # loss in model.keras, no mixed precision for the converter.
        exported = _build(fomo, name)
        exported.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return _write_outputs(
        exported, history=history, best_epoch=best_epoch, data_dir=data_dir, split=split,
        train=train, val=val, test=test, labels=labels, options=options, device=device,
        name=name, out_dir=out_dir, fomo=fomo,
    )  # fmt: skip


def _build(fomo: FomoSpec, name: str) -> Any:
    from training.models.fomo import build_fomo

    return build_fomo(fomo, name=_NAME_CHARS.sub("_", name))


def _fit(
    keras: Any,
    fomo: FomoSpec,
    *,
    train: DetectionImages,
    val: DetectionImages,
    labels: tuple[str, ...],
    options: DetectionTrainOptions,
    name: str,
) -> tuple[Any, dict[str, list[float]], int]:
    spec = options.preprocessing()
    grid = fomo.grid
    model = _build(fomo, name)
    size = min(options.batch_size, len(train))
    steps = math.ceil(len(train) * options.repeats(len(train)) / size)
    schedule = keras.optimizers.schedules.CosineDecay(
        options.learning_rate, decay_steps=max(1, options.epochs * steps), alpha=0.02
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    val_arrays = validation_arrays(val, spec, options, grid) if len(val) else None
    f1_callback, progress = _fit_callbacks(
        keras, val_x=val_arrays[0] if val_arrays else np.zeros((0,), dtype=np.float32),
        val_truths=truth_boxes(val, labels), labels=labels, options=options, steps=steps,
    )  # fmt: skip
    log.info(
        "training %s on %d images (%d for validation), classes %s, %d steps/epoch, grid %dx%d",
        name, len(train), len(val), ", ".join(labels[1:]), steps, grid[1], grid[0],
    )  # fmt: skip
    fitted = model.fit(
        training_batches(train, spec, options, grid),
        steps_per_epoch=steps,
        epochs=options.epochs,
        validation_data=val_arrays,
        callbacks=[f1_callback, progress],
        shuffle=False,
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    best_epoch = f1_callback.best_epoch or len(history.get("loss", []))
    return model, history, best_epoch


@dataclass(frozen=True)
class Calibration:
    """What the validation split decides after training."""

    threshold: float
    sweep: tuple[SweepPoint, ...]
    #: Validation F1 at ``threshold``.
    val_f1: float
    box_scale: float


def fit_box_scale(
    decoded: Sequence[Sequence[DetectedObject]], truths: Sequence[Sequence[TruthBox]]
) -> float | None:
    """The growth that makes decoded cell extents (decoded with box_scale 1) the size of
    the boxes they matched: the median of sqrt(box area / extent area). None without
    matches."""
    ratios = []
    for objects, boxes in zip(decoded, truths, strict=True):
        for p, t in match_image(objects, boxes).pairs:
            extent, box = objects[p].box, boxes[t].box
            if extent.area > 0:
                ratios.append(math.sqrt(box.area / extent.area))
    if not ratios:
        return None
    return round(min(10.0, max(1.0, float(np.median(ratios)))), 3)


def calibrate(
    model: Any,
    val: DetectionImages,
    labels: tuple[str, ...],
    options: DetectionTrainOptions,
) -> Calibration:
    """Threshold (the best validation F1 of a sweep, unless given) and box growth."""
    spec = options.preprocessing()
    default_scale = options.decoding().box_scale
    if len(val) == 0:
        return Calibration(options.threshold or 0.5, (), 0.0, default_scale)
    probabilities = predict_probabilities(model, normalise(val.x, spec))
    truths = truth_boxes(val, labels)
    sweep = threshold_sweep(list(probabilities), truths, labels, 0)
    if options.threshold is not None:
        threshold = options.threshold
        decoded = decode_all(probabilities, labels, threshold, 1.0)
        f1 = detection_metrics(zip(decoded, truths, strict=True), labels[1:]).f1
    else:
        objects = sum(len(boxes) for boxes in truths)
        best = best_threshold(sweep, tolerance=1.0 / max(1, objects))
        threshold, f1 = best.threshold, best.f1
        decoded = decode_all(probabilities, labels, threshold, 1.0)
    box_scale = fit_box_scale(decoded, truths) or default_scale
    log.info(
        "threshold %.2f (validation F1 %.3f); boxes grown %.2fx from the cells that fired",
        threshold, f1, box_scale,
    )  # fmt: skip
    return Calibration(threshold, sweep, f1, box_scale)


def _as_bgr(pixels: UInt8Array) -> UInt8Array:
    if pixels.shape[2] == 1:
        return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), dtype=np.uint8)


def _write_outputs(
    model: Any,
    *,
    history: dict[str, list[float]],
    best_epoch: int,
    data_dir: Path,
    split: SplitNames,
    train: DetectionImages,
    val: DetectionImages,
    test: DetectionImages,
    labels: tuple[str, ...],
    options: DetectionTrainOptions,
    device: DeviceInfo,
    name: str,
    out_dir: Path,
    fomo: FomoSpec,
) -> DetectionTrainResult:
    spec = options.preprocessing()
    calibration = calibrate(model, val, labels, options)
    threshold, sweep, val_f1 = calibration.threshold, calibration.sweep, calibration.val_f1
    decoding = options.decoding().model_copy(update={"box_scale": calibration.box_scale})
    probabilities = predict_probabilities(model, normalise(test.x, spec))
    decoded = decode_all(probabilities, labels, threshold, decoding.box_scale)
    truths = truth_boxes(test, labels)
    metrics = detection_metrics(zip(decoded, truths, strict=True), labels[1:])
    epochs_run = len(history.get("loss", []))
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    model.save(model_path)
    provenance = {
        "data_dir": data_dir.resolve().name,
        "train_images": str(len(train)),
        "val_images": str(len(val)),
        "test_images": str(len(test)),
        "epochs_requested": str(options.epochs),
        "epochs_run": str(epochs_run),
        "best_epoch": str(best_epoch),
        "seed": str(options.seed),
        "architecture": "fomo-scratch",
        "alpha": str(options.alpha),
        "context_blocks": str(options.context_blocks),
        "input_size": str(options.input_size),
        "object_weight": str(options.object_weight),
        "core": str(options.core),
        "augmentation": "on" if options.augmentation is not None else "off",
        "val_f1": f"{val_f1:.4f}",
        "heldout_f1": f"{metrics.f1:.4f}",
        "parameters": str(int(model.count_params())),
        "tensorflow": device.tensorflow_version,
        "keras": device.keras_version,
        "trained_on": device.describe(),
    }
    info = TrainedModelInfo(
        name=name,
        version=options.version,
        task="object-detection",
        labels=labels,
        preprocessing=spec,
        decoding=decoding,
        background_labels=(BACKGROUND_LABEL,),
        outputs_probabilities=False,
        default_threshold=threshold,
        heldout_accuracy=None,
        provenance=provenance,
    )
    write_info(out_dir, info)
    write_detection_samples(out_dir / HELDOUT_FILE, DetectionSamples(x=test.x, truths=test.truths))
    write_samples(out_dir / CALIBRATION_FILE, _calibration(train, options.seed))
    (out_dir / HELDOUT_FILES).write_text("".join(f"{n}\n" for n in split.test), encoding="utf-8")
    samples = [
        AnnotatedImage(n, _as_bgr(x), t, tuple(d))
        for n, x, t, d in zip(test.names, test.x, truths, decoded, strict=True)
    ]
    report = write_detection_report(
        out_dir / REPORT_DIR,
        metrics,
        title=f"{name} {options.version}: Keras model on the test split",
        samples=samples,
        sweep=sweep,
        threshold=threshold,
        history=history,
        extra={"data": data_dir.resolve().name, "epochs run": epochs_run,
               "best epoch": best_epoch, "seed": options.seed,
               "threshold (validation sweep)": threshold, "validation F1": round(val_f1, 4),
               "input": f"{spec.width}x{spec.height} {spec.color}",
               "grid": f"{fomo.grid[1]}x{fomo.grid[0]}", "trained on": device.describe()},
    )  # fmt: skip
    log.info("test F1 %.3f (precision %.3f, recall %.3f) after %d epochs; model folder %s",
             metrics.f1, metrics.precision, metrics.recall, epochs_run, out_dir)  # fmt: skip
    return DetectionTrainResult(
        out_dir=out_dir,
        model_path=model_path,
        info_path=out_dir / INFO_FILE,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        labels=labels,
        threshold=threshold,
        test_metrics=metrics,
        val_f1=val_f1,
        split=split,
        device=device,
        report=report,
    )


def _calibration(train: DetectionImages, seed: int) -> SampleSet:
    """Up to CALIBRATION_SAMPLES training images (device-resized), a seeded subset."""
    count = min(CALIBRATION_SAMPLES, len(train))
    chosen = np.sort(np.random.default_rng([seed, 2]).choice(len(train), count, replace=False))
    return SampleSet(x=train.x[chosen], y=None)
