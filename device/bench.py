"""`edgewatch bench`: what a model costs, raw and inside the daemon.

Three figures from one run on one machine, so their ratios mean something:
raw invoke latency (the interpreter alone, input already set), the daemon's per-frame
path (normalise, quantize, invoke, decode, event tracking), and frame throughput of the
daemon's threaded capture→inference pipeline against a naive sequential loop (decode,
resize, invoke, one frame after another) on the same video.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from device.bundle.reader import read_bundle
from device.config import CameraSource
from device.config import ClassificationPipeline as PipelineConfig
from device.demo import DEMO_DIR
from device.errors import BundleTaskError, SourceError
from device.pipelines.classification import ClassificationPipeline
from device.preprocessing.image import UInt8Image, frame_to_input
from device.runtime import ModelRuntime, load_for_manifest, quantize
from device.sources.camera import CameraStream, serial_opencv

DEFAULT_VIDEO = DEMO_DIR / "samples" / "shapes.mp4"


@dataclass(frozen=True)
class BenchResult:
    bundle: str
    model: str
    quantization: str
    backend: str
    threads: int
    frames: int
    raw_invoke_ms_p50: float
    raw_invoke_ms_p99: float
    path_ms_p50: float
    path_ms_p99: float
    #: Daemon per-frame path p50 over raw invoke p50 (1.0 = no overhead).
    path_over_raw: float
    naive_fps: float
    daemon_fps: float
    #: Daemon throughput over the naive sequential loop (> 1: capture overlaps inference).
    throughput_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_bench(
    bundle_path: Path, video: Path | None = None, threads: int = 2, frames: int = 200
) -> BenchResult:
    video = video or DEFAULT_VIDEO
    if not video.is_file():
        raise SourceError(f"benchmark video {video} does not exist; pass --video FILE")
    bundle = read_bundle(bundle_path)
    bundle.require_task("image-classification")
    manifest = bundle.manifest
    runtime = load_for_manifest(manifest, bundle.model_bytes, threads, "auto")

    raw = _raw_invoke(runtime, frames)
    naive_fps, naive_frames = _naive_loop(runtime, bundle_path, video, frames)
    path_ms, daemon_fps = _daemon_path(bundle_path, video, threads, naive_frames)
    raw_p50 = percentile(raw, 50)
    path_p50 = percentile(path_ms, 50)
    return BenchResult(
        bundle=str(bundle_path),
        model=manifest.model_ref,
        quantization=manifest.quantization,
        backend=runtime.backend.name,
        threads=threads,
        frames=naive_frames,
        raw_invoke_ms_p50=round(raw_p50, 3),
        raw_invoke_ms_p99=round(percentile(raw, 99), 3),
        path_ms_p50=round(path_p50, 3),
        path_ms_p99=round(percentile(path_ms, 99), 3),
        path_over_raw=round(path_p50 / max(raw_p50, 1e-9), 3),
        naive_fps=round(naive_fps, 1),
        daemon_fps=round(daemon_fps, 1),
        throughput_ratio=round(daemon_fps / max(naive_fps, 1e-9), 3),
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def _raw_invoke(runtime: ModelRuntime, repeats: int) -> list[float]:
    spec = runtime.inputs[0]
    sample = quantize(np.zeros(spec.shape, dtype=np.float32), spec)
    runtime.timed_invoke_ms([sample], repeats=10)  # warm-up: first invokes allocate
    return runtime.timed_invoke_ms([sample], repeats=repeats)


def _naive_loop(
    runtime: ModelRuntime, bundle_path: Path, video: Path, frames: int
) -> tuple[float, int]:
    """Decode, resize, invoke, strictly one after another: the baseline to beat."""
    manifest = read_bundle(bundle_path).manifest
    parts = manifest.classifier_parts()
    if parts is None:
        raise BundleTaskError(f"{manifest.model_ref} is not an image classifier")
    spec = parts[0]
    capture = cv2.VideoCapture(str(video))
    frame: UInt8Image
    done = 0
    start = time.perf_counter()
    try:
        while done < frames:
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
                if not ok:
                    break
            runtime.invoke([frame_to_input(frame, spec)])
            done += 1
    finally:
        capture.release()
    return done / (time.perf_counter() - start), done


def _daemon_path(
    bundle_path: Path, video: Path, threads: int, frames: int
) -> tuple[list[float], float]:
    """The daemon's own classes: CameraStream's capture thread feeding the pipeline."""
    bundle = read_bundle(bundle_path)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, threads, "auto")
    config = PipelineConfig(source="bench", model=bundle_path)
    pipeline = ClassificationPipeline("bench", config, bundle, runtime)
    source = CameraSource(file=video, loop=True, fps=0.0, queue_size=4)
    stream = CameraStream("bench", source, preprocess=pipeline.preprocess, realtime=False)
    per_frame: list[float] = []
    previous_threads = serial_opencv()  # as the daemon runs
    stream.start()
    start = time.perf_counter()
    try:
        while len(per_frame) < frames:
            frame = stream.get(timeout=2.0)
            if frame is None:
                if stream.finished:
                    break
                continue
            began = time.perf_counter()
            pipeline.process(frame)
            per_frame.append((time.perf_counter() - began) * 1000.0)
        elapsed = time.perf_counter() - start
    finally:
        stream.stop()
        cv2.setNumThreads(previous_threads)
    return per_frame, len(per_frame) / elapsed


def render_bench(result: BenchResult) -> str:
    return "\n".join(
        [
            f"{result.model} ({result.quantization}) on {result.backend}, "
            f"{result.threads} threads, {result.frames} frames",
            f"raw invoke        p50 {result.raw_invoke_ms_p50:8.3f} ms   "
            f"p99 {result.raw_invoke_ms_p99:8.3f} ms",
            f"daemon per frame  p50 {result.path_ms_p50:8.3f} ms   "
            f"p99 {result.path_ms_p99:8.3f} ms   ({result.path_over_raw:.2f}x raw)",
            f"throughput        naive loop {result.naive_fps:7.1f} fps   "
            f"daemon {result.daemon_fps:7.1f} fps   ({result.throughput_ratio:.2f}x)",
        ]
    )
