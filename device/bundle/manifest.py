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

from device.logs.templates import TemplateVocabulary

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


class SensorColumn(_Frozen):
    """One value column of a sensor series and its z-score scaling: ``(x - mean) / std``."""

    name: str = Field(min_length=1, max_length=128)
    mean: float
    std: float = Field(gt=0.0)


class SensorPreprocessing(_Frozen):
    """How readings of a numeric series become the model's input window.

    Samples are resampled onto a grid of ``interval_s`` (None: every sample is one step),
    ``window`` consecutive steps form one window, a new window completes every ``hop``
    steps, and each column is z-scored with its ``mean`` and ``std`` from the training
    data. ``device/sensors/windows.py`` is the one implementation, used by training and
    the device alike.
    """

    kind: Literal["sensor-window"] = "sensor-window"
    columns: tuple[SensorColumn, ...] = Field(min_length=1)
    interval_s: float | None = Field(None, gt=0.0)
    window: int = Field(ge=2, le=4096)
    hop: int = Field(1, ge=1)
    #: Missing grid steps (no sample) filled with the last value; a longer gap restarts
    #: the window, so no window spans an outage.
    max_gap_steps: int = Field(3, ge=0)
    #: Windows in which more than this share of the values was filled in are not scored.
    max_filled_fraction: float = Field(0.25, ge=0.0, le=1.0)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)



LogInputFormat = Literal["lines", "sessions"]


class LogPreprocessing(_Frozen):
    """How log events become the input tensor of a next-event model (task log-anomaly).

    The model reads the ids of the last ``history`` events and scores every class for the
    next one. Class (and input token) ``i`` is, for ``lines``, the template with id ``i``
    in ``vocabulary`` (the device templates each line with exactly this vocabulary); for
    ``sessions`` (DeepLog's one-session-a-line files of event ids), the event
    ``events[i - 1]``. Class 0 is "unknown template": never an input (an unknown line is
    anomalous and kept out of the history) and never a training target. The last class,
    ``boundary``, is both the padding before a session's first event and the prediction
    "the session ends here"; streams of lines have no boundaries and are scored once
    ``history`` known events of an origin have been seen.
    """

    kind: Literal["log-events"] = "log-events"
    input_format: LogInputFormat = "lines"
    history: int = Field(ge=1, le=512)
    vocabulary: TemplateVocabulary | None = None
    events: tuple[str, ...] = ()
    #: A line matched to a template must also have the template's literal words (Drain's
    #: matching alone accepts half the tokens equal); see device/pipelines/log_events.py.
    strict_templates: bool = True

    @model_validator(mode="after")
    def _one_event_space(self) -> LogPreprocessing:
        if self.input_format == "lines" and (self.vocabulary is None or self.events):
            raise ValueError("log lines need a template vocabulary (and no event list)")
        if self.input_format == "sessions" and (self.vocabulary is not None or not self.events):
            raise ValueError("sessions need an event list (and no template vocabulary)")
        if len(set(self.events)) != len(self.events):
            raise ValueError("event ids must be unique")
        return self

    @property
    def boundary(self) -> int:
        """Index of the boundary class; also the number of classes before it."""
        if self.vocabulary is not None:
            return self.vocabulary.next_id
        return len(self.events) + 1

    @property
    def classes(self) -> int:
        """Size of the model's output (and of its input token space)."""
        return self.boundary + 1

    def class_labels(self) -> tuple[str, ...]:
        """The manifest labels of such a model: one per class, in class order."""
        if self.vocabulary is not None:
            middle = tuple(f"T{i}" for i in range(1, self.boundary))
        else:
            middle = tuple(f"E{event}" for event in self.events)
        return ("unknown", *middle, "boundary")



Preprocessing = Annotated[
    ImagePreprocessing | AudioPreprocessing | SensorPreprocessing | LogPreprocessing,
    Field(discriminator="kind"),
]


