"""The device daemon: sources → pipelines → events on MQTT.

Threads, and why:
- one capture thread per camera (inside CameraStream): decoding and the model's resize
  release the GIL, so they run while the previous frame is being inferred;
- one inference thread per source, running that source's pipelines in order: the
  interpreter also releases the GIL, and one thread per interpreter keeps it
  thread-safe;
- paho-mqtt's network thread;
- the model service's thread (device/modelstore): pushes, installs and store changes; a
  new model is loaded there and taken by the inference thread between two frames;
- the main thread, which publishes state and stats and waits for a signal.

Models are loaded and smoke-tested before anything starts, so a bad bundle stops the
daemon with a clear message rather than after it has announced itself online. The
broker, on the other hand, may be down at boot: the publisher keeps retrying and the
daemon runs meanwhile.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Protocol

from pydantic import JsonValue

from device import __version__
from device.audio.config import KeywordPipelineConfig
from device.bundle.reader import read_bundle
from device.commands import CommandError, CommandHandler, ReloadReport, UInt8Image, unknown
from device.config import CameraSource, DeviceConfig, load_config
from device.errors import ConfigError, EdgewatchError
from device.examples.service import ExampleService, open_examples
from device.homeassistant import Entity, HomeAssistantDiscovery, PipelineInfo, build_entities
from device.inference_worker import InferenceWorker, pipeline_part, source_part
from device.modelstore.boot import boot_pipelines, max_model_bytes, public_key_of
from device.modelstore.service import ModelService
from device.modelstore.store import ModelStore
from device.modelstore.switch import PipelineSwitcher, SwapTicket
from device.mqtt.payloads import (
    Box,
    CropCounts,
    DegradedPart,
    Event,
    PipelineStats,
    SnapshotRef,
    SourceState,
    SourceStats,
    State,
    Stats,
)
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics
from device.outbox import OUTBOX_FILE, Outbox
from device.pipelines.chained_frames import ChainedPipeline
from device.pipelines.classification import ClassificationPipeline
from device.pipelines.detection import DetectionPipeline
from device.pipelines.keyword_runner import KeywordRunner, build_keyword_runner
from device.pipelines.lifecycle import Transition
from device.pipelines.loaded import LoadedPipeline, build_pipeline, reconfigure
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.log_runner import build_log_runner
from device.pipelines.sensor_runner import build_sensor_runner
from device.procstats import ProcessMonitor
from device.prometheus import PrometheusEndpoint
from device.record_sources import RecordSources
from device.record_worker import EventDraft, RecordPipeline
from device.sdnotify import SdNotifier
from device.sensors.config import SensorAnomalyPipelineConfig
from device.seqstore import SeqStore
from device.sources.camera import CameraStream, Frame, serial_opencv
from device.supervision import Supervisor
from device.thermal import read_temperature_c

log = logging.getLogger(__name__)

STATE_POLL_S = 1.0

__all__ = ["Daemon", "LoadedPipeline", "run_daemon"]


class Thresholded(Protocol):
    """A pipeline whose labels have thresholds (image and keyword classifiers)."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def thresholds(self) -> dict[str, float]: ...

    def set_threshold(self, label: str, value: float) -> None: ...


