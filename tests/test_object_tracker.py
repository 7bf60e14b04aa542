"""ObjectTracker: one event per object, fed exact truth with flicker and jitter."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from device.config import EventSection
from device.detection.config import MotionSection, TrackerSection, ZoneSection
from device.detection.motion import MotionGate
from device.detection.objects import DetectedObject, NormBox
from device.detection.tracker import ObjectTracker, ObjectTransition
from device.detection.zones import Areas
from device.pipelines.lifecycle import EventTracker, Transition
from tests.helpers_scenes import FPS, T0, Scene, jittered, make_scene
from training.synthetic.shapes import SHAPE_LABELS, Appearance, VideoTruth, write_shapes_video


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def at(index: int) -> float:
    return T0 + index / FPS


def by_event(transitions: list[ObjectTransition]) -> dict[str, list[ObjectTransition]]:
    events: dict[str, list[ObjectTransition]] = defaultdict(list)
    for transition in transitions:
        events[transition.event_id].append(transition)
    return dict(events)


def longest_run(flags: list[bool]) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(flags) if k), default=0)


@pytest.fixture(scope="module")
def demo_truth(tmp_path_factory: pytest.TempPathFactory) -> VideoTruth:
    """The demo script's exact boxes: a circle, a square and a triangle crossing in turn."""
    path = tmp_path_factory.mktemp("tracker") / "demo.avi"
    return write_shapes_video(path, seed=11, size=(64, 48), fps=FPS)


def test_each_object_crossing_is_one_start_and_one_end_despite_flicker(
    demo_truth: VideoTruth,
) -> None:
    rng = np.random.default_rng(3)
    config = TrackerSection(min_frames=3, end_after_s=1.0, update_interval_s=1.0)
    tracker = ObjectTracker(config)
    out: list[ObjectTransition] = []
    dropped: list[bool] = []
    for index in range(demo_truth.frame_count):
        truth = demo_truth.box_at(index)
        objects = []
        if truth is not None:
            missed = bool(rng.random() < 0.25)  # the detector misses a quarter of frames
            dropped.append(missed)
            if not missed:
                objects.append(jittered(NormBox(*truth), demo_truth.label_at(index), rng, 0.03))
        if index % 7 == 3:  # an isolated false detection somewhere
            x, y = rng.uniform(0.0, 0.8, 2)
            label = str(rng.choice(SHAPE_LABELS[1:]))
            objects.append(DetectedObject(label, 0.5, NormBox(x, y, x + 0.1, y + 0.1)))
        out.extend(tracker.observe(objects, at(index), frame_index=index).transitions)
    out.extend(tracker.flush(at(demo_truth.frame_count)).transitions)
    # The flicker is real (gaps of several frames) but shorter than end_after_s.
    assert 3 <= longest_run(dropped) < 10

    events = list(by_event(out).values())
    assert [e[0].label for e in events] == [a.label for a in demo_truth.appearances]
    for event, appearance in zip(events, demo_truth.appearances, strict=True):
        kinds = [t.type for t in event]
        assert kinds[0] == "start" and kinds[-1] == "end"
        assert kinds.count("start") == 1 and kinds.count("end") == 1
        start, end = event[0], event[-1]
        assert T0 + appearance.start_s <= start.started_at <= T0 + appearance.start_s + 0.5
        assert start.captured_at - start.started_at >= 0.2  # min_frames = 3 looks
        last_seen = start.started_at + end.duration_s
        assert T0 + appearance.end_s - 0.6 <= last_seen < T0 + appearance.end_s
        assert end.captured_at == pytest.approx(last_seen + 1.0)  # end_after_s after it
        assert end.score == end.top_score == max(t.top_score for t in event)
        updates = [t.captured_at for t in event if t.type == "update"]
        assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(updates))
        assert len(updates) >= 2  # 4 s in view, an update a second at most


