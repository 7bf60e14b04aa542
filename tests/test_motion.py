"""Motion detection and gating on generated scenes with exact truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from device.detection.config import MotionSection
from device.detection.motion import MotionDetector, MotionGate, MotionResult
from device.detection.objects import NormBox
from tests.helpers_scenes import FPS, Scene, contains, make_scene
from training.synthetic.shapes import Appearance

#: One processing pixel at the default width (160) and a little: a rotated square's
#: corner is a thin, anti-aliased tip that the blur brings under the threshold.
TOLERANCE = 1.5 / 160
SHAPE_START, SHAPE_END = 2.0, 6.0


@pytest.fixture(scope="module")
def moving(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """A square drifting across a textured background from 2 s to 6 s, 9.5 s in all."""
    path = tmp_path_factory.mktemp("motion") / "moving.avi"
    return make_scene(
        path, seed=5, script=[Appearance("square", SHAPE_START, SHAPE_END)], duration_s=9.5
    )


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """A wide view (3:1) with a circle crossing it, small enough to fit in either half."""
    path = tmp_path_factory.mktemp("motion") / "wide.avi"
    return make_scene(
        path, seed=8, script=[Appearance("circle", 1.0, 6.0)], duration_s=6, size=(360, 120)
    )


@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """The same kind of background with nothing in it: only sensor noise and MJPG."""
    path = tmp_path_factory.mktemp("motion") / "static.avi"
    return make_scene(path, seed=6, script=[], duration_s=6, size=(240, 180))


def detect_all(frames: list[np.ndarray], config: MotionSection | None = None) -> list[MotionResult]:
    detector = MotionDetector(config or MotionSection())
    return [detector.detect(frame) for frame in frames]


def visible(scene: Scene) -> list[int]:
    return [i for i in range(len(scene.frames)) if scene.box(i) is not None]


def test_a_static_scene_shows_no_motion_after_warm_up(static: Scene) -> None:
    results = detect_all(static.frames)
    assert results[0].warming_up and not results[0].moving
    assert [i for i, r in enumerate(results) if r.moving] == []
    assert max(r.fraction for r in results) < 0.001


def test_sensor_grain_is_not_motion(static: Scene) -> None:
    rng = np.random.default_rng(1)
    grainy = [
        np.clip(f + rng.standard_normal(f.shape, dtype=np.float32) * 8.0, 0, 255).astype(np.uint8)
        for f in static.frames[:30]
    ]
    # Grain this strong differs from frame to frame by more than the threshold per pixel.
    assert np.mean(np.abs(grainy[1].astype(int) - grainy[2].astype(int)) > 8) > 0.3
    assert not any(r.moving for r in detect_all(grainy))


def test_a_static_scene_runs_the_model_only_for_keep_alives(static: Scene) -> None:
    gate = MotionGate(MotionSection(keepalive_s=2.0))
    runs = []
    for index, frame in enumerate(static.frames):
        decision = gate.decide(frame, static.at(index))
        if decision.run:
            assert decision.reason == "keepalive" and decision.region is None
            runs.append(index)
    assert runs == [0, 20, 40]  # first frame, then every 2 s of the 6 s scene
    stats = gate.stats()
    assert (stats.frames, stats.inferred, stats.gated, stats.motion) == (60, 3, 57, 0)
    assert stats.keepalive == 3 and stats.whole_frame == 3
    assert stats.gated_fraction == pytest.approx(57 / 60)
    assert stats.motion_us > 0


def test_motion_regions_cover_the_moving_shape(moving: Scene) -> None:
    results = detect_all(moving.frames)
    shown = visible(moving)
    assert shown[0] == round(SHAPE_START * FPS) and shown[-1] == round(SHAPE_END * FPS) - 1
    before = range(1, shown[0])
    assert not any(results[i].moving for i in before), "motion before the shape appeared"
    for index in shown:
        truth = moving.box(index)
        result = results[index]
        assert truth is not None
        assert result.moving, f"frame {index}: the shape moves but no motion was found"
        assert result.union is not None
        assert contains(result.union, truth, TOLERANCE), (index, result.union, truth)
        # One region holds the shape (the trail the background still remembers joins it).
        assert contains(result.regions[0], truth, TOLERANCE)
        assert result.regions[0].iou(truth) > 0.4


def test_motion_stops_once_the_shape_has_gone(moving: Scene) -> None:
    results = detect_all(moving.frames)
    gone = round(SHAPE_END * FPS)
    # The background forgets the shape's trail within ln(contrast / threshold) / alpha
    # frames: about 30 at the defaults.
    settled = gone + 30
    assert [i for i in range(settled, len(results)) if results[i].moving] == []


def test_the_gate_runs_on_the_moving_region_only(moving: Scene) -> None:
    gate = MotionGate(MotionSection(keepalive_s=100.0))
    for index, frame in enumerate(moving.frames):
        decision = gate.decide(frame, moving.at(index))
        truth = moving.box(index)
        if index == 0:
            assert decision.run and decision.reason == "keepalive"
        elif truth is not None:
            assert decision.run and decision.reason == "motion"
            if decision.region is not None:  # a crop: it must hold the whole shape
                assert contains(decision.region, truth, 0.0)
                assert decision.region.area <= 0.5
    stats = gate.stats()
    assert stats.keepalive == 1
    assert stats.motion >= len(visible(moving))
    assert stats.inferred - stats.whole_frame > 0, "never a crop: the region is always whole"


def test_a_mask_over_the_path_suppresses_all_motion(moving: Scene) -> None:
    boxes = [b for i in visible(moving) if (b := moving.box(i)) is not None]
    x0 = max(0.0, min(b.x_min for b in boxes) - 0.05)
    y0 = max(0.0, min(b.y_min for b in boxes) - 0.05)
    x1 = min(1.0, max(b.x_max for b in boxes) + 0.05)
    y1 = min(1.0, max(b.y_max for b in boxes) + 0.05)
    mask = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
    results = detect_all(moving.frames, MotionSection(masks=(mask,)))
    assert not any(r.moving for r in results)


def test_a_half_mask_keeps_motion_in_the_other_half(wide: Scene) -> None:
    moving = wide
    left = ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))
    results = detect_all(moving.frames, MotionSection(masks=(left,)))
    assert any(r.moving for r in results)
    for result in results:
        for region in result.regions:
            assert region.x_min >= 0.5 - 2 * TOLERANCE, region
    # Frames where the shape is wholly in the masked half show no motion at all.
    wholly_left = [
        i for i in visible(moving) if (b := moving.box(i)) is not None and b.x_max < 0.45
    ]
    assert wholly_left, "the scene never has the shape in the left half; pick another seed"
    unmasked = detect_all(moving.frames)
    assert all(unmasked[i].moving for i in wholly_left)
    assert not any(results[i].moving for i in wholly_left[2:])  # after the trail is gone


def test_slow_brightness_drift_is_not_motion(static: Scene, moving: Scene) -> None:
    count = len(static.frames)
    # 50 % brighter over the scene, like a sunrise or auto-exposure creeping.
    drifted = [
        np.clip(f.astype(np.float32) * (1.0 + 0.5 * i / count), 0, 255).astype(np.uint8)
        for i, f in enumerate(static.frames)
    ]
    change = float(np.mean(drifted[-1], dtype=np.float64) - np.mean(drifted[0], dtype=np.float64))
    assert change > 2 * MotionSection().threshold, "the drift is too small to prove anything"
    results = detect_all(drifted)
    assert not any(r.moving for r in results)
    assert not any(r.lighting_change for r in results)
    # The same drift does not blind the detector to a real object.
    drifted_moving = [
        np.clip(f.astype(np.float32) * (1.0 + 0.5 * i / count), 0, 255).astype(np.uint8)
        for i, f in enumerate(moving.frames)
    ]
    found = detect_all(drifted_moving)
    assert all(found[i].moving for i in visible(moving))


def test_a_sudden_lighting_change_resets_instead_of_reporting_motion(static: Scene) -> None:
    frames = [f if i < 30 else (f * 0.3).astype(np.uint8) for i, f in enumerate(static.frames)]
    results = detect_all(frames)
    assert results[30].lighting_change and not results[30].moving
    assert not any(r.moving for r in results)
    assert [i for i, r in enumerate(results) if r.lighting_change] == [30]


def moth(static: Scene, size: int) -> list[np.ndarray]:
    """The static scene with a white size x size px square crossing it, 3 px a frame."""
    frames = []
    for index, frame in enumerate(static.frames):
        copy = frame.copy()
        x = 20 + 3 * index
        copy[100 : 100 + size, x : x + size] = 255
        frames.append(copy)
    return frames


def test_regions_below_min_area_are_ignored(static: Scene) -> None:
    small = moth(static, 3)  # 9 px of a 240x180 frame: 0.02 % of it
    assert not any(r.moving for r in detect_all(small))
    sensitive = detect_all(small, MotionSection(min_area=0.0))
    assert sum(r.moving for r in sensitive) >= len(small) - 1
    larger = detect_all(moth(static, 6))  # 0.08 %: blur and dilation make it count
    assert sum(r.moving for r in larger) >= len(small) - 1


def test_gate_policy_tracking_keepalive_and_off(static: Scene, moving: Scene) -> None:
    gate = MotionGate(MotionSection(keepalive_s=0.0))
    decisions = [
        gate.decide(frame, static.at(i), tracking=5 <= i < 8)
        for i, frame in enumerate(static.frames)
    ]
    ran = [(i, d.reason) for i, d in enumerate(decisions) if d.run]
    # keepalive_s = 0: only the first frame; the tracker's requests get whole frames.
    assert ran == [(0, "keepalive"), (5, "tracking"), (6, "tracking"), (7, "tracking")]
    assert all(d.region is None for d in decisions if d.run)

    # Motion while the tracker asks for a look: the whole frame, not the crop.
    gate = MotionGate(MotionSection(keepalive_s=100.0))
    first_shown = visible(moving)[0]
    for index in range(first_shown + 3):
        decision = gate.decide(moving.frames[index], moving.at(index), tracking=True)
    assert decision.reason == "motion" and decision.region is None

    off = MotionGate(MotionSection(enabled=False))
    decisions = [off.decide(frame, static.at(i)) for i, frame in enumerate(static.frames[:10])]
    assert all(d.run and d.reason == "ungated" and d.motion is None for d in decisions)
    stats = off.stats()
    assert (stats.inferred, stats.ungated, stats.gated, stats.motion_us) == (10, 10, 0, 0.0)


def test_idle_rate_checks_few_frames_while_still_and_every_frame_once_something_moves(
    moving: Scene,
) -> None:
    rate = 2.5  # checks a second while idle, at 10 fps: one frame in four
    gate = MotionGate(MotionSection(keepalive_s=100.0, idle_fps=rate))
    decisions = [gate.decide(f, moving.at(i), idle=True) for i, f in enumerate(moving.frames)]
    checked = [i for i, d in enumerate(decisions) if d.motion is not None]
    shown = visible(moving)
    # Before the square appears only the idle rate's checks (and the first frame).
    assert len([i for i in checked if i < shown[0]]) <= shown[0] / FPS * rate + 1
    # Motion is noticed within 1/idle_fps of the square's arrival, and from then on every
    # frame is checked while it moves.
    first = next(i for i, d in enumerate(decisions) if d.motion is not None and d.motion.moving)
    assert 0 <= first - shown[0] <= FPS / rate
    assert all(decisions[i].motion is not None for i in range(first, shown[-1] + 1))
    # Unchecked frames never run the model here (keep-alive aside, not due in this scene).
    unchecked = [d for d in decisions if d.motion is None]
    assert unchecked and not any(d.run for d in unchecked)
    assert gate.stats().unchecked == len(unchecked)
    assert gate.detector.frames == len(checked)

    # Something followed (idle=False), or idle_fps = 0: every frame is checked.
    cases = ((True, MotionSection(idle_fps=rate)), (False, MotionSection(idle_fps=0)))
    for followed, config in cases:
        every = MotionGate(config)
        for index, frame in enumerate(moving.frames[:30]):
            every.decide(frame, moving.at(index), idle=not followed)
        assert every.detector.frames == 30 and every.stats().unchecked == 0


def test_idle_rate_keeps_the_keepalive_and_the_backgrounds_pace(static: Scene) -> None:
    gate = MotionGate(MotionSection(keepalive_s=1.0, idle_fps=1.0))
    decisions = [gate.decide(f, static.at(i), idle=True) for i, f in enumerate(static.frames)]
    keepalives = [i for i, d in enumerate(decisions) if d.reason == "keepalive"]
    # Every 1.0 s, whether or not that frame's motion was checked.
    assert keepalives == list(range(0, len(static.frames), 10))
    # A look standing for n frames teaches the background what n looks would have: one
    # look at a frame with frames=2 equals two looks at it.
    once, twice = MotionDetector(MotionSection()), MotionDetector(MotionSection())
    brighter = np.clip(static.frames[1].astype(np.int16) + 6, 0, 255).astype(np.uint8)
    for detector in (once, twice):
        detector.detect(static.frames[0])
    once.detect(brighter, frames=2)
    twice.detect(brighter)
    twice.detect(brighter)
    assert once._background is not None and twice._background is not None
    assert np.allclose(once._background, twice._background, atol=1e-3)


def test_the_frame_size_may_change_midway(static: Scene) -> None:
    detector = MotionDetector(MotionSection())
    for frame in static.frames[:5]:
        detector.detect(frame)
    half = static.frames[5][::2, ::2].copy()
    assert detector.detect(half).warming_up  # a new size: a new background
    assert not detector.detect(static.frames[6][::2, ::2].copy()).moving
    grey = detector.detect(static.frames[7][:, :, 0].copy())
    assert grey.warming_up


def test_config_refuses_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        MotionSection.model_validate({"sensitivity": 3})
    with pytest.raises(ValidationError, match="outside the frame"):
        MotionSection.model_validate({"masks": [[[0.0, 0.0], [1.2, 0.0], [0.5, 0.5]]]})
    with pytest.raises(ValidationError, match="greater than or equal to 32"):
        MotionSection(width=8)


def test_regions_are_normalised_boxes(moving: Scene) -> None:
    results = detect_all(moving.frames)
    boxes = [box for r in results for box in r.regions]
    assert boxes and all(isinstance(b, NormBox) for b in boxes)
    assert all(0.0 <= b.x_min < b.x_max <= 1.0 and 0.0 <= b.y_min < b.y_max <= 1.0 for b in boxes)


def test_a_motion_result_computed_elsewhere_gives_the_same_decisions(moving: Scene) -> None:
    """The capture thread may run the detector; the gate then decides from its result."""
    inline = MotionGate(MotionSection(keepalive_s=3.0))
    split = MotionGate(MotionSection(keepalive_s=3.0))
    for index, frame in enumerate(moving.frames):
        motion = split.detector.detect(frame)  # e.g. in the capture thread
        expected = inline.decide(frame, moving.at(index))
        got = split.decide_motion(motion, moving.at(index))
        assert (got.run, got.reason, got.region) == (expected.run, expected.reason, expected.region)
    assert split.stats().inferred == inline.stats().inferred > 0
    assert split.stats().motion_us > 0


def test_a_one_pixel_camera_shake_is_not_motion() -> None:
    """Fine, strong texture (gravel, foliage) seen by a camera on a pole in the wind:
    every other frame is shifted by a pixel both ways."""
    rng = np.random.default_rng(2)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (244, 324, 3)).astype(np.float32), (0, 0), 1.0)
    texture = np.clip((texture - texture.mean()) * (60 / texture.std()) + 128, 0, 255)
    scene = texture.astype(np.uint8)
    shaken = []
    for index in range(40):
        shift = index % 2
        frame = scene[shift : shift + 240, shift : shift + 320].astype(np.float32)
        grain = rng.standard_normal(frame.shape, dtype=np.float32) * 2.0
        shaken.append(np.clip(frame + grain, 0, 255).astype(np.uint8))
    difference = np.abs(shaken[1].astype(int) - shaken[2].astype(int))
    assert float(np.mean(difference > MotionSection().threshold)) > 0.3  # half the pixels jump
    assert not any(r.moving for r in detect_all(shaken))
    # The shake is on the edge of what the defaults absorb: a sensitive setting sees it.
    assert any(r.moving for r in detect_all(shaken, MotionSection(threshold=10)))


@pytest.fixture(scope="module")
def camera_sized(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    """A 640x480 scene (a camera's usual size: the detector shrinks it 4:1 by picking
    32-bit words) with a circle crossing it."""
    path = tmp_path_factory.mktemp("motion") / "vga.avi"
    return make_scene(
        path, seed=9, script=[Appearance("circle", 0.5, 3.0)], duration_s=4, size=(640, 480)
    )


def not_contiguous(frame: np.ndarray) -> np.ndarray:
    """The same pixels as a view into a wider array (rows further apart)."""
    return np.pad(frame, ((0, 0), (0, 4), (0, 0)))[:, : frame.shape[1]]


def test_camera_sized_frames_shrink_to_the_same_pixels_either_way(camera_sized: Scene) -> None:
    """The word-picking shrink (contiguous BGR frames whose width is 4k times the
    processing width) sees exactly what the nearest-neighbour resize sees (any other
    frame): every result is the same, and the regions cover the circle."""
    detector = MotionDetector(MotionSection())
    picked = [detector.detect(frame) for frame in camera_sized.frames]
    assert detector._pick_step == 4, "640x480 frames did not take the word-picking path"
    resized = detect_all([not_contiguous(frame) for frame in camera_sized.frames])
    assert picked == resized
    shown = visible(camera_sized)
    assert all(picked[i].moving for i in shown[2:])
    for i in shown[2:]:
        box = camera_sized.box(i)
        assert box is not None and picked[i].union is not None
        assert contains(picked[i].union, box, TOLERANCE), (i, picked[i].union, box)


def test_a_mask_holds_on_camera_sized_frames(camera_sized: Scene) -> None:
    """The still-frame check (the largest difference, masks applied) and the full
    comparison agree: motion wholly under a mask is never reported."""
    everywhere = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    results = detect_all(camera_sized.frames, MotionSection(masks=(everywhere,)))
    assert not any(r.moving or r.fraction for r in results)
    right = ((0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0))
    results = detect_all(camera_sized.frames, MotionSection(masks=(right,)))
    assert any(r.moving for r in results)
    assert all(region.x_max <= 0.5 + 2 * TOLERANCE for r in results for region in r.regions)
