"""A second model on a detector's objects: crop each detected box, classify the crop.

The face example is the reason: a face detector finds faces, an identity classifier
says whose they are. ``CropClassifier`` is the second half. It takes a frame and the
objects a detection pipeline decoded from it, keeps the objects whose label it was
configured for (``input_labels``), cuts each one out with ``device.detection.crops``
(margin, aspect, clamping, minimum size: the same code training uses to cut its
examples), and runs the classification bundle on the crop with the same thresholds,
background and ignored labels a frame classifier applies (``ImageClassifier``).

Each object costs one invocation, so at most ``max_objects`` are classified a frame,
the detector's most confident first; objects skipped for size or for that limit are
counted, never silently lost. What to publish (one "who" event per tracked face, say)
is the caller's business: this module returns frozen results and counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle.reader import Bundle
from device.detection.crops import CropSettings, PixelBox, crop
from device.detection.objects import DetectedObject
from device.latency import LatencySummary, LatencyWindow
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.classification import ImageClassifier
from device.runtime import ModelRuntime

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]


@dataclass(frozen=True, eq=False)
class CropResult:
    """The second model's verdict on one detected object."""

    #: The detector's object, as it came in.
    object: DetectedObject
    #: The frame pixels the classifier saw (the box with margin and aspect, clamped).
    crop: PixelBox
    #: The classifier's label when it may report (not background or ignored, score at
    #: or above its threshold); None when the crop is nobody the model may name.
    label: str | None
    #: The classifier's top label and its score, reported or not.
    top_label: str
    score: float
    #: One score per label of the classifier, in its label order (after softmax).
    scores: FloatArray
    #: Crop, resize, invoke and decode for this object, in milliseconds.
    inference_ms: float


@dataclass(frozen=True)
class CropStats:
    """Counters for the stats message; all since the classifier was built."""

    #: Crops the model ran on.
    classified: int
    #: Of those, crops whose label reported.
    reported: int
    #: Objects of the configured labels whose box was under ``min_size`` pixels.
    skipped_small: int
    #: Objects beyond ``max_objects`` in their frame.
    skipped_limit: int
    #: Objects of labels this pipeline does not classify.
    other_labels: int
    #: Milliseconds per crop (crop, resize, invoke, decode).
    latency: LatencySummary


class CropClassifier:
    """A classification bundle run on detected objects' crops; one inference thread."""

    def __init__(
        self,
        name: str,
        config: ChainedClassificationConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
    ) -> None:
        self.name = name
        self.classifier: ImageClassifier[ChainedClassificationConfig] = ImageClassifier(
            name, config, bundle, runtime
        )
        self.config = config
        self.settings = crop_settings(config)
        self._wanted = frozenset(config.input_labels)
        self.latency = LatencyWindow()
        self._classified = 0
        self._reported = 0
        self._skipped_small = 0
        self._skipped_limit = 0
        self._other_labels = 0
        log.info(
            "pipeline %s: %s on %s objects of pipeline %s (margin %.2f, aspect %s, min %d px)",
            name,
            bundle.manifest.model_ref,
            list(config.input_labels) or "all",
            config.input,
            config.margin,
            config.crop_aspect or "as detected",
            config.min_size,
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    @property
    def thresholds(self) -> Mapping[str, float]:
        return self.classifier.thresholds

    @property
    def reportable(self) -> tuple[str, ...]:
        return self.classifier.reportable

    def reconfigure(self, config: ChainedClassificationConfig) -> None:
        """Apply new thresholds, ignored labels and crop settings without reloading the
        model (ConfigError, and nothing changed, for a label the model lacks)."""
        settings = crop_settings(config)
        self.classifier.reconfigure(config)
        self.config = config
        self.settings = settings
        self._wanted = frozenset(config.input_labels)

    def wants(self, obj: DetectedObject) -> bool:
        """Whether this pipeline classifies objects of ``obj``'s label."""
        return not self._wanted or obj.label in self._wanted

    def classify(
        self, frame_bgr: UInt8Image, objects: Sequence[DetectedObject]
    ) -> tuple[CropResult, ...]:
        """Classify the crops of ``objects`` (decoded from ``frame_bgr``), in the order
        of the detector's scores, highest first."""
        wanted = [obj for obj in objects if self.wants(obj)]
        self._other_labels += len(objects) - len(wanted)
        wanted.sort(key=lambda obj: obj.score, reverse=True)
        results: list[CropResult] = []
        for obj in wanted:
            if len(results) == self.config.max_objects:
                self._skipped_limit += 1
                continue
            start = time.perf_counter()
            cut = crop(frame_bgr, obj.box, self.settings)
            if cut is None:
                self._skipped_small += 1
                continue
            verdict = self.classifier.classify(cut.image)
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            self.latency.add(elapsed_ms)
            self._classified += 1
            self._reported += verdict.label is not None
            results.append(
                CropResult(
                    object=obj,
                    crop=cut.box,
                    label=verdict.label,
                    top_label=verdict.top_label,
                    score=verdict.top_score,
                    scores=verdict.scores,
                    inference_ms=elapsed_ms,
                )
            )
        return tuple(results)

    def stats(self) -> CropStats:
        return CropStats(
            classified=self._classified,
            reported=self._reported,
            skipped_small=self._skipped_small,
            skipped_limit=self._skipped_limit,
            other_labels=self._other_labels,
            latency=self.latency.summary(),
        )


def crop_settings(config: ChainedClassificationConfig) -> CropSettings:
    """The crop geometry a chained pipeline's config asks for."""
    return CropSettings(margin=config.margin, aspect=config.crop_aspect, min_size=config.min_size)
