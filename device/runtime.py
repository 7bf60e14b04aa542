"""One adapter over the TFLite interpreters a device may have.

``ai_edge_litert`` is current; ``tflite_runtime`` is what older Pi OS images can install
(numpy<2, Python <= 3.11); ``tensorflow.lite`` is there on a workstation. The first that
imports is used, so the same code serves a Pi and the converter's parity checks, and a
model is measured on the workstation through exactly the path the device takes.

The adapter also owns the Edge TPU delegate and the affine (de)quantization of inputs
and outputs, so pipelines only ever see float32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from device.bundle.manifest import GoldenPair, Manifest, TensorSpec
from device.errors import EdgeTpuUnavailableError, ModelMismatchError, RuntimeUnavailableError

log = logging.getLogger(__name__)

EdgeTpuMode = Literal["off", "auto", "required"]
EDGETPU_LIBRARY = "libedgetpu.so.1"
FloatArray = np.ndarray[Any, np.dtype[np.float32]]
AnyArray = np.ndarray[Any, Any]


@dataclass(frozen=True)
class InterpreterBackend:
    """Which package provides the interpreter, and its delegate loader."""

    name: str
    interpreter_class: Any
    load_delegate: Callable[..., Any]


def find_backend() -> InterpreterBackend:
    """Import the first interpreter package available, in the design's order."""
    try:
        from ai_edge_litert import interpreter as litert

        return InterpreterBackend("ai-edge-litert", litert.Interpreter, litert.load_delegate)
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tflite_rt

        return InterpreterBackend("tflite-runtime", tflite_rt.Interpreter, tflite_rt.load_delegate)
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return InterpreterBackend(
            "tensorflow", tf.lite.Interpreter, tf.lite.experimental.load_delegate
        )
    except ImportError:
        pass
    raise RuntimeUnavailableError(
        "no TFLite interpreter is installed: pip install 'edgewatch[device]' "
        "(ai-edge-litert), or tflite-runtime on Python <= 3.11 with numpy<2"
    )


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,  # type: ignore[arg-type]
        scale=float(scale),
        zero_point=int(zero_point),
    )


def quantize(values: AnyArray, spec: TensorSpec) -> AnyArray:
    """Float values → the tensor's dtype, using its scale and zero point when quantized."""
    dtype = np.dtype(spec.dtype)
    if not spec.quantized:
        converted: AnyArray = np.asarray(values, dtype=dtype)
        return converted
    info = np.iinfo(dtype)
    scaled = np.round(np.asarray(values, dtype=np.float32) / spec.scale) + spec.zero_point
    quantized: AnyArray = np.clip(scaled, info.min, info.max).astype(dtype)
    return quantized


def dequantize(values: AnyArray, spec: TensorSpec) -> FloatArray:
    if not spec.quantized:
        return np.asarray(values, dtype=np.float32)
    return ((values.astype(np.float32) - spec.zero_point) * spec.scale).astype(np.float32)


