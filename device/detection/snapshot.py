"""JPEG snapshots that never exceed a size cap, and the best frame of each event.

Everything edgewatch sends as a picture (an event's snapshot, the ``snapshot`` command's
frame, a kept hard example) goes through :func:`encode_snapshot`: a message larger than
the broker's limit is refused outright, and a Pi's uplink is often slow, so the cap is
a guarantee, not a hint. Quality is lowered first (cheap in what it loses), then size.

An event's snapshot shows the frame its object was seen best in (the tracker's
``BestFrame``). That frame may be long gone from the capture queue by the time the event
starts or ends, so :class:`SnapshotKeeper` keeps a copy, but only one per tracked object
and only what the snapshot will show: the crop around the object, already scaled down to
``max_width``. A frame is never kept whole "just in case".
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from device.detection.config import SnapshotSection
from device.detection.geometry import expand
from device.detection.objects import NormBox
from device.detection.tracker import BestFrame, TrackStep, TransitionType
from device.errors import SnapshotError

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]

#: Qualities below this look broken; size is reduced instead.
MIN_QUALITY = 20
#: Quality steps tried before reducing the size.
QUALITY_STEP = 15
#: Smallest image tried (its longer side) before giving up; a 16x16 JPEG is well under
#: the smallest cap the config allows (2048 bytes).
MIN_SIDE = 16


@dataclass(frozen=True)
class Snapshot:
    """An encoded JPEG and what it ended up as."""

    jpeg: bytes
    width: int
    height: int
    quality: int


def encode_snapshot(image: UInt8Image, max_width: int, quality: int, max_bytes: int) -> Snapshot:
    """JPEG of ``image`` no wider than ``max_width`` and never larger than ``max_bytes``.

    Tries ``quality``, then lower qualities in steps down to MIN_QUALITY, then smaller
    sizes at that quality (each step sized from how far over the cap the last try was)
    down to MIN_SIDE pixels on the longer side. Raises SnapshotError when even that
    does not fit.
    """
    if image.size == 0:
        raise SnapshotError("cannot encode an empty image")
    image = shrink_to_width(image, max_width)
    height, width = image.shape[:2]
    while True:
        data = _encode(image, quality)
        if len(data) <= max_bytes:
            return Snapshot(data, width, height, quality)
        if quality > MIN_QUALITY:
            quality = max(MIN_QUALITY, quality - QUALITY_STEP)
            continue
        side = max(width, height)
        if side <= MIN_SIDE:
            raise SnapshotError(
                f"a JPEG of this image does not fit in {max_bytes} bytes even at "
                f"{width}x{height} px and quality {quality}; raise the size cap"
            )
        # JPEG size grows roughly with the pixel count: aim a little under the cap, but
        # not below MIN_SIDE in one step.
        factor = min(0.8, max(0.25, 0.9 * math.sqrt(max_bytes / len(data)), MIN_SIDE / side))
        width = max(1, round(width * factor))
        height = max(1, round(height * factor))
        image = _resize(image, width, height)


def shrink_to_width(image: UInt8Image, max_width: int) -> UInt8Image:
    """``image`` scaled down (never up) to at most ``max_width`` wide, aspect kept."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image
    return _resize(image, max_width, max(1, round(height * max_width / width)))


def crop_box(image: UInt8Image, box: NormBox, margin: float) -> UInt8Image:
    """The part of ``image`` under ``box`` grown by ``margin`` (a view, not a copy)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = expand(box, margin).to_pixels(width, height)
    return image[y0:y1, x0:x1]


def _encode(image: UInt8Image, quality: int) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SnapshotError(
            f"OpenCV could not encode a {image.shape} {image.dtype} image as JPEG; "
            "a snapshot needs an 8-bit grey or BGR image"
        )
    return bytes(buffer.tobytes())


def _resize(image: UInt8Image, width: int, height: int) -> UInt8Image:
    return np.asarray(
        cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA), dtype=np.uint8
    )


@dataclass(frozen=True)
class EventSnapshot:
    """A snapshot due now, for one event's transition."""

    event_id: str
    label: str
    transition: TransitionType
    #: The frame it shows.
    best: BestFrame
    snapshot: Snapshot


class SnapshotKeeper:
    """Keeps each tracked object's best crop and encodes it when a transition wants it.

    Feed it every ``TrackStep`` the tracker returns (flushes included) with the frame
    that step came from; not thread-safe, one per pipeline.
    """

    def __init__(self, config: SnapshotSection) -> None:
        self.config = config
        self._kept: dict[str, UInt8Image] = {}
        #: Snapshots that could not be made (encoding failed); each is logged.
        self.failures = 0

    @property
    def kept(self) -> int:
        """Crops held now (one per tracked object with a best frame)."""
        return len(self._kept)

    @property
    def kept_bytes(self) -> int:
        return sum(image.nbytes for image in self._kept.values())

    def update(self, step: TrackStep, image: UInt8Image | None) -> tuple[EventSnapshot, ...]:
        """Keep the crops of this frame's new best sightings, return the snapshots the
        step's transitions call for (``on``), and let go of closed objects' crops.

        ``image`` is the frame ``step`` came from (None for a flush: nothing new is kept).
        """
        if not self.config.enabled:
            return ()
        if image is not None:
            for best in step.improved:
                self._kept[best.event_id] = self._crop(image, best.box)
        due = []
        for transition in step.transitions:
            if transition.type not in self.config.on:
                continue
            kept = self._kept.get(transition.event_id)
            if kept is None:
                log.debug("no frame kept for event %s; no snapshot", transition.event_id)
                continue
            try:
                snapshot = encode_snapshot(
                    kept, self.config.max_width, self.config.quality, self.config.max_bytes
                )
            except SnapshotError as exc:
                self.failures += 1
                log.warning("snapshot of event %s not made: %s", transition.event_id, exc)
                continue
            due.append(
                EventSnapshot(
                    transition.event_id,
                    transition.label,
                    transition.type,
                    transition.best,
                    snapshot,
                )
            )
        for event_id in step.closed:
            self._kept.pop(event_id, None)
        return tuple(due)

    def _crop(self, image: UInt8Image, box: NormBox) -> UInt8Image:
        """What the snapshot will show, as a compact copy (a view would pin the frame)."""
        region = image if self.config.full_frame else crop_box(image, box, self.config.margin)
        small = shrink_to_width(region, self.config.max_width)
        return np.ascontiguousarray(small) if small is not region else region.copy()
