"""A MobileNet-style image classifier small enough to run many frames a second on a Pi.

Only Keras 3 layers are used, and only ones that the TFLite converter maps onto Edge
TPU-friendly builtins (CONV_2D, DEPTHWISE_CONV_2D, MAX_POOL_2D, MEAN, FULLY_CONNECTED,
SOFTMAX, with ReLU6 fused). The model takes an already-normalised float image: the device
resizes and normalises frames itself (``device.preprocessing.image``), so preprocessing
and augmentation layers must never be part of the graph that gets exported.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device.errors import DatasetError, EdgewatchError
from training.tf_setup import import_keras

log = logging.getLogger(__name__)

Pretrained = Literal["imagenet"]

#: (pointwise filters at alpha=1, depthwise stride) per separable block: MobileNet v1's
#: layout with the 512-filter run shortened from five blocks to three, which costs little
#: accuracy at the small input sizes a Pi runs and saves a third of the multiply-adds.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
STEM_FILTERS = 32
#: Faster than Keras' 0.99 for short runs on small data, where the moving statistics
#: otherwise still describe the initial weights when training stops.
BN_MOMENTUM = 0.9
#: How the separable blocks halve the resolution. "maxpool" runs the depthwise conv at
#: stride 1 and max-pools 2x2 after it; "stride" is MobileNet v1's strided depthwise conv.
#: From scratch on small data, strided depthwise convs generalise badly: they sample
#: every other position, so a pattern shifted by one pixel gives different features
#: (aliasing), and the network memorises images instead of learning shapes. On generated
#: shapes (2,800 training images, 64 px, 6 epochs) validation accuracy went from 0.62
#: with strides to 0.93 with max-pooling, at about 5% more multiply-adds (only the cheap
#: depthwise convs of the four downsampling blocks run at the higher resolution).
Downsample = Literal["maxpool", "stride"]
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0)
IMAGENET_SIZES = (96, 128, 160, 192, 224)
DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class MobileNetSpec:
    """What the architecture depends on; stored in provenance so a model can be rebuilt."""

    num_classes: int
    input_size: int
    channels: int = 3
    alpha: float = 0.5
    dropout: float = 0.2
    pretrained: Pretrained | None = None
    #: How many of BLOCKS to use; fewer suits small inputs and small datasets, where
    #: the last blocks would run on a 1x1 feature map and mostly add parameters to fit.
    blocks: int = len(BLOCKS)
    downsample: Downsample = "maxpool"

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise DatasetError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.input_size < 16:
            raise EdgewatchError(f"input size must be at least 16 pixels, got {self.input_size}")
        if self.channels not in (1, 3):
            raise EdgewatchError(f"images have 1 or 3 channels, got {self.channels}")
        if not 0.0 < self.alpha <= 2.0:
            raise EdgewatchError(f"width multiplier alpha must be in (0, 2], got {self.alpha}")
        if not 1 <= self.blocks <= len(BLOCKS):
            raise EdgewatchError(f"blocks must be between 1 and {len(BLOCKS)}, got {self.blocks}")
        if self.downsample not in ("maxpool", "stride"):
            raise EdgewatchError(
                f"downsample must be maxpool or stride, got {self.downsample!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise EdgewatchError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pretrained == "imagenet":
            problems = []
            if self.alpha not in IMAGENET_ALPHAS:
                problems.append(f"alpha {self.alpha} (choose one of {IMAGENET_ALPHAS})")
            if self.input_size not in IMAGENET_SIZES:
                problems.append(f"input size {self.input_size} (one of {IMAGENET_SIZES})")
            if self.channels != 3:
                problems.append("grey images (ImageNet weights need colour: use rgb)")
            if problems:
                raise EdgewatchError(
                    "ImageNet weights exist only for some settings; unsupported: "
                    + "; ".join(problems)
                )


def _filters(base: int, alpha: float) -> int:
    # Multiples of 8 keep channel counts friendly to SIMD kernels and the Edge TPU.
    return max(8, int(base * alpha + 4) // 8 * 8)


def build_mobilenet(spec: MobileNetSpec, name: str = "edgewatch_mobilenet") -> Any:
    """Build the classifier (uncompiled) under the current global Keras dtype policy."""
    keras = import_keras()
    layers = keras.layers
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, spec.channels), name="image")
    if spec.pretrained == "imagenet":
        features = _imagenet_backbone(spec)(inputs)
    else:
        features = _scratch_backbone(keras, spec, inputs)
    x = layers.GlobalAveragePooling2D(name="pool")(features)
    if spec.dropout > 0:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    x = layers.Dense(spec.num_classes, name="logits")(x)
    # float32 output under mixed precision: softmax in float16 loses small probabilities.
    outputs = layers.Softmax(name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _scratch_backbone(keras: Any, spec: MobileNetSpec, inputs: Any) -> Any:
    layers = keras.layers
    x = layers.Conv2D(
        _filters(STEM_FILTERS, spec.alpha), 3, strides=2, padding="same", use_bias=False,
        name="stem_conv",
    )(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(max_value=6.0, name="stem_relu6")(x)
    for index, (filters, stride) in enumerate(BLOCKS[: spec.blocks], start=1):
        prefix = f"block{index}"
        pool = stride > 1 and spec.downsample == "maxpool"
        x = layers.DepthwiseConv2D(
            3, strides=1 if pool else stride, padding="same", use_bias=False,
            name=f"{prefix}_dw",
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_dw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_dw_relu6")(x)
        if pool:
            # padding="same" keeps odd sizes working (ceil), like the strided conv did.
            x = layers.MaxPooling2D(stride, padding="same", name=f"{prefix}_pool")(x)
        x = layers.Conv2D(
            _filters(filters, spec.alpha), 1, padding="same", use_bias=False,
            name=f"{prefix}_pw",
        )(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{prefix}_pw_bn")(x)
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_pw_relu6")(x)
    return x


def imagenet_weights_file(alpha: float, input_size: int) -> str:
    """The file name Keras caches MobileNetV2 no-top weights under (in ~/.keras/models)."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{input_size}_no_top.h5"


