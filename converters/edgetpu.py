"""Edge TPU compatibility report for a TensorFlow Lite flatbuffer.

The Coral Edge TPU only executes a published subset of TFLite builtin operators, and
only on 8-bit quantized tensors. Anything else is left on the host CPU by
``edgetpu_compiler``, and (per the Coral docs) the compiler partitions the graph only
once, so a single unsupported op early in the graph can push everything after it onto
the CPU. This module gives a fast, offline pre-flight answer before a model is shipped:

* every operator of the model is checked against the published table and against the
  dtypes of its tensors, with a human-readable reason per op;
* when ``edgetpu_compiler`` is installed it is also run, because it is the authority:
  it knows constraints (tensor rank, fused activations, sizes) that the table-based
  check cannot see from op names and dtypes alone.

TensorFlow is deliberately not imported: the report must work on machines that only
have the lightweight interpreter (``ai_edge_litert`` or ``tflite_runtime``). The
interpreter is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

COMPILER_NAME = "edgetpu_compiler"

# TFLite builtin operator names the Edge TPU can execute, transcribed from the
# "Supported operations" table of Coral's "TensorFlow models on the Edge TPU"
# (https://coral.ai/docs/edgetpu/models-intro/#supported-operations), using the
# TFLite schema spelling that the interpreter reports. Ops that are sometimes assumed
# to be supported but are absent from that table (DEQUANTIZE, HARD_SWISH, GATHER, EXP,
# SQUARE, LEAKY_RELU, ABS, ...) are deliberately not listed.
EDGETPU_SUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "ADD",
        "AVERAGE_POOL_2D",
        "CONCATENATION",
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "EXPAND_DIMS",
        "FULLY_CONNECTED",
        "L2_NORMALIZATION",
        "LOGISTIC",
        "LSTM",
        # The table's "LSTM (unidirectional only)" entry; Keras LSTM layers convert to
        # this fused op rather than to the legacy LSTM builtin.
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "MAXIMUM",
        "MAX_POOL_2D",
        "MEAN",
        "MINIMUM",
        "MUL",
        "PACK",
        "PAD",
        "PRELU",
        "QUANTIZE",
        "REDUCE_MAX",
        "REDUCE_MIN",
        "RELU",
        "RELU6",
        "RELU_N1_TO_1",
        "RESHAPE",
        "RESIZE_BILINEAR",
        "RESIZE_NEAREST_NEIGHBOR",
        "RSQRT",
        "SLICE",
        "SOFTMAX",
        "SPACE_TO_DEPTH",
        "SPLIT",
        "SQUARED_DIFFERENCE",
        "SQUEEZE",
        "STRIDED_SLICE",
        "SUB",
        "SUM",
        "TANH",
        "TRANSPOSE",
        "TRANSPOSE_CONV",
    }
)

# Known limitations from the same table, paraphrased. They cannot be verified from op
# names and dtypes alone, so they are surfaced as caveats on otherwise-supported ops
# rather than used to reject them; the compiler log is the final word.
EDGETPU_OP_CAVEATS: Mapping[str, str] = {
    "AVERAGE_POOL_2D": "must not have a fused activation",
    "MAX_POOL_2D": "must not have a fused activation",
    "CONCATENATION": "no fused activation; a constant input is only allowed as an all-zero "
    "second input",
    "CONV_2D": "dilation must be equal in x and y",
    "DEPTHWISE_CONV_2D": "dilation must be equal in x and y",
    "FULLY_CONNECTED": "default weight format only; 1-D output",
    "LSTM": "unidirectional only",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional only",
    "MEAN": "no reduction over the batch dimension; a channel reduction needs a multiple "
    "of 4 channels",
    "PACK": "not along the batch dimension",
    "PAD": "not along the batch dimension",
    "PRELU": "alpha must effectively be 1-D (Keras: shared_axes=[1, 2])",
    "REDUCE_MAX": "not over the batch dimension",
    "REDUCE_MIN": "not over the batch dimension",
    "RESHAPE": "very large reshapes may be left on the CPU",
    "RESIZE_BILINEAR": "3-D input/output; may be left on the CPU to preserve precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may be left on the CPU to preserve precision",
    "SOFTMAX": "1-D input only (at most 16,000 elements): a per-cell softmax over a 4-D "
    "grid is left on the CPU, which is why detectors apply it on the device instead",
    "SPLIT": "not along the batch dimension",
    "SUM": "not over the batch dimension",
    "TRANSPOSE": "not along the batch dimension",
}

# The Edge TPU computes on 8-bit integers only.
_EIGHT_BIT_DTYPES: frozenset[str] = frozenset({"int8", "uint8"})
# int32 is legitimate as a *side* operand of quantized ops: biases of CONV_2D /
# FULLY_CONNECTED, and shape/axis/paddings/begin/size operands. Results must be 8-bit,
# which is what catches genuinely int32-valued computation.
_SIDE_OPERAND_DTYPES: frozenset[str] = _EIGHT_BIT_DTYPES | {"int32"}

# Reason prefix for float<->8-bit conversions at the model inputs/outputs; render_text
# uses it to leave them out of the "graph is split here" hint.
_BOUNDARY_REASON_PREFIX = "model-boundary conversion"

# Returned by run_edgetpu_compiler when the compiler could not finish on its own.
TIMEOUT_RETURNCODE = -1
LAUNCH_FAILED_RETURNCODE = -2


@dataclass(frozen=True)
class OpVerdict:
    """Whether one operator of the model can be mapped to the Edge TPU, and why."""

    index: int
    op_name: str
    supported: bool
    reason: str


@dataclass(frozen=True)
class CompilerResult:
    """Outcome of one ``edgetpu_compiler`` invocation.

    ``ran`` is False only when the process could not be launched at all. A compiler
    failure is data, not an exception: callers get the return code and the full log.
    """

    ran: bool
    returncode: int
    log: str
    compiled_path: str | None


@dataclass(frozen=True)
class EdgeTpuReport:
    """Per-op verdicts for a model, plus the compiler's result when it was run."""

    ops: tuple[OpVerdict, ...]
    compiler: CompilerResult | None

    @property
    def unsupported(self) -> tuple[OpVerdict, ...]:
        """The ops that would not run on the Edge TPU, in graph order."""
        return tuple(op for op in self.ops if not op.supported)

    @property
    def all_supported(self) -> bool:
        """True when every op is supported.

        A model without any operator is reported as not supported: there would be
        nothing to accelerate, and a vacuous "yes" would hide a broken conversion.
        """
        return bool(self.ops) and not self.unsupported

    def op_counts(self) -> dict[str, tuple[int, int]]:
        """``{op_name: (count, supported_count)}`` in order of first appearance."""
        counts: dict[str, tuple[int, int]] = {}
        for op in self.ops:
            total, ok = counts.get(op.op_name, (0, 0))
            counts[op.op_name] = (total + 1, ok + int(op.supported))
        return counts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view (plain dicts, lists, str, int, bool, None)."""
        return {
            "all_supported": self.all_supported,
            "op_count": len(self.ops),
            "unsupported_count": len(self.unsupported),
            "op_counts": {
                name: {"count": total, "supported": ok}
                for name, (total, ok) in self.op_counts().items()
            },
            "ops": [dataclasses.asdict(op) for op in self.ops],
            "compiler": dataclasses.asdict(self.compiler) if self.compiler else None,
        }

    def render_text(self) -> str:
        """A table of ops grouped by name, then every unsupported op with its reason."""
        lines = [
            f"Edge TPU compatibility: {len(self.ops)} ops, "
            f"{len(self.ops) - len(self.unsupported)} supported, "
            f"{len(self.unsupported)} unsupported",
        ]
        counts = self.op_counts()
        if counts:
            width = max(len("Operator"), *(len(name) for name in counts))
            lines.append("")
            lines.append(f"{'Operator':<{width}}  {'Count':>5}  {'Edge TPU':>8}  {'CPU':>4}")
            lines.append(f"{'-' * width}  {'-' * 5}  {'-' * 8}  {'-' * 4}")
            for name, (total, ok) in counts.items():
                lines.append(f"{name:<{width}}  {total:>5}  {ok:>8}  {total - ok:>4}")
        else:
            lines.append("The model has no operators.")

        unsupported = self.unsupported
        if unsupported:
            lines.append("")
            lines.append("Unsupported ops:")
            lines.extend(f"  #{op.index} {op.op_name}: {op.reason}" for op in unsupported)
            inner = [op for op in unsupported if not _is_boundary_conversion(op)]
            if inner:
                first = inner[0]
                lines.append(
                    f"The first unsupported op inside the graph is #{first.index} "
                    f"({first.op_name}); the compiler partitions once, so ops after it are "
                    "likely to run on the CPU too."
                )

        caveats = sorted(
            {op.op_name for op in self.ops if op.supported} & EDGETPU_OP_CAVEATS.keys()
        )
        if caveats:
            lines.append("")
            lines.append("Caveats for supported ops (not checked here; see the compiler log):")
            lines.extend(f"  {name}: {EDGETPU_OP_CAVEATS[name]}" for name in caveats)

        lines.append("")
        lines.append(_describe_compiler(self.compiler))
        return "\n".join(lines)


def _describe_compiler(result: CompilerResult | None) -> str:
    if result is None:
        return f"Compiler: not run ({COMPILER_NAME} not requested or not found on PATH)."
    if not result.ran:
        return f"Compiler: could not be started: {result.log.strip()}"
    if result.returncode == TIMEOUT_RETURNCODE:
        return "Compiler: timed out.\n" + result.log.rstrip()
    status = "succeeded" if result.returncode == 0 else f"failed (exit {result.returncode})"
    head = f"Compiler: {status}"
    if result.compiled_path:
        head += f"; compiled model: {result.compiled_path}"
    return head + "\n" + result.log.rstrip()


def _dtype_name(dtype: Any) -> str:
    """Normalise numpy scalar types / dtypes / strings to names like ``int8``."""
    try:
        return str(np.dtype(dtype).name)
    except TypeError:
        return str(getattr(dtype, "__name__", dtype))


def _interpreter_class() -> Any:
    """Return the first available TFLite ``Interpreter`` class.

    ``ai_edge_litert`` is the maintained runtime; ``tflite_runtime`` remains on older
    device images; ``tensorflow.lite`` is the last resort on a full workstation.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(
            "no TFLite interpreter available: install ai-edge-litert "
            "(or tflite-runtime, or tensorflow)"
        ) from exc
    return tf.lite.Interpreter


