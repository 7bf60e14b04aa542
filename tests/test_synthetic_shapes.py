"""Tests for the OpenCV-drawn synthetic shapes data (stills and video)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.synthetic.shapes import (
    SHAPE_LABELS,
    Appearance,
    VideoTruth,
    default_demo_script,
    render_scene,
    write_image_folder,
    write_shapes_video,
)


def _read_all_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames


def test_render_scene_is_deterministic() -> None:
    for label in SHAPE_LABELS:
        a = render_scene(np.random.default_rng(123), (64, 48), label)
        b = render_scene(np.random.default_rng(123), (64, 48), label)
        assert np.array_equal(a.image, b.image)
        assert a.box == b.box
    c = render_scene(np.random.default_rng(124), (64, 48), "circle")
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("label", SHAPE_LABELS)
def test_render_scene_labels_and_boxes(label: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        scene = render_scene(rng, size=(96, 80), label=label)
        assert scene.image.shape == (80, 96, 3)
        assert scene.image.dtype == np.uint8
        assert scene.label == label
        if label == "background":
            assert scene.box is None
            continue
        assert scene.box is not None
        x0, y0, x1, y1 = scene.box
        assert 0.0 <= x0 < x1 <= 1.0
        assert 0.0 <= y0 < y1 <= 1.0
        # Roughly 25-60 % of the short side (rotated squares reach ~0.85).
        extent = max((x1 - x0) * 96, (y1 - y0) * 80) / 80
        assert 0.2 <= extent <= 0.9


def test_render_scene_background_is_textured() -> None:
    image = render_scene(np.random.default_rng(1), label="background").image
    assert float(image.astype(np.float32).std()) > 3.0


def test_render_scene_random_label_and_bad_label() -> None:
    rng = np.random.default_rng(0)
    seen = {render_scene(rng).label for _ in range(40)}
    assert seen == set(SHAPE_LABELS)
    with pytest.raises(ValueError, match="hexagon"):
        render_scene(rng, label="hexagon")


def test_write_image_folder(tmp_path: Path) -> None:
    counts = write_image_folder(tmp_path / "ds", per_class=3, seed=5, size=(40, 32))
    assert counts == dict.fromkeys(SHAPE_LABELS, 3)
    for label in SHAPE_LABELS:
        files = sorted((tmp_path / "ds" / label).glob("*.png"))
        assert [f.name for f in files] == [f"{label}_{i}.png" for i in range(3)]
        for f in files:
            image = cv2.imread(str(f))
            assert image is not None
            assert image.shape == (32, 40, 3)

    # Same seed -> same bytes; each image independent of per_class.
    write_image_folder(tmp_path / "ds2", per_class=1, seed=5, size=(40, 32), labels=["square"])
    again = cv2.imread(str(tmp_path / "ds2" / "square" / "square_0.png"))
    first = cv2.imread(str(tmp_path / "ds" / "square" / "square_0.png"))
    assert np.array_equal(again, first)


def _short_script() -> tuple[Appearance, ...]:
    return (Appearance("circle", 1.0, 2.0), Appearance("triangle", 3.0, 4.0))


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"shapes{suffix}"
    truth = write_shapes_video(path, seed=11, size=(160, 120), fps=10, script=_short_script())
    assert isinstance(truth, VideoTruth)
    assert truth.frame_count == 60  # last end 4 s + 2 s tail at 10 fps
    assert truth.size == (160, 120)

    frames = _read_all_frames(path)
    assert len(frames) == truth.frame_count
    assert frames[0].shape == (120, 160, 3)

    labels = [truth.label_at(i) for i in range(truth.frame_count)]
    assert labels[9] == "background"
    assert labels[10] == labels[19] == "circle"
    assert labels[20] == "background"
    assert labels[30] == labels[39] == "triangle"
    assert labels[40] == labels[59] == "background"
    assert all((truth.box_at(i) is None) == (lab == "background") for i, lab in enumerate(labels))

    bg_idx = [i for i, lab in enumerate(labels) if lab == "background"]
    ref = frames[bg_idx[0]].astype(np.float32)
    # Background-only frames: same static scene up to sensor noise + codec.
    for i in bg_idx[1:]:
        assert float(np.abs(frames[i].astype(np.float32) - ref).mean()) < 6.0

    # During an appearance the shape's region differs strongly from background.
    for i, lab in enumerate(labels):
        if lab == "background":
            continue
        box = truth.box_at(i)
        assert box is not None
        x0, y0, x1, y1 = box
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        h = (x1 - x0) * 160
        assert 0.3 * 120 <= max(h, (y1 - y0) * 120) <= 0.85 * 120
        ys = slice(int(y0 * 120), int(np.ceil(y1 * 120)))
        xs = slice(int(x0 * 160), int(np.ceil(x1 * 160)))
        diff = np.abs(frames[i][ys, xs].astype(np.float32) - ref[ys, xs]).mean()
        assert diff > 15.0, (i, lab, diff)

    # Shapes move: first and last frame of an appearance have different boxes.
    assert truth.box_at(10) != truth.box_at(19)

    with pytest.raises(IndexError):
        truth.label_at(truth.frame_count)


def test_video_is_deterministic(tmp_path: Path) -> None:
    a = write_shapes_video(tmp_path / "a.avi", seed=2, script=_short_script())
    b = write_shapes_video(tmp_path / "b.avi", seed=2, script=_short_script())
    assert a == b
    assert (tmp_path / "a.avi").read_bytes() == (tmp_path / "b.avi").read_bytes()


def test_overlapping_script_raises(tmp_path: Path) -> None:
    script = [Appearance("circle", 1.0, 3.0), Appearance("square", 2.5, 4.0)]
    with pytest.raises(ValueError, match="overlapping") as info:
        write_shapes_video(tmp_path / "x.avi", seed=0, script=script)
    assert "circle" in str(info.value) and "square" in str(info.value)
    assert not (tmp_path / "x.avi").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Appearance("background", 0.0, 1.0)
    with pytest.raises(ValueError):
        Appearance("circle", 2.0, 1.0)
    with pytest.raises(ValueError, match="extension"):
        write_shapes_video(tmp_path / "x.gif", seed=0, script=_short_script())


def test_default_demo_script() -> None:
    script = default_demo_script()
    assert [a.label for a in script] == ["circle", "square", "triangle"]
    assert [(a.start_s, a.end_s) for a in script] == [(2.0, 6.0), (8.0, 12.0), (14.0, 18.0)]
