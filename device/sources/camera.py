"""A camera, video file or network stream, read in its own thread.

Capture and preprocessing (resizing to the model's input) run in this thread while the
model runs in another, so on a multi-core Pi the two overlap instead of adding up. The
hand-over is a small queue: for a live source, when the consumer falls behind the
*oldest* frame is dropped and counted, because a camera must report what is in view now,
not what was there seconds ago. Frames beyond the fps cap are discarded with ``grab()``
and never ``retrieve()``d, so the cap saves the colour conversion and the preprocessing.

Files are read in one of two ways:

* paced (``realtime=True`` and ``fps > 0``): frames come at the file's own timestamps,
  thinned to the cap (a 10 fps file with ``fps = 5`` gives every other frame, 5 a second),
  and a slow consumer loses the oldest frames, exactly like a camera. This is the demo.
* unpaced (``realtime=False``, or ``fps = 0``): frames come as fast as the consumer takes
  them; none is ever dropped (the reader waits for room). For evaluation and benchmarks.

``Frame.captured_at`` is always the wall time the frame was grabbed: what events report
and what publish latency is measured from. ``Frame.timeline`` is the time debouncing
runs on: for a live source the same as ``captured_at``; for a file, the wall time
playback started plus the frame's position in the file (continued across loops), so an
unpaced reader gets a deterministic timeline and event timing does not depend on how
fast the machine is.

Failures never raise from the thread. A device or stream that cannot be opened or stops
delivering is retried with exponential backoff (status ``reconnecting``); a file that
does not exist or that OpenCV cannot decode is ``failed``. ``open_check()`` finds the
latter up front for the daemon and ``edgewatch check-config``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from device.config import CameraSource
from device.errors import SourceError
from device.sources.backoff import ExponentialBackoff

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
SourceStatus = Literal["starting", "running", "reconnecting", "stopped", "failed"]
#: The model's preprocessing run on the capture thread; None when the pipeline makes
#: its input on demand (a motion-gated detector skips most frames).
Preprocess = Callable[[UInt8Image], UInt8Image | None]

#: Used when a file does not state a usable frame rate.
FALLBACK_FILE_FPS = 30.0
#: A paced file that falls further behind than this is re-anchored instead of rushing.
MAX_PACING_LAG_S = 1.0
#: Network streams: OpenCV's FFmpeg timeouts, so a dead server cannot block a read forever.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 5_000


class Clock(Protocol):
    """What the stream needs from ``time``; tests can pass their own."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the stream uses; a fake camera implements this."""

    def isOpened(self) -> bool: ...  # noqa: N802 (OpenCV's name)

    def grab(self) -> bool: ...

    def retrieve(self) -> tuple[bool, Any]: ...

    def get(self, prop_id: int) -> float: ...

    def set(self, prop_id: int, value: float) -> bool: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[CameraSource], VideoCaptureLike]


def open_capture(config: CameraSource) -> VideoCaptureLike:
    """Open the OpenCV capture a camera config describes (the default capture factory)."""
    capture: VideoCaptureLike
    if config.device is not None:
        capture = cv2.VideoCapture(config.device)
        # Keep the driver's ring short so a grabbed frame is a recent one.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    elif config.url is not None:
        capture = cv2.VideoCapture(
            config.url,
            cv2.CAP_FFMPEG,
            [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_OPEN_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_READ_TIMEOUT_MS,
            ],
        )
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    else:
        capture = cv2.VideoCapture(str(config.file))
    return capture


def serial_opencv() -> int:
    """Make OpenCV's own functions single-threaded; returns the previous thread count.

    The daemon already overlaps work across threads (a capture thread per source, the
    interpreter's threads). OpenCV's internal parallel resize would compete with them
    for the same cores, so a frame's resize and the previous frame's inference would
    run one after the other again instead of side by side.
    """
    previous = int(cv2.getNumThreads())
    cv2.setNumThreads(1)
    return previous