def lane(y: float, x_from: float, x_to: float, frames: int) -> list[NormBox]:
    """A 0.15-wide box moving along a horizontal lane."""
    return [NormBox(x, y, x + 0.15, y + 0.2) for x in np.linspace(x_from, x_to, frames).tolist()]


def test_two_objects_of_one_label_at_once_are_two_events() -> None:
    rng = np.random.default_rng(4)
    upper = lane(0.1, 0.0, 0.85, 60)  # frames 0..59, left to right
    lower = lane(0.6, 0.85, 0.0, 70)  # frames 20..89, right to left: they pass each other
    tracker = ObjectTracker(TrackerSection(min_frames=2, end_after_s=0.8))
    out: list[ObjectTransition] = []
    for index in range(100):
        objects = []
        if index < 60 and rng.random() > 0.2:
            objects.append(jittered(upper[index], "person", rng, 0.02))
        if 20 <= index < 90 and rng.random() > 0.2:
            objects.append(jittered(lower[index - 20], "person", rng, 0.02))
        rng.shuffle(objects)
        out.extend(tracker.observe(objects, at(index), frame_index=index).transitions)
    events = by_event(out)
    assert len(events) == 2
    for transitions in events.values():
        assert [t.type for t in transitions if t.type != "update"] == ["start", "end"]
        lanes = {round(t.box.centroid[1], 1) for t in transitions}
        assert len(lanes) == 1, "an event jumped from one object to the other"
    starts = sorted(t.started_at for t in out if t.type == "start")
    assert starts[0] < at(3) and at(20) <= starts[1] < at(24)


def test_timing_matches_the_classifier_tracker_when_every_frame_is_looked_at() -> None:
    """Same min_frames, end_after_s and update_interval_s semantics as lifecycle's."""
    rng = np.random.default_rng(5)
    patterns = [
        [None] * 5 + [0.6 + i / 100 for i in range(30)] + [None] * 20,
        [0.9, 0.9, None, 0.9, None, 0.9, 0.9, None, None, None],
        [0.8] * 10 + [None] * 5 + [0.7] * 10 + [None] * 15,
        [float(v) if v > 0.4 else None for v in rng.random(120)],
    ]
    box = NormBox(0.4, 0.4, 0.6, 0.6)
    for pattern in patterns:
        for min_frames, end_after_s, update_s in [(3, 1.0, 1.0), (2, 0.5, 0.0), (1, 0.0, 0.3)]:
            events = EventSection(
                min_frames=min_frames, end_after_s=end_after_s, update_interval_s=update_s
            )
            section = TrackerSection(
                min_frames=min_frames, end_after_s=end_after_s, update_interval_s=update_s
            )
            reference = EventTracker(events, clock=FixedClock(0.0))
            tracker = ObjectTracker(section)
            expected: list[Transition] = []
            got: list[ObjectTransition] = []
            for index, score in enumerate(pattern):
                scores = {} if score is None else {"cat": score}
                objects = [] if score is None else [DetectedObject("cat", score, box)]
                expected += reference.observe(scores, at(index))
                got += tracker.observe(objects, at(index), frame_index=index).transitions
            expected += reference.flush(at(len(pattern)))
            got += tracker.flush(at(len(pattern))).transitions

            def key(t: ObjectTransition | Transition) -> tuple[object, ...]:
                return (
                    t.type, t.score, t.top_score, t.started_at, t.captured_at,
                    round(t.duration_s, 9),
                )  # fmt: skip

            assert [key(t) for t in got] == [key(t) for t in expected], (pattern, min_frames)
            assert len({t.event_id for t in got}) == len({t.event_id for t in expected})


