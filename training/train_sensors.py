"""`edgewatch train sensor-anomaly DIR`: CSV series of normal operation → an anomaly model.

``DIR/*.csv`` hold ``timestamp,value[,value...]`` (a header names the columns). Every
file is read by the device's own parser and windowed by the device's own
``SeriesWindower`` (device/sensors/), with the scaling fitted here on the training steps
and then stored in the manifest, so training, calibration and the device see identical
windows.

Decisions (docs/sensors.md explains them for users):

* One model per bundle over the columns of the training files jointly (multivariate);
  a univariate model per series is the same with one column per file. All files must
  share the columns; each file is its own series (no window spans two files).
* The model is a small dense denoising autoencoder (``training.models.autoencoder``);
  the score of a window is its reconstruction MSE (device/sensors/scoring.py).
* The last ``val_fraction`` of each file (in time) is the validation split, which drives
  early stopping; windows overlapping it are left out of training.
* The threshold rule is a quantile of the scores of all the training windows times a
  margin; the float threshold is recorded, and ``edgewatch convert`` applies the rule
  again to the converted model's scores, since that is what the device computes.
* Training windows use a hop of 1 (every position); ``hop`` is what the device uses.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from converters.model_dir import (
    CALIBRATION_FILE,
    HELDOUT_FILE,
    INFO_FILE,
    MODEL_FILE,
    REPORT_DIR,
    AnomalyCalibration,
    TrainedModelInfo,
    write_info,
    write_windows,
)
from device.bundle.manifest import SensorColumn, SensorPreprocessing
from device.errors import DatasetError, EdgewatchError
from device.sensors.parse import CsvOptions
from device.sensors.scoring import (
    DEFAULT_MARGIN,
    DEFAULT_QUANTILE,
    calibrate_threshold,
    window_scores,
)
from device.sensors.series import SeriesData, read_csv_series
from device.sensors.windows import fit_columns, steps_of, window_arrays
from training.models.autoencoder import AutoencoderSpec, build_autoencoder
from training.sensor_report import SensorReportPaths, write_sensor_report
from training.tf_setup import DeviceInfo, configure_devices, import_keras

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
LABELS = ("anomaly",)
#: Training windows needed at the least (after the validation split).
MIN_TRAIN_WINDOWS = 16
#: Share of sample spacings over twice the median above which data counts as irregular.
IRREGULAR_SHARE = 0.05
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SensorTrainOptions:
    """Everything that shapes a training run; recorded in the model's provenance."""

    window: int = 32
    #: Steps between two windows on the device (training uses every position).
    hop: int = 1
    #: The grid the series are resampled to; None: the median spacing of the data, or no
    #: grid when the data is irregular (see ``choose_interval``).
    interval_s: float | None = None
    #: False: no resampling, every sample is one step (``interval_s`` is ignored).
    resample: bool = True
    max_gap_steps: int = 3
    max_filled_fraction: float = 0.25
    #: Value columns to model (None: all the files' value columns).
    columns: tuple[str, ...] | None = None
    epochs: int = 60
    batch_size: int = 64
    seed: int = 0
    hidden: int = 64
    latent: int = 8
    noise: float = 0.1
    learning_rate: float = 2e-3
    patience: int = 8
    val_fraction: float = 0.15
    quantile: float = DEFAULT_QUANTILE
    margin: float = DEFAULT_MARGIN
    #: Training windows kept in calibration.npz (a seeded subset, in order).
    calibration_limit: int = 5_000
    csv: CsvOptions = field(default_factory=CsvOptions)
    name: str | None = None
    version: str = "1"
    progress: bool = True
    #: Draw the report's PNGs (the JSON and Markdown are always written); benchmarks
    #: that train dozens of models turn them off.
    plots: bool = True

    def __post_init__(self) -> None:
        checks = (
            (self.window >= 2, f"window must be at least 2, got {self.window}"),
            (self.hop >= 1, f"hop must be at least 1, got {self.hop}"),
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (0.0 <= self.val_fraction < 0.5, "val_fraction must be in [0, 0.5)"),
            (0.0 < self.quantile <= 1.0, f"quantile must be in (0, 1], got {self.quantile}"),
            (self.margin > 0.0, f"margin must be positive, got {self.margin}"),
            (self.interval_s is None or self.interval_s > 0, "interval_s must be positive"),
            (self.latent >= 1 and self.hidden >= 1, "hidden and latent must be at least 1"),
        )
        for ok, message in checks:
            if not ok:
                raise EdgewatchError(message)


