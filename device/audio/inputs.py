"""The three kinds of audio input, behind one small pull interface.

``AudioStream`` (device/audio/stream.py) reads any of them the same way: ``read(timeout)``
returns a block of interleaved float32 samples at the input's own rate, None when
nothing arrived in time, raises ``InputEnded`` at the end of a file and ``InputLostError``
when a live input went away (device unplugged, stream stopped, program exited, nothing
delivered for ``stall_timeout_s``). ``SourceError`` from the constructors means a
problem that retrying will not fix (no such file, no such program, no PortAudio).

* ``MicrophoneInput``: PortAudio through ``sounddevice`` in callback mode. The callback
  (PortAudio's thread) only copies the block into a bounded queue with PortAudio's
  input-overflow flag; the module that provides ``InputStream``, ``query_devices`` and
  ``PortAudioError`` is a parameter, so tests substitute a fake device for the one
  thing that cannot exist here, a microphone.
* ``FileInput``: WAV, FLAC or Ogg through ``soundfile``, block by block, optionally looped.
* ``CommandInput``: raw PCM from a program's stdout (``arecord``, ``ffmpeg`` pulling an
  RTSP camera's audio), read without a shell; its stderr's last lines explain an exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from device.audio.clips import wav_declared_frames
from device.audio.config import AudioSourceConfig, PcmFormat
from device.errors import SourceError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
#: Blocks the microphone callback may queue before the reader takes them (seconds of
#: audio = this x block_ms); beyond it blocks are dropped and counted as overruns.
MIC_QUEUE_BLOCKS = 64
STDERR_LINES = 20


class InputEnded(Exception):  # noqa: N818 (a signal, not an error)
    """The input has no more audio (end of a file that does not loop)."""


class InputLostError(SourceError):
    """A live input stopped delivering; the stream reopens it with backoff."""


@dataclass(frozen=True)
class RawBlock:
    """Samples as the input delivered them: (frames, channels) float32 at its rate."""

    samples: FloatArray
    #: The input says audio was lost just before this block (PortAudio input overflow).
    overflow: bool = False


class AudioInput(Protocol):
    """What ``AudioStream`` needs from an input."""

    @property
    def rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    #: A human-readable note about the input (device name, truncation), for the status.
    @property
    def note(self) -> str: ...

    def read(self, timeout: float) -> RawBlock | None: ...

    def close(self) -> None: ...


# -- microphone ---------------------------------------------------------------------------


class InputStreamLike(Protocol):
    """The part of ``sounddevice.InputStream`` the microphone input uses."""

    @property
    def samplerate(self) -> float: ...

    @property
    def active(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class PortAudioLike(Protocol):
    """The part of the ``sounddevice`` module the microphone input uses."""

    PortAudioError: type[Exception]

    def InputStream(self, **kwargs: Any) -> InputStreamLike: ...  # noqa: N802 (its name)

    def query_devices(self, device: Any = None, kind: str | None = None) -> Any: ...


def import_portaudio() -> PortAudioLike:
    """The ``sounddevice`` module, or a SourceError that says what to install."""
    try:
        import sounddevice
    except OSError as exc:  # the module imports, but libportaudio.so.2 is missing
        raise SourceError(
            f"the PortAudio library is not installed ({exc}); on Debian or Raspberry Pi "
            "OS: sudo apt-get install libportaudio2"
        ) from exc
    except ImportError as exc:
        raise SourceError(
            "microphones need the sounddevice package: pip install 'edgewatch[device]'"
        ) from exc
    module: PortAudioLike = sounddevice  # type: ignore[assignment]
    return module


def list_input_devices(portaudio: PortAudioLike) -> str:
    """"0 'HDA Intel PCH: ALC257 Analog', 2 'USB PnP Sound Device'", for error messages."""
    try:
        devices = portaudio.query_devices()
    except portaudio.PortAudioError as exc:
        return f"(cannot list devices: {exc})"
    names = [
        f"{index} {device['name']!r}"
        for index, device in enumerate(devices)
        if int(device.get("max_input_channels", 0)) > 0
    ]
    return ", ".join(names) or "none"


def refresh_devices(portaudio: PortAudioLike) -> bool:
    """Make PortAudio look for devices again; True when it did.

    PortAudio lists devices once, when it is initialised, so a USB microphone plugged
    back in is invisible until it is re-initialised. Re-initialising closes every open
    stream of the process, so it is done only while no microphone is open.
    """
    terminate = getattr(portaudio, "_terminate", None)
    initialize = getattr(portaudio, "_initialize", None)
    if terminate is None or initialize is None or MicrophoneInput.open_count:
        return False
    try:
        terminate()
        initialize()
    except portaudio.PortAudioError as exc:
        log.debug("re-initialising PortAudio failed: %s", exc)
        return False
    return True


class MicrophoneInput:
    """A PortAudio input device, opened at its own (or the configured) rate."""

    #: Microphones open in this process (see ``refresh_devices``).
    open_count = 0
    _count_lock = threading.Lock()

    def __init__(
        self,
        config: AudioSourceConfig,
        portaudio: PortAudioLike | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pa = portaudio or import_portaudio()
        self._clock = clock
        self._stall_s = config.stall_timeout_s
        device = None if config.device in (None, "default") else config.device
        try:
            info = self._query(device)
        except (ValueError, self._pa.PortAudioError) as exc:
            raise InputLostError(
                f"no usable input device {config.device!r} ({exc}); input devices: "
                f"{list_input_devices(self._pa)}"
            ) from exc
        self._name = str(info.get("name", config.device))
        available = int(info.get("max_input_channels", 0))
        if config.channels > available:
            raise InputLostError(
                f"input device {self._name!r} has {available} input channel(s), the config "
                f"asks for {config.channels}"
            )
        self._rate = int(config.sample_rate or round(float(info["default_samplerate"])))
        self._channels = config.channels
        self._blocks: queue.Queue[RawBlock] = queue.Queue(MIC_QUEUE_BLOCKS)
        self._finished = threading.Event()
        self._dropped = 0
        self._last_data = clock()
        try:
            self._stream = self._pa.InputStream(
                device=device,
                samplerate=self._rate,
                channels=self._channels,
                dtype="float32",
                blocksize=max(1, round(self._rate * config.block_ms / 1000.0)),
                callback=self._callback,
                finished_callback=self._finished.set,
            )
            self._stream.start()
        except self._pa.PortAudioError as exc:
            raise InputLostError(
                f"cannot open input device {self._name!r} at {self._rate} Hz with "
                f"{self._channels} channel(s): {exc}"
            ) from exc
        self._rate = round(float(self._stream.samplerate))
        with MicrophoneInput._count_lock:
            MicrophoneInput.open_count += 1
        self._counted = True

    def _query(self, device: int | str | None) -> Any:
        try:
            return self._pa.query_devices(device, kind="input")
        except (ValueError, self._pa.PortAudioError):
            if not refresh_devices(self._pa):
                raise
            return self._pa.query_devices(device, kind="input")

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def note(self) -> str:
        return f"{self._name} at {self._rate} Hz"

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy and hand over, nothing else (it must never block)."""
        block = RawBlock(
            samples=np.array(indata, dtype=np.float32, copy=True),
            overflow=bool(getattr(status, "input_overflow", False)),
        )
        try:
            self._blocks.put_nowait(block)
        except queue.Full:
            # The reader is stuck; the next delivered block reports the gap.
            self._dropped += 1

    def read(self, timeout: float) -> RawBlock | None:
        try:
            block = self._blocks.get(timeout=timeout)
        except queue.Empty:
            self._check_alive()
            return None
        self._last_data = self._clock()
        if self._dropped:
            self._dropped = 0
            return RawBlock(block.samples, overflow=True)
        return block

    def _check_alive(self) -> None:
        if self._finished.is_set():
            raise InputLostError(f"input device {self._name!r} stopped delivering (unplugged?)")
        try:
            active = bool(self._stream.active)
        except self._pa.PortAudioError as exc:
            raise InputLostError(f"input device {self._name!r} failed: {exc}") from exc
        if not active:
            raise InputLostError(f"input device {self._name!r} is no longer active (unplugged?)")
        silent_s = self._clock() - self._last_data
        if silent_s > self._stall_s:
            raise InputLostError(
                f"input device {self._name!r} delivered nothing for {silent_s:.1f} s"
            )

    def close(self) -> None:
        for action in (self._stream.stop, self._stream.close):
            try:
                action()
            except self._pa.PortAudioError as exc:  # a vanished device cannot be stopped
                log.debug("closing input device %s: %s", self._name, exc)
        with MicrophoneInput._count_lock:
            if self._counted:
                MicrophoneInput.open_count -= 1
                self._counted = False


