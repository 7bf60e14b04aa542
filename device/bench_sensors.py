"""`edgewatch bench FILE.ewm` for sensor-anomaly bundles: windows per second.

Two figures from one run, so their ratio means something: the interpreter alone (input
already set, invoke only) and the daemon's own path, ``SensorAnomalyPipeline.process``
fed readings of a generated signal (resampling, filling, scaling, windowing, quantize,
invoke, dequantize, score, debounce). The signal is a sine with noise at the bundle's
scaling and sample interval, so the windows look like the ones the model was trained on.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.bench import percentile
from device.bundle.manifest import SensorPreprocessing
from device.bundle.reader import read_bundle
from device.pipelines.sensor_anomaly import SensorAnomalyPipeline
from device.runtime import load_for_manifest, quantize
from device.sensors.config import SensorAnomalyPipelineConfig
from device.sensors.reading import Reading

TASK = "sensor-anomaly"


@dataclass(frozen=True)
class SensorBenchResult:
    bundle: str
    model: str
    quantization: str
    backend: str
    threads: int
    windows: int
    window: int
    hop: int
    raw_invoke_ms_p50: float
    raw_invoke_ms_p99: float
    raw_windows_per_s: float
    #: The pipeline's invoke + score per window (its own latency window).
    path_ms_p50: float
    #: Windows and readings per second through ``process`` (wall clock, one thread).
    pipeline_windows_per_s: float
    pipeline_readings_per_s: float
    #: Pipeline throughput over raw invoke throughput (1.0: no overhead).
    pipeline_over_raw: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_sensor_bundle(path: Path) -> bool:
    """Whether ``path`` holds a sensor-anomaly bundle (the CLI dispatches on it)."""
    return read_bundle(path).manifest.task == TASK


def generated_readings(spec: SensorPreprocessing, count: int, seed: int = 0) -> list[Reading]:
    """A seasonal signal with noise per column, at the spec's scaling and interval."""
    rng = np.random.default_rng(seed)
    interval = spec.interval_s or 1.0
    t = np.arange(count, dtype=np.float64)
    columns = []
    for column in spec.columns:
        phase = rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * t / 48 + phase) + 0.1 * rng.normal(size=count)
        columns.append(column.mean + column.std * math.sqrt(2) * wave)
    values = np.stack(columns, axis=1).tolist()
    names = spec.column_names
    return [
        Reading("bench", "bench", 1_700_000_000.0 + i * interval, tuple(row), names, 0.0)
        for i, row in enumerate(values)
    ]


def run_sensor_bench(bundle_path: Path, threads: int = 1, windows: int = 2000) -> SensorBenchResult:
    bundle = read_bundle(bundle_path)
    bundle.require_task(TASK)
    manifest = bundle.manifest
    spec = manifest.preprocessing
    assert isinstance(spec, SensorPreprocessing)
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads, "auto")
    sample = quantize(np.zeros(runtime.inputs[0].shape, dtype=np.float32), runtime.inputs[0])
    runtime.timed_invoke_ms([sample], repeats=20)
    raw = runtime.timed_invoke_ms([sample], repeats=windows)
    raw_total_s = sum(raw) / 1000.0

    config = SensorAnomalyPipelineConfig(source="bench", model=bundle_path)
    pipeline = SensorAnomalyPipeline("bench", config, bundle, runtime)
    readings = generated_readings(spec, spec.window + windows * spec.hop)
    start = time.perf_counter()
    for first in range(0, len(readings), 256):
        pipeline.process(readings[first : first + 256])
    elapsed = time.perf_counter() - start
    stats = pipeline.stats()
    pipeline_wps = stats.inferences / elapsed if elapsed > 0 else 0.0
    raw_wps = len(raw) / raw_total_s if raw_total_s > 0 else 0.0
    return SensorBenchResult(
        bundle=str(bundle_path),
        model=manifest.model_ref,
        quantization=manifest.quantization,
        backend=runtime.backend.name,
        threads=threads,
        windows=stats.inferences,
        window=spec.window,
        hop=spec.hop,
        raw_invoke_ms_p50=round(percentile(raw, 50), 4),
        raw_invoke_ms_p99=round(percentile(raw, 99), 4),
        raw_windows_per_s=round(raw_wps, 1),
        path_ms_p50=round(stats.latency.p50_ms, 4),
        pipeline_windows_per_s=round(pipeline_wps, 1),
        pipeline_readings_per_s=round(len(readings) / elapsed if elapsed > 0 else 0.0, 1),
        pipeline_over_raw=round(pipeline_wps / raw_wps, 3) if raw_wps else 0.0,
    )


def render_sensor_bench(result: SensorBenchResult) -> str:
    return "\n".join(
        [
            f"{result.model} ({result.quantization}) on {result.backend}, {result.threads} "
            f"thread(s), {result.windows} windows of {result.window} steps, hop {result.hop}",
            f"raw invoke   p50 {result.raw_invoke_ms_p50:8.4f} ms   p99 "
            f"{result.raw_invoke_ms_p99:8.4f} ms   {result.raw_windows_per_s:10,.0f} windows/s",
            f"pipeline     p50 {result.path_ms_p50:8.4f} ms (invoke + score)      "
            f"{result.pipeline_windows_per_s:10,.0f} windows/s "
            f"({result.pipeline_over_raw:.2f}x raw), "
            f"{result.pipeline_readings_per_s:,.0f} readings/s",
        ]
    )


def sensor_bench_command(args: argparse.Namespace) -> int:
    """`edgewatch bench` for a sensor bundle (``--frames`` is the number of windows)."""
    result = run_sensor_bench(args.bundle, threads=args.threads, windows=max(args.frames, 200))
    sys.stdout.write(
        (json.dumps(result.to_dict(), indent=2) if args.json else render_sensor_bench(result))
        + "\n"
    )
    return 0
