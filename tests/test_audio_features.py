"""The one feature pipeline: librosa's numbers, and the same frames for any chunk size."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from device.audio.features import FeatureExtractor, StreamingFeatures
from device.bundle.manifest import AudioPreprocessing
from training.synthetic.noise import coloured_noise

RATE = 16_000


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = 0.1 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0)
    return (tone + coloured_noise("pink", t.size, rng, RATE, -35.0)).astype(np.float32)


@pytest.mark.parametrize("features", ["mfcc", "log-mel"])
def test_features_match_librosa(features: str) -> None:
    import librosa

    spec = AudioPreprocessing(features=features)
    audio = _audio(1.0)
    ours = FeatureExtractor(spec).clip_features(audio)
    power = np.abs(librosa.stft(audio, n_fft=spec.n_fft, hop_length=spec.hop_length,
                                win_length=spec.win_length, window="hann", center=False)) ** 2
    mel = librosa.feature.melspectrogram(S=power, sr=RATE, n_mels=spec.n_mels, fmin=spec.fmin,
                                         fmax=spec.fmax)
    reference = np.log(mel + spec.log_offset)
    if features == "mfcc":
        reference = librosa.feature.mfcc(S=reference, n_mfcc=spec.n_mfcc)
    assert ours.shape == reference.T.shape == (spec.frames, spec.coefficients)
    assert spec.frames == 49
    np.testing.assert_allclose(ours, reference.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("features", ["mfcc", "log-mel"])
def test_streaming_equals_offline_for_any_chunk_size(features: str) -> None:
    """The issue's proof: 160-, 1,024- and 16,000-sample chunks (and an awkward 333) give
    bit-identical frames to the whole stream at once, normalisation included."""
    spec = AudioPreprocessing(features=features)
    coefficients = spec.coefficients
    spec = spec.model_copy(update={"mean": tuple(np.linspace(-3, 3, coefficients)),
                                   "std": tuple(np.linspace(0.5, 4, coefficients))})
    extractor = FeatureExtractor(spec)
    audio = _audio(3.3, seed=1)
    offline = extractor.clip_features(audio)
    for chunk in (160, 1024, 16_000, 333):
        stream = StreamingFeatures(extractor)
        blocks = [stream.push(audio[i : i + chunk]) for i in range(0, audio.size, chunk)]
        frames = np.concatenate([b.features for b in blocks])
        assert [b.first_frame for b in blocks if len(b)] == sorted(
            b.first_frame for b in blocks if len(b)
        )
        assert np.array_equal(frames, offline), f"chunk {chunk} differs"
        energy = np.concatenate([b.energy_db for b in blocks])
        assert np.array_equal(energy, extractor.energy_db(extractor.frames_of(audio)))
        assert stream.frames_done == offline.shape[0]


def test_stream_reset_restarts_framing() -> None:
    extractor = FeatureExtractor(AudioPreprocessing())
    audio = _audio(1.0)
    stream = StreamingFeatures(extractor)
    stream.push(audio[:5000])
    stream.reset()
    assert stream.frames_done == 0
    again = stream.push(audio)
    assert again.first_frame == 0
    assert np.array_equal(again.features, extractor.clip_features(audio))


def test_energy_of_silence_is_finite_and_low() -> None:
    extractor = FeatureExtractor(AudioPreprocessing())
    silent = extractor.energy_db(extractor.frames_of(np.zeros(RATE, dtype=np.float32)))
    assert np.all(np.isfinite(silent)) and silent.max() < -100
    loud = extractor.energy_db(extractor.frames_of(np.ones(RATE, dtype=np.float32)))
    assert np.allclose(loud, 0.0, atol=1e-4)  # a full-scale constant is 0 dBFS


@pytest.mark.parametrize(
    "change, message",
    [
        ({"win_length": 1024, "n_fft": 512}, "win_length"),
        ({"fmax": 9000.0}, "fmax"),
        ({"n_mfcc": 50}, "n_mfcc"),
        ({"mean": (0.0,), "std": (1.0,)}, "one value per feature"),
        ({"clip_samples": 100}, "at least one frame"),
    ],
)
def test_bad_parameters_are_refused(change: dict[str, object], message: str) -> None:
    base = AudioPreprocessing().model_dump()
    with pytest.raises(ValidationError, match=message):
        AudioPreprocessing.model_validate({**base, **change})


def test_window_shape_follows_the_parameters() -> None:
    spec = AudioPreprocessing(clip_samples=16_000, n_fft=480, win_length=480, hop_length=160,
                              features="log-mel", n_mels=32)
    assert spec.frames == 1 + (16_000 - 480) // 160 == 98
    assert spec.input_shape == (98, 32, 1)
    assert FeatureExtractor(spec).clip_features(_audio(1.0)).shape == (98, 32)
