"""Can this bundle replace the model a pipeline runs? Decided from the manifest alone.

A pushed bundle replaces the model of every pipeline whose current model has the same
manifest ``name``. It must then fit what those pipelines are configured and built to do:

- the same task (an image classifier cannot replace an audio model);
- exactly one input, shaped ``[1, height, width, channels]`` with height and width as the
  manifest's preprocessing states and 3 channels for ``rgb``/``bgr``, 1 for ``grey``
  (the pipeline resizes frames to whatever size the new model wants, so the size may
  change; what it cannot do is feed a tensor that disagrees with its own preprocessing);
- an input dtype the pipeline can feed: float32, int8 or uint8;
- output 0 with exactly one value per label (a classifier), or one per label and grid
  cell (a detector's heatmap: the last axis holds the labels);
- every label the pipeline's config names (``thresholds``, ``ignore_labels``) present.

The runtime then checks that the model's real tensors match the manifest and runs the
golden pair (the smoke test), so a manifest that lies is caught too.
"""

from __future__ import annotations

import logging
import math

from device.bundle.manifest import ImagePreprocessing, Manifest
from device.config import FramePipelineConfig as PipelineConfig
from device.errors import BundleIncompatibleError, BundleTaskError

log = logging.getLogger(__name__)

FEEDABLE_DTYPES = ("float32", "int8", "uint8")


def check_compatible(manifest: Manifest, pipeline: str, config: PipelineConfig) -> None:
    """Raise BundleTaskError or BundleIncompatibleError with the reason, else return."""
    ref = manifest.model_ref
    if manifest.task != config.task:
        raise BundleTaskError(
            f"wrong task: {ref} is a {manifest.task} model, but pipeline {pipeline} "
            f"runs {config.task}"
        )
    if len(manifest.inputs) != 1:
        raise BundleIncompatibleError(
            f"wrong input shape: {ref} has {len(manifest.inputs)} inputs; pipeline "
            f"{pipeline} feeds exactly one image"
        )
    spec = manifest.preprocessing
    if not isinstance(spec, ImagePreprocessing):  # only a sensor-anomaly manifest has another
        raise BundleTaskError(f"wrong task: {ref} does not take images")
    channels = 1 if spec.color == "grey" else 3
    expected = (1, spec.height, spec.width, channels)
    tensor = manifest.inputs[0]
    if tuple(tensor.shape) != expected:
        raise BundleIncompatibleError(
            f"wrong input shape: {ref} input is {list(tensor.shape)} but its preprocessing "
            f"({spec.width}x{spec.height} {spec.color}) makes {list(expected)}"
        )
    if tensor.dtype not in FEEDABLE_DTYPES:
        raise BundleIncompatibleError(
            f"wrong input type: {ref} input is {tensor.dtype}; pipeline {pipeline} feeds "
            f"{', '.join(FEEDABLE_DTYPES)}"
        )
    if config.task == "object-detection":
        shape = manifest.outputs[0].shape
        if len(shape) != 4 or shape[-1] != len(manifest.labels):
            raise BundleIncompatibleError(
                f"wrong output shape: {ref} output 0 is {list(shape)}; a detector's is "
                f"[1, rows, columns, {len(manifest.labels)}] (one score per label and cell)"
            )
    elif (outputs := math.prod(manifest.outputs[0].shape)) != len(manifest.labels):
        raise BundleIncompatibleError(
            f"wrong output shape: {ref} output 0 has {outputs} values for "
            f"{len(manifest.labels)} labels"
        )
    for key, names in (
        ("thresholds", tuple(config.thresholds)),
        ("ignore_labels", config.ignore_labels),
    ):
        missing = [label for label in names if label not in manifest.labels]
        if missing:
            raise BundleIncompatibleError(
                f"missing labels: pipelines.{pipeline}.{key} names {missing}, which {ref} "
                f"lacks; its labels are {list(manifest.labels)}"
            )
