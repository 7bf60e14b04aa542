"""Hand a new pipeline to the inference thread, which switches between two frames.

A new model is loaded and smoke-tested on the model service's thread while the old one
keeps serving. The switch itself is a pending request the source's inference thread
takes before its next frame: it replaces the daemon's entry for the pipeline (one list
item assignment), the new pipeline adopts the old one's event tracker (an open event
continues with the same event_id) and, when it is the source's first pipeline, the
capture thread's preprocessing. No frame waits for a model load, none is skipped: the
frame after the switch is simply inferred by the new model.

When the new model's input differs from the old one's (size, or the int8 lookup table),
frames already preprocessed by the capture thread for the old model are preprocessed
again on the inference thread until the queue has turned over.

During the health watch the previous pipeline is kept loaded. An unhealthy verdict,
reached on the inference thread, switches back right there, before the next frame, and
reports to the model service, which records the rollback; an inference error during the
watch is answered by the previous model for that same frame, so no frame goes without
an inference even then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from device.errors import ConfigError, ModelStoreError
from device.modelstore.health import HealthWatch, Verdict
from device.pipelines.chained_frames import ChainedPipeline
from device.pipelines.detection import DetectionPipeline
from device.pipelines.lifecycle import Transition
from device.pipelines.loaded import LoadedPipeline, hand_over_events, reconfigure
from device.sources.camera import Frame, UInt8Image

log = logging.getLogger(__name__)

#: Frames re-preprocessed after a switch that changes the input: more than the largest
#: queue (sources.*.queue_size <= 64) plus the one being prepared by the capture thread.
RETENSOR_FRAMES = 66


@dataclass
class SwapTicket:
    """A requested switch; ``done`` is set once the inference thread has made it."""

    pipeline: str
    requested_at: float = field(default_factory=time.perf_counter)
    applied_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def wait_ms(self) -> float:
        """From the request to the switch (waiting for the frame boundary included)."""
        return (self.applied_at - self.requested_at) * 1000.0 if self.applied_at else 0.0


@dataclass(frozen=True)
class HealthReport:
    """A health watch's verdict on one pipeline (sent to the model service)."""

    pipeline: str
    model: str
    #: The version that was judged.
    version: str
    verdict: Verdict
    #: What serves the pipeline now (the previous model when unhealthy).
    serving: LoadedPipeline


class SwitchablePreprocess:
    """The capture thread's preprocessing, retargeted to the new model at a switch."""

    def __init__(self, function: Callable[[UInt8Image], UInt8Image | None]) -> None:
        self.function = function

    def __call__(self, image: UInt8Image) -> UInt8Image | None:
        return self.function(image)


@dataclass
class _Pending:
    index: int
    new: LoadedPipeline
    watch: HealthWatch | None
    ticket: SwapTicket


@dataclass
class _Watched:
    previous: LoadedPipeline
    watch: HealthWatch


def same_input(a: LoadedPipeline, b: LoadedPipeline) -> bool:
    """Whether a tensor preprocessed for ``a`` is exactly what ``b`` wants."""
    ta, tb = a.pipeline.runtime.inputs[0], b.pipeline.runtime.inputs[0]
    return a.pipeline.spec == b.pipeline.spec and (ta.shape, ta.dtype, ta.scale, ta.zero_point) == (
        tb.shape,
        tb.dtype,
        tb.scale,
        tb.zero_point,
    )


def _log_report(report: HealthReport) -> None:
    log.info("health of %s (%s): %s", report.pipeline, report.version, report.verdict.reason)


