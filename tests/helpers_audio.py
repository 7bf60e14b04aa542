"""Audio test material made here: espeak-ng words, generated noise, a tiny keyword model.

The keyword model is trained in seconds on espeak-ng speech (12 voices at two speeds and
two pitches) and generated noise, and converted to int8 like any bundle. Test streams
use voice settings the model was not trained on (other speeds and pitches), mixed into
noise at known offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.synthetic.noise import coloured_noise, db_to_rms
from training.synthetic.speech import VOICES, Voice, speak_words, voice_grid, write_word_folder

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
RATE = 16_000
KEYWORDS = ("yes", "stop", "left")
UNKNOWN_WORDS = ("house", "marvin", "happy", "tree", "nine", "bird")
TRAIN_VOICES = voice_grid(VOICES, speeds=(130, 185), pitches=(35, 65))
#: Settings the model never heard: other speeds and pitches (same voice families).
TEST_VOICES = (
    Voice("en-us", 155, 50),
    Voice("en-gb+f3", 200, 80),
    Voice("en-gb-scotland", 145, 25),
    Voice("en-029+m5", 170, 55),
    Voice("en-us+f2", 120, 45),
    Voice("en-gb-x-rp", 175, 40),
)


def make_keyword_folder(out: Path) -> Path:
    """DIR/<keyword>/, DIR/_unknown_/ from espeak-ng; no _silence_ (training generates it)."""
    write_word_folder(out, KEYWORDS, TRAIN_VOICES, sample_rate=RATE, clip_samples=RATE,
                      unknown_words=UNKNOWN_WORDS, unknown_per_voice=2)  # fmt: skip
    return out


@dataclass(frozen=True)
class Placement:
    word: str
    #: Seconds from the stream's start to the word's first and last audible sound.
    onset_s: float
    offset_s: float

    @property
    def centre_s(self) -> float:
        return (self.onset_s + self.offset_s) / 2


def keyword_stream(
    seconds: float,
    words: Sequence[tuple[str, Voice, float]],
    rng: np.random.Generator,
    noise_db: float = -45.0,
    speech_db: float = -22.0,
) -> tuple[FloatArray, list[Placement]]:
    """Noise (pink and brown) with each (word, voice, onset seconds) mixed in at
    ``speech_db`` RMS; returns the audio and where each word really is."""
    total = int(seconds * RATE)
    audio = coloured_noise("pink", total, rng, RATE, noise_db) + coloured_noise(
        "brown", total, rng, RATE, noise_db - 3
    )
    placements = []
    for word, voice, onset in words:
        spoken = speak_words([word], voice, RATE)[word]
        rms = float(np.sqrt(np.mean(np.square(spoken))))
        spoken = spoken * (db_to_rms(speech_db) / rms)
        start = int(onset * RATE)
        audio[start : start + spoken.shape[0]] += spoken
        first, last = audible(spoken)
        placements.append(Placement(word, onset + first, onset + last))
    return audio.astype(np.float32), placements


def audible(word: FloatArray, below_peak_db: float = 40.0) -> tuple[float, float]:
    """Seconds from the start of a clean recording to the first and last end of its
    10 ms frames within ``below_peak_db`` of its loudest frame: where a listener hears it
    (espeak-ng trails off in a faint release that a -45 dBFS room covers)."""
    frames = word[: word.shape[0] // 160 * 160].reshape(-1, 160)
    level = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-12)
    loud = np.flatnonzero(level >= level.max() - below_peak_db)
    return loud[0] * 160 / RATE, (loud[-1] + 1) * 160 / RATE


def make_keyword_model_dir(tmp: Path) -> Path:
    """Train the tiny keyword model (about 30 one-second epochs) into ``tmp/model``: one
    small DS-CNN, not the default ensemble, to keep test-time training short
    (``tests/test_audio_train.py`` trains and converts an ensemble)."""
    from training.train_audio import AudioTrainOptions, train_audio_classifier

    data = make_keyword_folder(tmp / "data")
    options = AudioTrainOptions(
        epochs=30, batch_size=32, width=48, blocks=2, ensemble=1, learning_rate=5e-3, patience=50,
        warmup_epochs=50, val_fraction=0.1, test_fraction=0.1, progress=False,
        name="espeak-keywords", version="1",
    )  # fmt: skip
    return train_audio_classifier(data, tmp / "model", options).out_dir
