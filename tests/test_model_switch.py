"""The switch on the inference thread's side, with real pipelines from the session bundle."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from device.bundle.reader import read_bundle
from device.config import ClassificationPipeline as PipelineConfig
from device.config import RuntimeSection
from device.modelstore.health import HealthLimits, HealthWatch
from device.modelstore.switch import HealthReport, PipelineSwitcher
from device.pipelines.loaded import LoadedPipeline, build_pipeline
from device.sources.camera import Frame

LIMITS = HealthLimits(
    window_s=60.0, min_inferences=1000, latency_factor=4.0, latency_slack_ms=5.0, max_errors=0
)


def frames(count: int, start: int = 0) -> list[Frame]:
    rng = np.random.default_rng(start)
    return [
        Frame("desk", start + i, float(start + i), rng.integers(0, 256, (48, 48, 3), np.uint8),
              None, float(start + i) * 0.1)
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture
def two(int8_bundle: Path) -> tuple[LoadedPipeline, LoadedPipeline]:
    config = PipelineConfig(source="desk", model=int8_bundle, threshold=0.0)
    bundle = read_bundle(int8_bundle)
    runtime = RuntimeSection(threads=1)
    return (
        build_pipeline("shapes", config, bundle, runtime),
        build_pipeline("shapes", config, bundle, runtime),
    )


def test_switch_waits_for_the_frame_boundary_and_keeps_the_tracker(
    two: tuple[LoadedPipeline, LoadedPipeline],
) -> None:
    old, new = two
    switcher = PipelineSwitcher([old])
    wrapper = switcher.preprocessor("desk")
    with switcher.serving("desk"):
        for frame in frames(5):
            switcher.process(0, frame, first=True)
        ticket = switcher.request("shapes", new)
        assert not ticket.done.is_set() and switcher.pipelines[0] is old  # not mid-frame
        switcher.apply_pending("desk")
        assert ticket.done.is_set() and switcher.pipelines[0] is new
        for frame in frames(5, start=5):
            answered, _ = switcher.process(0, frame, first=True)
            assert answered is new
    assert new.pipeline.tracker is old.pipeline.tracker
    assert wrapper.function == new.pipeline.preprocess
    assert switcher.inferences(0) == 10


def test_an_error_during_the_watch_rolls_back_and_the_frame_is_still_inferred(
    two: tuple[LoadedPipeline, LoadedPipeline],
) -> None:
    old, new = two
    reports: list[HealthReport] = []
    switcher = PipelineSwitcher([old])
    switcher.on_health = reports.append
    switcher.request("shapes", new, HealthWatch(LIMITS, baseline_ms=1.0))  # no thread: at once
    assert switcher.pipelines[0] is new and switcher.watching(new.model.name)
    switcher.process(0, frames(1)[0], first=True)
    before = old.pipeline.stats().inferences

    def broken(frame: Frame) -> list[object]:
        raise RuntimeError("tensor arena exhausted")

    new.pipeline.process = broken  # type: ignore[method-assign,assignment]
    answered, _ = switcher.process(0, frames(1, start=1)[0], first=True)
    assert answered is old and switcher.pipelines[0] is old
    assert old.pipeline.stats().inferences == before + 1  # the failed frame, by the old model
    assert not switcher.watching(new.model.name)
    [report] = reports
    assert not report.verdict.healthy and "tensor arena exhausted" in report.verdict.reason
    assert report.serving is old


def test_a_source_that_stopped_switches_at_once(
    two: tuple[LoadedPipeline, LoadedPipeline],
) -> None:
    old, new = two
    switcher = PipelineSwitcher([old])
    entered = threading.Event()
    leave = threading.Event()

    def inference_thread() -> None:
        with switcher.serving("desk"):
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=inference_thread)
    thread.start()
    assert entered.wait(5)
    ticket = switcher.request("shapes", new)
    assert not ticket.done.wait(0.2)
    leave.set()  # the source ends: pending switches are made as it leaves
    thread.join(5)
    assert ticket.done.is_set() and switcher.pipelines[0] is new
