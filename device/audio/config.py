"""Config models for audio sources and keyword pipelines (pydantic, ``extra="forbid"``).

They follow ``device/config.py``'s conventions (frozen sections, unknown keys are
errors) and are meant to join its ``Source`` and ``Pipeline`` unions, keyed by ``kind``
and ``task``. They live here until then so that the audio code has no dependency on the
daemon's config module.

```toml
[sources.kitchen]
kind = "audio"
device = "USB"            # PortAudio device: index, or part of its name; "default"

[sources.porch]
kind = "audio"
command = ["ffmpeg", "-loglevel", "error", "-i", "rtsp://cam/stream", "-vn",
           "-f", "s16le", "-ac", "1", "-ar", "16000", "-"]
sample_rate = 16000       # what the command writes

[pipelines.words]
task = "audio-classification"
source = "kitchen"
model = "models/keywords.ewm"
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PcmFormat = Literal["s16le", "s32le", "f32le", "u8"]
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_Name = Annotated[str, Field(pattern=_NAME_PATTERN)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AudioSourceConfig(_Section):
    """A microphone (PortAudio), an audio file, or raw PCM from a command: exactly one
    of ``device``, ``file`` and ``command``.

    Whatever the input delivers is mixed down to mono and resampled to the model's
    sample rate in the source's thread.
    """

    kind: Literal["audio"] = "audio"
    #: PortAudio input device: its index, or a case-insensitive part of its name
    #: (``edgewatch check-config`` lists the devices when none or several match), or
    #: "default" for the system's default input.
    device: int | str | None = None
    file: Path | None = None
    #: A program and its arguments (no shell) whose stdout is raw interleaved PCM, e.g.
    #: ``arecord -t raw`` or ``ffmpeg ... -f s16le -``; restarted with backoff when it ends.
    command: tuple[str, ...] | None = None
    #: Microphone: the rate to open the device at (None: the device's own default rate;
    #: the model's rate is reached by resampling). Command: the rate of its PCM (required).
    sample_rate: int | None = Field(None, ge=1_000, le=384_000)
    #: Channels the microphone is opened with or the command writes (mixed to mono).
    channels: int = Field(1, ge=1, le=32)
    #: Sample format of the command's PCM.
    format: PcmFormat = "s16le"
    #: Files: start again at the end instead of stopping.
    loop: bool = False
    #: Files: deliver audio at its own pace, like a microphone (False: as fast as the
    #: pipeline takes it; for evaluation and tests).
    realtime: bool = True
    #: Audio per chunk handed to the pipeline, in milliseconds (microphone block size,
    #: file read size; a command's chunks are whatever its pipe delivers, up to this).
    block_ms: float = Field(100.0, ge=5.0, le=2_000.0)
    #: Chunks waiting for the pipeline; when full, the oldest is dropped and counted.
    queue_chunks: int = Field(50, ge=1, le=10_000)
    #: A live input (microphone, command) that delivers nothing for this long is
    #: treated as lost and reopened.
    stall_timeout_s: float = Field(3.0, gt=0.0)
    reconnect_min_s: float = Field(1.0, gt=0.0)
    reconnect_max_s: float = Field(30.0, gt=0.0)

    @model_validator(mode="after")
    def _one_input(self) -> AudioSourceConfig:
        given = [k for k in ("device", "file", "command") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "an audio source needs exactly one of device, file or command "
                f"(got {given or 'none'})"
            )
        if self.command is not None:
            if not self.command or not self.command[0]:
                raise ValueError("command must name a program")
            if self.sample_rate is None:
                raise ValueError("a command source needs sample_rate (the rate of its PCM)")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @property
    def live(self) -> bool:
        """Microphones and commands: audio that is lost if it is not taken in time."""
        return self.file is None or self.realtime

    def describe(self) -> str:
        if self.device is not None:
            return f"microphone {self.device!r}"
        if self.file is not None:
            return f"audio file {self.file}"
        program = (self.command or ("?",))[0]
        # Arguments may hold stream URLs with credentials; the program name is enough.
        return f"command {re.sub(r'//[^/@]*@', '//***@', program)}"


class KeywordEvents(_Section):
    """How per-window scores become one event per spoken keyword."""

    #: New window every this many milliseconds (a multiple of the model's frame hop).
    hop_ms: float = Field(100.0, gt=0.0)
    #: Scores are averaged over this many latest windows before deciding.
    smoothing_windows: int = Field(3, ge=1, le=100)
    #: Consecutive windows in which a label must lead (smoothed, at or above its
    #: threshold) before it is reported.
    patience: int = Field(2, ge=1, le=100)
    #: After a label was reported, it is not reported again for this long (stream time).
    cooldown_s: float = Field(1.0, ge=0.0)
    #: Windows whose loudest frame is below this level (dBFS) are not inferred: they
    #: count as silence. None: infer every window.
    gate_db: float | None = Field(-55.0, le=0.0)


class KeywordPipelineConfig(_Section):
    """A keyword or sound classifier on an audio source."""

    task: Literal["audio-classification"] = "audio-classification"
    source: _Name
    model: Path
    #: Overrides every threshold the bundle states.
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    #: Labels never reported (besides the bundle's background labels, e.g. _silence_).
    ignore_labels: tuple[str, ...] = ()
    events: KeywordEvents = Field(default_factory=KeywordEvents)
