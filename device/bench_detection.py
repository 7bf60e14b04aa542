"""`edgewatch bench` for object-detection bundles: raw invoke against the daemon's path.

The same three figures as for classifiers (``device.bench``), from one run on one
machine: the interpreter's invoke alone; the per-frame cost of the daemon's path
(``Detector.detect`` on a frame whose resize and quantization the capture thread
already did: invoke, dequantize, softmax, decode); and frame throughput of the
threaded capture → detect loop against a naive sequential one. A fourth figure is the
cost of a motion-gated frame, where the detector crops a region of interest and so
resizes in the inference thread.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2

from device.bench import DEFAULT_VIDEO, _raw_invoke, percentile
from device.bundle.reader import read_bundle
from device.config import CameraSource
from device.detection.detector import Detector
from device.detection.objects import NormBox
from device.errors import SourceError
from device.preprocessing.image import UInt8Image
from device.sources.camera import CameraStream, serial_opencv

#: The region of interest of the gated-frame figure: a quarter of the frame's area.
BENCH_REGION = NormBox(0.25, 0.25, 0.75, 0.75)


@dataclass(frozen=True)
class DetectionBenchResult:
    bundle: str
    model: str
    quantization: str
    backend: str
    threads: int
    frames: int
    raw_invoke_ms_p50: float
    raw_invoke_ms_p99: float
    #: Detector.detect with the frame preprocessed by the capture thread.
    path_ms_p50: float
    path_ms_p99: float
    path_over_raw: float
    #: Detector.detect on a region of interest (crop and resize included).
    region_ms_p50: float
    naive_fps: float
    daemon_fps: float
    throughput_ratio: float
    objects_per_frame: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_detection_bench(
    bundle_path: Path, video: Path | None = None, threads: int = 2, frames: int = 200
) -> DetectionBenchResult:
    video = video or DEFAULT_VIDEO
    if not video.is_file():
        raise SourceError(f"benchmark video {video} does not exist; pass --video FILE")
    bundle = read_bundle(bundle_path)
    detector = Detector.load(bundle, threads=threads, edgetpu="auto")
    raw = _raw_invoke(detector.runtime, frames)
    naive_fps, naive_frames, region_ms = _naive_loop(detector, video, frames)
    path_ms, daemon_fps, objects = _daemon_path(detector, video, naive_frames)
    raw_p50, path_p50 = percentile(raw, 50), percentile(path_ms, 50)
    return DetectionBenchResult(
        bundle=str(bundle_path),
        model=bundle.manifest.model_ref,
        quantization=bundle.manifest.quantization,
        backend=detector.runtime.backend.name,
        threads=threads,
        frames=naive_frames,
        raw_invoke_ms_p50=round(raw_p50, 3),
        raw_invoke_ms_p99=round(percentile(raw, 99), 3),
        path_ms_p50=round(path_p50, 3),
        path_ms_p99=round(percentile(path_ms, 99), 3),
        path_over_raw=round(path_p50 / max(raw_p50, 1e-9), 3),
        region_ms_p50=round(percentile(region_ms, 50), 3),
        naive_fps=round(naive_fps, 1),
        daemon_fps=round(daemon_fps, 1),
        throughput_ratio=round(daemon_fps / max(naive_fps, 1e-9), 3),
        objects_per_frame=round(objects / max(1, len(path_ms)), 3),
    )


def _naive_loop(detector: Detector, video: Path, frames: int) -> tuple[float, int, list[float]]:
    """Decode and detect strictly one after another (the baseline); then the same
    frames again through the region-of-interest path, timed per frame."""
    capture = cv2.VideoCapture(str(video))
    frame: UInt8Image
    decoded: list[UInt8Image] = []
    start = time.perf_counter()
    try:
        while len(decoded) < frames:
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
                if not ok:
                    break
            detector.detect(frame)
            decoded.append(frame)
    finally:
        capture.release()
    fps = len(decoded) / (time.perf_counter() - start)
    region_ms = [detector.detect(f, region=BENCH_REGION).inference_ms for f in decoded]
    return fps, len(decoded), region_ms


def _daemon_path(detector: Detector, video: Path, frames: int) -> tuple[list[float], float, int]:
    """The daemon's classes: CameraStream's capture thread preprocessing for the detector."""
    source = CameraSource(file=video, loop=True, fps=0.0, queue_size=4)
    stream = CameraStream("bench", source, preprocess=detector.preprocess, realtime=False)
    per_frame: list[float] = []
    objects = 0
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
            result = detector.detect(frame.image, tensor=frame.tensor)
            per_frame.append((time.perf_counter() - began) * 1000.0)
            objects += len(result.objects)
        elapsed = time.perf_counter() - start
    finally:
        stream.stop()
        cv2.setNumThreads(previous_threads)
    return per_frame, len(per_frame) / elapsed, objects


def render_detection_bench(result: DetectionBenchResult) -> str:
    return "\n".join(
        [
            f"{result.model} ({result.quantization}) on {result.backend}, "
            f"{result.threads} threads, {result.frames} frames",
            f"raw invoke        p50 {result.raw_invoke_ms_p50:8.3f} ms   "
            f"p99 {result.raw_invoke_ms_p99:8.3f} ms",
            f"daemon per frame  p50 {result.path_ms_p50:8.3f} ms   "
            f"p99 {result.path_ms_p99:8.3f} ms   ({result.path_over_raw:.2f}x raw; "
            f"decode and softmax included)",
            f"region of interest p50 {result.region_ms_p50:7.3f} ms   (crop + resize + detect)",
            f"throughput        naive loop {result.naive_fps:7.1f} fps   "
            f"daemon {result.daemon_fps:7.1f} fps   ({result.throughput_ratio:.2f}x)",
            f"objects per frame {result.objects_per_frame:.2f}",
        ]
    )
