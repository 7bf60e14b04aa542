"""The trained-model folder: what `edgewatch train` leaves for `edgewatch convert`.

It lives in converters/ because the arrows point training → converters → device:
training writes this contract, the converter reads it. The folder holds

- ``model.keras``       the trained Keras model (Keras 3 format; no pickled code)
- ``model_info.json``   this module's ``TrainedModelInfo``
- ``heldout.npz``       held-out samples the model never trained on, already resized by
                        the device's own preprocessing (``x`` uint8 NHWC, ``y`` int labels);
                        the converter measures every level on them
- ``calibration.npz``   a sample of training inputs (``x`` uint8 NHWC) used as the int8
                        representative set when ``--calibration`` is not given
- ``report/``           the training report (curves, confusion matrix, metrics)

For audio models (``AudioPreprocessing``) ``heldout.npz`` and ``calibration.npz`` hold
the model's float32 input features instead (``x`` of shape (n, frames, coefficients,
1), computed by ``device.audio.features``), read with ``read_feature_samples``.

For sensor-anomaly models ``heldout.npz`` and ``calibration.npz`` hold float32 windows
(``x``: N x window x columns, already scaled by the device's own windowing code):
validation windows, and the training windows the threshold is calibrated on.

npz files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device.bundle.manifest import Decoding, ImagePreprocessing, Preprocessing, Task
from device.errors import DatasetError

MODEL_FILE = "model.keras"
INFO_FILE = "model_info.json"
HELDOUT_FILE = "heldout.npz"
CALIBRATION_FILE = "calibration.npz"
REPORT_DIR = "report"
#: Provenance key naming the clips ``HELDOUT_FILE`` holds (audio model folders), and
#: its value when they are held-out speakers; a folder without the key predates it
#: and always held out speakers.
PARITY_CLIPS_KEY = "report_and_parity_clips"
HELDOUT_SPEAKERS = "held-out speakers"


class AnomalyCalibration(BaseModel):
    """How the threshold of an anomaly model is calibrated (device/sensors/scoring.py):
    ``quantile`` of the calibration windows' scores times ``margin``. The converter
    applies the rule again to the converted model's own scores."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quantile: float = Field(gt=0.0, le=1.0)
    margin: float = Field(gt=0.0)
    #: What the rule gave with the Keras model's scores at training time.
    threshold: float = Field(gt=0.0)


class TrainedModelInfo(BaseModel):
    """What the converter needs to know about a trained model besides its weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    info_schema: int = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str
    task: Task
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    #: The manifest's decoding for models that are not classifiers (None: classification
    #: from ``outputs_probabilities`` and ``background_labels``).
    decoding: Decoding | None = None
    #: Sensor-anomaly models: the threshold rule (the converter builds the decoding with
    #: a threshold calibrated on the converted model).
    anomaly: AnomalyCalibration | None = None
    #: Labels that mean "nothing there" and never become events.
    background_labels: tuple[str, ...] = ()
    #: Whether the model's output already is a probability distribution (ends in softmax).
    outputs_probabilities: bool = True
    default_threshold: float = 0.5
    #: Accuracy of the Keras model on heldout.npz, as measured by training.
    heldout_accuracy: float | None = None
    provenance: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class SampleSet:
    """Preprocessed (resized, not normalised) inputs with optional integer labels."""

    x: np.ndarray[Any, np.dtype[np.uint8]]
    y: np.ndarray[Any, np.dtype[np.int64]] | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def image_spec(info: TrainedModelInfo) -> ImagePreprocessing:
    """The image preprocessing of an image model's folder (DatasetError for other tasks)."""
    if not isinstance(info.preprocessing, ImagePreprocessing):
        raise DatasetError(
            f"model {info.name} is a {info.task} model; this step needs an image model"
        )
    return info.preprocessing


@dataclass(frozen=True)
class FeatureSamples:
    """Model inputs already computed (audio features), with optional integer labels."""

    x: np.ndarray[Any, np.dtype[np.float32]]
    y: np.ndarray[Any, np.dtype[np.int64]] | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def write_feature_samples(path: Path, samples: FeatureSamples) -> None:
    if samples.y is None:
        np.savez_compressed(path, x=samples.x.astype(np.float32))
    else:
        np.savez_compressed(path, x=samples.x.astype(np.float32), y=samples.y)


def read_feature_samples(path: Path) -> FeatureSamples:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; re-run `edgewatch train` to produce it")
    with np.load(path, allow_pickle=False) as data:
        x = data["x"].astype(np.float32)
        y = data["y"].astype(np.int64) if "y" in data.files else None
    return FeatureSamples(x=x, y=y)


def write_info(directory: Path, info: TrainedModelInfo) -> None:
    (directory / INFO_FILE).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")


def read_info(directory: Path) -> TrainedModelInfo:
    path = directory / INFO_FILE
    if not path.is_file():
        raise DatasetError(
            f"{directory} is not a trained-model folder (no {INFO_FILE}); "
            "point at the --out folder of `edgewatch train`"
        )
    try:
        return TrainedModelInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise DatasetError(f"{path} is invalid: {exc}") from exc


def write_samples(path: Path, samples: SampleSet) -> None:
    if samples.y is None:
        np.savez_compressed(path, x=samples.x)
    else:
        np.savez_compressed(path, x=samples.x, y=samples.y)


def read_samples(path: Path) -> SampleSet:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; re-run `edgewatch train` to produce it")
    with np.load(path, allow_pickle=False) as data:
        x = data["x"].astype(np.uint8)
        y = data["y"].astype(np.int64) if "y" in data.files else None
    return SampleSet(x=x, y=y)


def write_windows(path: Path, windows: np.ndarray[Any, np.dtype[np.float32]]) -> None:
    """Sensor windows (N x window x columns, float32) as ``x`` in an npz file."""
    np.savez_compressed(path, x=np.asarray(windows, dtype=np.float32))


def read_windows(path: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; re-run `edgewatch train` to produce it")
    with np.load(path, allow_pickle=False) as data:
        windows = np.asarray(data["x"], dtype=np.float32)
    if windows.ndim != 3 or len(windows) == 0:
        raise DatasetError(
            f"{path} holds {windows.shape} instead of sensor windows (N x window x columns); "
            "re-run `edgewatch train sensor-anomaly`"
        )
    return windows
