"""Log anomaly detection: lines scored per second on one core, and F1 on real logs.

Targets (issue 5):

* at least 20,000 log lines scored per second on one core, end to end (read, template,
  model), beside a template-mining-only baseline measured in the same run;
* HDFS session F1 on ``shared/datasets/hdfs_sessions`` (DeepLog's paper reports about
  0.96): train on a seeded 10% of normal.txt, as DeepLog trained on a small part of the
  normal sessions, and test on the rest of normal.txt and on abnormal.txt;
* line-level F1 on Loghub's BGL sample (first token "-" is normal, anything else an
  alert category).

Throughput is measured with the process pinned to one CPU (``os.sched_setaffinity``)
and the interpreter on one thread, on two generated logs: the shop application of
``training.synthetic.logs`` (workflows: sequences repeat, as in most real logs) and the
mixed system log of test_log_throughput.py (every line drawn at random: almost every
history is new, the worst case for the scorer's cache). Each figure is the best of
three runs, in lines per CPU second. The target is asserted on the application log;
the worst case is printed beside it.

The real-data tests find their data through ``EDGEWATCH_HDFS_SESSIONS`` and
``EDGEWATCH_BGL`` (a BGL log file, or a folder of them), else under
``shared/datasets`` next to the repository, and skip when it is absent.
"""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from converters.convert import convert_model
from device.bundle.reader import read_bundle
from device.logs.record import LogLine
from device.logs.tail import FileFollower, TailOptions, TailSource
from device.logs.templates import TemplateMiner
from device.pipelines.log_anomaly import LogAnomalyPipeline
from device.pipelines.log_config import LogAnomalyPipelineConfig
from device.pipelines.log_events import EventMapper
from device.pipelines.next_event import log_model_parts
from device.runtime import load_for_manifest
from tests.benchmarks.conftest import REPO, report
from tests.benchmarks.test_log_throughput import generate_log
from training.evaluate_logs import DetectionMetrics, evaluate_log_bundle
from training.synthetic.logs import generate_app_log
from training.train_logs import LogTrainOptions, train_log_anomaly

TARGET_LINES_PER_S = 20_000
LINES = 200_000
RUNS = 3
HDFS_F1_FLOOR = 0.90
HDFS_TRAIN_FRACTION = 0.1
BGL_FOLDS = 5


def datasets_dir() -> Path:
    return REPO.parent / "shared" / "datasets"


def hdfs_dir() -> Path:
    configured = os.environ.get("EDGEWATCH_HDFS_SESSIONS")
    return Path(configured) if configured else datasets_dir() / "hdfs_sessions"


def bgl_files() -> list[Path]:
    configured = os.environ.get("EDGEWATCH_BGL")
    place = Path(configured) if configured else datasets_dir() / "loghub" / "BGL"
    if place.is_file():
        return [place]
    return sorted(place.glob("*.log")) if place.is_dir() else []