class ClassificationDecoding(_Frozen):
    """Output 0 holds one score per label; ``softmax`` says whether scores are logits."""

    kind: Literal["classification"] = "classification"
    apply_softmax: bool = False
    #: Labels that mean "nothing of interest" and never become events (e.g. background).
    background_labels: tuple[str, ...] = ()


class ReconstructionDecoding(_Frozen):
    """Output 0 is the model's reconstruction of its input window (an autoencoder).

    The anomaly score of a window is the mean squared difference between the scaled
    window and the reconstruction (``score = "mse"``, z units squared), computed on the
    float window before input quantization; a window whose score is at or above
    ``threshold`` is anomalous. The threshold was calibrated on the training windows with
    this very model: the ``quantile`` of their scores times ``margin``.
    """

    kind: Literal["reconstruction"] = "reconstruction"
    score: Literal["mse"] = "mse"
    threshold: float = Field(gt=0.0)
    quantile: float = Field(gt=0.0, le=1.0)
    margin: float = Field(gt=0.0)
    #: Training windows the threshold was calibrated on.
    calibration_windows: int = Field(ge=1)


class ParameterRange(_Frozen):
    """The values one numeric parameter of one template took in the training logs.

    ``slot`` counts the numeric parameters of a line in line order (see
    ``TemplateMiner.parameters_of``). A value is out of range when its magnitude lies more
    than the decoding's ``parameter_margin`` decades outside ``[low, high]``.
    """

    template: int = Field(ge=1)
    slot: int = Field(ge=0)
    low: float
    high: float
    samples: int = Field(ge=1)


class NextEventDecoding(_Frozen):
    """Output 0 scores every class for the next event (DeepLog's rule decides).

    An event is anomalous when its template is unknown, when its class is not among the
    ``top_g`` best-scored (ties count in its favour), when its probability is below
    ``min_probability`` (0 turns that off), or when a numeric parameter is out of range.
    """

    kind: Literal["next-event"] = "next-event"
    top_g: int = Field(ge=1)
    #: Whether output 0 holds logits (softmax applied on the device) or probabilities.
    logits: bool = True
    min_probability: float = Field(0.0, ge=0.0, le=1.0)
    parameter_ranges: tuple[ParameterRange, ...] = ()
    #: How far outside a trained range (in decades of magnitude) a value may go.
    parameter_margin: float = Field(1.0, ge=0.0)



class HeatmapDecoding(_Frozen):
    """Output 0 is a grid of per-cell class scores: a FOMO-style centroid detector.

    The output has shape (1, rows, cols, labels): cell (row, col) covers ``stride`` x
    ``stride`` pixels of the model input, and channel ``k`` scores label ``k`` (the
    ``background_label`` channel meaning "no object centre here"). With
    ``apply_softmax`` the scores are logits and the device applies softmax per cell:
    the Edge TPU runs SOFTMAX only on 1-D tensors, so the graph ends at its last
    convolution and stays whole on the accelerator.

    Per label, the cells at or above that label's threshold, and for which it is the
    most probable label besides the background, that touch (8-connected) form one
    object: its score is the highest probability among them, its centroid
    their probability-weighted centre, and its box their extent grown by
    ``box_scale`` about its centre (an estimate: the model regresses no box; training
    marks only the middle of each box as object cells, hence the growth).
    ``device/detection/decode.py`` is the one implementation.
    """

    kind: Literal["centroid-heatmap"] = "centroid-heatmap"
    stride: int = Field(ge=1, le=64)
    background_label: str = Field(min_length=1)
    apply_softmax: bool = True
    box_scale: float = Field(1.0, ge=1.0, le=10.0)