def test_frames_the_model_skipped_do_not_end_an_event() -> None:
    tracker = ObjectTracker(TrackerSection(min_frames=2, end_after_s=1.0, update_interval_s=0))
    car = DetectedObject("car", 0.9, NormBox(0.1, 0.1, 0.3, 0.3))
    out: list[ObjectTransition] = []
    for index in range(10):
        out += tracker.observe([car], at(index), frame_index=index).transitions
    assert [t.type for t in out] == ["start"]
    assert not tracker.needs_look(at(10))
    for index in range(10, 110):  # 10 s without a look: gated frames
        tracker.skip(at(index))
    step = tracker.observe([], at(110), frame_index=110)  # one look misses it
    assert step.transitions == () and tracker.open_events
    # The gate must look again until it is found or ended: not every frame, but once
    # recheck_interval_s (0.5 s) has passed since the last look.
    assert not tracker.needs_look(at(111)) and tracker.needs_look(at(115))
    for index in range(111, 115):
        assert tracker.observe([], at(index), frame_index=index).transitions == ()
    for index in range(115, 200):  # gated again, mid-absence: the clock stops
        tracker.skip(at(index))
    ends = []
    for index in range(200, 220):
        ends += [(index, t) for t in tracker.observe([], at(index), frame_index=index).transitions]
    # Looked-at absence: each looked-at frame since the last sighting (frame 9) adds its
    # own 0.1 s: frames 110..114, then 200..204 make the 1.0 s.
    assert [(i, t.type) for i, t in ends] == [(204, "end")]
    end = ends[0][1]
    assert end.duration_s == pytest.approx(at(9) - at(0))
    assert not tracker.open_events and not tracker.needs_look(at(221))


def _gated_run(
    tracker: ObjectTracker, sightings: dict[int, bool], frames: range, *, unchanged: bool
) -> tuple[list[int], list[tuple[int, str]]]:
    """Drive ``tracker`` as the motion gate does on a still scene: look when it asks,
    skip otherwise. Returns the frames looked at and the transitions (frame, type)."""
    car = DetectedObject("car", 0.9, NormBox(0.1, 0.1, 0.3, 0.3))
    looks: list[int] = []
    out: list[tuple[int, str]] = []
    for index in frames:
        if not tracker.needs_look(at(index)):
            tracker.skip(at(index), unchanged=unchanged)
            continue
        looks.append(index)
        seen = [car] if sightings.get(index, False) else []
        step = tracker.observe(seen, at(index), frame_index=index)
        out += [(index, t.type) for t in step.transitions]
    return looks, out


def test_a_missing_object_is_rechecked_at_intervals_and_ends_on_time() -> None:
    config = TrackerSection(min_frames=1, end_after_s=1.0, recheck_interval_s=0.5)
    tracker = ObjectTracker(config)
    car = DetectedObject("car", 0.9, NormBox(0.1, 0.1, 0.3, 0.3))
    for index in range(5):
        tracker.observe([car], at(index), frame_index=index)
    assert tracker.observe([], at(5), frame_index=5).transitions == ()  # missed once
    looks, out = _gated_run(tracker, {}, range(6, 40), unchanged=True)
    # Rechecks 0.5 s after the miss, then the look that completes the 1.0 s of absence
    # since frame 4 (the unchanged frames between count): not a look on every frame.
    assert looks == [10, 14]
    assert out == [(14, "end")] and not tracker.open_events

    # Found again at a recheck: the event goes on, and nothing more is asked for.
    tracker = ObjectTracker(config)
    for index in range(5):
        tracker.observe([car], at(index), frame_index=index)
    tracker.observe([], at(5), frame_index=5)
    looks, out = _gated_run(tracker, {10: True}, range(6, 40), unchanged=True)
    assert looks == [10] and out == [] and tracker.open_events

    # Skipped frames that the gate did not call unchanged are no evidence: looks alone
    # make the absence, so the rechecks go on past the 1.0 s.
    tracker = ObjectTracker(config)
    for index in range(5):
        tracker.observe([car], at(index), frame_index=index)
    tracker.observe([], at(5), frame_index=5)
    looks, out = _gated_run(tracker, {}, range(6, 40), unchanged=False)
    assert looks == [10, 15, 20, 25, 30, 35] and out == [] and tracker.open_events


