"""Object detection on a camera source: gate → detector → masks and zones → tracker →
snapshots, one event per object.

Per frame, the motion gate decides whether the model looks at all and at which part
of the frame (device/detection/motion.py); a frame it skips costs the motion check and
tells the tracker only the time (a skipped frame is no evidence that an object left).
When the model runs, the detector (device/detection/detector.py, the same class that
`evaluate` and `bench` measure) finds objects, masks drop those the user never wants
and zones name where the rest are, and the tracker turns them into start, update and
end transitions per object, each with its last box and zones; the snapshot keeper adds
a size-capped JPEG of the object's best sighting to the transitions it is configured
for.

The pipeline speaks the camera path's language (``preprocess`` on the capture thread,
``process``/``flush`` giving ``lifecycle.Transition``), so the inference worker, the
supervisor and the publisher treat it like a classifier. Chained pipelines read
``last_objects``: what the model found in the frame just processed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from device.bundle.manifest import ImagePreprocessing
from device.bundle.reader import Bundle
from device.detection.detector import TASK, Detector
from device.detection.motion import GateStats, MotionGate
from device.detection.objects import NormBox
from device.detection.snapshot import EventSnapshot, Snapshot, SnapshotKeeper
from device.detection.tracker import ObjectTracker, ObjectTransition, TrackStep
from device.detection.zones import Areas, PlacedObject
from device.errors import ConfigError
from device.latency import LatencySummary, LatencyWindow
from device.pipelines.detection_config import DetectionPipelineConfig
from device.pipelines.lifecycle import Transition, WallClock
from device.runtime import AnyArray, ModelRuntime
from device.sources.camera import Frame

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True, eq=False)
class DetectionFrameResult:
    """What the model found in one frame it looked at."""

    pipeline: str
    source: str
    frame_index: int
    captured_at: float
    #: Per label of the bundle, the highest cell probability anywhere in the region the
    #: model saw: what the health watch compares between models.
    scores: FloatArray
    top_label: str
    top_score: float
    #: Reportable objects (thresholded, not ignored, not masked), with their zones.
    objects: tuple[PlacedObject, ...]
    #: The part of the frame the model saw; None for all of it.
    region: NormBox | None
    #: Preprocessing (when not done on the capture thread) + invoke + decode, ms.
    inference_ms: float


@dataclass(frozen=True)
class FrameObjects:
    """A detection pipeline's answer for one frame, for the pipelines chained to it."""

    frame_index: int
    #: None when the model did not look at this frame (motion gate).
    objects: tuple[PlacedObject, ...] | None
    region: NormBox | None = None
    #: The model did not look because the gate found nothing moving in the frame.
    unchanged: bool = False


@dataclass(frozen=True)
class DetectionStats:
    """Counters for the stats message."""

    inferences: int
    transitions: int
    #: Frames the motion gate kept from the model.
    gated: int
    latency: LatencySummary
    gate: GateStats
    snapshots: int
    #: Detections ignored because the tracker followed ``max_objects`` already.
    overflow: int


