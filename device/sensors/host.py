"""This host's own health as a series: CPU temperature, load, CPU use, memory, disk.

Sampled by one thread at a fixed rate on the monotonic clock (a slow read does not
shift later samples; a sample that would be more than one interval late is skipped and
counted). Everything is read from the kernel: ``/proc/loadavg`` through
``os.getloadavg``, ``/proc/stat``, ``/proc/meminfo``, ``statvfs`` and the thermal-zone
file the stats message already uses (``device/thermal.py``); no psutil. A metric the
machine does not have (no thermal zone in a container) is NaN in every reading and
counted in ``missing_values``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from device.sensors.queue import ReadingQueue
from device.sensors.reading import Reading, SensorSourceStats, SourceStatus
from device.thermal import read_temperature_c

log = logging.getLogger(__name__)

Metric = Literal[
    "cpu_temp_c",
    "load1",
    "load5",
    "load15",
    "cpu_percent",
    "mem_used_pct",
    "disk_used_pct",
]
ALL_METRICS: tuple[Metric, ...] = (
    "cpu_temp_c",
    "load1",
    "load5",
    "load15",
    "cpu_percent",
    "mem_used_pct",
    "disk_used_pct",
)
PROC_STAT = Path("/proc/stat")
PROC_MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class HostMetricsOptions:
    interval_s: float = 5.0
    metrics: tuple[Metric, ...] = ALL_METRICS
    #: The filesystem whose usage ``disk_used_pct`` reports.
    disk_path: Path = Path("/")
    temperature_file: Path | None = Path("/sys/class/thermal/thermal_zone0/temp")
    #: The series name (default: the source's name).
    series: str | None = None
    queue_readings: int = 1_000

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {self.interval_s}")
        unknown = [m for m in self.metrics if m not in ALL_METRICS]
        if not self.metrics or unknown or len(set(self.metrics)) != len(self.metrics):
            raise ValueError(
                f"metrics must be distinct names from {', '.join(ALL_METRICS)}; got "
                f"{list(self.metrics)}"
            )
        if self.queue_readings < 1:
            raise ValueError("queue_readings must be at least 1")


class CpuUsage:
    """Busy share of all CPUs between two reads of /proc/stat, in percent."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self.path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with open(self.path, encoding="ascii") as handle:
                fields = handle.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        ticks = [int(v) for v in fields[1:]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return sum(ticks[:8]), idle

    def sample(self) -> float:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] <= last[0]:
            return math.nan
        total, idle = now[0] - last[0], now[1] - last[1]
        return round(100.0 * (total - idle) / total, 2)


def memory_used_percent(path: Path = PROC_MEMINFO) -> float:
    """(MemTotal - MemAvailable) / MemTotal, in percent; NaN when unreadable."""
    fields: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    fields[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None:
        return math.nan
    return round(100.0 * (total - available) / total, 2)


def disk_used_percent(path: Path) -> float:
    """Used share of the filesystem holding ``path`` as ``df`` reports it (space
    reserved for root excluded from the total); NaN when unreadable."""
    try:
        info = os.statvfs(path)
    except OSError:
        return math.nan
    used = (info.f_blocks - info.f_bfree) * info.f_frsize
    usable = used + info.f_bavail * info.f_frsize
    return round(100.0 * used / usable, 2) if usable > 0 else math.nan


def _load(index: int) -> float:
    try:
        return round(os.getloadavg()[index], 3)
    except OSError:
        return math.nan


class HostMetricsSource:
    """Samples this host's metrics at ``interval_s`` in one thread (a ``SensorSource``)."""

    def __init__(self, name: str, options: HostMetricsOptions | None = None) -> None:
        self.name = name
        self.options = options or HostMetricsOptions()
        self.series = self.options.series or name
        self._queue = ReadingQueue(self.options.queue_readings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: SourceStatus = "starting"
        self._lock = threading.Lock()
        self._readings = 0
        self._missing = 0
        self._dropped = 0
        self._late = 0
        self._cpu = CpuUsage()
        readers: dict[Metric, Callable[[], float]] = {
            "cpu_temp_c": self._temperature,
            "load1": lambda: _load(0),
            "load5": lambda: _load(1),
            "load15": lambda: _load(2),
            "cpu_percent": self._cpu.sample,
            "mem_used_pct": memory_used_percent,
            "disk_used_pct": lambda: disk_used_percent(self.options.disk_path),
        }
        self._readers = [readers[metric] for metric in self.options.metrics]

    def _temperature(self) -> float:
        value = read_temperature_c(self.options.temperature_file)
        return math.nan if value is None else value

    def sample(self) -> Reading:
        """Read every metric now (also usable without the thread)."""
        now = time.time()
        values = tuple(float(read()) for read in self._readers)
        return Reading(
            source=self.name,
            series=self.series,
            timestamp=now,
            values=values,
            columns=tuple(self.options.metrics),
            received_at=now,
        )

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"sensor source {self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._queue.close(discard=True)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._status != "failed":
            self._status = "stopped"

    def get(self, timeout: float | None = None) -> Reading | None:
        return self._queue.get(timeout)

    def get_batch(self, max_readings: int, timeout: float | None = None) -> list[Reading]:
        return self._queue.get_batch(max_readings, timeout)

    def ack(self, readings: Reading | Sequence[Reading]) -> None:
        """Nothing to record: a past sample cannot be taken again."""

    def stats(self) -> SensorSourceStats:
        with self._lock:
            return SensorSourceStats(
                readings=self._readings,
                bad_records=0,
                missing_values=self._missing,
                dropped=self._dropped,
                headers=0,
                queue_depth=len(self._queue),
                status=self._status,
                detail=f"{self._late} late sample(s) skipped" if self._late else "",
            )

    def _run(self) -> None:
        self._status = "running"
        interval = self.options.interval_s
        next_at = time.monotonic()
        try:
            while not self._stop.is_set():
                reading = self.sample()
                missing = sum(1 for v in reading.values if math.isnan(v))
                added = self._queue.offer(reading)
                with self._lock:
                    if added:
                        self._readings += 1
                        self._missing += missing
                    else:
                        self._dropped += 1
                next_at += interval
                now = time.monotonic()
                if now - next_at > interval:
                    skipped = int((now - next_at) // interval)
                    next_at += skipped * interval
                    with self._lock:
                        self._late += skipped
                self._stop.wait(max(0.0, next_at - now))
        except Exception:
            log.exception("sensor source %s: the sampling thread failed", self.name)
            self._status = "failed"
