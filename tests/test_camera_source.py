"""CameraStream over real video files, a missing camera device, and a fake camera that
fails mid-stream (the only stand-in: no camera hardware exists here)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from device.config import CameraSource
from device.errors import SourceError
from device.sources.camera import CameraStream, Frame, UInt8Image

STEP = 6  # grey level per frame index: frame i is a flat image of level i * STEP


def write_counting_video(path: Path, frames: int, fps: float) -> Path:
    """An MJPG .avi whose frame i is a flat grey of level i * STEP (survives JPEG)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * STEP, dtype=np.uint8))
    writer.release()
    return path


def level(frame: Frame) -> int:
    return round(float(frame.image.mean()) / STEP)


def drain(stream: CameraStream, limit: int = 10_000, timeout_s: float = 10.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while not stream.finished and len(frames) < limit and time.monotonic() < deadline:
        frame = stream.get(timeout=0.2)
        if frame is not None:
            frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def video20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_counting_video(tmp_path_factory.mktemp("v") / "count20.avi", 20, 10.0)


def test_unpaced_file_yields_every_frame_in_order(video20: Path) -> None:
    threads: set[str] = set()

    def preprocess(image: UInt8Image) -> UInt8Image:
        threads.add(threading.current_thread().name)
        return np.ascontiguousarray(image[::6, ::8])  # an 8x8 thumbnail

    config = CameraSource(file=video20, fps=0, queue_size=2)
    stream = CameraStream("file", config, preprocess=preprocess, realtime=False)
    stream.open_check()
    stream.start()
    frames = drain(stream)
    stream.stop()
    assert [f.index for f in frames] == list(range(20))
    assert [level(f) for f in frames] == list(range(20))
    assert all(f.tensor is not None and f.tensor.shape == (8, 8, 3) for f in frames)
    assert threads == {"camera-file"}  # preprocessing ran in the capture thread
    # The timeline follows the file's own 10 fps, not the reading speed; capture times
    # are when the frames were really read.
    assert np.allclose(np.diff([f.timeline for f in frames]), 0.1)
    assert all(f.captured_at <= time.time() for f in frames)
    stats = stream.stats()
    assert (stats.frames, stats.dropped, stats.skipped) == (20, 0, 0)
    assert stats.status == "stopped" and stream.finished


def test_fps_cap_halves_a_10fps_file(video20: Path) -> None:
    stream = CameraStream("half", CameraSource(file=video20, fps=5), realtime=False)
    stream.start()
    frames = drain(stream)
    stream.stop()
    assert [f.index for f in frames] == list(range(0, 20, 2))
    assert [level(f) for f in frames] == list(range(0, 20, 2))
    assert stream.stats().skipped == 10


def test_paced_file_plays_in_real_time(tmp_path: Path) -> None:
    video = write_counting_video(tmp_path / "ten.avi", 10, 10.0)
    stream = CameraStream("paced", CameraSource(file=video, fps=5, queue_size=8))
    start = time.monotonic()
    stream.start()
    frames = drain(stream)
    elapsed = time.monotonic() - start
    stream.stop()
    assert [f.index for f in frames] == [0, 2, 4, 6, 8]
    assert elapsed >= 0.75  # frame 8 is due 0.8 s after frame 0
    assert np.allclose(np.diff([f.timeline for f in frames]), 0.2)
    # Paced, a frame is read when it is due: capture times follow the timeline.
    assert np.allclose(np.diff([f.captured_at for f in frames]), 0.2, atol=0.05)


def test_loop_repeats_the_file(tmp_path: Path) -> None:
    video = write_counting_video(tmp_path / "five.avi", 5, 10.0)
    stream = CameraStream("loop", CameraSource(file=video, fps=0, loop=True), realtime=False)
    stream.start()
    frames = drain(stream, limit=13)
    stream.stop()
    assert [f.index for f in frames] == list(range(13))
    assert [level(f) for f in frames] == [i % 5 for i in range(13)]
    assert np.all(np.diff([f.timeline for f in frames]) > 0)  # timeline continues
    assert stream.status == "stopped"


def test_slow_consumer_loses_the_oldest_frames_and_sees_the_latest(tmp_path: Path) -> None:
    video = write_counting_video(tmp_path / "fast.avi", 20, 20.0)
    stream = CameraStream("slow", CameraSource(file=video, fps=20, queue_size=2))
    stream.start()
    got: list[Frame] = []
    while not stream.finished:
        frame = stream.get(timeout=0.5)
        if frame is not None:
            got.append(frame)
            time.sleep(0.25)  # a model five times slower than the camera
    stream.stop()
    stats = stream.stats()
    indices = [f.index for f in got]
    assert indices == sorted(indices)
    assert indices[-1] == 19  # the last frame was not the one dropped
    assert stats.frames == 20
    assert stats.dropped == 20 - len(got) > 0


def test_missing_file_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    stream = CameraStream("gone", CameraSource(file=missing))
    with pytest.raises(SourceError, match="does not exist"):
        stream.open_check()
    stream.start()
    assert stream.get(timeout=2.0) is None
    assert stream.finished
    stats = stream.stats()
    assert stats.status == "failed" and str(missing) in stats.detail
    stream.stop()
    assert stream.stats().status == "failed"  # stop does not hide the failure


def test_undecodable_file_is_refused_up_front(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"cannot open|no readable frame"):
        CameraStream("bogus", CameraSource(file=bogus)).open_check()


def test_missing_camera_device_reconnects_with_backoff() -> None:
    config = CameraSource(device=99, reconnect_min_s=0.05, reconnect_max_s=0.2)
    stream = CameraStream("cam99", config)
    stream.start()
    time.sleep(1.0)
    stats = stream.stats()
    assert stats.status == "reconnecting"
    assert "camera device 99" in stats.detail
    # Delays 0.05, 0.1, 0.2, 0.2, ... (jitter takes up to a quarter off): 3 to 12 tries.
    assert 3 <= stats.reconnects <= 12
    assert stats.frames == 0
    started = time.monotonic()
    stream.stop()
    assert time.monotonic() - started < 2.0
    assert stream.finished and stream.stats().status == "stopped"


class FlakyCamera:
    """A camera device that delivers file frames and dies after ``fail_after`` grabs."""

    def __init__(self, path: Path, fail_after: int | None) -> None:
        self._capture = cv2.VideoCapture(str(path))
        self._fail_after = fail_after
        self.grabs = 0

    def isOpened(self) -> bool:  # noqa: N802
        return bool(self._capture.isOpened())

    def grab(self) -> bool:
        time.sleep(0.01)  # a 100 fps camera
        if self._fail_after is not None and self.grabs >= self._fail_after:
            return False
        self.grabs += 1
        if not self._capture.grab():  # loop the file forever, like a live view
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            return bool(self._capture.grab())
        return True

    def retrieve(self) -> tuple[bool, Any]:
        ok, image = self._capture.retrieve()
        return bool(ok), image

    def get(self, prop_id: int) -> float:
        return float(self._capture.get(prop_id))

    def set(self, prop_id: int, value: float) -> bool:
        return True

    def release(self) -> None:
        self._capture.release()


def test_camera_failing_mid_stream_reconnects_and_continues(video20: Path) -> None:
    opened: list[FlakyCamera] = []

    def factory(config: CameraSource) -> FlakyCamera:
        camera = FlakyCamera(video20, fail_after=5 if not opened else None)
        opened.append(camera)
        return camera

    config = CameraSource(device=0, fps=0, queue_size=64, reconnect_min_s=0.05)
    stream = CameraStream("flaky", config, capture_factory=factory)
    stream.start()
    frames = drain(stream, limit=12)
    stream.stop()
    assert len(opened) == 2
    assert stream.stats().reconnects == 1
    assert [f.index for f in frames] == list(range(12))  # numbering continues
    assert [level(f) for f in frames] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]
    # The gap where the camera was away shows in the capture times.
    gaps = np.diff([f.captured_at for f in frames])
    assert gaps[4] >= 0.04 and gaps[4] > 2 * np.median(gaps)