def test_objects_outside_the_region_looked_at_are_not_missed() -> None:
    tracker = ObjectTracker(TrackerSection(min_frames=1, end_after_s=0.5))
    left = DetectedObject("dog", 0.8, NormBox(0.05, 0.4, 0.2, 0.6))
    right = DetectedObject("dog", 0.8, NormBox(0.7, 0.4, 0.9, 0.6))
    first = tracker.observe([left, right], at(0), frame_index=0)
    assert [t.type for t in first.transitions] == ["start", "start"]
    right_half = NormBox(0.5, 0.0, 1.0, 1.0)
    ended: list[ObjectTransition] = []
    for index in range(1, 40):  # the model runs on the right half only; both have gone
        ended += tracker.observe([], at(index), frame_index=index, region=right_half).transitions
    assert [t.box for t in ended] == [right.box]  # only the one it looked for
    assert len(tracker.open_events) == 1
    ended = []
    for index in range(40, 50):
        ended += tracker.observe([], at(index), frame_index=index).transitions
    assert [(t.type, t.box) for t in ended] == [("end", left.box)]


def test_zones_entered_and_required_zones() -> None:
    zones = {
        "porch": ZoneSection(points=((0.6, 0.0), (1.0, 0.0), (1.0, 1.0), (0.6, 1.0))),
        "path": ZoneSection(points=((0.3, 0.0), (0.6, 0.0), (0.6, 1.0), (0.3, 1.0))),
    }
    areas = Areas(zones=zones)
    walk = lane(0.4, 0.0, 0.85, 40)  # left to right through path, then porch
    plain = ObjectTracker(TrackerSection(min_frames=2, update_interval_s=0.0))
    strict = ObjectTracker(TrackerSection(min_frames=2), required_zones=("porch",))
    plain_out: list[ObjectTransition] = []
    strict_out: list[ObjectTransition] = []
    for index, box in enumerate(walk):
        placed = areas.place([DetectedObject("person", 0.9, box)])
        plain_out += plain.observe(placed, at(index), frame_index=index).transitions
        strict_out += strict.observe(placed, at(index), frame_index=index).transitions
    plain_out += plain.flush(at(41)).transitions
    strict_out += strict.flush(at(41)).transitions
    # update_interval_s = 0: the only updates are zone entries, one per zone.
    assert [(t.type, t.zones) for t in plain_out] == [
        ("start", ()),
        ("update", ("path",)),
        ("update", ("porch",)),
        ("end", ("porch",)),
    ]
    assert plain_out[-1].entered_zones == ("path", "porch")
    # Required zone: no event until the centre is in the porch; started_at is still the
    # first sighting.
    kinds = [t.type for t in strict_out]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    start = strict_out[0]
    assert start.zones == ("porch",) and start.box.centroid[0] >= 0.6
    assert start.started_at == at(0)

    never = ObjectTracker(TrackerSection(min_frames=1), required_zones=("porch",))
    for index, box in enumerate(walk[:15]):  # turns back before the porch
        assert never.observe(areas.place([DetectedObject("person", 0.9, box)]), at(index),
                             frame_index=index).transitions == ()  # fmt: skip
    assert never.flush(at(20)).transitions == ()


def test_best_frame_is_the_highest_score() -> None:
    tracker = ObjectTracker(TrackerSection(min_frames=2, end_after_s=0.0))
    scores = [0.5, 0.6, 0.9, 0.7, 0.8]
    improved: list[int] = []
    transitions: list[ObjectTransition] = []
    for index, score in enumerate(scores):
        box = NormBox(0.1 + index * 0.01, 0.1, 0.3 + index * 0.01, 0.3)
        step = tracker.observe([DetectedObject("cat", score, box)], at(index), frame_index=index)
        improved += [b.frame_index for b in step.improved]
        transitions += step.transitions
    step = tracker.observe([], at(5), frame_index=5)
    end = step.transitions[0]
    assert improved == [0, 1, 2]
    assert end.best.frame_index == 2 and end.best.score == 0.9
    assert end.best.captured_at == at(2) and end.best.box.x_min == pytest.approx(0.12)
    assert end.box.x_min == pytest.approx(0.14)  # the last box, not the best one
    assert step.closed == (end.event_id,)


