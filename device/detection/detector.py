"""An object-detection bundle on the device's runtime: a BGR frame in, objects out.

Evaluation, ``edgewatch bench`` and the daemon's detection pipeline all call this one
class, so the objects counted on the workstation are the objects a Pi publishes. A
frame goes through the shared preprocessing (``resize_frame``; for an int8 input the
256-entry ``pixel_lut`` that normalises and quantizes in one lookup), one invoke, the
runtime's dequantize and the shared ``HeatmapDecoder``.

Motion gating hands in a region of interest: the part of the frame where something
moved. The model then runs on a crop around it, grown to a minimum share of the frame
(a crop much smaller than what the model trained on would magnify objects beyond the
sizes it knows) and to the shape whole frames reach the model in, so that objects are
distorted on their way to the input exactly as in training: the frame's own aspect
ratio for a ``stretch`` model (trained on whole images stretched to its input), the
model's for a ``center-crop`` one. Where the frame allows, a small crop is grown on to
whole multiples of the input's size, which the resize handles more cheaply (see
``_whole_multiple``), and a larger one is averaged over 2x2 blocks before its resize
(``halve_large``). The objects are then mapped back to full-frame coordinates. A
crop that would cover nearly the whole frame is skipped in favour of the frame itself.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from device.bundle.manifest import HeatmapDecoding, ImagePreprocessing, Manifest
from device.bundle.reader import Bundle
from device.detection.decode import FloatArray, HeatmapDecoder
from device.detection.objects import DetectedObject, NormBox
from device.errors import ConfigError, ModelMismatchError
from device.pipelines.classification import lookup_pixels, pixel_lut
from device.preprocessing.image import UInt8Image, channels, normalise, resize_frame
from device.runtime import AnyArray, EdgeTpuMode, ModelRuntime, dequantize, load_for_manifest

log = logging.getLogger(__name__)

TASK = "object-detection"
#: A region's crop is at least this share of the frame's width and height: objects in
#: it then appear at most this many times larger than in the whole frame, which the
#: training's scale augmentation covers.
MIN_REGION_FRACTION = 0.5
#: Context added around a motion region on each side, as a share of its size: motion
#: boxes hug the moving pixels, and an object's centre cell needs its surroundings.
REGION_MARGIN = 0.25
#: A crop covering at least this share of the frame's area is replaced by the frame.
FULL_FRAME_AREA = 0.85
#: A crop is grown to whole multiples of the input's size only while that adds at most
#: this share of its area: beyond it, the cheaper resize no longer pays for the extra
#: pixels (see ``_whole_multiple``).
WHOLE_MULTIPLE_GROWTH = 1.5
#: A crop still at least this many times the input's size on both sides once halved
#: is halved by averaging 2x2 blocks before its area resize (see ``halve_large``): the
#: resize proper then still averages one and a half of those blocks or more per side.
HALVE_ABOVE = 1.5


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """What one frame (or one region of it) gave."""

    #: Objects above their label's threshold, best score first, in full-frame
    #: normalised coordinates.
    objects: tuple[DetectedObject, ...]
    #: Preprocessing (when not done beforehand) + invoke + decode, in milliseconds.
    inference_ms: float
    #: The interpreter's invoke alone, in milliseconds.
    invoke_ms: float
    #: The part of the frame the model saw (normalised); None for the whole frame.
    region: NormBox | None
    #: Per-cell probabilities over ``region`` (rows, cols, labels), for reports.
    probabilities: FloatArray


@dataclass(frozen=True)
class PixelRegion:
    """A crop of a frame in pixels: columns x0..x1, rows y0..y1 (end exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def normalised(self, width: int, height: int) -> NormBox:
        return NormBox(self.x0 / width, self.y0 / height, self.x1 / width, self.y1 / height)


def crop_region(
    region: NormBox,
    frame_size: tuple[int, int],
    input_size: tuple[int, int],
    *,
    min_fraction: float = MIN_REGION_FRACTION,
    margin: float = REGION_MARGIN,
    aspect: float | None = None,
) -> PixelRegion | None:
    """The crop to run the model on for ``region`` of a ``frame_size`` (width, height)
    frame, for a model input of ``input_size`` (width, height); None: use the whole
    frame. ``aspect``: the crop's width / height (default: the input's)."""
    width, height = frame_size
    if aspect is None:
        aspect = input_size[0] / input_size[1]
    crop_w = region.width * width * (1.0 + 2.0 * margin)
    crop_h = region.height * height * (1.0 + 2.0 * margin)
    crop_w = max(crop_w, min_fraction * width, float(min(input_size[0], width)))
    crop_h = max(crop_h, min_fraction * height, float(min(input_size[1], height)))
    # Widen or heighten, never shrink, to reach the model's aspect ratio; where the
    # frame is too small for that, the crop keeps the region and gives up the aspect
    # (the model is stretched to its input anyway, as whole frames are).
    if crop_w / crop_h < aspect:
        crop_w = crop_h * aspect
    else:
        crop_h = crop_w / aspect
    multiple = _whole_multiple((crop_w, crop_h), frame_size, input_size, aspect)
    if multiple is not None:
        crop_w, crop_h = multiple
    crop_w, crop_h = min(crop_w, float(width)), min(crop_h, float(height))
    if multiple is None and _halves((crop_w, crop_h), input_size):
        # Even sides where the frame allows, for ``halve_large`` to average 2x2 blocks.
        # An even whole size keeps its size through the rounding below (round() breaks
        # ties to the even side at both ends alike).
        crop_w, crop_h = float(_even_pixels(crop_w, width)), float(_even_pixels(crop_h, height))
    if crop_w * crop_h >= FULL_FRAME_AREA * width * height:
        return None
    centre_x = (region.x_min + region.x_max) / 2.0 * width
    centre_y = (region.y_min + region.y_max) / 2.0 * height
    x0 = min(max(0.0, centre_x - crop_w / 2.0), width - crop_w)
    y0 = min(max(0.0, centre_y - crop_h / 2.0), height - crop_h)
    left, top = round(x0), round(y0)
    right = min(width, max(left + 1, round(x0 + crop_w)))
    bottom = min(height, max(top + 1, round(y0 + crop_h)))
    return PixelRegion(left, top, right, bottom)


def _even_pixels(length: float, limit: int) -> int:
    """``length`` rounded up to whole pixels, and on to an even number unless that is
    more than ``limit`` (the frame's side: an odd frame's side stays odd)."""
    pixels = min(limit, max(1, math.ceil(length - 1e-9)))
    return pixels + 1 if pixels % 2 and pixels < limit else pixels


def _halves(size: tuple[float, float], input_size: tuple[int, int]) -> bool:
    """Whether a crop of ``size`` (width, height) is large enough for ``halve_large``:
    still HALVE_ABOVE times the input's size on both sides once halved."""
    least = 2.0 * HALVE_ABOVE
    return size[0] >= least * input_size[0] and size[1] >= least * input_size[1]


def halve_large(crop: UInt8Image, input_size: tuple[int, int]) -> UInt8Image:
    """``crop`` averaged over 2x2 blocks when it is still HALVE_ABOVE times the input's
    size on both sides after that, its sides are even and not already whole multiples
    of the input's; else ``crop`` itself.

    OpenCV's area resize has a fast path for whole-number factors and a vectorised one
    for 2x2 blocks in particular; any other factor takes its general path, which costs
    two to three times as much per pixel. A crop halved first and then area-resized
    to the input costs under half as much (410x308 to 96x96 on camera frames: 447
    against 1034 us). The filter stays an average over each input pixel's area; only
    where an input pixel's edge cuts through a 2x2 block does that block count whole
    or not at all: a third of a grey level on average on generated scenes, up to about
    20 on their sharpest edges, which moved a detector's heatmap less than shifting
    the frame by one pixel does (docs/detection.md has the comparison). Crops only:
    a whole frame keeps the one area resize training used, so that what a model sees
    on the device is what it saw in training and evaluation.
    """
    height, width = crop.shape[:2]
    if height % 2 or width % 2 or not _halves((width, height), input_size):
        return crop
    if width % input_size[0] == 0 and height % input_size[1] == 0:
        return crop  # whole blocks already: the area resize is exact and fast as it is
    return np.asarray(cv2.resize(crop, (width // 2, height // 2), interpolation=cv2.INTER_AREA))


def _whole_multiple(
    need: tuple[float, float],
    frame_size: tuple[int, int],
    input_size: tuple[int, int],
    aspect: float,
) -> tuple[float, float] | None:
    """The smallest crop of at least ``need`` (width, height) whose sides are whole
    multiples of the input's and whose aspect is exactly ``aspect``, if the frame holds
    one and it is at most WHOLE_MULTIPLE_GROWTH times ``need``'s area (640x480 frames
    and a 96x96 stretch model: 384x288 for anything up to that size).

    OpenCV's area resize averages whole blocks of pixels when both factors are whole
    numbers, and that path costs under half as much per source pixel as the general
    one (a 384x288 crop to 96x96 took two thirds of the time of a 320x240 one). Both
    are the same filter, the pixels' average over each output pixel's area, so the
    model sees the kind of picture it always sees.
    """
    unit_w, unit_h = _multiple_unit(aspect, input_size)
    times = max(1, math.ceil(need[0] / unit_w - 1e-9), math.ceil(need[1] / unit_h - 1e-9))
    width, height = times * unit_w, times * unit_h
    if width > frame_size[0] or height > frame_size[1]:
        return None
    if width * height > WHOLE_MULTIPLE_GROWTH * need[0] * need[1]:
        return None
    return float(width), float(height)


@functools.cache
def _multiple_unit(aspect: float, input_size: tuple[int, int]) -> tuple[int, int]:
    """The smallest crop size whose sides are whole multiples of ``input_size``'s and
    whose aspect is ``aspect`` (as a fraction of small whole numbers). Cached: the
    fractions cost more than the rest of a crop's arithmetic, and a stream asks with
    the same frame and input size every time."""
    ratio = Fraction(aspect).limit_denominator(1000)
    input_w, input_h = input_size
    # Blocks across per block down, for the crop's aspect to be exactly ``aspect``.
    blocks = Fraction(input_h * ratio.numerator, input_w * ratio.denominator)
    return blocks.numerator * input_w, blocks.denominator * input_h


def to_frame(obj: DetectedObject, region: NormBox) -> DetectedObject:
    """An object found in a crop, in the coordinates of the frame the crop came from."""

    def x(value: float) -> float:
        return min(1.0, max(0.0, region.x_min + value * region.width))

    def y(value: float) -> float:
        return min(1.0, max(0.0, region.y_min + value * region.height))

    box = obj.box
    centre = obj.centroid
    return DetectedObject(
        label=obj.label,
        score=obj.score,
        box=NormBox(x(box.x_min), y(box.y_min), x(box.x_max), y(box.y_max)),
        box_is_estimate=obj.box_is_estimate,
        center=(x(centre[0]), y(centre[1])),
    )


class Detector:
    """One detection bundle on one runtime; not thread-safe except ``preprocess``
    (a capture thread) alongside ``detect`` (one inference thread)."""

    def __init__(
        self,
        manifest: Manifest,
        runtime: ModelRuntime,
        thresholds: Mapping[str, float] | None = None,
        threshold: float | None = None,
        *,
        min_region_fraction: float = MIN_REGION_FRACTION,
        region_margin: float = REGION_MARGIN,
    ) -> None:
        parts = manifest.detector_parts()
        if manifest.task != TASK or parts is None:
            raise ModelMismatchError(
                f"{manifest.model_ref} is a {manifest.task} model; a detector needs an "
                f"{TASK} bundle (image preprocessing, centroid-heatmap decoding)"
            )
        self.manifest = manifest
        self.runtime = runtime
        self.spec: ImagePreprocessing = parts[0]
        self.decoding: HeatmapDecoding = parts[1]
        self.labels: tuple[str, ...] = manifest.labels
        #: The labels that can be detected (all but the background).
        self.object_labels = tuple(
            label for label in self.labels if label != self.decoding.background_label
        )
        if not 0.0 < min_region_fraction <= 1.0 or region_margin < 0.0:
            raise ConfigError(
                "a detector's minimum region share must be in (0, 1] and its margin >= 0"
            )
        self.min_region_fraction = min_region_fraction
        self.region_margin = region_margin
        self._check_output()
        self._lut = pixel_lut(self.spec, runtime.inputs[0])
        self._input: FloatArray = np.empty(
            (1, self.spec.height, self.spec.width, channels(self.spec)), dtype=np.float32
        )
        self.thresholds: dict[str, float] = {}
        self._decoder = HeatmapDecoder(self.labels, self.decoding, np.zeros(len(self.labels)))
        self.set_thresholds(thresholds or {}, threshold)

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        threads: int = 2,
        edgetpu: EdgeTpuMode = "auto",
        thresholds: Mapping[str, float] | None = None,
        threshold: float | None = None,
    ) -> Detector:
        """Load the bundle the way serving requires (tensor check, golden smoke test)."""
        bundle.require_task(TASK)
        runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, threads, edgetpu)
        return cls(bundle.manifest, runtime, thresholds, threshold)

    def _check_output(self) -> None:
        output = self.runtime.outputs[0]
        expected = self.manifest.outputs[0].shape
        if output.shape != expected:
            raise ModelMismatchError(
                f"{self.manifest.model_ref}: output 0 is {list(output.shape)} but the "
                f"manifest states {list(expected)}; rebuild the bundle"
            )

    def set_thresholds(self, per_label: Mapping[str, float], default: float | None = None) -> None:
        """Thresholds from, first to last: ``per_label``, ``default``, the bundle's
        per-label values, the bundle's default. The new table is built, then swapped
        in whole, so a concurrent ``detect`` sees the old or the new one."""
        for label, value in per_label.items():
            if label not in self.object_labels:
                raise ConfigError(
                    f"threshold for {label!r}: model {self.manifest.model_ref} detects "
                    f"only {', '.join(self.object_labels)}"
                )
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"threshold for {label!r} must be in [0, 1], got {value}")
        if default is not None and not 0.0 <= default <= 1.0:
            raise ConfigError(f"the default threshold must be in [0, 1], got {default}")
        table: dict[str, float] = {}
        for label in self.object_labels:
            if label in per_label:
                table[label] = float(per_label[label])
            elif default is not None:
                table[label] = float(default)
            else:
                table[label] = self.manifest.thresholds.for_label(label)
        limits = [table.get(label, 1.0) for label in self.labels]
        self._decoder = HeatmapDecoder(self.labels, self.decoding, limits)
        self.thresholds = table

    def preprocess(self, frame_bgr: UInt8Image) -> AnyArray:
        """A whole frame → the model's own input tensor (no batch axis); meant for the
        capture thread. For an int8 input that is resize plus one table lookup."""
        resized = resize_frame(frame_bgr, self.spec)
        if self._lut is None:
            return resized
        return lookup_pixels(self._lut, resized)

    def region_crop(self, frame_size: tuple[int, int], region: NormBox) -> PixelRegion | None:
        """The crop ``detect`` runs on for ``region`` (None: the whole frame), in the
        shape whole frames reach the model in (see the module's notes)."""
        frame_w, frame_h = frame_size
        stretched = self.spec.resize == "stretch"
        return crop_region(
            region,
            frame_size,
            (self.spec.width, self.spec.height),
            min_fraction=self.min_region_fraction,
            margin=self.region_margin,
            aspect=frame_w / frame_h if stretched else None,
        )

    def detect(
        self,
        frame_bgr: UInt8Image,
        region: NormBox | None = None,
        tensor: AnyArray | None = None,
    ) -> DetectionResult:
        """Objects in ``frame_bgr``, or in ``region`` of it (see the module docstring).

        ``tensor``, when given, must be this detector's ``preprocess`` of the whole
        frame; it is used only when the whole frame is inferred.
        """
        start = time.perf_counter()
        height, width = frame_bgr.shape[:2]
        crop = self.region_crop((width, height), region) if region is not None else None
        seen: NormBox | None = None
        if crop is not None:
            seen = crop.normalised(width, height)
            view = frame_bgr[crop.y0 : crop.y1, crop.x0 : crop.x1]
            tensor = self.preprocess(halve_large(view, (self.spec.width, self.spec.height)))
        elif tensor is None or tensor.shape != self._input.shape[1:]:
            tensor = self.preprocess(frame_bgr)
        output, invoke_ms = self._invoke(tensor)
        probabilities, objects = self._decoder(output)
        if seen is not None:
            objects = [to_frame(obj, seen) for obj in objects]
        return DetectionResult(
            objects=tuple(objects),
            inference_ms=(time.perf_counter() - start) * 1000.0,
            invoke_ms=invoke_ms,
            region=seen,
            probabilities=probabilities,
        )

    def _invoke(self, tensor: AnyArray) -> tuple[FloatArray, float]:
        began = time.perf_counter()
        if self._lut is not None:
            native = self.runtime.invoke_native([tensor[np.newaxis]])[0]
            invoke_ms = (time.perf_counter() - began) * 1000.0
            return dequantize(native, self.runtime.outputs[0]), invoke_ms
        normalise(tensor, self.spec, out=self._input[0])
        output = self.runtime.invoke([self._input])[0]
        return output, (time.perf_counter() - began) * 1000.0

    def output_to_objects(self, output: Any) -> tuple[FloatArray, list[DetectedObject]]:
        """Decode a float output the caller invoked itself (parity checks)."""
        return self._decoder(output)
