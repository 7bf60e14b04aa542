"""Masks and zones: config validation, placement by centre, rasterised motion masks."""

from __future__ import annotations

import numpy as np
import pytest
import tomllib
from pydantic import ValidationError

from device.detection.config import (
    DetectionStagesConfig,
    MotionSection,
    TrackerSection,
    ZoneSection,
)
from device.detection.objects import DetectedObject, NormBox
from device.detection.tracker import ObjectTracker, ObjectTransition
from device.detection.zones import Area, Areas, rasterise
from tests.helpers_scenes import T0, jittered

PIPELINE_TOML = """
[pipelines.yard]
masks = [[[0.0, 0.0], [0.2, 0.0], [0.2, 0.2], [0.0, 0.2]]]
required_zones = ["drive"]

[pipelines.yard.motion]
threshold = 30
keepalive_s = 5
masks = [[[0.9, 0.0], [1, 0], [1, 1], [0.9, 1.0]]]

[pipelines.yard.tracker]
min_frames = 3

[pipelines.yard.snapshot]
enabled = true
max_bytes = 65536

[pipelines.yard.zones.drive]
points = [[0.2, 0.5], [0.8, 0.5], [0.8, 1.0], [0.2, 1.0]]
labels = ["car"]

[pipelines.yard.zones.lawn]
points = [[0.5, 0.0], [1.0, 0.0], [1.0, 0.5]]
"""


def stages(text: str) -> DetectionStagesConfig:
    return DetectionStagesConfig.model_validate(tomllib.loads(text)["pipelines"]["yard"])


def test_the_toml_layout_parses() -> None:
    config = stages(PIPELINE_TOML)
    assert config.motion.threshold == 30 and config.motion.keepalive_s == 5.0
    assert config.motion.masks == (((0.9, 0.0), (1.0, 0.0), (1.0, 1.0), (0.9, 1.0)),)
    assert config.tracker.min_frames == 3 and config.tracker.end_after_s == 2.0
    assert config.snapshot.enabled and config.snapshot.max_bytes == 65536
    assert list(config.zones) == ["drive", "lawn"]
    assert config.zones["drive"].labels == ("car",)
    assert config.required_zones == ("drive",)


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (
            (", [0.8, 1.0], [0.2, 1.0]]\nlabels", "]\nlabels"),
            "zones.drive.points",
            "at least 3 [x, y] points, got 2",
        ),
        (
            ("[0.8, 1.0], [0.2, 1.0]]", "[0.8, 1.5], [0.2, 1.0]]"),
            "zones.drive.points",
            "point 2 [0.8, 1.5] is outside the frame",
        ),
        (
            ("[[0.5, 0.0], [1.0, 0.0], [1.0, 0.5]]", "[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]"),
            "zones.lawn.points",
            "lie on one line",
        ),
        (
            ("[[[0.9, 0.0], [1, 0]", "[[[0.9, 0.0, 0.1], [1, 0]"),
            "motion.masks.0.0",
            "at most 2 items",
        ),
        (("required_zones = [\"drive\"]", "required_zones = [\"road\"]"), "", "'road'"),
        (("threshold = 30", "treshold = 30"), "motion.treshold", "Extra inputs"),
        (("min_frames = 3", "min_frames = 0"), "tracker.min_frames", "greater than or equal"),
    ],
)  # fmt: skip
def test_bad_areas_and_keys_are_refused_with_the_key_named(
    change: tuple[str, str], where: str, message: str
) -> None:
    old, new = change
    assert old in PIPELINE_TOML
    with pytest.raises(ValidationError) as raised:
        stages(PIPELINE_TOML.replace(old, new))
    errors = raised.value.errors()
    assert len(errors) == 1
    location = ".".join(str(part) for part in errors[0]["loc"])
    assert location == where
    assert message in errors[0]["msg"]


def test_required_zones_error_says_what_to_do() -> None:
    with pytest.raises(
        ValidationError, match=r"not configured zones \(have: \['drive', 'lawn'\]\)"
    ):
        stages(PIPELINE_TOML.replace('required_zones = ["drive"]', 'required_zones = ["road"]'))


