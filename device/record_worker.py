"""The inference thread of a record source: log lines, sensor readings, audio chunks.

Record sources differ from cameras in what matters: a camera's newest frame is all
that counts (old ones are dropped when inference falls behind), whereas every log line
counts. So a record source hands out batches, the source's pipelines score each batch,
and only then is the batch acknowledged; a restart resumes after the last acknowledged
record (the source keeps that position). A slow model makes the source wait: files and
the journal simply stay unread for a moment, nothing is dropped.

Pipelines are adapters (``RecordPipeline``) that turn a batch into event drafts, so the
daemon builds events the same way for every task. Supervision follows the camera
worker's (device/inference_worker.py): a pipeline that raises is rebuilt on its own
backoff while the source's other pipelines go on; a batch that hangs past the deadline
gets its thread abandoned by generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from device.latency import LatencyWindow
from device.mqtt.payloads import (
    AudioWindow,
    EventType,
    LogDetails,
    ModelRef,
    PipelineState,
    SensorWindow,
)
from device.supervision import InferenceClock, Supervisor

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.2
#: Records scored per batch at most: large enough for the model to batch well, small
#: enough that a batch is acknowledged (and the position saved) often.
MAX_BATCH = 512


@dataclass(frozen=True)
class EventDraft:
    """What a pipeline reports; the daemon adds device, source, seq and timings."""

    event_id: str
    type: EventType
    label: str
    score: float
    top_score: float
    captured_at: float
    duration_s: float = 0.0
    log: LogDetails | None = None
    sensor: SensorWindow | None = None
    audio: AudioWindow | None = None


class RecordPipeline(Protocol):
    """A pipeline over a record source, as the daemon drives it."""

    name: str
    source: str
    model: ModelRef
    state: PipelineState
    latency: LatencyWindow

    @property
    def inferences(self) -> int:
        """Records (or windows) scored since start."""
        ...

    @property
    def gated(self) -> int:
        """Records not scored because a gate judged them empty (silent audio)."""
        ...

    @property
    def reportable(self) -> tuple[str, ...]:
        """Labels its events can carry (Home Assistant makes one entity each)."""
        ...

    def handle(self, records: Sequence[Any]) -> list[EventDraft]:
        """Score a batch (in order); the events it gives."""
        ...

    def flush(self, now: float) -> list[EventDraft]:
        """End what is open (shutdown, source disabled)."""
        ...


class RecordSource(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[Any]: ...

    def ack(self, lines: Any) -> None: ...

    def stats(self) -> object: ...


class RecordHost(Protocol):
    supervisor: Supervisor

    def stopping(self) -> bool: ...

    def source_enabled(self, source: str) -> bool: ...

    def publish_drafts(self, pipeline: RecordPipeline, drafts: Sequence[EventDraft]) -> None: ...


#: Builds a fresh pipeline (same bundle and config) after a failure.
PipelineFactory = Callable[[], RecordPipeline]


@dataclass
class RecordWorker:
    """One record source's scoring thread, restartable by generation."""

    source_name: str
    source: RecordSource
    pipelines: list[RecordPipeline]
    factories: list[PipelineFactory]
    host: RecordHost
    clock: InferenceClock = field(default_factory=InferenceClock)
    generation: int = 0
    #: Index (into ``pipelines``) of the pipeline scoring now, for the hang report.
    running: int | None = None
    #: Pipelines set aside after raising, until the supervisor rebuilds them.
    down: set[int] = field(default_factory=set)
    ended: bool = False
    records: int = 0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.generation += 1
        self.running = None
        self.clock.end()
        self.thread = threading.Thread(
            target=self._run,
            args=(self.generation,),
            name=f"score-{self.source_name}-{self.generation}",
            daemon=True,
        )
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def join(self, timeout_s: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout_s)

    def rebuild(self, index: int) -> None:
        """Replace the pipeline at ``index`` by a fresh one (raises what building raises).

        Called by the supervisor for a pipeline that is set aside (its thread does not
        touch it) or whose thread was abandoned; the list item assignment is atomic.
        """
        self.pipelines[index] = self.factories[index]()
        self.down.discard(index)

    # -- the thread -------------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self.generation

    def _run(self, generation: int) -> None:
        try:
            self._loop(generation)
        except Exception as exc:
            log.exception("scoring for source %s failed", self.source_name)
            if self._current(generation) and not self.host.stopping():
                self.host.supervisor.failed(f"source:{self.source_name}", f"scoring loop: {exc!r}")
            return
        finally:
            if self._current(generation):
                self._flush()
        if self._current(generation):
            self.ended = True

    def _loop(self, generation: int) -> None:
        host = self.host
        while not host.stopping() and self._current(generation):
            batch = self.source.get_batch(MAX_BATCH, timeout=GET_TIMEOUT_S)
            if not batch:
                continue
            if host.source_enabled(self.source_name):
                for index in range(len(self.pipelines)):
                    if index in self.down:
                        continue
                    if not self._score(index, batch, generation):
                        return
            if not self._current(generation):
                return
            self.records += len(batch)
            self.source.ack(batch)

    def _score(self, index: int, batch: Sequence[Any], generation: int) -> bool:
        """Run one pipeline on the batch; False when this thread was abandoned."""
        pipeline = self.pipelines[index]
        self.running = index
        self.clock.begin()
        start = time.perf_counter()
        try:
            drafts = pipeline.handle(batch)
        except Exception as exc:
            self.clock.end()
            if not self._current(generation):
                return False
            log.exception("pipeline %s failed on a batch of %d", pipeline.name, len(batch))
            self.down.add(index)
            self.host.supervisor.failed(f"pipeline:{pipeline.name}", f"scoring raised {exc!r}")
            return True
        self.clock.end()
        self.running = None
        if not self._current(generation):
            return False  # abandoned while this call hung: publish nothing
        pipeline.latency.add((time.perf_counter() - start) * 1000.0 / len(batch))
        self.host.supervisor.recovered(f"pipeline:{pipeline.name}")
        self.host.publish_drafts(pipeline, drafts)
        return True

    def _flush(self) -> None:
        now = time.time()
        for pipeline in self.pipelines:
            self.host.publish_drafts(pipeline, pipeline.flush(now))
