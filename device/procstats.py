"""CPU and memory of this process, read from the kernel without extra packages.

psutil would do this too, but it is a compiled dependency the device does not otherwise
need, and two numbers from /proc and getrusage are enough.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessSample:
    cpu_percent: float
    rss_mb: float


class ProcessMonitor:
    """CPU use since the previous sample, as a percentage of one core."""

    def __init__(self) -> None:
        self._last_cpu = self._cpu_seconds()
        self._last_wall = time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def sample(self) -> ProcessSample:
        cpu, wall = self._cpu_seconds(), time.monotonic()
        elapsed = max(wall - self._last_wall, 1e-6)
        percent = 100.0 * (cpu - self._last_cpu) / elapsed
        self._last_cpu, self._last_wall = cpu, wall
        return ProcessSample(cpu_percent=round(percent, 1), rss_mb=round(_rss_mb(), 1))


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        # Not Linux: fall back to the peak (ru_maxrss is KiB on Linux, bytes on macOS).
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
