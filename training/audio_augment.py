"""Training-time audio augmentation: on waveforms before features, on features after.

It runs in the input pipeline, never in the exported model, and the waveform changes
happen before the device's own feature code (``device.audio.features``), so augmented
and plain clips become features the same way.

Waveform: a random time shift (zero-filled, as a word can sit anywhere in a window),
a speed change (resampling around the clip's centre: tempo and pitch together, a cheap
stand-in for different voices), a gain, and background noise at a random
signal-to-noise ratio from the noise bank (``_background_noise_`` recordings, the
training split's ``_silence_`` clips, generated colours). Silence clips get their own
level changed instead, so "silence" covers quiet rooms and loud ones.

Features: SpecAugment-style masks, a few consecutive frames and a few consecutive
coefficients set to the normalised mean (0), so the model cannot rely on any one
moment or band.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class AudioAugmentation:
    """Ranges of the random changes (defaults tuned on Speech Commands' validation
    speakers, see docs/audio.md)."""

    max_shift_s: float = 0.1
    speed_range: tuple[float, float] = (0.88, 1.12)
    speed_probability: float = 0.6
    gain_db: tuple[float, float] = (-8.0, 4.0)
    noise_probability: float = 0.8
    snr_db: tuple[float, float] = (0.0, 25.0)
    #: Level change of silence clips (and of noise cut as silence).
    silence_gain_db: tuple[float, float] = (-25.0, 10.0)
    time_masks: int = 2
    time_mask_frames: int = 6
    feature_masks: int = 2
    feature_mask_width: int = 2

    def waveforms(
        self,
        clips: FloatArray,
        labels: IntArray,
        *,
        silence: int | None,
        noises: Sequence[FloatArray],
        rng: np.random.Generator,
        sample_rate: int,
    ) -> FloatArray:
        """Augment a batch of clips (clips, samples); returns a new array."""
        out = np.array(clips, dtype=np.float32, copy=True)
        length = out.shape[1]
        max_shift = int(self.max_shift_s * sample_rate)
        for i in range(out.shape[0]):
            clip = out[i]
            is_silence = silence is not None and int(labels[i]) == silence
            if is_silence:
                clip *= _gain(rng.uniform(*self.silence_gain_db))
            else:
                if rng.random() < self.speed_probability:
                    clip = _speed(clip, rng.uniform(*self.speed_range))
                if max_shift:
                    clip = _shift(clip, int(rng.integers(-max_shift, max_shift + 1)))
                clip = clip * _gain(rng.uniform(*self.gain_db))
            if noises and rng.random() < self.noise_probability:
                noise = _segment(noises[int(rng.integers(len(noises)))], length, rng)
                if is_silence:
                    clip = clip + noise * _gain(rng.uniform(*self.silence_gain_db))
                else:
                    clip = clip + _at_snr(clip, noise, rng.uniform(*self.snr_db))
            out[i] = np.clip(clip, -1.0, 1.0)
        return out

    def features(self, batch: FloatArray, rng: np.random.Generator) -> FloatArray:
        """SpecAugment masks on normalised features (clips, frames, coefficients)."""
        out = np.array(batch, dtype=np.float32, copy=True)
        frames, coefficients = out.shape[1], out.shape[2]
        for i in range(out.shape[0]):
            for _ in range(self.time_masks):
                width = int(rng.integers(0, self.time_mask_frames + 1))
                if width:
                    start = int(rng.integers(0, max(1, frames - width + 1)))
                    out[i, start : start + width, :] = 0.0
            for _ in range(self.feature_masks):
                width = int(rng.integers(0, self.feature_mask_width + 1))
                if width:
                    start = int(rng.integers(0, max(1, coefficients - width + 1)))
                    out[i, :, start : start + width] = 0.0
        return out


def _gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _shift(clip: FloatArray, shift: int) -> FloatArray:
    """Move the audio ``shift`` samples later (earlier when negative), zero-filled."""
    if shift == 0:
        return clip
    out = np.zeros_like(clip)
    if shift > 0:
        out[shift:] = clip[:-shift]
    else:
        out[:shift] = clip[-shift:]
    return out


def _speed(clip: FloatArray, factor: float) -> FloatArray:
    """Play ``factor`` times faster around the clip's centre (linear interpolation)."""
    length = clip.shape[0]
    centre = (length - 1) / 2.0
    positions = centre + (np.arange(length) - centre) * factor
    stretched: FloatArray = np.interp(
        positions, np.arange(length), clip, left=0.0, right=0.0
    ).astype(np.float32)
    return stretched


def _segment(noise: FloatArray, length: int, rng: np.random.Generator) -> FloatArray:
    """A random stretch of ``length`` samples (a short recording is tiled)."""
    if noise.shape[0] < length:
        noise = np.tile(noise, length // max(1, noise.shape[0]) + 1)
    start = int(rng.integers(0, noise.shape[0] - length + 1))
    return noise[start : start + length]


def _at_snr(signal: FloatArray, noise: FloatArray, snr_db: float) -> FloatArray:
    """``noise`` scaled so that signal power over noise power is ``snr_db``."""
    signal_power = float(np.mean(np.square(signal, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if signal_power <= 1e-12 or noise_power <= 1e-12:
        return np.zeros_like(signal)
    scale = float(np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0))))
    scaled: FloatArray = (noise * scale).astype(np.float32)
    return scaled
