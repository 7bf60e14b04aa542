"""What every benchmark shares: the demo's bundle and video, and one way to report.

Benchmarks print ratios of figures measured side by side in the same run on the same
machine, because an absolute number from a shared two-core CI box says little about a
Pi; the ratio of two paths measured together does.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import pytest

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "deploy" / "demo"
DEMO_BUNDLE = DEMO_DIR / "models" / "shapes.ewm"
DEMO_VIDEO = DEMO_DIR / "samples" / "shapes.mp4"


def report(title: str, lines: Sequence[str], verdict: str) -> None:
    """One block per benchmark in the `make bench` output: what, figures, target."""
    rule = "-" * 78
    body = "\n".join(f"  {line}" for line in lines)
    print(f"\n{rule}\n{title}\n{rule}\n{body}\n  => {verdict}\n{rule}")


def decoded_frames(video: Path) -> Iterator[Any]:
    """The video's frames, each decoded when asked for, as a camera delivers them: a
    frame read back from a list of a minute's worth is long out of every cache, and
    each pass over it a trip to main memory that a daemon never pays."""
    capture = cv2.VideoCapture(str(video))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


class Pass(Protocol):
    """One side of a side-by-side comparison: a pass over a video, a few frames at a
    time, with the CPU it took."""

    done: bool
    cpu: float

    def step(self, count: int) -> None: ...


PassT = TypeVar("PassT", bound=Pass)


def take_turns(first: PassT, second: PassT, chunk_frames: int) -> tuple[PassT, PassT]:
    """Run two passes over the same video, ``chunk_frames`` frames each in turn, to the
    end: a shared machine's speed drifts over seconds, and each side then meets the
    same drift (both go over the same part of the video within a fraction of a second).
    """
    while not (first.done and second.done):
        first.step(chunk_frames)
        second.step(chunk_frames)
    return first, second


def median_pass(
    make: Callable[[], tuple[PassT, PassT]], rounds: int
) -> tuple[float, list[float], tuple[PassT, PassT]]:
    """``rounds`` (odd) side-by-side pairs from ``make``: the median of their second /
    first CPU ratios, every ratio, and the pair that gave the median."""
    pairs = [make() for _ in range(rounds)]
    ratios = [second.cpu / first.cpu for first, second in pairs]
    ratio = statistics.median(ratios)
    return ratio, ratios, pairs[ratios.index(ratio)]


@pytest.fixture(scope="session")
def demo_bundle() -> Path:
    if not DEMO_BUNDLE.is_file():
        pytest.fail(f"{DEMO_BUNDLE} is missing; rebuild the demo assets with `make models`")
    return DEMO_BUNDLE


@pytest.fixture(scope="session")
def demo_video() -> Path:
    if not DEMO_VIDEO.is_file():
        pytest.fail(f"{DEMO_VIDEO} is missing; rebuild the demo assets with `make models`")
    return DEMO_VIDEO


@pytest.fixture(scope="session")
def pi_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's classifier at the size a Pi runs (MobileNet 96x96, alpha 0.5),
    trained for a dozen epochs on generated shapes: real weights, a fair held-out split."""
    from training.synthetic.shapes import write_image_folder
    from training.train_image import ImageTrainOptions, train_image_classifier

    work = tmp_path_factory.mktemp("pi-model")
    write_image_folder(work / "shapes", 200, seed=21)
    options = ImageTrainOptions(
        epochs=12, seed=21, input_size=96, alpha=0.5, name="pi-shapes",
        test_fraction=0.3, progress=False, learning_rate=2e-3,
    )  # fmt: skip
    train_image_classifier(work / "shapes", work / "model", options)
    return work / "model"


@pytest.fixture(scope="session")
def pi_int8_bundle(pi_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.convert import convert_model

    out = tmp_path_factory.mktemp("pi-bundle") / "pi-shapes-int8.ewm"
    convert_model(pi_model_dir, "int8", out)
    return out
