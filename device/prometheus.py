"""An optional Prometheus scrape endpoint with the figures of the stats topic.

Each scrape asks the daemon for a fresh ``Stats`` (the same model the stats topic
publishes), so the two never disagree about what a figure means. ``prometheus_client``
is an optional dependency (in the ``device`` extra): it is imported only when
``[prometheus] port`` is set, and its absence is then a one-line error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from device.errors import ConfigError, MissingExtraError
from device.mqtt.payloads import Stats

log = logging.getLogger(__name__)

StatsProvider = Callable[[], Stats]


class StatsCollector:
    """A prometheus_client collector that turns one ``Stats`` into metric families."""

    def __init__(self, provider: StatsProvider) -> None:
        self._provider = provider

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._provider()
        device = stats.device

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=("device", *labels))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=("device", *labels))

        uptime = gauge("edgewatch_uptime_seconds", "Seconds since the daemon started.")
        uptime.add_metric([device], stats.uptime_s)
        cpu = gauge("edgewatch_cpu_percent", "CPU use of the daemon, percent of one core.")
        cpu.add_metric([device], stats.cpu_percent)
        memory = gauge("edgewatch_memory_rss_bytes", "Resident memory of the daemon.")
        memory.add_metric([device], stats.memory_rss_mb * 1024 * 1024)
        queue = gauge("edgewatch_publish_queue", "QoS 1 messages not yet acknowledged.")
        queue.add_metric([device], stats.publish_queue)
        spool = gauge("edgewatch_spool_depth", "Events in the outbox not yet acknowledged.")
        spool.add_metric([device], stats.spool_depth)
        spool_dropped = counter(
            "edgewatch_spool_dropped", "Events the outbox discarded (bounds, age, disk)."
        )
        spool_dropped.add_metric([device], stats.spool_dropped)
        families: list[Any] = [uptime, cpu, memory, queue, spool, spool_dropped]
        if stats.spool_oldest_age_s is not None:
            spool_age = gauge(
                "edgewatch_spool_oldest_age_seconds", "Age of the oldest spooled event."
            )
            spool_age.add_metric([device], stats.spool_oldest_age_s)
            families.append(spool_age)
        if stats.examples_stored is not None and stats.examples_dropped is not None:
            stored = gauge("edgewatch_examples_stored", "Hard examples waiting for collect.")
            stored.add_metric([device], stats.examples_stored)
            lost = counter("edgewatch_examples_dropped", "Hard examples chosen but not kept.")
            lost.add_metric([device], stats.examples_dropped)
            families += [stored, lost]
        if stats.temperature_c is not None:
            temperature = gauge("edgewatch_temperature_celsius", "SoC temperature.")
            temperature.add_metric([device], stats.temperature_c)
            families.append(temperature)

        per_source = ("source",)
        fps = gauge("edgewatch_source_fps", "Frames delivered per second.", per_source)
        frames = counter("edgewatch_source_frames", "Frames delivered.", per_source)
        dropped = counter(
            "edgewatch_source_dropped_frames", "Frames dropped: inference fell behind.", per_source
        )
        skipped = counter(
            "edgewatch_source_skipped_frames", "Frames skipped by the fps cap.", per_source
        )
        reconnects = counter("edgewatch_source_reconnects", "Source reconnects.", per_source)
        depth = gauge("edgewatch_source_queue_depth", "Frames waiting for inference.", per_source)
        enabled = gauge("edgewatch_source_enabled", "1 unless disabled by command.", per_source)
        for source in stats.sources:
            labels = [device, source.name]
            fps.add_metric(labels, source.fps)
            frames.add_metric(labels, source.frames)
            dropped.add_metric(labels, source.dropped)
            skipped.add_metric(labels, source.skipped)
            reconnects.add_metric(labels, source.reconnects)
            depth.add_metric(labels, source.queue_depth)
            enabled.add_metric(labels, 1.0 if source.enabled else 0.0)
        families += [fps, frames, dropped, skipped, reconnects, depth, enabled]

        per_pipeline = ("pipeline",)
        inferences = counter("edgewatch_pipeline_inferences", "Frames inferred.", per_pipeline)
        latency = gauge(
            "edgewatch_pipeline_inference_seconds",
            "Inference time percentiles over the recent window.",
            (*per_pipeline, "quantile"),
        )
        events = counter("edgewatch_pipeline_events", "Events published.", per_pipeline)
        gated = counter(
            "edgewatch_pipeline_gated",
            "Frames or audio windows not inferred: no motion, or silence.",
            per_pipeline,
        )
        crops = counter(
            "edgewatch_pipeline_crops",
            "A chained pipeline's objects, by what became of them.",
            (*per_pipeline, "outcome"),
        )
        for pipeline in stats.pipelines:
            labels = [device, pipeline.name]
            inferences.add_metric(labels, pipeline.inferences)
            gated.add_metric(labels, pipeline.gated)
            latency.add_metric([*labels, "0.5"], pipeline.inference_ms_p50 / 1000.0)
            latency.add_metric([*labels, "0.99"], pipeline.inference_ms_p99 / 1000.0)
            events.add_metric(labels, pipeline.events)
            if pipeline.crops is not None:
                for outcome, count in pipeline.crops.model_dump().items():
                    crops.add_metric([*labels, outcome], count)
        families += [inferences, latency, events, gated]
        if crops.samples:  # only where a chained pipeline runs
            families.append(crops)
        yield from families


class PrometheusEndpoint:
    """Serves ``/metrics`` on ``bind:port`` in a background thread until ``stop``."""

    def __init__(self, provider: StatsProvider, port: int, bind: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ModuleNotFoundError as exc:
            raise MissingExtraError("prometheus_client", "device") from exc
        self.port = port
        self.bind = bind
        # A registry of our own: the default one would add the client library's
        # process metrics, which duplicate ours under other names.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatsCollector(provider))  # type: ignore[arg-type]
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.bind, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"prometheus.port: cannot listen on {self.bind}:{self.port} ({exc}); "
                "choose a free port or remove [prometheus] port"
            ) from exc
        log.info("Prometheus metrics on http://%s:%d/metrics", self.bind, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
