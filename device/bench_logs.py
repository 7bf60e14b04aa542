"""`edgewatch bench` for log-anomaly bundles: lines per second, with and without the model.

Measured side by side in one run, on one file, in one thread (what a daemon's inference
thread does with one log source):

* template only: the file follower reading every line and the frozen miner templating
  it; the baseline the model's cost is judged against;
* end to end: the same reading feeding ``LogAnomalyPipeline.process_batch``
  (templating, histories, model, verdicts) and acknowledging each batch;
* model: histories scored per second by the model alone, in batches (no cache), which is
  what a log of never-repeating sequences would cost.

Without ``--log``, lines are generated from the bundle itself: templates drawn one after
another from the model's own predictions (so sequences repeat as in a real log), with
random values in their placeholders. Rates are per CPU second of this process.
"""

from __future__ import annotations

import random
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from device.bundle.reader import Bundle, read_bundle
from device.errors import BundleIncompatibleError, SourceError
from device.logs.masking import PLACEHOLDERS
from device.logs.tail import FileFollower, TailOptions
from device.pipelines.log_anomaly import LogAnomalyPipeline
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.log_events import EventMapper
from device.pipelines.next_event import NextEventScorer, log_model_parts
from device.runtime import ModelRuntime, load_for_manifest

BATCH_LINES = 1000
MODEL_HISTORIES = 4096


@dataclass(frozen=True)
class LogBenchResult:
    bundle: str
    model: str
    quantization: str
    threads: int
    lines: int
    generated: bool
    template_lines_per_s: float
    end_to_end_lines_per_s: float
    #: End to end over template only (1.0: the model costs nothing).
    end_to_end_over_template: float
    model_histories_per_s: float
    batched: bool
    anomalies: int
    cache_hit_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_log_bench(result: LogBenchResult) -> str:
    source = "generated lines" if result.generated else "lines from the file"
    return "\n".join(
        [
            f"{result.model} ({result.quantization}), {result.threads} thread(s), "
            f"{result.lines:,} {source}",
            f"read + template          {result.template_lines_per_s:>12,.0f} lines/s",
            f"read + template + model  {result.end_to_end_lines_per_s:>12,.0f} lines/s "
            f"({result.end_to_end_over_template:.2f}x template only)",
            f"model alone              {result.model_histories_per_s:>12,.0f} histories/s "
            f"({'batched' if result.batched else 'one per call'})",
            f"anomalies {result.anomalies:,}, score cache hits {result.cache_hit_rate:.1%}",
        ]
    )


def run_log_bench(
    bundle_path: Path,
    *,
    log_file: Path | None = None,
    lines: int = 100_000,
    threads: int = 1,
    seed: int = 0,
) -> LogBenchResult:
    bundle = read_bundle(bundle_path)
    spec, _ = log_model_parts(bundle.manifest)
    if spec.input_format != "lines":
        raise BundleIncompatibleError(
            f"{bundle.manifest.model_ref} was trained on sessions of event ids; the log "
            "benchmark reads log lines (use `edgewatch evaluate` for sessions)"
        )
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, threads, "auto")
    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-") as tmp:
        if log_file is None:
            path = Path(tmp) / "generated.log"
            write_generated_log(path, bundle, runtime, lines, seed)
        elif not log_file.is_file():
            raise SourceError(f"{log_file} does not exist; pass a log file or leave --log out")
        else:
            path = log_file
        mapper = EventMapper(spec)
        template_rate, count = _rate(lambda: _read(path, lines, lambda b: [
            mapper.line_id(line.text) for line in b]))  # fmt: skip
        pipeline = _pipeline(bundle, bundle_path, runtime)
        end_rate, _ = _rate(lambda: _read(path, lines, pipeline.process_batch))
        stats = pipeline.stats()
    model_rate, batched = _model_rate(bundle, runtime, seed)
    scored = stats.cache_hits + stats.histories_scored
    return LogBenchResult(
        bundle=str(bundle_path),
        model=bundle.manifest.model_ref,
        quantization=bundle.manifest.quantization,
        threads=threads,
        lines=count,
        generated=log_file is None,
        template_lines_per_s=round(template_rate, 1),
        end_to_end_lines_per_s=round(end_rate, 1),
        end_to_end_over_template=round(end_rate / max(template_rate, 1e-9), 3),
        model_histories_per_s=round(model_rate, 1),
        batched=batched,
        anomalies=stats.anomalies,
        cache_hit_rate=round(stats.cache_hits / scored, 4) if scored else 0.0,
    )


def _pipeline(bundle: Bundle, path: Path, runtime: ModelRuntime) -> LogAnomalyPipeline:
    config = LogAnomalyPipelineConfig(source="bench", model=path, max_reports_per_s=0.0)
    return LogAnomalyPipeline("bench", config, bundle, runtime)


def _rate(run: Callable[[], int]) -> tuple[float, int]:
    started_cpu, started = time.process_time(), time.perf_counter()
    count = run()
    cpu = time.process_time() - started_cpu
    return count / (cpu if cpu > 0 else time.perf_counter() - started), count


