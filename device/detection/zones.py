"""Masks and named zones: where in the frame an object is, judged by its centre.

A mask says "never report what is here" (a poster of a person, the neighbour's drive);
a zone names a part of the view ("porch", "drive") so an automation can react to where
an object is, and a pipeline can require an object to enter a zone before it counts.

Both are decided by the object's centre, not its box: a centroid detector knows the
centre well and the extent only roughly, and a centre is in exactly one place, so an
object half across a boundary is on one side of it, not both.

Polygons are normalised (device/detection/config.py); ``cv2.pointPolygonTest`` works on
them as they are, a few microseconds per object and polygon. Motion masks need a pixel
mask instead (every pixel is tested): :func:`rasterise` draws one per processing size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from device.detection.config import DetectionStagesConfig, ZoneSection
from device.detection.objects import DetectedObject, NormBox

log = logging.getLogger(__name__)

UInt8Image = np.ndarray[Any, np.dtype[np.uint8]]
PolygonPoints = Sequence[tuple[float, float]]

#: Sub-pixel precision for drawing polygons (OpenCV's ``shift``).
_SHIFT_BITS = 4


class Area:
    """One polygon, ready for point tests (normalised coordinates; edges count as inside)."""

    __slots__ = ("_contour",)

    def __init__(self, points: PolygonPoints) -> None:
        if len(points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(points)}")
        self._contour = np.asarray(points, dtype=np.float32).reshape(-1, 1, 2)

    def contains(self, point: tuple[float, float]) -> bool:
        x, y = point
        return bool(cv2.pointPolygonTest(self._contour, (float(x), float(y)), False) >= 0)


def rasterise(polygons: Iterable[PolygonPoints], width: int, height: int) -> UInt8Image:
    """A ``height x width`` mask, 255 where any polygon covers a pixel's centre, else 0.

    A normalised x of 0..1 spans the pixels' outer edges, -0.5..width-0.5 in OpenCV's
    pixel-centre coordinates, so a polygon covering the whole frame covers every pixel.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    scale = np.array([width, height], dtype=np.float64)
    fixed = [
        np.round((np.asarray(points, dtype=np.float64) * scale - 0.5) * (1 << _SHIFT_BITS))
        .astype(np.int32)
        .reshape(-1, 1, 2)
        for points in polygons
    ]
    if fixed:
        cv2.fillPoly(mask, fixed, 255, cv2.LINE_8, _SHIFT_BITS)
    return mask


@dataclass(frozen=True)
class PlacedObject:
    """A detected object that survived the masks, with the zones its centre is in."""

    object: DetectedObject
    #: Zone names in config order; empty when it is in none.
    zones: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.object.label

    @property
    def score(self) -> float:
        return self.object.score

    @property
    def box(self) -> NormBox:
        return self.object.box


@dataclass(frozen=True)
class _Zone:
    name: str
    area: Area
    labels: frozenset[str]


class Areas:
    """A pipeline's masks and zones; immutable after construction, safe to share."""

    def __init__(
        self,
        masks: Sequence[PolygonPoints] = (),
        zones: Mapping[str, ZoneSection] | None = None,
    ) -> None:
        self._masks = tuple(Area(points) for points in masks)
        self._zones = tuple(
            _Zone(name, Area(zone.points), frozenset(zone.labels))
            for name, zone in (zones or {}).items()
        )

    @classmethod
    def from_config(cls, config: DetectionStagesConfig) -> Areas:
        """The object masks and zones of a detection pipeline's table."""
        return cls(config.masks, config.zones)

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(zone.name for zone in self._zones)

    def is_masked(self, point: tuple[float, float]) -> bool:
        return any(mask.contains(point) for mask in self._masks)

    def zones_at(self, label: str, point: tuple[float, float]) -> tuple[str, ...]:
        """The zones that ``point`` is in and that count ``label``."""
        return tuple(
            zone.name
            for zone in self._zones
            if (not zone.labels or label in zone.labels) and zone.area.contains(point)
        )

    def place(self, objects: Iterable[DetectedObject]) -> tuple[PlacedObject, ...]:
        """Drop the objects whose centre is under a mask; give the rest their zones."""
        placed = []
        for item in objects:
            centre = item.centroid
            if self._masks and self.is_masked(centre):
                log.debug("%s at (%.3f, %.3f) is under a mask; dropped", item.label, *centre)
                continue
            zones = self.zones_at(item.label, centre) if self._zones else ()
            placed.append(PlacedObject(item, zones))
        return tuple(placed)
