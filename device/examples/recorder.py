"""Keeping hard examples without making inference wait.

The inference thread calls :meth:`ExampleRecorder.observe` after each pipeline's
``process``. That costs a few comparisons (the detector) and, for the rare frame worth
keeping, one ``put_nowait`` of a reference to the frame: the JPEG encoding and the
disk write (an fsync on an SD card can take tens of milliseconds) happen on the
recorder's own writer thread. Its queue is small and bounded; when it is full the new
example is dropped and counted, never waited for.

The recorder also remembers, per pipeline, the last result together with the frame it
came from, so the `keep` command stores a frame and the prediction for that same frame.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Protocol

from device.commands import UInt8Image
from device.config import ExamplesSection
from device.detection.snapshot import encode_snapshot
from device.errors import EdgewatchError
from device.examples.detector import DetectorStats, HardExampleDetector, Verdict
from device.examples.meta import ExampleDraft, ExampleMeta, ExampleReason
from device.examples.store import ExampleStore
from device.mqtt.payloads import ModelRef
from device.pipelines.classification import PipelineResult

log = logging.getLogger(__name__)


class ObservedPipeline(Protocol):
    """What the recorder reads from a pipeline (ClassificationPipeline has it)."""

    @property
    def name(self) -> str: ...

    @property
    def thresholds(self) -> dict[str, float]: ...

    @property
    def reportable(self) -> tuple[str, ...]: ...

    @property
    def last_result(self) -> PipelineResult | None: ...


@dataclass(frozen=True)
class Seen:
    """A pipeline's last result, the frame it came from and the model that judged it."""

    result: PipelineResult
    image: UInt8Image
    model: ModelRef
    threshold: float | None


@dataclass(frozen=True)
class RecorderStats:
    #: Examples written to the store by the detector's choice.
    kept: int
    #: Chosen but dropped because the writer's queue was full.
    dropped: int
    #: Chosen but not written (encoding failed, disk full or read-only).
    failed: int
    detector: DetectorStats


@dataclass(frozen=True)
class _Job:
    seen: Seen
    verdict: Verdict


class ExampleRecorder:
    def __init__(self, store: ExampleStore, config: ExamplesSection) -> None:
        self.store = store
        self.config = config
        self.detector = HardExampleDetector(
            config.low_confidence_margin, config.dispute_window_s, config.min_interval_s
        )
        self._queue: queue.Queue[_Job | None] = queue.Queue(config.queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: dict[str, Seen] = {}
        self._kept = 0
        self._dropped = 0
        self._failed = 0

    def start(self) -> None:
        """Start the writer thread (separate from construction so tests can fill the
        queue deterministically)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="examples", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``) and stop the writer."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("example writer still busy at shutdown; queued examples dropped")
            return
        self._thread.join(timeout_s)
        self._thread = None

    # -- inference thread -------------------------------------------------------------

    def observe(self, pipeline: ObservedPipeline, model: ModelRef, image: UInt8Image) -> None:
        """Judge the pipeline's last result (for ``image``) and queue it if it is hard."""
        result = pipeline.last_result
        if result is None:
            return
        seen = Seen(result, image, model, pipeline.thresholds.get(result.top_label))
        self._latest[pipeline.name] = seen
        verdict = self.detector.judge(result, pipeline.thresholds, pipeline.reportable)
        if verdict is None:
            return
        try:
            self._queue.put_nowait(_Job(seen, verdict))
        except queue.Full:
            with self._lock:
                self._dropped += 1
                dropped = self._dropped
            if dropped == 1 or dropped % 100 == 0:
                log.warning(
                    "example writer behind: %s example of %s dropped (%d so far)",
                    verdict.reason,
                    result.pipeline,
                    dropped,
                )

    def latest(self, pipeline: str) -> Seen | None:
        return self._latest.get(pipeline)

    # -- writer thread and commands ---------------------------------------------------

    def _write(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                meta = self.write(job.seen, job.verdict.reason, job.verdict.note)
            except EdgewatchError as exc:
                with self._lock:
                    self._failed += 1
                log.warning("example of %s not kept: %s", job.seen.result.pipeline, exc)
                continue
            with self._lock:
                self._kept += 1
            log.debug("kept %s example %s (%s)", meta.reason, meta.id, meta.label)

    def write(self, seen: Seen, reason: ExampleReason, note: str | None) -> ExampleMeta:
        """Encode and store one frame now, on the caller's thread (the writer thread,
        or the command thread for `keep`). Raises EdgewatchError when it cannot."""
        config = self.config
        snapshot = encode_snapshot(
            seen.image, config.max_width, config.jpeg_quality, config.max_item_kb * 1024
        )
        result = seen.result
        draft = ExampleDraft.model_validate(
            {
                "kind": "image",
                "source": result.source,
                "pipeline": result.pipeline,
                "model": seen.model,
                "label": result.top_label,
                "score": round(result.top_score, 4),
                "threshold": seen.threshold,
                "reason": reason,
                "captured_at": result.captured_at,
                "width": snapshot.width,
                "height": snapshot.height,
                "note": note,
            }
        )
        meta, _evicted = self.store.add(draft, snapshot.jpeg)
        return meta

    def stats(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(self._kept, self._dropped, self._failed, self.detector.stats())
