"""Tests for converters.edgetpu against real TFLite conversions of tiny Keras models."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from converters.edgetpu import (
    EDGETPU_SUPPORTED_OPS,
    TIMEOUT_RETURNCODE,
    EdgeTpuReport,
    edgetpu_report,
    run_edgetpu_compiler,
)

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _convert(
    model: object, input_shape: tuple[int, ...], *, int8: bool, int8_io: bool = True
) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:

        def representative() -> Iterator[list[np.ndarray]]:
            rng = np.random.default_rng(0)
            for _ in range(8):
                yield [rng.random((1, *input_shape), dtype=np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _mobilenet_like() -> object:
    inputs = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.Softmax()(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def int8_model() -> bytes:
    return _convert(_mobilenet_like(), (16, 16, 3), int8=True)


@pytest.fixture(scope="module")
def float_model() -> bytes:
    return _convert(_mobilenet_like(), (16, 16, 3), int8=False)


@pytest.fixture(scope="module")
def int8_float_io_model() -> bytes:
    # Fully quantized inside, but float32 at the edges: the converter adds a QUANTIZE
    # after the input and a DEQUANTIZE before the output.
    return _convert(_mobilenet_like(), (16, 16, 3), int8=True, int8_io=False)


@pytest.fixture(scope="module")
def int8_abs_model() -> bytes:
    # keras.ops.abs converts to an int8 ABS kernel: fully quantized, but ABS is not on
    # the Edge TPU table, so the only possible reason to reject it is its name.
    inputs = keras.Input((8,), batch_size=1)
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.Lambda(keras.ops.abs)(x)
    outputs = keras.layers.Dense(2)(x)
    return _convert(keras.Model(inputs, outputs), (8,), int8=True)


def _write_script(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "edgetpu_compiler"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture
def fake_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Put a shell script named edgetpu_compiler first on PATH."""

    def install(body: str) -> Path:
        bin_dir = tmp_path / "bin"
        script = _write_script(bin_dir, body)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return script

    return install


def test_fully_quantized_cnn_is_all_supported(int8_model: bytes) -> None:
    report = edgetpu_report(int8_model, run_compiler=False)
    names = [op.op_name for op in report.ops]
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(names)
    assert report.all_supported, report.render_text()
    assert report.unsupported == ()
    assert report.compiler is None
    assert [op.index for op in report.ops] == list(range(len(report.ops)))


def test_float_model_is_rejected_for_dtype(float_model: bytes) -> None:
    report = edgetpu_report(float_model, run_compiler=False)
    assert not report.all_supported
    # Every op is on the table, so the dtype is the only reason they fail.
    assert all(op.op_name in EDGETPU_SUPPORTED_OPS for op in report.ops)
    assert len(report.unsupported) == len(report.ops)
    for op in report.unsupported:
        assert "float32" in op.reason
        assert "not 8-bit quantized" in op.reason
        assert "not in the Edge TPU supported-operations table" not in op.reason


def test_float_io_boundary_conversions_are_reported(int8_float_io_model: bytes) -> None:
    report = edgetpu_report(int8_float_io_model, run_compiler=False)
    assert not report.all_supported
    unsupported = report.unsupported
    assert [op.op_name for op in unsupported] == ["QUANTIZE", "DEQUANTIZE"]
    assert unsupported[0].index == report.ops[0].index
    assert unsupported[1].index == report.ops[-1].index
    for op in unsupported:
        assert op.reason.startswith("model-boundary conversion")
        assert "float32" in op.reason
    text = report.render_text()
    # Boundary conversions do not split the graph, so there is no partition warning.
    assert "first unsupported op inside the graph" not in text
    assert all(op.supported for op in report.ops[1:-1])


def test_int8_op_off_the_table_is_rejected_by_name(int8_abs_model: bytes) -> None:
    report = edgetpu_report(int8_abs_model, run_compiler=False)
    assert not report.all_supported
    assert [op.op_name for op in report.unsupported] == ["ABS"]
    (abs_op,) = report.unsupported
    assert "not in the Edge TPU supported-operations table" in abs_op.reason
    assert "dtype" not in abs_op.reason
    text = report.render_text()
    assert f"#{abs_op.index} ABS" in text
    assert "first unsupported op inside the graph is #" in text


def test_render_text_groups_ops_with_counts(int8_model: bytes) -> None:
    report = edgetpu_report(int8_model, run_compiler=False)
    text = report.render_text()
    counts = report.op_counts()
    for name, (total, ok) in counts.items():
        row = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert row.split()[1:] == [str(total), str(ok), str(total - ok)]
    assert "Unsupported ops" not in text
    assert "Compiler: not run" in text


