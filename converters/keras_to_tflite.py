"""Keras → TFLite flatbuffer at each of the five quantization levels.

TensorFlow is imported inside the functions: the CLI imports this module on machines
that only have the device extra, and those must get a one-line "install the train
extra" error rather than an ImportError at start-up.

The int8 and edgetpu levels are full-integer models with int8 input and output
tensors. The device's runtime adapter quantizes the normalised float input with the
input tensor's scale and zero point and dequantizes the output, so no float
QUANTIZE/DEQUANTIZE ops are left at the graph's edges (those would run on the CPU and
split an Edge TPU graph). Current ``edgetpu_compiler`` releases (since 15.0) accept
int8 as well as uint8 boundary tensors, so both levels produce the same flatbuffer;
compilation for the Edge TPU is a separate step (see ``converters.convert``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle.manifest import QuantMode
from device.errors import DatasetError, EdgewatchError, MissingExtraError

log = logging.getLogger(__name__)

#: Levels whose every tensor is int8 and which therefore need representative data.
FULL_INTEGER_LEVELS: frozenset[QuantMode] = frozenset({"int8", "edgetpu"})
QUANT_LEVELS: tuple[QuantMode, ...] = ("float32", "float16", "dynamic", "int8", "edgetpu")


def import_tensorflow() -> Any:
    """Import TensorFlow quietly, or say which extra to install."""
    # The C++ side logs CUDA probing and oneDNN notices at INFO/WARNING level before
    # Python can intervene; the variable must be set before the first import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingExtraError("tensorflow", "train") from exc
    tf.get_logger().setLevel(logging.ERROR)
    return tf


def load_keras_model(path: Path) -> Any:
    """Load a trained ``.keras`` file for conversion (no optimizer state is needed)."""
    tf = import_tensorflow()
    if not path.is_file():
        raise DatasetError(f"{path} is missing; point at the --out folder of `edgewatch train`")
    try:
        return tf.keras.models.load_model(path, compile=False)
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path} is not a loadable Keras model: {exc}") from exc


def _batched(
    samples: list[np.ndarray[Any, Any]], rank: int
) -> Iterator[list[np.ndarray[Any, Any]]]:
    """Each sample as a batch of one: a sample of the input's rank (batch included) is
    taken as it is, one without the batch axis gets it (an HWC image, a window)."""
    for sample in samples:
        array = np.asarray(sample)
        if not np.issubdtype(array.dtype, np.integer):
            # Integer samples are event ids for an int32 input (log models): kept as they are.
            array = array.astype(np.float32)
        yield [array if array.ndim == rank else array[np.newaxis, ...]]


def to_tflite(
    model: Any,
    level: QuantMode,
    representative: Iterable[np.ndarray[Any, Any]] | None,
) -> bytes:
    """Convert a Keras model; ``representative`` holds normalised float inputs.

    The samples must be normalised exactly as the device normalises camera frames
    (``device.preprocessing.image.normalise``), or the int8 ranges calibrated here
    will not match what the device feeds the model. They are used only by the int8
    and edgetpu levels; the other levels ignore them.
    """
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if level == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif level == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif level in FULL_INTEGER_LEVELS:
        samples = list(representative) if representative is not None else []
        if not samples:
            raise DatasetError(
                f"{level} conversion needs representative inputs to calibrate int8 ranges; "
                "pass --calibration DIR with images, or keep calibration.npz in the model folder"
            )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        rank = len(model.inputs[0].shape)
        converter.representative_dataset = lambda: _batched(samples, rank)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif level != "float32":
        raise ValueError(f"unknown quantization level {level!r}; use one of {QUANT_LEVELS}")

    # Keras' export step prints the SavedModel signature to stdout and the converter
    # warns about input statistics it does not need; keep both out of the user's
    # terminal but available at debug level.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model_bytes: bytes = converter.convert()
        except (ValueError, RuntimeError) as exc:
            raise EdgewatchError(
                f"TensorFlow could not convert this model at level {level} ({exc}); "
                "try another --quant level, or check the model's layers are TFLite builtins"
            ) from exc
    if captured.getvalue().strip():
        log.debug("converter output:\n%s", captured.getvalue().rstrip())
    log.info("converted to %s: %d bytes", level, len(model_bytes))
    return model_bytes