def _op_dtypes(
    op: Mapping[str, Any], key: str, indices_key: str, tensor_dtypes: Mapping[int, str]
) -> list[str]:
    """Dtype names of an op's operands or results.

    Recent interpreters report them directly (``operand_types``/``result_types``);
    older ones only give tensor indices, which are resolved through the tensor table.
    Optional operands (index -1, e.g. a FULLY_CONNECTED without bias) are skipped.
    """
    reported = op.get(key)
    if reported is not None:
        return [_dtype_name(t) for t in reported]
    return [tensor_dtypes.get(int(i), "unknown") for i in op.get(indices_key, ()) if int(i) >= 0]


def _is_boundary_conversion(op: OpVerdict) -> bool:
    """True for the float<->8-bit QUANTIZE/DEQUANTIZE at a model input or output."""
    return not op.supported and op.reason.startswith(_BOUNDARY_REASON_PREFIX)


def _judge(
    index: int,
    op_name: str,
    operands: Sequence[str],
    results: Sequence[str],
    *,
    reads_model_input: bool = False,
    writes_model_output: bool = False,
) -> OpVerdict:
    """Decide one op: name on the table, 8-bit results, 8-bit (or int32 side) inputs.

    A float model input/output produces a QUANTIZE/DEQUANTIZE at the graph boundary.
    It runs on the CPU, but unlike an unsupported op in the middle of the graph it does
    not split the Edge TPU part, so it gets its own reason that says how to avoid it.
    """
    bad_operands = sorted({d for d in operands if d not in _SIDE_OPERAND_DTYPES})
    bad_results = sorted({d for d in results if d not in _EIGHT_BIT_DTYPES})
    operands_8bit = all(d in _EIGHT_BIT_DTYPES for d in operands)
    if op_name == "QUANTIZE" and reads_model_input and bad_operands and not bad_results:
        return OpVerdict(
            index,
            op_name,
            False,
            f"{_BOUNDARY_REASON_PREFIX}: converts the {bad_operands[0]} model input to 8-bit "
            "on the CPU; convert with an int8/uint8 inference input type to drop it",
        )
    if op_name == "DEQUANTIZE" and writes_model_output and bad_results and operands_8bit:
        return OpVerdict(
            index,
            op_name,
            False,
            f"{_BOUNDARY_REASON_PREFIX}: converts the 8-bit result to a {bad_results[0]} model "
            "output on the CPU; convert with an int8/uint8 inference output type to drop it",
        )

    problems: list[str] = []
    if op_name not in EDGETPU_SUPPORTED_OPS:
        problems.append(f"{op_name} is not in the Edge TPU supported-operations table")
    if bad_results:
        problems.append(f"result dtype {', '.join(bad_results)} is not 8-bit quantized")
    if bad_operands:
        problems.append(f"input dtype {', '.join(bad_operands)} is not 8-bit quantized")
    if problems:
        return OpVerdict(index, op_name, False, "; ".join(problems))
    caveat = EDGETPU_OP_CAVEATS.get(op_name)
    reason = "on the supported-operations table with 8-bit tensors"
    if caveat:
        reason += f" (caveat: {caveat})"
    return OpVerdict(index, op_name, True, reason)


