"""Spoken words synthesised offline with espeak-ng, for tests and augmentation.

espeak-ng is a formant synthesiser: its words are clearly spoken but sound nothing like
real microphones and real people, so a model trained on them alone scores near chance
on real speech. They are good for what needs known words at known places: tests of the
streaming pipeline (which word, where), and a dataset generator for quick end-to-end
runs. Never report accuracy on synthetic speech as if it were real.

Several words are spoken in one espeak-ng call, separated by long breaks (SSML), and
cut apart at the silences; that is many times faster than one process per word.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.audio.resample import resample_clip, to_mono
from device.errors import EdgewatchError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
ESPEAK = "espeak-ng"
#: Between words in one call; words are cut apart at silences longer than half of it.
BREAK_MS = 700
#: Samples quieter than this are silence when cutting words apart (espeak-ng writes
#: digital silence between words).
SILENCE_LEVEL = 1e-3
#: Voices that ship with espeak-ng on Debian, male and female variants, several accents.
VOICES: tuple[str, ...] = (
    "en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us+f2", "en-gb+f3",
    "en-us+m3", "en-gb-scotland+f4", "en-029+m5", "en-us+f5", "en-gb+m7",
)  # fmt: skip


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice (with optional ``+variant``), speed in words a minute, pitch 0-99."""

    name: str = "en-us"
    speed: int = 160
    pitch: int = 50

    def args(self) -> list[str]:
        return ["-v", self.name, "-s", str(self.speed), "-p", str(self.pitch)]


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def _run(text: str, voice: Voice, ssml: bool) -> tuple[FloatArray, int]:
    import soundfile

    command = [ESPEAK, *voice.args(), "--stdout", *(["-m"] if ssml else []), text]
    try:
        result = subprocess.run(command, capture_output=True, check=True, timeout=60)
    except FileNotFoundError as exc:
        raise EdgewatchError(
            "espeak-ng is not installed; on Debian: sudo apt-get install espeak-ng"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise EdgewatchError(
            f"espeak-ng failed for voice {voice.name}: {exc.stderr.decode(errors='replace')}"
        ) from exc
    data, rate = soundfile.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    return to_mono(data), int(rate)


def _segments(audio: FloatArray, rate: int) -> list[FloatArray]:
    """Stretches of sound separated by at least half a break of silence."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    if loud.size == 0:
        return []
    gap = int(rate * BREAK_MS / 2000)
    cuts = np.flatnonzero(np.diff(loud) > gap)
    starts = np.concatenate([[loud[0]], loud[cuts + 1]])
    ends = np.concatenate([loud[cuts], [loud[-1]]]) + 1
    return [audio[s:e] for s, e in zip(starts, ends, strict=True)]


def speak_words(
    words: Sequence[str], voice: Voice, sample_rate: int = 16_000
) -> dict[str, FloatArray]:
    """Each word spoken once by ``voice``, trimmed of silence, at ``sample_rate``."""
    text = "<speak>" + f'<break time="{BREAK_MS}ms"/>'.join(words) + "</speak>"
    audio, rate = _run(text, voice, ssml=True)
    pieces = _segments(audio, rate)
    if len(pieces) != len(words):
        # A word with an internal pause (or two words merging): one call each instead.
        log.debug("voice %s: %d pieces for %d words; speaking one by one", voice, len(pieces),
                  len(words))  # fmt: skip
        pieces = []
        for word in words:
            single, rate = _run(word, voice, ssml=False)
            found = _segments(single, rate)
            pieces.append(np.concatenate(found) if found else single)
    return {
        word: resample_clip(piece, rate, sample_rate)
        for word, piece in zip(words, pieces, strict=True)
    }


def voice_grid(
    names: Iterable[str], speeds: Iterable[int], pitches: Iterable[int]
) -> list[Voice]:
    return [Voice(n, s, p) for n in names for s in speeds for p in pitches]


def write_word_folder(
    out: Path,
    words: Sequence[str],
    voices: Sequence[Voice],
    *,
    sample_rate: int = 16_000,
    clip_samples: int = 16_000,
    unknown_words: Sequence[str] = (),
    unknown_per_voice: int | None = None,
) -> dict[str, int]:
    """A Speech Commands-style folder: ``out/<word>/<voice>_nohash_0.wav`` for every word
    and voice (the word centred in a clip), and ``out/_unknown_/<word>_<voice>_nohash_0.wav``
    for ``unknown_words`` (``unknown_per_voice`` of them a voice, taken in turn, so that
    ``_unknown_`` stays near a keyword's size; None: all). Each voice is its own
    "speaker". Returns the clip count per folder."""
    import soundfile

    counts: dict[str, int] = {}
    per_voice = len(unknown_words) if unknown_per_voice is None else unknown_per_voice
    for number, voice in enumerate(voices):
        extra = [unknown_words[(number * per_voice + k) % len(unknown_words)]
                 for k in range(per_voice)] if unknown_words else []  # fmt: skip
        spoken = speak_words([*words, *dict.fromkeys(extra)], voice, sample_rate)
        for word, audio in spoken.items():
            keyword = word in words
            folder = out / (word if keyword else "_unknown_")
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{number:04x}_nohash_0.wav" if keyword else f"{word}_{number:04x}_nohash_0.wav"
            soundfile.write(folder / name, centred(audio, clip_samples), sample_rate,
                            subtype="PCM_16")  # fmt: skip
            counts[folder.name] = counts.get(folder.name, 0) + 1
    return counts


def centred(audio: FloatArray, length: int) -> FloatArray:
    """``audio`` in the middle of ``length`` samples of silence (cut if longer)."""
    if audio.shape[0] >= length:
        start = (audio.shape[0] - length) // 2
        return np.ascontiguousarray(audio[start : start + length])
    out = np.zeros(length, dtype=np.float32)
    offset = (length - audio.shape[0]) // 2
    out[offset : offset + audio.shape[0]] = audio
    return out


#: Words that are none of Speech Commands' ten keywords: its own auxiliary words and a
#: few more short, common ones (spoken as ``_unknown_`` examples).
OTHER_WORDS: tuple[str, ...] = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
    "backward", "forward", "follow", "learn", "visual", "yellow", "water", "open", "light",
    "door", "bye", "dad", "less", "top", "gone", "know", "sit", "red", "dawn", "own",
)  # fmt: skip


def synthetic_voices(count: int, rng: np.random.Generator) -> list[Voice]:
    """``count`` voice settings drawn from VOICES, speeds 110-210, pitches 20-80."""
    return [
        Voice(
            VOICES[int(rng.integers(len(VOICES)))],
            int(rng.integers(110, 211)),
            int(rng.integers(20, 81)),
        )
        for _ in range(count)
    ]


def synthetic_clips(
    labels: Sequence[str],
    voices: Sequence[Voice],
    *,
    clip_samples: int,
    sample_rate: int = 16_000,
    unknown_label: str | None = "_unknown_",
    other_words: Sequence[str] = OTHER_WORDS,
    rng: np.random.Generator,
) -> tuple[FloatArray, np.ndarray[Any, np.dtype[np.int64]]]:
    """Every speakable label (letters only, e.g. "yes") spoken by every voice, plus as
    many ``other_words`` (as ``unknown_label``) as there are keywords, for training-time
    augmentation. Returns (clips, label indices)."""
    keywords = [label for label in labels if label.isalpha()]
    others = [w for w in other_words if w not in labels]
    clips: list[FloatArray] = []
    y: list[int] = []
    for voice in voices:
        extra: list[str] = []
        if unknown_label in labels and others:
            picks = rng.choice(len(others), size=min(len(keywords), len(others)), replace=False)
            extra = [others[int(i)] for i in picks]
        spoken = speak_words([*keywords, *extra], voice, sample_rate)
        for word, audio in spoken.items():
            label = word if word in keywords else unknown_label
            assert label is not None
            clips.append(centred(audio, clip_samples))
            y.append(labels.index(label))
    if not clips:
        return np.zeros((0, clip_samples), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.stack(clips).astype(np.float32), np.asarray(y, dtype=np.int64)
