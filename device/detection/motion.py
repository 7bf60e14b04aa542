"""Motion detection and the gate that decides, per frame, whether the model runs.

On a Pi the detector is the expensive part of a camera pipeline (tens of milliseconds a
frame), and most of the time a fixed camera looks at a scene where nothing happens.
:class:`MotionDetector` answers "did anything move, and where?" for a fraction of a
millisecond, and :class:`MotionGate` turns that into "run the model now, on this
region" or "skip this frame".

The detector keeps a **running-average background** (``cv2.accumulateWeighted``) of a
small, blurred grey copy of the frame and reports the pixels that differ from it by
more than ``threshold``. Chosen over the alternatives because:

* plain frame differencing (this frame minus the previous one) sees only the edges of
  a moving object and almost nothing of a slow one: a person walking away from the
  camera changes few pixels from one frame to the next. Against a background that
  remembers the empty scene, the whole object stands out for as long as it moves;
* a mixture-of-Gaussians model (``cv2.createBackgroundSubtractorMOG2``) keeps several
  models per pixel and costs about fifteen times the running average's compare and
  update at 160x120 (240 us against 14 us of CPU on the project's test machine), for a
  gain (multi-modal backgrounds such as waving trees) that masks give for nothing.

What a real camera adds, and how each is handled:

* **sensor grain** and compression noise: the frame is shrunk and then blurred
  before comparing (grain of 8 grey levels becomes under 1), and regions smaller than
  ``min_area`` are dropped. The shrink is bilinear: OpenCV's area averaging would
  smooth a little more but costs five times as much at 640x480, more than the rest
  of the detector together, and the blur makes up the difference;
* **slow light changes** (sunrise, clouds, auto-exposure creeping): the background
  follows the scene at ``background_alpha`` per frame, and each frame's overall gain
  relative to the background (the median of their pixel ratios, which a moving
  object covering less than half the frame does not move) is divided out before
  comparing, so a uniform brightening is never motion;
* **sudden light changes** (a lamp switched on, the camera's IR mode): when more than
  ``lighting_change`` of the frame changes at once, the background is reset to the
  new frame and the frame is reported as a lighting change, not motion.

A running average absorbs an object that stops (it becomes background after about
``ln(contrast / threshold) / background_alpha`` frames); that is what the gate's
keep-alive is for.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from device.detection.config import MotionSection
from device.detection.geometry import expand, union_of
from device.detection.objects import NormBox
from device.detection.zones import rasterise

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatImage = np.ndarray[Any, np.dtype[np.float32]]
BoolImage = np.ndarray[Any, np.dtype[np.bool_]]
#: Rows and columns of the processing frame.
Area = tuple[slice, slice]

#: A motion region larger than this share of the frame is not worth cropping to: the
#: gate asks for the whole frame instead (the crop would still cost over half of a
#: whole-frame run, and a whole-frame look restarts the keep-alive).
WHOLE_FRAME_ABOVE = 0.5
#: Pixels that differ from the background learn this much slower than still ones.
MOVING_ALPHA_FACTOR = 0.25
#: A pixel that differs from the background but has not changed from frame to frame
#: for this many frames is a "ghost" (where an object was, or where one stopped): not
#: motion any more, and learnt GHOST_ALPHA_FACTOR times faster than still pixels, so a
#: departed object stops waking the model within a second instead of fading for many.
GHOST_FRAMES = 5
GHOST_ALPHA_FACTOR = 4.0
#: Overall gain corrections outside this range are lighting changes, not drift.
_GAIN_RANGE = (0.5, 2.0)
#: Pixels sampled (every n-th row and column) to estimate the gain.
_GAIN_STRIDE = 4


@dataclass(frozen=True)
class MotionResult:
    """What moved in one frame."""

    #: At least one region of at least ``min_area`` outside the masks.
    moving: bool
    #: The moving regions (each a connected area of changed pixels), largest first.
    regions: tuple[NormBox, ...]
    #: The smallest box holding every region; None when nothing moved.
    union: NormBox | None
    #: Share of the unmasked frame that differs from the background (all changes,
    #: including regions too small to count).
    fraction: float
    #: The background was reset because most of the frame changed at once.
    lighting_change: bool = False
    #: The first frame (or the first after a reset): nothing to compare against yet.
    warming_up: bool = False


class MotionDetector:
    """Running-average background subtraction on a small grey frame.

    Not thread-safe; one per pipeline (it holds that camera's background).
    """

    def __init__(self, config: MotionSection) -> None:
        self.config = config
        self._background: FloatImage | None = None
        self._input_shape: tuple[int, ...] = ()
        self._size = (0, 0)
        self._unmasked: BoolImage | None = None
        self._unmasked_pixels = 0
        self._kernel: FloatImage = cv2.getGaussianKernel(5, 0).astype(np.float32)
        self._dilate: UInt8Image = np.ones((3, 3), dtype=np.uint8)
        self._min_pixels = 0.0
        #: The previous (prepared) frame, and for how many frames each pixel has not
        #: changed from one frame to the next (ghosts: see GHOST_FRAMES).
        self._previous: FloatImage | None = None
        self._steady: UInt8Image | None = None
        #: Work buffers for the prepared frame, reused from frame to frame (see
        #: ``_configure``); two grey frames, since the previous one is kept.
        self._pick_step = 0
        self._picked: UInt8Image | None = None
        self._small: UInt8Image | None = None
        self._greys: tuple[FloatImage, FloatImage] | None = None
        self._grey_index = 0
        self._unmasked_u8: UInt8Image | None = None
        #: Frames looked at and the time spent on them (perf_counter seconds).
        self.frames = 0
        self.seconds = 0.0

    @property
    def mean_us(self) -> float:
        """Mean time per frame so far, in microseconds."""
        return self.seconds / self.frames * 1e6 if self.frames else 0.0

    def reset(self) -> None:
        """Forget the background (the next frame starts afresh): after the camera moved,
        or its settings changed."""
        self._background = None
        self._previous = None
        self._steady = None

    def detect(self, image: UInt8Image, frames: int = 1) -> MotionResult:
        """Compare ``image`` (BGR or grey, any size) with the background, then fold it in.

        ``frames``: how many frames this look stands for (the gate's idle rate skips
        some unchecked): the background learns as much as it would have over them.
        """
        started = time.perf_counter()
        try:
            return self._detect(image, self._alpha(frames))
        finally:
            self.frames += 1
            self.seconds += time.perf_counter() - started

    def _alpha(self, frames: int) -> float:
        """``background_alpha`` compounded over ``frames`` frames."""
        alpha = self.config.background_alpha
        return alpha if frames <= 1 else 1.0 - (1.0 - alpha) ** frames

    def _detect(self, image: UInt8Image, alpha: float) -> MotionResult:
        if image.shape != self._input_shape:
            self._configure(image.shape)
        grey = self._prepare(image)
        background = self._background
        if background is None:
            self._background = grey.copy()
            return MotionResult(False, (), None, 0.0, warming_up=True)

        # The common case on a fixed camera, kept to one compare (the largest
        # difference: no pixel over the threshold) and the update. The per-pixel
        # steadiness counts are left as they are (not advanced): no pixel differs from
        # the background, and the first frame that has some compares with this one
        # (kept as the previous frame) before counting.
        largest = cv2.norm(grey, background, cv2.NORM_INF, mask=self._unmasked_u8)
        if largest <= self.config.threshold:
            cv2.accumulateWeighted(grey, background, alpha)
            self._previous = grey
            return MotionResult(False, (), None, 0.0)
        steady = self._track_steady(grey)
        # Something changed; it may be the light: compare with the frame's overall
        # gain divided out.
        gain = self._gain(grey, background)
        compared = grey if gain == 1.0 else grey * np.float32(gain)
        changed = self._changed(compared, background)
        fraction = float(np.count_nonzero(changed)) / self._unmasked_pixels
        if fraction > self.config.lighting_change:
            log.debug("motion: %.0f%% of the frame changed at once; reset", fraction * 100)
            self._background = grey.copy()
            return MotionResult(False, (), None, fraction, lighting_change=True)
        if fraction == 0.0:  # a brightening that explained every change
            cv2.accumulateWeighted(grey, background, alpha)
            return MotionResult(False, (), None, 0.0)
        # The rest looks only at the box around the changed pixels (grown by the
        # dilation's reach): an object in a still scene covers a small part of the
        # frame, and the labelling and the per-pixel bookkeeping cost what they cover.
        area = self._around(changed)
        changed_here = changed[area]
        grown = cv2.dilate(changed_here.view(np.uint8), self._dilate)
        # Grana's block-based labelling: the same components as OpenCV's default, at
        # under half its cost with statistics on (OpenCV 4.x and 5.x alike).
        count, labels, stats, _centroids = cv2.connectedComponentsWithStatsWithAlgorithm(
            grown, 8, cv2.CV_32S, cv2.CCL_GRANA
        )
        # A region is moving when some of its changed pixels changed lately; one whose
        # changed pixels have all held still for GHOST_FRAMES is a ghost (or an object
        # that stopped: the keep-alive re-checks those).
        fresh = np.logical_and(changed_here, steady[area] < GHOST_FRAMES)
        alive = np.zeros(count, dtype=bool)
        alive[labels[fresh]] = True
        alive[0] = False
        ghosts: BoolImage | None = None
        if not alive[1:].all():
            ghosts = np.logical_and(changed_here, np.logical_not(alive[labels]))
        self._learn(grey, background, changed, area, ghosts=ghosts, alpha=alpha)
        return self._regions(stats, alive, fraction, (area[1].start, area[0].start))

    # -- steps --------------------------------------------------------------------------

    def _configure(self, shape: tuple[int, ...]) -> None:
        """Sizes, kernels and the rasterised masks for frames of this shape."""
        height, width = shape[:2]
        proc_width = min(self.config.width, width)
        proc_height = max(1, round(height * proc_width / width))
        self._input_shape = shape
        self._size = (proc_width, proc_height)
        # Kernels scale with the processing width, so a wider setting sees finer
        # detail without seeing more grain per region.
        blur = max(3, (proc_width // 32) | 1)
        self._kernel = cv2.getGaussianKernel(blur, 0).astype(np.float32)
        dilate = max(3, (proc_width // 50) | 1)
        self._dilate = np.ones((dilate, dilate), dtype=np.uint8)
        self._min_pixels = self.config.min_area * proc_width * proc_height
        if self.config.masks:
            self._unmasked = rasterise(self.config.masks, proc_width, proc_height) == 0
            self._unmasked_pixels = max(1, int(np.count_nonzero(self._unmasked)))
            self._unmasked_u8 = self._unmasked.view(np.uint8)
        else:
            self._unmasked = None
            self._unmasked_pixels = proc_width * proc_height
            self._unmasked_u8 = None
        self._pick_step = _word_pick_step(shape, proc_width)
        self._picked = (
            np.empty((proc_height, proc_width, 4), dtype=np.uint8) if self._pick_step else None
        )
        self._small = np.empty((proc_height, proc_width), dtype=np.uint8)
        self._greys = (
            np.empty((proc_height, proc_width), dtype=np.float32),
            np.empty((proc_height, proc_width), dtype=np.float32),
        )
        self._background = None
        self._previous = None
        self._steady = None
        log.debug("motion: %dx%d frames compared at %dx%d", width, height, *self._size)

    def _prepare(self, image: UInt8Image) -> FloatImage:
        """The frame shrunk (nearest pixel), grey and blurred, in a reused buffer.

        In a camera pipeline this runs just after the frame was decoded, with the
        caches full of the decoder's data, where each pass over memory and each fresh
        buffer costs more than the arithmetic: the shrink and the grey conversion are
        one pass that picks the kept pixels' bytes and one conversion of the small
        frame where the frame allows (see ``_pick_words``), and every output lands in a
        buffer made once.
        """
        assert self._small is not None and self._greys is not None
        small: Any = image
        if self._pick_step and image.dtype == np.uint8 and image.flags.c_contiguous:
            small = self._pick_words(image)
        else:
            if (image.shape[1], image.shape[0]) != self._size:
                small = cv2.resize(image, self._size, interpolation=cv2.INTER_NEAREST)
            if small.ndim == 3:
                small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY, dst=self._small)
        # The Gaussian as two 1-D passes straight into float32: a quarter cheaper than
        # GaussianBlur on uint8 plus the conversion, and no rounding to whole grey
        # levels. (A box blur is cheaper still but smears a small object's contrast
        # under the threshold: a 2-px moth at min_area 0 went unseen.) The two grey
        # buffers alternate: the previous frame's is kept for ``_track_steady``.
        self._grey_index ^= 1
        out = self._greys[self._grey_index]
        cv2.sepFilter2D(small, cv2.CV_32F, self._kernel, self._kernel, dst=out)
        return out

    def _pick_words(self, image: UInt8Image) -> UInt8Image:
        """Every ``step``-th pixel of every ``step``-th row of a BGR frame, grey.

        With ``step`` a multiple of 4, the pixels kept start on 4-byte boundaries, so
        with each row viewed as 4-byte words (four-channel pixels to OpenCV), a
        nearest-neighbour resize of that view keeps each wanted pixel's three bytes
        (and one byte of its neighbour, which the BGRA-to-grey conversion ignores):
        the same pixels as a nearest-neighbour resize of the frame, at about half its
        cost with the grey conversion, and a third less than numpy's strided copy of
        the same words (on freshly decoded 640x480 frames).
        """
        assert self._picked is not None and self._small is not None
        height, width = image.shape[:2]
        words = image.reshape(height, width * 3 // 4, 4)
        cv2.resize(words, self._size, dst=self._picked, interpolation=cv2.INTER_NEAREST)
        return np.asarray(cv2.cvtColor(self._picked, cv2.COLOR_BGRA2GRAY, dst=self._small))

    def _changed(self, grey: FloatImage, background: FloatImage) -> BoolImage:
        """Pixels differing from the background by more than the threshold, masks off."""
        changed: BoolImage = cv2.absdiff(grey, background) > self.config.threshold
        if self._unmasked is not None:
            np.logical_and(changed, self._unmasked, out=changed)
        return changed

    def _gain(self, grey: FloatImage, background: FloatImage) -> float:
        """How much brighter the whole frame is than the background (1: the same).

        The median of per-pixel ratios on a sparse grid: a uniform change moves every
        ratio alike, an object moves only the ratios it covers.
        """
        frame = grey[::_GAIN_STRIDE, ::_GAIN_STRIDE]
        base = background[::_GAIN_STRIDE, ::_GAIN_STRIDE]
        ratios = ((base + 1.0) / (frame + 1.0)).ravel()
        # The middle element by partition: np.median does the same plus NaN checks,
        # and its first call imports numpy.ma (tens of ms in the middle of a stream).
        middle = ratios.size // 2
        ratio = float(np.partition(ratios, middle)[middle])
        if not math.isfinite(ratio) or not _GAIN_RANGE[0] <= ratio <= _GAIN_RANGE[1]:
            return 1.0
        return ratio

    def _track_steady(self, grey: FloatImage) -> UInt8Image:
        """Per pixel, how many frames in a row (saturating at 255) it has stayed within
        half the threshold of what it was in the previous frame."""
        previous, steady = self._previous, self._steady
        self._previous = grey
        if previous is None or steady is None or previous.shape != grey.shape:
            self._steady = np.zeros(grey.shape, dtype=np.uint8)
            return self._steady
        still = (cv2.absdiff(grey, previous) <= self.config.threshold / 2.0).view(np.uint8)
        cv2.add(steady, still, dst=steady)  # uint8: saturates at 255
        np.multiply(steady, still, out=steady)  # a pixel that changed starts again at 0
        return steady

    def _learn(
        self,
        grey: FloatImage,
        background: FloatImage,
        changed: BoolImage,
        area: Area,
        *,
        ghosts: BoolImage | None,
        alpha: float,
    ) -> None:
        """Fold the frame into the background: still pixels at ``alpha``, moving ones
        MOVING_ALPHA_FACTOR times slower (a slowly moving object is not absorbed while
        it still overlaps itself), ghosts GHOST_ALPHA_FACTOR times faster (what is left
        where an object was is forgotten soon). ``area`` holds every changed pixel;
        ``ghosts`` covers it (None: there are none)."""
        still = np.logical_not(changed).view(np.uint8)
        cv2.accumulateWeighted(grey, background, alpha, mask=still)
        grey, background, changed = grey[area], background[area], changed[area]
        moving = changed if ghosts is None else np.logical_and(changed, np.logical_not(ghosts))
        slow = alpha * MOVING_ALPHA_FACTOR
        cv2.accumulateWeighted(grey, background, slow, mask=moving.view(np.uint8))
        if ghosts is not None:
            fast = min(1.0, alpha * GHOST_ALPHA_FACTOR)
            cv2.accumulateWeighted(grey, background, fast, mask=ghosts.view(np.uint8))

    def _around(self, changed: BoolImage) -> Area:
        """The rows and columns holding every changed pixel, and every pixel the
        dilation grows them into."""
        x, y, w, h = cv2.boundingRect(changed.view(np.uint8))
        reach = self._dilate.shape[0] // 2
        height, width = changed.shape
        rows = slice(max(0, y - reach), min(height, y + h + reach))
        return rows, slice(max(0, x - reach), min(width, x + w + reach))

    def _regions(
        self,
        stats: np.ndarray[Any, Any],
        alive: np.ndarray[Any, Any],
        fraction: float,
        origin: tuple[int, int],
    ) -> MotionResult:
        """Moving regions from the changed pixels' components (``stats`` of the area
        whose top-left pixel is ``origin``): the ones still moving (``alive``), at least
        ``min_area`` large."""
        width, height = self._size
        left, top = origin
        found: list[tuple[int, NormBox]] = []
        for index in np.flatnonzero(alive).tolist():
            x, y, w, h, area = stats[index].tolist()
            if area < self._min_pixels or area == 0:
                continue
            x, y = x + left, y + top
            box = NormBox(x / width, y / height, (x + w) / width, (y + h) / height)
            found.append((area, box))
        if not found:
            return MotionResult(False, (), None, fraction)
        found.sort(key=lambda item: item[0], reverse=True)
        regions = tuple(box for _area, box in found)
        return MotionResult(True, regions, union_of(regions), fraction)


def _word_pick_step(shape: tuple[int, ...], proc_width: int) -> int:
    """The integer shrink step ``_pick_words`` can use for frames of ``shape`` (BGR,
    width a multiple of ``proc_width`` by a multiple of 4); 0 when it cannot."""
    if len(shape) != 3 or shape[2] != 3:
        return 0
    width = shape[1]
    if width % proc_width:
        return 0
    step = width // proc_width
    return step if step >= 4 and step % 4 == 0 else 0


# -- the gate ---------------------------------------------------------------------------

#: Why the model runs on a frame: "motion"; "tracking" (the tracker has objects waiting
#: to be confirmed, or missed, that need another look); "keepalive" (the whole frame
#: has not been looked at for keepalive_s, or it is the first frame); "ungated" (motion
#: gating is off). "still": the model does not run.
GateReason = Literal["motion", "tracking", "keepalive", "ungated", "still"]


@dataclass(frozen=True)
class GateDecision:
    """Whether the model runs on this frame, and on what part of it."""

    run: bool
    reason: GateReason
    #: Where to run it: the moving regions' union, grown by ``region_margin``; None is
    #: the whole frame. Meaningless when ``run`` is False.
    region: NormBox | None
    #: The motion detector's view of this frame: None when gating is off, or when the
    #: frame was skipped unchecked at the idle rate (``idle_fps``).
    motion: MotionResult | None


#: The decision for a frame skipped without a motion check (most frames of an idle
#: camera): made once, as it never differs.
_SKIPPED_UNCHECKED = GateDecision(False, "still", None, None)


@dataclass(frozen=True)
class GateStats:
    """Counts since the gate was made, for the stats topic."""

    frames: int
    #: Frames the model ran on, and the part of those that were the whole frame.
    inferred: int
    whole_frame: int
    #: Frames the model skipped, and those of them skipped without even a motion
    #: check (the idle rate, ``idle_fps``).
    gated: int
    unchecked: int
    #: Why the model ran (they add up to ``inferred``).
    motion: int
    tracking: int
    keepalive: int
    ungated: int
    #: Frames reported as a lighting change.
    lighting_changes: int
    #: Mean time the motion detector took per frame it checked, in microseconds.
    motion_us: float

    @property
    def gated_fraction(self) -> float:
        return self.gated / self.frames if self.frames else 0.0


class MotionGate:
    """Decides per frame whether the model runs; one per pipeline, not thread-safe.

    The policy, in order:

    1. gating off (``enabled = false``): every frame, whole frame;
    2. motion outside the masks: run on the moving regions' union grown by
       ``region_margin`` (the whole frame when that is over half the frame, or when
       rule 3 or 4 also holds, since those need the whole frame);
    3. the tracker asks for a look (``tracking=True``: an object seen but not yet
       confirmed, or an event whose object was missing at the last look and is due a
       recheck; see ``ObjectTracker.needs_look``): whole frame. Without this an event
       could never end while nothing moves, and an object that walked in and stood
       still would never be confirmed;
    4. keep-alive: the whole frame was last looked at ``keepalive_s`` ago or more (or
       never): whole frame, so objects that stopped moving, which the background has
       absorbed, are still seen and their events kept open;
    5. otherwise the frame is skipped.

    **Idle rate.** While the scene is idle (nothing moved at the last check and the
    caller says nothing is being followed: ``idle=True``), motion is checked at most
    ``idle_fps`` times a second and the frames between are skipped unchecked (rule 4
    still applies to them). A camera at 15 or 30 fps then costs, while nothing
    happens, what one at ``idle_fps`` would; the price is that motion is noticed up to
    1/``idle_fps`` s later. As soon as a check finds motion, or the caller follows an
    object, every frame is checked again.

    Times are the frames' timeline (capture) times, like the tracker's. ``decide``
    runs the motion detector itself; a caller that ran ``gate.detector.detect`` earlier
    (in the capture thread, say) hands its result to ``decide_motion`` instead.
    """

    def __init__(self, config: MotionSection) -> None:
        self.config = config
        self.detector = MotionDetector(config)
        self._last_whole_at: float | None = None
        self._counts: dict[GateReason, int] = dict.fromkeys(
            ("motion", "tracking", "keepalive", "ungated", "still"), 0
        )
        self._frames = 0
        self._whole = 0
        self._lighting = 0
        self._unchecked = 0
        #: When motion was last checked, whether it found any, and the frames since.
        self._checked_at: float | None = None
        self._moved = False
        self._since_check = 0

    def decide(
        self,
        image: UInt8Image,
        captured_at: float,
        *,
        tracking: bool = False,
        idle: bool = False,
    ) -> GateDecision:
        """Look at one frame; the caller runs the model when ``run`` (and tells the
        tracker about the frame either way: ``observe`` or ``skip``).

        ``idle``: the caller follows no object, so the frame may be skipped without a
        motion check when the idle rate allows (see the class notes).
        """
        if not self.config.enabled:
            return self.decide_motion(None, captured_at, tracking=tracking)
        self._since_check += 1
        if idle and not tracking and self._may_skip_check(captured_at):
            return self._unchecked_frame(captured_at)
        motion = self.detector.detect(image, frames=self._since_check)
        self._checked_at, self._moved, self._since_check = captured_at, motion.moving, 0
        return self.decide_motion(motion, captured_at, tracking=tracking)

    def _may_skip_check(self, captured_at: float) -> bool:
        """Idle rate: nothing moved at the last check, made less than 1/idle_fps ago."""
        rate, last = self.config.idle_fps, self._checked_at
        if rate <= 0 or last is None or self._moved or captured_at < last:
            return False
        return captured_at - last < 1.0 / rate

    def _keepalive_due(self, captured_at: float) -> bool:
        """The whole frame was never looked at, last looked at ``keepalive_s`` ago or
        more, or the clock went back."""
        last, keepalive = self._last_whole_at, self.config.keepalive_s
        if last is None or captured_at < last:
            return True
        return keepalive > 0 and captured_at - last >= keepalive

    def _unchecked_frame(self, captured_at: float) -> GateDecision:
        self._frames += 1
        if self._keepalive_due(captured_at):
            return self._run("keepalive", None, None, captured_at)
        self._counts["still"] += 1
        self._unchecked += 1
        return _SKIPPED_UNCHECKED

    def decide_motion(
        self, motion: MotionResult | None, captured_at: float, *, tracking: bool = False
    ) -> GateDecision:
        """The same decision from a motion result computed elsewhere (None when gating
        is off)."""
        self._frames += 1
        if not self.config.enabled or motion is None:
            return self._run("ungated", None, None, captured_at)
        if motion.lighting_change:
            self._lighting += 1
        keepalive_due = self._keepalive_due(captured_at)
        if motion.moving and motion.union is not None:
            region: NormBox | None = None
            if not (tracking or keepalive_due):
                grown = expand(motion.union, self.config.region_margin)
                region = None if grown.area > WHOLE_FRAME_ABOVE else grown
            return self._run("motion", region, motion, captured_at)
        if tracking:
            return self._run("tracking", None, motion, captured_at)
        if keepalive_due:
            return self._run("keepalive", None, motion, captured_at)
        self._counts["still"] += 1
        return GateDecision(False, "still", None, motion)

    def stats(self) -> GateStats:
        counts = self._counts
        inferred = self._frames - counts["still"]
        return GateStats(
            frames=self._frames,
            inferred=inferred,
            whole_frame=self._whole,
            gated=counts["still"],
            unchecked=self._unchecked,
            motion=counts["motion"],
            tracking=counts["tracking"],
            keepalive=counts["keepalive"],
            ungated=counts["ungated"],
            lighting_changes=self._lighting,
            motion_us=self.detector.mean_us,
        )

    def _run(
        self,
        reason: GateReason,
        region: NormBox | None,
        motion: MotionResult | None,
        captured_at: float,
    ) -> GateDecision:
        self._counts[reason] += 1
        if region is None:
            self._whole += 1
            self._last_whole_at = captured_at
        return GateDecision(True, reason, region, motion)
