"""EventTracker: debounce, bounded updates, gaps, independence of labels, flush."""

from __future__ import annotations

import itertools

from device.config import EventSection
from device.pipelines.lifecycle import EventTracker, Transition

FPS = 10.0


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


def play(
    tracker: EventTracker, frames: list[dict[str, float]], t0: float = 1000.0
) -> list[Transition]:
    out: list[Transition] = []
    for i, scores in enumerate(frames):
        out.extend(tracker.observe(scores, t0 + i / FPS))
    return out


def tracker(min_frames: int, end_after_s: float, update_interval_s: float) -> EventTracker:
    section = EventSection(
        min_frames=min_frames, end_after_s=end_after_s, update_interval_s=update_interval_s
    )
    return EventTracker(section, clock=FixedClock(0.0))


def test_thirty_frames_in_view_is_one_event_with_bounded_updates() -> None:
    t = tracker(min_frames=3, end_after_s=1.0, update_interval_s=1.0)
    frames: list[dict[str, float]] = (
        [{} for _ in range(5)]
        + [{"cat": 0.6 + i / 100} for i in range(30)]
        + [{} for _ in range(20)]
    )
    out = play(t, frames)
    kinds = [x.type for x in out]
    assert kinds.count("start") == 1
    assert kinds.count("end") == 1
    assert kinds[0] == "start" and kinds[-1] == "end"
    # 30 frames = 3 s in view, start after the 3rd frame: updates at +1 s and +2 s only.
    updates = [x for x in out if x.type == "update"]
    assert len(updates) == 2  # frames 17 and 27; frame 34 is under 1 s after 27
    assert len({x.event_id for x in out}) == 1
    start, end = out[0], out[-1]
    assert start.started_at == 1000.0 + 5 / FPS  # first frame of the run, not the 3rd
    assert start.captured_at == 1000.0 + 7 / FPS
    assert end.top_score == max(0.6 + i / 100 for i in range(30))
    assert end.score == end.top_score
    # In view from frame 5 to frame 34: 2.9 s; the end waits end_after_s after that.
    assert abs(end.duration_s - 2.9) < 1e-9
    assert abs(end.captured_at - (1000.0 + 34 / FPS + 1.0)) < 1e-9
    update_times = [u.captured_at for u in updates]
    assert all(b - a >= 1.0 - 1e-9 for a, b in itertools.pairwise(update_times))


def test_flicker_shorter_than_min_frames_makes_nothing() -> None:
    t = tracker(min_frames=3, end_after_s=0.5, update_interval_s=1.0)
    frames = [{"cat": 0.9}, {"cat": 0.9}, {}, {"cat": 0.9}, {}, {"cat": 0.9}, {"cat": 0.9}, {}]
    assert play(t, frames) == []
    assert t.open_labels == ()


def test_gap_shorter_than_end_after_does_not_split_the_event() -> None:
    t = tracker(min_frames=2, end_after_s=1.0, update_interval_s=0.0)
    frames = (
        [{"dog": 0.8}] * 10 + [{}] * 5 + [{"dog": 0.7}] * 10 + [{}] * 15  # 0.5 s gap < 1 s
    )
    out = play(t, frames)
    assert [x.type for x in out] == ["start", "end"]
    assert out[0].event_id == out[1].event_id
    assert abs(out[1].duration_s - 2.4) < 1e-9  # frames 0..24 in view


def test_gap_longer_than_end_after_makes_two_events() -> None:
    t = tracker(min_frames=2, end_after_s=1.0, update_interval_s=0.0)
    frames = [{"dog": 0.8}] * 10 + [{}] * 15 + [{"dog": 0.7}] * 10 + [{}] * 15
    out = play(t, frames)
    assert [x.type for x in out] == ["start", "end", "start", "end"]
    assert out[0].event_id != out[2].event_id


def test_two_labels_are_independent() -> None:
    t = tracker(min_frames=2, end_after_s=0.5, update_interval_s=0.0)
    frames = [{"cat": 0.9}] * 5 + [{"cat": 0.9, "dog": 0.8}] * 5 + [{"dog": 0.8}] * 10 + [{}] * 10
    out = play(t, frames)
    by_label = {label: [x for x in out if x.label == label] for label in ("cat", "dog")}
    assert [x.type for x in by_label["cat"]] == ["start", "end"]
    assert [x.type for x in by_label["dog"]] == ["start", "end"]
    assert by_label["cat"][0].event_id != by_label["dog"][0].event_id
    # cat ended while dog was still in view.
    assert by_label["cat"][1].captured_at < by_label["dog"][1].captured_at


def test_flush_ends_open_events_and_forgets_pending_runs() -> None:
    t = tracker(min_frames=3, end_after_s=5.0, update_interval_s=0.0)
    out = play(t, [{"cat": 0.9}] * 4 + [{"cat": 0.95, "dog": 0.6}])  # dog: 1 frame, pending
    assert [x.type for x in out] == ["start"]
    flushed = t.flush(now=2000.0)
    assert [(x.type, x.label) for x in flushed] == [("end", "cat")]
    assert flushed[0].captured_at == 2000.0
    assert flushed[0].top_score == 0.95
    assert t.open_labels == ()
    # The pending dog run was forgotten: two more frames do not start it (needs 3).
    assert t.observe({"dog": 0.6}, 2000.1) == []
    assert t.observe({"dog": 0.6}, 2000.2) == []
    assert [x.type for x in t.observe({"dog": 0.6}, 2000.3)] == ["start"]


def test_flush_without_now_uses_the_clock() -> None:
    clock = FixedClock(5000.0)
    t = EventTracker(EventSection(min_frames=1, end_after_s=1.0, update_interval_s=0.0), clock)
    t.observe({"cat": 0.9}, 4999.0)
    (end,) = t.flush()
    assert end.captured_at == 5000.0 and end.type == "end"


def test_timing_uses_capture_time_not_processing_speed() -> None:
    # Same frames, same timestamps: identical transitions however fast they arrive.
    frames = [{"cat": 0.9}] * 20 + [{}] * 30
    a = play(tracker(min_frames=2, end_after_s=1.0, update_interval_s=0.5), frames)
    b = play(tracker(min_frames=2, end_after_s=1.0, update_interval_s=0.5), frames)
    assert [(x.type, x.captured_at, x.duration_s) for x in a] == [
        (x.type, x.captured_at, x.duration_s) for x in b
    ]
    assert [x.type for x in a].count("update") == 3  # at +0.5, +1.0, +1.5 s after start