@dataclass(frozen=True)
class SensorTrainResult:
    out_dir: Path
    model_path: Path
    info_path: Path
    epochs_run: int
    preprocessing: SensorPreprocessing
    #: The threshold the Keras model's scores give (the bundle recalibrates).
    threshold: float
    train_windows: int
    val_windows: int
    #: The validation windows' 99th score percentile over the threshold (the validation
    #: split is normal data: a model that generalises keeps this below 1).
    val_score_p99: float
    device: DeviceInfo
    report: SensorReportPaths


def load_sensor_folder(data_dir: Path, csv: CsvOptions | None = None) -> list[SeriesData]:
    """``DIR/*.csv`` in name order, each one series; DatasetError for an empty folder."""
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a directory of CSV files")
    paths = sorted(p for p in data_dir.glob("*.csv") if p.is_file())
    if not paths:
        raise DatasetError(
            f"{data_dir} holds no *.csv files; sensor-anomaly training reads DIR/*.csv with "
            "lines timestamp,value[,value...] recorded during normal operation"
        )
    return [read_csv_series(path, csv) for path in paths]


def choose_interval(series: Sequence[SeriesData]) -> float | None:
    """The median spacing between consecutive samples over every file, or None (no
    resampling: every sample one step) when more than IRREGULAR_SHARE of the spacings
    exceed twice the median: on such data a grid would be mostly filled-in steps and
    restarted windows, while the samples' own order still shows the shapes."""
    diffs = [np.diff(s.timestamps) for s in series if len(s) > 1]
    gaps = np.concatenate(diffs) if diffs else np.zeros(0)
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        raise DatasetError("cannot tell the sample interval (no two samples at distinct times)")
    median = float(np.median(gaps))
    irregular = float(np.mean(gaps > 2.0 * median))
    if irregular > IRREGULAR_SHARE:
        log.info(
            "%.0f%% of the sample spacings exceed twice the median (%.4g s): no resampling, "
            "every sample is one step (pass --interval to resample anyway)",
            100 * irregular, median,
        )  # fmt: skip
        return None
    return median


def _select_columns(
    series: Sequence[SeriesData], wanted: tuple[str, ...] | None
) -> list[SeriesData]:
    names = wanted or series[0].columns
    selected = []
    for item in series:
        missing = [name for name in names if name not in item.columns]
        if missing:
            raise DatasetError(
                f"{item.name} has columns {list(item.columns)}, which lack {missing}; every "
                "training file must have the same value columns (or pass --columns)"
            )
        indices = [item.columns.index(name) for name in names]
        selected.append(
            SeriesData(item.name, item.timestamps, item.values[:, indices], tuple(names),
                       item.bad_rows, item.missing_values)
        )  # fmt: skip
    return selected


def sensor_preprocessing(
    series: Sequence[SeriesData], options: SensorTrainOptions
) -> SensorPreprocessing:
    """Grid, window and the scaling fitted on the resampled training steps of every file."""
    interval = (options.interval_s or choose_interval(series)) if options.resample else None
    names = series[0].columns
    unscaled = SensorPreprocessing(
        columns=tuple(SensorColumn(name=n, mean=0.0, std=1.0) for n in names),
        interval_s=interval,
        window=options.window,
        hop=options.hop,
        max_gap_steps=options.max_gap_steps,
        max_filled_fraction=options.max_filled_fraction,
    )
    steps = np.concatenate([steps_of(unscaled, s.timestamps, s.values) for s in series])
    try:
        columns = fit_columns(names, steps)
    except ValueError as exc:
        raise DatasetError(f"cannot fit the scaling: {exc}") from exc
    return unscaled.model_copy(update={"columns": columns})