def imagenet_weights_cached(alpha: float, input_size: int) -> bool:
    keras_home = Path.home() / ".keras"
    return (keras_home / "models" / imagenet_weights_file(alpha, input_size)).is_file()


def _imagenet_backbone(spec: MobileNetSpec) -> Any:
    """MobileNetV2 with ImageNet weights, or a clear error instead of a hang offline.

    MobileNetV2's expected input range is [-1, 1], which is exactly the default
    normalisation (scale 1/127.5, offset -1), so no extra layer is needed in front.
    """
    keras = import_keras()
    holder: dict[str, Any] = {}

    def fetch() -> None:
        try:
            holder["model"] = keras.applications.MobileNetV2(
                input_shape=(spec.input_size, spec.input_size, 3),
                alpha=spec.alpha,
                include_top=False,
                weights="imagenet",
            )
        # keras.utils.get_file re-raises every network failure as a bare Exception.
        except Exception as exc:  # noqa: BLE001
            holder["error"] = exc

    cached = imagenet_weights_cached(spec.alpha, spec.input_size)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        if cached:
            fetch()
        else:
            log.info("downloading ImageNet weights for MobileNetV2 (alpha %s)", spec.alpha)
            # A thread bounds the wait even where the socket timeout does not apply
            # (name resolution); a stuck download is left behind, not waited for.
            worker = threading.Thread(target=fetch, name="imagenet-weights", daemon=True)
            worker.start()
            worker.join(DOWNLOAD_TIMEOUT_S * 2)
            if worker.is_alive():
                holder["error"] = TimeoutError(f"no answer in {DOWNLOAD_TIMEOUT_S * 2:.0f} s")
    finally:
        socket.setdefaulttimeout(previous_timeout)
    if "error" in holder:
        error = holder["error"]
        raise EdgewatchError(
            f"could not download ImageNet weights ({type(error).__name__}: {error}); "
            "train without --pretrained or place the weights file "
            f"{imagenet_weights_file(spec.alpha, spec.input_size)} in ~/.keras/models"
        ) from error
    return holder["model"]
