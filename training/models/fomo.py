"""A FOMO-style detector: a small separable CNN that classifies every 8x8 input cell.

FOMO ("Faster Objects, More Objects", Edge Impulse) cuts a MobileNet at 1/8 of the
input resolution and puts a per-cell classifier on it: each output cell says "the
centre of an object of class k is here" or "background". There is no box regression,
no anchors and no non-maximum suppression, so the whole graph is convolutions that
quantize fully to int8 and run on the Edge TPU, and it costs a few million
multiply-adds at 96x96: a Pi 4 core runs it at camera rates.

No pretrained weights can be fetched where this project is built and tested, so the
backbone is trained from scratch, kept small and built for that: max-pooling rather
than strided depthwise convolutions for downsampling (see ``training.models.mobilenet``
for why that generalises better from scratch), and at stride 8 a few residual
separable blocks with 5x5 depthwise kernels, which widen the receptive field to
about 130 input pixels so a cell sees the whole of a large object around it.

Ops after conversion: CONV_2D, DEPTHWISE_CONV_2D, MAX_POOL_2D, ADD (ReLU6 fused).
The model outputs logits: the Edge TPU's SOFTMAX takes only 1-D tensors, so the
per-cell softmax runs on the device (``HeatmapDecoding.apply_softmax``), over a grid
of a few hundred values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from device.errors import EdgewatchError
from training.tf_setup import import_keras

log = logging.getLogger(__name__)

#: Input pixels per output cell.
STRIDE = 8
#: Filters at alpha = 1: stem, the blocks at 1/2 and 1/4, the blocks at 1/8, the head.
STEM_FILTERS = 16
STAGE_FILTERS = (32, 64)
CONTEXT_FILTERS = 64
HEAD_FILTERS = 32
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class FomoSpec:
    """What the architecture depends on; recorded in provenance."""

    #: Output channels: the background and every object class.
    num_classes: int
    input_width: int
    input_height: int
    channels: int = 3
    alpha: float = 1.0
    #: Residual 5x5 separable blocks at 1/8 resolution (receptive field and capacity).
    context_blocks: int = 3

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise EdgewatchError("a detector needs the background and at least one class")
        for side in (self.input_width, self.input_height):
            if side < 2 * STRIDE or side % STRIDE:
                raise EdgewatchError(
                    f"detector input sides must be multiples of {STRIDE} and at least "
                    f"{2 * STRIDE} pixels, got {self.input_width}x{self.input_height}"
                )
        if self.channels not in (1, 3):
            raise EdgewatchError(f"images have 1 or 3 channels, got {self.channels}")
        if not 0.0 < self.alpha <= 4.0:
            raise EdgewatchError(f"width multiplier alpha must be in (0, 4], got {self.alpha}")
        if not 0 <= self.context_blocks <= 8:
            raise EdgewatchError(f"context blocks must be 0..8, got {self.context_blocks}")

    @property
    def grid(self) -> tuple[int, int]:
        """Output (rows, cols)."""
        return self.input_height // STRIDE, self.input_width // STRIDE


def _filters(base: int, alpha: float) -> int:
    return max(8, int(base * alpha + 4) // 8 * 8)


def build_fomo(spec: FomoSpec, name: str = "edgewatch_fomo") -> Any:
    """The detector (uncompiled): image → (rows, cols, classes) logits."""
    keras = import_keras()
    layers = keras.layers
    inputs = keras.Input(shape=(spec.input_height, spec.input_width, spec.channels), name="image")

    def bn_relu(x: Any, prefix: str) -> Any:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_bn")(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}_relu6")(x)

    def separable(x: Any, filters: int, kernel: int, prefix: str, pool: bool) -> Any:
        x = layers.DepthwiseConv2D(kernel, padding="same", use_bias=False, name=f"{prefix}_dw")(x)
        x = bn_relu(x, f"{prefix}_dw")
        if pool:
            x = layers.MaxPooling2D(2, padding="same", name=f"{prefix}_pool")(x)
        x = layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_pw")(x)
        return bn_relu(x, f"{prefix}_pw")

    x = layers.Conv2D(
        _filters(STEM_FILTERS, spec.alpha), 3, strides=2, padding="same", use_bias=False,
        name="stem_conv",
    )(inputs)  # fmt: skip
    x = bn_relu(x, "stem")
    for index, base in enumerate(STAGE_FILTERS, start=1):
        filters = _filters(base, spec.alpha)
        x = separable(x, filters, 3, f"stage{index}a", pool=False)
        x = separable(x, filters, 3, f"stage{index}b", pool=True)
    width = _filters(CONTEXT_FILTERS, spec.alpha)
    if x.shape[-1] != width:
        x = layers.Conv2D(width, 1, use_bias=False, name="context_in")(x)
        x = bn_relu(x, "context_in")
    for index in range(1, spec.context_blocks + 1):
        branch = separable(x, width, 5, f"context{index}", pool=False)
        x = layers.Add(name=f"context{index}_add")([x, branch])
    x = layers.Conv2D(_filters(HEAD_FILTERS, spec.alpha), 1, name="head_conv")(x)
    x = layers.ReLU(max_value=6.0, name="head_relu6")(x)
    # float32 logits under mixed precision: the softmax in the loss needs the range.
    outputs = layers.Conv2D(spec.num_classes, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)