@dataclass(frozen=True)
class _Split:
    train: FloatArray
    val: FloatArray


def split_windows(
    series: Sequence[SeriesData], spec: SensorPreprocessing, val_fraction: float
) -> _Split:
    """Every position's window per file; the last ``val_fraction`` of each file's windows
    validate, and the windows sharing samples with them are dropped from training."""
    every = spec.model_copy(update={"hop": 1})
    train, val = [], []
    for item in series:
        windows = window_arrays(every, item.timestamps, item.values, item.name).data
        count = len(windows)
        n_val = round(count * val_fraction)
        if n_val:
            val.append(windows[count - n_val :])
            train.append(windows[: max(0, count - n_val - (spec.window - 1))])
        else:
            train.append(windows)
    width = len(spec.columns)
    empty = np.zeros((0, spec.window, width), dtype=np.float32)
    split = _Split(
        train=np.concatenate(train) if train else empty,
        val=np.concatenate(val) if val else empty,
    )
    if len(split.train) < MIN_TRAIN_WINDOWS:
        raise DatasetError(
            f"only {len(split.train)} training windows of {spec.window} steps; the files are "
            "too short (or too gappy) for this window: record more, or pass a smaller --window"
        )
    return split


def model_name(options: SensorTrainOptions, data_name: str) -> str:
    if options.name:
        return options.name
    cleaned = _NAME_CHARS.sub("-", data_name).strip("-._")
    return cleaned or "sensor-anomaly"


def train_sensor_anomaly(
    data_dir: Path, out_dir: Path, options: SensorTrainOptions | None = None
) -> SensorTrainResult:
    """Train on ``DIR/*.csv`` and write the trained-model folder."""
    options = options or SensorTrainOptions()
    series = load_sensor_folder(Path(data_dir), options.csv)
    return train_sensor_model(series, Path(out_dir), options, Path(data_dir).resolve().name)