Decoding = Annotated[
    ClassificationDecoding | ReconstructionDecoding | NextEventDecoding | HeatmapDecoding,
    Field(discriminator="kind"),
]


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
        if isinstance(self.decoding, ClassificationDecoding):
            for label in self.decoding.background_labels:
                if label not in self.labels:
                    raise ValueError(f"background label {label!r} is not one of the labels")
        sensor = (
            isinstance(self.preprocessing, SensorPreprocessing),
            isinstance(self.decoding, ReconstructionDecoding),
        )
        if any(sensor) and (self.task != "sensor-anomaly" or not all(sensor)):
            raise ValueError(
                "sensor-window preprocessing and reconstruction decoding belong together, "
                "in a sensor-anomaly manifest"
            )
        if isinstance(self.preprocessing, AudioPreprocessing) and (
            self.task != "audio-classification"
        ):
            raise ValueError("audio preprocessing belongs in an audio-classification manifest")
        if self.task == "object-detection" or isinstance(self.decoding, HeatmapDecoding):
            self._consistent_detector()
        if isinstance(self.preprocessing, LogPreprocessing):
            self._consistent_log_model(self.preprocessing)
        elif self.task == "log-anomaly":
            raise ValueError("a log-anomaly model needs log preprocessing (kind log-events)")
        return self

    def classifier_parts(self) -> tuple[ImagePreprocessing, ClassificationDecoding] | None:
        """Preprocessing and decoding of an image classifier; None for other models."""
        if isinstance(self.preprocessing, ImagePreprocessing) and isinstance(
            self.decoding, ClassificationDecoding
        ):
            return self.preprocessing, self.decoding
        return None

    def detector_parts(self) -> tuple[ImagePreprocessing, HeatmapDecoding] | None:
        """Preprocessing and decoding of an object detector; None for other models."""
        if isinstance(self.preprocessing, ImagePreprocessing) and isinstance(
            self.decoding, HeatmapDecoding
        ):
            return self.preprocessing, self.decoding
        return None

    def _consistent_detector(self) -> None:
        parts = self.detector_parts()
        if self.task != "object-detection" or parts is None:
            raise ValueError(
                "an object-detection manifest needs image preprocessing and a "
                "centroid-heatmap decoding, and a centroid-heatmap decoding belongs in an "
                "object-detection manifest"
            )
        spec, decoding = parts
        if decoding.background_label not in self.labels:
            raise ValueError(
                f"background label {decoding.background_label!r} is not one of the labels"
            )
        if len(self.labels) < 2:
            raise ValueError("a detector needs the background label and at least one class")
        if spec.resize != "stretch":
            # Normalised boxes survive a stretch unchanged; a centre crop would cut
            # objects off and shift every coordinate.
            raise ValueError("a detector's preprocessing must resize by stretch")
        rows = -(-spec.height // decoding.stride)
        cols = -(-spec.width // decoding.stride)
        expected = (rows, cols, len(self.labels))
        if tuple(self.outputs[0].shape[-3:]) != expected or len(self.outputs[0].shape) != 4:
            raise ValueError(
                f"a {spec.width}x{spec.height} detector with stride {decoding.stride} and "
                f"{len(self.labels)} labels outputs (1, {rows}, {cols}, {len(self.labels)}); "
                f"output 0 is {list(self.outputs[0].shape)}"
            )

    def _consistent_log_model(self, spec: LogPreprocessing) -> None:
        if self.task != "log-anomaly" or not isinstance(self.decoding, NextEventDecoding):
            raise ValueError("log preprocessing belongs to a log-anomaly model that decodes "
                             "next events")  # fmt: skip
        if self.labels != spec.class_labels():
            raise ValueError("labels must be one per class: unknown, each template, boundary")
        if self.inputs[0].shape[-1] != spec.history or self.outputs[0].shape[-1] != spec.classes:
            raise ValueError(
                f"a next-event model reads {spec.history} event ids and scores "
                f"{spec.classes} classes; the tensors say otherwise"
            )
        if self.decoding.top_g >= spec.classes:
            raise ValueError(f"top_g must be below the {spec.classes} classes")

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
