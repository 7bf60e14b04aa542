"""Log lines → event classes → (history, next) windows: the one definition both sides use.

Training builds the examples it learns from with these functions, and the device's
pipeline scores exactly the windows they define (``tests/test_log_anomaly.py`` proves
that the two agree line by line). The rules:

* a blank line (nothing but white space) is no event: it is not scored and does not
  enter the history;
* an unknown line (no template fits) is anomalous by definition and does not enter the
  history either, so the lines after it are judged on the known events around it;
* lines: one stream per origin; an event is scored once the ``history`` known events
  before it exist (no padding: a stream watched from its middle has no true start);
* sessions: each session starts with ``history`` boundary tokens and ends with one, so
  the first events and the end of a session are scored too (a session that stops early
  is an anomaly).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import numpy as np

from device.bundle.manifest import LogPreprocessing
from device.logs.masking import PLACEHOLDERS
from device.logs.templates import TemplateMiner

#: The id of a blank line (no event).
BLANK: Final = -1
UNKNOWN: Final = 0
NUMBER_TOKEN: Final = PLACEHOLDERS["number"]
TIMESTAMP_TOKEN: Final = PLACEHOLDERS["timestamp"]
_PLACEHOLDER = re.compile(r"<(?:TS|UUID|IP|MAC|HEX|PATH|NUM)>|<\*>")
_PLACEHOLDER_SPLIT = re.compile(r"(<(?:TS|UUID|IP|MAC|HEX|PATH|NUM)>|<\*>)")
IntArray = np.ndarray[Any, np.dtype[np.int32]]


class EventMapper:
    """Turns a line (or a session's event id) into its class, as the bundle defines them."""

    def __init__(self, spec: LogPreprocessing, cache_size: int = 100_000) -> None:
        self.spec = spec
        self.miner: TemplateMiner | None = None
        self._events: dict[str, int] = {}
        self._slots: dict[int, NumericSlots] = {}
        if spec.vocabulary is not None:
            self.miner = TemplateMiner.from_vocabulary(spec.vocabulary, cache_size=cache_size)
            delimiters = spec.vocabulary.parameters.extra_delimiters
            self._slots = {
                entry.id: NumericSlots(entry.tokens, delimiters)
                for entry in spec.vocabulary.templates
            }
        else:
            self._events = {event: index + 1 for index, event in enumerate(spec.events)}

    def line_id(self, text: str) -> int:
        """Template id of a log line: BLANK, UNKNOWN (0) or 1.. (the class)."""
        if self.miner is None:
            raise ValueError("this model was trained on sessions of event ids, not log lines")
        if not text or text.isspace():
            return BLANK
        return self.miner.match_id(text)

    def event_id(self, event: str) -> int:
        """Class of a session's event id: UNKNOWN (0) when training never saw it."""
        return self._events.get(event, UNKNOWN)

    def numbers(self, text: str, template_id: int) -> list[float]:
        """The line's numeric parameters under its template (see NumericSlots)."""
        slots = self._slots.get(template_id)
        return slots.values(text) if slots is not None and slots.count else []

    def template_text(self, class_id: int) -> str | None:
        if class_id <= 0:
            return None
        if self.miner is not None:
            return self.miner.template(class_id)
        if class_id <= len(self.spec.events):
            return self.spec.events[class_id - 1]
        return None


def known_events(ids: Iterable[int]) -> list[int]:
    """The ids that enter a history: neither blank nor unknown."""
    return [i for i in ids if i > 0]


def stream_windows(ids: Sequence[int], history: int) -> tuple[IntArray, IntArray]:
    """(x, y) of one stream of lines: every known event after ``history`` known ones."""
    events = np.asarray(known_events(ids), dtype=np.int32)
    if len(events) <= history:
        return np.empty((0, history), dtype=np.int32), np.empty(0, dtype=np.int32)
    x = np.lib.stride_tricks.sliding_window_view(events[:-1], history).astype(np.int32)
    return x, events[history:].copy()


def session_windows(ids: Sequence[int], history: int, boundary: int) -> tuple[IntArray, IntArray]:
    """(x, y) of one session: padded with ``history`` boundaries, ending with one."""
    events = np.asarray(
        [boundary] * history + known_events(ids) + [boundary], dtype=np.int32
    )
    x = np.lib.stride_tricks.sliding_window_view(events[:-1], history).astype(np.int32)
    return x, events[history:].copy()


class NumericSlots:
    """Where a template's numbers are, and how to read them from a line cheaply.

    The numeric parameters of a line under a template are, in line order, the values at
    the ``<NUM>`` placeholders of the template's tokens. A line that fits a template has
    its token count (the miner routes by it), so the template's token ``p`` is the
    line's whitespace token ``p`` (shifted by the extra words of a leading timestamp,
    which masks to one token). Each such token is read with a pattern made from the
    template token (``<NUM>ms`` → ``(.+?)ms``); a token that does not fit it, or a value
    that does not read as a number, gives NaN, so later slots keep their place. This
    costs a split and one small match per number, where re-masking the line would cost
    as much as templating it again.
    """

    def __init__(self, tokens: Sequence[str], extra_delimiters: str = "") -> None:
        self.width = len(tokens)
        self.timestamp = bool(tokens) and tokens[0] == TIMESTAMP_TOKEN
        self._delimit = str.maketrans(extra_delimiters, " " * len(extra_delimiters))
        self._has_delimiters = bool(extra_delimiters)
        self.positions: list[tuple[int, re.Pattern[str], int]] = []
        for position, token in enumerate(tokens):
            if NUMBER_TOKEN not in token:
                continue
            pattern = "".join(
                "(.+?)" if part == NUMBER_TOKEN else ".+?" if _PLACEHOLDER.fullmatch(part)
                else re.escape(part)
                for part in _PLACEHOLDER_SPLIT.split(token) if part
            )  # fmt: skip
            self.positions.append((position, re.compile(pattern), token.count(NUMBER_TOKEN)))
        self.count = sum(n for _, _, n in self.positions)

    def values(self, text: str) -> list[float]:
        words = (text.translate(self._delimit) if self._has_delimiters else text).split()
        shift = len(words) - self.width
        if shift < 0 or (shift > 0 and not self.timestamp):
            return [math.nan] * self.count
        out: list[float] = []
        for position, pattern, groups in self.positions:
            word = words[position + shift] if position > 0 else words[0]
            match = pattern.fullmatch(word) if position > 0 or shift == 0 else None
            if match is None:
                out.extend([math.nan] * groups)
                continue
            for value in match.groups():
                try:
                    number = float(value)
                except ValueError:
                    number = math.nan
                out.append(number if math.isfinite(number) else math.nan)
        return out


def magnitude(value: float) -> float:
    """sign(x) * log10(1 + |x|): how ranges compare values of very different sizes."""
    return math.copysign(math.log10(1.0 + abs(value)), value)
