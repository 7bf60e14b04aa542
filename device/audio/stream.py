"""An audio source read in its own thread: chunks of mono audio at the model's rate.

The thread opens the input (device/audio/inputs.py), mixes each block down to mono,
resamples it to the model's rate and hands it over through a bounded queue. The
pipeline's feature code accepts chunks of any size, so the chunks are what the input
delivers, not re-cut.

Timelines. ``AudioChunk.start_sample`` counts samples at the model's rate since the
stream started, across file loops and reconnects. ``AudioChunk.timeline`` is the Unix
time of the chunk's first sample: for a file, when playback started plus the position
(so an unpaced reader gets deterministic times); for a live input, anchored to the wall
clock when audio first arrives and carried forward by counting samples, re-anchored if
the two drift more than ``MAX_DRIFT_S`` apart.

Gaps. ``AudioChunk.discontinuity`` is True when audio before the chunk is missing: the
first chunk after (re)opening, a PortAudio input overflow, a chunk dropped because the
pipeline fell behind. The pipeline then restarts its windows instead of gluing together
audio that was never contiguous.

Failures never raise from the thread and never leave a stream that silently delivers
nothing: a live input that is lost (device unplugged, program exited, nothing arriving
for ``stall_timeout_s``) is reopened with exponential backoff (status ``reconnecting``,
the reason in ``detail``, counted in ``reconnects``); a file that cannot be read is
``failed``; every such change is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from device.audio.config import AudioSourceConfig
from device.audio.inputs import (
    AudioInput,
    CommandInput,
    FileInput,
    InputEnded,
    InputLostError,
    MicrophoneInput,
    PortAudioLike,
    import_portaudio,
    program_exists,
)
from device.audio.resample import StreamResampler, to_mono
from device.errors import SourceError
from device.sources.backoff import ExponentialBackoff

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
SourceStatus = Literal["starting", "running", "reconnecting", "stopped", "failed"]
#: A live stream whose sample count and wall clock disagree by more than this is
#: re-anchored to the wall clock (audio was lost without the input saying so).
MAX_DRIFT_S = 0.5
READ_TIMEOUT_S = 0.25


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive mono samples of one source at the model's rate."""

    source: str
    #: Chunks the stream produced before this one.
    index: int
    samples: FloatArray
    sample_rate: int
    #: Position of ``samples[0]`` on the stream's sample timeline (see module docstring).
    start_sample: int
    #: Unix time of ``samples[0]`` on the stream's timeline.
    timeline: float
    #: Unix time at which the chunk was read from the input.
    captured_at: float
    #: Audio before this chunk is missing or unrelated (see module docstring).
    discontinuity: bool

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0]) / self.sample_rate


@dataclass(frozen=True)
class AudioSourceStats:
    """A snapshot of the stream's counters, for the stats message."""

    chunks: int
    #: Seconds of audio handed to the queue.
    seconds: float
    #: Chunks dropped from a full queue because the pipeline was slower.
    dropped_chunks: int
    #: PortAudio input overflows (audio lost before it reached edgewatch).
    overruns: int
    #: Attempts to reopen a lost input.
    reconnects: int
    queue_depth: int
    #: The input's own rate (the model's rate is reached by resampling); 0 before open.
    input_rate: int
    status: SourceStatus
    detail: str
    #: Why the input was last lost or refused ("" when it never was): the status detail
    #: of a running source no longer says.
    last_error: str = ""


InputFactory = Callable[[AudioSourceConfig], AudioInput]


