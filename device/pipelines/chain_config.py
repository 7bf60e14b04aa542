"""The config of a chained pipeline: a classifier run on another pipeline's detections.

One ``[pipelines.NAME]`` table with ``task = "image-classification"`` and ``input``
instead of ``source``::

    [pipelines.who]
    task = "image-classification"
    input = "faces"                 # the detection pipeline whose objects are cropped
    input_labels = ["face"]         # which detected labels to crop (empty: all)
    model = "/var/lib/edgewatch/models/orl-identity.ewm"
    margin = 0.1
    aspect = 0.82                   # or square = true
    min_size = 24
    threshold = 0.6

Kept apart from device/config.py's other models (like log_config.py) so that the
config module can import it without importing numpy or the runtime at load time; it
imports nothing from device/config.py for the same reason (no import cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device.detection.config import TrackerSection

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class ChainedClassificationConfig(BaseModel):
    """What a user sets for a classifier that runs on each detected object's crop.

    Thresholds and ignored labels work exactly as for a frame classifier: the config's
    per-label ``thresholds``, then its ``threshold``, then the bundle's; the bundle's
    background labels and ``ignore_labels`` never report (an identity model's
    ``unknown`` class, say).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Literal["image-classification"] = "image-classification"
    #: The detection pipeline whose objects this one classifies; it runs on that
    #: pipeline's frames, so it has no ``source`` of its own.
    input: str = Field(pattern=NAME_PATTERN)
    #: Not for the user to set: filled with the input pipeline's source when the device
    #: config is loaded (the state topic and the camera path know pipelines by source).
    source: str = ""
    #: Detected labels to crop and classify; empty: every detected object.
    input_labels: tuple[str, ...] = ()
    #: The image-classification bundle (.ewm) run on each crop.
    model: Path
    #: Added on each side of the detected box, as a share of its width and height.
    margin: float = Field(0.1, ge=0.0, le=2.0)
    #: Make crops square (the same as ``aspect = 1.0``).
    square: bool = False
    #: Width / height of each crop: the aspect of the classifier's training images
    #: (ORL faces: 92 / 112 = 0.82). Unset: the detected box's own aspect.
    aspect: float | None = Field(None, gt=0.0, le=10.0)
    #: Detected boxes whose shorter side covers fewer frame pixels are not classified
    #: (and counted in the stats).
    min_size: int = Field(24, ge=1, le=4096)
    #: At most this many objects a frame are classified, highest detector score first
    #: (the rest are counted): each crop is one model invocation.
    max_objects: int = Field(8, ge=1, le=256)
    #: Overrides every threshold the bundle states (its default and per-label ones).
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    #: Per-label thresholds; override the bundle's.
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: Labels never reported (besides the bundle's background labels).
    ignore_labels: tuple[str, ...] = ()
    #: How identified objects become events (one per object and label: a face that is
    #: "s3" in two looks and "s5" in the next stays s3's event, and s5 must be seen
    #: ``min_frames`` times to start one).
    tracker: TrackerSection = Field(default_factory=TrackerSection)

    @model_validator(mode="after")
    def _consistent(self) -> ChainedClassificationConfig:
        if self.square and self.aspect is not None and self.aspect != 1.0:
            raise ValueError(f"square = true and aspect = {self.aspect} disagree; set one of them")
        if len(set(self.input_labels)) != len(self.input_labels):
            raise ValueError(f"input_labels lists a label twice: {list(self.input_labels)}")
        for label, value in self.thresholds.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"thresholds.{label} must be between 0 and 1, got {value}")
        return self

    @property
    def crop_aspect(self) -> float | None:
        """The crop's width / height, or None to keep each box's own."""
        return 1.0 if self.square else self.aspect
