"""LatencyWindow: percentiles over a bounded window, safe before any sample."""

from __future__ import annotations

import threading

import pytest

from device.latency import LatencyWindow


def test_empty_window_is_all_zero() -> None:
    s = LatencyWindow().summary()
    assert (s.count, s.total, s.p50_ms, s.p99_ms) == (0, 0, 0.0, 0.0)


def test_percentiles_over_the_last_samples_only() -> None:
    w = LatencyWindow(size=100)
    for _ in range(100):
        w.add(1000.0)  # a slow start, forgotten once the window has moved on
    for ms in range(1, 101):
        w.add(float(ms))
    s = w.summary()
    assert s.count == 100 and s.total == 200
    assert s.p50_ms == pytest.approx(50.5)
    assert 99.0 <= s.p99_ms <= 100.0
    assert s.max_ms == 100.0


def test_concurrent_adds_are_all_counted() -> None:
    w = LatencyWindow(size=10)

    def work() -> None:
        for _ in range(1000):
            w.add(1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.summary().total == 4000


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LatencyWindow(size=0)