def test_stop_is_prompt_while_pacing_and_while_the_queue_is_full(tmp_path: Path) -> None:
    video = write_counting_video(tmp_path / "long.avi", 40, 10.0)
    paced = CameraStream("p", CameraSource(file=video, fps=0.5))  # a frame every 2 s
    blocked = CameraStream("b", CameraSource(file=video, fps=0, queue_size=1), realtime=False)
    paced.start()
    blocked.start()
    assert paced.get(timeout=2.0) is not None
    time.sleep(0.3)  # blocked: queue full, the reader waits for room
    for stream in (paced, blocked):
        started = time.monotonic()
        stream.stop()
        assert time.monotonic() - started < 2.0
        assert stream.finished


def test_stream_credentials_never_reach_logs_or_stats(caplog: pytest.LogCaptureFixture) -> None:
    class Unreachable(FlakyCamera):
        def __init__(self) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802
            return False

        def release(self) -> None:
            pass

    config = CameraSource(url="rtsp://admin:hunter2@127.0.0.1:8554/door", reconnect_min_s=0.05)
    stream = CameraStream("door", config, capture_factory=lambda _c: Unreachable())
    with caplog.at_level(logging.DEBUG):
        stream.start()
        time.sleep(0.3)
        stats = stream.stats()
        stream.stop()
    assert stats.status == "reconnecting" and "***@127.0.0.1" in stats.detail
    assert caplog.records and not any("hunter2" in r.getMessage() for r in caplog.records)
    assert "hunter2" not in stats.detail


def test_shapes_video_plays_completely(tmp_path: Path) -> None:
    shapes = pytest.importorskip("training.synthetic.shapes")
    truth = shapes.write_shapes_video(
        tmp_path / "shapes.avi",
        seed=3,
        size=(160, 120),
        fps=10,
        script=(shapes.Appearance("circle", 0.5, 1.5),),
    )
    stream = CameraStream(
        "shapes", CameraSource(file=tmp_path / "shapes.avi", fps=0), realtime=False
    )
    stream.start()
    frames = drain(stream)
    stream.stop()
    assert len(frames) == truth.frame_count
    assert frames[0].image.shape == (120, 160, 3)
