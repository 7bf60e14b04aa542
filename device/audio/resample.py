"""Mixing down to mono and changing the sample rate, for whole clips and for streams.

Microphones often run only at 44.1 or 48 kHz and models at 16 kHz, so every source
converts. soxr (a librosa dependency) does the work: its streaming resampler keeps its
filter state between blocks, so a stream resampled block by block has no clicks at
block edges, and its output sample ``n`` is at time ``n / out_rate`` of the input.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
QUALITY = "HQ"


def to_mono(block: np.ndarray[Any, Any]) -> FloatArray:
    """(frames,) or (frames, channels) → (frames,) float32, channels averaged.

    Averaging rather than taking the first channel: a stereo recording may have the
    speaker on either side, and an averaged pair never clips beyond full scale.
    """
    data = np.asarray(block, dtype=np.float32)
    if data.ndim == 1:
        return data
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    mono: FloatArray = data.mean(axis=1, dtype=np.float32)
    return mono


def resample_clip(samples: FloatArray, in_rate: int, out_rate: int) -> FloatArray:
    """A whole clip at another rate (the same filter as the streaming path)."""
    if in_rate == out_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    import soxr

    out: FloatArray = np.asarray(
        soxr.resample(np.asarray(samples, dtype=np.float32), in_rate, out_rate, quality=QUALITY),
        dtype=np.float32,
    )
    return out


class StreamResampler:
    """Resamples a mono stream block by block; a pass-through when the rates agree."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} and {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: Any = None
        if in_rate != out_rate:
            import soxr

            self._stream = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=QUALITY
            )

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, samples: FloatArray, last: bool = False) -> FloatArray:
        """The output samples this block completes (may be empty at the very start,
        while the filter fills); ``last`` flushes what the filter still holds."""
        block = np.asarray(samples, dtype=np.float32)
        if self._stream is None:
            return block
        out: FloatArray = np.asarray(self._stream.resample_chunk(block, last=last))
        return out.astype(np.float32, copy=False)