class Daemon:
    """Owns every part's lifetime; `run` blocks until `stop` or the end of all sources."""

    def __init__(
        self,
        config: DeviceConfig,
        publisher: MqttPublisher | None = None,
        realtime: bool = True,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        #: Where `reload` re-reads the config from; None: reload is refused.
        self.config_path = config_path
        self.topics = Topics(config.mqtt.prefix, config.device.id)
        self._stop = threading.Event()
        self._stop_reason = ""
        self._started_at = time.time()
        self._realtime = realtime
        config.device.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = ModelStore(
            config.device.state_dir / "models",
            keep_versions=config.models.keep_versions,
            history_limit=config.models.history,
        ).open()
        self.pipelines = self._load_pipelines()
        # Swaps models between two frames; shares (and updates) the list above.
        self.switcher = PipelineSwitcher(self.pipelines)
        self.seq = SeqStore(config.device.state_dir / "seq.json")
        self.streams = self._make_streams()
        # Log sources and their pipelines: scored in batches, every record counts.
        self.records = RecordSources(config, self, self._build_record_pipeline)
        #: The durable event spool ([outbox]); the publisher owns and closes it.
        self.outbox: Outbox | None = None
        if publisher is None and config.outbox.enabled:
            self.outbox = Outbox(config.device.state_dir / OUTBOX_FILE, config.outbox)
        self.publisher = publisher or MqttPublisher(config.mqtt, self.topics, outbox=self.outbox)
        # Hard examples for retraining (None when [examples] enabled = false).
        self.examples = open_examples(config, self.publisher, self.topics)
        self.models = ModelService(
            config,
            self.topics,
            self.publisher,
            store=self.store,
            switcher=self.switcher,
            on_change=self._models_changed,
        )
        #: Restart schedule and health of sources and pipelines ([supervision]).
        self.supervisor = Supervisor(
            config.supervision.restart_min_s, config.supervision.restart_max_s
        )
        self.workers: dict[str, InferenceWorker] = {
            name: InferenceWorker(name, tuple(self.switcher.users(name)), self)
            for name in self.streams
        }
        self._event_counts: dict[str, int] = {p.name: 0 for p in self.pipelines}
        self._event_counts.update({p.name: 0 for p in self.records.pipelines})
        self._monitor = ProcessMonitor()
        self._last_state: State | None = None
        # systemd Type=notify (no-op outside systemd): readiness, watchdog, status.
        self._notify = SdNotifier()
        self._next_watchdog = 0.0
        self._last_status = ""
        # Runtime switches set by commands (not persisted: a restart re-reads the config).
        self._lock = threading.Lock()
        self._disabled: set[str] = set()
        self._latest_images: dict[str, UInt8Image] = {}
        self.commands = CommandHandler(self, self.publisher, self.topics)
        self.discovery: HomeAssistantDiscovery | None = None
        if config.homeassistant.enabled:
            self.discovery = HomeAssistantDiscovery(
                self.publisher, config.homeassistant.discovery_prefix, config.device.id
            )
        self.prometheus: PrometheusEndpoint | None = None
        if config.prometheus.port is not None:
            # Its own CPU sampler, so a scrape does not shorten the stats topic's window.
            scrape_monitor = ProcessMonitor()
            self.prometheus = PrometheusEndpoint(
                lambda: self.stats(scrape_monitor),
                config.prometheus.port,
                config.prometheus.bind,
            )

    # -- start-up ---------------------------------------------------------------------

    def _load_pipelines(self) -> list[LoadedPipeline]:
        """Each pipeline's model: the store's active version, else the config's file
        (device/modelstore/boot.py)."""
        return boot_pipelines(self.config, self.store)

    def _make_streams(self) -> dict[str, CameraStream]:
        streams = {}
        for name, source in self.config.sources.items():
            if not isinstance(source, CameraSource):
                continue
            users = [p for p in self.pipelines if p.source == name]
            if not users:
                log.warning("source %s is configured but no pipeline uses it; not opened", name)
                continue
            # The first pipeline's resize runs in the capture thread; others (rare) resize
            # in the inference thread from the original frame.
            streams[name] = CameraStream(
                name, source, preprocess=self.switcher.preprocessor(name), realtime=self._realtime
            )
        return streams

    # -- running ----------------------------------------------------------------------

    def run(self) -> int:
        serial_opencv()
        if self.prometheus is not None:
            self.prometheus.start()  # first: a port in use stops us before going online
        self.publisher.start()
        self.commands.start()
        self.models.start()
        if self.examples is not None:
            self.examples.start()
        if self.discovery is not None:
            self.discovery.start(self.entities())
        for stream in self.streams.values():
            stream.start()
        for worker in self.workers.values():
            worker.start()
        self.records.start()
        self._publish_state()
        # Ready once models are loaded and sources and publisher started; not when the
        # broker answers: a broker that is down at boot must not fail the unit's start.
        self._last_status = self._status_line()
        self._notify.ready(self._last_status)
        watchdog_s = self._notify.watchdog_interval_s
        poll_s = min(STATE_POLL_S, watchdog_s) if watchdog_s else STATE_POLL_S
        next_stats = time.monotonic() + self.config.stats.interval_s
        try:
            while not self._stop.wait(poll_s):
                if self._stop_reason:
                    log.info("%s; stopping", self._stop_reason)
                    break
                self._notify_alive()
                self._supervise()
                if self._all_sources_ended():
                    log.info("every source has ended; stopping")
                    break
                self._publish_state_if_changed()
                if time.monotonic() >= next_stats:
                    self.publisher.publish_stats(self.stats())
                    next_stats = time.monotonic() + self.config.stats.interval_s
        finally:
            self._shutdown()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def _all_sources_ended(self) -> bool:
        """Files without ``loop`` end; cameras, streams and log sources do not."""
        cameras = self.workers.values()
        return bool(cameras or self.records.workers) and (
            all(worker.ended and not worker.alive for worker in cameras)
            and self.records.all_ended()
        )

    def request_stop(self, reason: str) -> None:
        """Stop from a signal handler: only assigns an attribute and takes no lock.

        Setting the stop Event from a handler can deadlock: the handler runs on the main
        thread, which may at that instant hold the Event's own lock inside ``wait``.
        The main loop notices the request within one poll (at most a second).
        """
        self._stop_reason = reason

    # -- what the inference workers ask (device/inference_worker.py: WorkerHost) -------

    def stopping(self) -> bool:
        return self._stop.is_set()

    def current_stream(self, source: str) -> CameraStream:
        return self.streams[source]

    def frame_arrived(self, source: str, frame: Frame) -> bool:
        with self._lock:
            self._latest_images[source] = frame.image
            return source not in self._disabled

    def inferred(self, loaded: LoadedPipeline, frame: Frame) -> None:
        # Hard examples are judged on classifier scores; detections are not kept (yet).
        if self.examples is not None and isinstance(loaded.pipeline, ClassificationPipeline):
            self.examples.observe(loaded.pipeline, loaded.model, frame.image)

    # -- supervision ------------------------------------------------------------------

    def _supervise(self) -> None:
        """Restart what failed, each part on its own backoff (main loop, every poll)."""
        if self._stop.is_set():
            return
        for name in list(self.streams):
            self._supervise_source(name)
        for worker in self.workers.values():
            self._supervise_worker(worker)
        self.records.supervise(self.config.supervision.inference_deadline_s)

    def _supervise_source(self, name: str) -> None:
        stream = self.streams[name]
        if stream.status != "failed":
            return
        part = source_part(name)
        self.supervisor.failed(part, stream.stats().detail or "the source failed")
        if not self.supervisor.due(part):
            return
        camera = self.config.sources[name]
        assert isinstance(camera, CameraSource)  # streams are only made for cameras
        fresh = CameraStream(
            name,
            camera,
            preprocess=self.switcher.preprocessor(name),
            realtime=self._realtime,
        )
        stream.stop()
        fresh.start()
        self.streams[name] = fresh
        self.supervisor.restarted(part)

    def _supervise_worker(self, worker: InferenceWorker) -> None:
        deadline = self.config.supervision.inference_deadline_s
        hung = worker.running
        if hung is not None and worker.clock.running_for() > deadline:
            part = pipeline_part(self.pipelines[hung].name)
            self.supervisor.failed(part, f"an inference has not returned for {deadline:g} s")
            if self.supervisor.due(part) and self._rebuild(hung, part, abandoned=True):
                worker.start()  # a new thread; the stuck one is abandoned
            return
        if not worker.alive and not worker.ended:
            part = source_part(worker.source)  # the loop itself raised
            if self.supervisor.due(part):
                worker.start()
                self.supervisor.restarted(part)
            return
        for index, ticket in list(worker.down.items()):
            part = pipeline_part(self.pipelines[index].name)
            if ticket is None and self.supervisor.due(part):
                replacement = self._rebuild(index, part, abandoned=False)
                if replacement is not None:
                    worker.down[index] = replacement

    def _rebuild(self, index: int, part: str, *, abandoned: bool) -> SwapTicket | None:
        """A fresh interpreter for the pipeline at ``index`` (same bundle and config),
        switched in at once (``abandoned``) or by its inference thread at the next
        frame; None (and a later retry) if it cannot be built."""
        old = self.pipelines[index]
        try:
            fresh = build_pipeline(
                old.name, old.pipeline.config, old.pipeline.bundle, self.config.runtime
            )
        except (EdgewatchError, OSError, RuntimeError, ValueError) as exc:
            # It loaded at start; whatever changed (memory, a delegate), say it and retry.
            self.supervisor.restarted(part)
            self.supervisor.failed(part, f"rebuilding the pipeline failed: {exc}")
            return None
        self.supervisor.restarted(part)
        if abandoned:
            self.switcher.replace_abandoned(index, fresh)
            ticket = SwapTicket(old.name)
            ticket.done.set()
            return ticket
        return self.switcher.request(old.name, fresh)

    def publish_transitions(
        self, loaded: LoadedPipeline, transitions: Sequence[Transition], captured_at: float
    ) -> None:
        """Publish a frame's transitions; ``captured_at`` is that frame's grab time (or
        now, for events ended at shutdown), so latency is measured from the sensor."""
        for transition in transitions:
            snapshot = self._publish_snapshot(loaded.source, transition, captured_at)
            box = transition.box
            published_at = time.time()
            event = Event(
                device=self.config.device.id,
                source=loaded.source,
                seq=self.seq.next(loaded.source),
                event_id=transition.event_id,
                type=transition.type,
                captured_at=captured_at,
                published_at=published_at,
                latency_ms=round((published_at - captured_at) * 1000.0, 3),
                model=loaded.model,
                task=loaded.state.task,
                label=transition.label,
                score=round(transition.score, 4),
                top_score=round(transition.top_score, 4),
                duration_s=round(transition.duration_s, 3),
                box=None if box is None else Box(
                    xmin=round(box.x_min, 4), ymin=round(box.y_min, 4),
                    xmax=round(box.x_max, 4), ymax=round(box.y_max, 4),
                ),
                zones=transition.zones,
                snapshot=snapshot,
                pipeline=loaded.name,
            )  # fmt: skip
            self.publisher.publish_event(event)
            self._event_counts[loaded.name] += 1

    def _publish_snapshot(
        self, source: str, transition: Transition, captured_at: float
    ) -> SnapshotRef | None:
        """Send a transition's JPEG (before its event, so a subscriber that reacts to the
        event finds the picture there); retained, so a Home Assistant camera entity on
        the topic shows the latest. Best effort: not spooled in the outbox (a JPEG per
        event would fill a Pi's card during a long outage)."""
        shot = transition.snapshot
        if shot is None:
            return None
        topic = self.topics.event_snapshot(source)
        self.publisher.publish_raw(topic, shot.jpeg, qos=1, retain=True)
        return SnapshotRef(
            topic=topic, bytes=len(shot.jpeg), width=shot.width, height=shot.height,
            captured_at=captured_at,
        )  # fmt: skip

    def publish_drafts(self, pipeline: RecordPipeline, drafts: Sequence[EventDraft]) -> None:
        """Publish a record pipeline's events (device/record_worker.py)."""
        for draft in drafts:
            published_at = time.time()
            event = Event(
                device=self.config.device.id,
                source=pipeline.source,
                seq=self.seq.next(pipeline.source),
                event_id=draft.event_id,
                type=draft.type,
                captured_at=draft.captured_at,
                published_at=published_at,
                latency_ms=round((published_at - draft.captured_at) * 1000.0, 3),
                model=pipeline.model,
                task=pipeline.state.task,
                label=draft.label,
                score=round(draft.score, 4),
                top_score=round(draft.top_score, 4),
                duration_s=round(draft.duration_s, 3),
                pipeline=pipeline.name,
                log=draft.log,
                sensor=draft.sensor,
                audio=draft.audio,
            )
            self.publisher.publish_event(event)
            self._event_counts[pipeline.name] = self._event_counts.get(pipeline.name, 0) + 1

    def _build_record_pipeline(self, name: str) -> RecordPipeline:
        """A record pipeline from its config table, its model loaded and smoke-tested."""
        config = self.config.pipelines[name]
        runtime = self.config.runtime
        if isinstance(
            config, SensorAnomalyPipelineConfig | LogAnomalyPipelineConfig | KeywordPipelineConfig
        ):
            bundle = read_bundle(
                config.model,
                public_key=public_key_of(runtime),
                max_model_bytes=max_model_bytes(runtime),
            )
            if isinstance(config, SensorAnomalyPipelineConfig):
                return build_sensor_runner(name, config, bundle, runtime)
            if isinstance(config, KeywordPipelineConfig):
                return build_keyword_runner(name, config, bundle, runtime)
            return build_log_runner(name, config, bundle, runtime)
        raise ConfigError(f"pipelines.{name}: task {config.task!r} does not read record sources")

    # -- state and stats --------------------------------------------------------------

    def state(self) -> State:
        sources = []
        for name, stream in self.streams.items():
            snapshot = stream.stats()
            sources.append(
                SourceState(
                    name=name,
                    kind="camera",
                    status=snapshot.status,
                    detail=snapshot.detail,
                    enabled=self.source_enabled(name),
                )
            )
        return State(
            device=self.config.device.id,
            software_version=__version__,
            started_at=self._started_at,
            updated_at=time.time(),
            groups=self.config.device.groups,
            sources=(*sources, *self.records.source_states(self.source_enabled)),
            pipelines=(*(p.state for p in self.pipelines), *self.records.pipeline_states()),
            degraded=tuple(
                DegradedPart(part=h.part, detail=h.detail, restarts=h.restarts)
                for h in self.supervisor.degraded()
            ),
        )

    def _publish_state(self) -> None:
        self._last_state = self.state()
        self.publisher.publish_state(self._last_state)

    def _publish_state_if_changed(self) -> None:
        current = self.state()
        last = self._last_state
        if last is None or (current.sources, current.degraded) != (last.sources, last.degraded):
            self._last_state = current
            self.publisher.publish_state(current)

    def stats(self, monitor: ProcessMonitor | None = None) -> Stats:
        process = (monitor or self._monitor).sample()
        sources = []
        for name, stream in self.streams.items():
            snapshot = stream.stats()
            sources.append(
                SourceStats(
                    name=name,
                    fps=round(snapshot.fps, 2),
                    frames=snapshot.frames,
                    dropped=snapshot.dropped,
                    skipped=snapshot.skipped,
                    reconnects=snapshot.reconnects,
                    queue_depth=snapshot.queue_depth,
                    enabled=self.source_enabled(name),
                )
            )
        pipelines = []
        for index, loaded in enumerate(self.pipelines):
            latency = loaded.pipeline.latency.summary()
            # The gate moves with the events on a model swap, so its count spans swaps
            # like the switcher's frame count does.
            gated = (
                loaded.pipeline.gate.stats().gated
                if isinstance(loaded.pipeline, DetectionPipeline)
                else 0
            )
            inferences = max(0, self.switcher.inferences(index) - gated)
            crops: CropCounts | None = None
            if isinstance(loaded.pipeline, ChainedPipeline):
                chained = loaded.pipeline.stats()
                inferences = chained.inferences  # frames with crops
                crops = CropCounts(
                    **{key: getattr(chained.crops, key) for key in CropCounts.model_fields}
                )
            pipelines.append(
                PipelineStats(
                    name=loaded.name,
                    inferences=inferences,
                    inference_ms_p50=round(latency.p50_ms, 3),
                    inference_ms_p99=round(latency.p99_ms, 3),
                    events=self._event_counts[loaded.name],
                    gated=gated,
                    crops=crops,
                )
            )
        sources += self.records.source_stats(self.source_enabled)
        pipelines += self.records.pipeline_stats(self._event_counts)
        publishing = self.publisher.stats
        examples = self.examples.stats() if self.examples is not None else None
        return Stats(
            device=self.config.device.id,
            at=time.time(),
            uptime_s=round(time.time() - self._started_at, 1),
            sources=tuple(sources),
            pipelines=tuple(pipelines),
            cpu_percent=process.cpu_percent,
            memory_rss_mb=process.rss_mb,
            publish_queue=publishing.pending,
            spool_depth=publishing.spool_depth,
            spool_dropped=publishing.spool_dropped,
            spool_oldest_age_s=publishing.spool_oldest_age_s,
            temperature_c=read_temperature_c(self.config.stats.temperature_file),
            examples_stored=examples.store.count if examples else None,
            examples_dropped=(
                examples.recorder.dropped + examples.recorder.failed if examples else None
            ),
        )

    # -- what commands act on (device/commands.py: CommandTarget) ---------------------

    def source_enabled(self, source: str) -> bool:
        with self._lock:
            return source not in self._disabled

    def set_source_enabled(self, source: str, enabled: bool) -> None:
        if source not in self.streams and source not in self.records.workers:
            raise unknown("source", source, sorted((*self.streams, *self.records.workers)))
        with self._lock:
            if enabled:
                self._disabled.discard(source)
            else:
                self._disabled.add(source)
        log.info("source %s %s by command", source, "enabled" if enabled else "disabled")
        self._publish_state_if_changed()

    def _thresholded(self) -> dict[str, Thresholded]:
        """Every pipeline whose labels have thresholds a command may set, by name."""
        found: dict[str, Thresholded] = {p.name: p.pipeline for p in self.pipelines}
        found.update({p.name: p for p in self.records.pipelines if isinstance(p, KeywordRunner)})
        return found

    def set_threshold(self, label: str, value: float, pipeline: str | None) -> list[str]:
        every = self._thresholded()
        candidates = {n: p for n, p in every.items() if pipeline is None or n == pipeline}
        if not candidates:
            raise unknown("pipeline", pipeline or "", sorted(every))
        targets = {n: p for n, p in candidates.items() if label in p.labels}
        if not targets:
            labels = sorted({lb for p in candidates.values() for lb in p.labels})
            raise unknown("label", label, labels)
        for target in targets.values():
            target.set_threshold(label, value)
        log.info("threshold of %s set to %.3f by command", label, value)
        return list(targets)

    def latest_image(self, source: str) -> UInt8Image | None:
        if source not in self.streams:
            raise unknown("source", source, sorted(self.streams))
        with self._lock:
            return self._latest_images.get(source)

    def reload_config(self) -> ReloadReport:
        """Re-read the config file and apply thresholds, ignored labels, debounce and
        the stats interval now; report every other change as needing a restart."""
        if self.config_path is None:
            raise CommandError("this daemon was started without a config file to reload")
        new = load_config(self.config_path)
        old = self.config
        restart = [
            section
            for section in (
                "device",
                "mqtt",
                "runtime",
                "homeassistant",
                "prometheus",
                "outbox",
                "examples",
                "models",
                "supervision",
            )
            if getattr(new, section) != getattr(old, section)
        ]
        restart += [f"sources.{n}" for n in sorted(set(new.sources) | set(old.sources))
                    if new.sources.get(n) != old.sources.get(n)]  # fmt: skip
        restart += [f"pipelines.{n}" for n in sorted(set(new.pipelines) ^ set(old.pipelines))]
        applied: list[str] = []
        updates = []
        for loaded in self.pipelines:
            fresh = new.pipelines.get(loaded.name)
            if fresh is None:
                continue
            current = loaded.pipeline.config
            if fresh.task != current.task:
                restart.append(f"pipelines.{loaded.name}")
                continue
            live = set(loaded.pipeline.LIVE_KEYS)
            if fresh.model_dump(exclude=live) != current.model_dump(exclude=live):
                restart.append(f"pipelines.{loaded.name}")
            merged = current.model_copy(update={key: getattr(fresh, key) for key in live})
            changed = [k for k in sorted(live) if getattr(merged, k) != getattr(current, k)]
            updates.append((loaded, merged, changed))
        keyword_updates = []
        for record in self.records.pipelines:
            wanted = new.pipelines.get(record.name)
            if wanted is None or wanted == old.pipelines.get(record.name):
                continue
            if not isinstance(record, KeywordRunner) or not isinstance(
                wanted, KeywordPipelineConfig
            ):
                restart.append(f"pipelines.{record.name}")  # no live settings (yet)
                continue
            now = record.pipeline.config
            live = set(record.pipeline.LIVE_KEYS)
            if wanted.model_dump(exclude=live) != now.model_dump(exclude=live):
                restart.append(f"pipelines.{record.name}")
            merged_kw = now.model_copy(update={key: getattr(wanted, key) for key in live})
            changed = [k for k in sorted(live) if getattr(merged_kw, k) != getattr(now, k)]
            keyword_updates.append((record, merged_kw, changed))
        # Check every pipeline before changing any, so a bad file changes nothing.
        for loaded, merged, _ in updates:
            names = (*merged.thresholds, *merged.ignore_labels)
            missing = [label for label in names if label not in loaded.pipeline.labels]
            if missing:
                raise CommandError(
                    f"{self.config_path}: pipelines.{loaded.name} names label(s) "
                    f"{missing} that model {loaded.model.name} lacks; nothing was changed"
                )
        for record, merged_kw, _ in keyword_updates:
            try:
                record.pipeline.check_config(merged_kw)
            except ConfigError as exc:
                raise CommandError(f"{self.config_path}: {exc}; nothing was changed") from exc
        pipelines = dict(old.pipelines)
        for loaded, merged, changed in updates:
            reconfigure(loaded.pipeline, merged)
            pipelines[loaded.name] = merged
            applied += [f"pipelines.{loaded.name}.{key}" for key in changed]
        for record, merged_kw, changed in keyword_updates:
            record.pipeline.reconfigure(merged_kw)
            pipelines[record.name] = merged_kw
            applied += [f"pipelines.{record.name}.{key}" for key in changed]
        if new.stats != old.stats:
            applied.append("stats")
        self.config = old.model_copy(update={"stats": new.stats, "pipelines": pipelines})
        if self.discovery is not None:
            self.discovery.update(self.entities())
        log.info("config reloaded: applied %s; restart needed for %s", applied, restart)
        return ReloadReport(applied=tuple(applied), restart_required=tuple(restart))

    def report_state(self) -> dict[str, JsonValue]:
        state = self.state()
        self._last_state = state
        self.publisher.publish_state(state)
        thresholds: dict[str, JsonValue] = {
            name: {label: round(v, 4) for label, v in p.thresholds.items()}
            for name, p in self._thresholded().items()
        }
        document: dict[str, JsonValue] = state.model_dump(mode="json", by_alias=True)
        document["thresholds"] = thresholds
        return document

    def keep_example(
        self, source: str, note: str | None, pipeline: str | None
    ) -> dict[str, JsonValue]:
        return self._example_service().keep(source, note, pipeline)

    def collect_examples(
        self, request_id: str, max_items: int, after: str | None
    ) -> dict[str, JsonValue]:
        return self._example_service().collect(request_id, max_items, after)

    def forget_examples(self, ids: Sequence[str]) -> dict[str, JsonValue]:
        return self._example_service().forget(ids)

    def _example_service(self) -> ExampleService:
        if self.examples is None:
            raise CommandError("this device keeps no examples ([examples] enabled = false)")
        return self.examples

    def entities(self) -> list[Entity]:
        """Home Assistant entities for what runs now."""
        infos = [
            PipelineInfo(
                name=p.name,
                source=p.source,
                reportable=p.pipeline.reportable,
                snapshots=isinstance(p.pipeline, DetectionPipeline)
                and p.pipeline.config.snapshot.enabled,
            )
            for p in self.pipelines
        ]
        infos += self.records.entity_infos()
        temperature = read_temperature_c(self.config.stats.temperature_file) is not None
        return build_entities(
            self.config.device.id, self.topics, infos, with_temperature=temperature
        )

    def _models_changed(self) -> None:
        """A model was swapped or rolled back: the retained state and Home Assistant's
        entities (reportable labels) follow."""
        self._publish_state()
        if self.discovery is not None:
            self.discovery.update(self.entities())

    def _notify_alive(self) -> None:
        """Watchdog ping from the main loop (a hung loop gets the unit restarted) and
        the status line `systemctl status` shows, sent when it changes."""
        now = time.monotonic()
        watchdog_s = self._notify.watchdog_interval_s
        if watchdog_s is not None and now >= self._next_watchdog:
            self._notify.watchdog()
            self._next_watchdog = now + watchdog_s
        status = self._status_line()
        if status != self._last_status:
            self._notify.status(status)
            self._last_status = status

    def _status_line(self) -> str:
        return (
            f"{len(self.streams) + len(self.records.workers)} source(s), "
            f"{len(self.pipelines) + len(self.records.pipelines)} pipeline(s); broker "
            f"{self.config.mqtt.host}:{self.config.mqtt.port} "
            f"{'connected' if self.publisher.connected else 'not connected (retrying)'}"
        )

    def _shutdown(self) -> None:
        self._notify.stopping()
        self._stop.set()
        for stream in self.streams.values():
            stream.stop()
        for worker in self.workers.values():
            worker.join(timeout_s=5.0)
        self.records.stop()
        self.commands.stop()
        self.models.stop()
        if self.examples is not None:
            self.examples.close()
        if self.prometheus is not None:
            self.prometheus.stop()
        try:
            self.publisher.publish_stats(self.stats())
        finally:
            self.publisher.stop()  # drains the outbox for a moment, then closes it
            if self.outbox is not None:
                self.outbox.close()
            self.seq.close()
        log.info("stopped")


def run_daemon(
    config: DeviceConfig, install_signals: bool = True, config_path: Path | None = None
) -> int:
    """Entry point of `edgewatch run`: SIGTERM and SIGINT stop the daemon cleanly;
    ``config_path`` is what the `reload` command re-reads."""
    SdNotifier().status("loading models")
    daemon = Daemon(config, config_path=config_path)
    if install_signals:
        _install_stop_signals(daemon.request_stop)
    log.info(
        "edgewatch %s: device %s, %d source(s), %d pipeline(s), broker %s:%d",
        __version__,
        config.device.id,
        len(daemon.streams),
        len(daemon.pipelines),
        config.mqtt.host,
        config.mqtt.port,
    )
    return daemon.run()


def _install_stop_signals(request_stop: Callable[[str], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        # No logging or locking here (see Daemon.request_stop).
        request_stop(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
