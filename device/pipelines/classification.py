"""Image classification: a frame in, scores per label out, events from the tracker.

The capture thread calls ``preprocess`` (resize and colour, the expensive part that can
run while the previous frame is being inferred); the inference thread calls ``process``.
Everything that depends only on the bundle and config (thresholds per label, which labels
may report, the input buffer) is worked out once at construction, so a frame costs one
normalise into a reused buffer, one invoke and an argmax.

A classifier trained on ``DIR/<label>/`` folders gives one label per image, so only the
top-1 label of a frame can report: it does when it is not a background or ignored label
and its score is at or above its threshold. Thresholds come from, first to last: the
config's per-label ``thresholds``, the config's ``threshold``, the bundle's per-label
thresholds, the bundle's default: a value the user wrote beats one the model shipped with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import cv2
import numpy as np

from device.bundle.manifest import ImagePreprocessing, TensorSpec
from device.bundle.reader import Bundle
from device.config import ClassificationPipeline as ClassificationConfig
from device.errors import ConfigError, ModelMismatchError
from device.latency import LatencySummary, LatencyWindow
from device.pipelines.lifecycle import EventTracker, Transition, WallClock
from device.preprocessing.image import normalise, resize_frame
from device.runtime import AnyArray, ModelRuntime, dequantize, quantize
from device.sources.camera import Frame

log = logging.getLogger(__name__)

TASK = "image-classification"
UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


class ClassifierSettings(Protocol):
    """The part of a pipeline's config that decides what a classifier reports."""

    @property
    def threshold(self) -> float | None: ...

    @property
    def thresholds(self) -> Mapping[str, float]: ...

    @property
    def ignore_labels(self) -> tuple[str, ...]: ...


SettingsT = TypeVar("SettingsT", bound=ClassifierSettings)


@dataclass(frozen=True, eq=False)
class Classification:
    """What one image (a frame or a crop of one) gave."""

    #: One score per label of the bundle, in the bundle's label order (after softmax).
    scores: FloatArray
    top_label: str
    top_score: float
    #: The top label when it may report (not background, not ignored) and its score is
    #: at or above its threshold; None otherwise.
    label: str | None


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """What one frame gave: all scores, and the detection it reports (if any)."""

    pipeline: str
    source: str
    frame_index: int
    captured_at: float
    #: One score per label of the bundle, in the bundle's label order (after softmax).
    scores: FloatArray
    top_label: str
    top_score: float
    #: The reportable label at or above its threshold with its score; empty when none.
    detections: Mapping[str, float]
    #: Normalise + invoke + decode, in milliseconds.
    inference_ms: float


@dataclass(frozen=True)
class ClassificationStats:
    """Counters for the stats message."""

    inferences: int
    transitions: int
    latency: LatencySummary


