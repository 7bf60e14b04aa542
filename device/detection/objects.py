"""What a detector's decoded output is, shared by decoding, tracking, zones and snapshots.

Every stage after the model (thresholds, zones and masks, the tracker, snapshots, the
chained second model, evaluation) speaks this one type, so a decoder can change (a
centroid heatmap today, boxes from another head tomorrow) without touching them.
Coordinates are normalised to the frame (0..1 of width and height), so they survive
any resize between the camera and the model's input.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NormBox:
    """An axis-aligned box, normalised: 0 <= x_min <= x_max <= 1, same for y."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.x_min <= self.x_max <= 1.0 and 0.0 <= self.y_min <= self.y_max <= 1.0):
            raise ValueError(
                f"box ({self.x_min}, {self.y_min}, {self.x_max}, {self.y_max}) is not a "
                "normalised box (0 <= min <= max <= 1)"
            )

    @property
    def centroid(self) -> tuple[float, float]:
        return ((self.x_min + self.x_max) / 2.0, (self.y_min + self.y_max) / 2.0)

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    @property
    def area(self) -> float:
        return self.width * self.height

    def iou(self, other: NormBox) -> float:
        """Intersection over union; 0 for disjoint or empty boxes."""
        ix = max(0.0, min(self.x_max, other.x_max) - max(self.x_min, other.x_min))
        iy = max(0.0, min(self.y_max, other.y_max) - max(self.y_min, other.y_min))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0.0 else 0.0

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of a width x height image, at least one pixel wide."""
        x0 = min(width - 1, max(0, int(self.x_min * width)))
        y0 = min(height - 1, max(0, int(self.y_min * height)))
        x1 = max(x0 + 1, min(width, round(self.x_max * width)))
        y1 = max(y0 + 1, min(height, round(self.y_max * height)))
        return x0, y0, x1, y1


@dataclass(frozen=True)
class DetectedObject:
    """One object a detector found in one frame.

    A centroid detector (FOMO-style) knows where an object's centre is and, from the
    cells that fired, roughly how far it spreads: ``box`` is that extent, and
    ``box_is_estimate`` says it is not a regressed box (evaluation then matches by
    centroid, not IoU).
    """

    label: str
    score: float
    box: NormBox
    box_is_estimate: bool = True
    #: Where the detector places the object's centre, normalised (x, y), when that is
    #: not the box's middle: a centroid decoder weights cells by probability, so its
    #: centre is sharper than the middle of the cells' extent. None: the box's middle.
    center: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.center is not None and not (
            0.0 <= self.center[0] <= 1.0 and 0.0 <= self.center[1] <= 1.0
        ):
            raise ValueError(f"center {self.center} is not a normalised point (0..1)")

    @property
    def centroid(self) -> tuple[float, float]:
        return self.center if self.center is not None else self.box.centroid
