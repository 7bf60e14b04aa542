"""A chained pipeline in the camera path: a classifier on each object another pipeline
detected, turned into one event per identified object ("who" events).

It runs on the same frames as its input detection pipeline, right after it on the
source's inference thread (the switcher orders a source's pipelines so), and reads what
that pipeline found in this very frame (``DetectionPipeline.last_objects``). A frame the
input's motion gate skipped was not looked at here either: the tracker is told only the
time, so a person standing still keeps their event. Each crop's label (the person, for
the face example) becomes an object of that label with the detected box; the object
tracker then debounces it exactly as it debounces detections, so one person in front
of the door is one start, a few updates and one end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from device.bundle.manifest import ImagePreprocessing
from device.bundle.reader import Bundle
from device.detection.objects import DetectedObject
from device.detection.tracker import ObjectTracker
from device.detection.zones import PlacedObject
from device.latency import LatencySummary, LatencyWindow
from device.pipelines.chain_config import ChainedClassificationConfig
from device.pipelines.chained import CropClassifier, CropStats
from device.pipelines.detection import FrameObjects, to_transition
from device.pipelines.lifecycle import Transition, WallClock
from device.runtime import AnyArray, ModelRuntime
from device.sources.camera import Frame


@dataclass(frozen=True)
class ChainedStats:
    inferences: int
    transitions: int
    latency: LatencySummary
    crops: CropStats


class ChainedPipeline:
    """Runs on the inference thread of its input's source; ``set_threshold`` and
    ``reconfigure`` may come from the command thread (they swap whole tables)."""

    LIVE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"threshold", "thresholds", "ignore_labels", "tracker", "input_labels", "margin",
         "square", "aspect", "min_size", "max_objects"}
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: ChainedClassificationConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
        clock: WallClock = time,
    ) -> None:
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.runtime = runtime
        self.classifier = CropClassifier(name, config, bundle, runtime)
        self.spec: ImagePreprocessing = self.classifier.classifier.spec
        self._clock = clock
        self.tracker = ObjectTracker(config.tracker, clock=clock)
        self.latency = LatencyWindow()
        #: Chained pipelines feed no health watch or examples: there is no frame result.
        self.last_result: None = None
        self._inferences = 0
        self._transitions = 0

    @property
    def input(self) -> str:
        return self.config.input

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.classifier.thresholds)

    @property
    def reportable(self) -> tuple[str, ...]:
        return self.classifier.reportable

    def reconfigure(self, config: ChainedClassificationConfig) -> None:
        self.classifier.reconfigure(config)
        self.config = config
        self.tracker.config = config.tracker

    def set_threshold(self, label: str, value: float) -> None:
        thresholds = {**self.config.thresholds, label: value}
        self.reconfigure(self.config.model_copy(update={"thresholds": thresholds}))

    def adopt_events(self, other: ChainedPipeline) -> None:
        self.tracker = other.tracker

    def detach_events(self) -> None:
        self.tracker = ObjectTracker(self.config.tracker, clock=self._clock)

    def preprocess(self, frame_bgr: AnyArray) -> None:
        """Crops are cut on the inference thread; the capture thread prepares the
        input pipeline's tensor, never this one's (it always runs after its input)."""
        del frame_bgr

    def process_objects(self, frame: Frame, found: FrameObjects | None) -> list[Transition]:
        """Classify the crops of what the input pipeline found in ``frame``."""
        if found is None or found.frame_index != frame.index or found.objects is None:
            # The input did not look: neither do we (an unchanged frame is, for a
            # missing crop, one more look that missed it, as for the input's tracker).
            unchanged = found is not None and found.frame_index == frame.index and found.unchanged
            self.tracker.skip(frame.timeline, unchanged=unchanged)
            return []
        start = time.perf_counter()
        results = self.classifier.classify(frame.image, [p.object for p in found.objects])
        zones = {id(p.object): p.zones for p in found.objects}
        named = [
            PlacedObject(
                DetectedObject(label=r.label, score=r.score, box=r.object.box),
                zones.get(id(r.object), ()),
            )
            for r in results
            if r.label is not None
        ]
        step = self.tracker.observe(
            named, frame.timeline, frame_index=frame.index, region=found.region
        )
        if results:
            self.latency.add((time.perf_counter() - start) * 1000.0)
            self._inferences += 1
        out = [to_transition(t, None) for t in step.transitions]
        self._transitions += len(out)
        return out

    def flush(self, now: float | None = None) -> list[Transition]:
        out = [to_transition(t, None) for t in self.tracker.flush(now).transitions]
        self._transitions += len(out)
        return out

    def stats(self) -> ChainedStats:
        return ChainedStats(
            inferences=self._inferences,
            transitions=self._transitions,
            latency=self.latency.summary(),
            crops=self.classifier.stats(),
        )
