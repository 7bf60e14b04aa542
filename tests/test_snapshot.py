"""Snapshots: the size cap always holds, crops are right, one kept copy per object."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from device.detection.config import SnapshotSection, TrackerSection
from device.detection.objects import DetectedObject, NormBox
from device.detection.snapshot import (
    EventSnapshot,
    SnapshotKeeper,
    crop_box,
    encode_snapshot,
    shrink_to_width,
)
from device.detection.tracker import ObjectTracker
from device.errors import SnapshotError

Image = np.ndarray[Any, np.dtype[np.uint8]]


def decode(jpeg: bytes) -> Image:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable JPEG"
    return np.asarray(image, dtype=np.uint8)


@pytest.fixture(scope="module")
def noise() -> Image:
    """The worst case for JPEG: 1920x1080 of uniform noise (about 3 MB at quality 95)."""
    return np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)


@pytest.mark.parametrize("max_bytes", [8_000, 50_000, 400_000])
def test_large_noisy_frames_stay_under_the_cap(noise: Image, max_bytes: int) -> None:
    snapshot = encode_snapshot(noise, max_width=1920, quality=95, max_bytes=max_bytes)
    assert len(snapshot.jpeg) <= max_bytes
    image = decode(snapshot.jpeg)
    assert image.shape == (snapshot.height, snapshot.width, 3)
    assert snapshot.width < 1920  # noise this size never fits at full width
    assert abs(snapshot.height / snapshot.width - 1080 / 1920) < 0.02  # aspect kept


def test_quality_is_lowered_before_the_size(noise: Image) -> None:
    tile = noise[:120, :160]
    full = encode_snapshot(tile, max_width=160, quality=95, max_bytes=10**7)
    assert (full.width, full.quality) == (160, 95)
    lowered = encode_snapshot(tile, max_width=160, quality=95, max_bytes=len(full.jpeg) - 1)
    assert lowered.width == 160 and lowered.quality < 95


def test_max_width_scales_down_and_never_up(noise: Image) -> None:
    assert encode_snapshot(noise, max_width=320, quality=80, max_bytes=10**7).width == 320
    small = noise[:50, :40]
    assert encode_snapshot(small, max_width=320, quality=80, max_bytes=10**7).width == 40
    assert shrink_to_width(small, 320) is small


def test_an_impossible_cap_is_an_error_that_says_what_to_do(noise: Image) -> None:
    with pytest.raises(SnapshotError, match="raise the size cap"):
        encode_snapshot(noise, max_width=1920, quality=90, max_bytes=200)
    with pytest.raises(SnapshotError, match="empty"):
        encode_snapshot(noise[:0], max_width=64, quality=90, max_bytes=10_000)


def scene_with_red_box(box: NormBox, size: tuple[int, int] = (640, 480)) -> Image:
    width, height = size
    rng = np.random.default_rng(1)
    image = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    image[..., 2] //= 2  # little red in the background
    x0, y0, x1, y1 = box.to_pixels(width, height)
    image[y0:y1, x0:x1] = (0, 0, 255)
    return image


def test_crop_is_the_box_with_its_margin() -> None:
    box = NormBox(0.25, 0.5, 0.5, 0.75)  # 160x120 px of a 640x480 frame at (160, 240)
    image = scene_with_red_box(box)
    tight = crop_box(image, box, 0.0)
    assert tight.shape == (120, 160, 3)
    assert (tight == (0, 0, 255)).all()
    wide = crop_box(image, box, 0.5)  # 80 px more each side horizontally, 60 vertically
    assert wide.shape == (240, 320, 3)
    assert (wide[60:180, 80:240] == (0, 0, 255)).all()
    assert (wide[:60] != (0, 0, 255)).any(axis=-1).all()
    # At the frame's edge the margin grows inwards only.
    corner = NormBox(0.9, 0.9, 1.0, 1.0)
    assert crop_box(scene_with_red_box(corner), corner, 1.0).shape == (96, 128, 3)


def test_the_event_snapshot_shows_the_best_frame_cropped() -> None:
    """Each frame has its own background brightness; the best-scoring one is the snapshot."""
    config = SnapshotSection(enabled=True, max_width=64, margin=0.0, max_bytes=8_000)
    keeper = SnapshotKeeper(config)
    tracker = ObjectTracker(TrackerSection(min_frames=2, end_after_s=0.0, update_interval_s=0))
    scores = [0.6, 0.7, 0.95, 0.8, 0.75]
    box = NormBox(0.25, 0.25, 0.75, 0.75)
    due: list[EventSnapshot] = []
    for index, score in enumerate(scores):
        frame = np.full((480, 640, 3), 40 * (index + 1), dtype=np.uint8)  # 40, 80, 120, ...
        step = tracker.observe([DetectedObject("cat", score, box)], float(index), frame_index=index)
        due += keeper.update(step, frame)
        assert keeper.kept == 1  # one crop for the one object, whatever the frame count
        assert keeper.kept_bytes == 64 * 48 * 3  # the crop at max_width, not the frame
    step = tracker.observe([], 5.0, frame_index=5)
    due += keeper.update(step, np.zeros((480, 640, 3), np.uint8))
    assert [s.transition for s in due] == ["start", "end"]
    start, end = due
    # At the start (frame 1) the best so far was frame 1; at the end, frame 2 (score 0.95).
    assert start.best.frame_index == 1 and end.best.frame_index == 2
    assert float(decode(start.snapshot.jpeg).mean()) == pytest.approx(80, abs=2)
    assert float(decode(end.snapshot.jpeg).mean()) == pytest.approx(120, abs=2)
    assert (end.snapshot.width, end.snapshot.height) == (64, 48)  # the 320x240 crop, scaled
    assert all(len(s.snapshot.jpeg) <= 8_000 for s in due)
    assert keeper.kept == 0  # the ended event's crop was let go


def test_crops_are_released_for_objects_that_never_start_and_on_flush() -> None:
    keeper = SnapshotKeeper(SnapshotSection(enabled=True, on=("end",)))
    tracker = ObjectTracker(TrackerSection(min_frames=3))
    frame = np.full((240, 320, 3), 90, dtype=np.uint8)
    a = DetectedObject("cat", 0.9, NormBox(0.0, 0.0, 0.2, 0.2))
    b = DetectedObject("dog", 0.9, NormBox(0.6, 0.6, 0.9, 0.9))
    assert keeper.update(tracker.observe([a, b], 0.0, frame_index=0), frame) == ()
    assert keeper.kept == 2
    keeper.update(tracker.observe([a], 0.1, frame_index=1), frame)  # b is gone: dropped
    assert keeper.kept == 1
    started = keeper.update(tracker.observe([a], 0.2, frame_index=2), frame)
    assert started == ()  # on = ["end"] only
    flushed = keeper.update(tracker.flush(10.0), None)
    assert [(s.transition, s.label) for s in flushed] == [("end", "cat")]
    assert keeper.kept == 0


def test_full_frame_snapshots_and_disabled_keeper() -> None:
    tracker = ObjectTracker(TrackerSection(min_frames=1))
    frame = scene_with_red_box(NormBox(0.1, 0.1, 0.2, 0.2), size=(1280, 720))
    step = tracker.observe([DetectedObject("cat", 0.9, NormBox(0.1, 0.1, 0.2, 0.2))], 0.0,
                           frame_index=0)  # fmt: skip
    whole = SnapshotKeeper(SnapshotSection(enabled=True, full_frame=True, max_width=320))
    (snapshot,) = whole.update(step, frame)
    assert (snapshot.snapshot.width, snapshot.snapshot.height) == (320, 180)
    off = SnapshotKeeper(SnapshotSection())
    assert off.update(step, frame) == () and off.kept == 0


def test_the_smallest_allowed_cap_always_fits(noise: Image) -> None:
    """A tall, narrow strip of noise: shrinking only to 16 px wide would not be enough."""
    strip = np.ascontiguousarray(np.tile(noise[:, :16], (4, 1, 1)))  # 16 x 4320 px
    cap = SnapshotSection.model_fields["max_bytes"].metadata[0].ge
    snapshot = encode_snapshot(strip, max_width=640, quality=95, max_bytes=cap)
    assert len(snapshot.jpeg) <= cap
    assert decode(snapshot.jpeg).shape[0] == snapshot.height > snapshot.width