def train_sensor_model(
    series: Sequence[SeriesData],
    out_dir: Path,
    options: SensorTrainOptions,
    data_name: str = "series",
) -> SensorTrainResult:
    """Train on already loaded series (e.g. the first stretch of longer recordings)."""
    if not series:
        raise DatasetError("no series to train on")
    selected = _select_columns(series, options.columns)
    spec = sensor_preprocessing(selected, options)
    split = split_windows(selected, spec, options.val_fraction)
    keras = import_keras()
    device = configure_devices(options.seed, mixed_precision=False)
    name = model_name(options, data_name)
    trained, history = _fit(keras, split, spec, options, name)
    model = _serving_copy(keras, trained, spec, options, name)
    everything = np.concatenate([split.train, split.val])
    scores = _scores(trained, everything)
    threshold = calibrate_threshold(scores, options.quantile, options.margin)
    val_scores = scores[len(split.train) :]
    val_p99 = float(np.quantile(val_scores, 0.99)) / threshold if len(val_scores) else 0.0
    calibration = _calibration_subset(everything, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    model.save(model_path)
    epochs_run = len(history.get("loss", []))
    provenance = {
        "data_dir": data_name,
        "series": str(len(selected)),
        "samples": str(sum(len(s) for s in selected)),
        "bad_rows": str(sum(s.bad_rows for s in selected)),
        "missing_values": str(sum(s.missing_values for s in selected)),
        "train_windows": str(len(split.train)),
        "val_windows": str(len(split.val)),
        "epochs_requested": str(options.epochs),
        "epochs_run": str(epochs_run),
        "seed": str(options.seed),
        "architecture": f"dense-autoencoder-{options.hidden}-{options.latent}",
        "noise": str(options.noise),
        "tensorflow": device.tensorflow_version,
        "keras": device.keras_version,
        "trained_on": device.describe(),
    }
    info = TrainedModelInfo(
        name=name,
        version=options.version,
        task="sensor-anomaly",
        labels=LABELS,
        preprocessing=spec,
        anomaly=AnomalyCalibration(
            quantile=options.quantile, margin=options.margin, threshold=threshold
        ),
        outputs_probabilities=False,
        provenance=provenance,
    )
    write_info(out_dir, info)
    write_windows(out_dir / HELDOUT_FILE, split.val if len(split.val) else split.train[-64:])
    write_windows(out_dir / CALIBRATION_FILE, calibration)
    report = write_sensor_report(
        out_dir / REPORT_DIR,
        title=f"{name} {options.version}: autoencoder on {data_name}",
        history=history,
        scores=scores,
        threshold=threshold,
        plots=options.plots,
        details={
            "data": data_name,
            "columns": ", ".join(spec.column_names),
            "interval s": spec.interval_s,
            "window": spec.window,
            "hop (device)": spec.hop,
            "train windows": len(split.train),
            "validation windows": len(split.val),
            "epochs run": epochs_run,
            "threshold rule": f"quantile {options.quantile} x margin {options.margin}",
            "validation p99 / threshold": round(val_p99, 4),
            "seed": options.seed,
            "trained on": device.describe(),
        },
    )
    log.info(
        "trained %s: %d epochs, threshold %.4g (validation p99 at %.2f of it); folder %s",
        name, epochs_run, threshold, val_p99, out_dir,
    )  # fmt: skip
    return SensorTrainResult(
        out_dir=out_dir,
        model_path=model_path,
        info_path=out_dir / INFO_FILE,
        epochs_run=epochs_run,
        preprocessing=spec,
        threshold=threshold,
        train_windows=len(split.train),
        val_windows=len(split.val),
        val_score_p99=val_p99,
        device=device,
        report=report,
    )


def _fit(
    keras: Any, split: _Split, spec: SensorPreprocessing, options: SensorTrainOptions, name: str
) -> tuple[Any, dict[str, list[float]]]:
    from training.train_image import _progress_callback  # the same bar for every trainer

    model = build_autoencoder(
        keras, _autoencoder_spec(spec, options), name=_NAME_CHARS.sub("_", name)
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=options.learning_rate),
                  loss="mse")  # fmt: skip
    has_val = len(split.val) > 0
    monitor = "val_loss" if has_val else "loss"
    batch = min(options.batch_size, len(split.train))
    steps = math.ceil(len(split.train) / batch)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=options.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=0.5, patience=max(1, options.patience // 2),
            min_lr=options.learning_rate / 50,
        ),
        _progress_callback(keras, options.epochs, steps, options.progress),
    ]  # fmt: skip
    log.info(
        "training %s on %d windows of %d x %d (%d validation), %d steps/epoch",
        name, len(split.train), spec.window, len(spec.columns), len(split.val), steps,
    )  # fmt: skip
    fitted = model.fit(
        split.train,
        split.train,
        batch_size=batch,
        epochs=options.epochs,
        validation_data=(split.val, split.val) if has_val else None,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in fitted.history.items()}
    return model, history


def _autoencoder_spec(spec: SensorPreprocessing, options: SensorTrainOptions) -> AutoencoderSpec:
    return AutoencoderSpec(
        window=spec.window, columns=len(spec.columns), hidden=options.hidden,
        latent=options.latent, noise=options.noise,
    )  # fmt: skip


def _serving_copy(
    keras: Any, trained: Any, spec: SensorPreprocessing, options: SensorTrainOptions, name: str
) -> Any:
    """The trained weights in the batch-of-one graph the device runs (see
    ``build_autoencoder``); the training noise layer has no weights and is left out."""
    model = build_autoencoder(
        keras, _autoencoder_spec(spec, options), name=_NAME_CHARS.sub("_", name), batch_size=1
    )
    model.set_weights(trained.get_weights())
    return model


def _scores(model: Any, windows: FloatArray) -> FloatArray:
    """Reconstruction scores of the training graph (free batch size, so batched)."""
    return window_scores(windows, np.asarray(model.predict(windows, batch_size=512, verbose=0)))


def _calibration_subset(windows: FloatArray, options: SensorTrainOptions) -> FloatArray:
    if len(windows) <= options.calibration_limit:
        return windows
    rng = np.random.default_rng([options.seed, 3])
    chosen = np.sort(rng.choice(len(windows), options.calibration_limit, replace=False))
    return windows[chosen]
