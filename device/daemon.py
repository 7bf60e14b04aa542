"""The device daemon: sources → pipelines → events on MQTT.

Threads, and why:
- one capture thread per camera (inside CameraStream): decoding and the model's resize
  release the GIL, so they run while the previous frame is being inferred;
- one inference thread per source, running that source's pipelines in order: the
  interpreter also releases the GIL, and one thread per interpreter keeps it
  thread-safe;
- paho-mqtt's network thread;
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
from dataclasses import dataclass
from types import FrameType

from device import __version__
from device.bundle.reader import read_bundle
from device.bundle.signing import load_public_key
from device.config import DeviceConfig
from device.mqtt.payloads import (
    Event,
    ModelRef,
    PipelineState,
    PipelineStats,
    SourceState,
    SourceStats,
    State,
    Stats,
)
from device.mqtt.publisher import MqttPublisher
from device.mqtt.topics import Topics
from device.pipelines.classification import ClassificationPipeline
from device.pipelines.lifecycle import Transition
from device.procstats import ProcessMonitor
from device.runtime import load_for_manifest
from device.sdnotify import SdNotifier
from device.seqstore import SeqStore
from device.sources.camera import CameraStream

log = logging.getLogger(__name__)

GET_TIMEOUT_S = 0.2
STATE_POLL_S = 1.0


@dataclass(frozen=True)
class LoadedPipeline:
    name: str
    source: str
    pipeline: ClassificationPipeline
    model: ModelRef
    state: PipelineState


class Daemon:
    """Owns every part's lifetime; `run` blocks until `stop` or the end of all sources."""

    def __init__(
        self,
        config: DeviceConfig,
        publisher: MqttPublisher | None = None,
        realtime: bool = True,
    ) -> None:
        self.config = config
        self.topics = Topics(config.mqtt.prefix, config.device.id)
        self._stop = threading.Event()
        self._started_at = time.time()
        self._realtime = realtime
        self.pipelines = self._load_pipelines()
        config.device.state_dir.mkdir(parents=True, exist_ok=True)
        self.seq = SeqStore(config.device.state_dir / "seq.json")
        self.streams = self._make_streams()
        self.publisher = publisher or MqttPublisher(config.mqtt, self.topics)
        self._workers: list[threading.Thread] = []
        self._event_counts = {p.name: 0 for p in self.pipelines}
        self._monitor = ProcessMonitor()
        self._last_state: State | None = None
        # systemd Type=notify (no-op outside systemd): readiness, watchdog, status.
        self._notify = SdNotifier()
        self._next_watchdog = 0.0
        self._last_status = ""

    # -- start-up ---------------------------------------------------------------------

    def _load_pipelines(self) -> list[LoadedPipeline]:
        runtime_cfg = self.config.runtime
        key = load_public_key(runtime_cfg.public_key) if runtime_cfg.public_key else None
        max_bytes = int(runtime_cfg.max_model_mb * 1024 * 1024)
        loaded = []
        for name, cfg in self.config.pipelines.items():
            bundle = read_bundle(cfg.model, public_key=key, max_model_bytes=max_bytes)
            bundle.require_task(cfg.task)
            runtime = load_for_manifest(
                bundle.manifest, bundle.model_bytes, runtime_cfg.threads, runtime_cfg.edgetpu
            )
            manifest = bundle.manifest
            model = ModelRef(
                name=manifest.name, version=manifest.version, sha256=manifest.model.sha256
            )
            loaded.append(
                LoadedPipeline(
                    name=name,
                    source=cfg.source,
                    pipeline=ClassificationPipeline(name, cfg, bundle, runtime),
                    model=model,
                    state=PipelineState(
                        name=name,
                        source=cfg.source,
                        task=manifest.task,
                        model=model,
                        runtime=runtime.backend.name,
                        edgetpu=runtime.on_edgetpu,
                        threads=runtime_cfg.threads,
                    ),
                )
            )
        return loaded

    def _make_streams(self) -> dict[str, CameraStream]:
        streams = {}
        for name, source in self.config.sources.items():
            users = [p for p in self.pipelines if p.source == name]
            if not users:
                log.warning("source %s is configured but no pipeline uses it; not opened", name)
                continue
            # The first pipeline's resize runs in the capture thread; others (rare) resize
            # in the inference thread from the original frame.
            streams[name] = CameraStream(
                name, source, preprocess=users[0].pipeline.preprocess, realtime=self._realtime
            )
        return streams

    # -- running ----------------------------------------------------------------------

    def run(self) -> int:
        self.publisher.start()
        for stream in self.streams.values():
            stream.start()
        for name, stream in self.streams.items():
            users = [p for p in self.pipelines if p.source == name]
            worker = threading.Thread(
                target=self._infer_loop, args=(stream, users), name=f"infer-{name}", daemon=True
            )
            worker.start()
            self._workers.append(worker)
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
                self._notify_alive()
                if not any(worker.is_alive() for worker in self._workers):
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

    def _infer_loop(self, stream: CameraStream, users: Sequence[LoadedPipeline]) -> None:
        try:
            while not self._stop.is_set():
                frame = stream.get(timeout=GET_TIMEOUT_S)
                if frame is None:
                    if stream.finished:
                        break
                    continue
                for loaded in users:
                    transitions = loaded.pipeline.process(frame)
                    self._publish_transitions(loaded, transitions, frame.captured_at)
        except Exception:
            log.exception("inference for source %s failed; the source is stopped", stream.name)
        finally:
            now = time.time()
            for loaded in users:
                self._publish_transitions(loaded, loaded.pipeline.flush(), now)

    def _publish_transitions(
        self, loaded: LoadedPipeline, transitions: Sequence[Transition], captured_at: float
    ) -> None:
        """Publish a frame's transitions; ``captured_at`` is that frame's grab time (or
        now, for events ended at shutdown), so latency is measured from the sensor."""
        for transition in transitions:
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
                pipeline=loaded.name,
            )
            self.publisher.publish_event(event)
            self._event_counts[loaded.name] += 1

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
                )
            )
        return State(
            device=self.config.device.id,
            software_version=__version__,
            started_at=self._started_at,
            updated_at=time.time(),
            groups=self.config.device.groups,
            sources=tuple(sources),
            pipelines=tuple(p.state for p in self.pipelines),
        )

    def _publish_state(self) -> None:
        self._last_state = self.state()
        self.publisher.publish_state(self._last_state)

    def _publish_state_if_changed(self) -> None:
        current = self.state()
        if self._last_state is None or current.sources != self._last_state.sources:
            self._last_state = current
            self.publisher.publish_state(current)

    def stats(self) -> Stats:
        process = self._monitor.sample()
        sources = []
        for name, stream in self.streams.items():
            snapshot = stream.stats()
            sources.append(
                SourceStats(
                    name=name,
                    fps=round(snapshot.fps, 2),
                    frames=snapshot.frames,
                    dropped=snapshot.dropped,
                    reconnects=snapshot.reconnects,
                    queue_depth=snapshot.queue_depth,
                )
            )
        pipelines = []
        for loaded in self.pipelines:
            latency = loaded.pipeline.latency.summary()
            pipelines.append(
                PipelineStats(
                    name=loaded.name,
                    inferences=latency.total,
                    inference_ms_p50=round(latency.p50_ms, 3),
                    inference_ms_p99=round(latency.p99_ms, 3),
                    events=self._event_counts[loaded.name],
                )
            )
        return Stats(
            device=self.config.device.id,
            at=time.time(),
            uptime_s=round(time.time() - self._started_at, 1),
            sources=tuple(sources),
            pipelines=tuple(pipelines),
            cpu_percent=process.cpu_percent,
            memory_rss_mb=process.rss_mb,
            publish_queue=self.publisher.stats.pending,
        )

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
            f"{len(self.streams)} source(s), {len(self.pipelines)} pipeline(s); broker "
            f"{self.config.mqtt.host}:{self.config.mqtt.port} "
            f"{'connected' if self.publisher.connected else 'not connected (retrying)'}"
        )

    def _shutdown(self) -> None:
        self._notify.stopping()
        self._stop.set()
        for stream in self.streams.values():
            stream.stop()
        for worker in self._workers:
            worker.join(timeout=5.0)
        try:
            self.publisher.publish_stats(self.stats())
        finally:
            self.publisher.stop()
            self.seq.close()
        log.info("stopped")


def run_daemon(config: DeviceConfig, install_signals: bool = True) -> int:
    """Entry point of `edgewatch run`: SIGTERM and SIGINT stop the daemon cleanly."""
    SdNotifier().status("loading models")
    daemon = Daemon(config)
    if install_signals:
        _install_stop_signals(daemon.stop)
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


def _install_stop_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
