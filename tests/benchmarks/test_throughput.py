"""Daemon frame throughput against a naive sequential loop, same int8 model, 2 threads.

Target (issue): the daemon's threaded capture→inference path delivers at least 1.3x the
frames per second of a loop that decodes, resizes and invokes one frame after another.

The gain comes from overlap: decoding and resizing run in the capture thread while the
interpreter works on the previous frame. It is therefore measured on two videos:

* the demo's tiny model on its 128x128 sample, where decoding and inference both cost
  next to nothing and there is little to overlap (printed for comparison);
* a Pi-sized MobileNet (96x96, alpha 0.5, int8) on a generated 640x480 video, the size a
  Pi camera delivers: decoding and shrinking a frame cost about as much as the model,
  which is where overlapping them pays. The assertion is made on this case.

Each video is measured several times (naive and daemon side by side each time, by
``device.bench.run_bench``) and the median ratio is kept, so one stall on a shared
machine does not decide the result.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from device.bench import BenchResult, run_bench
from tests.benchmarks.conftest import report
from training.synthetic.shapes import Appearance, write_shapes_video

TARGET_RATIO = 1.3
THREADS = 2
REPEATS = 7
CAMERA_SIZE = (640, 480)
CAMERA_FPS = 30
CAMERA_FRAMES = 300


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames at 640x480: 10 s at 30 fps with two shapes passing through."""
    path = tmp_path_factory.mktemp("camera") / "camera-640x480.mp4"
    script = (Appearance("circle", 1.0, 4.0), Appearance("square", 5.0, 8.0))
    write_shapes_video(
        path,
        seed=3,
        size=CAMERA_SIZE,
        fps=CAMERA_FPS,
        script=script,
        duration_s=CAMERA_FRAMES / CAMERA_FPS,
    )
    return path


def _lines(label: str, result: BenchResult, ratios: list[float]) -> list[str]:
    return [
        f"{label}: {result.frames} frames, {result.model} ({result.quantization}), "
        f"{result.threads} threads, {result.backend}",
        f"  raw invoke p50 {result.raw_invoke_ms_p50:.3f} ms, daemon per-frame path p50 "
        f"{result.path_ms_p50:.3f} ms",
        f"  naive loop {result.naive_fps:8.1f} fps   daemon {result.daemon_fps:8.1f} fps   "
        f"ratio {result.throughput_ratio:.2f}x",
        f"  ratios over {REPEATS} runs: {', '.join(f'{r:.2f}x' for r in ratios)}",
    ]


def test_daemon_throughput_beats_a_naive_loop(
    demo_bundle: Path, demo_video: Path, camera_video: Path, pi_int8_bundle: Path
) -> None:
    demo_runs = [run_bench(demo_bundle, demo_video, THREADS, 200) for _ in range(REPEATS)]
    camera_runs = [
        run_bench(pi_int8_bundle, camera_video, THREADS, CAMERA_FRAMES) for _ in range(REPEATS)
    ]
    demo_ratios = [r.throughput_ratio for r in demo_runs]
    camera_ratios = [r.throughput_ratio for r in camera_runs]
    demo_median = statistics.median(demo_ratios)
    camera_median = statistics.median(camera_ratios)
    demo_pick = min(demo_runs, key=lambda r: abs(r.throughput_ratio - demo_median))
    camera_pick = min(camera_runs, key=lambda r: abs(r.throughput_ratio - camera_median))
    met = camera_median >= TARGET_RATIO
    report(
        "Frame throughput: daemon (capture thread + pipeline) vs naive sequential loop",
        [
            *_lines("demo model, demo video 128x128", demo_pick, demo_ratios),
            *_lines(f"Pi-sized model, video {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]}", camera_pick,
                    camera_ratios),
            f"median ratio: demo {demo_median:.2f}x (informational), "
            f"camera-sized {camera_median:.2f}x",
            f"target: camera-sized median >= {TARGET_RATIO:.1f}x",
        ],
        f"{'PASS' if met else 'FAIL'}: {camera_median:.2f}x vs target {TARGET_RATIO:.1f}x",
    )
    assert met, (
        f"daemon throughput is {camera_median:.2f}x the naive loop on a camera-sized video; "
        f"target {TARGET_RATIO}x"
    )