def _read(path: Path, limit: int, consume: Callable[[list[Any]], object]) -> int:
    """Follow ``path`` from its start, hand each batch to ``consume``, acknowledge it."""
    follower = FileFollower("bench", [path], None, TailOptions(start_at="beginning",
                                                                max_batch_lines=BATCH_LINES))
    total = 0
    try:
        while total < limit:
            batch = follower.poll()
            if not batch:
                break
            consume(batch)
            follower.ack(batch[-1])
            total += len(batch)
    finally:
        follower.close()
    return total


def _model_rate(bundle: Bundle, runtime: ModelRuntime, seed: int) -> tuple[float, bool]:
    scorer = NextEventScorer(bundle.manifest, bundle.model_bytes, runtime, cache_entries=0)
    spec = scorer.spec
    rng = np.random.default_rng(seed)
    histories = [tuple(int(v) for v in row) for row in
                 rng.integers(1, spec.boundary, size=(MODEL_HISTORIES, spec.history))]  # fmt: skip
    scorer.rows(histories[:64])  # warm-up
    rate, _ = _rate(lambda: len(scorer.rows(histories)))
    return rate, scorer.stats().batched


# -- generated lines ---------------------------------------------------------------------


def write_generated_log(
    path: Path, bundle: Bundle, runtime: ModelRuntime, count: int, seed: int = 0
) -> None:
    """``count`` lines of normal behaviour as the bundle sees it: each template drawn from
    the model's prediction among those it would accept (within top-g and above the
    probability floor), numbers drawn inside their trained ranges."""
    spec, decoding = log_model_parts(bundle.manifest)
    if spec.vocabulary is None or not spec.vocabulary.templates:
        raise BundleIncompatibleError(f"{bundle.manifest.model_ref} holds no templates")
    templates = {entry.id: entry.tokens for entry in spec.vocabulary.templates}
    ranges = {(r.template, r.slot): (r.low, r.high) for r in decoding.parameter_ranges}
    scorer = NextEventScorer(bundle.manifest, bundle.model_bytes, runtime)
    rng = random.Random(seed)
    ids = sorted(templates)
    weights = [max(1, templates_count) for templates_count in
               (e.count for e in sorted(spec.vocabulary.templates, key=lambda e: e.id))]
    history = tuple(rng.choices(ids, weights, k=spec.history))
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(count):
            chosen = _next_template(scorer.rows([history])[0], decoding.top_g,
                                    decoding.min_probability, rng)
            if chosen not in templates:
                chosen = rng.choice(ids)
            handle.write(_fill(chosen, templates[chosen], ranges, rng) + "\n")
            history = (*history[1:], chosen)


def _next_template(
    logp: np.ndarray[Any, Any], top_g: int, floor: float, rng: random.Random
) -> int:
    probabilities = np.exp(logp)
    order = np.argsort(-probabilities, kind="stable")[:top_g]
    allowed = [int(c) for c in order if probabilities[c] >= floor and c > 0]
    if not allowed:
        return int(order[0])
    return rng.choices(allowed, [float(probabilities[c]) for c in allowed])[0]


_WORDS = ("alpha", "bravo", "delta", "kilo", "lima", "oscar", "sierra", "tango")


def _value(placeholder: str, rng: random.Random) -> str:
    if placeholder == PLACEHOLDERS["timestamp"]:
        stamp = time.gmtime(1_700_000_000 + rng.randint(0, 10**7))
        return time.strftime("%Y-%m-%dT%H:%M:%S", stamp) + f".{rng.randint(0, 999):03d}Z"
    if placeholder == PLACEHOLDERS["ip"]:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if placeholder == PLACEHOLDERS["uuid"]:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if placeholder == PLACEHOLDERS["hex"]:
        return f"0x{rng.getrandbits(32):08x}"
    if placeholder == PLACEHOLDERS["path"]:
        return f"/var/lib/{rng.choice(_WORDS)}/{rng.choice(_WORDS)}"
    if placeholder == PLACEHOLDERS["mac"]:
        return ":".join(f"{rng.getrandbits(8):02x}" for _ in range(6))
    return rng.choice(_WORDS)


def _fill(
    template_id: int,
    tokens: tuple[str, ...],
    ranges: dict[tuple[int, int], tuple[float, float]],
    rng: random.Random,
) -> str:
    """A line of the template: placeholders replaced by values of their kind."""
    out = []
    slot = 0
    for token in tokens:
        parts = _PLACEHOLDER.split(token)
        text = []
        for part in parts:
            if part == PLACEHOLDERS["number"]:
                low, high = ranges.get((template_id, slot), (0.0, 5000.0))
                text.append(str(int(rng.uniform(low, high))))
                slot += 1
            elif _PLACEHOLDER.fullmatch(part):
                text.append(_value(part, rng))
            else:
                text.append(part)
        out.append("".join(text))
    return " ".join(out)


_PLACEHOLDER = re.compile(r"(<(?:TS|UUID|IP|MAC|HEX|PATH|NUM)>|<\*>)")
