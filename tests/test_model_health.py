"""The health watch's verdicts and the compatibility rules, on their own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.config import ClassificationPipeline as PipelineConfig
from device.errors import BundleIncompatibleError, BundleTaskError
from device.modelstore.compat import check_compatible
from device.modelstore.health import HealthLimits, HealthWatch
from device.sources.camera import Frame

LIMITS = HealthLimits(
    window_s=1.0, min_inferences=10, latency_factor=4.0, latency_slack_ms=5.0, max_errors=0
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frame(index: int, value: int | None = None) -> Frame:
    rng = np.random.default_rng(index)
    if value is None:
        image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    else:
        image = np.full((64, 64, 3), value, dtype=np.uint8)
    return Frame("cam", index, 0.0, image, None, 0.0)


def run(watch: HealthWatch, clock: Clock, outputs, frames, latency_ms: float = 1.0):  # type: ignore[no-untyped-def]
    verdict = None
    for out, fr in zip(outputs, frames, strict=True):
        clock.now += 0.05
        verdict = watch.observe(fr, np.asarray(out, dtype=np.float32), latency_ms)
        if verdict is not None:
            return verdict
    return verdict


def test_a_healthy_model_is_kept_after_the_window() -> None:
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=1.0, reference=lambda f: 5, clock=clock)
    outputs = [[i / 40, 1 - i / 40] for i in range(40)]
    verdict = run(watch, clock, outputs, [frame(i) for i in range(40)])
    assert verdict is not None and verdict.healthy
    assert watch.inferences == 21  # 1 s at 20 fps, then the verdict


def test_nan_output_is_unhealthy_at_once() -> None:
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=1.0, clock=clock)
    verdict = run(watch, clock, [[0.5, 0.5], [np.nan, 0.1]], [frame(0), frame(1)])
    assert verdict is not None and not verdict.healthy and "NaN" in verdict.reason


def test_errors_beyond_the_allowance_are_unhealthy() -> None:
    watch = HealthWatch(
        HealthLimits(1.0, 10, 4.0, 5.0, max_errors=1), baseline_ms=1.0, clock=Clock()
    )
    assert watch.error(RuntimeError("first")) is None
    verdict = watch.error(RuntimeError("second"))
    assert verdict is not None and not verdict.healthy and "2 inference error" in verdict.reason


def test_latency_far_above_the_previous_model_is_unhealthy() -> None:
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=2.0, reference=lambda f: 5, clock=clock)
    outputs = [[i / 40, 1 - i / 40] for i in range(40)]
    verdict = run(watch, clock, outputs, [frame(i) for i in range(40)], latency_ms=14.0)
    assert verdict is not None and not verdict.healthy and "latency" in verdict.reason
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=2.0, reference=lambda f: 5, clock=clock)
    # 4 x 2 ms + 5 ms slack = 13 ms: 12 ms is still acceptable.
    verdict = run(watch, clock, outputs, [frame(i) for i in range(40)], latency_ms=12.0)
    assert verdict is not None and verdict.healthy


def test_collapse_needs_varying_inputs_and_a_previous_model_that_told_them_apart() -> None:
    constant = [[0.9, 0.1]] * 40
    seen: list[int] = []

    def reference(frames: Sequence[Frame]) -> int:
        seen.append(len(frames))
        return len(frames)

    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=1.0, reference=reference, clock=clock)
    verdict = run(watch, clock, constant, [frame(i) for i in range(40)])
    assert verdict is not None and not verdict.healthy and "collapse" in verdict.reason
    assert seen and seen[0] >= 2

    # The previous model also gave one answer for these frames: not a collapse.
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=1.0, reference=lambda f: 1, clock=clock)
    verdict = run(watch, clock, constant, [frame(i) for i in range(40)])
    assert verdict is not None and verdict.healthy

    # A still scene (identical inputs) legitimately gives one output.
    clock = Clock()
    watch = HealthWatch(LIMITS, baseline_ms=1.0, reference=lambda f: 5, clock=clock)
    verdict = run(watch, clock, constant, [frame(i, value=7) for i in range(40)])
    assert verdict is not None and verdict.healthy


def test_compatibility_rules(int8_bundle: Path) -> None:
    manifest = read_bundle(int8_bundle).manifest
    config = PipelineConfig(source="cam", model=int8_bundle)
    check_compatible(manifest, "p", config)  # the model itself fits

    with pytest.raises(BundleTaskError, match="wrong task"):
        check_compatible(manifest.model_copy(update={"task": "log-anomaly"}), "p", config)
    grey = manifest.preprocessing.model_copy(update={"color": "grey"})
    with pytest.raises(BundleIncompatibleError, match="wrong input shape"):
        check_compatible(manifest.model_copy(update={"preprocessing": grey}), "p", config)
    wider = manifest.inputs[0].model_copy(update={"shape": (1, 32, 32, 3, 1)})
    with pytest.raises(BundleIncompatibleError, match="wrong input shape"):
        check_compatible(manifest.model_copy(update={"inputs": (wider,)}), "p", config)
    fewer = manifest.model_copy(update={"labels": manifest.labels[:3]})
    with pytest.raises(BundleIncompatibleError, match="wrong output shape"):
        check_compatible(fewer, "p", config)
    strict = PipelineConfig(source="cam", model=int8_bundle, thresholds={"hexagon": 0.5})
    with pytest.raises(BundleIncompatibleError, match="hexagon"):
        check_compatible(manifest, "p", strict)
    as_int16 = manifest.inputs[0].model_copy(update={"dtype": "int16"})
    with pytest.raises(BundleIncompatibleError, match="input type"):
        check_compatible(manifest.model_copy(update={"inputs": (as_int16,)}), "p", config)
