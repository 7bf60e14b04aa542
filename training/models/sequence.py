"""Next-event models: the ids of the last ``history`` events in, a logit per class out.

Three architectures, all starting with an embedding of the event ids:

* ``mlp`` (the default): the embedded window flattened into one hidden layer. The order
  of events is in the weights' positions, which is all a fixed window needs. It converts
  to full int8 with every op a TFLite builtin (GATHER, FULLY_CONNECTED), keeps a free
  batch dimension, and is the fastest by far when many histories are scored at once.
* ``conv``: three causal dilated 1-D convolutions (receptive field 15 events) before the
  hidden layer; also full int8, three to four times slower than ``mlp`` on a CPU, and in
  our measurements no better on HDFS.
* ``lstm``: DeepLog's own choice. A Keras LSTM does not survive full int8 conversion as
  it is: with a free batch dimension the converter fails on its TensorList ops, and with
  a fixed batch of one the converter crashed (segmentation fault, TF 2.21) while
  quantizing the fused LSTM op. Unrolled over the window (``unroll=True``) it converts to
  plain int8 FULLY_CONNECTED/LOGISTIC/TANH ops and agrees with Keras, at about three
  times the invoke cost of ``mlp``; it is offered for comparison.

The output is logits (no softmax in the graph): an int8 softmax output has a resolution
of 1/256 in probability, which makes most unlikely classes tie at zero, while int8 logits
keep their order; the device applies the softmax in float where it needs probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Architecture = Literal["mlp", "conv", "lstm"]
ARCHITECTURES: tuple[Architecture, ...] = ("mlp", "conv", "lstm")


@dataclass(frozen=True)
class SequenceModelSpec:
    classes: int
    history: int
    architecture: Architecture = "mlp"
    embedding: int = 16
    units: int = 128
    dropout: float = 0.1


def build_next_event_model(keras: Any, spec: SequenceModelSpec, name: str) -> Any:
    """A compiled-free Keras model: int32 ``(batch, history)`` → float ``(batch, classes)``."""
    layers = keras.layers
    inputs = keras.Input((spec.history,), dtype="int32", name="events")
    x = layers.Embedding(spec.classes, spec.embedding, name="embedding")(inputs)
    if spec.architecture == "mlp":
        x = layers.Flatten(name="window")(x)
    elif spec.architecture == "conv":
        for index, dilation in enumerate((1, 2, 4)):
            x = layers.Conv1D(
                spec.units // 2, 3, padding="causal", dilation_rate=dilation,
                activation="relu", name=f"conv{index + 1}",
            )(x)  # fmt: skip
        x = layers.Flatten(name="window")(x)
    elif spec.architecture == "lstm":
        x = layers.LSTM(spec.units // 2, unroll=True, name="lstm")(x)
    else:
        raise ValueError(f"unknown architecture {spec.architecture!r}; use one of {ARCHITECTURES}")
    x = layers.Dense(spec.units, activation="relu", name="hidden")(x)
    if spec.dropout > 0:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    outputs = layers.Dense(spec.classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
