"""The Prometheus endpoint: the stats topic's figures, parsed back with
prometheus_client's own text-format parser, from a collector and from a live daemon."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device.config import load_config
from device.daemon import Daemon
from device.errors import ConfigError
from device.mqtt.payloads import CropCounts, PipelineStats, SourceStats, Stats
from device.prometheus import PrometheusEndpoint
from tests.conftest import Broker, free_port
from tests.test_daemon import write_config
from training.synthetic.shapes import Appearance, write_shapes_video

STATS = Stats(
    device="pi-porch",
    at=1.0,
    uptime_s=42.0,
    sources=(
        SourceStats(name="porch", fps=4.8, frames=200, dropped=3, skipped=190, reconnects=1,
                    queue_depth=1, enabled=True),
        SourceStats(name="garage", fps=0.0, frames=10, dropped=0, skipped=0, reconnects=0,
                    queue_depth=0, enabled=False),
    ),
    pipelines=(
        PipelineStats(name="people", inferences=197, inference_ms_p50=12.5,
                      inference_ms_p99=30.0, events=4),
        PipelineStats(name="who", inferences=60, inference_ms_p50=1.5, inference_ms_p99=3.0,
                      events=2, crops=CropCounts(classified=70, reported=66, skipped_small=4,
                                                 skipped_limit=1, other_labels=9)),
    ),
    cpu_percent=55.5,
    memory_rss_mb=100.0,
    publish_queue=2,
    spool_depth=17,
    spool_dropped=5,
    spool_oldest_age_s=12.5,
    examples_stored=9,
    examples_dropped=2,
    temperature_c=51.2,
)  # fmt: skip


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_endpoint_serves_the_stats_figures() -> None:
    port = free_port()
    endpoint = PrometheusEndpoint(lambda: STATS, port)
    endpoint.start()
    try:
        samples = scrape(port)
    finally:
        endpoint.stop()
    device = ("device", "pi-porch")

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted([device, *labels.items()])))]

    assert value("edgewatch_uptime_seconds") == 42.0
    assert value("edgewatch_cpu_percent") == 55.5
    assert value("edgewatch_memory_rss_bytes") == 100.0 * 1024 * 1024
    assert value("edgewatch_publish_queue") == 2
    assert value("edgewatch_temperature_celsius") == 51.2
    assert value("edgewatch_spool_depth") == 17
    assert value("edgewatch_spool_dropped_total") == 5
    assert value("edgewatch_spool_oldest_age_seconds") == 12.5
    assert value("edgewatch_examples_stored") == 9
    assert value("edgewatch_examples_dropped_total") == 2
    assert value("edgewatch_source_fps", source="porch") == 4.8
    assert value("edgewatch_source_frames_total", source="porch") == 200
    assert value("edgewatch_source_dropped_frames_total", source="porch") == 3
    assert value("edgewatch_source_skipped_frames_total", source="porch") == 190
    assert value("edgewatch_source_reconnects_total", source="porch") == 1
    assert value("edgewatch_source_queue_depth", source="porch") == 1
    assert value("edgewatch_source_enabled", source="porch") == 1
    assert value("edgewatch_source_enabled", source="garage") == 0
    assert value("edgewatch_pipeline_inferences_total", pipeline="people") == 197
    assert value("edgewatch_pipeline_events_total", pipeline="people") == 4
    assert value(
        "edgewatch_pipeline_inference_seconds", pipeline="people", quantile="0.5"
    ) == pytest.approx(0.0125)
    assert value(
        "edgewatch_pipeline_inference_seconds", pipeline="people", quantile="0.99"
    ) == pytest.approx(0.030)
    # A chained pipeline's crops, by outcome; none for a pipeline that crops nothing.
    outcomes = {"classified": 70, "reported": 66, "skipped_small": 4, "skipped_limit": 1,
                "other_labels": 9}  # fmt: skip
    for outcome, count in outcomes.items():
        assert value("edgewatch_pipeline_crops_total", pipeline="who", outcome=outcome) == count
    assert not any(
        name == "edgewatch_pipeline_crops_total" and ("pipeline", "people") in labels
        for name, labels in samples
    )
    # Only our figures: no client-library process metrics under other names.
    assert all(name.startswith("edgewatch_") for name, _ in samples)
    # The port is free again once stopped.
    endpoint = PrometheusEndpoint(
        lambda: STATS.model_copy(
            update={"temperature_c": None, "spool_oldest_age_s": None, "examples_stored": None}
        ),
        port,
    )
    endpoint.start()
    try:
        names = {name for name, _ in scrape(port)}
        assert "edgewatch_temperature_celsius" not in names
        assert "edgewatch_spool_oldest_age_seconds" not in names  # an empty spool has no age
        assert "edgewatch_spool_depth" in names
        assert "edgewatch_examples_stored" not in names  # [examples] off
    finally:
        endpoint.stop()


def test_daemon_endpoint_matches_its_stats(mosquitto: Broker, tmp_path: Path) -> None:
    video = tmp_path / "scene.mp4"
    script = (Appearance("circle", 0.5, 2.0),)
    write_shapes_video(video, seed=7, size=(96, 96), fps=10, script=script, duration_s=3.0)
    config_path = write_config(tmp_path, mosquitto.port, video, loop=True, fps=10)
    port = free_port()
    with config_path.open("a") as handle:
        handle.write(f"\n[prometheus]\nport = {port}\n")
    daemon = Daemon(load_config(config_path), realtime=True)
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 15
        frames = 0.0
        while time.monotonic() < deadline and frames < 10:
            time.sleep(0.3)
            try:
                samples = scrape(port)
            except OSError:
                continue
            frames = samples.get(
                ("edgewatch_source_frames_total", (("device", "cam1"), ("source", "desk"))), 0.0
            )
        assert frames >= 10
        stats = daemon.stats()
        key = (("device", "cam1"), ("pipeline", "shapes"))
        assert (
            samples[("edgewatch_pipeline_inferences_total", key)] <= stats.pipelines[0].inferences
        )
        assert samples[("edgewatch_pipeline_inferences_total", key)] > 0
        # The daemon spools events by default ([outbox] enabled): its figures are there.
        assert ("edgewatch_spool_depth", (("device", "cam1"),)) in samples
        assert samples[("edgewatch_spool_dropped_total", (("device", "cam1"),))] == 0
    finally:
        daemon.stop()
        runner.join(10)
    with pytest.raises(OSError):
        scrape(port)  # the endpoint stops with the daemon


def test_a_port_in_use_is_a_config_error() -> None:
    port = free_port()
    first = PrometheusEndpoint(lambda: STATS, port)
    first.start()
    try:
        with pytest.raises(
            ConfigError, match=f"prometheus.port: cannot listen on 127.0.0.1:{port}"
        ):
            PrometheusEndpoint(lambda: STATS, port).start()
    finally:
        first.stop()
