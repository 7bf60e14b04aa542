"""Parameter-value checks: a duration a thousand times the usual is news, even in order.

DeepLog pairs its sequence model with a model of each template's parameter values. A
full per-template regression would cost more than the whole sequence model on a Pi, so
the check here is the cheap part of that idea that catches the cases operators care
about: a numeric parameter whose magnitude is far outside everything the training logs
showed for that template and slot. Magnitudes are compared in decades
(``sign(x)·log10(1+|x|)``), so "more than ten times the largest value seen" reads the
same for a millisecond count and for a byte count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from device.bundle.manifest import ParameterRange
from device.pipelines.log_events import EventMapper, magnitude


@dataclass(frozen=True, slots=True)
class ParameterIssue:
    """One numeric parameter outside its trained range."""

    #: Position among the line's numeric parameters (0-based).
    slot: int
    value: float
    #: The range training saw for this template and slot.
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class _Bounds:
    low: float
    high: float
    low_magnitude: float
    high_magnitude: float


class ParameterChecker:
    """Checks lines against a bundle's ``ParameterRange`` list."""

    def __init__(self, ranges: Sequence[ParameterRange], margin: float) -> None:
        self.margin = margin
        self._bounds: dict[int, dict[int, _Bounds]] = {}
        for item in ranges:
            self._bounds.setdefault(item.template, {})[item.slot] = _Bounds(
                item.low,
                item.high,
                magnitude(item.low) - margin,
                magnitude(item.high) + margin,
            )

    def covers(self, template_id: int) -> bool:
        """Whether lines of this template have any checked slot (the rest cost nothing)."""
        return template_id in self._bounds

    def check(self, mapper: EventMapper, text: str, template_id: int) -> ParameterIssue | None:
        """The first out-of-range parameter of ``text``, or None."""
        slots = self._bounds.get(template_id)
        if not slots:
            return None
        for slot, value in enumerate(mapper.numbers(text, template_id)):
            bounds = slots.get(slot)
            if bounds is None or math.isnan(value):
                continue
            m = magnitude(value)
            if m < bounds.low_magnitude or m > bounds.high_magnitude:
                return ParameterIssue(slot, value, bounds.low, bounds.high)
        return None