class _ChunkQueue:
    """A bounded queue that drops its oldest chunk (marking the next one as following a
    gap) or makes the producer wait."""

    def __init__(self, size: int) -> None:
        self._items: deque[AudioChunk] = deque()
        self._size = size
        self._cond = threading.Condition()
        self._closed = False

    def put_latest(self, chunk: AudioChunk) -> bool:
        with self._cond:
            dropped = len(self._items) >= self._size
            if dropped:
                self._items.popleft()
                if self._items:
                    self._items[0] = replace(self._items[0], discontinuity=True)
                else:
                    chunk = replace(chunk, discontinuity=True)
            self._items.append(chunk)
            self._cond.notify_all()
            return dropped

    def put_wait(self, chunk: AudioChunk) -> bool:
        with self._cond:
            while len(self._items) >= self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._items.append(chunk)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None) -> AudioChunk | None:
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return None
            chunk = self._items.popleft()
            self._cond.notify_all()
            return chunk

    def close(self, discard: bool = False) -> None:
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class AudioStream:
    """Reads one audio source in a background thread; see the module docstring.

    Typical use (the daemon's wiring)::

        stream = AudioStream("kitchen", config, sample_rate=manifest.preprocessing.sample_rate)
        stream.open_check()          # SourceError for a missing file or program
        stream.start()
        while not stream.finished:
            chunk = stream.get(timeout=0.5)
            if chunk is not None:
                detections = pipeline.process(chunk)
        stream.stop()
    """

    def __init__(
        self,
        name: str,
        config: AudioSourceConfig,
        sample_rate: int,
        clock: Clock = time,
        *,
        portaudio: PortAudioLike | None = None,
        input_factory: InputFactory | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.sample_rate = sample_rate
        self._clock = clock
        self._portaudio = portaudio
        self._factory = input_factory or self._open_input
        self._queue = _ChunkQueue(config.queue_chunks)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._chunks = 0
        self._samples = 0
        self._dropped = 0
        self._overruns = 0
        self._reconnects = 0
        self._input_rate = 0
        self._status: SourceStatus = "starting"
        self._detail = ""
        self._last_error = ""
        self._backoff = ExponentialBackoff(config.reconnect_min_s, config.reconnect_max_s)

    # -- public ----------------------------------------------------------------------------

    @property
    def description(self) -> str:
        return self.config.describe()

    @property
    def status(self) -> SourceStatus:
        with self._lock:
            return self._status

    @property
    def finished(self) -> bool:
        """True once no chunk is waiting and none will come (end of file, failure, stop)."""
        return self._done.is_set() and len(self._queue) == 0

    def open_check(self) -> None:
        """Raise SourceError now for problems that retrying cannot fix: a file that is
        missing, undecodable or empty, a program that does not exist, no PortAudio.
        A microphone that is not plugged in yet is not an error here (it is retried)."""
        config = self.config
        if config.file is not None:
            FileInput(config).close()
        elif config.command is not None:
            if not program_exists(config.command):
                raise SourceError(
                    f"source {self.name}: program {config.command[0]!r} not found on PATH"
                )
        elif self._portaudio is None:
            self._portaudio = import_portaudio()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"audio-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Stop reading, discard waiting chunks and wait (bounded) for the thread."""
        self._stop.set()
        self._queue.close(discard=True)
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("source %s: reader thread still busy after %.1f s", self.name,
                            timeout_s)  # fmt: skip
        with self._lock:
            if self._status != "failed":
                self._status = "stopped"
                self._detail = self._detail or "stopped"
        self._done.set()

    def get(self, timeout: float | None = None) -> AudioChunk | None:
        """The oldest waiting chunk, or None after ``timeout`` s or once ``finished``."""
        return self._queue.get(timeout)

    def stats(self) -> AudioSourceStats:
        with self._lock:
            return AudioSourceStats(
                chunks=self._chunks,
                seconds=self._samples / self.sample_rate,
                dropped_chunks=self._dropped,
                overruns=self._overruns,
                reconnects=self._reconnects,
                queue_depth=len(self._queue),
                input_rate=self._input_rate,
                status=self._status,
                detail=self._detail,
                last_error=self._last_error,
            )

    # -- the reader thread -------------------------------------------------------------------

    def _open_input(self, config: AudioSourceConfig) -> AudioInput:
        if config.file is not None:
            return FileInput(config)
        if config.command is not None:
            return CommandInput(config, clock=self._clock.monotonic)
        if self._portaudio is None:
            self._portaudio = import_portaudio()
        return MicrophoneInput(config, self._portaudio, clock=self._clock.monotonic)

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:
            log.exception("source %s: the reader thread failed", self.name)
            self._set_status("failed", "internal error in the reader thread; see the log")
        finally:
            self._done.set()
            self._queue.close()

    def _serve(self) -> None:
        # Position on the sample timeline (model rate), continued across reopenings.
        position = 0
        attempt = 0
        while not self._stop.is_set():
            if attempt:
                with self._lock:
                    self._reconnects += 1
            attempt += 1
            try:
                source = self._factory(self.config)
            except InputLostError as exc:
                if self._wait_retry(str(exc)):
                    return
                continue
            except SourceError as exc:
                self._fail(str(exc))
                return
            try:
                position, ended = self._pump(source, position)
            except InputLostError as exc:
                ended = False
                if not self._stop.is_set() and self._wait_retry(f"lost: {exc}"):
                    return
                continue
            except SourceError as exc:
                self._fail(str(exc))
                return
            finally:
                source.close()
            if ended:
                self._set_status("stopped", f"end of {self.description}")
                return

    def _pump(self, source: AudioInput, position: int) -> tuple[int, bool]:
        """Read one opened input until it ends (True), is lost (InputLostError) or stop()."""
        with self._lock:
            self._input_rate = source.rate
        resampler = StreamResampler(source.rate, self.sample_rate)
        paced = self.config.file is not None and self.config.realtime
        live = self.config.file is None
        gap = True
        anchor_wall = self._clock.time()
        anchor_mono = self._clock.monotonic()
        anchor_position = position
        started = False
        while not self._stop.is_set():
            try:
                block = source.read(READ_TIMEOUT_S)
            except InputEnded:
                tail = resampler.process(np.zeros(0, dtype=np.float32), last=True)
                if tail.size:
                    position = self._emit(tail, position, anchor_wall=anchor_wall,
                                          anchor_position=anchor_position, gap=gap,
                                          wait=not paced)  # fmt: skip
                return position, True
            if block is None:
                continue
            if block.overflow:
                with self._lock:
                    self._overruns += 1
                gap = True
            samples = resampler.process(to_mono(block.samples))
            if samples.size == 0:
                continue
            if not started:
                started = True
                self._backoff.reset()
                self._set_status("running", f"{self.description} ({source.note})")
                if live:
                    # The first block was recorded just before it arrived.
                    anchor_wall = self._clock.time() - samples.size / self.sample_rate
            if live:
                end_wall = anchor_wall + (position - anchor_position + samples.size) / (
                    self.sample_rate
                )
                now = self._clock.time()
                if abs(end_wall - now) > MAX_DRIFT_S:
                    log.debug("source %s: timeline %.2f s off the clock; re-anchored",
                              self.name, end_wall - now)  # fmt: skip
                    anchor_wall = now - samples.size / self.sample_rate
                    anchor_position = position
            elif paced:
                due = anchor_mono + (position - anchor_position + samples.size) / (
                    self.sample_rate
                )
                delay = due - self._clock.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            position = self._emit(samples, position, anchor_wall=anchor_wall,
                                  anchor_position=anchor_position, gap=gap,
                                  wait=not live and not paced)  # fmt: skip
            gap = False
        return position, False

    def _emit(
        self,
        samples: FloatArray,
        position: int,
        *,
        anchor_wall: float,
        anchor_position: int,
        gap: bool,
        wait: bool,
    ) -> int:
        with self._lock:
            index = self._chunks
        chunk = AudioChunk(
            source=self.name,
            index=index,
            samples=samples,
            sample_rate=self.sample_rate,
            start_sample=position,
            timeline=anchor_wall + (position - anchor_position) / self.sample_rate,
            captured_at=self._clock.time(),
            discontinuity=gap,
        )
        if wait:
            if not self._queue.put_wait(chunk):
                return position
            dropped = False
        else:
            dropped = self._queue.put_latest(chunk)
        with self._lock:
            self._chunks += 1
            self._samples += samples.size
            if dropped:
                self._dropped += 1
        return position + samples.size

    def _wait_retry(self, problem: str) -> bool:
        """Back off before the next attempt; True when stop() was called meanwhile."""
        delay = self._backoff.next_delay()
        with self._lock:
            self._last_error = problem
        self._set_status("reconnecting", f"{problem}; retrying in {delay:.1f} s")
        log.warning("source %s: %s; retrying in %.1f s", self.name, problem, delay)
        return self._stop.wait(delay)

    def _set_status(self, status: SourceStatus, detail: str) -> None:
        with self._lock:
            changed = status != self._status
            self._status = status
            self._detail = detail
        if changed:
            log.info("source %s: %s (%s)", self.name, status, detail)

    def _fail(self, detail: str) -> None:
        with self._lock:
            self._last_error = detail
        self._set_status("failed", detail)
        log.error("source %s: %s", self.name, detail)
