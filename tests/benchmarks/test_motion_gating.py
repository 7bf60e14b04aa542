"""What motion gating costs per frame, and what it saves on a mostly static camera.

Measured side by side in one run:

(a) the gate's own time per 640x480 frame (motion detection and the decision), next to
    what the model's path costs per frame (resize to the input, quantize, invoke,
    decode) for the demo's tiny classifier and for the Pi-sized MobileNet (96x96,
    alpha 0.5, int8);
(b) on a mostly static scene (60 s at 10 fps, one shape passing for 5 s), the CPU time
    of the Pi-sized model's path on every frame against the gate on every frame plus
    the model's path on the frames the gate lets through (keep-alives included), and
    the frames the model saw the shape in, both ways: gating must not lose an object.
    As in the detection pipeline's benchmark, each frame is decoded just before it is
    processed (as from a camera), the two sides take turns every 2 s of video on
    decoders of their own, and the figure is the median of five such passes.

The model here is a classifier run on the whole frame (the detector of the detection
pipeline is measured by its own benchmark); a classifier still shows what the gate
saves, since the model's path is the same work whatever its head.

Targets. The issue's (gated CPU at most 15 % of ungated, nothing missed) is for the
detection pipeline, measured by test_detection_gating.py; the classifier's ratio is
printed beside it. A classifier runs on whole frames, so each frame it must see (a
tenth of this scene's) costs what an ungated frame costs, and the gate's per-frame
cost comes on top: its floor here is about 0.14 on an x86 box where a Pi-sized
model's whole path costs a millisecond or two. What is asserted is what the gate
controls: the shape is found gated as well as ungated, the model runs on at most
20 % of the frames of this scene, and the gate costs at most a quarter of the
model's path per frame.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.config import ClassificationPipeline as PipelineConfig
from device.detection.config import MotionSection, TrackerSection, ZoneSection
from device.detection.motion import MotionGate
from device.detection.objects import DetectedObject, NormBox
from device.detection.snapshot import encode_snapshot
from device.detection.tracker import ObjectTracker
from device.detection.zones import Areas
from device.pipelines.classification import ClassificationPipeline
from device.runtime import load_for_manifest
from device.sources.camera import Frame
from tests.benchmarks.conftest import decoded_frames, median_pass, report, take_turns
from training.synthetic.shapes import Appearance, write_shapes_video

TARGET_CPU_RATIO = 0.15
MAX_INFERRED_FRACTION = 0.2
MAX_GATE_TO_MODEL = 0.25
SIZE = (640, 480)
FPS = 10.0
DURATION_S = 60.0
SHAPE = Appearance("circle", 30.0, 35.0)
THREADS = 2
ROUNDS = 5
#: Frames each side processes before the other takes its turn (2 s of video).
CHUNK_FRAMES = 20


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gating") / "mostly-static.avi"
    write_shapes_video(path, seed=21, size=SIZE, fps=FPS, script=[SHAPE], duration_s=DURATION_S)
    return path


@pytest.fixture(scope="module")
def static_scene(scene_video: Path) -> list[Any]:
    frames = list(decoded_frames(scene_video))
    assert len(frames) == round(DURATION_S * FPS)
    return frames


def _pipeline(bundle_path: Path) -> ClassificationPipeline:
    bundle = read_bundle(bundle_path)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, THREADS, "off")
    config = PipelineConfig(source="cam", model=bundle_path, threshold=0.5)
    return ClassificationPipeline("bench", config, bundle, runtime)


def _model_cpu_ms(pipeline: ClassificationPipeline, frames: list[Any]) -> float:
    """CPU milliseconds per frame of the model's path (every thread of the process)."""
    started = time.process_time()
    for index, image in enumerate(frames):
        pipeline.infer(Frame("cam", index, index / FPS, image, None, index / FPS))
    return (time.process_time() - started) * 1000.0 / len(frames)