@dataclass(frozen=True)
class Frame:
    """One captured frame on its way to a pipeline."""

    source: str
    #: Frames the source produced before this one, counting those the fps cap skipped:
    #: for a file played once it is the frame number in the file.
    index: int
    #: Unix time at which the frame was grabbed.
    captured_at: float
    #: The frame as decoded: BGR uint8, HxWx3.
    image: UInt8Image
    #: ``preprocess(image)`` when the stream has a preprocess function, else None.
    tensor: UInt8Image | None
    #: Unix time on the stream's own timeline (see the module docstring); debouncing
    #: uses it. Equal to ``captured_at`` for live sources.
    timeline: float


@dataclass(frozen=True)
class CameraStats:
    """A consistent snapshot of the stream's counters, for the stats message."""

    #: Frames handed to the queue.
    frames: int
    #: Frames dropped from a full queue because the consumer was slower.
    dropped: int
    #: Frames discarded by the fps cap (never decoded into an image).
    skipped: int
    #: Attempts to reopen the source after it failed to open or read.
    reconnects: int
    #: Frames handed to the queue per second, over the last few seconds.
    fps: float
    queue_depth: int
    status: SourceStatus
    detail: str


class _FrameQueue:
    """A bounded queue that can drop its oldest item or make the producer wait."""

    def __init__(self, size: int) -> None:
        self._items: deque[Frame] = deque()
        self._size = size
        self._cond = threading.Condition()
        self._closed = False

    def put_latest(self, frame: Frame) -> bool:
        """Add, dropping the oldest frame when full; True when one was dropped."""
        with self._cond:
            dropped = len(self._items) >= self._size
            if dropped:
                self._items.popleft()
            self._items.append(frame)
            self._cond.notify()
            return dropped

    def put_wait(self, frame: Frame) -> bool:
        """Add once there is room; False (frame not added) when the queue was closed."""
        with self._cond:
            while len(self._items) >= self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> Frame | None:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def close(self, discard: bool = False) -> None:
        """No more frames will come: wake everyone waiting on either side."""
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class CameraStream:
    """Reads one camera source in a background thread; see the module docstring.

    Typical use::

        stream = CameraStream("door", config, preprocess=pipeline.preprocess)
        stream.open_check()          # SourceError for a missing or undecodable file
        stream.start()
        while not stream.finished:
            frame = stream.get(timeout=0.5)
            if frame is not None:
                ...
        stream.stop()
    """

    def __init__(
        self,
        name: str,
        config: CameraSource,
        preprocess: Preprocess | None = None,
        clock: Clock = time,
        *,
        realtime: bool = True,
        capture_factory: CaptureFactory = open_capture,
        fps_window_s: float = 5.0,
    ) -> None:
        self.name = name
        self.config = config
        self.realtime = realtime
        self._preprocess = preprocess
        self._clock = clock
        self._factory = capture_factory
        self._fps_window_s = fps_window_s
        self._queue = _FrameQueue(config.queue_size)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._frames = 0
        self._dropped = 0
        self._skipped = 0
        self._reconnects = 0
        self._status: SourceStatus = "starting"
        self._detail = ""
        self._delivered_at: deque[float] = deque()
        self._started_mono = clock.monotonic()
        self._next_index = 0
        self._backoff = ExponentialBackoff(config.reconnect_min_s, config.reconnect_max_s)

    # -- public ----------------------------------------------------------------------------

    @property
    def description(self) -> str:
        """What the source is, safe to log (credentials in URLs are hidden)."""
        return self.config.describe()

    @property
    def is_file(self) -> bool:
        return self.config.file is not None

    @property
    def status(self) -> SourceStatus:
        with self._lock:
            return self._status

    @property
    def finished(self) -> bool:
        """True once no frame is waiting and none will come (end of file, failure, stop)."""
        return self._done.is_set() and len(self._queue) == 0

    def open_check(self) -> None:
        """Raise SourceError now for problems that retrying cannot fix.

        Only files are checked (exists, and OpenCV decodes a first frame): a camera that
        is not plugged in yet or a stream server that is down are retried once running.
        """
        if self.config.file is None:
            return
        path = self.config.file
        if not path.exists():
            raise SourceError(f"source {self.name}: video file {path} does not exist")
        if not path.is_file():
            raise SourceError(f"source {self.name}: {path} is not a file")
        capture = self._open()
        if capture is None:
            raise SourceError(
                f"source {self.name}: OpenCV cannot open {path}; is it a video in a format "
                "this OpenCV build decodes (try re-encoding it as H.264 .mp4 or MJPG .avi)?"
            )
        try:
            if not capture.grab():
                raise SourceError(f"source {self.name}: {path} holds no readable frame")
        finally:
            capture.release()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} was already started")
        self._started_mono = self._clock.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop reading, discard waiting frames and wait (bounded) for the thread.

        A read blocked inside OpenCV cannot be interrupted; network reads time out after
        STREAM_READ_TIMEOUT_MS, and the thread is a daemon thread, so a stuck driver can
        delay its exit but never hangs shutdown beyond ``timeout_s``.
        """
        self._stop.set()
        self._queue.close(discard=True)  # after stop() nobody wants the waiting frames
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning(
                    "source %s: capture thread is still blocked in a read after %.1f s; "
                    "it will exit when the read returns",
                    self.name,
                    timeout_s,
                )
        with self._lock:
            if self._status != "failed":
                self._status = "stopped"
                self._detail = self._detail or "stopped"
        self._done.set()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The oldest waiting frame, or None after ``timeout`` s or once ``finished``."""
        return self._queue.get(timeout)

    def stats(self) -> CameraStats:
        now = self._clock.monotonic()
        with self._lock:
            horizon = now - self._fps_window_s
            while self._delivered_at and self._delivered_at[0] < horizon:
                self._delivered_at.popleft()
            span = min(self._fps_window_s, now - self._started_mono)
            fps = len(self._delivered_at) / span if span > 0 else 0.0
            return CameraStats(
                frames=self._frames,
                dropped=self._dropped,
                skipped=self._skipped,
                reconnects=self._reconnects,
                fps=fps,
                queue_depth=len(self._queue),
                status=self._status,
                detail=self._detail,
            )

    # -- the capture thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            log.exception("source %s: the capture thread failed", self.name)
            self._set_status("failed", "internal error in the capture thread; see the log")
        finally:
            self._done.set()
            self._queue.close()

    def _serve(self) -> None:
        retrying = False
        # File timeline: where the current pass starts, relative to the anchors.
        anchor_wall = self._clock.time()
        anchor_mono = self._clock.monotonic()
        pass_offset_s = 0.0
        while not self._stop.is_set():
            if self.config.file is not None and not self.config.file.is_file():
                self._fail(f"video file {self.config.file} does not exist")
                return
            if retrying:
                with self._lock:
                    self._reconnects += 1
            capture = self._open()
            if capture is None:
                if self.is_file:
                    self._fail(f"OpenCV cannot open {self.description}")
                    return
                retrying = True
                if self._wait_retry(f"cannot open {self.description}"):
                    return
                continue
            try:
                if self.config.file is None:
                    self._read_live(capture)
                    retrying = True
                    if not self._stop.is_set() and self._wait_retry(
                        f"lost {self.description} (read failed)"
                    ):
                        return
                    continue
                pass_frames, pass_duration, anchor_wall, anchor_mono = self._read_file(
                    capture, anchor_wall, anchor_mono, pass_offset_s
                )
            finally:
                capture.release()
            if self._stop.is_set():
                return
            if pass_frames == 0:
                self._fail(f"{self.description} holds no readable frame")
                return
            if not self.config.loop:
                self._set_status("stopped", f"end of {self.description}")
                log.info("source %s: end of %s", self.name, self.description)
                return
            pass_offset_s += pass_duration

    def _open(self) -> VideoCaptureLike | None:
        try:
            capture = self._factory(self.config)
        except (cv2.error, OSError) as exc:
            log.debug("source %s: opening failed: %s", self.name, exc)
            return None
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _wait_retry(self, problem: str) -> bool:
        """Back off before the next attempt; True when stop() was called meanwhile."""
        delay = self._backoff.next_delay()
        self._set_status("reconnecting", f"{problem}; retrying in {delay:.1f} s")
        log.warning("source %s: %s; retrying in %.1f s", self.name, problem, delay)
        return self._stop.wait(delay)

    def _read_live(self, capture: VideoCaptureLike) -> None:
        """Read until the source fails or stop(); every frame is grabbed to keep the
        driver's buffer fresh, only the ones the cap keeps are decoded."""
        period = 1.0 / self.config.fps if self.config.fps > 0 else 0.0
        next_due = self._clock.monotonic()
        running = False
        while not self._stop.is_set():
            if not capture.grab():
                return
            now = self._clock.monotonic()
            captured_at = self._clock.time()
            index = self._next_index
            self._next_index += 1
            if not running:
                running = True
                self._backoff.reset()
                self._set_status("running", self.description)
            if period:
                if now < next_due:
                    with self._lock:
                        self._skipped += 1
                    continue
                next_due += period
                if next_due < now - period:
                    next_due = now + period  # after a stall: do not burst to catch up
            self._emit(capture, index, captured_at, captured_at, wait=False)

    def _read_file(
        self,
        capture: VideoCaptureLike,
        anchor_wall: float,
        anchor_mono: float,
        offset_s: float,
    ) -> tuple[int, float, float, float]:
        """One pass over the file; returns frames read, the pass's duration in seconds
        and the (possibly re-anchored) wall and monotonic anchors."""
        file_fps = capture.get(cv2.CAP_PROP_FPS)
        if not math.isfinite(file_fps) or not 0 < file_fps <= 1000:
            log.warning(
                "source %s: %s states no usable frame rate (%s); assuming %.0f fps",
                self.name,
                self.description,
                file_fps,
                FALLBACK_FILE_FPS,
            )
            file_fps = FALLBACK_FILE_FPS
        frame_period = 1.0 / file_fps
        cap_period = 1.0 / self.config.fps if self.config.fps > 0 else 0.0
        paced = self.realtime and self.config.fps > 0
        # Frame times are multiples of the frame period; the slack absorbs float error.
        slack = 0.25 * frame_period
        next_due = 0.0
        count = 0
        while not self._stop.is_set():
            if not capture.grab():
                break
            position = count * frame_period
            count += 1
            index = self._next_index
            self._next_index += 1
            if count == 1:
                self._backoff.reset()
                self._set_status("running", self.description)
            if cap_period:
                if position + slack < next_due:
                    with self._lock:
                        self._skipped += 1
                    continue
                next_due += cap_period
                if next_due < position - cap_period:
                    next_due = position + cap_period
            timeline = offset_s + position
            if paced:
                lag = self._clock.monotonic() - (anchor_mono + timeline)
                if lag < 0:
                    if self._stop.wait(-lag):
                        break
                elif lag > MAX_PACING_LAG_S:
                    # Decoding is slower than the file: move the schedule rather than
                    # report ever older capture times.
                    anchor_mono += lag
                    anchor_wall += lag
                    log.debug("source %s: %.2f s behind the file; re-anchored", self.name, lag)
            self._emit(capture, index, self._clock.time(), anchor_wall + timeline, wait=not paced)
        return count, count * frame_period, anchor_wall, anchor_mono

    def _emit(
        self,
        capture: VideoCaptureLike,
        index: int,
        captured_at: float,
        timeline: float,
        wait: bool,
    ) -> None:
        ok, decoded = capture.retrieve()
        if not ok or not isinstance(decoded, np.ndarray):
            log.debug("source %s: frame %d grabbed but not decodable; skipped", self.name, index)
            return
        image: UInt8Image = decoded
        tensor = self._preprocess(image) if self._preprocess is not None else None
        frame = Frame(
            source=self.name,
            index=index,
            captured_at=captured_at,
            image=image,
            tensor=tensor,
            timeline=timeline,
        )
        if wait:
            if not self._queue.put_wait(frame):
                return
            dropped = False
        else:
            dropped = self._queue.put_latest(frame)
        now = self._clock.monotonic()
        with self._lock:
            self._frames += 1
            if dropped:
                self._dropped += 1
            self._delivered_at.append(now)
            if len(self._delivered_at) > 4096:
                self._delivered_at.popleft()

    def _set_status(self, status: SourceStatus, detail: str) -> None:
        with self._lock:
            changed = status != self._status
            self._status = status
            self._detail = detail
        if changed:
            log.info("source %s: %s (%s)", self.name, status, detail)

    def _fail(self, detail: str) -> None:
        self._set_status("failed", detail)
        log.error("source %s: %s", self.name, detail)
