"""Audio: the real-time factor on one core, and keyword accuracy on real speech.

* Real-time factor (RTF): features + inference + decisions per second of audio, through
  ``KeywordPipeline`` fed 100 ms chunks, the interpreter on one thread and the process
  pinned to one core. The model is the default architecture (an in-model ensemble of
  three DS-CNNs of 128 filters, 10 MFCC x 49 frames, int8), briefly trained on espeak-ng
  words: its cost, not its accuracy, matters here. Side by side in the same run: the
  same features computed with one librosa call per frame (what the feature module
  avoids, see its docstring), and the pipeline with its silence gate on half-quiet
  audio. Target: RTF <= 0.02.
* Speech Commands (``shared/datasets/speech_commands`` beside the repository, or
  ``EDGEWATCH_SPEECH_COMMANDS``): 12 classes, split by speaker; trained with the
  defaults of ``edgewatch train audio-classification``, converted to int8, and the
  bundle evaluated with ``edgewatch evaluate``'s code on the held-out speakers' clips.
  The issue's target is 90% on unseen speakers; the figure is reported either way, and
  the test asserts only that int8 costs at most one point against the Keras model.
  Skipped when the folder is absent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from converters.convert import convert_model
from converters.model_dir import read_info
from device.audio.bench import run_audio_bench
from device.audio.features import FeatureExtractor
from device.bundle.manifest import AudioPreprocessing
from device.bundle.reader import read_bundle
from tests.benchmarks.conftest import REPO, report
from tests.helpers_audio import make_keyword_folder
from training.evaluate import evaluate_bundle
from training.train_audio import HELDOUT_LIST, AudioTrainOptions, train_audio_classifier

RTF_TARGET = 0.02
ACCURACY_TARGET = 0.90
SECONDS = 60.0


@contextmanager
def one_core() -> Iterator[int]:
    """Pin this process to one CPU for the duration (Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        yield 0
        return
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("audio-rtf")
    data = make_keyword_folder(work / "data")
    options = AudioTrainOptions(epochs=3, name="rtf", progress=False, val_fraction=0.1,
                                test_fraction=0.1)  # fmt: skip
    trained = train_audio_classifier(data, work / "model", options)
    return convert_model(trained.out_dir, "int8", work / "rtf-int8.ewm").out


def _librosa_per_frame_ms(spec: AudioPreprocessing, seconds: float) -> float:
    """Milliseconds per second of audio for the same features, one librosa call a frame."""
    import librosa

    noise = np.random.default_rng(0).standard_normal(int(seconds * spec.sample_rate))
    audio = (0.05 * noise).astype(np.float32)
    frames = FeatureExtractor(spec).frames_of(audio)
    start = time.perf_counter()
    for frame in frames:
        power = (
            np.abs(
                librosa.stft(
                    frame,
                    n_fft=spec.n_fft,
                    hop_length=spec.hop_length,
                    win_length=spec.win_length,
                    center=False,
                )
            )
            ** 2
        )
        mel = librosa.feature.melspectrogram(
            S=power, sr=spec.sample_rate, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax
        )
        librosa.feature.mfcc(S=np.log(mel + spec.log_offset), n_mfcc=spec.n_mfcc)
    return 1000.0 * (time.perf_counter() - start) / seconds


def test_real_time_factor_on_one_core(default_bundle: Path) -> None:
    spec = read_bundle(default_bundle).manifest.preprocessing
    assert isinstance(spec, AudioPreprocessing)
    with one_core() as core:
        result = run_audio_bench(default_bundle, threads=1, seconds=SECONDS)
        librosa_ms = _librosa_per_frame_ms(spec, 5.0)
    met = result.real_time_factor <= RTF_TARGET
    report(
        f"Audio: real-time factor, {result.model} ({result.quantization}), core {core}, 1 thread",
        [
            f"raw invoke p50 {result.raw_invoke_ms_p50:.3f} ms, "
            f"p99 {result.raw_invoke_ms_p99:.3f} ms",
            f"features: {result.feature_ms_per_s:.2f} ms per second of audio "
            f"(librosa, one call a frame: {librosa_ms:.1f} ms, "
            f"{librosa_ms / max(result.feature_ms_per_s, 1e-9):.0f}x)",
            f"RTF every window inferred (hop {result.hop_ms:g} ms, {result.windows} windows): "
            f"{result.real_time_factor:.4f} (target <= {RTF_TARGET})",
            f"RTF with the silence gate on half-quiet audio ({result.gated_windows} windows "
            f"skipped): {result.real_time_factor_gated:.4f} "
            f"({result.real_time_factor_gated / max(result.real_time_factor, 1e-9):.2f}x)",
        ],
        "met" if met else "NOT met",
    )
    assert met


def speech_commands_dir() -> Path:
    configured = os.environ.get("EDGEWATCH_SPEECH_COMMANDS")
    if configured:
        return Path(configured)
    return REPO.parent / "shared" / "datasets" / "speech_commands"


@pytest.mark.slow
def test_speech_commands_int8_on_unseen_speakers(tmp_path: Path) -> None:
    data = speech_commands_dir()
    if not data.is_dir():
        pytest.skip(f"Speech Commands not found at {data}; set EDGEWATCH_SPEECH_COMMANDS")
    options = AudioTrainOptions(name="speech-commands", progress=False)
    start = time.monotonic()
    trained = train_audio_classifier(data, tmp_path / "model", options)
    train_s = time.monotonic() - start
    converted = convert_model(trained.out_dir, "int8", tmp_path / "speech-commands-int8.ewm")
    # The held-out speakers' clips (training lists them), laid out for `edgewatch evaluate`.
    heldout = tmp_path / "heldout-speakers"
    for line in (trained.out_dir / HELDOUT_LIST).read_text(encoding="utf-8").splitlines():
        (heldout / line).parent.mkdir(parents=True, exist_ok=True)
        (heldout / line).symlink_to((data / line).resolve())
    evaluation = evaluate_bundle(converted.out, heldout, threads=1)
    streaming = _streaming(converted.out, heldout)
    parity = converted.parity
    drop = 100.0 * (parity.reference_accuracy - parity.bundle_accuracy)
    accuracy = evaluation.metrics.accuracy
    architecture = read_info(trained.out_dir).provenance["architecture"]
    report(
        f"Audio: Speech Commands, 12 classes, held-out speakers, {architecture}, int8",
        [
            f"trained {trained.epochs_run} epochs in {train_s:.0f} s on {trained.train_clips} "
            f"clips; validation speakers {trained.val_accuracy:.4f}",
            f"Keras on held-out speakers {parity.reference_accuracy:.4f}, int8 bundle "
            f"{parity.bundle_accuracy:.4f} (int8 costs {drop:+.2f} points), {parity.samples} clips",
            f"edgewatch evaluate (int8, device path): {accuracy:.4f} on "
            f"{evaluation.metrics.samples} clips, macro F1 {evaluation.metrics.macro_f1:.3f}",
            f"streaming (120 held-out keyword clips 2 s apart in -50 dBFS pink noise, default "
            f"events): {streaming}",
            f"target on unseen speakers: {ACCURACY_TARGET:.0%}",
        ],
        "met" if accuracy >= ACCURACY_TARGET else "NOT met",
    )
    assert abs(accuracy - parity.bundle_accuracy) < 1e-9  # the same clips, the same path
    assert drop <= 1.0


def _streaming(bundle_path: Path, heldout: Path, clips: int = 120) -> str:
    """Held-out keyword clips (not _unknown_ or _silence_) strung together in noise and
    fed to KeywordPipeline: what a device would report for those speakers."""
    from device.audio.clips import read_audio_file
    from device.audio.config import KeywordPipelineConfig
    from device.audio.stream import AudioChunk
    from device.pipelines.keyword import KeywordPipeline
    from device.runtime import load_for_manifest
    from training.synthetic.noise import coloured_noise

    rate = 16_000
    files = sorted(p for p in heldout.glob("*/*") if not p.parent.name.startswith("_"))
    rng = np.random.default_rng(0)
    chosen = [files[int(i)] for i in rng.permutation(len(files))[:clips]]
    audio = coloured_noise("pink", int((2.0 * len(chosen) + 2) * rate), rng, rate, -50.0)
    placed = []
    for index, path in enumerate(chosen):
        clip = read_audio_file(path, rate).samples[:rate]
        start = int((1.0 + 2.0 * index) * rate)
        audio[start : start + clip.size] += clip
        placed.append((path.parent.name, 1.0 + 2.0 * index))
    bundle = read_bundle(bundle_path)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    config = KeywordPipelineConfig(source="heldout", model=bundle_path)
    pipeline = KeywordPipeline("heldout", config, bundle, runtime)
    found = []
    for start in range(0, audio.size, 1600):
        found += pipeline.process(AudioChunk("heldout", 0, audio[start : start + 1600], rate,
                                             start, 0.0, 0.0, start == 0))  # fmt: skip
    found += pipeline.flush()
    correct = wrong = missed = 0
    for word, onset in placed:
        near = [d for d in found if onset - 0.25 <= d.speech_start_s <= onset + 1.0]
        if not near:
            missed += 1
        elif near[0].label == word:
            correct += 1
        else:
            wrong += 1
    extra = len(found) - correct - wrong
    return (f"{correct} right, {wrong} wrong label, {missed} missed, {extra} extra of "
            f"{len(placed)}")  # fmt: skip
