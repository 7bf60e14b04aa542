"""Log lines → event classes → (history, next) windows: the one definition both sides use.

Training builds the examples it learns from with these functions, and the device's
pipeline scores exactly the windows they define (``tests/test_log_anomaly.py`` proves
that the two agree line by line). The rules:

* a blank line (nothing but white space) is no event: it is not scored and does not
  enter the history;
* a line is templated by the bundle's frozen miner and, with strict templates (the
  default), must also have the template's literal words (see ``TemplateShape``);
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
_DIGIT = re.compile(r"\d")
_PLACEHOLDER_SPLIT = re.compile(r"(<(?:TS|UUID|IP|MAC|HEX|PATH|NUM)>|<\*>)")
IntArray = np.ndarray[Any, np.dtype[np.int32]]


class EventMapper:
    """Turns a line (or a session's event id) into its class, as the bundle defines them."""

    def __init__(self, spec: LogPreprocessing, cache_size: int = 100_000) -> None:
        self.spec = spec
        self.miner: TemplateMiner | None = None
        self._events: dict[str, int] = {}
        self._shapes: dict[int, TemplateShape] = {}
        self.strict = spec.strict_templates
        if spec.vocabulary is not None:
            self.miner = TemplateMiner.from_vocabulary(spec.vocabulary, cache_size=cache_size)
            parameters = spec.vocabulary.parameters
            self._shapes = {
                entry.id: TemplateShape(
                    entry.tokens, parameters.extra_delimiters, parameters.max_tokens
                )
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
        found = self.miner.match_id(text)
        if found > 0 and self.strict and not self._shapes[found].fits(text):
            return UNKNOWN
        return found

    def event_id(self, event: str) -> int:
        """Class of a session's event id: UNKNOWN (0) when training never saw it."""
        return self._events.get(event, UNKNOWN)

    def numbers(self, text: str, template_id: int) -> list[float]:
        """The line's numeric parameters under its template (see TemplateShape)."""
        shape = self._shapes.get(template_id)
        return shape.values(text) if shape is not None and shape.count else []

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


class TemplateShape:
    """A template's literal words and numbers, checked and read on a line cheaply.

    A line that fits a template has its token count (the miner routes by it), so the
    template's token ``p`` is the line's whitespace-separated word ``p``, shifted by the
    extra words of a leading timestamp (which masks to one token). That gives two cheap
    operations, one ``split`` each, where re-masking the line would cost as much as
    templating it again:

    * ``fits``: every literal word of the template is the line's word at its place, and
      every word with a placeholder inside (``shop[<NUM>]:``) fits its pattern; words
      with a digit in their fixed part (node names, dates, versions) are free to vary,
      as Drain's own tree treats them as variable. Drain's
      matching counts ``<*>`` positions as equal and accepts half the tokens equal,
      which is right for parsing but lets a new kind of line pass as a known one when a
      long header is shared (BGL's ``RAS KERNEL FATAL data TLB error interrupt`` matched
      ``... FATAL program interrupt: <*> <*>``). Strict templates (the default) call such
      a line unknown: a line whose fixed words no template has is a new template.
    * ``values``: the numeric parameters, in line order: the values at the template's
      ``<NUM>`` placeholders (``<NUM>ms`` is read with ``(.+?)ms``). A word that does not
      fit, or a value that is not a finite number, gives NaN, so later slots keep their
      place.
    """

    def __init__(
        self, tokens: Sequence[str], extra_delimiters: str = "", max_tokens: int = 1 << 30
    ) -> None:
        self.width = len(tokens)
        self.timestamp = bool(tokens) and tokens[0] == TIMESTAMP_TOKEN
        #: Lines with more tokens than max_tokens were folded into this template's last
        #: token; their words cannot be lined up, so they are neither checked nor read.
        self.folded = len(tokens) >= max_tokens
        self._delimit = str.maketrans(extra_delimiters, " " * len(extra_delimiters))
        self._has_delimiters = bool(extra_delimiters)
        self.literals: list[tuple[int, str]] = []
        self.patterns: list[tuple[int, re.Pattern[str]]] = []
        self.numbers: list[tuple[int, re.Pattern[str], int]] = []
        for position, token in enumerate(tokens):
            if (position == 0 and self.timestamp) or _PLACEHOLDER.fullmatch(token):
                if token == NUMBER_TOKEN:
                    self.numbers.append((position, re.compile("(.+)"), 1))
                continue
            parts = [part for part in _PLACEHOLDER_SPLIT.split(token) if part]
            fixed = "".join(part for part in parts if not _PLACEHOLDER.fullmatch(part))
            if _DIGIT.search(fixed) is not None:
                pass  # an identifier (node name, date, version): free to vary
            elif len(parts) == 1:
                self.literals.append((position, token))
            else:
                self.patterns.append((position, re.compile("".join(
                    ".+?" if _PLACEHOLDER.fullmatch(part) else re.escape(part)
                    for part in parts
                ))))  # fmt: skip
            if NUMBER_TOKEN in parts:
                self.numbers.append((position, re.compile("".join(
                    "(.+?)" if part == NUMBER_TOKEN
                    else ".+?" if _PLACEHOLDER.fullmatch(part) else re.escape(part)
                    for part in parts
                )), parts.count(NUMBER_TOKEN)))  # fmt: skip
        self.count = sum(n for _, _, n in self.numbers)
        self._last_text: str | None = None
        self._last_words: tuple[list[str], int] | None = None

    def _words(self, text: str) -> tuple[list[str], int] | None:
        # ``fits`` and then ``values`` look at the same line: split it once.
        if text is self._last_text:
            return self._last_words
        words = (text.translate(self._delimit) if self._has_delimiters else text).split()
        shift = len(words) - self.width
        found = None
        if not (self.folded or shift < 0 or (shift > 0 and not self.timestamp)):
            found = (words, shift)
        self._last_text, self._last_words = text, found
        return found

    def fits(self, text: str) -> bool:
        """Whether the line has the template's literal words (see the class docstring)."""
        if self.folded:
            return True
        found = self._words(text)
        if found is None:
            return False
        words, shift = found
        for position, literal in self.literals:
            if words[position + shift if position else 0] != literal:
                return False
        for position, pattern in self.patterns:
            if pattern.fullmatch(words[position + shift if position else 0]) is None:
                return False
        return True

    def values(self, text: str) -> list[float]:
        found = self._words(text) if self.count else None
        if found is None:
            return [math.nan] * self.count
        words, shift = found
        out: list[float] = []
        for position, pattern, groups in self.numbers:
            match = pattern.fullmatch(words[position + shift if position else 0])
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