def test_placement_is_by_centre_with_edges_inside() -> None:
    config = stages(PIPELINE_TOML)
    areas = Areas.from_config(config)
    assert areas.zone_names == ("drive", "lawn")

    def obj(label: str, cx: float, cy: float, half: float = 0.05) -> DetectedObject:
        return DetectedObject(label, 0.9, NormBox(cx - half, cy - half, cx + half, cy + half))

    masked = obj("car", 0.1, 0.1)
    # Most of this box is under the mask, but its centre is not: it stays.
    straddling = DetectedObject("car", 0.9, NormBox(0.0, 0.0, 0.5, 0.5))
    car_in_drive = obj("car", 0.5, 0.75)
    person_in_drive = obj("person", 0.5, 0.75)  # drive counts cars only
    on_the_edge = obj("car", 0.5, 0.5)  # on the drive's top edge
    in_lawn = obj("person", 0.9, 0.2)
    outside_lawn = obj("person", 0.6, 0.4)  # under the lawn triangle's diagonal
    placed = areas.place(
        [masked, straddling, car_in_drive, person_in_drive, on_the_edge, in_lawn, outside_lawn]
    )
    assert [p.object for p in placed] == [
        straddling, car_in_drive, person_in_drive, on_the_edge, in_lawn, outside_lawn
    ]  # fmt: skip
    assert [p.zones for p in placed] == [(), ("drive",), (), ("drive",), ("lawn",), ()]
    assert placed[1].label == "car" and placed[1].score == 0.9 and placed[1].box == car_in_drive.box


def test_area_point_tests() -> None:
    triangle = Area(((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)))
    assert triangle.contains((0.2, 0.2))
    assert triangle.contains((0.5, 0.5))  # on the hypotenuse
    assert not triangle.contains((0.6, 0.6))
    with pytest.raises(ValueError, match="at least 3"):
        Area(((0.0, 0.0), (1.0, 1.0)))


def test_rasterised_masks_cover_the_right_pixels() -> None:
    whole = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    assert rasterise([whole], 160, 120).all()
    left = ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))
    mask = rasterise([left], 160, 120)
    columns = np.asarray(mask.any(axis=0))
    assert 79 <= int(columns.sum()) <= 81 and columns[:79].all() and not columns[82:].any()
    assert mask[:, :79].all()
    two = rasterise([left, ((0.9, 0.9), (1.0, 0.9), (1.0, 1.0))], 100, 100)
    assert two[99, 99] == 255 and two[50, 95] == 0
    assert not rasterise([], 10, 10).any()


def test_a_mask_suppresses_the_detections_under_it() -> None:
    """An object crossing the view: with its middle stretch masked it is still one event
    (masked frames are like frames it was missed in); with all of its path masked, none."""
    rng = np.random.default_rng(9)
    path = [NormBox(x, 0.4, x + 0.1, 0.6) for x in np.linspace(0.0, 0.9, 60).tolist()]
    middle = Areas(masks=[((0.45, 0.0), (0.55, 0.0), (0.55, 1.0), (0.45, 1.0))])
    everywhere = Areas(masks=[((0.0, 0.3), (1.0, 0.3), (1.0, 0.7), (0.0, 0.7))])
    for areas, expected in ((middle, ["start", "end"]), (everywhere, [])):
        tracker = ObjectTracker(TrackerSection())
        out: list[ObjectTransition] = []
        hidden = 0
        for index, box in enumerate(path):
            detections = [jittered(box, "fox", rng, 0.01)]
            placed = areas.place(detections)
            hidden += len(detections) - len(placed)
            out += tracker.observe(placed, T0 + index / 10, frame_index=index).transitions
        out += tracker.flush(T0 + 10).transitions
        assert [t.type for t in out if t.type != "update"] == expected
        assert hidden > 0
        if expected:
            # No transition ever reports a box whose centre is under the mask.
            assert all(not middle.is_masked(t.box.centroid) for t in out)


def test_motion_masks_and_object_masks_are_separate_keys() -> None:
    config = stages(PIPELINE_TOML)
    assert config.motion.masks != config.masks
    assert MotionSection().masks == () and DetectionStagesConfig().masks == ()
    assert ZoneSection(points=((0, 0), (1, 0), (0, 1))).labels == ()
