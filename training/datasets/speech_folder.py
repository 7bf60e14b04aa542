"""Reading an audio-classification folder with the Speech Commands conventions.

``DIR/<label>/*.{wav,flac,ogg}``, one sub-folder per class, plus three special names:

* ``_background_noise_``: long recordings of noise. Not a class: training mixes them
  into clips and cuts ``_silence_`` clips from them.
* ``_silence_``: clips with no speech. When the folder is missing, silence clips are
  cut from the background noise (or generated noise), as many as an average class has.
* ``_unknown_``: speech that is none of the keywords. With ``keywords`` given, every
  other word folder is folded into it as well (Speech Commands' 35 words → 10 + unknown).

Speakers. Speech Commands names files ``<speaker>_nohash_<n>.wav`` (and
``<word>_<speaker>_nohash_<n>.wav`` in the test set's ``_unknown_``). The speaker is the
last ``_``-separated part before ``_nohash_``, so one person's "yes" and "backward" are
the same speaker; a file without ``_nohash_`` is its own speaker. Splits are by speaker
(a seeded shuffle of the speakers, filled to the fractions by file count), so no voice
is in two splits and held-out accuracy is accuracy on people the model never heard.

Every clip is read by the device's ``read_audio_file`` (mono, the model's rate) and
fitted to the window by ``fit_clip``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio.clips import AUDIO_EXTENSIONS, fit_clip, list_audio_files, read_audio_file
from device.errors import DatasetError, SourceError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
BACKGROUND_NOISE = "_background_noise_"
BACKGROUND_LABELS = (SILENCE, UNKNOWN)
NOHASH = "_nohash_"
_LAYOUT_HINT = (
    "expected DIR/<label>/<audio files> (Speech Commands layout, with optional "
    "_silence_, _unknown_ and _background_noise_ folders)"
)


#: The "speaker" of a file whose name has no speaker id (``_silence_`` clips, say):
#: this prefix and the file, so each such file is split on its own.
UNATTRIBUTED = "file:"


def speaker_of(path: Path) -> str:
    """The speaker id of a Speech Commands file name (see the module docstring)."""
    stem = path.stem
    if NOHASH not in stem:
        return f"{UNATTRIBUTED}{path.parent.name}/{stem}"
    return stem.split(NOHASH, 1)[0].rsplit("_", 1)[-1]


@dataclass(frozen=True)
class ClipIndex:
    """The labels of a folder and each clip's file, label index and speaker."""

    root: Path
    labels: tuple[str, ...]
    files: tuple[Path, ...]
    y: IntArray
    speakers: tuple[str, ...]
    noise_files: tuple[Path, ...]

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.y, minlength=len(self.labels))
        return {label: int(n) for label, n in zip(self.labels, found, strict=True)}


