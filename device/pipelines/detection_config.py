"""The config of an object-detection pipeline table (``task = "object-detection"``).

The motion, tracker, snapshot, zone and mask keys come from
``device/detection/config.py`` (documented in docs/motion-and-tracking.md); this adds
what every pipeline has: the source, the bundle, thresholds and ignored labels. Kept
apart from device/config.py, which imports it, like the other tasks' configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from device.detection.config import DetectionStagesConfig, Name


class DetectionPipelineConfig(DetectionStagesConfig):
    """An object detector on a camera source, with its gate, tracker and zones."""

    task: Literal["object-detection"] = "object-detection"
    source: Name
    model: Path
    #: Overrides every threshold the bundle states (its default and per-label ones).
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    #: Per-label thresholds; override the bundle's.
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: Labels never reported.
    ignore_labels: tuple[str, ...] = ()
