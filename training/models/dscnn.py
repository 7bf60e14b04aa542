"""DS-CNN: the depthwise-separable keyword-spotting network of "Hello Edge" (Zhang et
al., 2017), which MLPerf Tiny uses as its keyword-spotting reference.

A strided stem convolution over the (frames x coefficients) feature image, then
``blocks`` depthwise-separable blocks (3x3 depthwise, 1x1 pointwise, each with batch
norm and ReLU), global average pooling and a softmax layer. Every op maps onto an int8
TFLite builtin that the Edge TPU also runs (CONV_2D, DEPTHWISE_CONV_2D, MEAN,
FULLY_CONNECTED, SOFTMAX). Features are computed on the device
(``device.audio.features``), so the model takes them already normalised.

``build_dscnn_ensemble`` puts several DS-CNNs side by side on the same input, each
trained on its own loss from its own initial weights (the branches share no weights),
and averages their probabilities inside one model, so an ensemble is still one graph,
one int8 TFLite file and one invoke (ADD and MUL are Edge TPU builtins too). With
little data, models that differ only in their initial weights disagree on voices they
never heard; on Speech Commands the average's validation log loss was below every
branch's (its accuracy gain over the branches varied from run to run, docs/audio.md).
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


@dataclass(frozen=True)
class DsCnnEnsemble:
    """Two views of the same weights: ``training`` outputs every branch's probabilities
    stacked (batch, branches, classes), so a loss over the last axis trains each branch
    on its own targets; ``inference`` outputs their average (batch, classes) and is the
    model that is saved, evaluated and converted."""

    training: Any
    inference: Any
    branches: int


def _branch(keras: Any, inputs: Any, spec: DsCnnSpec, prefix: str) -> Any:
    """One DS-CNN on ``inputs``; layer names start with ``prefix`` (empty for a single
    model, so its layer names stay those of earlier releases)."""
    layers = keras.layers
    regularizer = keras.regularizers.l2(spec.weight_decay) if spec.weight_decay else None
    kernel = (min(spec.stem_kernel[0], spec.frames), min(spec.stem_kernel[1], spec.coefficients))
    x = layers.Conv2D(
        spec.width, kernel, strides=(2, 2), padding="same", use_bias=False,
        kernel_regularizer=regularizer, name=f"{prefix}stem",
    )(inputs)  # fmt: skip
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}stem_bn")(x)
    x = layers.ReLU(name=f"{prefix}stem_relu")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name=f"{prefix}stem_dropout")(x)
    for index in range(spec.blocks):
        block = f"{prefix}block{index + 1}"
        x = layers.DepthwiseConv2D(
            (3, 3), padding="same", use_bias=False, name=f"{block}_dw",
            depthwise_regularizer=regularizer,
        )(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{block}_dw_bn")(x)
        x = layers.ReLU(name=f"{block}_dw_relu")(x)
        x = layers.Conv2D(
            spec.width, (1, 1), use_bias=False, kernel_regularizer=regularizer,
            name=f"{block}_pw",
        )(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{block}_pw_bn")(x)
        x = layers.ReLU(name=f"{block}_pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name=f"{prefix}pool")(x)
    if spec.dropout:
        x = layers.Dropout(spec.dropout, name=f"{prefix}head_dropout")(x)
    return layers.Dense(spec.num_classes, activation="softmax", name=f"{prefix}scores")(x)


def _inputs(keras: Any, spec: DsCnnSpec) -> Any:
    return keras.Input(shape=(spec.frames, spec.coefficients, 1), name="features")


def build_dscnn(spec: DsCnnSpec, name: str = "dscnn") -> Any:
    keras = import_keras()
    inputs = _inputs(keras, spec)
    return keras.Model(inputs, _branch(keras, inputs, spec, ""), name=name)


def build_dscnn_ensemble(spec: DsCnnSpec, branches: int, name: str = "dscnn") -> DsCnnEnsemble:
    """``branches`` DS-CNNs of ``spec`` on one input (each initialised differently)."""
    if branches < 2:
        raise DatasetError(f"an ensemble needs at least 2 branches, got {branches}")
    keras = import_keras()
    layers = keras.layers
    inputs = _inputs(keras, spec)
    outputs = [_branch(keras, inputs, spec, f"b{i + 1}_") for i in range(branches)]
    stacked = layers.Concatenate(axis=1, name="branch_scores")(
        [layers.Reshape((1, spec.num_classes), name=f"b{i + 1}_row")(out)
         for i, out in enumerate(outputs)]
    )  # fmt: skip
    averaged = layers.Average(name="scores")(outputs)
    return DsCnnEnsemble(
        training=keras.Model(inputs, stacked, name=f"{name}_training"),
        inference=keras.Model(inputs, averaged, name=name),
        branches=branches,
    )
