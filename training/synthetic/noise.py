"""Generated background noise: white, pink, brown, and hum with harmonics.

Used where a dataset has no ``_background_noise_`` recordings (for mixing and for
``_silence_`` clips) and by tests that need a noisy stream. Every colour is shaped in
the frequency domain from seeded Gaussian noise, so a seed gives the same noise on
every machine, and normalised to a chosen RMS level.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
NoiseColour = Literal["white", "pink", "brown", "hum"]
COLOURS: tuple[NoiseColour, ...] = ("white", "pink", "brown", "hum")


def db_to_rms(level_db: float) -> float:
    """dBFS (RMS relative to full scale) to a linear RMS value."""
    return float(10.0 ** (level_db / 20.0))


def coloured_noise(
    colour: NoiseColour, samples: int, rng: np.random.Generator, sample_rate: int = 16_000,
    level_db: float = -30.0,
) -> FloatArray:  # fmt: skip
    """``samples`` of noise with RMS ``level_db`` dBFS."""
    if samples <= 0:
        return np.zeros(0, dtype=np.float32)
    if colour == "hum":
        t = np.arange(samples) / sample_rate
        base = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        signal = sum(
            rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3))
            for k in range(1, 8)
        )
        signal = np.asarray(signal) + 0.05 * rng.standard_normal(samples)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        freqs = np.fft.rfftfreq(samples, d=1.0 / sample_rate)
        freqs[0] = freqs[1] if len(freqs) > 1 else 1.0
        exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[colour]
        signal = np.fft.irfft(spectrum / freqs**exponent, n=samples)
    rms = float(np.sqrt(np.mean(np.square(signal)))) or 1.0
    return (np.asarray(signal) * (db_to_rms(level_db) / rms)).astype(np.float32)


def noise_bank(
    seconds: float, rng: np.random.Generator, sample_rate: int = 16_000
) -> list[FloatArray]:
    """One recording of each colour, ``seconds`` long, at -20 dBFS (gain is applied
    when mixing)."""
    samples = int(seconds * sample_rate)
    return [coloured_noise(c, samples, rng, sample_rate, -20.0) for c in COLOURS]
