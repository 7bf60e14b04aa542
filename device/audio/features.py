"""Audio → model features: the one implementation, used by the device and by training.

The manifest's ``AudioPreprocessing`` fixes every parameter; this module turns it into
arrays. librosa builds the two things that are easy to get subtly wrong (the Slaney mel
filterbank and the periodic Hann window, centred in ``n_fft`` as ``librosa.stft`` does)
once, at construction. The per-frame work (window, real FFT, mel projection, log, DCT,
normalisation) is plain numpy on whole blocks of frames, for two reasons:

* speed: a librosa call per 20 ms hop costs more in argument checking and padding than
  the arithmetic itself (measured below), and the device must stay far below real time
  on one core;
* equality: a frame's features depend only on that frame's samples, computed in float64
  and rounded to float32 at the end, so streaming audio in chunks of any size gives the
  same frames as a whole clip at once (``StreamingFeatures``; tests prove it).

``tests/test_audio_features.py`` checks the result against ``librosa.feature.melspectrogram``
and ``librosa.feature.mfcc`` on the same framing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from device.bundle.manifest import AudioPreprocessing
from device.errors import MissingExtraError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
Float64Array = np.ndarray[Any, np.dtype[np.float64]]
#: Floor of the frame energy, so digital silence gives a finite (very low) level.
ENERGY_FLOOR = 1e-12


class FeatureExtractor:
    """Frames of mono float audio → normalised features (``spec.coefficients`` each).

    Stateless after construction and safe to share between threads.
    """

    def __init__(self, spec: AudioPreprocessing) -> None:
        try:
            import librosa
        except ImportError as exc:
            raise MissingExtraError("librosa (audio features)", "device") from exc

        self.spec = spec
        window = librosa.filters.get_window("hann", spec.win_length, fftbins=True)
        self._window = np.asarray(
            librosa.util.pad_center(window, size=spec.n_fft), dtype=np.float64
        )
        mel = librosa.filters.mel(
            sr=spec.sample_rate,
            n_fft=spec.n_fft,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
            dtype=np.float64,
        )
        # Stored transposed: frames are rows, so a block of frames is one matrix product.
        self._mel_t: Float64Array = np.ascontiguousarray(mel.T)
        self._dct_t: Float64Array | None = None
        if spec.features == "mfcc":
            import scipy.fft

            dct = scipy.fft.dct(np.eye(spec.n_mels), type=2, norm="ortho", axis=0)
            self._dct_t = np.ascontiguousarray(dct[: spec.n_mfcc].T)
        self._mean: Float64Array | None = None
        self._inv_std: Float64Array | None = None
        if spec.mean:
            self._mean = np.asarray(spec.mean, dtype=np.float64)
            self._inv_std = 1.0 / np.asarray(spec.std, dtype=np.float64)

    @property
    def coefficients(self) -> int:
        return self.spec.coefficients

    def frame_count(self, samples: int) -> int:
        """Whole frames in ``samples`` samples (frames never run past the audio)."""
        if samples < self.spec.n_fft:
            return 0
        return 1 + (samples - self.spec.n_fft) // self.spec.hop_length

    def frames_of(self, audio: FloatArray) -> FloatArray:
        """A read-only view: frame ``i`` is ``audio[i * hop : i * hop + n_fft]``.

        Works on a batch too (``audio`` of shape (..., samples) gives (..., frames, n_fft)).
        """
        count = self.frame_count(audio.shape[-1])
        spec = self.spec
        if count == 0:
            return np.zeros((*audio.shape[:-1], 0, spec.n_fft), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(audio, spec.n_fft, axis=-1)
        framed: FloatArray = view[..., : (count - 1) * spec.hop_length + 1 : spec.hop_length, :]
        return framed

    def raw_features(self, frames: FloatArray) -> FloatArray:
        """Log-mel or MFCC of each frame, before normalisation (training computes the
        normalisation statistics from these)."""
        return self._compute(frames, normalise=False)

    def features(self, frames: FloatArray) -> FloatArray:
        """The model's features for each frame (normalised as the manifest states)."""
        return self._compute(frames, normalise=True)

    def clip_features(self, audio: FloatArray) -> FloatArray:
        """Features of every frame of a whole clip (or a batch of equal-length clips)."""
        return self.features(self.frames_of(np.asarray(audio, dtype=np.float32)))

    def raw_clip_features(self, audio: FloatArray) -> FloatArray:
        return self.raw_features(self.frames_of(np.asarray(audio, dtype=np.float32)))

    def normalise(self, raw: FloatArray) -> FloatArray:
        """Apply the manifest's normalisation to raw features (float64 inside)."""
        if self._mean is None or self._inv_std is None:
            unchanged: FloatArray = np.asarray(raw, dtype=np.float32)
            return unchanged
        values = (np.asarray(raw, dtype=np.float64) - self._mean) * self._inv_std
        normalised: FloatArray = values.astype(np.float32)
        return normalised

    def energy_db(self, frames: FloatArray) -> FloatArray:
        """Mean power of each frame's samples in dB relative to full scale (0 dBFS is a
        full-scale square wave), for the silence gate."""
        power = np.mean(np.square(frames, dtype=np.float64), axis=-1)
        levels: FloatArray = (10.0 * np.log10(power + ENERGY_FLOOR)).astype(np.float32)
        return levels

    def _compute(self, frames: FloatArray, normalise: bool) -> FloatArray:
        shape = frames.shape[:-1]
        flat = np.asarray(frames).reshape(-1, self.spec.n_fft)
        if flat.shape[0] == 0:
            return np.zeros((*shape, self.coefficients), dtype=np.float32)
        # Every step works row by row: a frame's result does not depend on which other
        # frames share the block (which is what makes chunking irrelevant).
        spectrum = np.fft.rfft(flat * self._window, axis=-1)
        power = spectrum.real**2 + spectrum.imag**2
        values = np.log(_rowwise_matmul(power, self._mel_t) + self.spec.log_offset)
        if self._dct_t is not None:
            values = _rowwise_matmul(values, self._dct_t)
        if normalise and self._mean is not None and self._inv_std is not None:
            values = (values - self._mean) * self._inv_std
        return values.astype(np.float32).reshape(*shape, self.coefficients)


