"""Log anomaly detection on the device: DeepLog's next-event rule over templated lines.

Each line is templated with the bundle's frozen vocabulary (the miner training used) and
judged in this order:

1. a blank line is no event;
2. a line no template fits is anomalous (``unknown-template``), always, and stays out of
   the history;
3. with fewer than ``history`` known events seen from its origin, the line only joins
   the history (``warming-up``): a stream watched from its middle has no known start;
4. otherwise the model scores every template as the next one after the origin's last
   ``history`` events; the line is anomalous when its template ranks below ``top_g``
   (``unexpected-event``) or, when set, its probability is below ``min_probability``
   (``improbable-event``);
5. a numeric parameter far outside the range training saw for that template and slot
   makes an otherwise normal line anomalous (``parameter``).

Known lines join their origin's history whatever the verdict, as in DeepLog: the log
goes on from what actually happened.

Speed: lines are taken in batches (what ``LogSource.get_batch`` returns). The
bookkeeping walks the batch once, computing every line's (history, next) pair; pairs
scored before come from a cache, and the rest are scored together in as few model
invocations as their distinct histories need (see next_event.py). On the development
machine this keeps read + template + model above 20,000 lines/s on one core.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from device.bundle.manifest import Manifest
from device.bundle.reader import Bundle
from device.errors import BundleIncompatibleError, BundleTaskError
from device.logs.record import LogLine
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.log_events import EventMapper, session_windows
from device.pipelines.log_params import ParameterChecker, ParameterIssue
from device.pipelines.next_event import EventScore, History, NextEventScorer, log_model_parts
from device.runtime import ModelRuntime

log = logging.getLogger(__name__)

TASK = "log-anomaly"
Reason = Literal[
    "normal",
    "warming-up",
    "blank",
    "unknown-template",
    "unexpected-event",
    "improbable-event",
    "parameter",
]
ANOMALY_REASONS: frozenset[Reason] = frozenset(
    {"unknown-template", "unexpected-event", "improbable-event", "parameter"}
)


class MonotonicClock(Protocol):
    def monotonic(self) -> float: ...


@dataclass(frozen=True, slots=True)
class LogScore:
    """The verdict on one line: what an event about it needs."""

    line: LogLine
    #: The template's id (its class): 0 unknown, -1 blank.
    template_id: int
    #: The template's text (None when unknown or blank).
    template: str | None
    anomalous: bool
    reason: Reason
    #: 0..1: 1 - the model's probability for this template (1.0 for an unknown template
    #: or a parameter out of range; 0.0 for lines not scored).
    score: float
    #: -ln(probability) in nats; None when the model did not score the line.
    surprise: float | None
    #: 1-based rank of the template among the model's guesses; None when not scored.
    rank: int | None
    probability: float | None
    #: The template ids the model expected most, best first (empty when not scored).
    expected: tuple[int, ...]
    #: The parameter out of range, for reason ``parameter``.
    parameter: ParameterIssue | None
    #: Anomalous and within the report rate (``max_reports_per_s``): publish it.
    report: bool

    @property
    def text(self) -> str:
        return self.line.text

    @property
    def origin(self) -> str:
        return self.line.origin


@dataclass(frozen=True)
class SessionScore:
    """The verdict on one session of event ids (DeepLog's HDFS format)."""

    anomalous: bool
    reason: Reason
    #: Index of the first anomalous event; ``events`` (one past the last) when the
    #: session's end was the surprise; None when normal.
    position: int | None
    events: int


@dataclass(frozen=True)
class LogPipelineStats:
    lines: int
    blank: int
    unknown: int
    warming_up: int
    scored: int
    anomalies: int
    parameter_anomalies: int
    reported: int
    suppressed: int
    origins: int
    cache_hits: int
    histories_scored: int
    invocations: int


class _ReportLimit:
    """Token bucket: ``rate`` reports a second, bursts of ``burst``; rate 0 = no limit."""

    def __init__(self, rate: float, burst: int, clock: MonotonicClock) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def check_log_manifest(manifest: Manifest, pipeline: str) -> None:
    """Refuse a bundle a log pipeline cannot run (wrong task, or trained on sessions):
    what the model store's compatibility check needs for log pipelines."""
    if manifest.task != TASK:
        raise BundleTaskError(
            f"wrong task: {manifest.model_ref} is a {manifest.task} model, but pipeline "
            f"{pipeline} runs {TASK}"
        )
    spec, _ = log_model_parts(manifest)
    if spec.input_format != "lines":
        raise BundleIncompatibleError(
            f"{manifest.model_ref} was trained on sessions of event ids; pipeline "
            f"{pipeline} reads log lines and needs a model trained on *.log files"
        )


def check_log_bundle(bundle: Bundle, pipeline: str) -> None:
    check_log_manifest(bundle.manifest, pipeline)


class LogAnomalyPipeline:
    """One log-anomaly model on one log source. Not thread-safe: one inference thread."""

    def __init__(
        self,
        name: str,
        config: LogAnomalyPipelineConfig,
        bundle: Bundle,
        runtime: ModelRuntime,
        clock: MonotonicClock = time,
    ) -> None:
        bundle.require_task(TASK)
        manifest = bundle.manifest
        self.name = name
        self.config = config
        self.bundle = bundle
        self.manifest = manifest
        self.spec, self.decoding = log_model_parts(manifest)
        self.history = self.spec.history
        self.top_g = config.top_g if config.top_g is not None else self.decoding.top_g
        self.min_probability = (
            config.min_probability
            if config.min_probability is not None
            else self.decoding.min_probability
        )
        self.mapper = EventMapper(self.spec)
        self.scorer = NextEventScorer(
            manifest,
            bundle.model_bytes,
            runtime,
            batch_size=config.batch_size,
            cache_entries=config.cache_entries,
        )
        self.checker = (
            ParameterChecker(self.decoding.parameter_ranges, self.decoding.parameter_margin)
            if config.parameter_checks and self.decoding.parameter_ranges
            else None
        )
        self._limit = _ReportLimit(config.max_reports_per_s, config.report_burst, clock)
        self._history_key = config.history_key
        self._histories: OrderedDict[str, History] = OrderedDict()
        self._counts = dict.fromkeys(
            ("lines", "blank", "unknown", "warming_up", "scored", "anomalies", "parameter",
             "reported", "suppressed"), 0,
        )  # fmt: skip
        log.info(
            "pipeline %s: %s on source %s (%s templates, history %d, top-%d%s%s)",
            name,
            manifest.model_ref,
            config.source,
            self.spec.boundary - 1,
            self.history,
            self.top_g,
            f", p < {self.min_probability}" if self.min_probability > 0 else "",
            ", parameter checks" if self.checker is not None else "",
        )

    # -- lines ---------------------------------------------------------------------------

    def process(self, line: LogLine) -> LogScore:
        return self.process_batch([line])[0]

    def process_batch(self, lines: Sequence[LogLine]) -> list[LogScore]:
        """Verdicts for ``lines`` in order; histories advance as the lines are read."""
        mapper = self.mapper
        if mapper.miner is None:
            raise BundleIncompatibleError(
                f"{self.manifest.model_ref} was trained on sessions; it cannot score log lines"
            )
        results: list[LogScore | None] = [None] * len(lines)
        pending: list[tuple[int, History, int, ParameterIssue | None]] = []
        histories = self._histories
        history = self.history
        checker = self.checker
        cached = self.scorer.cached
        line_id = self.mapper.line_id
        counts = self._counts
        counts["lines"] += len(lines)
        for index, line in enumerate(lines):
            template_id = line_id(line.text)
            if template_id <= 0:
                results[index] = self._unscored(line, template_id)
                continue
            key = self._key(line)
            past = histories.get(key)
            if past is None:
                past = self._new_origin(key)
            issue = (
                checker.check(mapper, line.text, template_id)
                if checker is not None and checker.covers(template_id)
                else None
            )
            if len(past) < history:
                histories[key] = (*past, template_id)
                results[index] = self._warming(line, template_id, issue)
                continue
            pair = (*past, template_id)
            histories[key] = pair[1:]
            score = cached(pair)
            if score is None:
                pending.append((index, pair, template_id, issue))
            else:
                results[index] = self._judge(line, template_id, score, issue)
        if pending:
            scores = self.scorer.score([item[1] for item in pending])
            for (index, _, template_id, issue), score in zip(pending, scores, strict=True):
                results[index] = self._judge(lines[index], template_id, score, issue)
        return [r for r in results if r is not None]

    def set_limits(self, top_g: int | None = None, min_probability: float | None = None) -> None:
        """Change the decision rule while running (a ``threshold`` command); None keeps the
        bundle's value. Two attribute stores: the inference thread sees either value."""
        if top_g is not None and top_g < 1:
            raise ValueError(f"top_g must be at least 1, got {top_g}")
        if min_probability is not None and not 0.0 <= min_probability <= 1.0:
            raise ValueError(f"min_probability must be in [0, 1], got {min_probability}")
        self.top_g = top_g if top_g is not None else self.decoding.top_g
        self.min_probability = (
            min_probability if min_probability is not None else self.decoding.min_probability
        )

    def reset(self, origin: str | None = None) -> None:
        """Forget the history of one origin (or of all): its next lines warm up again."""
        if origin is None:
            self._histories.clear()
        else:
            self._histories.pop(origin, None)

    def template_text(self, template_id: int) -> str | None:
        return self.mapper.template_text(template_id)

    def stats(self) -> LogPipelineStats:
        c = self._counts
        scorer = self.scorer.stats()
        return LogPipelineStats(
            lines=c["lines"],
            blank=c["blank"],
            unknown=c["unknown"],
            warming_up=c["warming_up"],
            scored=c["scored"],
            anomalies=c["anomalies"],
            parameter_anomalies=c["parameter"],
            reported=c["reported"],
            suppressed=c["suppressed"],
            origins=len(self._histories),
            cache_hits=scorer.pair_hits,
            histories_scored=scorer.histories_scored,
            invocations=scorer.invocations,
        )

    # -- sessions (DeepLog's files; evaluation and benchmarks) ---------------------------

    def score_sessions(self, sessions: Sequence[Sequence[str]]) -> list[SessionScore]:
        """One verdict per session: anomalous when any of its events (or its end) is."""
        boundary = self.spec.boundary
        plans: list[tuple[int | None, list[int], int]] = []
        keys: list[History] = []
        for events in sessions:
            ids = [self.mapper.event_id(e) for e in events]
            unknown = next((i for i, c in enumerate(ids) if c == 0), None)
            positions = [i for i, c in enumerate(ids) if c > 0] + [len(ids)]
            x, y = session_windows(ids, self.history, boundary)
            plans.append((unknown, positions, len(keys)))
            keys.extend((*map(int, row), int(target)) for row, target in zip(x, y, strict=True))
        scores = self.scorer.score(keys)
        out = []
        for (unknown, positions, start), events in zip(plans, sessions, strict=True):
            first: tuple[int, Reason] | None = None
            for offset, position in enumerate(positions):
                reason = self._sequence_reason(scores[start + offset])
                if reason != "normal":
                    first = (position, reason)
                    break
            if unknown is not None and (first is None or unknown <= first[0]):
                first = (unknown, "unknown-template")
            out.append(
                SessionScore(
                    anomalous=first is not None,
                    reason=first[1] if first is not None else "normal",
                    position=first[0] if first is not None else None,
                    events=len(events),
                )
            )
        return out

    # -- internals -----------------------------------------------------------------------

    def _key(self, line: LogLine) -> str:
        if self._history_key == "origin":
            return line.origin
        if self._history_key == "source":
            return line.source
        app = line.meta.app if line.meta is not None else None
        return f"{line.origin}\x00{app}" if app else line.origin

    def _new_origin(self, key: str) -> History:
        if len(self._histories) >= self.config.max_origins:
            self._histories.popitem(last=False)
        self._histories[key] = ()
        return ()

    def _sequence_reason(self, score: EventScore) -> Reason:
        if score.rank > self.top_g:
            return "unexpected-event"
        if score.probability < self.min_probability:
            return "improbable-event"
        return "normal"

    def _report(self) -> bool:
        self._counts["anomalies"] += 1
        if self._limit.take():
            self._counts["reported"] += 1
            return True
        self._counts["suppressed"] += 1
        return False

    def _unscored(self, line: LogLine, template_id: int) -> LogScore:
        if template_id < 0:
            self._counts["blank"] += 1
            return LogScore(line, template_id, None, False, "blank", 0.0, None, None, None,
                            (), None, False)  # fmt: skip
        self._counts["unknown"] += 1
        return LogScore(line, 0, None, True, "unknown-template", 1.0, None, None, None, (),
                        None, self._report())  # fmt: skip

    def _warming(self, line: LogLine, template_id: int, issue: ParameterIssue | None) -> LogScore:
        self._counts["warming_up"] += 1
        template = self.mapper.template_text(template_id)
        if issue is not None:
            self._counts["parameter"] += 1
            return LogScore(line, template_id, template, True, "parameter", 1.0, None, None,
                            None, (), issue, self._report())  # fmt: skip
        return LogScore(line, template_id, template, False, "warming-up", 0.0, None, None, None,
                        (), None, False)  # fmt: skip

    def _judge(
        self, line: LogLine, template_id: int, score: EventScore, issue: ParameterIssue | None
    ) -> LogScore:
        self._counts["scored"] += 1
        reason = self._sequence_reason(score)
        value = 1.0 - score.probability
        if reason == "normal" and issue is not None:
            reason = "parameter"
            value = 1.0
            self._counts["parameter"] += 1
        anomalous = reason != "normal"
        return LogScore(
            line,
            template_id,
            self.mapper.template_text(template_id),
            anomalous,
            reason,
            value,
            score.surprise,
            score.rank,
            score.probability,
            score.expected,
            issue if reason == "parameter" else None,
            self._report() if anomalous else False,
        )
