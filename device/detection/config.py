"""Config sections for the camera path around a detector: motion, tracking, zones, snapshots.

They are pydantic models in the style of ``device/config.py`` (frozen, unknown keys
refused) so that an object-detection pipeline table can take them as its sub-tables::

    [pipelines.yard.motion]        # MotionSection
    [pipelines.yard.tracker]       # TrackerSection
    [pipelines.yard.snapshot]      # SnapshotSection
    [pipelines.yard.zones.drive]   # ZoneSection, one per named zone
    masks = [[[x, y], ...], ...]   # object masks, on the pipeline table itself

:class:`DetectionStagesConfig` holds exactly those keys, so the pipeline's config class
can inherit from it. So that ``device/config.py`` can import this module, nothing here
imports ``device.config``. Every key is documented in docs/motion-and-tracking.md.

Areas (masks and zones) are polygons of normalised ``[x, y]`` points: fractions of the
frame's width and height, so one config fits any resolution the camera is set to.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: The same rule as ``device.config.NAME_PATTERN``: a zone name appears in events.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

#: More points than any hand-drawn area needs; a bound on the per-object cost.
MAX_POLYGON_POINTS = 100


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_polygon(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """A polygon the frame can hold: 3+ points inside 0..1 that enclose some area."""
    if len(points) < 3:
        raise ValueError(
            f"a polygon needs at least 3 [x, y] points, got {len(points)}; "
            "e.g. [[0.0, 0.0], [0.5, 0.0], [0.5, 0.3]]"
        )
    if len(points) > MAX_POLYGON_POINTS:
        raise ValueError(f"a polygon has at most {MAX_POLYGON_POINTS} points, got {len(points)}")
    for index, (x, y) in enumerate(points):
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(
                f"point {index} [{x}, {y}] is outside the frame: coordinates are fractions "
                "of the frame's width and height, each between 0 and 1"
            )
    # Shoelace formula: a polygon whose points lie on one line covers nothing.
    doubled = sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True)
    )
    if math.isclose(doubled, 0.0, abs_tol=1e-12):
        raise ValueError("the polygon's points lie on one line, so it covers no area")
    return points


#: A polygon of normalised ``[x, y]`` points (x to the right, y down, 0..1 of the frame).
Polygon = Annotated[tuple[tuple[float, float], ...], AfterValidator(_check_polygon)]


class MotionSection(_Section):
    """Motion gating: the model runs only when something moves (or a keep-alive is due).

    The detector is a running-average background on a small grey frame
    (device/detection/motion.py); docs/motion-and-tracking.md explains each knob.
    """

    #: False: the model runs on every frame (no motion detection at all).
    enabled: bool = True
    #: Width in pixels the frame is shrunk to before looking for motion; smaller is
    #: cheaper and ignores finer grain (the height keeps the frame's aspect ratio).
    width: int = Field(160, ge=32, le=1280)
    #: Grey-level difference (0..255) from the background that counts as change; lower
    #: is more sensitive (and more prone to noise and compression artefacts).
    threshold: int = Field(25, ge=1, le=255)
    #: Smallest moving region, as a fraction of the frame's area; smaller ones (insects,
    #: rain, leaves) are ignored.
    min_area: float = Field(0.002, ge=0.0, le=1.0)
    #: How fast the background follows the scene (fraction per frame): higher forgets a
    #: passing object sooner and follows light changes faster, but absorbs a slow object.
    background_alpha: float = Field(0.05, gt=0.0, le=1.0)
    #: A change over more than this fraction of the frame at once is a lighting change
    #: (lights switched, exposure jump, IR mode), not motion: the background is reset.
    lighting_change: float = Field(0.6, gt=0.0, le=1.0)
    #: Seconds after the model last ran when it runs again anyway, on the whole frame,
    #: so objects that stopped moving are still seen; 0: never for this reason.
    keepalive_s: float = Field(10.0, ge=0.0)
    #: While nothing moves and no object is followed, motion is checked at most this
    #: many times a second (frames between are skipped unchecked); every frame again as
    #: soon as something moves. Bounds the idle cost of a 15 or 30 fps camera, at the
    #: price of noticing motion up to 1/idle_fps s later. 0: check every frame.
    idle_fps: float = Field(5.0, ge=0.0)
    #: The region given to the model grows by this fraction of its size on each side:
    #: motion covers what changed, the object usually extends a little beyond it.
    region_margin: float = Field(0.25, ge=0.0, le=2.0)
    #: Areas where motion is ignored (a tree, a road, a timestamp overlay).
    masks: tuple[Polygon, ...] = ()


class TrackerSection(_Section):
    """One event per object: association across frames, debounce and ending.

    The timing keys mean what they mean in ``[pipelines.X.events]`` of a classifier;
    device/detection/tracker.py explains how gated frames count.
    """

    #: Consecutive looks that must find an object before its event starts.
    min_frames: int = Field(2, ge=1)
    #: Seconds an object must go unseen, counted only over frames the model looked at,
    #: before its event ends.
    end_after_s: float = Field(2.0, ge=0.0)
    #: With motion gating, while an event's object is missing and nothing moves, the
    #: model looks again this often rather than on every frame (the unchanged frames
    #: between count towards ``end_after_s``: they would show it the same picture).
    #: 0: every frame.
    recheck_interval_s: float = Field(0.5, ge=0.0)
    #: At most one update this often while an object is in view (0: no timed updates;
    #: entering a zone still sends one).
    update_interval_s: float = Field(5.0, ge=0.0)
    #: A detection continues a tracked object of its label when their boxes overlap by at
    #: least this intersection over union ...
    match_iou: float = Field(0.2, ge=0.0, le=1.0)
    #: ... or when their centres are at most this far apart (fraction of the frame).
    match_distance: float = Field(0.15, ge=0.0, le=1.5)
    #: Objects tracked at once (pending ones included); detections beyond are ignored, so
    #: a misbehaving model cannot use up the device's memory.
    max_objects: int = Field(32, ge=1, le=1024)


SnapshotMoment = Literal["start", "update", "end"]


class SnapshotSection(_Section):
    """A JPEG of an event's best frame, cropped to the object and size-bounded."""

    enabled: bool = False
    #: Transitions that publish the snapshot (the best frame so far at that moment).
    on: tuple[SnapshotMoment, ...] = ("start", "end")
    #: The JPEG never exceeds this: quality, then size, are lowered until it fits.
    max_bytes: int = Field(128 * 1024, ge=2048, le=16 * 1024 * 1024)
    #: Crops wider than this are scaled down (before encoding, and in memory).
    max_width: int = Field(640, ge=16, le=4096)
    #: JPEG quality tried first (1..100; 80-90 is a good balance).
    quality: int = Field(85, ge=10, le=100)
    #: Context around the object: the crop grows by this fraction of the box's width and
    #: height on each side (0: the box only).
    margin: float = Field(0.2, ge=0.0, le=5.0)
    #: True: the whole frame instead of a crop around the object.
    full_frame: bool = False

    @model_validator(mode="after")
    def _moments(self) -> SnapshotSection:
        if len(set(self.on)) != len(self.on):
            raise ValueError(f"on lists a transition twice: {list(self.on)}")
        return self