class DetectionPipeline:
    """One object-detection model on one source; ``preprocess`` may run on the capture
    thread alongside ``process`` on the inference thread, nothing else concurrently
    except ``set_threshold``/``reconfigure`` (which swap whole tables)."""

    #: Config keys a reload applies without reloading the model.
    LIVE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {
            "threshold", "thresholds", "ignore_labels", "motion", "tracker", "snapshot",
            "zones", "masks", "required_zones",
        }
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        config: DetectionPipelineConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
        clock: WallClock = time,
    ) -> None:
        bundle.require_task(TASK)
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.runtime = runtime
        self._check_labels(config)
        # The gate's regions already carry the configured ``region_margin``; the
        # detector adds none of its own (its default margin is for callers handing in
        # tight boxes), so the model sees the margin the config asks for, once.
        self.detector = Detector(
            bundle.manifest, runtime, config.thresholds, config.threshold, region_margin=0.0
        )
        self.spec: ImagePreprocessing = self.detector.spec
        #: The labels a threshold can be set for (the bundle's, less its background).
        self.labels: tuple[str, ...] = self.detector.object_labels
        self._clock = clock
        self.gate = MotionGate(config.motion)
        self.tracker = ObjectTracker(
            config.tracker, required_zones=config.required_zones, clock=clock
        )
        self.snapshots = SnapshotKeeper(config.snapshot)
        self._apply_areas(config)
        self.latency = LatencyWindow()
        self._inferences = 0
        self._transitions = 0
        self._snapshots = 0
        self.last_result: DetectionFrameResult | None = None
        self.last_objects: FrameObjects | None = None
        log.info(
            "pipeline %s: %s on source %s, thresholds %s, reporting %s, motion gate %s",
            name, self.manifest.model_ref, config.source,
            {label: round(v, 3) for label, v in self.thresholds.items()}, list(self.reportable),
            "on" if config.motion.enabled else "off",
        )  # fmt: skip

    # -- settings -------------------------------------------------------------------------

    @property
    def thresholds(self) -> dict[str, float]:
        return self.detector.thresholds

    def _check_labels(self, config: DetectionPipelineConfig) -> None:
        known = self.manifest.labels
        names = (*config.thresholds, *config.ignore_labels,
                 *(label for zone in config.zones.values() for label in zone.labels))  # fmt: skip
        missing = sorted({label for label in names if label not in known})
        if missing:
            raise ConfigError(
                f"pipelines.{self.name} names label(s) {missing}, which model "
                f"{self.manifest.model_ref} does not detect; its labels are: "
                f"{', '.join(known)}"
            )

    def _apply_areas(self, config: DetectionPipelineConfig) -> None:
        self.areas = Areas.from_config(config)
        self._ignored = frozenset(config.ignore_labels)
        self.reportable: tuple[str, ...] = tuple(
            label for label in self.labels if label not in self._ignored
        )

    def reconfigure(self, config: DetectionPipelineConfig) -> None:
        """Apply a reloaded config's ``LIVE_KEYS`` without reloading the model
        (ConfigError, and nothing changed, for labels the model lacks). A changed
        ``motion`` section starts a fresh gate (its background is learnt again)."""
        self._check_labels(config)
        self.detector.set_thresholds(config.thresholds, config.threshold)
        previous = self.config
        self.config = config
        self._apply_areas(config)
        self.tracker.config = config.tracker
        self.tracker.required_zones = frozenset(config.required_zones)
        self.snapshots.config = config.snapshot
        if config.motion != previous.motion:
            self.gate = MotionGate(config.motion)

    def set_threshold(self, label: str, value: float) -> None:
        """One label's threshold, until the next reload or restart."""
        thresholds = {**self.config.thresholds, label: value}
        self.reconfigure(self.config.model_copy(update={"thresholds": thresholds}))

    def adopt_events(self, other: DetectionPipeline) -> None:
        """Take over ``other``'s open events (a model swap or a rebuilt pipeline): its
        tracker, the crops kept for their snapshots, and its learnt background."""
        self.tracker = other.tracker
        self.snapshots = other.snapshots
        self.gate = other.gate

    def detach_events(self) -> None:
        """Forget the events (after ``adopt_events`` gave them to a successor): whatever
        this pipeline still does lands nowhere shared."""
        self.tracker = ObjectTracker(self.config.tracker, clock=self._clock)
        self.snapshots = SnapshotKeeper(self.config.snapshot)
        self.gate = MotionGate(self.config.motion)

    # -- per frame ------------------------------------------------------------------------

    def preprocess(self, frame_bgr: UInt8Image) -> AnyArray | None:
        """The whole frame as the model's input tensor, on the capture thread; None with
        motion gating on: most frames then never reach the model (and the rest are
        often a region of the frame), so the input is made when the gate says so."""
        if self.config.motion.enabled:
            return None
        return self.detector.preprocess(frame_bgr)

    def infer(self, frame: Frame, region: NormBox | None = None) -> DetectionFrameResult:
        """Run the model on ``frame`` (or ``region`` of it), whatever the gate says."""
        tensor = frame.tensor if region is None else None
        found = self.detector.detect(frame.image, region, tensor=tensor)
        kept = [obj for obj in found.objects if obj.label not in self._ignored]
        placed = self.areas.place(kept)
        probabilities = found.probabilities
        scores = np.asarray(
            probabilities.reshape(-1, probabilities.shape[-1]).max(axis=0), dtype=np.float32
        )
        top = int(np.argmax(scores))
        self.latency.add(found.inference_ms)
        self._inferences += 1
        result = DetectionFrameResult(
            pipeline=self.name,
            source=frame.source,
            frame_index=frame.index,
            captured_at=frame.captured_at,
            scores=scores,
            top_label=self.manifest.labels[top],
            top_score=float(scores[top]),
            objects=placed,
            region=found.region,
            inference_ms=found.inference_ms,
        )
        self.last_result = result
        return result

    def process(self, frame: Frame) -> list[Transition]:
        """Gate, infer when due, track; returns the event transitions to publish."""
        decision = self.gate.decide(
            frame.image,
            frame.timeline,
            tracking=self.tracker.needs_look(frame.timeline),
            idle=self.tracker.tracked == 0,
        )
        if not decision.run:
            # A frame the gate checked and skipped is one where nothing moved; one it
            # skipped unchecked (idle rate) says nothing.
            unchanged = decision.motion is not None
            self.tracker.skip(frame.timeline, unchanged=unchanged)
            self.last_result = None  # nothing new for the health watch to judge
            self.last_objects = FrameObjects(frame.index, None, unchanged=unchanged)
            return []
        result = self.infer(frame, decision.region)
        self.last_objects = FrameObjects(frame.index, result.objects, result.region)
        step = self.tracker.observe(
            result.objects, frame.timeline, frame_index=frame.index, region=result.region
        )
        return self._transitions_of(step, frame.image)

    def flush(self, now: float | None = None) -> list[Transition]:
        """End open events (source ended, shutdown, model swap)."""
        return self._transitions_of(self.tracker.flush(now), None)

    def _transitions_of(self, step: TrackStep, image: UInt8Image | None) -> list[Transition]:
        shots = {s.event_id + s.transition: s for s in self.snapshots.update(step, image)}
        self._snapshots += len(shots)
        out = [to_transition(t, shots.get(t.event_id + t.type)) for t in step.transitions]
        self._transitions += len(out)
        return out

    def stats(self) -> DetectionStats:
        gate = self.gate.stats()
        return DetectionStats(
            inferences=self._inferences,
            transitions=self._transitions,
            gated=gate.gated,
            latency=self.latency.summary(),
            gate=gate,
            snapshots=self._snapshots,
            overflow=self.tracker.overflow,
        )


def to_transition(transition: ObjectTransition, shot: EventSnapshot | None) -> Transition:
    """An object's transition in the camera path's terms (box, zones, snapshot kept)."""
    snapshot: Snapshot | None = shot.snapshot if shot is not None else None
    return Transition(
        type=transition.type,
        label=transition.label,
        event_id=transition.event_id,
        score=transition.score,
        top_score=transition.top_score,
        started_at=transition.started_at,
        captured_at=transition.captured_at,
        duration_s=transition.duration_s,
        box=transition.box,
        zones=transition.zones,
        snapshot=snapshot,
    )
