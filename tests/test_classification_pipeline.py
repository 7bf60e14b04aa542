"""ClassificationPipeline with a real TFLite model built here.

The model is a global average pool followed by a dense layer with fixed weights, so the
scores for a given colour are known exactly: channel means (B, G, R) scaled by 10 are the
logits of "blue", "green" and "red", and "dark" (a background label) has a constant logit
of 5 that wins when the frame is dark. Fixed weights instead of training make every
threshold assertion exact rather than statistical.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from converters.bundle_writer import model_file_entry, write_bundle
from device.bundle.manifest import (
    ClassificationDecoding,
    GoldenPair,
    ImagePreprocessing,
    Manifest,
    TensorSpec,
    Thresholds,
)
from device.bundle.reader import Bundle, read_bundle
from device.config import CameraSource, EventSection
from device.config import ClassificationPipeline as PipelineConfig
from device.errors import BundleTaskError, ConfigError
from device.pipelines.classification import ClassificationPipeline
from device.preprocessing.image import frame_to_input
from device.runtime import ModelRuntime, load_for_manifest
from device.sources.camera import CameraStream, Frame

LABELS = ("blue", "green", "red", "dark")
SPEC = ImagePreprocessing(width=8, height=8, color="bgr", scale=1 / 255, offset=0.0)
WEIGHTS = np.eye(3, 4, dtype=np.float32) * 10.0
BIAS = np.array([0, 0, 0, 5], dtype=np.float32)


def expected_scores(bgr: tuple[int, int, int]) -> np.ndarray[Any, np.dtype[np.float64]]:
    logits = np.array(bgr, dtype=np.float64) / 255 @ WEIGHTS + BIAS
    e: np.ndarray[Any, np.dtype[np.float64]] = np.exp(logits - logits.max())
    scores: np.ndarray[Any, np.dtype[np.float64]] = e / e.sum()
    return scores


def build_model() -> bytes:
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    model = keras.Sequential(
        [
            keras.Input((SPEC.height, SPEC.width, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),  # logits: the manifest asks the device for softmax
        ]
    )
    model.layers[-1].set_weights([WEIGHTS, BIAS])
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def float_spec(actual: TensorSpec) -> TensorSpec:
    return TensorSpec(name=actual.name, shape=actual.shape, dtype=actual.dtype)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    model_bytes = build_model()
    probe = ModelRuntime(model_bytes, threads=1)
    golden_in = np.full((1, 8, 8, 3), 0.5, dtype=np.float32)
    golden_out = probe.invoke([golden_in])[0]
    manifest = Manifest(
        name="colours",
        version="1",
        task="image-classification",
        created_at=datetime.now(timezone.utc),
        model=model_file_entry(model_bytes),
        inputs=tuple(float_spec(s) for s in probe.inputs),
        outputs=tuple(float_spec(s) for s in probe.outputs),
        labels=LABELS,
        preprocessing=SPEC,
        decoding=ClassificationDecoding(apply_softmax=True, background_labels=("dark",)),
        thresholds=Thresholds(default=0.5, per_label={"blue": 0.9}),
        quantization="float32",
        golden=GoldenPair(
            input_b64=GoldenPair.encode(golden_in), output_b64=GoldenPair.encode(golden_out)
        ),
    )
    path = write_bundle(tmp_path_factory.mktemp("b") / "colours.ewm", manifest, model_bytes)
    return read_bundle(path)


@pytest.fixture(scope="module")
def runtime(bundle: Bundle) -> ModelRuntime:
    return load_for_manifest(bundle.manifest, bundle.model_bytes, threads=1, edgetpu="off")


def make(bundle: Bundle, runtime: ModelRuntime, **overrides: Any) -> ClassificationPipeline:
    config = PipelineConfig.model_validate({"source": "cam", "model": "colours.ewm", **overrides})
    return ClassificationPipeline("colours", config, bundle, runtime)


def frame(bgr: tuple[int, int, int], index: int = 0, at: float = 100.0) -> Frame:
    image = np.empty((48, 64, 3), dtype=np.uint8)
    image[:] = bgr
    return Frame(
        source="cam", index=index, captured_at=at, image=image, tensor=None, timeline=at
    )


BLUEISH = (255, 230, 0)  # blue ≈ 0.72, green ≈ 0.27


def test_scores_match_the_model_and_the_shared_preprocessing(
    bundle: Bundle, runtime: ModelRuntime
) -> None:
    pipeline = make(bundle, runtime)
    result = pipeline.infer(frame(BLUEISH))
    np.testing.assert_allclose(result.scores, expected_scores(BLUEISH), atol=1e-4)
    assert result.top_label == "blue" and abs(result.top_score - 0.7244) < 1e-3
    # Same numbers as the training-side path through device.preprocessing.image.
    logits = runtime.invoke([frame_to_input(frame(BLUEISH).image, SPEC)])[0].reshape(-1)
    e = np.exp(logits - logits.max())
    np.testing.assert_allclose(result.scores, e / e.sum(), rtol=1e-6)
    # A tensor made in the capture thread gives the same result as one made here.
    pre = frame(BLUEISH)
    with_tensor = Frame(pre.source, 1, 101.0, pre.image, pipeline.preprocess(pre.image), 101.0)
    np.testing.assert_array_equal(pipeline.infer(with_tensor).scores, result.scores)
    assert result.inference_ms > 0


def test_threshold_precedence(bundle: Bundle, runtime: ModelRuntime) -> None:
    # Bundle: blue 0.9 (per label), others 0.5 (default).
    plain = make(bundle, runtime)
    assert plain.thresholds == {"blue": 0.9, "green": 0.5, "red": 0.5, "dark": 0.5}
    assert plain.infer(frame(BLUEISH)).detections == {}
    # Config threshold beats every bundle value.
    loose = make(bundle, runtime, threshold=0.6)
    assert set(loose.thresholds.values()) == {0.6}
    assert set(loose.infer(frame(BLUEISH)).detections) == {"blue"}
    # Config per-label beats the config threshold.
    strict = make(bundle, runtime, threshold=0.6, thresholds={"blue": 0.8})
    assert strict.thresholds["blue"] == 0.8 and strict.thresholds["green"] == 0.6
    assert strict.infer(frame(BLUEISH)).detections == {}
    # Bundle per-label still applies to labels the config leaves alone.
    only_green = make(bundle, runtime, thresholds={"green": 0.1})
    assert only_green.thresholds["blue"] == 0.9
    # Only the top-1 label reports, even when a second label is above its threshold.
    assert only_green.infer(frame(BLUEISH)).detections == {}


def test_background_and_ignored_labels_never_report(bundle: Bundle, runtime: ModelRuntime) -> None:
    everything = make(bundle, runtime, threshold=0.0)
    dark = everything.infer(frame((0, 0, 0)))
    assert dark.top_label == "dark" and dark.top_score > 0.9
    assert dark.detections == {}
    assert set(everything.infer(frame((255, 0, 0))).detections) == {"blue"}
    ignoring = make(bundle, runtime, threshold=0.0, ignore_labels=["blue"])
    assert ignoring.reportable == ("green", "red")
    assert ignoring.infer(frame((255, 0, 0))).detections == {}
    assert set(ignoring.infer(frame((0, 0, 255))).detections) == {"red"}


def test_unknown_labels_in_config_are_errors(bundle: Bundle, runtime: ModelRuntime) -> None:
    with pytest.raises(ConfigError) as info:
        make(bundle, runtime, thresholds={"bleu": 0.5})
    message = str(info.value)
    assert "'bleu'" in message and "blue, green, red, dark" in message
    assert "pipelines.colours.thresholds" in message
    with pytest.raises(ConfigError, match="ignore_labels names label 'purple'"):
        make(bundle, runtime, ignore_labels=["purple"])


def test_wrong_task_bundle_is_refused(bundle: Bundle, runtime: ModelRuntime) -> None:
    audio = Bundle(
        manifest=bundle.manifest.model_copy(update={"task": "audio-classification"}),
        model_bytes=bundle.model_bytes,
        manifest_bytes=bundle.manifest_bytes,
        signed=False,
    )
    with pytest.raises(BundleTaskError, match="audio-classification"):
        make(audio, runtime)


@pytest.fixture
def colour_video(tmp_path: Path) -> Iterator[Path]:
    """10 dark frames, 15 blue, 15 dark at 10 fps."""
    path = tmp_path / "blue.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(40):
        image = np.zeros((48, 64, 3), dtype=np.uint8)
        if 10 <= i < 25:
            image[:] = (255, 0, 0)
        writer.write(image)
    writer.release()
    yield path


def test_a_blue_stretch_in_a_video_is_one_event(
    bundle: Bundle, runtime: ModelRuntime, colour_video: Path
) -> None:
    events = EventSection(min_frames=2, end_after_s=0.5, update_interval_s=0.0)
    pipeline = make(bundle, runtime, events=events.model_dump())
    stream = CameraStream(
        "cam",
        CameraSource(file=colour_video, fps=0),
        preprocess=pipeline.preprocess,
        realtime=False,
    )
    stream.start()
    transitions = []
    first_at = None
    while not stream.finished:
        got = stream.get(timeout=0.5)
        if got is None:
            continue
        first_at = got.captured_at if first_at is None else first_at
        assert got.tensor is not None and got.tensor.shape == (8, 8, 3)
        transitions.extend(pipeline.process(got))
    stream.stop()
    transitions.extend(pipeline.flush())
    assert [(t.type, t.label) for t in transitions] == [("start", "blue"), ("end", "blue")]
    start, end = transitions
    assert first_at is not None
    assert start.started_at == pytest.approx(first_at + 1.0)  # frame 10
    assert start.captured_at == pytest.approx(first_at + 1.1)  # frame 11: min_frames=2
    assert end.duration_s == pytest.approx(1.4)  # frames 10..24
    assert end.captured_at == pytest.approx(first_at + 2.9)  # frame 29: 0.5 s after 24
    stats = pipeline.stats()
    assert stats.inferences == 40 and stats.transitions == 2
    assert stats.latency.count == 40 and stats.latency.p99_ms >= stats.latency.p50_ms > 0
