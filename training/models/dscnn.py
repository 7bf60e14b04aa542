"""DS-CNN: the depthwise-separable keyword-spotting network of "Hello Edge" (Zhang et
al., 2017), which MLPerf Tiny uses as its keyword-spotting reference.

A strided stem convolution over the (frames x coefficients) feature image, then
``blocks`` depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, each with batch
norm and ReLU), global average pooling and a softmax layer. Every op maps onto an int8
TFLite builtin that the Edge TPU also runs (CONV_2D, DEPTHWISE_CONV_2D, MEAN,
FULLY_CONNECTED, SOFTMAX). Features are computed on the device
(``device.audio.features``), so the model takes them already normalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from device.errors import DatasetError
from training.tf_setup import import_keras

log = logging.getLogger(__name__)

#: Faster than Keras' 0.99 for short runs on small data, where the moving statistics
#: otherwise still describe the initial weights when training stops.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class DsCnnSpec:
    """What the architecture depends on; recorded in provenance."""

    num_classes: int
    frames: int
    coefficients: int
    #: Filters of the stem and of every block (64: DS-CNN-S, 172: DS-CNN-M).
    width: int = 64
    blocks: int = 4
    #: The stem's kernel over (time, coefficients), as in the paper (10 x 4).
    stem_kernel: tuple[int, int] = (10, 4)
    dropout: float = 0.2
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DatasetError(f"a classifier needs at least 2 classes, got {self.num_classes}")


def build_dscnn(spec: DsCnnSpec, name: str = "dscnn") -> Any:
    keras = import_keras()
    layers = keras.layers
    regularizer = keras.regularizers.l2(spec.weight_decay) if spec.weight_decay else None
    inputs = keras.Input(shape=(spec.frames, spec.coefficients, 1), name="features")
    kernel = (min(spec.stem_kernel[0], spec.frames), min(spec.stem_kernel[1], spec.coefficients))
    x = layers.Conv2D(
        spec.width, kernel, strides=(2, 2), padding="same", use_bias=False,
        kernel_regularizer=regularizer, name="stem",
    )(inputs)  # fmt: skip
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="stem_dropout")(x)
    for index in range(spec.blocks):
        prefix = f"block{index + 1}"
        x = layers.DepthwiseConv2D(
            (3, 3), padding="same", use_bias=False, name=f"{prefix}_dw",
            depthwise_regularizer=regularizer,
        )(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_dw_bn")(x)
        x = layers.ReLU(name=f"{prefix}_dw_relu")(x)
        x = layers.Conv2D(
            spec.width, (1, 1), use_bias=False, kernel_regularizer=regularizer,
            name=f"{prefix}_pw",
        )(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_pw_bn")(x)
        x = layers.ReLU(name=f"{prefix}_pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name="head_dropout")(x)
    outputs = layers.Dense(spec.num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name=name)