class PipelineSwitcher:
    """Owns the switching of the daemon's ``pipelines`` list (shared, same object)."""

    def __init__(self, pipelines: list[LoadedPipeline]) -> None:
        self.pipelines = pipelines
        #: Called (from an inference thread) with every health verdict.
        self.on_health: Callable[[HealthReport], None] = _log_report
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Pending]] = {}
        #: Threads serving each source: two for a moment when the supervisor has
        #: abandoned a hung one and started its successor.
        self._serving: dict[str, int] = {}
        self._watched: dict[int, _Watched] = {}
        self._retensor: dict[str, int] = {}
        self._preprocessors: dict[str, SwitchablePreprocess] = {}
        self._counts = [0] * len(pipelines)

    # -- set-up ---------------------------------------------------------------------------

    def users(self, source: str) -> list[int]:
        """Indices of the source's pipelines in the order they run: config order, but
        chained pipelines after the others (they read their input's objects for the
        same frame)."""
        mine = [i for i, p in enumerate(self.pipelines) if p.source == source]
        return sorted(mine, key=lambda i: isinstance(self.pipelines[i].pipeline, ChainedPipeline))

    def index_of(self, pipeline: str) -> int:
        for index, loaded in enumerate(self.pipelines):
            if loaded.name == pipeline:
                return index
        raise ModelStoreError(f"no pipeline {pipeline!r}")

    def preprocessor(self, source: str) -> SwitchablePreprocess:
        """The preprocessing the source's capture thread runs: its first pipeline's."""
        first = self.pipelines[self.users(source)[0]]
        wrapper = SwitchablePreprocess(first.pipeline.preprocess)
        self._preprocessors[source] = wrapper
        return wrapper

    @contextlib.contextmanager
    def serving(self, source: str) -> Iterator[None]:
        """Held by the source's inference thread while it runs; outside it, switches
        are made at once by whoever requests them."""
        with self._lock:
            self._serving[source] = self._serving.get(source, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._serving.get(source, 1) - 1
                if left > 0:
                    self._serving[source] = left
                else:
                    self._serving.pop(source, None)
                    for item in self._pending.pop(source, []):
                        self._apply(item.index, item.new, item.watch, item.ticket)

    # -- the model service's side ---------------------------------------------------------

    def request(
        self, pipeline: str, new: LoadedPipeline, watch: HealthWatch | None = None
    ) -> SwapTicket:
        """Ask for ``new`` to serve ``pipeline`` from the next frame on."""
        index = self.index_of(pipeline)
        ticket = SwapTicket(pipeline)
        with self._lock:
            if new.source not in self._serving:
                self._apply(index, new, watch, ticket)
            else:
                self._pending.setdefault(new.source, []).append(_Pending(index, new, watch, ticket))
        return ticket

    def replace_abandoned(self, index: int, new: LoadedPipeline) -> None:
        """Put ``new`` in place at once for a pipeline whose thread was abandoned (hung).

        No live thread serves the source at that moment (the hung one is stuck, its
        successor not started), so the switch is made here. The new pipeline takes over
        the event tracker; the old one gets a detached tracker, so that if its stuck
        call ever returns, what it does lands nowhere shared.
        """
        with self._lock:
            old = self.pipelines[index]
            hand_over_events(new, old, detach=True)
            self.pipelines[index] = new
            self._watched.pop(index, None)
            wrapper = self._preprocessors.get(new.source)
            if wrapper is not None and self.users(new.source)[0] == index:
                wrapper.function = new.pipeline.preprocess
        log.info("pipeline %s: replaced by a fresh %s", new.name, new.model)

    def roll_back_model(self, model: str) -> list[SwapTicket]:
        """Switch every pipeline still watching a version of ``model`` back to the
        previous pipeline (after another pipeline of the same model failed its watch)."""
        tickets = []
        for index, watched in list(self._watched.items()):
            current = self.pipelines[index]
            if current.model.name == model:
                self._watched.pop(index, None)
                tickets.append(self.request(current.name, watched.previous))
        return tickets

    def watching(self, model: str) -> bool:
        return any(self.pipelines[i].model.name == model for i in list(self._watched))

    def inferences(self, index: int) -> int:
        """Frames inferred for the pipeline at ``index`` since start, across swaps."""
        return self._counts[index]

    # -- the inference thread's side --------------------------------------------------------

    def apply_pending(self, source: str) -> None:
        """Make the switches requested for ``source``; called between frames."""
        if not self._pending:
            return
        with self._lock:
            for item in self._pending.pop(source, []):
                self._apply(item.index, item.new, item.watch, item.ticket)

    def process(
        self, index: int, frame: Frame, first: bool
    ) -> tuple[LoadedPipeline, list[Transition]]:
        """Run the pipeline at ``index`` on ``frame``; returns which pipeline answered and
        its transitions. ``first``: the capture thread prepared ``frame.tensor`` for this
        pipeline (the source's first)."""
        loaded = self.pipelines[index]
        own = frame
        if not first:
            own = dataclasses.replace(frame, tensor=None)
        elif self._retensor and self._retensor.get(frame.source, 0) > 0:
            self._retensor[frame.source] -= 1
            own = dataclasses.replace(frame, tensor=None)
        self._counts[index] += 1
        watched = self._watched.get(index)
        if watched is None:
            return loaded, self._run(loaded, own)
        return self._process_watched(index, loaded, watched, own)

    def _run(self, loaded: LoadedPipeline, frame: Frame) -> list[Transition]:
        pipeline = loaded.pipeline
        if isinstance(pipeline, ChainedPipeline):
            upstream = self.pipelines[self.index_of(pipeline.input)].pipeline
            found = upstream.last_objects if isinstance(upstream, DetectionPipeline) else None
            return pipeline.process_objects(frame, found)
        return pipeline.process(frame)

    def _process_watched(
        self, index: int, loaded: LoadedPipeline, watched: _Watched, frame: Frame
    ) -> tuple[LoadedPipeline, list[Transition]]:
        try:
            transitions = self._run(loaded, frame)
        except Exception as exc:
            log.exception("pipeline %s: %s failed on frame %d", loaded.name, loaded.model,
                          frame.index)  # fmt: skip
            verdict = watched.watch.error(exc)
            if verdict is not None:
                self._undo(index, loaded, watched, verdict)
            fallback = watched.previous
            return fallback, self._run(fallback, dataclasses.replace(frame, tensor=None))
        result = loaded.pipeline.last_result
        if result is None:
            return loaded, transitions
        verdict = watched.watch.observe(frame, result.scores, result.inference_ms)
        if verdict is not None:
            if verdict.healthy:
                self._watched.pop(index, None)
                self._report(loaded, verdict, loaded)
            else:
                self._undo(index, loaded, watched, verdict)
        return loaded, transitions

    def _undo(
        self, index: int, failed: LoadedPipeline, watched: _Watched, verdict: Verdict
    ) -> None:
        log.warning(
            "pipeline %s: %s is unhealthy (%s); switching back to %s", failed.name,
            failed.model.version, verdict.reason, watched.previous.model.version,
        )  # fmt: skip
        with self._lock:
            self._apply(index, watched.previous, None, SwapTicket(failed.name))
        self._report(failed, verdict, watched.previous)

    def _report(self, judged: LoadedPipeline, verdict: Verdict, serving: LoadedPipeline) -> None:
        report = HealthReport(
            pipeline=judged.name,
            model=judged.model.name,
            version=judged.model.version,
            verdict=verdict,
            serving=serving,
        )
        try:
            self.on_health(report)
        except Exception:  # the inference thread must survive a reporting bug
            log.exception("health report for %s failed", judged.name)

    def _apply(
        self, index: int, new: LoadedPipeline, watch: HealthWatch | None, ticket: SwapTicket
    ) -> None:
        """The switch itself (caller holds the lock, on the thread that owns ``index``)."""
        old = self.pipelines[index]
        if old is not new:
            hand_over_events(new, old, detach=False)
            if new.pipeline.config != old.pipeline.config:
                # Thresholds changed by command while the new model was loading.
                try:
                    reconfigure(new.pipeline, old.pipeline.config)
                except ConfigError as exc:
                    log.warning("pipeline %s: kept the new model's settings: %s", new.name, exc)
            self.pipelines[index] = new
            wrapper = self._preprocessors.get(new.source)
            if wrapper is not None and self.users(new.source)[0] == index:
                wrapper.function = new.pipeline.preprocess
                if not same_input(old, new):
                    self._retensor[new.source] = RETENSOR_FRAMES
            log.info("pipeline %s: switched from %s to %s", new.name, old.model.version,
                     new.model.version)  # fmt: skip
        if watch is not None and old is not new:
            self._watched[index] = _Watched(previous=old, watch=watch)
        else:
            self._watched.pop(index, None)
        ticket.applied_at = time.perf_counter()
        ticket.done.set()