def analyze_ops(model_bytes: bytes) -> tuple[OpVerdict, ...]:
    """Judge every operator of the model's primary subgraph.

    Tensors are not allocated: op and tensor metadata are available right after the
    flatbuffer is parsed, and skipping allocation keeps this cheap for large models.
    """
    interpreter_cls = _interpreter_class()
    try:
        interpreter = interpreter_cls(model_content=model_bytes)
    except (ValueError, RuntimeError) as exc:
        # e.g. not a flatbuffer, or an already-compiled model whose edgetpu-custom-op
        # cannot be resolved without the Edge TPU delegate.
        raise ValueError(f"cannot read the model as a TFLite flatbuffer: {exc}") from exc

    ops_details: Iterable[Mapping[str, Any]] = interpreter._get_ops_details()
    model_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    model_outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    tensor_dtypes: dict[int, str] = {}
    verdicts: list[OpVerdict] = []
    for position, op in enumerate(ops_details):
        if ("operand_types" not in op or "result_types" not in op) and not tensor_dtypes:
            tensor_dtypes = {
                int(t["index"]): _dtype_name(t["dtype"]) for t in interpreter.get_tensor_details()
            }
        operands = _op_dtypes(op, "operand_types", "inputs", tensor_dtypes)
        results = _op_dtypes(op, "result_types", "outputs", tensor_dtypes)
        verdict = _judge(
            int(op.get("index", position)),
            str(op["op_name"]),
            operands,
            results,
            reads_model_input=bool(model_inputs & {int(i) for i in op.get("inputs", ())}),
            writes_model_output=bool(model_outputs & {int(i) for i in op.get("outputs", ())}),
        )
        logger.debug("op #%d %s: %s", verdict.index, verdict.op_name, verdict.reason)
        verdicts.append(verdict)
    return tuple(verdicts)