def _seen(pipeline: ClassificationPipeline, frame: Frame) -> bool:
    result = pipeline.infer(frame)
    return result.top_label == SHAPE.label and result.top_score >= 0.5


class _Pass:
    """One side's pass over the video, a few frames at a time, on its own decoder: the
    CPU of the model's path (and of the gate, gated) on each frame, and the frames the
    model saw the shape in."""

    def __init__(self, pipeline: ClassificationPipeline, video: Path, gated: bool) -> None:
        self.pipeline = pipeline
        self.gate = MotionGate(MotionSection()) if gated else None
        self._frames = decoded_frames(video)
        self.cpu = 0.0
        self.frames = 0
        self.seen: set[int] = set()
        self.done = False

    def step(self, count: int) -> None:
        """The next ``count`` frames (fewer at the end of the video; none after it)."""
        for _ in range(0 if self.done else count):
            image = next(self._frames, None)
            if image is None:
                self.done = True
                return
            index, at = self.frames, self.frames / FPS
            started = time.process_time()
            # A classifier follows no objects: the gate's idle rate applies whenever
            # nothing moved at its last check.
            looks = self.gate is None or self.gate.decide(image, at, idle=True).run
            if looks and _seen(self.pipeline, Frame("cam", index, at, image, None, at)):
                self.seen.add(index)
            self.cpu += time.process_time() - started
            self.frames += 1


def test_motion_gating_costs_little_and_saves_most(
    static_scene: list[Any], scene_video: Path, demo_bundle: Path, pi_int8_bundle: Path
) -> None:
    cv2.setNumThreads(1)  # as in the daemon
    frames = static_scene
    # (a) per-frame costs, as CPU time (a shared machine's other load hurts wall time)
    gate = MotionGate(MotionSection())
    gate_us = []
    cpu = time.process_time()
    for index, image in enumerate(frames):
        started = time.perf_counter()
        gate.decide(image, index / FPS)
        gate_us.append((time.perf_counter() - started) * 1e6)
    gate_cpu_us = (time.process_time() - cpu) * 1e6 / len(frames)
    demo = _pipeline(demo_bundle)
    pi = _pipeline(pi_int8_bundle)
    sample = frames[:100]
    demo_ms = _model_cpu_ms(demo, sample)
    pi_ms = _model_cpu_ms(pi, sample)
    gate_p50 = statistics.median(gate_us)
    gate_p99 = float(np.percentile(gate_us, 99))

    # (b) CPU time ungated vs gated, and what the model saw (see the module's notes)
    ratio, rounds, (ungated, gated) = median_pass(
        lambda: take_turns(
            _Pass(pi, scene_video, False), _Pass(pi, scene_video, True), CHUNK_FRAMES
        ),
        ROUNDS,
    )
    assert ungated.frames == gated.frames == len(frames)
    ungated_cpu, ungated_seen = ungated.cpu, ungated.seen
    gated_cpu, gated_seen = gated.cpu, gated.seen
    assert gated.gate is not None
    gate = gated.gate
    stats = gate.stats()
    checks_s = stats.motion_us * (stats.frames - stats.unchecked) / 1e6

    report(
        "Motion gating: cost per frame, and CPU saved on a mostly static scene",
        [
            f"gate per {SIZE[0]}x{SIZE[1]} frame: CPU {gate_cpu_us:.0f} us (mean); wall p50 "
            f"{gate_p50:.0f} us, p99 {gate_p99:.0f} us",
            f"model path per frame, CPU (resize, quantize, invoke, decode; {THREADS} "
            f"threads): demo classifier {demo_ms:.3f} ms, Pi-sized MobileNet {pi_ms:.3f} ms",
            f"gate / model path: {gate_cpu_us / 1000 / demo_ms:.3f} (demo), "
            f"{gate_cpu_us / 1000 / pi_ms:.3f} (Pi-sized)",
            f"scene: {len(frames)} frames ({DURATION_S:.0f} s), a {SHAPE.label} from "
            f"{SHAPE.start_s:.0f} to {SHAPE.end_s:.0f} s",
            f"gate: model ran on {stats.inferred} frames (motion {stats.motion}, keep-alive "
            f"{stats.keepalive}), skipped {stats.gated} ({stats.unchecked} of them without "
            f"a motion check: idle rate {gate.config.idle_fps:g}/s)",
            f"CPU (the median of {ROUNDS} side-by-side passes): ungated {ungated_cpu:.2f} s, "
            f"gated {gated_cpu:.2f} s, ratio {ratio:.3f} "
            f"(each pass: {[round(r, 3) for r in rounds]})",
            f"frames the model saw the {SHAPE.label} in: ungated {len(ungated_seen)}, "
            f"gated {len(gated_seen)} (the gated run's are a subset: "
            f"{gated_seen <= ungated_seen})",
        ],
        f"against the issue's {TARGET_CPU_RATIO} (set for the detection pipeline: "
        f"test_detection_gating.py): {'within' if ratio <= TARGET_CPU_RATIO else 'above'}, "
        f"the shape found gated: {bool(gated_seen)}; a whole-frame "
        f"classifier's floor here is {stats.inferred / len(frames):.3f} (the frames it must "
        f"see) + {checks_s / ungated_cpu:.3f} (this pass's motion checks, wall clock)",
    )
    assert ungated_seen, "the Pi-sized model never recognised the shape; nothing to compare"
    assert gated_seen, "gating lost the only object the ungated run found"
    assert stats.inferred <= MAX_INFERRED_FRACTION * len(frames)
    assert gate_cpu_us / 1000 <= MAX_GATE_TO_MODEL * pi_ms


