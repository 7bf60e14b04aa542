"""The restart policy of device/supervision.py, driven by a fake clock."""

from __future__ import annotations

import pytest

from device.supervision import InferenceClock, Supervisor


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_failure_schedules_a_restart_after_the_backoff() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1.0, 8.0, clock=clock, healthy_after_s=60.0)
    delay = supervisor.failed("source:cam", "capture thread died")
    assert 0.75 <= delay <= 1.0
    health = supervisor.health("source:cam")
    assert health.status == "degraded"
    assert "capture thread died" in health.detail
    assert not supervisor.due("source:cam")
    clock.now += delay
    assert supervisor.due("source:cam")


def test_repeated_failures_back_off_exponentially_up_to_the_cap() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1.0, 8.0, clock=clock, healthy_after_s=60.0)
    delays = []
    for _ in range(6):
        delays.append(supervisor.failed("pipeline:p", "raised"))
        clock.now += delays[-1]
        supervisor.restarted("pipeline:p")
        clock.now += 1.0  # fails again soon after each restart
    assert delays[1] > delays[0] and delays[2] > delays[1]
    assert max(delays) <= 8.0
    assert supervisor.health("pipeline:p").restarts == 6


def test_a_second_report_of_the_same_fault_keeps_the_schedule() -> None:
    clock = FakeClock()
    supervisor = Supervisor(2.0, 60.0, clock=clock)
    first = supervisor.failed("pipeline:p", "hung")
    clock.now += 0.5
    second = supervisor.failed("pipeline:p", "hung")
    assert second == pytest.approx(first - 0.5)


def test_a_long_clean_run_resets_the_backoff() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1.0, 30.0, clock=clock, healthy_after_s=60.0)
    for _ in range(4):
        clock.now += supervisor.failed("source:cam", "x")
        supervisor.restarted("source:cam")
    clock.now += 61.0
    assert supervisor.failed("source:cam", "x") <= 1.0


def test_recovery_clears_degraded_only_after_the_restart() -> None:
    clock = FakeClock()
    supervisor = Supervisor(1.0, 8.0, clock=clock)
    clock.now += supervisor.failed("pipeline:p", "raised")
    supervisor.recovered("pipeline:p")  # too early: the restart has not happened yet
    assert [h.part for h in supervisor.degraded()] == ["pipeline:p"]
    supervisor.restarted("pipeline:p")
    supervisor.recovered("pipeline:p")
    assert supervisor.degraded() == ()
    assert supervisor.health("pipeline:p").restarts == 1


def test_inference_clock_measures_the_running_call() -> None:
    clock = FakeClock()
    watch = InferenceClock(clock)
    assert watch.running_for() == 0.0
    watch.begin()
    clock.now += 12.5
    assert watch.running_for() == pytest.approx(12.5)
    watch.end()
    assert watch.running_for() == 0.0
