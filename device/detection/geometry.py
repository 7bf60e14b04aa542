"""Box arithmetic the motion gate and the snapshot crop share (normalised boxes)."""

from __future__ import annotations

from collections.abc import Iterable

from device.detection.objects import NormBox


def union_of(boxes: Iterable[NormBox]) -> NormBox:
    """The smallest box holding every one of ``boxes`` (at least one)."""
    items = list(boxes)
    if not items:
        raise ValueError("union_of needs at least one box")
    return NormBox(
        min(b.x_min for b in items),
        min(b.y_min for b in items),
        max(b.x_max for b in items),
        max(b.y_max for b in items),
    )


def expand(box: NormBox, margin: float) -> NormBox:
    """``box`` grown by ``margin`` times its width and height on each side, kept in the
    frame (so a box at an edge grows only inwards)."""
    dx, dy = box.width * margin, box.height * margin
    return NormBox(
        max(0.0, box.x_min - dx),
        max(0.0, box.y_min - dy),
        min(1.0, box.x_max + dx),
        min(1.0, box.y_max + dy),
    )
