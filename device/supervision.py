"""Supervision bookkeeping: which parts of the daemon are degraded, and when each may be
restarted next.

A Pi runs unattended for months, so a part that fails (a camera whose capture thread
died, a pipeline whose interpreter raised or hung) is restarted by the daemon on its
own, while the other parts go on. Restarting at once in a tight loop would burn the CPU
and flood the log for a fault that persists (a file that is gone, a model that always
crashes), so restarts follow an exponential backoff per part, reset once the part has
run cleanly for a while. What is degraded, and why, is published in the retained state
so an operator sees it without a shell.

This module holds no threads and touches no hardware: the daemon's main loop asks it
what to do. That keeps the policy testable with a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from device.sources.backoff import ExponentialBackoff

log = logging.getLogger(__name__)

PartStatus = Literal["ok", "degraded"]

#: A part that has run this long since its last restart has its backoff reset, so a
#: fault next week is retried quickly again.
HEALTHY_AFTER_S = 60.0


class Clock(Protocol):
    def monotonic(self) -> float: ...


@dataclass(frozen=True)
class PartHealth:
    """One supervised part as the state topic shows it."""

    #: "source:<name>" or "pipeline:<name>".
    part: str
    status: PartStatus
    #: Why it is degraded, and what happens next; empty when ok.
    detail: str
    #: Restarts since the daemon started.
    restarts: int


@dataclass
class _Part:
    backoff: ExponentialBackoff
    status: PartStatus = "ok"
    detail: str = ""
    restarts: int = 0
    #: When the next restart may happen (monotonic); None when none is pending.
    retry_at: float | None = None
    #: When the part last (re)started; a clean run past HEALTHY_AFTER_S resets the backoff.
    started_at: float = 0.0
    #: The last failure's reason, kept in the detail after a restart.
    reason: str = ""


class Supervisor:
    """Restart schedule and health of named parts; safe to call from several threads."""

    def __init__(
        self,
        restart_min_s: float,
        restart_max_s: float,
        clock: Clock = time,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self._min_s = restart_min_s
        self._max_s = max(restart_max_s, restart_min_s)
        self._clock = clock
        self._healthy_after_s = healthy_after_s
        self._parts: dict[str, _Part] = {}
        self._lock = threading.Lock()

    def _part(self, part: str) -> _Part:
        entry = self._parts.get(part)
        if entry is None:
            entry = _Part(
                ExponentialBackoff(self._min_s, self._max_s), started_at=self._clock.monotonic()
            )
            self._parts[part] = entry
        return entry

    def failed(self, part: str, reason: str) -> float:
        """Record a failure; returns the delay before the part may be restarted.

        A second report while a restart is already scheduled keeps that schedule (two
        threads noticing the same fault must not double the backoff).
        """
        now = self._clock.monotonic()
        with self._lock:
            entry = self._part(part)
            if entry.retry_at is not None:
                return max(0.0, entry.retry_at - now)
            if now - entry.started_at >= self._healthy_after_s:
                entry.backoff.reset()
            delay = entry.backoff.next_delay()
            entry.status = "degraded"
            entry.retry_at = now + delay
            entry.reason = reason
            entry.detail = f"{reason}; restarting in {delay:.1f} s"
        log.warning("%s failed: %s; restarting in %.1f s", part, reason, delay)
        return delay

    def due(self, part: str) -> bool:
        """True once a scheduled restart's delay has passed."""
        with self._lock:
            entry = self._parts.get(part)
            return (
                entry is not None
                and entry.retry_at is not None
                and self._clock.monotonic() >= entry.retry_at
            )

    def restarted(self, part: str) -> None:
        """The daemon restarted the part; it stays degraded until ``recovered``."""
        with self._lock:
            entry = self._part(part)
            entry.retry_at = None
            entry.restarts += 1
            entry.started_at = self._clock.monotonic()
            entry.detail = f"{entry.reason}; restarted ({entry.restarts} time(s)), watching"
        log.info("%s restarted", part)

    def recovered(self, part: str) -> None:
        """The part works again (a frame went through, an inference returned)."""
        with self._lock:
            entry = self._parts.get(part)
            if entry is None or entry.status == "ok" or entry.retry_at is not None:
                return
            entry.status = "ok"
            entry.detail = ""
        log.info("%s recovered", part)

    def set_degraded(self, part: str, detail: str) -> None:
        """Mark a part degraded without scheduling a restart (e.g. the model was rolled
        back); ``recovered`` clears it."""
        with self._lock:
            entry = self._part(part)
            entry.status = "degraded"
            entry.detail = detail

    def health(self, part: str) -> PartHealth:
        with self._lock:
            entry = self._parts.get(part)
            if entry is None:
                return PartHealth(part, "ok", "", 0)
            return PartHealth(part, entry.status, entry.detail, entry.restarts)

    def degraded(self) -> tuple[PartHealth, ...]:
        """Every degraded part, sorted by name (stable for change detection)."""
        with self._lock:
            return tuple(
                PartHealth(name, entry.status, entry.detail, entry.restarts)
                for name, entry in sorted(self._parts.items())
                if entry.status != "ok"
            )


class InferenceClock:
    """When the inference running on one worker began, for the hang check.

    The worker calls ``begin``/``end`` around each frame; the main loop calls
    ``running_for`` to see whether it is stuck. Plain attribute writes: the reader only
    needs a recent value, never a consistent pair.
    """

    def __init__(self, clock: Clock = time) -> None:
        self._clock = clock
        self._since: float | None = None

    def begin(self) -> None:
        self._since = self._clock.monotonic()

    def end(self) -> None:
        self._since = None

    def running_for(self) -> float:
        """Seconds the current inference has been running; 0 when idle."""
        since = self._since
        return 0.0 if since is None else self._clock.monotonic() - since