class ModelRuntime:
    """A loaded model, ready to invoke; not thread-safe (one per inference thread)."""

    def __init__(
        self,
        model_bytes: bytes,
        threads: int = 2,
        edgetpu: EdgeTpuMode = "off",
        backend: InterpreterBackend | None = None,
    ) -> None:
        self.backend = backend or find_backend()
        self.threads = threads
        delegates = self._edgetpu_delegates(edgetpu)
        self.on_edgetpu = bool(delegates)
        try:
            self._interpreter = self.backend.interpreter_class(
                model_content=model_bytes,
                num_threads=threads,
                experimental_delegates=delegates or None,
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelMismatchError(f"the interpreter cannot load this model: {exc}") from exc
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._input_details)
        self.outputs = tuple(_spec(d) for d in self._output_details)

    def _edgetpu_delegates(self, mode: EdgeTpuMode) -> list[Any]:
        if mode == "off":
            return []
        try:
            return [self.backend.load_delegate(EDGETPU_LIBRARY)]
        except (ValueError, OSError, RuntimeError) as exc:
            if mode == "required":
                raise EdgeTpuUnavailableError(
                    f"the config requires the Edge TPU, but {EDGETPU_LIBRARY} cannot be "
                    f"loaded ({exc}); plug in the Coral and install libedgetpu1-std, or set "
                    'runtime.edgetpu = "auto" to fall back to the CPU'
                ) from exc
            log.warning("no Edge TPU available (%s); running on the CPU", exc)
            return []

    def invoke_native(self, inputs: Sequence[AnyArray]) -> list[AnyArray]:
        """Invoke with tensors already in the model's own dtypes; returns native outputs."""
        for detail, value in zip(self._input_details, inputs, strict=True):
            self._interpreter.set_tensor(detail["index"], value)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(d["index"]) for d in self._output_details]

    def invoke(self, inputs: Sequence[AnyArray]) -> list[FloatArray]:
        """Invoke with float inputs; quantizes in and dequantizes out as the model needs."""
        native = [quantize(v, s) for v, s in zip(inputs, self.inputs, strict=True)]
        outputs = self.invoke_native(native)
        return [dequantize(o, s) for o, s in zip(outputs, self.outputs, strict=True)]

    def timed_invoke_ms(self, inputs: Sequence[AnyArray], repeats: int) -> list[float]:
        """Raw invoke latencies in ms with inputs already set (for benchmarks)."""
        for detail, value in zip(self._input_details, inputs, strict=True):
            self._interpreter.set_tensor(detail["index"], value)
        latencies = []
        for _ in range(repeats):
            start = time.perf_counter()
            self._interpreter.invoke()
            latencies.append((time.perf_counter() - start) * 1000.0)
        return latencies

    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse to serve a model whose tensors differ from what its manifest states."""
        for kind, actual, stated in (
            ("input", self.inputs, manifest.inputs),
            ("output", self.outputs, manifest.outputs),
        ):
            if len(actual) != len(stated):
                raise ModelMismatchError(
                    f"{manifest.model_ref}: model has {len(actual)} {kind}s, manifest "
                    f"states {len(stated)}"
                )
            for index, (a, s) in enumerate(zip(actual, stated, strict=True)):
                if a.shape != s.shape or a.dtype != s.dtype:
                    raise ModelMismatchError(
                        f"{manifest.model_ref}: {kind} {index} is {a.dtype}{list(a.shape)} "
                        f"but the manifest states {s.dtype}{list(s.shape)}"
                    )
                if not np.isclose(a.scale, s.scale, rtol=1e-6) or a.zero_point != s.zero_point:
                    raise ModelMismatchError(
                        f"{manifest.model_ref}: {kind} {index} quantization is "
                        f"({a.scale}, {a.zero_point}) but the manifest states "
                        f"({s.scale}, {s.zero_point})"
                    )

    def smoke_test(self, manifest: Manifest) -> float:
        """Run the manifest's golden input; return the largest deviation from its output."""
        golden: GoldenPair = manifest.golden
        try:
            inputs = [GoldenPair.decode(golden.input_b64, self.inputs[0])]
            expected = GoldenPair.decode(golden.output_b64, self.outputs[0])
        except ValueError as exc:
            raise ModelMismatchError(
                f"{manifest.model_ref}: golden pair does not fit the model's tensors ({exc})"
            ) from exc
        got = self.invoke_native(inputs)[0]
        deviation = float(
            np.max(np.abs(dequantize(got, self.outputs[0]) - dequantize(expected, self.outputs[0])))
        )
        if not np.isfinite(deviation) or deviation > golden.tolerance:
            raise ModelMismatchError(
                f"{manifest.model_ref}: smoke test failed, output differs from the golden "
                f"output by {deviation:.4g} (tolerance {golden.tolerance}); this runtime "
                "computes something else than the converter did"
            )
        return deviation


def load_for_manifest(
    manifest: Manifest, model_bytes: bytes, threads: int, edgetpu: EdgeTpuMode
) -> ModelRuntime:
    """Load, check tensors against the manifest and smoke-test: what serving requires."""
    mode: EdgeTpuMode = edgetpu
    if mode == "auto" and not manifest.edgetpu:
        mode = "off"
    runtime = ModelRuntime(model_bytes, threads=threads, edgetpu=mode)
    runtime.check_manifest(manifest)
    runtime.smoke_test(manifest)
    log.info(
        "loaded %s (%s, %s) on %s with %d threads%s",
        manifest.model_ref,
        manifest.task,
        manifest.quantization,
        runtime.backend.name,
        threads,
        ", Edge TPU" if runtime.on_edgetpu else "",
    )
    return runtime
