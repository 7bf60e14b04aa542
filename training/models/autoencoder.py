"""A small dense autoencoder over sensor windows.

Why dense rather than Conv1D or a recurrent forecaster: a window of a few dozen steps
flattened is a few dozen numbers, a dense bottleneck over them learns the shapes a
normal window takes (its place in the cycle, its slope) in seconds of training, and
FULLY_CONNECTED is the op every int8 kernel set and the Edge TPU run best. A
reconstruction (rather than a forecast) also catches a stuck sensor: a flat window is
easy to continue but not one of the shapes the bottleneck can express.

Input and output are (window, columns); the model is multivariate over the columns of
its training files (one univariate model per series is the same thing with one column).
``GaussianNoise`` makes it a denoising autoencoder during training; it does nothing at
inference and disappears in conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AutoencoderSpec:
    window: int
    columns: int
    hidden: int = 64
    latent: int = 8
    #: Standard deviation of the training-time input noise (z units); 0 turns it off.
    noise: float = 0.1


def build_autoencoder(
    keras: Any,
    spec: AutoencoderSpec,
    name: str = "sensor_autoencoder",
    batch_size: int | None = None,
) -> Any:
    """Flatten → Dense(hidden) → Dense(latent) → Dense(hidden) → Dense(window x columns).

    ``batch_size=1`` builds the graph the device runs: with a fixed batch the reshapes
    are constants, whereas a free batch dimension leaves SHAPE/STRIDED_SLICE/PACK ops
    in the converted model that the Edge TPU cannot run.
    """
    layers = keras.layers
    size = spec.window * spec.columns
    inputs = keras.Input(shape=(spec.window, spec.columns), batch_size=batch_size, name="window")
    x = layers.Reshape((size,), name="flatten")(inputs)
    if spec.noise > 0 and batch_size is None:
        x = layers.GaussianNoise(spec.noise)(x)
    x = layers.Dense(spec.hidden, activation="relu", name="encode")(x)
    x = layers.Dense(spec.latent, name="code")(x)
    x = layers.Dense(spec.hidden, activation="relu", name="decode")(x)
    x = layers.Dense(size, name="reconstruct")(x)
    outputs = layers.Reshape((spec.window, spec.columns), name="reconstruction")(x)
    return keras.Model(inputs, outputs, name=name)
