"""A stand-in for the ``sounddevice`` module: the one piece of hardware tests cannot have.

It has the three names ``MicrophoneInput`` uses (``query_devices``, ``InputStream``,
``PortAudioError``) with sounddevice's signatures and behaviour: a stream calls its
callback from its own thread with ``(indata, frames, time, status)`` blocks of
``blocksize`` frames, ``status.input_overflow`` set where the test asks for an overrun.
A device can vanish like an unplugged USB microphone, in either of the ways PortAudio
shows it: the stream errors (``active`` and ``stop`` raise PortAudioError) or it just
goes quiet (no more callbacks). While unplugged the device is not listed, and opening
it fails as PortAudio does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np


class PortAudioError(Exception):
    """sounddevice.PortAudioError's stand-in."""


@dataclass
class Status:
    input_overflow: bool = False


@dataclass
class FakeDevice:
    name: str
    #: (frames, channels) float32 audio the device "records", looped.
    audio: np.ndarray[Any, Any]
    rate: int = 48_000
    rates: tuple[int, ...] = (44_100, 48_000)
    #: Block numbers (counted over the device's life) delivered with input_overflow set.
    overflow_blocks: frozenset[int] = frozenset()
    #: Playback speed relative to real time (tests need not wait for real time).
    speed: float = 10.0
    plugged: bool = True
    vanish: Literal["error", "silent"] = "error"
    blocks_sent: int = 0
    streams_opened: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def channels(self) -> int:
        return int(self.audio.shape[1])


class FakeInputStream:
    def __init__(
        self,
        owner: FakePortAudio,
        device: int | str | None,
        samplerate: float,
        channels: int,
        dtype: str,
        blocksize: int,
        callback: Callable[[np.ndarray[Any, Any], int, Any, Status], None],
        finished_callback: Callable[[], None] | None = None,
    ) -> None:
        self._device = owner.find(device)
        if not self._device.plugged:
            raise PortAudioError("Error opening InputStream: Device unavailable [-9985]")
        if int(samplerate) not in self._device.rates:
            raise PortAudioError("Error opening InputStream: Invalid sample rate [-9997]")
        if channels > self._device.channels:
            raise PortAudioError("Error opening InputStream: Invalid number of channels")
        assert dtype == "float32"
        self._rate = int(samplerate)
        self._channels = channels
        self._block = blocksize
        self._callback = callback
        self._finished = finished_callback
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._position = 0
        self._device.streams_opened += 1

    @property
    def samplerate(self) -> float:
        return float(self._rate)

    @property
    def active(self) -> bool:
        if not self._device.plugged and self._device.vanish == "error":
            raise PortAudioError("Unanticipated host error [PaErrorCode -9999]")
        return self._thread is not None and not self._stop.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._deliver, daemon=True)
        self._thread.start()

    def _deliver(self) -> None:
        device = self._device
        audio = device.audio[:, : self._channels]
        period = self._block / self._rate / device.speed
        next_due = time.monotonic()
        while not self._stop.is_set():
            if not device.plugged:
                return  # an unplugged device delivers nothing more
            index = np.arange(self._position, self._position + self._block) % audio.shape[0]
            self._position += self._block
            with device.lock:
                number = device.blocks_sent
                device.blocks_sent += 1
            status = Status(input_overflow=number in device.overflow_blocks)
            self._callback(np.ascontiguousarray(audio[index], dtype=np.float32), self._block,
                           None, status)  # fmt: skip
            next_due += period
            delay = next_due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if not self._device.plugged and self._device.vanish == "error":
            raise PortAudioError("Error stopping stream: Unanticipated host error")
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def close(self) -> None:
        self._stop.set()
        if not self._device.plugged and self._device.vanish == "error":
            raise PortAudioError("Error closing stream: Unanticipated host error")


class FakePortAudio:
    """The module: ``FakePortAudio([FakeDevice(...)])`` stands for ``import sounddevice``."""

    PortAudioError = PortAudioError

    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices

    def find(self, device: int | str | None) -> FakeDevice:
        plugged = [d for d in self.devices if d.plugged]
        if device is None:
            if not plugged:
                raise PortAudioError("Error querying device -1")
            return plugged[0]
        if isinstance(device, int):
            if not 0 <= device < len(self.devices) or not self.devices[device].plugged:
                raise PortAudioError(f"Error querying device {device}")
            return self.devices[device]
        matches = [d for d in plugged if device.lower() in d.name.lower()]
        if len(matches) != 1:
            raise ValueError(
                f"No input device matching {device!r}" if not matches
                else f"Multiple input devices found for {device!r}"
            )  # fmt: skip
        return matches[0]

    def query_devices(self, device: int | str | None = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return [self._describe(d) for d in self.devices if d.plugged]
        return self._describe(self.find(device))

    @staticmethod
    def _describe(device: FakeDevice) -> dict[str, Any]:
        return {
            "name": device.name,
            "max_input_channels": device.channels,
            "default_samplerate": float(device.rate),
        }

    def InputStream(self, **kwargs: Any) -> FakeInputStream:  # noqa: N802 (sounddevice's name)
        return FakeInputStream(self, **kwargs)
