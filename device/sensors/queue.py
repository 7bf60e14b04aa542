"""The bounded hand-over between a sensor source's thread and the consumer.

Producers choose what happens when it is full, as for logs: file sources wait (the file
keeps the data), network and host sources drop the new reading and count it (a sender
cannot be slowed down, and a backlog of stale samples helps nobody).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from device.sensors.reading import Reading


class ReadingQueue:
    """A FIFO of readings bounded by ``max_readings``; thread-safe."""

    def __init__(self, max_readings: int) -> None:
        if max_readings < 1:
            raise ValueError(f"queue bound must be >= 1, got {max_readings}")
        self.max_readings = max_readings
        self._items: deque[Reading] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put_wait(
        self, readings: Sequence[Reading], stop: threading.Event, timeout: float | None = None
    ) -> bool:
        """Add ``readings`` once there is room; False (nothing added) when closed,
        stopped or still full after ``timeout``. Like the log queue, a batch is added
        whole, so the queue may exceed its bound by one batch."""
        if not readings:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._items) >= self.max_readings and not self._closed:
                if stop.is_set():
                    return False
                wait = 0.2
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = min(wait, left)
                self._cond.wait(wait)
            if self._closed:
                return False
            self._items.extend(readings)
            self._cond.notify_all()
            return True

    def offer(self, reading: Reading) -> bool:
        """Add ``reading`` unless full or closed; True when it was added."""
        with self._cond:
            if self._closed or len(self._items) >= self.max_readings:
                return False
            self._items.append(reading)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Reading | None:
        """The oldest reading, or None after ``timeout`` s or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return None
            reading = self._items.popleft()
            self._cond.notify_all()
            return reading

    def get_batch(self, max_readings: int, timeout: float | None = None) -> list[Reading]:
        """Up to ``max_readings`` of the oldest; waits up to ``timeout`` for the first."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            count = min(max_readings, len(self._items))
            batch = [self._items.popleft() for _ in range(count)]
            if batch:
                self._cond.notify_all()
            return batch

    def close(self, discard: bool = False) -> None:
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
