"""From per-frame detections to events that start, update and end.

A classifier answers every frame; a person wants one message when a thing comes into
view, an occasional update while it stays, and one when it has gone. The tracker
debounces per label: a run of ``min_frames`` consecutive frames starts an event (one
flickering frame is noise), at most one update goes out every ``update_interval_s``, and
the event ends once the label has been absent for ``end_after_s`` (so a frame or two
missed mid-event does not split it in two).

All timing uses the frames' capture timestamps, never the time of processing, so a file
read faster than real time, or a Pi that falls behind, gives the same events.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from device.config import EventSection

if TYPE_CHECKING:  # the detection modules import this one's names
    from device.detection.objects import NormBox
    from device.detection.snapshot import Snapshot

log = logging.getLogger(__name__)

TransitionType = Literal["start", "update", "end"]


class WallClock(Protocol):
    def time(self) -> float: ...


@dataclass(frozen=True)
class Transition:
    """One change in an event's life, ready to become an MQTT ``Event``.

    ``score`` is this frame's score for start and update, and the event's best score for
    end (as the wire contract states). ``duration_s`` is seconds from ``started_at`` to
    this frame for start and update; for end it is how long the label was in view (first
    to last frame at or above threshold), not counting the ``end_after_s`` wait.
    """

    type: TransitionType
    label: str
    event_id: str
    score: float
    top_score: float
    #: Capture time of the first frame of the run that started the event.
    started_at: float
    #: Capture time of the frame that caused this transition (for flush: ``now``).
    captured_at: float
    duration_s: float
    #: Detection pipelines: the object's last box and the zones its centre is in.
    box: NormBox | None = None
    zones: tuple[str, ...] | None = None
    #: Detection pipelines: a JPEG of the event's best sighting, when configured.
    snapshot: Snapshot | None = None


class _Open:
    """An event in progress (mutable, private to the tracker)."""

    __slots__ = ("event_id", "last_emit_at", "last_seen_at", "started_at", "top_score")

    def __init__(self, started_at: float, now: float, top_score: float) -> None:
        self.event_id = str(uuid.uuid4())
        self.started_at = started_at
        self.last_seen_at = now
        self.last_emit_at = now
        self.top_score = top_score


class _Run:
    """Consecutive frames with a label present, before an event has started."""

    __slots__ = ("count", "first_at", "top_score")

    def __init__(self, first_at: float, score: float) -> None:
        self.count = 1
        self.first_at = first_at
        self.top_score = score


class EventTracker:
    """Per-label debounce state machine; not thread-safe (one per pipeline thread)."""

    def __init__(self, config: EventSection, clock: WallClock = time) -> None:
        self.config = config
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._open: dict[str, _Open] = {}

    @property
    def open_labels(self) -> tuple[str, ...]:
        """Labels with an event in progress."""
        return tuple(self._open)

    def observe(self, scores: Mapping[str, float], captured_at: float) -> list[Transition]:
        """Feed one frame: ``scores`` holds the labels present in it (already at or above
        their threshold) with their scores; a label not in it counts as absent.

        Returns the transitions this frame causes, usually none.
        """
        transitions: list[Transition] = []
        # Absent labels first: a pending run is broken, an open event may end.
        for label in [name for name in self._runs if name not in scores]:
            del self._runs[label]
        for label in [name for name in self._open if name not in scores]:
            ending = self._open[label]
            if captured_at - ending.last_seen_at >= self.config.end_after_s:
                transitions.append(self._end(label, ending, captured_at))
        for label, score in scores.items():
            event = self._open.get(label)
            if event is not None:
                self._continue(label, event, score, captured_at, transitions)
            else:
                self._advance_run(label, score, captured_at, transitions)
        return transitions

    def flush(self, now: float | None = None) -> list[Transition]:
        """End every open event (shutdown, end of a file, model swap) and forget pending
        runs, so no event is left without its end."""
        at = self._clock.time() if now is None else now
        transitions = [self._end(label, event, at) for label, event in list(self._open.items())]
        self._runs.clear()
        return transitions

    # -- steps --------------------------------------------------------------------------

    def _advance_run(
        self, label: str, score: float, captured_at: float, out: list[Transition]
    ) -> None:
        existing = self._runs.get(label)
        if existing is None:
            run = self._runs[label] = _Run(captured_at, score)
        else:
            run = existing
            run.count += 1
            run.top_score = max(run.top_score, score)
        if run.count < self.config.min_frames:
            return
        del self._runs[label]
        event = _Open(run.first_at, captured_at, run.top_score)
        self._open[label] = event
        log.debug("event %s started: %s %.3f", event.event_id, label, score)
        out.append(
            Transition(
                type="start",
                label=label,
                event_id=event.event_id,
                score=score,
                top_score=event.top_score,
                started_at=event.started_at,
                captured_at=captured_at,
                duration_s=captured_at - event.started_at,
            )
        )

    def _continue(
        self,
        label: str,
        event: _Open,
        score: float,
        captured_at: float,
        out: list[Transition],
    ) -> None:
        event.last_seen_at = captured_at
        event.top_score = max(event.top_score, score)
        interval = self.config.update_interval_s
        if interval > 0 and captured_at - event.last_emit_at >= interval:
            event.last_emit_at = captured_at
            out.append(
                Transition(
                    type="update",
                    label=label,
                    event_id=event.event_id,
                    score=score,
                    top_score=event.top_score,
                    started_at=event.started_at,
                    captured_at=captured_at,
                    duration_s=captured_at - event.started_at,
                )
            )

    def _end(self, label: str, event: _Open, captured_at: float) -> Transition:
        del self._open[label]
        log.debug("event %s ended: %s", event.event_id, label)
        return Transition(
            type="end",
            label=label,
            event_id=event.event_id,
            score=event.top_score,
            top_score=event.top_score,
            started_at=event.started_at,
            captured_at=captured_at,
            duration_s=event.last_seen_at - event.started_at,
        )