class ZoneSection(_Section):
    """A named area: objects whose centre is inside carry the zone's name in events."""

    points: Polygon
    #: Only these labels count as in the zone (empty: every label).
    labels: tuple[str, ...] = ()


class DetectionStagesConfig(_Section):
    """The keys an object-detection pipeline table shares with every other one.

    Not a table of its own: the pipeline's config class inherits these fields.
    """

    motion: MotionSection = Field(default_factory=MotionSection)
    tracker: TrackerSection = Field(default_factory=TrackerSection)
    snapshot: SnapshotSection = Field(default_factory=SnapshotSection)
    #: Named zones, ``[pipelines.X.zones.NAME]``.
    zones: dict[Name, ZoneSection] = Field(default_factory=dict)
    #: Object masks: an object whose centre falls inside one is dropped (a poster, a
    #: parked car you never want reported).
    masks: tuple[Polygon, ...] = ()
    #: When set, an object starts an event only once it has entered one of these zones.
    required_zones: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _known_zones(self) -> DetectionStagesConfig:
        unknown = [name for name in self.required_zones if name not in self.zones]
        if unknown:
            raise ValueError(
                f"required_zones names {unknown}, which are not configured zones "
                f"(have: {sorted(self.zones) or 'none'}); add [pipelines.NAME.zones.ZONE] "
                "tables or fix the names"
            )
        return self
