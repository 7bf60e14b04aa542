"""A tiny detector trained on generated scenes, shared by the detection test files.

Training takes most of a detection test's time, so the model folder is kept under
pytest's session temporary folder and reused when another test file of the same
session asks for it (each file also works alone). The scenes the tests evaluate on
(``unseen``) are generated with other indices than the training folder's, so the
detector has never seen them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from training.detection_augment import BoxAugmentation
from training.synthetic.detection_scenes import write_detection_folder
from training.train_detection import DetectionTrainOptions, train_detector

SCENES = 360
UNSEEN = 60
SCENE_SIZE = (128, 128)
SEED = 5
#: Two shapes a 64x64 model tells apart in seconds of training (squares and triangles
#: of a few cells need longer).
CLASSES = ("circle", "triangle")
#: Big enough shapes for an 8x8 grid; mosaic off (it would shrink them to a few pixels).
SCALE_RANGE = (0.22, 0.38)
OPTIONS = DetectionTrainOptions(
    epochs=30, batch_size=16, seed=SEED, input_size=64, alpha=0.75, context_blocks=2,
    learning_rate=4e-3, patience=30, warmup_epochs=3, val_fraction=0.15, test_fraction=0.15,
    augmentation=BoxAugmentation(min_scale=0.8, max_scale=1.15, mosaic=0.0), min_epoch_images=1,
    name="shapes-detector", version="1", progress=False,
)  # fmt: skip


@dataclass(frozen=True)
class SyntheticDetector:
    data_dir: Path
    model_dir: Path
    #: Generated scenes the detector never trained on.
    unseen_dir: Path


def synthetic_detector(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDetector:
    base = tmp_path_factory.getbasetemp() / "shapes-detector"
    found = SyntheticDetector(base / "data", base / "model", base / "unseen")
    if (found.model_dir / "model_info.json").is_file():
        return found
    write_detection_folder(found.data_dir, SCENES, seed=SEED, size=SCENE_SIZE,
                           scale_range=SCALE_RANGE, classes=CLASSES)  # fmt: skip
    write_detection_folder(found.unseen_dir, UNSEEN, seed=SEED, size=SCENE_SIZE,
                           scale_range=SCALE_RANGE, classes=CLASSES,
                           first_index=SCENES)  # fmt: skip
    train_detector(found.data_dir, found.model_dir, OPTIONS)
    return found