def test_flush_ends_open_events_and_drops_pending_ones() -> None:
    clock = FixedClock(5000.0)
    tracker = ObjectTracker(TrackerSection(min_frames=2), clock=clock)
    a = DetectedObject("cat", 0.9, NormBox(0.0, 0.0, 0.2, 0.2))
    b = DetectedObject("cat", 0.9, NormBox(0.7, 0.7, 0.9, 0.9))
    tracker.observe([a], at(0), frame_index=0)
    tracker.observe([a, b], at(1), frame_index=1)  # a starts; b is pending
    assert tracker.needs_look(at(2))  # b awaits confirmation
    step = tracker.flush()
    assert [(t.type, t.captured_at) for t in step.transitions] == [("end", 5000.0)]
    assert len(step.closed) == 2 and tracker.tracked == 0
    again = tracker.observe([a], at(2), frame_index=2)
    assert again.transitions == () and tracker.tracked == 1  # a new object, pending


def test_duplicates_and_the_object_limit() -> None:
    tracker = ObjectTracker(TrackerSection(min_frames=1, max_objects=32))
    box = NormBox(0.4, 0.4, 0.6, 0.6)
    twice = [
        DetectedObject("cat", 0.9, box),
        DetectedObject("cat", 0.8, NormBox(0.41, 0.4, 0.6, 0.6)),
    ]
    step = tracker.observe(twice, at(0), frame_index=0)
    assert [t.type for t in step.transitions] == ["start"]  # one object reported twice
    grid = [
        DetectedObject("bird", 0.7, NormBox(x / 8, y / 8, x / 8 + 0.05, y / 8 + 0.05))
        for x in range(8)
        for y in range(5)
    ]
    tracker.observe([twice[0], *grid], at(1), frame_index=1)
    assert tracker.tracked == 32 and tracker.overflow == 40 - 31


def test_with_the_gate_a_crossing_is_one_event_and_few_model_runs(
    tmp_path: Path,
) -> None:
    """The gate and the tracker together, the 'model' being the scene's exact truth."""
    scene: Scene = make_scene(
        tmp_path / "cross.avi", seed=12, script=[Appearance("circle", 3.0, 6.0)],
        duration_s=14, size=(160, 120),
    )  # fmt: skip
    rng = np.random.default_rng(6)
    gate = MotionGate(MotionSection(keepalive_s=5.0))
    tracker = ObjectTracker(TrackerSection(min_frames=2, end_after_s=1.0))
    out: list[ObjectTransition] = []
    for index, frame in enumerate(scene.frames):
        tracking = tracker.needs_look(scene.at(index))
        decision = gate.decide(frame, scene.at(index), tracking=tracking)
        if not decision.run:
            tracker.skip(scene.at(index), unchanged=True)
            continue
        truth = scene.box(index)
        region = decision.region
        objects = []
        if truth is not None and (region is None or region.iou(truth) > 0) and rng.random() > 0.2:
            objects.append(jittered(truth, "circle", rng, 0.02))
        step = tracker.observe(objects, scene.at(index), frame_index=index, region=region)
        out += step.transitions
    assert [t.type for t in out if t.type != "update"] == ["start", "end"]
    stats = gate.stats()
    shown = sum(scene.box(i) is not None for i in range(len(scene.frames)))
    # The model ran while the circle moved, for the end's confirmation, and for
    # keep-alives: well under half of the 140 frames.
    assert stats.inferred < len(scene.frames) / 2
    # The end is confirmed by a look every recheck_interval_s, not on every frame.
    assert stats.motion >= shown and stats.keepalive >= 2 and 1 <= stats.tracking <= 4
    end = out[-1]
    assert end.captured_at - (end.started_at + end.duration_s) >= 1.0 - 1e-9