def _rowwise_matmul(left: Float64Array, right: Float64Array) -> Float64Array:
    """``left @ right`` whose rows do not depend on how many rows ``left`` has.

    A plain matrix product lets BLAS pick its kernel (and so its summation order) by
    matrix size, which makes a frame's features differ in the last bits between a
    1-frame and a 50-frame block (measured: about 1e-13). As a stack of (1 x n) @ (n x m)
    products every row goes through the same kernel, and the result is the same
    whatever the block size, at about 4 microseconds a frame.
    """
    product: Float64Array = np.matmul(left[:, np.newaxis, :], right)[:, 0, :]
    return product


@dataclass(frozen=True)
class FrameBlock:
    """Frames completed by one push of audio into ``StreamingFeatures``."""

    #: Index of the block's first frame since the stream (or the last reset) began.
    first_frame: int
    #: (frames, coefficients) normalised features.
    features: FloatArray
    #: (frames,) energy of each frame in dBFS.
    energy_db: FloatArray

    def __len__(self) -> int:
        return int(self.features.shape[0])


class StreamingFeatures:
    """Features of audio that arrives in chunks of any size, frame by frame.

    Keeps the samples of the next, incomplete frame; each push returns the frames it
    completed. Frame ``i`` is exactly frame ``i`` of ``clip_features`` on the whole
    stream. Not thread-safe: one per stream.
    """

    def __init__(self, extractor: FeatureExtractor) -> None:
        self.extractor = extractor
        self._pending: FloatArray = np.zeros(0, dtype=np.float32)
        self._next_frame = 0

    @property
    def frames_done(self) -> int:
        return self._next_frame

    @property
    def samples_consumed(self) -> int:
        """Samples before the next frame's first sample (since the last reset)."""
        return self._next_frame * self.extractor.spec.hop_length

    def reset(self) -> None:
        """Forget pending samples and restart frame numbering (after a gap in the audio,
        so no frame spans samples that were not contiguous)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._next_frame = 0

    def push(self, samples: FloatArray) -> FrameBlock:
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        audio = np.concatenate([self._pending, chunk]) if self._pending.size else chunk
        frames = self.extractor.frames_of(audio)
        count = int(frames.shape[0])
        first = self._next_frame
        features = self.extractor.features(frames)
        energy = self.extractor.energy_db(frames)
        consumed = count * self.extractor.spec.hop_length
        self._pending = np.array(audio[consumed:], dtype=np.float32)
        self._next_frame += count
        return FrameBlock(first_frame=first, features=features, energy_db=energy)
