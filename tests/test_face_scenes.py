"""Face scenes and the identity split: boxes exactly where faces were pasted.

Faces are drawn (CartoonFaces), and an ORL-layout folder is made from drawn faces too,
so nothing here reads the real ORL pictures.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomllib

from device.detection.crops import CropSettings
from device.errors import DatasetError
from device.pipelines.chain_config import ChainedClassificationConfig
from training.datasets.face_identity import split_people, write_identity_folder
from training.recipes.faces import PI_MODELS, device_config
from training.synthetic.face_scenes import (
    BOXES_HEADER,
    FACE_CLASS,
    SceneOptions,
    read_identities,
    render_face_scene,
    write_face_scenes,
)
from training.synthetic.face_sprites import ORL_ASPECT, ORL_SIZE, CartoonFaces, OrlFaces

REPO = Path(__file__).resolve().parents[1]
SMALL = SceneOptions(size=(160, 120), max_faces=3, empty_share=0.2)


def test_boxes_are_exactly_where_the_faces_were_pasted() -> None:
    seen_faces = 0
    for seed in range(12):
        scene = render_face_scene(np.random.default_rng(seed), CartoonFaces(), SMALL)
        changed = np.any(scene.image != scene.background, axis=2)
        covered = np.zeros_like(changed)
        for face in scene.faces:
            assert 0 <= face.x0 < face.x1 <= 160 and 0 <= face.y0 < face.y1 <= 120
            inside = changed[face.y0 : face.y1, face.x0 : face.x1]
            # Tight: the face reaches every edge of its box...
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            # ...and fills most of it (an ellipse covers pi/4 of its box).
            assert inside.mean() > 0.7
            covered[max(0, face.y0 - 2) : face.y1 + 2, max(0, face.x0 - 2) : face.x1 + 2] = True
            seen_faces += 1
        # Nothing changed outside the boxes but the soft edge (alpha < 0.5) next to them.
        assert not (changed & ~covered).any()
        for a in scene.faces:
            for b in scene.faces:
                if a is not b:
                    assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
    assert seen_faces >= 12


def test_a_scene_folder_is_a_valid_detection_dataset(tmp_path: Path) -> None:
    summary = write_face_scenes(tmp_path / "scenes", CartoonFaces(), 20, seed=3, options=SMALL)
    rows = list(csv.reader((tmp_path / "scenes" / "boxes.csv").open()))
    assert tuple(rows[0]) == BOXES_HEADER
    images = sorted(p.name for p in (tmp_path / "scenes" / "images").iterdir())
    assert len(images) == summary.images == 20
    assert len(rows) - 1 == summary.faces > 0
    named = {row[0] for row in rows[1:]}
    assert named <= set(images)
    assert len(set(images) - named) == summary.empty_images > 0  # negatives: no row
    identities = read_identities(tmp_path / "scenes")
    for name, width, height, label, *box in rows[1:]:
        image = cv2.imread(str(tmp_path / "scenes" / "images" / name))
        assert image is not None and image.shape[:2] == (int(height), int(width)) == (120, 160)
        assert label == FACE_CLASS
        x0, y0, x1, y1 = (int(v) for v in box)
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        assert (x0, y0, x1, y1) in {(f.x0, f.y0, f.x1, f.y1) for f in identities[name]}
    assert summary.identities == ("cartoon",)


def test_scenes_are_a_function_of_seed_and_index(tmp_path: Path) -> None:
    write_face_scenes(tmp_path / "a", CartoonFaces(), 3, seed=5, options=SMALL, ext="png")
    write_face_scenes(tmp_path / "b", CartoonFaces(), 5, seed=5, options=SMALL, ext="png")

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    for index in range(3):
        name = f"images/scene_{index:05d}.png"
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name)
    rows_a = (tmp_path / "a" / "boxes.csv").read_text().splitlines()
    rows_b = (tmp_path / "b" / "boxes.csv").read_text().splitlines()
    assert rows_b[: len(rows_a)] == rows_a


def fake_orl(root: Path, people: int = 4, pictures: int = 5) -> Path:
    """An ORL-layout folder (sN/M.pgm, grey 92x112) of drawn faces."""
    rng = np.random.default_rng(0)
    for person in range(1, people + 1):
        (root / f"s{person}").mkdir(parents=True)
        for number in range(1, pictures + 1):
            sprite = CartoonFaces().sprite(rng)
            grey = cv2.cvtColor(sprite.image, cv2.COLOR_BGR2GRAY)
            assert cv2.imwrite(str(root / f"s{person}" / f"{number}.pgm"), grey)
    return root


def test_orl_faces_become_scenes_with_their_identities(tmp_path: Path) -> None:
    faces = OrlFaces.from_folder(fake_orl(tmp_path / "orl"))
    assert faces.identities == ("s1", "s2", "s3", "s4")
    sprite = faces.sprite(np.random.default_rng(1))
    assert sprite.image.shape == (ORL_SIZE[1], ORL_SIZE[0], 3)
    assert sprite.identity in faces.identities
    summary = write_face_scenes(tmp_path / "scenes", faces, 12, seed=1, options=SMALL)
    assert set(summary.identities) <= set(faces.identities) and summary.faces > 0


def test_the_identity_split_holds_pictures_out_and_cuts_crops(tmp_path: Path) -> None:
    orl = fake_orl(tmp_path / "orl")
    settings = CropSettings(margin=0.1, aspect=ORL_ASPECT, min_size=8)
    split = write_identity_folder(
        orl, tmp_path / "identity", settings, holdout=2, variants=2, seed=4, scene=SMALL
    )
    assert len(split.heldout_files) == 4 * 2 and len(split.train_files) == 4 * 3
    held = {path for _, path in split.heldout_files}
    assert not held & {path for _, path in split.train_files}
    for person in ("s1", "s2", "s3", "s4"):
        originals = sorted(p.name for p in (split.train_dir / person).glob("*.pgm"))
        crops = sorted((split.train_dir / person).glob("*_crop*.png"))
        assert len(originals) == 3 and len(crops) == 3 * 2
        assert len(list((split.heldout_dir / person).iterdir())) == 2
        for path in crops:
            image = cv2.imread(str(path))
            assert image is not None
            height, width = image.shape[:2]
            assert abs(width - height * ORL_ASPECT) <= 1.0 or abs(height - width / ORL_ASPECT) <= 1
    assert split.images_written == 4 * 3 * 3
    # The same seed holds out the same pictures.
    again, _ = split_people(orl, 2, seed=4)
    assert {path for _, path in again} == {path for _, path in split.train_files}


def test_holding_out_every_picture_is_refused(tmp_path: Path) -> None:
    orl = fake_orl(tmp_path / "orl", people=2, pictures=2)
    with pytest.raises(DatasetError, match="leaves none to train on"):
        split_people(orl, 2, seed=0)


def test_the_shipped_example_config_is_the_recipes() -> None:
    shipped = (REPO / "deploy" / "examples" / "faces.toml").read_text(encoding="utf-8")
    assert shipped == device_config(
        PI_MODELS / "faces-detector.ewm", PI_MODELS / "orl-identity.ewm"
    )
    document = tomllib.loads(shipped)
    who = ChainedClassificationConfig.model_validate(document["pipelines"]["who"])
    assert who.input == "faces" and who.input_labels == ("face",)
    assert document["pipelines"]["faces"]["task"] == "object-detection"
    assert document["pipelines"]["faces"]["source"] in document["sources"]
