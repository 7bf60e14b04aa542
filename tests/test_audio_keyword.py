"""Keyword spotting end to end: espeak-ng words in noise → int8 bundle → detections.

The session's tiny keyword model (tests/helpers_audio.py) was trained on espeak-ng
voices at other speeds and pitches than the ones spoken here, and on generated noise.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from device.audio.config import AudioSourceConfig, KeywordEvents, KeywordPipelineConfig
from device.audio.features import FeatureExtractor
from device.audio.resample import resample_clip
from device.audio.stream import AudioChunk, AudioStream
from device.audio.wire import audio_window
from device.bundle.manifest import AudioPreprocessing, Manifest
from device.bundle.reader import Bundle, read_bundle
from device.errors import ConfigError, SourceError
from device.pipelines.keyword import KeywordDetection, KeywordPipeline
from device.runtime import load_for_manifest
from tests.fake_portaudio import FakeDevice, FakePortAudio
from tests.helpers_audio import KEYWORDS, RATE, TEST_VOICES, Placement, keyword_stream
from training.synthetic.noise import coloured_noise

TOLERANCE_S = 0.25


class RecordingRuntime:
    """The real runtime, remembering every window it was given and what it answered."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.inputs = runtime.inputs
        self.outputs = runtime.outputs
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def invoke(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        out = self._runtime.invoke(tensors)
        self.calls.append((tensors[0].copy(), out[0].copy()))
        return out


@pytest.fixture(scope="module")
def bundle(keyword_bundle: Path) -> Bundle:
    return read_bundle(keyword_bundle)


@pytest.fixture(scope="module")
def spoken() -> tuple[np.ndarray, list[Placement]]:
    """Every keyword in every held-out voice, two seconds apart, in pink and brown noise
    (speech about 23 dB above it)."""
    words = []
    onset = 1.0
    for voice in TEST_VOICES:
        for word in KEYWORDS:
            words.append((word, voice, onset))
            onset += 2.0
    return keyword_stream(onset + 1.5, words, np.random.default_rng(11))


def make_pipeline(bundle: Bundle, events: KeywordEvents | None = None,
                  record: bool = False) -> KeywordPipeline:  # fmt: skip
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    config = KeywordPipelineConfig(source="room", model=Path("keywords.ewm"),
                                   events=events or KeywordEvents())  # fmt: skip
    return KeywordPipeline("words", config, bundle,
                           RecordingRuntime(runtime) if record else runtime)  # type: ignore[arg-type]


def feed(pipeline: KeywordPipeline, audio: np.ndarray, chunk: int,
         origin: float = 1_700_000_000.0) -> list[KeywordDetection]:  # fmt: skip
    found: list[KeywordDetection] = []
    for index, start in enumerate(range(0, audio.size, chunk)):
        found += pipeline.process(AudioChunk(
            source="room", index=index, samples=audio[start : start + chunk], sample_rate=RATE,
            start_sample=start, timeline=origin + start / RATE, captured_at=time.time(),
            discontinuity=index == 0,
        ))  # fmt: skip
    return found + pipeline.flush()


def match(detections: list[KeywordDetection], placements: list[Placement]) -> None:
    """Each placed keyword reported exactly once, with its label, where it was placed."""
    assert len(detections) == len(placements), [(d.label, d.speech_start_s) for d in detections]
    for placed in placements:
        near = [d for d in detections if abs(d.speech_start_s - placed.onset_s) <= TOLERANCE_S]
        assert len(near) == 1, (placed, near)
        found = near[0]
        assert found.label == placed.word, (placed, found)
        assert abs(found.speech_end_s - placed.offset_s) <= TOLERANCE_S, (placed, found)
        assert found.window_start_s <= placed.onset_s + TOLERANCE_S
        assert found.window_end_s >= placed.offset_s - TOLERANCE_S
        assert found.window_end_s - found.window_start_s == pytest.approx(1.0)
        assert found.score >= 0.6 and found.decided_s >= found.window_end_s - 1.0


def test_each_keyword_reported_once_where_it_was_said(
    bundle: Bundle, spoken: tuple[np.ndarray, list[Placement]]
) -> None:
    audio, placements = spoken
    pipeline = make_pipeline(bundle)
    detections = feed(pipeline, audio, 1024)
    match(detections, placements)
    first = min(detections, key=lambda d: d.window_start_s)
    assert first.started_at == pytest.approx(1_700_000_000.0 + first.window_start_s)
    wire = audio_window(first)
    assert wire.start == first.started_at and wire.offset_s == first.window_start_s
    assert wire.speech_start == pytest.approx(1_700_000_000.0 + first.speech_start_s)
    assert json.loads(wire.model_dump_json())["windows"] == first.windows
    stats = pipeline.stats()
    assert stats.detections == len(placements) and stats.gated == 0
    assert stats.audio_s == pytest.approx(audio.size / RATE)
    assert 0 < stats.real_time_factor < 0.05


def test_chunk_size_changes_neither_scores_nor_detections(
    bundle: Bundle, spoken: tuple[np.ndarray, list[Placement]]
) -> None:
    audio = spoken[0][: 12 * RATE]
    runs = {}
    for chunk in (160, 1024, 16_000):
        pipeline = make_pipeline(bundle, record=True)
        detections = feed(pipeline, audio, chunk)
        recorder: RecordingRuntime = pipeline.runtime  # type: ignore[assignment]
        runs[chunk] = (detections, recorder.calls)
    reference_detections, reference_calls = runs[1024]
    assert len(reference_calls) == 1 + (spoken[0][: 12 * RATE].size // 320 - 50) // 5
    for chunk in (160, 16_000):
        detections, calls = runs[chunk]
        assert len(calls) == len(reference_calls)
        for (x, y), (rx, ry) in zip(calls, reference_calls, strict=True):
            assert np.array_equal(x, rx) and np.array_equal(y, ry)
        strip = [(d.label, d.score, d.window_start_s, d.speech_start_s) for d in detections]
        assert strip == [(d.label, d.score, d.window_start_s, d.speech_start_s)
                         for d in reference_detections]  # fmt: skip


def test_training_and_device_compute_the_same_window(bundle: Bundle) -> None:
    """The device's streaming window and training's model input for the same clip."""
    from training.train_audio import model_inputs

    spec = bundle.manifest.preprocessing
    assert isinstance(spec, AudioPreprocessing)
    clip = coloured_noise("pink", RATE, np.random.default_rng(3), RATE, -20.0)
    pipeline = make_pipeline(bundle, KeywordEvents(gate_db=None), record=True)
    feed(pipeline, clip, 333)
    recorder: RecordingRuntime = pipeline.runtime  # type: ignore[assignment]
    assert len(recorder.calls) == 1
    trained = model_inputs(FeatureExtractor(spec), clip[np.newaxis])
    assert np.array_equal(recorder.calls[0][0], trained)


@pytest.mark.parametrize(
    "kind, level_db",
    [("pink", -45.0), ("brown", -30.0), ("white", -20.0), ("hum", -25.0), ("pink", -8.0)],
)
def test_noise_alone_reports_nothing(bundle: Bundle, kind: str, level_db: float) -> None:
    noise = coloured_noise(kind, 30 * RATE, np.random.default_rng(7), RATE, level_db)
    pipeline = make_pipeline(bundle)
    assert feed(pipeline, noise, 1600) == []
    assert pipeline.stats().inferences > 250


def test_silence_is_gated_and_costs_no_inference(bundle: Bundle) -> None:
    quiet = coloured_noise("pink", 20 * RATE, np.random.default_rng(1), RATE, -75.0)
    pipeline = make_pipeline(bundle, KeywordEvents(gate_db=-55.0))
    assert feed(pipeline, quiet, 4000) == []
    stats = pipeline.stats()
    assert stats.inferences == 0 and stats.gated == stats.windows > 150


def test_a_gap_restarts_the_windows(bundle: Bundle) -> None:
    audio = coloured_noise("pink", 4 * RATE, np.random.default_rng(2), RATE, -30.0)
    pipeline = make_pipeline(bundle, KeywordEvents(gate_db=None))
    frames = 1 + (2 * RATE - 640) // 320
    windows_per_2s = 1 + (frames - 49) // 5
    # Two seconds, then (after a lost second) two more: no window may span the gap.
    for index, start in enumerate((0, 3 * RATE)):
        samples = audio[index * 2 * RATE : (index + 1) * 2 * RATE]
        pipeline.process(AudioChunk("room", index, samples, RATE, start, 0.0, 0.0, True))
    assert pipeline.stats().windows == 2 * windows_per_2s


def test_cooldown_and_patience(bundle: Bundle) -> None:
    voice = TEST_VOICES[0]
    audio, placed = keyword_stream(6.0, [("yes", voice, 1.0), ("yes", voice, 2.6)],
                                   np.random.default_rng(4))  # fmt: skip
    twice = feed(make_pipeline(bundle, KeywordEvents(cooldown_s=0.0)), audio, 1024)
    assert [d.label for d in twice] == ["yes", "yes"]
    once = feed(make_pipeline(bundle, KeywordEvents(cooldown_s=3.0)), audio, 1024)
    assert [d.label for d in once] == ["yes"]
    assert abs(once[0].speech_start_s - placed[0].onset_s) <= TOLERANCE_S
    assert feed(make_pipeline(bundle, KeywordEvents(patience=40)), audio, 1024) == []


def test_bad_input_is_refused(bundle: Bundle) -> None:
    pipeline = make_pipeline(bundle)
    with pytest.raises(SourceError, match="8000 Hz"):
        pipeline.process(AudioChunk("room", 0, np.zeros(800, np.float32), 8000, 0, 0.0, 0.0, True))
    with pytest.raises(SourceError, match="mono"):
        pipeline.process(AudioChunk("room", 0, np.zeros((800, 2), np.float32), RATE, 0, 0.0,
                                    0.0, True))  # fmt: skip
    with pytest.raises(ConfigError, match="not a whole multiple"):
        make_pipeline(bundle, KeywordEvents(hop_ms=30.0))
    config = KeywordPipelineConfig(source="room", model=Path("x"), thresholds={"maybe": 0.5})
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    with pytest.raises(ConfigError, match="maybe"):
        KeywordPipeline("words", config, bundle, runtime)


def test_microphone_to_detections_through_resampling(
    bundle: Bundle, spoken: tuple[np.ndarray, list[Placement]]
) -> None:
    """A 48 kHz stereo (fake) microphone saying the words: the source resamples, the
    pipeline hears them."""
    audio, placements = spoken
    audio, placements = audio[: 13 * RATE], [p for p in placements if p.offset_s < 12.0]
    at_48k = resample_clip(audio, RATE, 48_000)
    device = FakeDevice("Mic", np.stack([at_48k, at_48k], axis=1), speed=20.0)
    # A queue that holds the whole recording: the fake delivers 20x faster than real
    # time, and this test is about resampling, not about a consumer that falls behind.
    config = AudioSourceConfig(device="Mic", channels=2, block_ms=20, queue_chunks=10_000)
    stream = AudioStream("room", config, RATE, portaudio=FakePortAudio([device]))
    pipeline = make_pipeline(bundle)
    detections: list[KeywordDetection] = []
    stream.start()
    try:
        deadline = time.monotonic() + 90.0
        while pipeline.stats().audio_s < audio.size / RATE and time.monotonic() < deadline:
            chunk = stream.get(timeout=0.2)
            if chunk is not None:
                detections += pipeline.process(chunk)
    finally:
        stream.stop()
    heard = [d for d in detections if d.speech_start_s < 12.0]
    assert [d.label for d in heard] == [p.word for p in placements]
    for found, placed in zip(heard, placements, strict=True):
        # soxr's filter delay is compensated: the timeline stays sample-accurate.
        assert abs(found.speech_start_s - placed.onset_s) <= TOLERANCE_S


def test_bundle_evaluate_and_bench(keyword_bundle: Path, keyword_model_dir: Path) -> None:
    from device.cli import main

    manifest = read_bundle(keyword_bundle).manifest
    assert manifest.task == "audio-classification" and manifest.quantization == "int8"
    assert isinstance(manifest.preprocessing, AudioPreprocessing) and manifest.preprocessing.mean
    assert set(manifest.decoding.background_labels) == {"_silence_", "_unknown_"}
    assert manifest.inputs[0].shape == (1, 49, 10, 1) and manifest.inputs[0].dtype == "int8"
    document = manifest.model_dump(mode="json", by_alias=True)
    with pytest.raises(ValidationError, match="audio preprocessing"):
        Manifest.model_validate({**document, "task": "image-classification"})

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["evaluate", str(keyword_bundle), str(keyword_model_dir.parent / "data"),
                     "--json", "--threads", "1"])  # fmt: skip
    assert code == 0
    report = json.loads(out.getvalue())
    assert report["accuracy"] > 0.9 and report["samples"] == 240
    assert len(report["confusion_matrix"]) == len(manifest.labels)

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["bench", str(keyword_bundle), "--threads", "1", "--seconds", "10", "--json"])
    assert code == 0
    bench = json.loads(out.getvalue())
    assert 0 < bench["real_time_factor"] < 0.05
    # The generated audio is half quiet: the gate skips those windows (what that saves
    # is measured in tests/benchmarks/test_audio.py, not on a shared test machine).
    assert bench["gated_windows"] >= bench["windows"] // 3 and bench["real_time_factor_gated"] > 0