class ImageClassifier(Generic[SettingsT]):
    """An image-classification bundle on its runtime, with the config's thresholds and
    ignored labels applied: an image in, a ``Classification`` out. No frames, no events;
    not thread-safe except ``preprocess`` alongside ``classify_tensor``."""

    def __init__(self, name: str, config: SettingsT, bundle: Bundle, runtime: ModelRuntime) -> None:
        bundle.require_task(TASK)
        manifest = bundle.manifest
        parts = manifest.classifier_parts()
        if parts is None:
            raise ModelMismatchError(f"{manifest.model_ref} is not an image classifier")
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = manifest
        self.runtime = runtime
        self.labels: tuple[str, ...] = manifest.labels
        self.spec: ImagePreprocessing = parts[0]
        self.decoding = parts[1]
        self._check_labels()
        self._check_output()
        self.thresholds: dict[str, float] = {}
        #: Labels that can ever produce an event.
        self.reportable: tuple[str, ...] = ()
        self._apply_thresholds()
        channels = 1 if self.spec.color == "grey" else 3
        self._input: FloatArray = np.empty(
            (1, self.spec.height, self.spec.width, channels), dtype=np.float32
        )
        self._softmax = self.decoding.apply_softmax
        self._lut = pixel_lut(self.spec, runtime.inputs[0])

    # -- construction checks ------------------------------------------------------------

    def _check_labels(self) -> None:
        valid = ", ".join(self.labels)
        for key, names in (
            ("thresholds", tuple(self.config.thresholds)),
            ("ignore_labels", self.config.ignore_labels),
        ):
            for label in names:
                if label not in self.labels:
                    raise ConfigError(
                        f"pipelines.{self.name}.{key} names label {label!r}, which model "
                        f"{self.manifest.model_ref} does not have; its labels are: {valid}"
                    )

    def _check_output(self) -> None:
        output = self.runtime.outputs[0]
        if int(np.prod(output.shape)) != len(self.labels):
            raise ModelMismatchError(
                f"{self.manifest.model_ref}: output 0 has shape {list(output.shape)} but "
                f"the manifest lists {len(self.labels)} labels; rebuild the bundle"
            )

    def _apply_thresholds(self) -> None:
        """Derive thresholds and reportable labels from ``self.config``. New arrays are
        built and then swapped in, so the inference thread sees either the old set or
        the new one, never a half-written mix (commands run on another thread)."""
        thresholds = {label: self._threshold_for(label) for label in self.labels}
        reportable = tuple(
            label
            for label in self.labels
            if label not in self.decoding.background_labels
            and label not in self.config.ignore_labels
        )
        self._threshold_array = np.array(
            [thresholds[label] for label in self.labels], dtype=np.float32
        )
        self._reportable_mask = np.array([label in reportable for label in self.labels], dtype=bool)
        self.thresholds = thresholds
        self.reportable = reportable

    def reconfigure(self, config: SettingsT) -> None:
        """Apply new thresholds and ignored labels without reloading the model
        (ConfigError, and nothing changed, for a label the model lacks)."""
        previous = self.config
        self.config = config
        try:
            self._check_labels()
        except ConfigError:
            self.config = previous
            raise
        self._apply_thresholds()

    def _threshold_for(self, label: str) -> float:
        if label in self.config.thresholds:
            return self.config.thresholds[label]
        if self.config.threshold is not None:
            return self.config.threshold
        return self.manifest.thresholds.for_label(label)

    # -- per image ------------------------------------------------------------------------

    def preprocess(self, frame_bgr: UInt8Image) -> AnyArray:
        """Everything up to the model's own input tensor; meant for the capture thread.

        For a quantized input that is resize plus one table lookup per pixel (see
        ``pixel_lut``), so the inference thread only sets the tensor and invokes.
        """
        resized = resize_frame(frame_bgr, self.spec)
        if self._lut is None:
            return resized
        return lookup_pixels(self._lut, resized)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape ``preprocess`` gives (height, width, channels)."""
        return tuple(self._input.shape[1:])

    def classify_tensor(self, tensor: AnyArray) -> Classification:
        """Invoke on ``preprocess``'s output and decode, with this config's rules."""
        if self._lut is not None:
            native = self.runtime.invoke_native([tensor[np.newaxis]])[0]
            scores = dequantize(native, self.runtime.outputs[0]).reshape(-1)
        else:
            normalise(tensor, self.spec, out=self._input[0])
            scores = self.runtime.invoke([self._input])[0].reshape(-1)
        if self._softmax:
            scores = _softmax(scores)
        top = int(np.argmax(scores))
        top_score = float(scores[top])
        reported = self._reportable_mask[top] and top_score >= self._threshold_array[top]
        return Classification(
            scores=scores,
            top_label=self.labels[top],
            top_score=top_score,
            label=self.labels[top] if reported else None,
        )

    def classify(self, image_bgr: UInt8Image) -> Classification:
        """Any BGR image (a whole frame, a crop: a view is fine) → its classification."""
        return self.classify_tensor(self.preprocess(image_bgr))


class ClassificationPipeline(ImageClassifier[ClassificationConfig]):
    """One image-classification model on one source; not thread-safe except
    ``preprocess`` (capture thread) alongside ``process`` (one inference thread)."""

    #: Config keys a reload applies without reloading the model.
    LIVE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"threshold", "thresholds", "ignore_labels", "events"}
    )

    def __init__(
        self,
        name: str,
        config: ClassificationConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
        clock: WallClock = time,
    ) -> None:
        super().__init__(name, config, bundle, runtime)
        self.tracker = EventTracker(config.events, clock)
        self.latency = LatencyWindow()
        self._inferences = 0
        self._transitions = 0
        self.last_result: PipelineResult | None = None
        log.info(
            "pipeline %s: %s on source %s, thresholds %s, reporting %s",
            name,
            self.manifest.model_ref,
            config.source,
            {label: round(value, 3) for label, value in self.thresholds.items()},
            list(self.reportable),
        )

    def reconfigure(self, config: ClassificationConfig) -> None:
        """Apply a reloaded config's thresholds, ignored labels and debounce settings
        without reloading the model (ConfigError, and nothing changed, for a label the
        model lacks). The model, source and task need a restart."""
        super().reconfigure(config)
        self.tracker.config = config.events

    def set_threshold(self, label: str, value: float) -> None:
        """One label's threshold, until the next reload or restart."""
        thresholds = {**self.config.thresholds, label: value}
        self.reconfigure(self.config.model_copy(update={"thresholds": thresholds}))

    def adopt_events(self, other: ClassificationPipeline) -> None:
        """Take over ``other``'s open events (a model swap or a rebuilt pipeline)."""
        self.tracker = other.tracker

    def detach_events(self) -> None:
        """Forget the events after a successor adopted them: what this pipeline still
        does lands nowhere shared."""
        self.tracker = EventTracker(self.config.events)

    # -- per frame ------------------------------------------------------------------------

    def infer(self, frame: Frame) -> PipelineResult:
        """Run the model on a frame; ``frame.tensor``, when set, must come from this
        pipeline's ``preprocess`` (the daemon clears it for a source's other pipelines)."""
        start = time.perf_counter()
        tensor = frame.tensor
        if tensor is None or tensor.shape != self._input.shape[1:]:
            # No preprocessing in the capture thread, or it was for another model
            # (a model swap with a different input size): do it here.
            tensor = self.preprocess(frame.image)
        classified = self.classify_tensor(tensor)
        detections: dict[str, float] = {}
        if classified.label is not None:
            detections[classified.label] = classified.top_score
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        self.latency.add(elapsed_ms)
        self._inferences += 1
        result = PipelineResult(
            pipeline=self.name,
            source=frame.source,
            frame_index=frame.index,
            captured_at=frame.captured_at,
            scores=classified.scores,
            top_label=classified.top_label,
            top_score=classified.top_score,
            detections=detections,
            inference_ms=elapsed_ms,
        )
        self.last_result = result
        return result

    def process(self, frame: Frame) -> list[Transition]:
        """Infer and feed the event tracker; returns the event transitions to publish.

        Debouncing runs on the stream's timeline, so a file read faster than real time
        gives the same events as one played at its own pace.
        """
        result = self.infer(frame)
        transitions = self.tracker.observe(result.detections, frame.timeline)
        self._transitions += len(transitions)
        return transitions

    def flush(self, now: float | None = None) -> list[Transition]:
        """End open events (source ended, shutdown, model swap)."""
        transitions = self.tracker.flush(now)
        self._transitions += len(transitions)
        return transitions

    def stats(self) -> ClassificationStats:
        return ClassificationStats(
            inferences=self._inferences,
            transitions=self._transitions,
            latency=self.latency.summary(),
        )


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = logits - np.max(logits)
    np.exp(shifted, out=shifted)
    shifted /= np.sum(shifted)
    return shifted


def pixel_lut(spec: ImagePreprocessing, input_spec: TensorSpec) -> AnyArray | None:
    """The quantized model input for each of the 256 pixel values, or None for a float
    input.

    normalise-then-quantize maps every pixel independently, so for an 8-bit image it
    is a 256-entry table. The table is built by the shared ``normalise`` and the
    runtime's ``quantize`` themselves, so the lookup gives exactly what the long way
    gives, at a fraction of the per-frame cost.
    """
    if not input_spec.quantized:
        return None
    levels = np.arange(256, dtype=np.uint8)
    return quantize(normalise(levels, spec), input_spec)


def lookup_pixels(table: AnyArray, pixels: UInt8Image) -> AnyArray:
    """``table[pixels]`` for a 256-entry ``pixel_lut``, same shape and the table's dtype.

    OpenCV's LUT rather than ``np.take``: numpy widens the uint8 indices to a 64-bit
    index array first, OpenCV reads them as they are (about half the time for a
    96x96x3 input, paid on every frame the model sees).
    """
    return np.asarray(cv2.LUT(pixels, table)).reshape(pixels.shape)