def _kill_process_tree(proc: subprocess.Popen[str]) -> None:
    """Kill the compiler and anything it spawned, so no pipe stays open behind us."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def run_edgetpu_compiler(
    tflite_path: Path, out_dir: Path, timeout_s: float = 300
) -> CompilerResult | None:
    """Run ``edgetpu_compiler -s -o OUT_DIR PATH`` if it is installed.

    Returns None when the compiler is not on PATH (it only exists for x86-64 Linux, so
    its absence is normal). Never raises for a compiler failure and never hangs: on
    timeout the whole process group is killed and ``returncode`` is
    ``TIMEOUT_RETURNCODE``; if launching fails, ``ran`` is False.
    """
    compiler = shutil.which(COMPILER_NAME)
    if compiler is None:
        logger.info("%s not found on PATH; skipping compilation", COMPILER_NAME)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, "-s", "-o", str(out_dir), str(tflite_path)]
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        logger.warning("could not start %s: %s", compiler, exc)
        return CompilerResult(False, LAUNCH_FAILED_RETURNCODE, str(exc), None)

    try:
        log, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_process_tree(proc)
        try:
            partial, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            partial = ""
        logger.warning("%s timed out after %.1f s", COMPILER_NAME, timeout_s)
        message = f"{COMPILER_NAME} timed out after {timeout_s:g} s and was killed"
        return CompilerResult(True, TIMEOUT_RETURNCODE, (partial or "") + message + "\n", None)

    compiled = out_dir / f"{tflite_path.stem}_edgetpu.tflite"
    compiled_path = str(compiled) if proc.returncode == 0 and compiled.is_file() else None
    if proc.returncode != 0:
        logger.warning("%s exited with %d", COMPILER_NAME, proc.returncode)
    return CompilerResult(True, proc.returncode, log or "", compiled_path)


def edgetpu_report(
    model_bytes: bytes, run_compiler: bool = True, workdir: Path | None = None
) -> EdgeTpuReport:
    """Check a .tflite model against the Edge TPU table, and compile it if possible.

    With ``workdir`` the model and the compiler's output are written there and
    ``compiler.compiled_path`` stays valid. Without it a temporary directory is used
    and removed, so ``compiled_path`` is reported as None (the log is kept).
    """
    ops = analyze_ops(model_bytes)
    compiler: CompilerResult | None = None
    if run_compiler and shutil.which(COMPILER_NAME) is not None:
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            compiler = _compile_bytes(model_bytes, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="edgetpu-") as tmp:
                compiler = _compile_bytes(model_bytes, Path(tmp))
            if compiler is not None and compiler.compiled_path is not None:
                compiler = dataclasses.replace(compiler, compiled_path=None)
    report = EdgeTpuReport(ops=ops, compiler=compiler)
    logger.info("Edge TPU report: %d ops, %d unsupported", len(report.ops), len(report.unsupported))
    return report


def _compile_bytes(model_bytes: bytes, directory: Path) -> CompilerResult | None:
    model_path = directory / "model.tflite"
    model_path.write_bytes(model_bytes)
    return run_edgetpu_compiler(model_path, directory)