def index_folder(root: Path, keywords: Sequence[str] | None = None) -> ClipIndex:
    """Find the classes and clips of ``root`` (no audio is decoded here)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory; {_LAYOUT_HINT}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    noise_dir = root / BACKGROUND_NOISE
    noise_files = tuple(list_audio_files(noise_dir)) if noise_dir.is_dir() else ()
    word_dirs = [p for p in folders if p.name != BACKGROUND_NOISE]
    if keywords is not None:
        missing = [k for k in keywords if not (root / k).is_dir()]
        if missing:
            raise DatasetError(f"{root} has no folder for keyword(s) {missing}")
    per_label: dict[str, list[Path]] = {}
    for folder in word_dirs:
        label = folder.name
        if keywords is not None and label not in keywords and label != SILENCE:
            label = UNKNOWN
        clips = list_audio_files(folder)
        if clips:
            per_label.setdefault(label, []).extend(clips)
    if not per_label:
        raise DatasetError(f"{root} holds no audio files ({', '.join(AUDIO_EXTENSIONS)}); "
                           f"{_LAYOUT_HINT}")  # fmt: skip
    labels = tuple(sorted(per_label))
    if len([x for x in labels if x not in BACKGROUND_LABELS]) < 1:
        raise DatasetError(f"{root} has no keyword folders besides {BACKGROUND_LABELS}")
    files: list[Path] = []
    y: list[int] = []
    for index, label in enumerate(labels):
        for path in sorted(per_label[label], key=lambda p: p.relative_to(root).as_posix()):
            files.append(path)
            y.append(index)
    return ClipIndex(
        root=root,
        labels=labels,
        files=tuple(files),
        y=np.asarray(y, dtype=np.int64),
        speakers=tuple(speaker_of(p) for p in files),
        noise_files=noise_files,
    )


@dataclass(frozen=True)
class SpeakerSplit:
    """Indices into a ``ClipIndex`` for each split."""

    train: IntArray
    val: IntArray
    test: IntArray


def split_by_speaker(
    speakers: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> SpeakerSplit:
    """Assign whole speakers to test, then validation, then training.

    Speakers are shuffled with ``seed`` (from their sorted order, so the result depends
    only on the names and the seed) and taken in turn until each held-out split holds
    its fraction of the clips.
    """
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise DatasetError("validation and test fractions must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError("validation and test fractions must leave clips for training")
    names = sorted(set(speakers))
    order = [names[i] for i in np.random.default_rng([seed, 7]).permutation(len(names))]
    clips_of: dict[str, list[int]] = {}
    for index, speaker in enumerate(speakers):
        clips_of.setdefault(speaker, []).append(index)
    total = len(speakers)
    targets = {"test": test_fraction * total, "val": val_fraction * total}
    assigned: dict[str, list[int]] = {"test": [], "val": [], "train": []}
    for speaker in order:
        clips = clips_of[speaker]
        for split in ("test", "val"):
            if len(assigned[split]) + len(clips) / 2 <= targets[split]:
                assigned[split].extend(clips)
                break
        else:
            assigned["train"].extend(clips)
    return SpeakerSplit(
        train=np.asarray(sorted(assigned["train"]), dtype=np.int64),
        val=np.asarray(sorted(assigned["val"]), dtype=np.int64),
        test=np.asarray(sorted(assigned["test"]), dtype=np.int64),
    )


@dataclass(frozen=True)
class LoadedClips:
    """Clips fitted to the window, (clips, samples) float32, with their labels."""

    x: FloatArray
    y: IntArray
    files: tuple[Path, ...]
    #: Files that could not be read (and were left out), with the reason.
    skipped: tuple[tuple[Path, str], ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_clips(
    files: Sequence[Path], y: IntArray, sample_rate: int, clip_samples: int
) -> LoadedClips:
    """Read and fit every file; unreadable ones are skipped and logged once."""
    clips: list[FloatArray] = []
    labels: list[int] = []
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path, label in zip(files, y, strict=True):
        try:
            audio = read_audio_file(path, sample_rate)
        except SourceError as exc:
            skipped.append((path, str(exc)))
            continue
        clips.append(fit_clip(audio.samples, clip_samples))
        labels.append(int(label))
        kept.append(path)
    if skipped:
        log.warning("skipped %d unreadable audio file(s), e.g. %s", len(skipped), skipped[0][1])
    x = np.stack(clips) if clips else np.zeros((0, clip_samples), dtype=np.float32)
    return LoadedClips(
        x=x.astype(np.float32, copy=False),
        y=np.asarray(labels, dtype=np.int64),
        files=tuple(kept),
        skipped=tuple(skipped),
    )


def load_noise(files: Sequence[Path], sample_rate: int) -> list[FloatArray]:
    """Background-noise recordings, whole, at the model's rate (unreadable ones skipped)."""
    noises = []
    for path in files:
        try:
            noises.append(read_audio_file(path, sample_rate).samples)
        except SourceError as exc:
            log.warning("skipped background noise file: %s", exc)
    return noises
