"""The inference thread of one source, and what the supervisor needs to restart it.

Each source has one worker thread that takes frames from the source's stream and runs
the source's pipelines on them in order (one thread per interpreter keeps the
interpreters thread-safe). The worker is written so that the daemon's supervisor can
replace any part of it while the others go on:

- a pipeline that raises is set aside (its frames are not inferred) until the
  supervisor has rebuilt it, and the source's other pipelines keep running;
- an inference that hangs cannot be interrupted (the interpreter is native code), so
  the supervisor abandons the thread: it bumps the worker's *generation* and starts a
  new thread; the old one, should its call ever return, sees that it is no longer
  current and exits without publishing or touching anything shared;
- a stream that failed is replaced in the daemon's ``streams`` map, which the worker
  reads on every loop, so the thread itself survives the replacement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from device.modelstore.switch import PipelineSwitcher, SwapTicket
from device.pipelines.lifecycle import Transition
from device.pipelines.loaded import LoadedPipeline
from device.sources.camera import CameraStream, Frame
from device.supervision import InferenceClock, Supervisor

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.2


def source_part(source: str) -> str:
    return f"source:{source}"


def pipeline_part(pipeline: str) -> str:
    return f"pipeline:{pipeline}"


class WorkerHost(Protocol):
    """What the worker needs from the daemon."""

    switcher: PipelineSwitcher
    supervisor: Supervisor

    @property
    def pipelines(self) -> list[LoadedPipeline]: ...

    def stopping(self) -> bool: ...

    def current_stream(self, source: str) -> CameraStream: ...

    def frame_arrived(self, source: str, frame: Frame) -> bool:
        """Remember the frame (snapshots, `keep`); returns whether the source is enabled."""
        ...

    def publish_transitions(
        self, loaded: LoadedPipeline, transitions: Sequence[Transition], captured_at: float
    ) -> None: ...

    def inferred(self, loaded: LoadedPipeline, frame: Frame) -> None:
        """After a pipeline's inference (hard examples)."""
        ...


@dataclass
class InferenceWorker:
    """One source's inference thread, restartable by generation."""

    source: str
    #: Indices of the source's pipelines in the host's ``pipelines`` list.
    users: tuple[int, ...]
    host: WorkerHost
    clock: InferenceClock = field(default_factory=InferenceClock)
    #: Bumped to abandon the running thread (after a hang, or to restart a dead one).
    generation: int = 0
    #: The index of the pipeline being inferred now, for the hang report.
    running: int | None = None
    #: Pipelines set aside after raising, with the swap that brings their replacement
    #: (None until the supervisor has rebuilt them).
    down: dict[int, SwapTicket | None] = field(default_factory=dict)
    #: True once the thread ended because its source ended (not a failure).
    ended: bool = False
    thread: threading.Thread | None = None

    def start(self) -> None:
        """Start a thread of a new generation; a previous one is abandoned."""
        self.generation += 1
        self.running = None
        self.clock.end()
        self.ended = False
        self.thread = threading.Thread(
            target=self._run,
            args=(self.generation,),
            name=f"infer-{self.source}-{self.generation}",
            daemon=True,
        )
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout_s)

    # -- the thread -------------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self.generation

    def _run(self, generation: int) -> None:
        host = self.host
        with host.switcher.serving(self.source):
            try:
                self._loop(generation)
            except Exception as exc:
                log.exception("inference for source %s failed", self.source)
                if self._current(generation) and not host.stopping():
                    host.supervisor.failed(source_part(self.source), f"inference loop: {exc!r}")
                return
            finally:
                if self._current(generation):
                    self._flush_all()
        if self._current(generation):
            self.ended = True

    def _loop(self, generation: int) -> None:
        host = self.host
        enabled = True
        while not host.stopping() and self._current(generation):
            host.switcher.apply_pending(self.source)
            stream = host.current_stream(self.source)
            frame = stream.get(timeout=GET_TIMEOUT_S)
            if frame is None:
                if not stream.finished:
                    continue
                if stream.status == "failed":
                    # The supervisor replaces the stream; wait for it.
                    time.sleep(GET_TIMEOUT_S)
                    continue
                return  # the source ended (end of a file): nothing more will come
            host.supervisor.recovered(source_part(self.source))
            now_enabled = host.frame_arrived(self.source, frame)
            if enabled and not now_enabled:
                # Disabled: end what is open (here, on the thread that owns the trackers)
                # and infer nothing until enabled again.
                self._flush_all()
            enabled = now_enabled
            if enabled:
                self._infer_frame(frame, generation)

    def _infer_frame(self, frame: Frame, generation: int) -> None:
        host = self.host
        for position, index in enumerate(self.users):
            if index in self.down and not self._back_up(index):
                continue
            self.running = index
            self.clock.begin()
            try:
                loaded, transitions = host.switcher.process(index, frame, position == 0)
            except Exception as exc:
                self.clock.end()
                if not self._current(generation):
                    return
                name = host.pipelines[index].name
                log.exception("pipeline %s failed on frame %d", name, frame.index)
                self.down[index] = None
                host.supervisor.failed(pipeline_part(name), f"inference raised {exc!r}")
                continue
            self.clock.end()
            if not self._current(generation):
                return  # abandoned while this call hung: publish nothing
            host.supervisor.recovered(pipeline_part(loaded.name))
            host.publish_transitions(loaded, transitions, frame.captured_at)
            host.inferred(loaded, frame)
        self.running = None

    def _back_up(self, index: int) -> bool:
        """Whether a set-aside pipeline's replacement has been switched in."""
        ticket = self.down.get(index)
        if ticket is None or not ticket.done.is_set():
            return False
        del self.down[index]
        return True

    def _flush_all(self) -> None:
        now = time.time()
        for index in self.users:
            loaded = self.host.pipelines[index]
            self.host.publish_transitions(loaded, loaded.pipeline.flush(), now)