@contextlib.contextmanager
def one_core() -> Iterator[int]:
    """Pin this process (all its threads) to one CPU for the duration."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def best_rate(run: Callable[[], int]) -> float:
    rates = []
    for _ in range(RUNS):
        started_cpu, started = time.process_time(), time.perf_counter()
        lines = run()
        cpu = time.process_time() - started_cpu
        rates.append(lines / (cpu if cpu > 0 else time.perf_counter() - started))
    return max(rates)


# -- throughput --------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    mining: float
    template: float
    end_to_end: float
    threaded: float
    cache_hits: float
    anomalies: int


def _write(path: Path, lines: tuple[str, ...]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _follow(path: Path, consume: Callable[[list[LogLine]], object]) -> int:
    follower = FileFollower("bench", [path], None, TailOptions(start_at="beginning"))
    total = 0
    try:
        while True:
            batch = follower.poll()
            if not batch:
                return total
            consume(batch)
            follower.ack(batch[-1])
            total += len(batch)
    finally:
        follower.close()


def _threaded(path: Path, consume: Callable[[list[LogLine]], object], lines: int) -> int:
    source = TailSource("bench", [path], None,
                        TailOptions(start_at="beginning", poll_interval_s=0.01))  # fmt: skip
    source.start()
    total = 0
    try:
        while total < lines:
            batch = source.get_batch(1000, timeout=2.0)
            if not batch:
                break
            consume(batch)
            source.ack(batch[-1])
            total += len(batch)
    finally:
        source.stop()
    return total


def measure(bundle_path: Path, log_path: Path, lines: int) -> Throughput:
    bundle = read_bundle(bundle_path)
    spec, _ = log_model_parts(bundle.manifest)
    runtime = load_for_manifest(bundle.manifest, bundle.model_bytes, 1, "off")
    texts = log_path.read_text(encoding="utf-8").splitlines()

    def pipeline() -> LogAnomalyPipeline:
        config = LogAnomalyPipelineConfig(source="bench", model=bundle_path,
                                          max_reports_per_s=0.0)  # fmt: skip
        return LogAnomalyPipeline("bench", config, bundle, runtime)

    def mine() -> int:
        miner = TemplateMiner()
        return _follow(log_path, lambda batch: [miner.add(line.text) for line in batch])

    def template() -> int:
        mapper = EventMapper(spec)
        return _follow(log_path, lambda batch: [mapper.line_id(line.text) for line in batch])

    last: list[LogAnomalyPipeline] = []

    def end_to_end() -> int:
        last[:] = [pipeline()]
        return _follow(log_path, last[0].process_batch)

    def threaded() -> int:
        return _threaded(log_path, pipeline().process_batch, len(texts))

    with one_core():
        rates = (best_rate(mine), best_rate(template), best_rate(end_to_end),
                 best_rate(threaded))  # fmt: skip
    stats = last[0].stats()
    scored = stats.cache_hits + stats.histories_scored
    return Throughput(*rates, cache_hits=stats.cache_hits / max(1, scored),
                      anomalies=stats.anomalies)  # fmt: skip


def _train_bundle(work: Path, texts: tuple[str, ...], name: str) -> Path:
    train_dir = work / f"{name}-train"
    train_dir.mkdir()
    _write(train_dir / "train.log", texts)
    options = LogTrainOptions(epochs=10, seed=0, progress=False, name=name)
    trained = train_log_anomaly(train_dir, work / f"{name}-model", options)
    return convert_model(trained.out_dir, "int8", work / f"{name}.ewm", threads=1).out


def test_log_lines_per_second(tmp_path: Path) -> None:
    app_bundle = _train_bundle(tmp_path, generate_app_log(20_000, seed=1).lines, "shop")
    app_log = _write(tmp_path / "shop.log", generate_app_log(LINES, seed=2).lines)
    mixed_train = tmp_path / "mixed-train.log"
    generate_log(mixed_train, 20_000, seed=11)
    mixed_bundle = _train_bundle(
        tmp_path, tuple(mixed_train.read_text(encoding="utf-8").splitlines()), "mixed"
    )
    mixed_log = tmp_path / "mixed.log"
    generate_log(mixed_log, LINES, seed=12)
    app = measure(app_bundle, app_log, LINES)
    mixed = measure(mixed_bundle, mixed_log, LINES)
    rows = []
    for title, t in (("shop application (workflows)", app), ("mixed system log (random)", mixed)):
        rows += [
            f"{title}: {LINES:,} lines, score cache hits {t.cache_hits:.1%}, "
            f"{t.anomalies} anomalies",
            f"  template mining (add), baseline   {t.mining:>10,.0f} lines/s",
            f"  read + template (frozen match)    {t.template:>10,.0f} lines/s",
            f"  read + template + model           {t.end_to_end:>10,.0f} lines/s  "
            f"({t.end_to_end / t.mining:.2f}x mining, {t.end_to_end / t.template:.2f}x template)",
            f"  TailSource thread + model         {t.threaded:>10,.0f} lines/s",
        ]
    report(
        "Log anomaly throughput: one CPU, interpreter on 1 thread, int8 next-event model "
        f"(history 10), best of {RUNS}, lines per CPU second",
        rows,
        f"read + template + model {'meets' if app.end_to_end >= TARGET_LINES_PER_S else 'MISSES'}"
        f" {TARGET_LINES_PER_S:,} lines/s on the application log ({app.end_to_end:,.0f}); "
        f"worst case (no sequence repeats) {mixed.end_to_end:,.0f}",
    )
    assert app.end_to_end >= TARGET_LINES_PER_S


# -- HDFS sessions -----------------------------------------------------------------------


@pytest.mark.slow
def test_hdfs_session_f1(tmp_path: Path) -> None:
    data = hdfs_dir()
    if not (data / "normal.txt").is_file():
        pytest.skip(f"HDFS sessions not found at {data}; set EDGEWATCH_HDFS_SESSIONS")
    options = LogTrainOptions(seed=0, train_fraction=HDFS_TRAIN_FRACTION, progress=False,
                              name="hdfs")  # fmt: skip
    started = time.monotonic()
    trained = train_log_anomaly(data, tmp_path / "model", options)
    train_s = time.monotonic() - started
    bundle = convert_model(trained.out_dir, "int8", tmp_path / "hdfs.ewm", threads=1).out
    ours = evaluate_log_bundle(bundle, data, out_dir=tmp_path / "report")
    deeplog = evaluate_log_bundle(bundle, data, top_g=9, min_probability=0.0)

    def row(title: str, m: DetectionMetrics) -> str:
        return (f"{title}: precision {m.precision:.4f} recall {m.recall:.4f} F1 {m.f1:.4f} "
                f"(fp {m.fp}, fn {m.fn})")  # fmt: skip

    report(
        f"HDFS sessions ({data.name}): trained on {HDFS_TRAIN_FRACTION:.0%} of normal.txt "
        f"(seed 0, {trained.train_windows} windows, {trained.templates} events, "
        f"{trained.epochs_run} epochs, {train_s:.0f} s), int8 bundle",
        [
            f"test: {ours.metrics.tp + ours.metrics.fn} abnormal and "
            f"{ours.metrics.fp + ours.metrics.tn} unseen normal sessions "
            f"({ours.excluded_training_sessions} training sessions left out)",
            row(f"top-{ours.top_g}, floor {ours.min_probability:.3g} (trained choice)",
                ours.metrics),
            row("top-9, no floor (DeepLog's g)", deeplog.metrics),
            f"{ours.items_per_s:,.0f} events/s; DeepLog reports F1 about 0.96",
        ],
        f"F1 {ours.metrics.f1:.4f} (floor {HDFS_F1_FLOOR})",
    )
    assert ours.metrics.f1 >= HDFS_F1_FLOOR


# -- BGL lines ---------------------------------------------------------------------------


def read_bgl(paths: list[Path]) -> list[tuple[bool, str]]:
    """(anomalous, line without its label) for every line: "-" first is normal."""
    out = []
    for path in paths:
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            label, _, text = raw.partition(" ")
            out.append((label != "-", text))
    return out


def _labelled_folder(directory: Path, rows: list[tuple[bool, str]]) -> Path:
    directory.mkdir(parents=True)
    _write(directory / "test.log", tuple(text for _, text in rows))
    with open(directory / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "line", "label"])
        writer.writerows(["test.log", n + 1, int(bad)] for n, (bad, _) in enumerate(rows))
    return directory


def _bgl_round(
    work: Path, train_parts: list[list[tuple[bool, str]]], test: list[tuple[bool, str]]
) -> DetectionMetrics:
    """Train on the normal lines of ``train_parts`` (one file each), evaluate ``test``."""
    train_dir = work / "train"
    train_dir.mkdir(parents=True)
    for index, part in enumerate(train_parts):
        normal = tuple(text for bad, text in part if not bad)
        if normal:
            _write(train_dir / f"part-{index}.log", normal)
    trained = train_log_anomaly(train_dir, work / "model",
                                LogTrainOptions(seed=0, progress=False, name="bgl"))  # fmt: skip
    bundle = convert_model(trained.out_dir, "int8", work / "bgl.ewm", threads=1).out
    return evaluate_log_bundle(bundle, _labelled_folder(work / "test", test)).metrics


def _sum(metrics: list[DetectionMetrics]) -> DetectionMetrics:
    return DetectionMetrics(
        tp=sum(m.tp for m in metrics), fp=sum(m.fp for m in metrics),
        fn=sum(m.fn for m in metrics), tn=sum(m.tn for m in metrics),
    )  # fmt: skip


@pytest.mark.slow
def test_bgl_line_f1(tmp_path: Path) -> None:
    paths = bgl_files()
    if not paths:
        pytest.skip("Loghub BGL not found; set EDGEWATCH_BGL to a BGL log file or folder")
    rows = read_bgl(paths)
    alerts = sum(bad for bad, _ in rows)
    # Blocked folds: each block of lines is tested by a model trained on the normal lines
    # of the other blocks (the blocks before and after it are separate files, so no
    # history runs across the gap), and every line is tested exactly once.
    size = -(-len(rows) // BGL_FOLDS)
    folds = []
    for k in range(BGL_FOLDS):
        start, end = k * size, min(len(rows), (k + 1) * size)
        folds.append(_bgl_round(tmp_path / f"fold{k}", [rows[:start], rows[end:]],
                                rows[start:end]))  # fmt: skip
    blocked = _sum(folds)
    half = len(rows) // 2
    chrono = _bgl_round(tmp_path / "chrono", [rows[:half]], rows[half:])
    report(
        f"BGL lines ({', '.join(p.name for p in paths)}): {len(rows)} lines, {alerts} alerts; "
        "int8 bundles, trained on normal lines only",
        [
            f"{BGL_FOLDS} blocked folds (every line tested once): precision "
            f"{blocked.precision:.4f} recall {blocked.recall:.4f} F1 {blocked.f1:.4f} "
            f"(tp {blocked.tp}, fp {blocked.fp}, fn {blocked.fn})",
            f"first half → second half ({chrono.tp + chrono.fn} alerts in the test half): "
            f"precision {chrono.precision:.4f} recall {chrono.recall:.4f} F1 {chrono.f1:.4f}",
        ],
        f"blocked-fold F1 {blocked.f1:.4f}",
    )
    assert blocked.recall > 0.5
