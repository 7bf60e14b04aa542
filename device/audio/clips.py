"""Reading whole audio files: training clips, evaluation folders, calibration sets.

Training, ``edgewatch evaluate`` and the converter's calibration read files through
this one function, so a clip is mixed down, resampled and fitted to the model window
the same way everywhere. Problems are ``SourceError``s that name the file and say
what is wrong; callers that walk a folder skip (and count) such files.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio.resample import resample_clip, to_mono
from device.errors import SourceError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg")
#: RIFF data sizes that streaming writers (arecord, ffmpeg to a pipe) put in a header
#: because they cannot know the length: not a promise about the file's length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


@dataclass(frozen=True)
class AudioFile:
    """A file's audio, mono float32 in [-1, 1] at ``sample_rate``."""

    path: Path
    samples: FloatArray
    sample_rate: int
    #: What the file itself holds.
    source_rate: int
    source_channels: int
    #: True when the WAV header promised more audio than the file holds.
    truncated: bool = False

    @property
    def seconds(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate


def wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header says the file holds; None when it does not say.

    libsndfile quietly reads what is there, so without this a cut-off upload or a
    half-copied file would pass for a shorter recording.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                header = handle.read(8)
                if len(header) < 8:
                    return None
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == b"fmt ":
                    fmt = handle.read(size + (size & 1))
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                    continue
                if chunk_id == b"data":
                    if size in _UNKNOWN_SIZES or block_align == 0:
                        return None
                    return int(size // block_align)
                handle.seek(size + (size & 1), 1)
    except OSError:
        return None


def read_audio_file(path: Path, sample_rate: int) -> AudioFile:
    """The whole file, mono at ``sample_rate``; SourceError when it cannot be used."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"audio file {path} does not exist")
    try:
        with soundfile.SoundFile(str(path)) as handle:
            rate = int(handle.samplerate)
            channels = int(handle.channels)
            data = handle.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise SourceError(
            f"audio file {path} cannot be decoded ({exc}); edgewatch reads WAV, FLAC and "
            "Ogg Vorbis/Opus files"
        ) from exc
    if data.shape[0] == 0:
        raise SourceError(f"audio file {path} holds no audio (0 samples)")
    declared = wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
    truncated = declared is not None and declared > data.shape[0]
    if truncated:
        log.warning(
            "audio file %s is truncated: its header promises %d samples, it holds %d; "
            "using what is there",
            path,
            declared,
            data.shape[0],
        )
    samples = resample_clip(to_mono(data), rate, sample_rate)
    if not np.all(np.isfinite(samples)):
        raise SourceError(f"audio file {path} holds NaN or infinite samples")
    return AudioFile(
        path=path,
        samples=samples,
        sample_rate=sample_rate,
        source_rate=rate,
        source_channels=channels,
        truncated=truncated,
    )


def fit_clip(samples: FloatArray, length: int, hop: int = 160) -> FloatArray:
    """Exactly ``length`` samples: shorter audio is padded with zeros at the end (as
    Speech Commands' own tools do), longer audio gives its loudest ``length`` stretch
    (searched every ``hop`` samples), where a keyword in a longer recording would be."""
    data = np.asarray(samples, dtype=np.float32).reshape(-1)
    if data.shape[0] == length:
        return data
    if data.shape[0] < length:
        return np.concatenate([data, np.zeros(length - data.shape[0], dtype=np.float32)])
    energy = np.concatenate([[0.0], np.cumsum(np.square(data, dtype=np.float64))])
    starts = np.arange(0, data.shape[0] - length + 1, hop)
    sums = energy[starts + length] - energy[starts]
    best = int(starts[int(np.argmax(sums))])
    return np.ascontiguousarray(data[best : best + length])


def list_audio_files(directory: Path) -> list[Path]:
    """Audio files directly in ``directory``, sorted by name (stable across machines)."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS
    )
