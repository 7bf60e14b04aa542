"""The bounded hand-over between a source's reading thread and the consumer.

Bounded twice, by lines and by characters, so a burst of long lines cannot take more
memory than a burst of short ones. Producers choose what happens when it is full:
files and the journal wait (``put_wait``: the data stays on disk or in journald, and the
reader catches up later, losing nothing), syslog over UDP drops and counts (``offer``:
the sender cannot be slowed down, and old lines must not pile up without bound).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

from device.logs.record import LogLine


class LineQueue:
    """A FIFO of LogLines bounded by ``max_lines`` and ``max_chars`` (of text)."""

    def __init__(self, max_lines: int, max_chars: int) -> None:
        if max_lines < 1 or max_chars < 1:
            raise ValueError(f"queue bounds must be >= 1, got {max_lines}, {max_chars}")
        self.max_lines = max_lines
        self.max_chars = max_chars
        self._items: deque[LogLine] = deque()
        self._chars = 0
        self._cond = threading.Condition()
        self._closed = False

    def _full(self) -> bool:
        return len(self._items) >= self.max_lines or self._chars >= self.max_chars

    def put_wait(
        self,
        lines: Sequence[LogLine],
        stop: threading.Event | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Add ``lines`` once there is room; False (nothing added) when closed, stopped, or
        still full after ``timeout`` seconds.

        The batch is added whole once the queue is below its bounds, so the queue can
        exceed them by one batch: producers keep their batches small.
        """
        if not lines:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._full() and not self._closed:
                if stop is not None and stop.is_set():
                    return False
                wait = 0.2 if stop is not None else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            if self._closed:
                return False
            self._items.extend(lines)
            self._chars += sum(len(line.text) for line in lines)
            self._cond.notify_all()
            return True

    def offer(self, line: LogLine) -> bool:
        """Add ``line`` unless the queue is full or closed; True when it was added."""
        with self._cond:
            if self._closed or self._full():
                return False
            self._items.append(line)
            self._chars += len(line.text)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> LogLine | None:
        """The oldest line, or None after ``timeout`` s or once closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            if not self._items:
                return None
            line = self._items.popleft()
            self._chars -= len(line.text)
            self._cond.notify_all()
            return line

    def get_batch(self, max_lines: int, timeout: float | None = None) -> list[LogLine]:
        """Up to ``max_lines`` of the oldest lines; waits up to ``timeout`` for the first."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout)
            count = min(max_lines, len(self._items))
            popleft = self._items.popleft
            batch = [popleft() for _ in range(count)]
            self._chars -= sum(len(line.text) for line in batch)
            if batch:
                self._cond.notify_all()
            return batch

    def close(self, discard: bool = False) -> None:
        """No more lines will come: wake everyone waiting on either side."""
        with self._cond:
            self._closed = True
            if discard:
                self._items.clear()
                self._chars = 0
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
