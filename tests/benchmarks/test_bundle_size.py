"""int8 against float32 for a Pi-sized MobileNet: bundle size and top-1 accuracy.

Target (issue): the int8 bundle is at most 0.30x the size of the float32 bundle, and its
top-1 accuracy on held-out data is at most 1 point below the float32 bundle's.

The model is the project's own image classifier at the size a Pi runs (MobileNet,
96x96 input, width multiplier 0.5) trained by ``training.train_image`` for a dozen epochs
on generated shapes: enough for the weights, and so the size, to be those of a real
model, and for the held-out split to be a fair accuracy comparison. Both bundles are
written by ``converters.convert.convert_model``, which measures each level on the
held-out split through the device runtime (the parity rows printed below).
"""

from __future__ import annotations

from pathlib import Path

from converters.convert import ConversionResult, convert_model
from converters.parity import render_parity_table
from tests.benchmarks.conftest import report

SIZE_TARGET = 0.30
DROP_TARGET_POINTS = 1.0
#: The accuracy comparison means something only for a model that learned the task.
MIN_FLOAT_ACCURACY = 0.6


def test_int8_bundle_is_small_and_as_accurate(pi_model_dir: Path, tmp_path: Path) -> None:
    model_dir = pi_model_dir
    results: dict[str, ConversionResult] = {
        level: convert_model(model_dir, level, tmp_path / f"pi-shapes-{level}.ewm")  # type: ignore[arg-type]
        for level in ("float32", "int8")
    }
    float_result, int8_result = results["float32"], results["int8"]
    float_bytes = float_result.out.stat().st_size
    int8_bytes = int8_result.out.stat().st_size
    size_ratio = int8_bytes / float_bytes
    model_ratio = int8_result.parity.size_bytes / float_result.parity.size_bytes
    drop_points = 100.0 * (float_result.parity.bundle_accuracy - int8_result.parity.bundle_accuracy)
    met = size_ratio <= SIZE_TARGET and drop_points <= DROP_TARGET_POINTS
    table = render_parity_table([float_result.parity, int8_result.parity])
    report(
        "Bundle size and accuracy: int8 vs float32, MobileNet 96x96 alpha 0.5",
        [
            *table.splitlines(),
            f"bundle files: float32 {float_bytes / 1024:.1f} KiB, int8 {int8_bytes / 1024:.1f} "
            f"KiB -> {size_ratio:.3f}x (model.tflite alone {model_ratio:.3f}x)",
            f"top-1 on {int8_result.parity.samples} held-out images: float32 "
            f"{float_result.parity.bundle_accuracy:.3f}, int8 "
            f"{int8_result.parity.bundle_accuracy:.3f} -> drop {drop_points:+.2f} points",
            f"target: size <= {SIZE_TARGET:.2f}x, drop <= {DROP_TARGET_POINTS:.0f} point",
        ],
        f"{'PASS' if met else 'FAIL'}: {size_ratio:.3f}x, drop {drop_points:+.2f} points",
    )
    assert float_result.parity.bundle_accuracy >= MIN_FLOAT_ACCURACY, "model did not learn"
    assert size_ratio <= SIZE_TARGET
    assert drop_points <= DROP_TARGET_POINTS
