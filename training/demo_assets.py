"""`make models`: rebuild the demo's bundled model and sample video from generated data.

Everything the demo ships is made here, by the project's own code, from OpenCV-drawn
scenes: a shapes classifier (int8, the level a Pi runs) and a short video in which
shapes appear and leave. Both are kept small enough to commit.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from converters.convert import convert_model
from training.synthetic.shapes import default_demo_script, write_image_folder, write_shapes_video
from training.train_image import ImageTrainOptions, train_image_classifier

log = logging.getLogger(__name__)

DEMO_SEED = 7
IMAGES_PER_CLASS = 1000
VIDEO_SIZE = (128, 128)
VIDEO_FPS = 10


def build_demo_assets(demo_dir: Path, epochs: int = 20) -> None:
    models_dir = demo_dir / "models"
    samples_dir = demo_dir / "samples"
    models_dir.mkdir(parents=True, exist_ok=True)
    samples_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgewatch-demo-") as tmp:
        work = Path(tmp)
        counts = write_image_folder(work / "shapes", IMAGES_PER_CLASS, seed=DEMO_SEED)
        log.info("generated %s", counts)
        options = ImageTrainOptions(
            epochs=epochs, seed=DEMO_SEED, input_size=64, alpha=0.5, name="shapes", version="1.0.0"
        )
        result = train_image_classifier(work / "shapes", work / "model", options)
        log.info("shapes classifier: held-out accuracy %.3f", result.test_accuracy)
        conversion = convert_model(work / "model", "int8", models_dir / "shapes.ewm")
        log.info(
            "int8 bundle: %d bytes, bundle accuracy %.3f",
            conversion.parity.size_bytes,
            conversion.parity.bundle_accuracy,
        )
        shutil.copytree(work / "model" / "report", models_dir / "shapes-report", dirs_exist_ok=True)
    truth = write_shapes_video(
        samples_dir / "shapes.mp4",
        seed=DEMO_SEED,
        size=VIDEO_SIZE,
        fps=VIDEO_FPS,
        script=default_demo_script(),
    )
    log.info("sample video: %d frames at %s fps", truth.frame_count, truth.fps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("demo_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo_assets(args.demo_dir, epochs=args.epochs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
