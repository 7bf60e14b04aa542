"""Importing TensorFlow lazily and choosing where (and how) training runs.

Workstation commands must start without TensorFlow installed and say in one line what to
install, so nothing imports it at module level; everything goes through this module. It
also quietens TensorFlow's C++ logging, which has to happen before the first import.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from device.errors import MissingExtraError

log = logging.getLogger(__name__)

#: TensorFlow's C++ log level: 2 hides INFO and WARNING chatter (oneDNN, CUDA probing).
_QUIET_TF_LOGS = "2"


def _quiet_environment() -> None:
    # setdefault: a user who asked for TensorFlow's logs with the variable keeps them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _QUIET_TF_LOGS)


def import_tensorflow() -> Any:
    """Return the tensorflow module, or raise the one-line "install the train extra" error."""
    _quiet_environment()
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingExtraError("tensorflow", "train") from exc
    return tf


def import_keras() -> Any:
    """Return Keras 3 (backed by TensorFlow), with the same missing-extra handling."""
    import_tensorflow()
    try:
        import keras
    except ImportError as exc:
        raise MissingExtraError("keras", "train") from exc
    return keras


@dataclass(frozen=True)
class DeviceInfo:
    """Where training runs; recorded in the model's provenance and logged once."""

    gpus: tuple[str, ...]
    mixed_precision: bool
    deterministic: bool
    tensorflow_version: str
    keras_version: str

    @property
    def uses_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        where = f"GPU ({', '.join(self.gpus)})" if self.gpus else "CPU"
        precision = "mixed_float16" if self.mixed_precision else "float32"
        return (
            f"{where}, {precision}, deterministic ops {'on' if self.deterministic else 'off'}"
        )


def configure_devices(seed: int, mixed_precision: bool = True) -> DeviceInfo:
    """Seed every generator and pick the compute device and precision for training.

    Mixed precision is only worth it (and only numerically safe to default to) on a GPU;
    on a CPU it is slower, so it is used only when TensorFlow sees a GPU. The global
    dtype policy is set here; the model builder reads it, and the exported model is
    always rebuilt in float32 (see ``training.train_image``).
    """
    tf = import_tensorflow()
    keras = import_keras()
    keras.utils.set_random_seed(seed)
    gpus = tuple(str(d.name) for d in tf.config.list_physical_devices("GPU"))
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            # Take memory as needed, so a second process (evaluate, convert) still fits.
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:
            log.debug("cannot set memory growth on %s: %s", gpu.name, exc)
    deterministic = True
    try:
        tf.config.experimental.enable_op_determinism()
    except (AttributeError, RuntimeError) as exc:
        deterministic = False
        log.info("op determinism unavailable (%s); results may vary run to run", exc)
    use_mixed = mixed_precision and bool(gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")
    info = DeviceInfo(
        gpus=gpus,
        mixed_precision=use_mixed,
        deterministic=deterministic,
        tensorflow_version=str(tf.__version__),
        keras_version=str(keras.__version__),
    )
    log.info("training on %s", info.describe())
    return info