def test_to_dict_is_json_serialisable(int8_abs_model: bytes) -> None:
    report = edgetpu_report(int8_abs_model, run_compiler=False)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["all_supported"] is False
    assert data["unsupported_count"] == 1
    assert data["op_counts"]["ABS"] == {"count": 1, "supported": 0}
    assert data["op_counts"]["FULLY_CONNECTED"] == {"count": 2, "supported": 2}
    assert data["compiler"] is None
    assert {"index", "op_name", "supported", "reason"} == set(data["ops"][0])


def test_empty_report_is_not_all_supported() -> None:
    report = EdgeTpuReport(ops=(), compiler=None)
    assert not report.all_supported
    assert "no operators" in report.render_text()


def test_garbage_bytes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        edgetpu_report(b"definitely not a flatbuffer", run_compiler=False)


def test_compiler_missing_returns_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    assert run_edgetpu_compiler(model, tmp_path / "out") is None


def test_compiler_failure_is_captured(tmp_path: Path, fake_compiler: Callable[[str], Path]) -> None:
    fake_compiler('echo "Invalid model: unsupported thing" >&2\nexit 1\n')
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    result = run_edgetpu_compiler(model, tmp_path / "out")
    assert result is not None
    assert result.ran
    assert result.returncode == 1
    assert "Invalid model: unsupported thing" in result.log
    assert result.compiled_path is None


def test_compiler_timeout_does_not_hang(
    tmp_path: Path, fake_compiler: Callable[[str], Path]
) -> None:
    # The shell's child `sleep` keeps stdout open; only killing the group ends it.
    fake_compiler("echo started\nsleep 30\n")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    start = time.monotonic()
    result = run_edgetpu_compiler(model, tmp_path / "out", timeout_s=0.5)
    assert time.monotonic() - start < 10
    assert result is not None
    assert result.ran
    assert result.returncode == TIMEOUT_RETURNCODE
    assert "timed out" in result.log


def test_report_with_fake_successful_compiler(
    tmp_path: Path, int8_model: bytes, fake_compiler: Callable[[str], Path]
) -> None:
    # Mimics the real CLI contract: `-s -o OUT_DIR MODEL` writes OUT_DIR/<stem>_edgetpu.tflite.
    fake_compiler(
        'out="$3"; in="$4"\n'
        'cp "$in" "$out/$(basename "$in" .tflite)_edgetpu.tflite"\n'
        'echo "Model compiled successfully"\n'
    )
    workdir = tmp_path / "work"
    report = edgetpu_report(int8_model, workdir=workdir)
    assert report.compiler is not None
    assert report.compiler.returncode == 0
    assert report.compiler.compiled_path is not None
    assert Path(report.compiler.compiled_path).read_bytes() == int8_model
    assert "compiled successfully" in report.render_text()

    # Without a workdir the output lives in a removed temp dir, so no path is reported.
    transient = edgetpu_report(int8_model)
    assert transient.compiler is not None
    assert transient.compiler.returncode == 0
    assert transient.compiler.compiled_path is None


def test_report_with_fake_failing_compiler(
    int8_model: bytes, fake_compiler: Callable[[str], Path]
) -> None:
    fake_compiler('echo "Edge TPU Compiler: internal error" \nexit 1\n')
    report = edgetpu_report(int8_model)
    assert report.compiler is not None
    assert report.compiler.returncode == 1
    assert "internal error" in report.compiler.log
    assert "failed (exit 1)" in report.render_text()
    # The table-based verdict is independent of the compiler's outcome.
    assert report.all_supported


def test_run_compiler_false_skips_compiler(
    int8_model: bytes, fake_compiler: Callable[[str], Path]
) -> None:
    fake_compiler("exit 1\n")
    assert edgetpu_report(int8_model, run_compiler=False).compiler is None


def test_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys, converters.edgetpu\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env, timeout=60)


def test_dtypes_fall_back_to_tensor_table_for_older_interpreters() -> None:
    # Older interpreters report only tensor indices; -1 marks an absent optional operand.
    from converters.edgetpu import _op_dtypes

    op = {"op_name": "FULLY_CONNECTED", "inputs": np.array([0, 1, -1]), "outputs": [2]}
    table = {0: "int8", 1: "int8", 2: "float32"}
    assert _op_dtypes(op, "operand_types", "inputs", table) == ["int8", "int8"]
    assert _op_dtypes(op, "result_types", "outputs", table) == ["float32"]
