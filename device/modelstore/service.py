"""The daemon's model service: pushes in over MQTT, verdicts and status out, hot swaps.

Push messages arrive on paho's network thread, which only queues them; one worker thread
does everything else in order: reassembling chunks (device/modelstore/transfer.py),
answering on ``.../models/push/progress``, and for a complete bundle the install:

1. verify: read the bundle (zip members, sizes, model sha256, signature whenever
   ``runtime.public_key`` is set), find the pipelines whose model has the bundle's name,
   check it fits each of them (device/modelstore/compat.py);
2. smoke test: load a new runtime and pipeline per target, which checks the tensors and
   runs the manifest's golden pair, while the old model keeps serving;
3. store: write the version and make it active (device/modelstore/store.py; the one
   durable commit point, so a crash before it boots the old model, after it the new);
4. switch: hand the new pipelines to their inference threads, which switch between two
   frames (device/modelstore/switch.py), then watch their health
   (device/modelstore/health.py) and roll back automatically when it fails.

The retained ``.../models/status`` is published at start and on every change. The
worker also polls the store's generation, so `edgewatch models activate|rollback` on the
device applies live within ``models.store_poll_s``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from device.bundle.reader import (
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    Bundle,
    read_bundle,
)
from device.config import DeviceConfig
from device.errors import BundleIncompatibleError, EdgewatchError
from device.modelstore.boot import max_model_bytes, public_key_of
from device.modelstore.compat import check_compatible
from device.modelstore.faults import fault_point
from device.modelstore.health import HealthLimits, HealthWatch, ReferenceCheck, output_fingerprint
from device.modelstore.store import ModelState, ModelStore, VersionRecord
from device.modelstore.switch import HealthReport, PipelineSwitcher, SwapTicket
from device.modelstore.transfer import (
    MISSING_LIMIT,
    PushFormatError,
    Reassembler,
    Transfer,
    parse_push,
)
from device.mqtt.payloads import (
    ActiveModel,
    LastPush,
    ModelOrigin,
    ModelsStatus,
    ModelStatusEntry,
    PushProgress,
    PushState,
)
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics
from device.pipelines.chained_frames import ChainedPipeline
from device.pipelines.loaded import LoadedPipeline, build_pipeline
from device.sources.camera import Frame

log = logging.getLogger(__name__)

#: Push messages waiting for the worker; beyond this a chunk is dropped (and resent by
#: the pusher, which sends what progress says is missing).
MESSAGE_QUEUE = 64
TICK_S = 0.25
#: Final answers remembered per transfer id, so a repeated chunk gets the verdict again.
FINISHED_KEPT = 32
JUNK_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class InstallReport:
    """What one install did, with the time each step took (the swap benchmark's figures)."""

    ok: bool
    reason: str
    model: str = ""
    version: str = ""
    pipelines: tuple[str, ...] = ()
    #: read_bundle (sizes, sha256, signature) and the compatibility checks.
    verify_ms: float = 0.0
    #: New runtime and pipeline per target, golden pair included.
    smoke_ms: float = 0.0
    #: Bundle file and state.json written durably.
    store_ms: float = 0.0
    #: From handing the new pipelines over to the last inference thread switching.
    switch_ms: float = 0.0
    #: False when the bundle was already active (nothing was swapped).
    swapped: bool = False


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class _Health:
    report: HealthReport


_Job = _Message | _Health
HealthState = Literal["", "watching", "healthy"]


class _TickJob:
    """Marker for a worker pass without a job (the queue timed out)."""


_TICK = _TickJob()


class ModelService:
    """Runs on its own thread once started; ``install_bundle`` is also callable directly
    (benchmarks) when nothing else installs at the same time."""

    def __init__(
        self,
        config: DeviceConfig,
        topics: Topics,
        publisher: MqttPublisher,
        *,
        store: ModelStore,
        switcher: PipelineSwitcher,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.section = config.models
        self.topics = topics
        self.publisher = publisher
        self.store = store
        self.switcher = switcher
        self._on_change = on_change
        self._key = public_key_of(config.runtime)
        self._max_model_bytes = max_model_bytes(config.runtime)
        bundle_cap = self._max_model_bytes + MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 65536
        self.reassembler = Reassembler(
            config.device.state_dir / "incoming",
            bundle_cap,
            self.section.max_transfers,
            self.section.transfer_expire_s,
        )
        self.limits = HealthLimits.from_config(self.section)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._finished: collections.OrderedDict[str, PushProgress] = collections.OrderedDict()
        self._progress_sent: dict[str, float] = {}
        self._progress_due: dict[str, Transfer] = {}
        self._health: dict[str, HealthState] = {}
        self._seen_generation: dict[str, int] = {}
        self._serving_key: dict[str, str | None] = {}
        self._previous_key: dict[str, str | None] = {}
        self._last_push: LastPush | None = None
        self._next_poll = 0.0
        self._next_expiry = 0.0
        self._junk_count = 0
        self._junk_logged = -JUNK_LOG_EVERY_S
        self._claimed = False
        #: The most recent installs, newest last.
        self.reports: collections.deque[InstallReport] = collections.deque(maxlen=32)
        switcher.on_health = self._queue_health

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def push_topics(self) -> list[str]:
        groups = [self.topics.group_models_push(g) for g in self.config.device.groups]
        return [self.topics.models_push, *groups]

    def start(self) -> None:
        self._claimed = self.store.claim_daemon()
        if not self._claimed:
            log.warning(
                "another edgewatch daemon (pid %s) serves the model store in %s; "
                "two daemons on one state_dir will fight over it",
                self.store.daemon_pid(), self.store.root,
            )  # fmt: skip
        self.reassembler.open()
        for model in self.model_names():
            state = self.store.read(model)
            self._serving_key[model] = state.active if state else None
            self._seen_generation[model] = state.generation if state else 0
            if state is not None:
                self.store.mark_applied(model, state.generation)
        self._thread = threading.Thread(target=self._work, name="models", daemon=True)
        self._thread.start()
        if self.section.accept_push:
            for topic in self.push_topics:
                self.publisher.subscribe(topic, self._on_push)
            log.info("accepting model pushes on %s", ", ".join(self.push_topics))
        self.publish_status()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout_s)
            self._thread = None
        if self._claimed:
            self.store.release_daemon()
            self._claimed = False

    # -- queueing (network and inference threads) -----------------------------------------

    def _on_push(self, topic: str, payload: bytes) -> None:
        if self._jobs.qsize() >= MESSAGE_QUEUE:
            self._junk("the push queue is full; a chunk was dropped (the pusher resends it)")
            return
        self._jobs.put(_Message(topic, payload))

    def _queue_health(self, report: HealthReport) -> None:
        self._jobs.put(_Health(report))

    # -- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job: _Job | _TickJob | None
            try:
                job = self._jobs.get(timeout=TICK_S)
            except queue.Empty:
                job = _TICK
            if job is None:
                return
            try:
                if isinstance(job, _Message):
                    self._handle_message(job.payload)
                elif isinstance(job, _Health):
                    self._handle_health(job.report)
                self._tick()
            except Exception:  # a bug here must not end model handling for good
                log.exception("model service: handling a job failed")

    def _tick(self) -> None:
        now = time.time()
        for tid, transfer in list(self._progress_due.items()):
            if now - self._progress_sent.get(tid, 0.0) >= self.section.progress_interval_s:
                self._progress_due.pop(tid, None)
                if tid in self.reassembler.transfers:
                    self._send_progress(self._progress_of(transfer, "receiving"))
        if now >= self._next_expiry:
            self._next_expiry = now + 5.0
            for transfer in self.reassembler.expire(now):
                self._send_progress(
                    self._progress_of(
                        transfer,
                        "expired",
                        f"no chunk for {self.section.transfer_expire_s:g} s; push again",
                    )
                )
        if time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.section.store_poll_s
            self._poll_store()

    # -- pushes -----------------------------------------------------------------------------

    def _handle_message(self, payload: bytes) -> None:
        try:
            message = parse_push(payload)
        except PushFormatError as exc:
            self._junk(f"ignored a message on a push topic: {exc.reason}")
            if exc.transfer_id:
                self._send_progress(
                    PushProgress(
                        device=self.topics.device,
                        transfer_id=exc.transfer_id,
                        state="refused",
                        reason=exc.reason,
                        at=time.time(),
                    )
                )
            return
        header = message.header
        tid = header.transfer_id
        final = self._finished.get(tid)
        if final is not None:
            self._send_progress(final.model_copy(update={"at": time.time()}))
            return
        outcome = self.reassembler.accept(header, message.data, time.time())
        transfer = outcome.transfer
        if outcome.refused:
            if transfer is None:
                self._finish(tid, header.sha256, False, outcome.refused, remember=False)
            else:
                self._send_progress(self._progress_of(transfer, "receiving", outcome.refused))
            return
        assert transfer is not None
        if transfer.complete:
            self._progress_due.pop(tid, None)
            self._send_progress(self._progress_of(transfer, "verifying"))
            try:
                data = self.reassembler.take(transfer)
            except (ValueError, OSError) as exc:
                self._finish(tid, transfer.sha256, False, str(exc), remember=False)
                return
            report = self.install_bundle(data, origin="push")
            self._finish(tid, transfer.sha256, report.ok, report.reason, report=report)
            return
        interval = self.section.progress_interval_s
        due = time.time() - self._progress_sent.get(tid, 0.0) >= interval
        if outcome.duplicate or outcome.new or due:
            self._progress_due.pop(tid, None)
            self._send_progress(self._progress_of(transfer, "receiving"))
        else:
            self._progress_due[tid] = transfer  # sent by _tick once the interval has passed

    def _progress_of(self, transfer: Transfer, state: PushState, reason: str = "") -> PushProgress:
        return PushProgress(
            device=self.topics.device,
            transfer_id=transfer.transfer_id,
            sha256=transfer.sha256,
            received=transfer.received,
            count=transfer.count,
            missing=transfer.missing(MISSING_LIMIT),
            state=state,
            reason=reason,
            at=time.time(),
        )

    def _send_progress(self, progress: PushProgress) -> None:
        self._progress_sent[progress.transfer_id] = time.time()
        self.publisher.publish_raw(self.topics.models_push_progress, progress.to_bytes(), qos=1)

    def _finish(
        self,
        tid: str,
        sha256: str,
        ok: bool,
        reason: str,
        *,
        report: InstallReport | None = None,
        remember: bool = True,
    ) -> None:
        """The verdict of a push: progress, last_push on the status topic."""
        state: PushState = "installed" if ok else "refused"
        progress = PushProgress(
            device=self.topics.device,
            transfer_id=tid,
            sha256=sha256,
            state=state,
            reason=reason,
            at=time.time(),
        )
        if remember:
            self._finished[tid] = progress
            while len(self._finished) > FINISHED_KEPT:
                self._finished.popitem(last=False)
        self._progress_sent.pop(tid, None)
        self._send_progress(progress)
        self._last_push = LastPush(
            transfer_id=tid,
            sha256=sha256,
            ok=ok,
            reason=reason,
            model=report.model if report else "",
            version=report.version if report else "",
            at=time.time(),
        )
        if ok:
            log.info("push %s installed: %s", tid, reason)
        else:
            log.warning("push %s refused: %s", tid, reason)
        self.publish_status()

    def _junk(self, message: str) -> None:
        self._junk_count += 1
        now = time.monotonic()
        if now - self._junk_logged >= JUNK_LOG_EVERY_S:
            more = self._junk_count - 1
            log.warning("%s%s", message, f" ({more} more since the last report)" if more else "")
            self._junk_logged = now
            self._junk_count = 0

    # -- installing -------------------------------------------------------------------------

    def install_bundle(self, data: bytes, origin: ModelOrigin = "push") -> InstallReport:
        """Verify, smoke-test, store and switch to a bundle; never raises for a bad one."""
        start = time.perf_counter()
        name = version = ""
        try:
            if origin == "push":
                fault_point("before-verify")
            bundle = read_bundle(data, public_key=self._key, max_model_bytes=self._max_model_bytes)
            name, version = bundle.manifest.name, bundle.manifest.version
            targets = self._targets(bundle)
            verified = time.perf_counter()
            bundle_sha = hashlib.sha256(data).hexdigest()
            state = self.store.read(name)
            current = state.active_record if state else None
            if (
                current is not None
                and current.bundle_sha256 == bundle_sha
                and self._serving_key.get(name) == current.key
            ):
                report = InstallReport(
                    True,
                    f"{name}@{version} is already active",
                    name,
                    version,
                    tuple(t.name for t in targets),
                    verify_ms=(verified - start) * 1000.0,
                )
                self.reports.append(report)
                return report
            built = [
                build_pipeline(t.name, t.pipeline.config, bundle, self.config.runtime)
                for t in targets
            ]
            tested = time.perf_counter()
            state = self.store.install(name, data, bundle.manifest, origin, faults=origin == "push")
            stored = time.perf_counter()
        except (EdgewatchError, OSError, RuntimeError, ValueError) as exc:
            # OSError: the store cannot be written (disk full); RuntimeError/ValueError:
            # the interpreter failed on the golden input. Refused, never a crash.
            reason = str(exc) if isinstance(exc, EdgewatchError) else f"{type(exc).__name__}: {exc}"
            if name:
                self._note_refused(name, version, reason)
            report = InstallReport(False, reason, name, version,
                                   verify_ms=(time.perf_counter() - start) * 1000.0)  # fmt: skip
            self.reports.append(report)
            return report
        switch_ms = self._switch_to(name, state, targets, built)
        report = InstallReport(
            ok=True,
            reason=f"{name}@{version} installed and serving {', '.join(t.name for t in targets)}",
            model=name,
            version=version,
            pipelines=tuple(t.name for t in targets),
            verify_ms=(verified - start) * 1000.0,
            smoke_ms=(tested - verified) * 1000.0,
            store_ms=(stored - tested) * 1000.0,
            switch_ms=switch_ms,
            swapped=True,
        )
        log.info(
            "%s@%s: verify %.1f ms, smoke test %.1f ms, store %.1f ms, switch %.1f ms",
            name, version, report.verify_ms, report.smoke_ms, report.store_ms, switch_ms,
        )  # fmt: skip
        self.reports.append(report)
        return report

    def _targets(self, bundle: Bundle) -> list[LoadedPipeline]:
        manifest = bundle.manifest
        targets = [p for p in self.switcher.pipelines if p.model.name == manifest.name]
        if not targets:
            raise BundleIncompatibleError(
                f"no pipeline on this device runs a model named {manifest.name!r}; it runs "
                f"{', '.join(self.model_names())}"
            )
        for target in targets:
            if isinstance(target.pipeline, ChainedPipeline):
                # Its health cannot be judged per frame (it answers per crop), and a
                # swap unwatched is not one this service makes.
                raise BundleIncompatibleError(
                    f"pipeline {target.name} is chained (it classifies another pipeline's "
                    "objects); its model is not swapped live: copy the bundle to the "
                    "device and restart"
                )
            check_compatible(manifest, target.name, target.pipeline.config)
        return targets

    def _switch_to(
        self,
        model: str,
        state: ModelState,
        targets: Sequence[LoadedPipeline],
        built: Sequence[LoadedPipeline],
    ) -> float:
        """Hand the new pipelines over (watched) and wait for the switches."""
        started = time.perf_counter()
        self._previous_key[model] = self._serving_key.get(model)
        self._serving_key[model] = state.active
        self._seen_generation[model] = state.generation
        self._health[model] = "watching"
        tickets = []
        for old, new in zip(targets, built, strict=True):
            watch = HealthWatch(
                self.limits,
                baseline_ms=old.pipeline.latency.summary().p50_ms,
                reference=_reference(old),
            )
            tickets.append(self.switcher.request(old.name, new, watch))
        self._wait(tickets)
        self.store.mark_applied(model, state.generation)
        self._on_change()
        self.publish_status()
        return (time.perf_counter() - started) * 1000.0

    def _wait(self, tickets: Sequence[SwapTicket]) -> None:
        deadline = time.monotonic() + self.section.swap_timeout_s
        for ticket in tickets:
            if not ticket.done.wait(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "pipeline %s has not switched within %.0f s (its source delivers no "
                    "frames?); it switches at its next frame", ticket.pipeline,
                    self.section.swap_timeout_s,
                )  # fmt: skip

    def _note_refused(self, name: str, version: str, reason: str) -> None:
        if name not in self.model_names():
            return
        try:
            state = self.store.note_refused(name, version, "", reason)
        except EdgewatchError as exc:
            log.warning("could not record the refusal in the model store: %s", exc)
            return
        if state is not None:
            self._seen_generation[name] = state.generation

    # -- health verdicts --------------------------------------------------------------------

    def _handle_health(self, report: HealthReport) -> None:
        model = report.model
        if report.verdict.healthy:
            log.info("pipeline %s: %s@%s %s", report.pipeline, model, report.version,
                     report.verdict.reason)  # fmt: skip
            if not self.switcher.watching(model) and self._health.get(model) == "watching":
                self._health[model] = "healthy"
                self.publish_status()
            return
        self._wait(self.switcher.roll_back_model(model))
        previous = self._previous_key.get(model)
        if previous is None or self._serving_key.get(model) == previous:
            return  # already rolled back (another pipeline of this model reported first)
        try:
            state = self.store.rollback_to(model, previous, report.verdict.reason)
        except EdgewatchError as exc:
            log.error("could not record the rollback of %s in the store: %s", model, exc)
            return
        self._serving_key[model] = previous
        self._seen_generation[model] = state.generation
        self.store.mark_applied(model, state.generation)
        self._health[model] = ""
        log.warning("%s rolled back to %s: %s", model, previous, report.verdict.reason)
        self._on_change()
        self.publish_status()

    # -- `edgewatch models activate|rollback` while running ---------------------------------

    def _poll_store(self) -> None:
        for model in self.model_names():
            try:
                state = self.store.read(model)
            except EdgewatchError as exc:
                log.warning("model store: %s", exc)
                continue
            if state is None or state.generation == self._seen_generation.get(model):
                continue
            self._seen_generation[model] = state.generation
            if state.active == self._serving_key.get(model) or state.active_record is None:
                self.store.mark_applied(model, state.generation)
                self.publish_status()
                continue
            self._apply_stored(model, state, state.active_record)

    def _apply_stored(self, model: str, state: ModelState, record: VersionRecord) -> None:
        """Serve the version the store now names (changed by the CLI)."""
        log.info("model store: %s %s is now active (%s); applying it", model, record.key,
                 state.origin)  # fmt: skip
        try:
            data = self.store.path_of(model, record).read_bytes()
            bundle = read_bundle(data, public_key=self._key, max_model_bytes=self._max_model_bytes)
            targets = self._targets(bundle)
            built = [
                build_pipeline(t.name, t.pipeline.config, bundle, self.config.runtime)
                for t in targets
            ]
        except (EdgewatchError, OSError, RuntimeError, ValueError) as exc:
            serving = self._serving_key.get(model)
            log.warning("cannot apply %s %s: %s; keeping %s", model, record.key, exc, serving)
            if serving is not None:
                restored = self.store.rollback_to(model, serving, f"could not apply: {exc}")
                self._seen_generation[model] = restored.generation
                self.store.mark_applied(model, max(state.generation, restored.generation))
            self.publish_status()
            return
        self._switch_to(model, state, targets, built)

    # -- status -----------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return sorted({p.model.name for p in self.switcher.pipelines})

    def status(self) -> ModelsStatus:
        entries = []
        for model in self.model_names():
            try:
                state = self.store.read(model)
            except EdgewatchError:
                state = None
            record = state.active_record if state else None
            active = None
            if state is not None and record is not None:
                active = ActiveModel(
                    version=record.version,
                    sha256=record.model_sha256,
                    bundle_sha256=record.bundle_sha256,
                    origin=state.origin,
                    since=state.since,
                    health=self._health.get(model, ""),
                )
            entries.append(
                ModelStatusEntry(
                    name=model,
                    pipelines=tuple(
                        p.name for p in self.switcher.pipelines if p.model.name == model
                    ),
                    active=active,
                    history=state.history if state else (),
                )
            )
        return ModelsStatus(
            device=self.topics.device,
            at=time.time(),
            models=tuple(entries),
            last_push=self._last_push,
        )

    def publish_status(self) -> None:
        self.publisher.publish_retained(
            self.topics.models_status, self.status().to_bytes()
        )


def _reference(old: LoadedPipeline) -> ReferenceCheck:
    """How many distinct outputs the previous model gives for some frames (collapse check)."""
    pipeline = old.pipeline
    if isinstance(pipeline, ChainedPipeline):
        raise TypeError(f"pipeline {old.name} is chained: no per-frame outputs to compare")

    def distinct(frames: Sequence[Frame]) -> int:
        outputs = {
            output_fingerprint(pipeline.infer(dataclasses.replace(f, tensor=None)).scores)
            for f in frames
        }
        return len(outputs)

    return distinct
