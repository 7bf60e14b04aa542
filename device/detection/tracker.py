"""From per-frame detected objects to one event per object: start, updates, end.

A classifier's tracker (device/pipelines/lifecycle.py) has one event per label; a
detector sees several things at once, two people among them, so here each *object* is
followed across frames: a detection continues the tracked object of its label whose box
it overlaps or whose centre it is near, and is otherwise a new object. The timing rules
are lifecycle's, per object:

* an object becomes an event after ``min_frames`` consecutive looks found it (a
  one-frame false detection is noise); ``started_at`` is the first of them;
* while it stays, at most one update every ``update_interval_s``, plus one whenever it
  enters a zone it had not been in during this event;
* it ends once it has gone unseen for ``end_after_s``, so a detection missed for a
  frame or two (flicker) does not split it in two.

**Looked-at time.** With motion gating the model does not run on every frame, and a
frame it did not run on says nothing about whether an object is still there. So absence
is counted only over frames the model looked at: an object's absence is the time since
it was last seen minus the intervals of the frames that did not look at it (frames the
model skipped, :meth:`ObjectTracker.skip`, and frames where the model ran on a region
that did not hold the object's last position); a frame's interval is the time since the
frame before it. Every frame must therefore reach the tracker, through ``observe`` or
``skip``. When the model looks at every frame this is exactly lifecycle's rule: the
event ends on the first frame at least ``end_after_s`` after the object was last seen.

One kind of skipped frame does count as absence: an *unchanged* one (the motion gate
found nothing moving anywhere) while the object is *missing* (the last look at its place
did not find it). Nothing has moved since that look, so the model would see the same
picture and miss it again. This is what lets the gate look again only every
``recheck_interval_s`` instead of on every frame while an event waits to end
(:meth:`ObjectTracker.needs_look`), and still end it on time: it asks for the look that
completes ``end_after_s``.

**Association**, per label: each pair of a detection and a tracked object that overlap
by ``match_iou`` or whose centres are within ``match_distance`` is a candidate; pairs
are taken cheapest first (cost: 1 - IoU + centre distance), each detection and object
at most once. A leftover detection that overlaps a matched one by half or more is the
same object reported twice and is dropped; any other leftover is a new object.

All times are the frames' timeline (capture) times, never the time of processing.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from device.detection.config import TrackerSection
from device.detection.objects import DetectedObject, NormBox
from device.detection.zones import PlacedObject

log = logging.getLogger(__name__)

TransitionType = Literal["start", "update", "end"]
TrackState = Literal["pending", "waiting", "open"]

#: A leftover detection overlapping a matched one of its label this much is a duplicate.
DUPLICATE_IOU = 0.5


class WallClock(Protocol):
    def time(self) -> float: ...


@dataclass(frozen=True)
class BestFrame:
    """The frame an object was seen best in (highest score): what its snapshot shows."""

    event_id: str
    #: The frame's ``Frame.index`` and timeline time, to find it again.
    frame_index: int
    captured_at: float
    score: float
    box: NormBox


@dataclass(frozen=True)
class ObjectTransition:
    """One change in an object's event, ready to become an MQTT ``Event``.

    Fields mean what they mean in ``lifecycle.Transition``: ``score`` is this frame's
    score for start and update, the event's best for end; ``duration_s`` runs from
    ``started_at`` to this frame for start and update, and to the last frame the object
    was seen in for end (the ``end_after_s`` wait not included).
    """

    type: TransitionType
    event_id: str
    label: str
    score: float
    top_score: float
    #: The last box the object was seen with.
    box: NormBox
    #: Zones its centre is in now (at its last sighting), in config order.
    zones: tuple[str, ...]
    #: Every zone it has been in during this event, in the order entered.
    entered_zones: tuple[str, ...]
    #: Timeline time of the first frame the object was seen in.
    started_at: float
    #: Timeline time of the frame that caused this transition (for flush: ``now``).
    captured_at: float
    duration_s: float
    best: BestFrame


@dataclass(frozen=True)
class TrackStep:
    """What one frame (or a flush) did to the tracked objects."""

    transitions: tuple[ObjectTransition, ...] = ()
    #: Objects whose best frame is this frame (not yet started ones included), so a
    #: snapshot keeper can keep a copy of it.
    improved: tuple[BestFrame, ...] = ()
    #: Ids of the objects no longer tracked (ended, or dropped before they started), so
    #: whatever was kept for them can be let go.
    closed: tuple[str, ...] = ()


class _Changes:
    """What one frame changes, collected while the tracker works through it."""

    __slots__ = ("closed", "improved", "transitions")

    def __init__(self) -> None:
        self.transitions: list[ObjectTransition] = []
        self.improved: list[BestFrame] = []
        self.closed: list[str] = []

    def step(self) -> TrackStep:
        return TrackStep(tuple(self.transitions), tuple(self.improved), tuple(self.closed))


class _Track:
    """One followed object (mutable, private to the tracker)."""

    __slots__ = (
        "best",
        "box",
        "entered",
        "event_id",
        "first_seen_at",
        "hits",
        "label",
        "last_emit_at",
        "last_looked_at",
        "last_seen_at",
        "missed",
        "score",
        "state",
        "top_score",
        "unlooked_s",
        "zones",
    )

    def __init__(self, seen: PlacedObject, captured_at: float, frame_index: int) -> None:
        self.event_id = str(uuid.uuid4())
        self.label = seen.label
        self.state: TrackState = "pending"
        self.box = seen.box
        self.score = seen.score
        self.top_score = seen.score
        self.zones = seen.zones
        self.entered: list[str] = list(seen.zones)
        self.first_seen_at = captured_at
        self.last_seen_at = captured_at
        self.last_emit_at = captured_at
        self.hits = 1
        #: Seconds since last seen that the model did not look at it (skipped frames,
        #: or the model ran on a region elsewhere).
        self.unlooked_s = 0.0
        #: A look since it was last seen did not find it.
        self.missed = False
        #: When the model last looked at where it was (found or not).
        self.last_looked_at = captured_at
        self.best = BestFrame(self.event_id, frame_index, captured_at, seen.score, seen.box)


class ObjectTracker:
    """Follows detected objects across frames; one per pipeline, not thread-safe."""

    def __init__(
        self,
        config: TrackerSection,
        *,
        required_zones: Sequence[str] = (),
        clock: WallClock = time,
    ) -> None:
        self.config = config
        self.required_zones = frozenset(required_zones)
        self._clock = clock
        self._tracks: list[_Track] = []
        self._last_frame_at: float | None = None
        #: Detections ignored because ``max_objects`` objects were tracked already.
        self.overflow = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def open_events(self) -> tuple[str, ...]:
        """Ids of the events in progress (started, not ended)."""
        return tuple(t.event_id for t in self._tracks if t.state == "open")

    @property
    def tracked(self) -> int:
        """Objects followed now, started or not."""
        return len(self._tracks)

    def needs_look(self, captured_at: float) -> bool:
        """Whether the model should look at the frame captured at ``captured_at`` even
        without motion: an object awaits confirmation (every frame: ``min_frames``
        counts consecutive looks), or an event's object was missing at the last look and
        ``recheck_interval_s`` has passed since, or this frame would complete its
        ``end_after_s`` (only looks can end the event or find the object again)."""
        config = self.config
        for track in self._tracks:
            if track.state == "pending":
                return True
            if track.state != "open" or not track.missed:
                continue
            if captured_at - track.last_looked_at >= config.recheck_interval_s:
                return True
            if captured_at - track.last_seen_at - track.unlooked_s >= config.end_after_s:
                return True
        return False

    # -- frames ---------------------------------------------------------------------------

    def skip(self, captured_at: float, *, unchanged: bool = False) -> None:
        """A frame the model did not look at: no evidence either way, only the time.

        ``unchanged``: the motion gate found nothing moving in it, so for an object
        missing at the last look the frame counts as another look that missed it (see
        the module's notes); for every other object it is still no evidence.
        """
        interval = self._interval(captured_at)
        for track in self._tracks:
            if not (unchanged and track.missed):
                track.unlooked_s += interval

    def observe(
        self,
        objects: Sequence[DetectedObject | PlacedObject],
        captured_at: float,
        *,
        frame_index: int,
        region: NormBox | None = None,
    ) -> TrackStep:
        """Feed the objects the model found in one frame (already thresholded, masked
        and placed in zones; a bare ``DetectedObject`` is in no zone).

        ``region``: the part of the frame the model looked at (None: all of it); objects
        whose last centre lies outside it are treated as not looked at.
        """
        interval = self._interval(captured_at)
        seen = [o if isinstance(o, PlacedObject) else PlacedObject(o) for o in objects]
        out = _Changes()

        pairs = self._associate(seen)
        matched_tracks = {id(track) for _, track in pairs}
        matched_seen = {index for index, _ in pairs}
        for index, track in pairs:
            self._continue(track, seen[index], captured_at, frame_index, out)

        for track in list(self._tracks):
            if id(track) in matched_tracks:
                continue
            if not _covers(region, track.box):
                track.unlooked_s += interval
                continue
            track.last_looked_at = captured_at
            if track.state == "pending":
                self._close(track, out)
                continue
            track.missed = True
            absent = captured_at - track.last_seen_at - track.unlooked_s
            if absent >= self.config.end_after_s:
                if track.state == "open":
                    out.transitions.append(self._transition("end", track, captured_at))
                self._close(track, out)

        matched_boxes = [seen[index] for index in matched_seen]
        for index, item in enumerate(seen):
            if index in matched_seen or _duplicate(item, matched_boxes):
                continue
            if len(self._tracks) >= self.config.max_objects:
                self.overflow += 1
                log.debug(
                    "%d objects tracked already; a %s is ignored", len(self._tracks), item.label
                )
                continue
            track = _Track(item, captured_at, frame_index)
            self._tracks.append(track)
            matched_boxes.append(item)
            out.improved.append(track.best)
            self._maybe_start(track, captured_at, out)
        return out.step()

    def flush(self, now: float | None = None) -> TrackStep:
        """End every open event and forget every other object (shutdown, end of a file,
        model swap), so no event is left without its end."""
        at = self._clock.time() if now is None else now
        transitions = tuple(
            self._transition("end", t, at) for t in self._tracks if t.state == "open"
        )
        closed = tuple(t.event_id for t in self._tracks)
        self._tracks.clear()
        self._last_frame_at = None
        return TrackStep(transitions, (), closed)

    # -- steps ----------------------------------------------------------------------------

    def _interval(self, captured_at: float) -> float:
        """This frame's own interval: the time since the frame before it."""
        previous = self._last_frame_at
        self._last_frame_at = captured_at
        return max(0.0, captured_at - previous) if previous is not None else 0.0

    def _associate(self, seen: Sequence[PlacedObject]) -> list[tuple[int, _Track]]:
        """Cheapest admissible (detection, track) pairs first, each used at most once."""
        config = self.config
        candidates: list[tuple[float, int, int]] = []
        for i, item in enumerate(seen):
            cx, cy = item.box.centroid
            for j, track in enumerate(self._tracks):
                if track.label != item.label:
                    continue
                iou = item.box.iou(track.box)
                tx, ty = track.box.centroid
                distance = math.hypot(cx - tx, cy - ty)
                if (iou >= config.match_iou and iou > 0.0) or distance <= config.match_distance:
                    candidates.append((1.0 - iou + distance, i, j))
        candidates.sort()
        used_seen: set[int] = set()
        used_tracks: set[int] = set()
        pairs: list[tuple[int, _Track]] = []
        for _cost, i, j in candidates:
            if i in used_seen or j in used_tracks:
                continue
            used_seen.add(i)
            used_tracks.add(j)
            pairs.append((i, self._tracks[j]))
        return pairs

    def _continue(
        self,
        track: _Track,
        item: PlacedObject,
        captured_at: float,
        frame_index: int,
        out: _Changes,
    ) -> None:
        track.box = item.box
        track.score = item.score
        track.top_score = max(track.top_score, item.score)
        track.last_seen_at = captured_at
        track.last_looked_at = captured_at
        track.unlooked_s = 0.0
        track.missed = False
        track.zones = item.zones
        new_zone = False
        for zone in item.zones:
            if zone not in track.entered:
                track.entered.append(zone)
                new_zone = True
        if item.score > track.best.score:
            track.best = BestFrame(track.event_id, frame_index, captured_at, item.score, item.box)
            out.improved.append(track.best)
        if track.state == "open":
            interval = self.config.update_interval_s
            timed = interval > 0 and captured_at - track.last_emit_at >= interval
            if timed or new_zone:
                track.last_emit_at = captured_at
                out.transitions.append(self._transition("update", track, captured_at))
            return
        track.hits += 1
        self._maybe_start(track, captured_at, out)

    def _maybe_start(self, track: _Track, captured_at: float, out: _Changes) -> None:
        if track.hits < self.config.min_frames:
            return
        if self.required_zones and self.required_zones.isdisjoint(track.entered):
            track.state = "waiting"
            return
        track.state = "open"
        track.last_emit_at = captured_at
        log.debug("event %s started: %s %.3f", track.event_id, track.label, track.score)
        out.transitions.append(self._transition("start", track, captured_at))

    def _close(self, track: _Track, out: _Changes) -> None:
        self._tracks.remove(track)
        out.closed.append(track.event_id)
        if track.state == "open":
            log.debug("event %s ended: %s", track.event_id, track.label)

    def _transition(self, kind: TransitionType, track: _Track, at: float) -> ObjectTransition:
        ending = kind == "end"
        return ObjectTransition(
            type=kind,
            event_id=track.event_id,
            label=track.label,
            score=track.top_score if ending else track.score,
            top_score=track.top_score,
            box=track.box,
            zones=track.zones,
            entered_zones=tuple(track.entered),
            started_at=track.first_seen_at,
            captured_at=at,
            duration_s=(track.last_seen_at if ending else at) - track.first_seen_at,
            best=track.best,
        )


def _covers(region: NormBox | None, box: NormBox) -> bool:
    """Whether the model, run on ``region``, looked where ``box`` was."""
    if region is None:
        return True
    x, y = box.centroid
    return region.x_min <= x <= region.x_max and region.y_min <= y <= region.y_max


def _duplicate(item: PlacedObject, kept: Sequence[PlacedObject]) -> bool:
    return any(
        other.label == item.label and other.box.iou(item.box) >= DUPLICATE_IOU for other in kept
    )