def test_tracking_zones_and_snapshots_cost_less_than_the_gate(static_scene: list[Any]) -> None:
    """The per-frame bookkeeping after the model (zones, tracker) next to the gate, and
    what a snapshot costs once per event transition."""
    frames = static_scene[:200]
    gate = MotionGate(MotionSection())
    started = time.process_time()
    for index, image in enumerate(frames):
        gate.decide(image, index / FPS)
    gate_us = (time.process_time() - started) * 1e6 / len(frames)

    zones = {
        "drive": ZoneSection(points=((0.2, 0.5), (0.8, 0.5), (0.8, 1.0), (0.2, 1.0))),
        "lawn": ZoneSection(points=((0.5, 0.0), (1.0, 0.0), (1.0, 0.5))),
    }
    areas = Areas(masks=[((0.0, 0.0), (0.2, 0.0), (0.2, 0.2), (0.0, 0.2))], zones=zones)
    tracker = ObjectTracker(TrackerSection())
    rounds = 2000
    started = time.process_time()
    for index in range(rounds):
        shift = 0.001 * (index % 100)
        objects = [
            DetectedObject(
                "person", 0.8, NormBox(0.1 + k * 0.3 + shift, 0.2, 0.2 + k * 0.3 + shift, 0.5)
            )
            for k in range(3)
        ]
        tracker.observe(areas.place(objects), index / FPS, frame_index=index)
    track_us = (time.process_time() - started) * 1e6 / rounds

    crop = frames[0]
    started = time.process_time()
    for _ in range(20):
        snapshot = encode_snapshot(crop, 640, 85, 128 * 1024)
    encode_ms = (time.process_time() - started) * 1000 / 20
    report(
        "Zones, tracker and snapshots: per-frame and per-event costs",
        [
            f"gate per {SIZE[0]}x{SIZE[1]} frame (CPU, mean over {len(frames)} still frames): "
            f"{gate_us:.0f} us",
            f"zones (1 mask, 2 zones) + tracker, 3 objects a frame: {track_us:.1f} us a frame",
            f"snapshot of a {crop.shape[1]}x{crop.shape[0]} frame at quality 85: "
            f"{encode_ms:.2f} ms, {len(snapshot.jpeg)} bytes (once per start/end)",
        ],
        f"target: zones + tracker cost less than the gate: {track_us < gate_us}",
    )
    assert track_us < gate_us
