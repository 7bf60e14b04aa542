"""The runtime adapter: backend choice, Edge TPU fallback, quantization, manifest checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from device.bundle.manifest import TensorSpec
from device.bundle.reader import read_bundle
from device.errors import EdgeTpuUnavailableError, ModelMismatchError
from device.runtime import ModelRuntime, dequantize, find_backend, load_for_manifest, quantize


def test_current_interpreter_package_is_preferred() -> None:
    assert find_backend().name == "ai-edge-litert"


def test_missing_edge_tpu_falls_back_to_cpu_with_one_log_line(
    int8_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = read_bundle(int8_bundle)
    with caplog.at_level(logging.WARNING, logger="device.runtime"):
        runtime = ModelRuntime(bundle.model_bytes, threads=1, edgetpu="auto")
    assert not runtime.on_edgetpu
    lines = [r for r in caplog.records if "Edge TPU" in r.getMessage()]
    assert len(lines) == 1 and "running on the CPU" in lines[0].getMessage()
    runtime.smoke_test(bundle.manifest)


def test_required_edge_tpu_is_a_hard_error(int8_bundle: Path) -> None:
    bundle = read_bundle(int8_bundle)
    with pytest.raises(EdgeTpuUnavailableError, match="libedgetpu1-std"):
        ModelRuntime(bundle.model_bytes, threads=1, edgetpu="required")


def test_int8_round_trip_stays_within_one_step() -> None:
    spec = TensorSpec(name="x", shape=(1, 4), dtype="int8", scale=0.05, zero_point=-3)
    values = np.array([[-6.0, -0.01, 0.5, 6.0]], dtype=np.float32)
    native = quantize(values, spec)
    assert native.dtype == np.int8
    back = dequantize(native, spec)
    inside = values.clip((-128 + 3) * 0.05, (127 + 3) * 0.05)
    assert np.max(np.abs(back - inside)) <= 0.05 / 2 + 1e-6


def test_tensors_that_differ_from_the_manifest_are_refused(int8_bundle: Path) -> None:
    bundle = read_bundle(int8_bundle)
    manifest = bundle.manifest
    wrong_shape = manifest.inputs[0].model_copy(update={"shape": (1, 64, 64, 3)})
    altered = manifest.model_copy(update={"inputs": (wrong_shape,)})
    with pytest.raises(ModelMismatchError, match="manifest states int8"):
        load_for_manifest(altered, bundle.model_bytes, threads=1, edgetpu="off")
    wrong_scale = manifest.outputs[0].model_copy(update={"scale": manifest.outputs[0].scale * 2})
    altered = manifest.model_copy(update={"outputs": (wrong_scale,)})
    with pytest.raises(ModelMismatchError, match="quantization"):
        load_for_manifest(altered, bundle.model_bytes, threads=1, edgetpu="off")


def test_garbage_model_bytes_are_a_clear_error() -> None:
    with pytest.raises(ModelMismatchError, match="cannot load this model"):
        ModelRuntime(b"\x00" * 64, threads=1)


def test_pixel_lookup_equals_normalise_then_quantize(int8_bundle: Path) -> None:
    """The capture thread's table lookup gives exactly the long way's input tensor."""
    from device.pipelines.classification import lookup_pixels, pixel_lut
    from device.preprocessing.image import normalise, resize_frame

    bundle = read_bundle(int8_bundle)
    runtime = ModelRuntime(bundle.model_bytes, threads=1)
    spec = bundle.manifest.preprocessing
    frame = np.random.default_rng(3).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    resized = resize_frame(frame, spec)
    lut = pixel_lut(spec, runtime.inputs[0])
    assert lut is not None and lut.dtype == np.int8
    long_way = quantize(normalise(resized, spec), runtime.inputs[0])
    np.testing.assert_array_equal(np.take(lut, resized), long_way)
    # The per-frame lookup (OpenCV's LUT) gives the same, in the input's shape.
    looked_up = lookup_pixels(lut, resized)
    assert looked_up.dtype == lut.dtype and looked_up.shape == resized.shape
    np.testing.assert_array_equal(looked_up, long_way)
    # Grey inputs keep their channel axis; 16-bit tables (16x8 models) work alike.
    grey = resized[..., :1].copy()
    np.testing.assert_array_equal(lookup_pixels(lut, grey), np.take(lut, grey))
    wide = (np.arange(256, dtype=np.int16) * 97 - 12000).astype(np.int16)
    np.testing.assert_array_equal(lookup_pixels(wide, resized), np.take(wide, resized))
    float_spec = runtime.inputs[0].model_copy(update={"dtype": "float32", "scale": 0.0})
    assert pixel_lut(spec, float_spec) is None