# -- files --------------------------------------------------------------------------------


class FileInput:
    """An audio file read block by block (looped when the config says so)."""

    def __init__(self, config: AudioSourceConfig) -> None:
        import soundfile

        assert config.file is not None
        path = Path(config.file)
        self._path = path
        self._loop = config.loop
        if not path.is_file():
            raise SourceError(f"audio file {path} does not exist")
        try:
            self._handle = soundfile.SoundFile(str(path))
        except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
            raise SourceError(
                f"audio file {path} cannot be decoded ({exc}); WAV, FLAC and Ogg are read"
            ) from exc
        self._rate = int(self._handle.samplerate)
        self._channels = int(self._handle.channels)
        self._block = max(1, round(self._rate * config.block_ms / 1000.0))
        self._note = f"{path.name}: {self._channels} channel(s) at {self._rate} Hz"
        frames = int(self._handle.frames)
        if frames == 0:
            self._handle.close()
            raise SourceError(f"audio file {path} holds no audio (0 samples)")
        declared = wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
        if declared is not None and declared > frames:
            self._note += f"; truncated: {frames} of {declared} samples"
            log.warning(
                "audio file %s is truncated (%d of the %d samples its header promises); "
                "playing what is there",
                path,
                frames,
                declared,
            )

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def note(self) -> str:
        return self._note

    def read(self, timeout: float) -> RawBlock | None:
        import soundfile

        try:
            data = self._handle.read(self._block, dtype="float32", always_2d=True)
            if data.shape[0] == 0 and self._loop:
                self._handle.seek(0)
                data = self._handle.read(self._block, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as exc:
            raise SourceError(f"audio file {self._path} cannot be read: {exc}") from exc
        if data.shape[0] == 0:
            raise InputEnded
        return RawBlock(np.ascontiguousarray(data, dtype=np.float32))

    def close(self) -> None:
        self._handle.close()


# -- a command's stdout ---------------------------------------------------------------------

_FORMATS: dict[PcmFormat, tuple[str, float, float]] = {
    # numpy dtype, offset, scale: value = (raw - offset) * scale
    "s16le": ("<i2", 0.0, 1.0 / 32768.0),
    "s32le": ("<i4", 0.0, 1.0 / 2147483648.0),
    "f32le": ("<f4", 0.0, 1.0),
    "u8": ("u1", 128.0, 1.0 / 128.0),
}


def decode_pcm(data: bytes, fmt: PcmFormat, channels: int) -> FloatArray:
    """Interleaved little-endian PCM bytes (whole frames) → (frames, channels) float32."""
    dtype, offset, scale = _FORMATS[fmt]
    raw = np.frombuffer(data, dtype=np.dtype(dtype))
    values = (raw.astype(np.float32) - np.float32(offset)) * np.float32(scale)
    return values.reshape(-1, channels)


class CommandInput:
    """A program's stdout as raw PCM. The program runs in its own process group so that
    stopping it also stops what it started (ffmpeg helpers, shell pipelines)."""

    def __init__(
        self,
        config: AudioSourceConfig,
        clock: Callable[[], float] = time.monotonic,
        popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    ) -> None:
        assert config.command is not None and config.sample_rate is not None
        self._argv: Sequence[str] = config.command
        self._program = Path(self._argv[0]).name
        self._rate = config.sample_rate
        self._channels = config.channels
        self._format: PcmFormat = config.format
        self._frame_bytes = np.dtype(_FORMATS[config.format][0]).itemsize * config.channels
        block_frames = max(1, round(self._rate * config.block_ms / 1000.0))
        self._max_bytes = block_frames * self._frame_bytes
        self._stall_s = config.stall_timeout_s
        self._clock = clock
        self._remainder = b""
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        try:
            self._process = popen(
                list(self._argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                start_new_session=True,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise SourceError(f"cannot run {self._program}: {exc}") from exc
        except OSError as exc:
            raise InputLostError(f"cannot start {self._program}: {exc}") from exc
        assert self._process.stdout is not None and self._process.stderr is not None
        self._stdout = self._process.stdout
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr,
            args=(self._process.stderr,),
            name=f"stderr-{self._program}",
            daemon=True,
        )
        self._stderr_thread.start()
        self._last_data = clock()

    @property
    def rate(self) -> int:
        return self._rate

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def note(self) -> str:
        return f"{self._program} (pid {self._process.pid}), {self._format} at {self._rate} Hz"

    def _drain_stderr(self, stream: Any) -> None:
        """Keep the last lines (an exit is explained by them) without ever blocking the
        program on a full stderr pipe."""
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
                log.debug("%s: %s", self._program, text)

    def _why_exited(self) -> str:
        try:
            code = self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr_thread.join(timeout=1.0)
        tail = " | ".join(list(self._stderr)[-3:])
        status = "closed its output" if code is None else f"exited with code {code}"
        return f"{self._program} {status}" + (f": {tail}" if tail else "")

    def read(self, timeout: float) -> RawBlock | None:
        if not self._selector.select(timeout):
            silent_s = self._clock() - self._last_data
            if silent_s > self._stall_s:
                raise InputLostError(f"{self._program} wrote no audio for {silent_s:.1f} s")
            return None
        data = os.read(self._stdout.fileno(), self._max_bytes)
        if not data:
            raise InputLostError(self._why_exited())
        self._last_data = self._clock()
        data = self._remainder + data
        whole = len(data) - len(data) % self._frame_bytes
        self._remainder = data[whole:]
        if whole == 0:
            return None
        return RawBlock(decode_pcm(data[:whole], self._format, self._channels))

    def close(self) -> None:
        self._selector.close()
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=2.0)
        self._stdout.close()
        self._stderr_thread.join(timeout=1.0)


def program_exists(argv: Sequence[str]) -> bool:
    """Whether the command's program can be found (on PATH, or as a path)."""
    program = argv[0]
    if os.sep in program:
        return Path(program).is_file() and os.access(program, os.X_OK)
    return shutil.which(program) is not None
