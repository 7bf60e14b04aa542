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
    #: The values at ``margin`` decades outside [low, high]: magnitude is monotonic, so
    #: comparing values with these is comparing magnitudes, without a log per value.
    lowest: float
    highest: float


def _from_magnitude(m: float) -> float:
    return math.copysign(10.0 ** abs(m) - 1.0, m)


class ParameterChecker:
    """Checks lines against a bundle's ``ParameterRange`` list."""

    def __init__(self, ranges: Sequence[ParameterRange], margin: float) -> None:
        self.margin = margin
        by_template: dict[int, dict[int, _Bounds]] = {}
        for item in ranges:
            by_template.setdefault(item.template, {})[item.slot] = _Bounds(
                item.low,
                item.high,
                _from_magnitude(magnitude(item.low) - margin),
                _from_magnitude(magnitude(item.high) + margin),
            )
        self._bounds: dict[int, list[_Bounds | None]] = {
            template: [slots.get(i) for i in range(max(slots) + 1)]
            for template, slots in by_template.items()
        }

    def covers(self, template_id: int) -> bool:
        """Whether lines of this template have any checked slot (the rest cost nothing)."""
        return template_id in self._bounds

    def check(self, mapper: EventMapper, text: str, template_id: int) -> ParameterIssue | None:
        """The first out-of-range parameter of ``text``, or None."""
        slots = self._bounds.get(template_id)
        if not slots:
            return None
        values = mapper.numbers(text, template_id)
        for slot, (value, bounds) in enumerate(zip(values, slots, strict=False)):
            # NaN compares false both ways: an unreadable value is never out of range.
            if bounds is not None and (value < bounds.lowest or value > bounds.highest):
                return ParameterIssue(slot, value, bounds.low, bounds.high)
        return None
