"""The bundle manifest: the one document that tells a device how to use a model.

Everything the device needs to turn raw input into the input tensor and the output
tensor into detections is stated here, so the device never has to guess or import
training code. The manifest is versioned (``schema``) and signed as canonical bytes.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Task = Literal[
    "image-classification",
    "object-detection",
    "audio-classification",
    "log-anomaly",
    "sensor-anomaly",
]
QuantMode = Literal["float32", "float16", "dynamic", "int8", "edgetpu"]
TensorDtype = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """Shape, dtype and affine quantization of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: TensorDtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.dtype in ("int8", "uint8", "int16")


class ModelFile(_Frozen):
    """Identity of model.tflite: the signature over the manifest covers it through this."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)


class ImagePreprocessing(_Frozen):
    """How a camera frame (BGR uint8, as OpenCV delivers it) becomes the input tensor.

    ``value = pixel * scale + offset`` after resizing and colour conversion.
    """

    kind: Literal["image"] = "image"
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    color: Literal["rgb", "bgr", "grey"] = "rgb"
    resize: Literal["stretch", "center-crop"] = "stretch"
    scale: float = 1.0 / 127.5
    offset: float = -1.0


class AudioPreprocessing(_Frozen):
    """How mono audio becomes the input tensor of a keyword/sound classifier.

    Audio is resampled to ``sample_rate``. Frame ``i`` covers samples
    ``[i * hop_length, i * hop_length + n_fft)``, weighted by a periodic Hann window of
    ``win_length`` samples centred in ``n_fft`` (librosa's ``center=False`` framing);
    its power spectrum goes through a Slaney mel filterbank (``n_mels`` bands from
    ``fmin`` to ``fmax``) and ``log(mel + log_offset)``; ``mfcc`` then keeps the first
    ``n_mfcc`` coefficients of the orthonormal DCT-II. Each feature is normalised with
    ``(value - mean[k]) / std[k]`` (empty tuples: no normalisation). A model input is
    the ``frames`` consecutive frames of one window of ``clip_samples`` samples.
    ``device/audio/features.py`` is the one implementation, used by training and the
    device alike.
    """

    kind: Literal["audio"] = "audio"
    sample_rate: int = Field(16_000, ge=4_000, le=96_000)
    #: Samples in one model window (a Speech Commands clip is one second).
    clip_samples: int = Field(16_000, gt=0)
    n_fft: int = Field(640, ge=16, le=8192)
    win_length: int = Field(640, ge=16, le=8192)
    hop_length: int = Field(320, ge=1)
    n_mels: int = Field(40, ge=1, le=256)
    fmin: float = Field(20.0, ge=0.0)
    fmax: float = Field(4_000.0, gt=0.0)
    log_offset: float = Field(1e-6, gt=0.0)
    features: Literal["mfcc", "log-mel"] = "mfcc"
    n_mfcc: int = Field(10, ge=1, le=256)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> AudioPreprocessing:
        if self.win_length > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        if self.clip_samples < self.n_fft:
            raise ValueError("clip_samples must hold at least one frame (n_fft samples)")
        if not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError("need fmin < fmax <= sample_rate / 2")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise ValueError("n_mfcc must not exceed n_mels")
        if len(self.mean) != len(self.std) or (
            self.mean and len(self.mean) != self.coefficients
        ):
            raise ValueError(
                f"mean and std need one value per feature ({self.coefficients}) or none"
            )
        if any(value <= 0.0 for value in self.std):
            raise ValueError("std values must be positive")
        return self

    @property
    def coefficients(self) -> int:
        """Features per frame."""
        return self.n_mfcc if self.features == "mfcc" else self.n_mels

    @property
    def frames(self) -> int:
        """Frames in one model window."""
        return 1 + (self.clip_samples - self.n_fft) // self.hop_length

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The model's input tensor without the batch dimension: frames x features x 1."""
        return (self.frames, self.coefficients, 1)


Preprocessing = Annotated[ImagePreprocessing | AudioPreprocessing, Field(discriminator="kind")]


class ClassificationDecoding(_Frozen):
    """Output 0 holds one score per label; ``softmax`` says whether scores are logits."""

    kind: Literal["classification"] = "classification"
    apply_softmax: bool = False
    #: Labels that mean "nothing of interest" and never become events (e.g. background).
    background_labels: tuple[str, ...] = ()


Decoding = Annotated[ClassificationDecoding, Field(discriminator="kind")]


class Thresholds(_Frozen):
    """Score at or above which a label counts as present; per-label values override."""

    default: float = Field(0.5, ge=0.0, le=1.0)
    per_label: dict[str, float] = Field(default_factory=dict)

    def for_label(self, label: str) -> float:
        return self.per_label.get(label, self.default)


class LevelMetrics(_Frozen):
    """Accuracy of the Keras model and of this bundle's model on the same held-out data."""

    dataset: str
    samples: int
    reference_accuracy: float
    bundle_accuracy: float
    #: Fraction of samples where the bundle's top-1 equals the Keras model's top-1.
    top1_agreement: float
    #: Mean invoke latency on the converting machine (not the device), for comparison only.
    invoke_ms: float


class GoldenPair(_Frozen):
    """A raw input tensor and the output the model gave for it at conversion time.

    The device runs it before serving a model (smoke test): a model that loads but
    computes garbage on this machine's runtime is refused.
    """

    input_b64: str
    output_b64: str
    #: Largest allowed absolute difference, in dequantized units, per output element.
    tolerance: float = 1e-3

    @staticmethod
    def encode(array: np.ndarray[Any, Any]) -> str:
        return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")

    @staticmethod
    def decode(text: str, spec: TensorSpec) -> np.ndarray[Any, Any]:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        return np.frombuffer(raw, dtype=np.dtype(spec.dtype)).reshape(spec.shape)


class Manifest(_Frozen):
    """manifest.json, schema version 1."""

    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    task: Task
    created_at: datetime
    model: ModelFile
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=1)
    preprocessing: Preprocessing
    decoding: Decoding
    thresholds: Thresholds = Thresholds()
    quantization: QuantMode
    #: Whether the model was compiled for (or is meant for) the Coral Edge TPU.
    edgetpu: bool = False
    metrics: LevelMetrics | None = None
    golden: GoldenPair
    #: Free-form provenance: training data folder name, epochs, seed, tool versions.
    provenance: dict[str, str] = Field(default_factory=dict)

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"manifest schema {value} is not supported by this edgewatch "
                f"(it reads schema {SCHEMA_VERSION}); upgrade edgewatch on the device"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        unknown = set(self.thresholds.per_label) - set(self.labels)
        if unknown:
            raise ValueError(f"thresholds name unknown labels: {sorted(unknown)}")
        for label in self.decoding.background_labels:
            if label not in self.labels:
                raise ValueError(f"background label {label!r} is not one of the labels")
        if isinstance(self.preprocessing, AudioPreprocessing) and (
            self.task != "audio-classification"
        ):
            raise ValueError("audio preprocessing belongs in an audio-classification manifest")
        return self

    def canonical_bytes(self) -> bytes:
        """The exact bytes written as manifest.json and covered by manifest.sig.

        Sorted keys and fixed separators make the encoding a function of the content,
        so re-serialising an unchanged manifest gives the same signature input.
        """
        return canonical_json(self.model_dump(mode="json", by_alias=True))

    @property
    def model_ref(self) -> str:
        return f"{self.name}@{self.version}"


def canonical_json(data: Any) -> bytes:
    """Deterministic JSON encoding used for signing."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )
